"""lb as a process: graceful shutdown, and streaming 1 GiB each way in bounded memory."""

import asyncio
import os
import signal
import subprocess
import sys

from conftest import backends, free_port, lb_yaml, ok_response
from procs import ROOT, LbProcess, wait_port

GIB = 1 << 30
CHUNK = 1 << 20


async def start_lb(
    tmp_path, backend: str, env: dict[str, str] | None = None
) -> tuple[LbProcess, int]:
    """`lb run` in front of one backend, once fully started: listeners bind last."""
    port, admin = free_port(), free_port()
    cfg = tmp_path / "lb.yaml"
    cfg.write_text(lb_yaml([backend], port=port, admin_port=admin))
    lb = LbProcess(cfg, env=env)
    try:
        await asyncio.to_thread(wait_port, admin)
        await asyncio.to_thread(wait_port, port)
    except TimeoutError:
        lb.stop()
        raise AssertionError(f"lb did not start:\n{lb.output()}") from None
    return lb, port


async def test_sigterm_drains_in_flight_then_exits_zero(tmp_path):
    async def slow(req):
        await asyncio.sleep(0.8)
        return ok_response(b"finished")

    async with backends(1, respond=slow) as bes:
        lb, port = await start_lb(tmp_path, bes[0].address)
        try:
            idle_r, idle_w = await asyncio.open_connection("127.0.0.1", port)
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            await w.drain()
            await asyncio.sleep(0.2)
            lb.signal(signal.SIGTERM)
            raw = await asyncio.wait_for(r.read(), 5)
            assert raw.startswith(b"HTTP/1.1 200") and raw.endswith(b"finished")
            assert b"connection: close" in raw.lower()
            assert await asyncio.wait_for(idle_r.read(), 5) == b""  # idle keep-alive closed
            code = await asyncio.to_thread(lb.proc.wait, 10)
            assert code == 0, lb.output()
            w.close()
            idle_w.close()
        finally:
            lb.stop()


async def _sink_backend(be, reader, writer):
    """Counts a streamed upload without keeping it, or streams 1 GiB down."""
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return
        if head.startswith(b"POST"):
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            got = 0
            while got < length:
                got += len(await reader.read(min(CHUNK, length - got)))
            writer.write(ok_response(str(got).encode()))
        else:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % GIB)
            block = b"d" * CHUNK
            for _ in range(GIB // CHUNK):
                writer.write(block)
                await writer.drain()
        await writer.drain()


async def test_gigabyte_each_way_in_bounded_memory(tmp_path):
    async with backends(1, handler=_sink_backend) as bes:
        lb, port = await start_lb(tmp_path, bes[0].address)
        try:
            base = lb.rss()
            peak = base

            async def watch() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, lb.rss())
                    await asyncio.sleep(0.05)

            watcher = asyncio.create_task(watch())
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"POST /up HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % GIB)
            block = b"u" * CHUNK
            for _ in range(GIB // CHUNK):
                w.write(block)
                await w.drain()
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30)
            assert head.startswith(b"HTTP/1.1 200")
            assert await r.readexactly(len(str(GIB))) == str(GIB).encode()
            w.close()

            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"GET /down HTTP/1.1\r\nhost: x\r\n\r\n")
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30)
            assert b"content-length: %d" % GIB in head.lower()
            got = 0
            while got < GIB:
                data = await asyncio.wait_for(r.read(4 * CHUNK), 30)
                assert data
                got += len(data)
            assert got == GIB
            w.close()
            watcher.cancel()
            assert peak - base < 64 * CHUNK, f"RSS grew by {(peak - base) >> 20} MiB"
        finally:
            lb.stop()


async def test_sigint_also_graceful(tmp_path):
    async with backends(1) as bes:
        lb, _ = await start_lb(tmp_path, bes[0].address)
        try:
            lb.signal(signal.SIGINT)
            assert await asyncio.to_thread(lb.proc.wait, 10) == 0
        finally:
            lb.stop()


async def test_the_pure_python_twin_runs_and_proxies(tmp_path):
    """LB_PURE_PYTHON=1 runs the .py sources of the compiled modules: `lb version` says so,
    and keep-alive, pipelining and a chunked upload go through as they do compiled."""
    env = {"LB_PURE_PYTHON": "1"}
    version = subprocess.run(
        [sys.executable, "-m", "lb", "version"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "data path: python" in version

    async def echo(req):
        return ok_response(f"{req.method} {req.path} {len(req.body)}".encode())

    async with backends(1, respond=echo) as bes:
        lb, port = await start_lb(tmp_path, bes[0].address, env=env)
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(
                b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n"
                b"POST /b HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
                b"GET /c HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
            )
            raw = await asyncio.wait_for(r.read(), 5)
            bodies = [part.split(b"\r\n\r\n", 1)[1] for part in raw.split(b"HTTP/1.1 ")[1:]]
            assert raw.count(b"HTTP/1.1 200") == 3, raw
            assert bodies == [b"GET /a 0", b"POST /b 5", b"GET /c 0"], raw
            w.close()
        finally:
            assert lb.stop() == 0, lb.output()
