"""The data plane through real sockets: forwarding, headers, keep-alive, pipelining, pooling."""

import asyncio

from conftest import Client, backends, exchange, free_port, lb_yaml, ok_response, proxy, running_lb


async def test_forwards_and_balances(tmp_path):
    async with proxy(tmp_path) as (lb, bes):
        c = await Client.connect(lb.port)
        bodies = [(await c.request(path=f"/p{i}")).body for i in range(4)]
        c.close()
        assert sorted(bodies) == sorted(
            [f"ok {bes[0].port}\n".encode()] * 2 + [f"ok {bes[1].port}\n".encode()] * 2
        )
        assert [s.path for b in bes for s in b.seen] != []


async def test_forwarding_headers(tmp_path):
    async with proxy(tmp_path, n=1) as (lb, bes):
        c = await Client.connect(lb.port)
        r = await c.request(
            host="example.com:8080",
            headers=(
                "x-forwarded-for: 10.0.0.1\r\n"
                "connection: keep-alive, x-secret\r\nx-secret: 1\r\nkeep-alive: timeout=5\r\n"
                "te: trailers\r\ntrailer: x\r\nproxy-connection: keep-alive\r\nupgrade: h2c\r\n"
                "x-forwarded-proto: gopher\r\nx-custom: kept\r\n"
            ),
        )
        assert r.status == 200
        seen = bes[0].seen[-1]
        assert seen.header("host") == "example.com:8080"
        assert seen.header("x-forwarded-for") == "10.0.0.1, 127.0.0.1"
        assert seen.header("x-forwarded-proto") == "http"
        assert seen.header("x-forwarded-host") == "example.com:8080"
        assert seen.header("x-custom") == "kept"
        for gone in ("x-secret", "keep-alive", "te", "trailer", "proxy-connection", "upgrade"):
            assert seen.header(gone) is None, gone
        rid = seen.header("x-request-id")
        assert rid and len(rid) > 8
        await c.request(headers="x-request-id: abc-123\r\n")
        assert bes[0].seen[-1].header("x-request-id") == "abc-123"
        await c.request(headers="x-request-id: bad id with spaces\r\n")
        assert bes[0].seen[-1].header("x-request-id") not in (None, "bad id with spaces")
        c.close()


async def test_keepalive_both_sides_reuses_backend_connection(tmp_path):
    async with proxy(tmp_path, n=1) as (lb, bes):
        c = await Client.connect(lb.port)
        for _ in range(5):
            assert (await c.request()).status == 200
        c.close()
        c2 = await Client.connect(lb.port)
        assert (await c2.request()).status == 200
        c2.close()
        assert bes[0].connections == 1


async def test_http10_client(tmp_path):
    async with proxy(tmp_path, n=1) as (lb, _):
        raw = await exchange(lb.port, b"GET / HTTP/1.0\r\n\r\n", until_close=True)
        assert raw.startswith(b"HTTP/1.1 200")
        assert b"connection: close" in raw.lower()
        c = await Client.connect(lb.port)
        c.writer.write(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        from conftest import read_response

        r = await read_response(c.reader)
        assert r.status == 200 and r.header("connection") == "keep-alive"
        c.writer.write(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert (await read_response(c.reader)).status == 200
        c.close()


async def test_pipelined_requests_answer_in_order(tmp_path):
    async def slow_first(req):
        if req.path == "/1":
            await asyncio.sleep(0.2)
        return ok_response(req.path.encode())

    async with (
        backends(1, respond=slow_first) as bes,
        running_lb(
            tmp_path, lb_yaml([bes[0].address], port=free_port(), admin_port=free_port())
        ) as lb,
    ):
        c = await Client.connect(lb.port)
        c.writer.write(
            b"".join(f"GET /{i} HTTP/1.1\r\nhost: x\r\n\r\n".encode() for i in range(1, 4))
            + b"POST /4 HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc"
        )
        from conftest import read_response

        bodies = [(await asyncio.wait_for(read_response(c.reader), 5)).body for _ in range(4)]
        assert bodies == [b"/1", b"/2", b"/3", b"/4"]
        c.close()


async def test_pool_never_reuses_connection_backend_closed(tmp_path):
    def close_after(req):
        return ok_response(b"bye", headers="connection: close\r\n")

    async with (
        backends(1, respond=close_after) as bes,
        running_lb(
            tmp_path, lb_yaml([bes[0].address], port=free_port(), admin_port=free_port())
        ) as lb,
    ):
        c = await Client.connect(lb.port)
        for _ in range(3):
            assert (await c.request()).body == b"bye"
        c.close()
        assert bes[0].connections == 3


async def test_idle_pooled_connection_closed_by_backend_is_dropped(tmp_path):
    async def handler(be, reader, writer):
        from conftest import read_request

        req = await read_request(reader)
        if req is not None:
            be.seen.append(req)
            writer.write(ok_response(b"once"))
            await writer.drain()
        writer.close()  # closes while idle in lb's pool, without announcing it

    async with (
        backends(1, handler=handler) as bes,
        running_lb(
            tmp_path, lb_yaml([bes[0].address], port=free_port(), admin_port=free_port())
        ) as lb,
    ):
        for _ in range(3):
            c = await Client.connect(lb.port)
            assert (await c.request()).body == b"once"
            c.close()
            await asyncio.sleep(0.05)
        assert bes[0].connections == 3


async def test_pool_idle_count_is_bounded(tmp_path):
    async def slow(req):
        await asyncio.sleep(0.2)
        return ok_response(b"ok")

    extra = "    pool: {max_idle: 2, idle_timeout: 30s}\n"
    async with (
        backends(1, respond=slow) as bes,
        running_lb(
            tmp_path,
            lb_yaml(
                [bes[0].address], port=free_port(), admin_port=free_port(), extra_service=extra
            ),
        ) as lb,
    ):
        clients = [await Client.connect(lb.port) for _ in range(5)]
        await asyncio.gather(*(c.request() for c in clients))
        backend = next(iter(lb.server.runtime.services["app"].backends.values()))
        assert bes[0].connections == 5
        assert len(backend.idle) == 2
        for c in clients:
            c.close()


async def test_response_not_read_to_end_is_not_reused(tmp_path):
    big = b"x" * (8 << 20)

    def respond(req):
        return ok_response(big if req.path == "/big" else b"small")

    async with (
        backends(1, respond=respond) as bes,
        running_lb(
            tmp_path, lb_yaml([bes[0].address], port=free_port(), admin_port=free_port())
        ) as lb,
    ):
        r, w = await asyncio.open_connection("127.0.0.1", lb.port)
        w.write(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
        await r.readexactly(1000)
        w.transport.abort()  # the client leaves mid-body
        await asyncio.sleep(0.2)
        c = await Client.connect(lb.port)
        assert (await c.request(path="/small")).body == b"small"
        c.close()
        assert bes[0].connections == 2


async def test_no_route_is_404_and_keeps_connection(tmp_path):
    routes = "routes:\n  - name: api\n    match: {path: {prefix: /api}}\n    service: app\n"
    async with (
        backends(1) as bes,
        running_lb(
            tmp_path,
            lb_yaml([bes[0].address], port=free_port(), admin_port=free_port(), routes=routes),
        ) as lb,
    ):
        c = await Client.connect(lb.port)
        r = await c.request(path="/nope")
        assert r.status == 404 and r.body.startswith(b"404")
        assert (await c.request(path="/api/x")).status == 200
        c.close()
