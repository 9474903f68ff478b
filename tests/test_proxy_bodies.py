"""Bodies both ways: Content-Length, chunked, trailers, HEAD/204/304, 100-continue, 1xx."""

import asyncio

from conftest import (
    Client,
    backends,
    free_port,
    lb_yaml,
    ok_response,
    read_request,
    read_response,
    running_lb,
)


def lb_for(tmp_path, bes, **kw):
    return running_lb(
        tmp_path, lb_yaml([b.address for b in bes], port=free_port(), admin_port=free_port(), **kw)
    )


async def test_content_length_and_chunked_requests(tmp_path):
    async with (
        backends(1, respond=lambda r: ok_response(r.body)) as bes,
        lb_for(tmp_path, bes) as lb,
    ):
        c = await Client.connect(lb.port)
        assert (await c.request("POST", body=b"hello")).body == b"hello"
        c.writer.write(
            b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\nx-trailer: t\r\n\r\n"
        )
        r = await read_response(c.reader)
        assert r.body == b"abcdefg"
        seen = bes[0].seen[-1]
        assert seen.header("transfer-encoding") == "chunked"
        c.close()


async def test_chunked_response_with_trailers(tmp_path):
    chunked = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 42\r\n\r\n"
    )
    async with backends(1, respond=lambda r: chunked) as bes, lb_for(tmp_path, bes) as lb:
        c = await Client.connect(lb.port)
        r = await c.request()
        assert r.body == b"hello world"
        assert r.header("transfer-encoding") == "chunked"
        assert r.header("x-sum") == "42"
        assert (await c.request()).body == b"hello world"  # keep-alive survives chunking
        c.close()


async def test_chunked_response_to_http10_client_is_close_delimited(tmp_path):
    chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    async with backends(1, respond=lambda r: chunked) as bes, lb_for(tmp_path, bes) as lb:
        r, w = await asyncio.open_connection("127.0.0.1", lb.port)
        w.write(b"GET / HTTP/1.0\r\n\r\n")
        raw = await asyncio.wait_for(r.read(), 5)
        assert raw.endswith(b"\r\n\r\nabc")
        assert b"transfer-encoding" not in raw.lower()
        w.close()


async def test_head_204_304_have_no_body(tmp_path):
    def respond(req):
        if req.method == "HEAD":
            return b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n"
        if req.path == "/204":
            return b"HTTP/1.1 204 No Content\r\n\r\n"
        if req.path == "/304":
            return b"HTTP/1.1 304 Not Modified\r\netag: x\r\n\r\n"
        return ok_response(b"body")

    async with backends(1, respond=respond) as bes, lb_for(tmp_path, bes) as lb:
        c = await Client.connect(lb.port)
        r = await c.request("HEAD")
        assert r.status == 200 and r.header("content-length") == "1234" and r.body == b""
        assert (await c.request(path="/204")).status == 204
        assert (await c.request(path="/304")).status == 304
        assert (await c.request(path="/after")).body == b"body"  # framing stayed in sync
        c.close()
        assert bes[0].connections == 1


