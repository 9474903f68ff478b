"""Errors get the right status and close where they must; smuggling shapes never reach a backend."""

import asyncio

import pytest
from conftest import (
    Client,
    backends,
    exchange,
    free_port,
    lb_yaml,
    ok_response,
    read_request,
    running_lb,
)


def lb_for(tmp_path, addrs, **kw):
    return running_lb(tmp_path, lb_yaml(addrs, port=free_port(), admin_port=free_port(), **kw))


async def status_of(port: int, data: bytes) -> tuple[int, bytes]:
    raw = await exchange(port, data, until_close=True)
    return int(raw.split(b" ", 2)[1]), raw


SMUGGLING = {
    "cl and te": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "duplicate cl": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n"
    b"\r\nabc",
    "differing cl": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n"
    b"\r\nabcd",
    "malformed cl": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3a\r\n\r\nabc",
    "signed cl": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
    "te not final chunked": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n"
    b"\r\nabc",
    "te unknown": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "te twice": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te in http/1.0": b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "obs fold": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
    "space before colon": b"GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n",
    "nul in value": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n",
    "cr in value": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n",
    "bare lf": b"GET / HTTP/1.1\nHost: a\n\n",
    "bad chunk size": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\nabc\r\n0\r\n\r\n",
    "chunk size overflow": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"fffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
    "no host": b"GET / HTTP/1.1\r\n\r\n",
    "two hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    "bad version": b"GET / HTTP/1.7\r\nHost: a\r\n\r\n",
    "space in target": b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
}


@pytest.mark.parametrize("name", list(SMUGGLING))
async def test_smuggling_shapes_refused(tmp_path, name):
    async with backends(1) as bes, lb_for(tmp_path, [bes[0].address]) as lb:
        status, raw = await status_of(lb.port, SMUGGLING[name])
        assert status == 400, raw
        assert b"connection: close" in raw.lower()
        # Framing errors inside a streamed body surface after the head was forwarded: the
        # backend then sees an unfinished request cut by a reset, never a complete one.
        assert bes[0].seen == []
        if "chunk" not in name:
            assert bes[0].connections == 0


async def test_unsupported_transfer_coding_is_501_never_forwarded(tmp_path):
    async with backends(1) as bes, lb_for(tmp_path, [bes[0].address]) as lb:
        status, _ = await status_of(
            lb.port,
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        )
        assert status == 501 and bes[0].connections == 0


