"""WebSocket upgrades: a two-way tunnel after the backend's 101, with an idle timeout."""

import asyncio
import contextlib

import aiohttp
from aiohttp import web
from conftest import free_port, lb_yaml, running_lb, serve_app


@contextlib.asynccontextmanager
async def ws_backend():
    async def echo(request: web.Request) -> web.StreamResponse:
        if request.headers.get("upgrade", "").lower() != "websocket":
            return web.Response(text="plain")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str("echo " + msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/ws", echo)
    async with serve_app(app) as address:
        yield address


async def test_websocket_echo_through_lb(tmp_path):
    async with (
        ws_backend() as addr,
        running_lb(tmp_path, lb_yaml([addr], port=free_port(), admin_port=free_port())) as lb,
        aiohttp.ClientSession() as s,
    ):
        async with s.ws_connect(f"{lb.url}/ws") as ws:
            for i in range(3):
                await ws.send_str(f"hi {i}")
                assert (await ws.receive_str(timeout=5)) == f"echo hi {i}"
            big = bytes(range(256)) * 4096
            await ws.send_bytes(big)
            assert (await ws.receive_bytes(timeout=5)) == big
        async with s.get(f"{lb.url}/ws") as r:  # a plain request on the same route still works
            assert await r.text() == "plain"


async def test_websocket_idle_timeout_closes_tunnel(tmp_path):
    svc = "    timeouts: {idle: 300ms}\n"
    async with (
        ws_backend() as addr,
        running_lb(
            tmp_path, lb_yaml([addr], port=free_port(), admin_port=free_port(), extra_service=svc)
        ) as lb,
        aiohttp.ClientSession() as s,
    ):
        async with s.ws_connect(f"{lb.url}/ws", autoping=False, heartbeat=None) as ws:
            await ws.send_str("x")
            assert (await ws.receive_str(timeout=5)) == "echo x"
            msg = await ws.receive(timeout=5)
            assert msg.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.ERROR,
            )
        listener = next(iter(lb.server.runtime.listeners.values()))
        await asyncio.sleep(0.1)
        assert not listener.tunnels


async def test_refused_upgrade_gets_backend_answer_and_close(tmp_path):
    async with (
        ws_backend() as addr,
        running_lb(tmp_path, lb_yaml([addr], port=free_port(), admin_port=free_port())) as lb,
    ):
        r, w = await asyncio.open_connection("127.0.0.1", lb.port)
        w.write(
            b"GET /nows HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        raw = await asyncio.wait_for(r.read(), 5)
        assert raw.startswith(b"HTTP/1.1 404")
        w.close()