async def test_expect_100_continue_is_answered_by_lb(tmp_path):
    """lb says 100 itself once it forwards: behind a backend that never does, the upload
    does not wait for the client's expect timeout, and the Expect header stays with lb."""
    heads: list[bytes] = []

    async def handler(be, reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        heads.append(head.lower())
        body = await reader.readexactly(5)
        writer.write(ok_response(b"got " + body))
        await writer.drain()
        await reader.read()

    async with backends(1, handler=handler) as bes, lb_for(tmp_path, bes) as lb:
        r, w = await asyncio.open_connection("127.0.0.1", lb.port)
        w.write(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n")
        interim = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        w.write(b"hello")
        resp = await read_response(r)
        assert resp.body == b"got hello"
        assert b"expect" not in heads[0]
        w.close()


async def test_expect_refusals_come_before_the_body(tmp_path):
    """413, 417 and 429 answer the head at once: the client never sends a body for them."""
    routes = (
        "routes:\n  - name: limited\n    match: {path: {prefix: /limited}}\n    service: app\n"
        "    rate_limit: {rate: 1/m, burst: 0}\n"
        "  - name: all\n    match: {path: {prefix: /}}\n    service: app\n    max_body_size: 10\n"
    )
    async with backends(1) as bes, lb_for(tmp_path, bes, routes=routes) as lb:
        cases = [
            (b"/big", b"expect: 100-continue\r\ncontent-length: 11\r\n", 413),
            (b"/", b"expect: something-else\r\ncontent-length: 5\r\n", 417),
            (b"/limited", b"expect: 100-continue\r\ncontent-length: 5\r\n", 200),
            (b"/limited", b"expect: 100-continue\r\ncontent-length: 5\r\n", 429),
        ]
        for path, headers, status in cases:
            r, w = await asyncio.open_connection("127.0.0.1", lb.port)
            w.write(b"POST " + path + b" HTTP/1.1\r\nhost: x\r\n" + headers + b"\r\n")
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
            if status == 200:
                assert head.startswith(b"HTTP/1.1 100 ")
                w.write(b"hello")
                head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 %d " % status), (path, head)
            w.close()
        assert len(bes[0].seen) == 1


async def test_interim_1xx_relayed(tmp_path):
    early = b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n" + ok_response(
        b"final"
    )
    async with backends(1, respond=lambda r: early) as bes, lb_for(tmp_path, bes) as lb:
        r, w = await asyncio.open_connection("127.0.0.1", lb.port)
        w.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        first = await read_response(r)
        assert first.status == 103 and first.header("link")
        final = await read_response(r)
        assert final.status == 200 and final.body == b"final"
        w.close()


async def test_close_delimited_backend_body(tmp_path):
    async def handler(be, reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil-close")
        await writer.drain()
        writer.close()

    async with backends(1, handler=handler) as bes, lb_for(tmp_path, bes) as lb:
        c = await Client.connect(lb.port)
        r = await c.request()
        assert r.body == b"until-close"
        c.close()


async def test_body_limit_413(tmp_path):
    listener = "    limits: {max_body_size: 1KiB}\n"
    async with (
        backends(1, respond=lambda r: ok_response(b"ok")) as bes,
        lb_for(tmp_path, bes, extra_listener=listener) as lb,
    ):
        c = await Client.connect(lb.port)
        r = await c.request("POST", body=b"x" * 2000)
        assert r.status == 413
        assert await c.closed()
        assert bes[0].seen == []
        # Chunked bodies are counted as they stream.
        r2, w2 = await asyncio.open_connection("127.0.0.1", lb.port)
        w2.write(
            b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
            + b"400\r\n"
            + b"y" * 1024
            + b"\r\n"
            + b"10\r\n"
            + b"z" * 16
            + b"\r\n"
        )
        resp = await asyncio.wait_for(read_response(r2), 5)
        assert resp.status == 413
        w2.close()


async def test_refusal_mid_upload_reaches_the_client(tmp_path):
    """A 413 for a body the client is already sending: lb half-closes and drops the rest of
    the upload for a while, so the refusal is read instead of lost to a reset."""
    routes = "routes:\n  - name: all\n    match: {path: {prefix: /}}\n    service: app\n"
    routes += "    max_body_size: 10\n"
    async with backends(1) as bes, lb_for(tmp_path, bes, routes=routes) as lb:
        for _ in range(3):
            r, w = await asyncio.open_connection("127.0.0.1", lb.port)
            w.write(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % (4 << 20))
            w.write(b"x" * 300_000)  # more than lb reads before it answers
            await asyncio.sleep(0.3)  # lb has answered by now, and closed before this fix
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 413"), head
            w.close()
        assert bes[0].seen == []
