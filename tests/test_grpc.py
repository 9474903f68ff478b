"""gRPC end to end through lb (grpcio client -> lb over h2c -> grpcio server, protocol: h2):
the four call shapes, a large message, deadlines, statuses and metadata both ways, and lb's own
gRPC-shaped answers. Raw-bytes methods (no .proto): identity serializers."""

import asyncio
import contextlib
import json
import time
from concurrent import futures

import pytest

pytest.importorskip("lb._h2", reason="lb._h2 not built (libnghttp2-dev missing)")
grpc = pytest.importorskip("grpc")

from conftest import Client, free_port, lb_yaml, running_lb  # noqa: E402
from test_h2_proxy import H2  # noqa: E402

BIG = 8 * 1024 * 1024
OPTIONS = [("grpc.max_send_message_length", BIG), ("grpc.max_receive_message_length", BIG)]
SEEN: dict[str, object] = {}


def unary(req, ctx):
    md = dict(ctx.invocation_metadata())
    SEEN["metadata"] = md
    if req == b"fail":
        ctx.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    if req == b"sleep":
        SEEN["remaining"] = ctx.time_remaining()
        time.sleep(1.5)
        return b"late"
    if "x-token-bin" in md:
        ctx.send_initial_metadata((("x-echo-bin", md["x-token-bin"]),))
        ctx.set_trailing_metadata((("x-trailer", "t"), ("x-trailer-bin", b"\x00\xff")))
    return req


def server_stream(req, ctx):
    for i in range(int(req)):
        yield b"m%d" % i
    if int(req) == 3:
        ctx.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "after three")


def client_stream(reqs, ctx):
    return b"|".join(reqs)


def bidi(reqs, ctx):
    for r in reqs:
        yield r.upper()


CALLS: dict[str | bytes, int] = {}


def fails_first(req, ctx):
    """Fails its first call with the status named by the request, then answers OK."""
    name = req.decode()
    n = CALLS[name] = CALLS.get(name, 0) + 1
    if n == 1:
        ctx.abort(getattr(grpc.StatusCode, name), "try again")  # trailers-only
    return b"ok " + req


def stream_then_unavailable(req, ctx):
    CALLS[req] = CALLS.get(req, 0) + 1
    yield b"first"
    ctx.abort(grpc.StatusCode.UNAVAILABLE, "gone mid-stream")


HANDLERS = {
    "Unary": grpc.unary_unary_rpc_method_handler(unary),
    "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
    "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
    "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    "FailsFirst": grpc.unary_unary_rpc_method_handler(fails_first),
    "StreamThenUnavailable": grpc.unary_stream_rpc_method_handler(stream_then_unavailable),
}


@contextlib.contextmanager
def grpc_server(health=None):
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=OPTIONS)
    srv.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", HANDLERS),))
    if health is not None:
        from grpc_health.v1 import health_pb2_grpc

        health_pb2_grpc.add_HealthServicer_to_server(health, srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    try:
        yield port
    finally:
        srv.stop(0)


@contextlib.asynccontextmanager
async def grpc_lb(tmp_path, backends, log=None, routes=None):
    text = lb_yaml(
        backends,
        port=free_port(),
        admin_port=free_port(),
        extra_listener=H2 + (f"    access_log: {{path: {log}}}\n" if log else ""),
        extra_service="    protocol: h2\n",
        routes=routes,
    )
    async with running_lb(tmp_path, text) as lb:
        yield lb


def call(port, fn):
    """fn(channel) in a thread, on a fresh channel to lb."""

    def run():
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS) as ch:
            return fn(ch)

    return asyncio.wait_for(asyncio.to_thread(run), 10)


def method(ch, kind, name):
    return getattr(ch, kind)(f"/test.Echo/{name}")


async def test_four_call_shapes_and_a_large_message(tmp_path):
    with grpc_server() as port:
        async with grpc_lb(tmp_path, [f"127.0.0.1:{port}"]) as lb:
            assert await call(lb.port, lambda ch: method(ch, "unary_unary", "Unary")(b"hi")) == (
                b"hi"
            )
            out = await call(
                lb.port, lambda ch: list(method(ch, "unary_stream", "ServerStream")(b"5"))
            )
            assert out == [b"m0", b"m1", b"m2", b"m3", b"m4"]
            out = await call(
                lb.port,
                lambda ch: method(ch, "stream_unary", "ClientStream")(iter([b"a", b"b", b"c"])),
            )
            assert out == b"a|b|c"
            out = await call(
                lb.port,
                lambda ch: list(method(ch, "stream_stream", "Bidi")(iter([b"x", b"yz"] * 20))),
            )
            assert out == [b"X", b"YZ"] * 20
            big = bytes(range(256)) * (4 * 4096)  # 4 MiB
            out = await call(lb.port, lambda ch: method(ch, "unary_unary", "Unary")(big))
            assert out == big
            md = SEEN["metadata"]
            assert md.get("x-forwarded-for") == "127.0.0.1"


