"""HTTP/2 to backends (services.NAME.protocol: h2): through lb from HTTP/1.1 and HTTP/2 clients
to an h2c backend (tests/h2_server.py): bodies both ways past the windows, trailers, stream
sharing and the peer's stream limit, refused streams, lost backends and timeouts."""

import asyncio
import contextlib

import pytest

pytest.importorskip("lb._h2", reason="lb._h2 not built (libnghttp2-dev missing)")
pytest.importorskip("h2.connection")

from conftest import Client, free_port, lb_yaml, running_lb
from h2_server import H2Backend, Reply, echo
from test_h2_proxy import H2, H2Client

from lb.config import ConfigError, load
from lb.proxy.http2.backend_stream import grpc_timeout

H2_SERVICE = "    protocol: h2\n"


@contextlib.asynccontextmanager
async def h2_backends(*handlers, max_streams=100, extra_service="", routes=None):
    bes = [await H2Backend(h, max_streams=max_streams).start() for h in handlers]
    try:
        yield bes
    finally:
        for b in bes:
            await b.stop()


@contextlib.asynccontextmanager
async def lb_to(tmp_path, bes, extra_service="", **kw):
    text = lb_yaml(
        [b.address for b in bes],
        port=free_port(),
        admin_port=free_port(),
        extra_listener=H2,
        extra_service=H2_SERVICE + extra_service,
        **kw,
    )
    async with running_lb(tmp_path, text) as lb:
        yield lb


async def test_http1_client_get_post_and_large_bodies(tmp_path):
    async with h2_backends(None) as bes, lb_to(tmp_path, bes) as lb:
        c = await Client.connect(lb.port)
        r = await c.request("GET", "/a?x=1", headers="x-custom: v\r\nconnection: keep-alive\r\n")
        assert r.status == 200 and r.header("x-path") == "/a?x=1" and r.body == b""
        req = bes[0].requests[-1]
        assert req.headers[b":authority"] == b"test" and req.headers[b":scheme"] == b"http"
        assert req.headers[b"x-custom"] == b"v" and b"connection" not in req.headers
        assert req.headers[b"x-forwarded-for"] == b"127.0.0.1"
        r = await c.request("POST", "/up", body=b"hello")
        assert r.status == 200 and r.body == b"hello" and r.header("x-method") == "POST"
        assert bes[0].requests[-1].headers[b"content-length"] == b"5"
        big = bytes(range(256)) * 1200  # 300 KiB: past the 64 KiB windows both ways
        r = await c.request("PUT", "/big", body=big)
        assert r.status == 200 and r.body == big and bes[0].requests[-1].body == big
        # Chunked from the client, with trailers: they reach the backend as trailers.
        c.writer.write(
            b"POST /t HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\nx-check: 7\r\n\r\n"
        )
        from conftest import read_response

        r = await asyncio.wait_for(read_response(c.reader), 5)
        assert r.body == b"abc" and r.header("x-trailers") == "x-check=7"
        c.close()
        assert bes[0].connections == 1


async def test_trailers_to_http1_client_as_chunked_trailers(tmp_path):
    def handler(req):
        return Reply(200, [(b"content-type", b"text/plain")], b"body!", [(b"x-sum", b"42")])

    async with h2_backends(handler) as bes, lb_to(tmp_path, bes) as lb:
        c = await Client.connect(lb.port)
        r = await c.request("GET", "/")
        assert r.status == 200 and r.body == b"body!"
        assert r.header("transfer-encoding") == "chunked" and r.header("x-sum") == "42"
        # A head alone (END_STREAM on HEADERS): an empty body, the connection reusable.
        bes[0].handler = lambda req: Reply(204, [(b"x-only", b"1")])
        r = await c.request("GET", "/")
        assert r.status == 204 and r.header("x-only") == "1"
        r = await c.request("HEAD", "/")
        assert r.status == 204
        c.close()


async def test_http2_client_through_to_h2_backend(tmp_path):
    def handler(req):
        if req.path == b"/trailers":
            return Reply(200, [], b"x" * 70_000, [(b"x-end", b"yes")])
        if req.path == b"/only":
            return Reply(200, [(b"x-a", b"1")])
        return echo(req)

    async with h2_backends(handler) as bes, lb_to(tmp_path, bes) as lb:
        c = await H2Client.connect(lb.port)
        r = await c.request("GET", "/p", [("x-custom", "v")])
        assert r["status"] == 200 and r["headers"][b"x-path"] == b"/p"
        big = bytes(range(256)) * 800
        r = await c.request("POST", "/up", [], big)
        assert r["status"] == 200 and r["body"] == big
        r = await c.request("GET", "/trailers")
        assert r["body"] == b"x" * 70_000 and r["trailers"] == {b"x-end": b"yes"}
        r = await c.request("GET", "/only")
        assert r["status"] == 200 and r["headers"][b"x-a"] == b"1" and r["body"] == b""
        c.close()
        assert bes[0].connections == 1