async def test_smuggled_second_request_after_bad_one_is_not_forwarded(tmp_path):
    async with backends(1) as bes, lb_for(tmp_path, [bes[0].address]) as lb:
        status, raw = await status_of(
            lb.port, SMUGGLING["cl and te"] + b"GET /admin HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        assert status == 400 and raw.count(b"HTTP/1.1") == 1
        assert bes[0].seen == []


async def test_header_section_too_large_431(tmp_path):
    listener = "    limits: {max_header_size: 1KiB}\n"
    async with (
        backends(1) as bes,
        lb_for(tmp_path, [bes[0].address], extra_listener=listener) as lb,
    ):
        status, _ = await status_of(
            lb.port, b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n"
        )
        assert status == 431
        status, _ = await status_of(lb.port, b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\n\r\n")
        assert status == 414
        assert bes[0].connections == 0


async def test_backend_refused_502(tmp_path):
    dead = f"127.0.0.1:{free_port()}"
    async with lb_for(tmp_path, [dead]) as lb:
        c = await Client.connect(lb.port)
        r = await c.request()
        assert r.status == 502
        c.close()


async def test_backend_reset_before_head_502(tmp_path):
    async def reset(be, reader, writer):
        await read_request(reader)
        writer.transport.abort()

    async with backends(1, handler=reset) as bes, lb_for(tmp_path, [bes[0].address]) as lb:
        c = await Client.connect(lb.port)
        assert (await c.request("POST", body=b"x")).status == 502
        c.close()


async def test_backend_garbage_502(tmp_path):
    async def garbage(be, reader, writer):
        await read_request(reader)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    async with backends(1, handler=garbage) as bes, lb_for(tmp_path, [bes[0].address]) as lb:
        c = await Client.connect(lb.port)
        assert (await c.request()).status == 502
        c.close()


async def test_backend_timeout_504(tmp_path):
    async def slow(req):
        await asyncio.sleep(2)
        return ok_response(b"late")

    svc = "    timeouts: {response_head: 200ms}\n"
    async with (
        backends(1, respond=slow) as bes,
        lb_for(tmp_path, [bes[0].address], extra_service=svc) as lb,
    ):
        c = await Client.connect(lb.port)
        r = await c.request()
        assert r.status == 504
        c.close()


async def test_connect_timeout_504(tmp_path):
    # A listening socket whose accept queue is full never completes the handshake.
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(0)
    port = s.getsockname()[1]
    fillers = []
    for _ in range(8):
        f = socket.socket()
        f.setblocking(False)
        try:
            f.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(f)
    svc = "    timeouts: {connect: 200ms}\n"
    try:
        async with lb_for(tmp_path, [f"127.0.0.1:{port}"], extra_service=svc) as lb:
            c = await Client.connect(lb.port)
            r = await c.request()
            assert r.status in (504, 502)
            c.close()
    finally:
        for f in fillers:
            f.close()
        s.close()


async def test_no_backend_503(tmp_path):
    async with lb_for(tmp_path, []) as lb:
        c = await Client.connect(lb.port)
        assert (await c.request()).status == 503
        c.close()


async def test_slow_head_408(tmp_path):
    listener = "    timeouts: {client_head: 300ms}\n"
    async with (
        backends(1) as bes,
        lb_for(tmp_path, [bes[0].address], extra_listener=listener) as lb,
    ):
        r, w = await asyncio.open_connection("127.0.0.1", lb.port)
        w.write(b"GET / HTTP/1.1\r\nHost: a\r\n")
        raw = await asyncio.wait_for(r.read(), 3)
        assert raw.startswith(b"HTTP/1.1 408")
        w.close()
        assert bes[0].connections == 0


async def test_keepalive_idle_closes(tmp_path):
    listener = "    timeouts: {keepalive_idle: 300ms}\n"
    async with (
        backends(1) as bes,
        lb_for(tmp_path, [bes[0].address], extra_listener=listener) as lb,
    ):
        c = await Client.connect(lb.port)
        assert (await c.request()).status == 200
        assert await c.closed(timeout=3)


async def test_backend_idle_while_streaming_cuts(tmp_path):
    async def stall(be, reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        await writer.drain()
        await asyncio.sleep(3)

    svc = "    timeouts: {idle: 300ms}\n"
    async with (
        backends(1, handler=stall) as bes,
        lb_for(tmp_path, [bes[0].address], extra_service=svc) as lb,
    ):
        r, w = await asyncio.open_connection("127.0.0.1", lb.port)
        w.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        raw = await asyncio.wait_for(r.read(), 3)
        assert raw.startswith(b"HTTP/1.1 200") and raw.endswith(b"partial")
        w.close()


async def test_a_bug_while_connecting_still_answers_the_client(tmp_path, caplog):
    """An exception on a path no protocol callback guards (the connect task) is logged and
    answered with a 500, instead of leaving the client waiting for nothing."""

    class Broken:
        def record_failure(self, svc, backend, failure):
            raise RuntimeError("a bug in a failure hook")

    async with lb_for(tmp_path, [f"127.0.0.1:{free_port()}"]) as lb:
        lb.server.runtime.failure_hooks.append(Broken())
        c = await Client.connect(lb.port)
        r = await c.request(timeout=5)
        assert r.status == 500 and r.header("connection") == "close"
        c.close()
    assert any("internal error forwarding" in rec.message for rec in caplog.records)