async def test_status_details_and_metadata_pass_through(tmp_path):
    log = tmp_path / "access.log"
    with grpc_server() as port:
        async with grpc_lb(tmp_path, [f"127.0.0.1:{port}"], log) as lb:

            def failing(ch):
                with pytest.raises(grpc.RpcError) as err:
                    method(ch, "unary_unary", "Unary")(b"fail")
                return err.value

            e = await call(lb.port, failing)  # a trailers-only response
            assert e.code() == grpc.StatusCode.NOT_FOUND and e.details() == "no such thing"

            def stream_then_fail(ch):
                got = []
                with pytest.raises(grpc.RpcError) as err:
                    for m in method(ch, "unary_stream", "ServerStream")(b"3"):
                        got.append(m)
                return got, err.value

            got, e = await call(lb.port, stream_then_fail)
            assert got == [b"m0", b"m1", b"m2"]
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and e.details() == "after three"

            def with_metadata(ch):
                return method(ch, "unary_unary", "Unary").with_call(
                    b"md", metadata=(("x-token-bin", b"\x01\x02\x00\xfe"), ("x-plain", "p"))
                )

            resp, c = await call(lb.port, with_metadata)
            assert resp == b"md"
            assert dict(c.initial_metadata())["x-echo-bin"] == b"\x01\x02\x00\xfe"
            trailing = dict(c.trailing_metadata())
            assert trailing["x-trailer"] == "t" and trailing["x-trailer-bin"] == b"\x00\xff"
            assert SEEN["metadata"]["x-plain"] == "p"
            lines = []
            for _ in range(100):
                lines = (
                    [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
                )
                if len(lines) >= 3:
                    break
                await asyncio.sleep(0.02)
            assert [x["grpc_status"] for x in lines] == ["5", "8", "0"]


async def test_deadline_exceeded_and_grpc_timeout_forwarded(tmp_path):
    with grpc_server() as port:
        async with grpc_lb(tmp_path, [f"127.0.0.1:{port}"]) as lb:

            def late(ch):
                t0 = time.monotonic()
                with pytest.raises(grpc.RpcError) as err:
                    method(ch, "unary_unary", "Unary")(b"sleep", timeout=0.4)
                return err.value, time.monotonic() - t0

            e, took = await call(lb.port, late)
            assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED and took < 1.4
            remaining = SEEN["remaining"]
            assert remaining is not None and 0 < remaining <= 0.4  # grpc-timeout reached it


async def test_grpc_timeout_bounds_lbs_wait(tmp_path):
    # A raw HTTP/2 client sends grpc-timeout and never gives up itself: lb ends the call.
    from test_h2_proxy import H2Client

    with grpc_server() as port:
        async with grpc_lb(tmp_path, [f"127.0.0.1:{port}"]) as lb:
            c = await H2Client.connect(lb.port)
            t0 = time.monotonic()
            msg = b"\x00\x00\x00\x00\x05sleep"
            sid = c.start(
                "POST",
                "/test.Echo/Unary",
                [
                    ("content-type", "application/grpc"),
                    ("te", "trailers"),
                    ("grpc-timeout", "200m"),
                ],
                body=msg,
            )
            await c.send_body(sid, msg)
            r = await c.wait(sid)
            assert time.monotonic() - t0 < 1.2
            assert r["status"] == 200 and r["headers"][b"grpc-status"] == b"4"
            c.close()


async def test_unavailable_without_a_backend_and_http1_refused(tmp_path):
    async with grpc_lb(tmp_path, []) as lb:

        def unavailable(ch):
            with pytest.raises(grpc.RpcError) as err:
                method(ch, "unary_unary", "Unary")(b"x", timeout=5)
            return err.value

        e = await call(lb.port, unavailable)
        assert e.code() == grpc.StatusCode.UNAVAILABLE
    async with grpc_lb(tmp_path, [f"127.0.0.1:{free_port()}"]) as lb:
        e = await call(lb.port, unavailable)  # connection refused: 502 -> UNAVAILABLE
        assert e.code() == grpc.StatusCode.UNAVAILABLE
        c = await Client.connect(lb.port)
        r = await c.request(
            "POST", "/test.Echo/Unary", headers="content-type: application/grpc\r\n", body=b"x"
        )
        assert r.status == 505 and b"HTTP/2" in r.body
        c.close()


async def test_grpc_health_check(tmp_path):
    health_mod = pytest.importorskip("grpc_health.v1.health")
    from grpc_health.v1 import health_pb2

    from lb.health.active import ActiveChecker, HealthCheckSettings

    health = health_mod.HealthServicer()
    health.set("", health_pb2.HealthCheckResponse.SERVING)
    health.set("test.Down", health_pb2.HealthCheckResponse.NOT_SERVING)
    with grpc_server(health) as port:

        async def probe(**kw):
            settings = HealthCheckSettings(type="grpc", timeout=2.0, **kw)
            return await ActiveChecker("127.0.0.1", port, settings, lambda *a: None).probe()

        assert await probe() == (True, "SERVING")
        assert await probe(grpc_service="test.Down") == (False, "NOT_SERVING")
        assert await probe(grpc_service="nope") == (False, "grpc-status 5")
        # In a service's config: a backend whose checks pass keeps serving.
        text = lb_yaml(
            [f"127.0.0.1:{port}"],
            port=free_port(),
            admin_port=free_port(),
            extra_listener=H2,
            extra_service="    protocol: h2\n    health_check: {type: grpc, interval: 0.1}\n",
        )
        async with running_lb(tmp_path, text) as lb:
            await asyncio.sleep(0.3)
            out = await call(lb.port, lambda ch: method(ch, "unary_unary", "Unary")(b"ok"))
            assert out == b"ok"
    port = free_port()
    assert (await probe())[0] is False


GRPC_RETRIES = """\
routes:
  - name: all
    match: {path: {prefix: /}}
    service: app
    retries: {attempts: 3, grpc_status: [unavailable, 8], backoff: 1ms}
"""


def fails_first_call(name):
    def run(ch):
        try:
            return method(ch, "unary_unary", "FailsFirst")(name.encode()), None
        except grpc.RpcError as e:
            return None, e

    return run


async def test_trailers_only_grpc_status_is_retried_when_listed(tmp_path):
    from test_metrics import promtool_check, scrape, value

    CALLS.clear()
    with grpc_server() as port:
        async with grpc_lb(tmp_path, [f"127.0.0.1:{port}"], routes=GRPC_RETRIES) as lb:
            # UNAVAILABLE (by name) and RESOURCE_EXHAUSTED (by code 8): retried, the client
            # sees the second answer.
            for name in ("UNAVAILABLE", "RESOURCE_EXHAUSTED"):
                out, err = await call(lb.port, fails_first_call(name))
                assert err is None and out == b"ok " + name.encode()
                assert CALLS[name] == 2
            # NOT_FOUND is not in the list: passed on as it is, one call.
            out, err = await call(lb.port, fails_first_call("NOT_FOUND"))
            assert out is None and err.code() == grpc.StatusCode.NOT_FOUND
            assert err.details() == "try again" and CALLS["NOT_FOUND"] == 1

            # Messages already went to the client: never retried, even with a listed code.
            def streaming(ch):
                got = []
                with pytest.raises(grpc.RpcError) as err:
                    for m in method(ch, "unary_stream", "StreamThenUnavailable")(b"s"):
                        got.append(m)
                return got, err.value

            got, e = await call(lb.port, streaming)
            assert got == [b"first"] and e.code() == grpc.StatusCode.UNAVAILABLE
            assert CALLS[b"s"] == 1

            text = await scrape(lb)
            assert value(text, "lb_retries_total", route="all") == 2
            assert value(text, "lb_backend_failures_total", kind="grpc-status") == 2
            grpc_total = "lb_grpc_responses_total"
            assert value(text, grpc_total, route="all", grpc_status="OK") == 2
            assert value(text, grpc_total, route="all", grpc_status="NOT_FOUND") == 1
            assert value(text, grpc_total, route="all", grpc_status="UNAVAILABLE") == 1
            assert value(text, grpc_total) == 4  # the retried answers never reached a client
            promtool_check(text)


async def test_grpc_status_retries_stop_at_the_attempts(tmp_path):
    from test_metrics import scrape, value

    routes = GRPC_RETRIES.replace("attempts: 3", "attempts: 1")
    CALLS.clear()
    with grpc_server() as port:
        async with grpc_lb(tmp_path, [f"127.0.0.1:{port}"], routes=routes) as lb:
            out, err = await call(lb.port, fails_first_call("UNAVAILABLE"))
            assert out is None and err.code() == grpc.StatusCode.UNAVAILABLE
            assert CALLS["UNAVAILABLE"] == 1
            c = await Client.connect(lb.port)
            await c.request(path="/plain")  # not a gRPC call: not counted
            c.close()
            text = await scrape(lb)
            assert value(text, "lb_grpc_responses_total", grpc_status="UNAVAILABLE") == 1
            assert value(text, "lb_grpc_responses_total") == 1