async def test_concurrent_requests_share_one_connection(tmp_path):
    async def slow(req):
        await asyncio.sleep(0.05)
        return echo(req)

    async with h2_backends(slow) as bes, lb_to(tmp_path, bes) as lb:
        clients = [await Client.connect(lb.port) for _ in range(20)]
        rs = await asyncio.gather(*(c.request("GET", f"/{i}") for i, c in enumerate(clients)))
        assert [r.status for r in rs] == [200] * 20
        assert [r.header("x-path") for r in rs] == [f"/{i}" for i in range(20)]
        assert bes[0].connections == 1
        for c in clients:
            c.close()


async def test_stream_limit_opens_more_connections(tmp_path):
    async def slow(req):
        await asyncio.sleep(0.1)
        return echo(req)

    async with h2_backends(slow, max_streams=2) as bes, lb_to(tmp_path, bes) as lb:
        clients = [await Client.connect(lb.port) for _ in range(10)]
        rs = await asyncio.gather(*(c.request("POST", "/", body=b"b" * 10) for c in clients))
        assert [r.status for r in rs] == [200] * 10 and all(r.body == b"b" * 10 for r in rs)
        assert 5 <= bes[0].connections <= 10
        for c in clients:
            c.close()


async def test_refused_stream_retried_on_another_backend_for_post(tmp_path):
    async with h2_backends(lambda req: Reply(refuse=True), None) as bes, lb_to(tmp_path, bes) as lb:
        c = await Client.connect(lb.port)
        for _ in range(4):
            r = await c.request("POST", "/x", body=b"payload")
            assert r.status == 200 and r.body == b"payload"
        assert bes[0].requests and len(bes[1].requests) == 4
        c.close()
    # Every backend refusing: a few moves, then 503.
    async with h2_backends(lambda req: Reply(refuse=True)) as bes, lb_to(tmp_path, bes) as lb:
        c = await Client.connect(lb.port)
        r = await c.request("POST", "/x", body=b"payload")
        assert r.status == 503 and 2 <= len(bes[0].requests) <= 5
        c.close()


async def test_backend_killed_mid_stream(tmp_path):
    gone = asyncio.Event()

    async def handler(req):
        if req.path == b"/before":
            for conn in srv.conns:
                conn.w.transport.abort()
            gone.set()
            await asyncio.sleep(10)
        return Reply(200, [], b"z" * 5000, kill=True)

    srv = H2Backend(handler)
    await srv.start()
    try:
        async with lb_to(tmp_path, [srv]) as lb:
            c = await Client.connect(lb.port)
            r = await c.request("POST", "/before", body=b"x")
            assert r.status == 502
            c.close()
            c = await Client.connect(lb.port)
            with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
                await c.request("GET", "/after")
            c.close()
            h = await H2Client.connect(lb.port)
            r = await h.request("GET", "/after")
            assert r["reset"] is not None and len(r["body"]) < 5000
            h.close()
    finally:
        await srv.stop()


async def test_response_head_timeout_and_unreachable_backend(tmp_path):
    async def sleepy(req):
        await asyncio.sleep(3)
        return echo(req)

    timeouts = "    timeouts: {response_head: 0.3, connect: 0.5}\n"
    async with h2_backends(sleepy) as bes, lb_to(tmp_path, bes, timeouts) as lb:
        c = await Client.connect(lb.port)
        r = await c.request("GET", "/")
        assert r.status == 504
        c.close()
    text = lb_yaml(
        [f"127.0.0.1:{free_port()}"],
        port=free_port(),
        admin_port=free_port(),
        extra_service=H2_SERVICE,
    )
    async with running_lb(tmp_path, text) as lb:
        c = await Client.connect(lb.port)
        r = await c.request("GET", "/")
        assert r.status == 502
        c.close()


async def test_pool_idle_close(tmp_path):
    async with (
        h2_backends(None) as bes,
        lb_to(tmp_path, bes, "    pool: {idle_timeout: 0.2}\n") as lb,
    ):
        c = await Client.connect(lb.port)
        assert (await c.request("GET", "/")).status == 200
        await asyncio.sleep(0.5)
        assert (await c.request("GET", "/")).status == 200
        assert bes[0].connections == 2
        c.close()


def test_grpc_timeout_units():
    assert grpc_timeout(b"100m") == pytest.approx(0.1)
    assert grpc_timeout(b"2S") == 2.0 and grpc_timeout(b"1H") == 3600.0
    assert grpc_timeout(b"3M") == 180.0 and grpc_timeout(b"5u") == pytest.approx(5e-6)
    assert grpc_timeout(b"7n") == pytest.approx(7e-9)
    for bad in (b"", b"S", b"1x", b"123456789S", b"-1S"):
        assert grpc_timeout(bad) is None


def test_config_protocol(tmp_path):
    path = tmp_path / "lb.yaml"
    path.write_text(
        lb_yaml(["127.0.0.1:1"], port=free_port(), admin_port=free_port(), extra_service=H2_SERVICE)
    )
    assert load(str(path)).config.services["app"].protocol == "h2"
    for bad in ("    protocol: h3\n", "    health_check: {type: grpc}\n"):
        path.write_text(
            lb_yaml(["127.0.0.1:1"], port=free_port(), admin_port=free_port(), extra_service=bad)
        )
        with pytest.raises(ConfigError):
            load(str(path))
