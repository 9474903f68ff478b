"""Every timer belongs to one phase of a connection or exchange and ends with it: connections
that outlast every timeout that is not theirs keep working."""

import asyncio

import aiohttp
from conftest import backends, free_port, lb_yaml, ok_response, read_request, running_lb
from test_proxy_websocket import ws_backend

# Every listener timeout short, so that a timer left over from an earlier phase would fire
# well within each test.
SHORT = "    timeouts: {client_head: 400ms, keepalive_idle: 400ms, client_body_idle: 400ms}\n"


def config(addresses: list[str], service: str = "") -> str:
    return lb_yaml(
        addresses,
        port=free_port(),
        admin_port=free_port(),
        extra_listener=SHORT,
        extra_service=service,
    )


async def test_websocket_outlives_every_listener_timeout(tmp_path):
    """The head timer of the upgrade request used to close every WebSocket `client_head`
    after its upgrade, traffic flowing or not."""
    svc = "    timeouts: {response_head: 400ms, idle: 3s}\n"
    async with (
        ws_backend() as addr,
        running_lb(tmp_path, config([addr], svc)) as lb,
        aiohttp.ClientSession() as s,
        s.ws_connect(f"{lb.url}/ws", autoping=False, heartbeat=None) as ws,
    ):
        for i in range(6):  # traffic flowing, past every listener timeout
            await ws.send_str(f"m{i}")
            assert (await ws.receive_str(timeout=5)) == f"echo m{i}"
            await asyncio.sleep(0.25)
        await asyncio.sleep(1.2)  # idle, past them all again, within the tunnel's idle
        await ws.send_str("still there")
        assert (await ws.receive_str(timeout=5)) == "echo still there"


async def test_upload_slower_than_the_response_head_timeout(tmp_path):
    """The wait for the response head starts when the request is complete, not when it
    starts going out: a slow upload is governed by the body-idle timeouts."""

    async def echo_size(req):
        return ok_response(b"%d" % len(req.body))

    svc = "    timeouts: {response_head: 400ms}\n"
    async with (
        backends(1, respond=echo_size) as bes,
        running_lb(tmp_path, config([bes[0].address], svc)) as lb,
    ):
        r, w = await asyncio.open_connection("127.0.0.1", lb.port)
        w.write(b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(8):  # 1.6 s in all, a chunk every 200 ms
            w.write(b"5\r\nhello\r\n")
            await w.drain()
            await asyncio.sleep(0.2)
        w.write(b"0\r\n\r\n")
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert await asyncio.wait_for(r.readexactly(2), 5) == b"40"
        w.close()


async def test_a_pipelined_partial_head_leaves_the_answer_in_progress_alone(tmp_path):
    """The next request's head timing out must not take the request being answered with it:
    its answer arrives, then the connection closes."""

    async def slow(req):
        await asyncio.sleep(1.0)
        return ok_response(b"slow answer")

    async with (
        backends(1, respond=slow) as bes,
        running_lb(tmp_path, config([bes[0].address])) as lb,
    ):
        r, w = await asyncio.open_connection("127.0.0.1", lb.port)
        w.write(b"GET /1 HTTP/1.1\r\nhost: x\r\n\r\nGET /2 HTTP/1.1\r\nhost:")
        raw = await asyncio.wait_for(r.read(), 5)
        assert raw.startswith(b"HTTP/1.1 200") and raw.endswith(b"slow answer"), raw
        w.close()


async def test_body_idle_clock_stops_while_lb_is_not_reading(tmp_path):
    """A pipelined request waits, paused, behind a slow one: its body-idle timer must not run
    while lb itself holds the body back."""
    answered: list[str] = []

    async def handler(be, reader, writer):
        while (req := await read_request(reader)) is not None:
            if req.path == "/slow":
                await asyncio.sleep(1.0)
            answered.append(req.path)
            writer.write(ok_response(req.path.encode() + b" " + req.body))
            await writer.drain()

    async with (
        backends(1, handler=handler) as bes,
        running_lb(tmp_path, config([bes[0].address])) as lb,
    ):
        r, w = await asyncio.open_connection("127.0.0.1", lb.port)
        w.write(
            b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n"
            b"POST /next HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\n\r\nab"
        )
        await w.drain()
        await asyncio.sleep(1.2)  # past client_body_idle, while lb does not read
        w.write(b"cd")
        first = await asyncio.wait_for(r.readuntil(b"/slow "), 5)
        assert first.startswith(b"HTTP/1.1 200"), first
        second = await asyncio.wait_for(r.readuntil(b"/next abcd"), 5)
        assert b"HTTP/1.1 200" in second
        assert answered == ["/slow", "/next"]
        w.close()
