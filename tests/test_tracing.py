"""Tracing: W3C trace context through lb, and OpenTelemetry spans exported over OTLP/HTTP to a
real receiver (aiohttp, on the test's loop) that decodes them with opentelemetry-proto."""

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from conftest import Client, backends, free_port, lb_yaml, running_lb, serve_app

from lb.config import ConfigError, load
from lb.proxy.headers import RequestInfo, analyze_request
from lb.tracing.context import Propagator, parse_traceparent

pb = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
trace_pb = pytest.importorskip("opentelemetry.proto.trace.v1.trace_pb2")

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@dataclass
class Receiver:
    """An OTLP/HTTP traces endpoint: every export it got, decoded."""

    status: int = 200
    hold: asyncio.Event | None = None  # set: answer; unset: keep the exporter waiting
    exports: list[tuple[dict[str, str], object]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()  # aiohttp undoes a Content-Encoding: gzip
        if self.hold is not None:
            await self.hold.wait()
        msg = pb.ExportTraceServiceRequest()
        msg.ParseFromString(body)
        self.exports.append((dict(request.headers), msg))
        if self.status != 200:
            return web.Response(status=self.status, text="no")
        out = pb.ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=out, content_type="application/x-protobuf")

    def spans(self) -> list[tuple[dict, object]]:
        """(resource attributes, span) of every span received."""
        out = []
        for _, msg in self.exports:
            for rs in msg.resource_spans:
                resource = attrs(rs.resource)
                for ss in rs.scope_spans:
                    out.extend((resource, s) for s in ss.spans)
        return out


def attrs(obj) -> dict:
    out = {}
    for kv in obj.attributes:
        kind = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, kind)
    return out


async def until(check, timeout: float = 10.0):
    """Poll `check` (bounded) until it returns something truthy; returns that."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.02)


def receiver(r: Receiver):
    app = web.Application()
    app.router.add_post("/v1/traces", r.handle)
    return serve_app(app)


def tracing_yaml(endpoint: str, **over) -> str:
    otlp = {"endpoint": endpoint, "timeout": "1s", **over.pop("otlp", {})}
    settings = {"sampling": 1.0, "interval": "50ms", "service_name": "lb-test", **over}
    lines = [f"  {k}: {json.dumps(v)}\n" for k, v in {"otlp": otlp, **settings}.items()]
    return "tracing:\n" + "".join(lines)


def config(bes, endpoint: str | None, listener: str = "", **over) -> str:
    """lb in front of `bes` (route `all`), a route `down` to a service without backends, and
    tracing to `endpoint` (None: tracing off) with `over`'s settings."""
    routes = (
        "routes:\n"
        "  - name: down\n    match: {path: {prefix: /down}}\n    service: empty\n"
        "  - name: all\n    match: {path: {prefix: /}}\n    service: app\n"
    )
    return lb_yaml(
        [b.address for b in bes],
        port=free_port(),
        admin_port=free_port(),
        routes=routes,
        extra_service="  empty:\n    backends: []\n",
        extra_listener=listener,
        extra=tracing_yaml(endpoint, **over) if endpoint is not None else "",
    )


@contextlib.asynccontextmanager
async def traced(tmp_path, r: "Receiver", listener: str = "", **over):
    """A receiver, a backend and lb tracing to the receiver: (lb, backends)."""
    async with receiver(r) as addr, backends(1) as bes:
        text = config(bes, f"http://{addr}/v1/traces", listener, **over)
        async with running_lb(tmp_path, text) as lb:
            yield lb, bes


def forwarded(seen) -> tuple[str, str, str, str]:
    """The traceparent a backend got, as (version, trace id, span id, flags)."""
    value = seen.header("traceparent")
    assert value is not None
    assert [n for n, _ in seen.headers if n.lower() == "traceparent"] == ["traceparent"]
    version, trace_id, span_id, flags = value.split("-")
    return version, trace_id, span_id, flags


async def metric(lb, result: str) -> float:
    import aiohttp

    async with aiohttp.ClientSession() as s, s.get(f"{lb.admin}/metrics") as r:
        text = await r.text()
    line = f'lb_tracing_spans_total{{result="{result}"}} '
    return next(float(x.split()[-1]) for x in text.splitlines() if x.startswith(line))


# -- the trace context ------------------------------------------------------------------------
def test_traceparent_parsing_follows_level_1():
    ok = f"00-{TRACE}-{PARENT}-01"
    assert parse_traceparent(ok.encode()) == (TRACE.encode(), PARENT.encode(), True)
    assert parse_traceparent(f"00-{TRACE}-{PARENT}-00".encode())[2] is False
    assert parse_traceparent(f"00-{TRACE}-{PARENT}-03".encode())[2] is True  # other bits ignored
    # A later version: the first four fields, whatever follows a dash after them.
    future = parse_traceparent(f"cc-{TRACE}-{PARENT}-01-what-the-future".encode())
    assert future == (TRACE.encode(), PARENT.encode(), True)
    assert parse_traceparent(f"cc-{TRACE}-{PARENT}-01".encode()) is not None
    for bad in (
        f"00-{TRACE}-{PARENT}-01-extra",  # version 00 is exactly 55 characters
        f"00-{TRACE.upper()}-{PARENT}-01",
        f"00-{'0' * 32}-{PARENT}-01",
        f"00-{TRACE}-{'0' * 16}-01",
        f"ff-{TRACE}-{PARENT}-01",
        f"0-{TRACE}-{PARENT}-01",
        f"00-{TRACE[:-1]}-{PARENT}-01",
        f"00-{TRACE}-{PARENT}-1",
        f"cc-{TRACE}-{PARENT}-01x",
        f"00_{TRACE}_{PARENT}_01",
        "",
        "garbage",
    ):
        assert parse_traceparent(bad.encode()) is None, bad


def test_new_traces_sample_like_opentelemetry_trace_id_ratio():
    from opentelemetry.sdk.trace.sampling import Decision, TraceIdRatioBased

    for ratio in (0.0, 0.01, 0.25, 1.0):
        sampler = TraceIdRatioBased(ratio)
        tracer = Propagator(ratio)
        sampled = 0
        for _ in range(2000):
            info = RequestInfo()
            tracer.begin(info)
            name, value = info.forward[-1]
            assert name == b"traceparent"
            _, trace_id, _, flags = value.decode().split("-")
            want = sampler.should_sample(None, int(trace_id, 16), "x").decision
            assert (flags == "01") == (want is Decision.RECORD_AND_SAMPLE) == info.trace.sampled
            sampled += flags == "01"
        assert sampled == {0.0: 0, 1.0: 2000}.get(ratio, sampled)


def test_header_names_any_case_and_tracestate_joined():
    tracer = Propagator(0.0)
    info = analyze_request(
        [
            (b"TraceParent", f"00-{TRACE}-{PARENT}-01".encode()),
            (b"accept", b"*/*"),
            (b"TRACESTATE", b"a=1"),
            (b"tracestate", b" b=2 "),
        ]
    )
    assert info.trace_headers
    tracer.begin(info)
    names = [n for n, _ in info.forward]
    assert names == [b"accept", b"tracestate", b"traceparent"]
    assert info.forward[1] == (b"tracestate", b"a=1,b=2")
    assert info.trace.trace_id == TRACE.encode() and info.trace.parent_id == PARENT.encode()
    assert info.trace.sampled  # the parent's flag, whatever the ratio


def test_trace_headers_named_hop_by_hop_are_dropped_and_a_trace_starts():
    tracer = Propagator(0.0)
    info = analyze_request(
        [
            (b"traceparent", f"00-{TRACE}-{PARENT}-01".encode()),
            (b"connection", b"traceparent"),
            (b"accept", b"*/*"),
        ]
    )
    assert not info.trace_headers
    tracer.begin(info)
    assert [n for n, _ in info.forward] == [b"accept", b"traceparent"]
    assert info.trace.parent_id is None and info.trace.trace_id != TRACE.encode()


# -- through lb -------------------------------------------------------------------------------
async def test_parent_continued_and_span_exported_with_attributes(tmp_path):
    r = Receiver()
    async with traced(tmp_path, r) as (lb, bes):
        c = await Client.connect(lb.port)
        before = time.time_ns()
        resp = await c.request(
            path="/items?q=1",
            headers=f"traceparent: 00-{TRACE}-{PARENT}-01\r\ntracestate: vendor=abc\r\n",
        )
        assert resp.status == 200
        version, trace_id, span_id, flags = forwarded(bes[0].seen[-1])
        assert (version, trace_id, flags) == ("00", TRACE, "01")
        assert span_id != PARENT and len(span_id) == 16 and span_id != "0" * 16
        assert bes[0].seen[-1].header("tracestate") == "vendor=abc"
        got = await until(r.spans)
        c.close()
    assert len(got) == 1
    resource, span = got[0]
    assert resource["service.name"] == "lb-test"
    assert span.trace_id == bytes.fromhex(TRACE)
    assert span.span_id == bytes.fromhex(span_id)
    assert span.parent_span_id == bytes.fromhex(PARENT)
    assert span.trace_state == "vendor=abc"
    assert span.kind == trace_pb.Span.SPAN_KIND_SERVER
    assert span.name == "GET all"
    assert before <= span.start_time_unix_nano <= span.end_time_unix_nano <= time.time_ns()
    assert span.status.code == trace_pb.Status.STATUS_CODE_UNSET
    a = attrs(span)
    assert a["lb.route"] == "all" and a["lb.service"] == "app"
    assert a["lb.backend"] == bes[0].address
    assert a["network.peer.address"] == "127.0.0.1"
    assert a["network.peer.port"] == bes[0].port
    assert a["http.request.method"] == "GET" and a["http.response.status_code"] == 200
    assert a["url.path"] == "/items" and a["lb.retries"] == 0
    assert a["server.address"] == "test" and a["network.protocol.version"] == "1.1"
    assert a["client.address"] == "127.0.0.1"
    assert "lb.failure" not in a


async def test_new_trace_started_and_5xx_is_an_error(tmp_path):
    r = Receiver()
    async with traced(tmp_path, r) as (lb, bes):
        c = await Client.connect(lb.port)
        assert (await c.request(path="/")).status == 200
        _, trace_id, span_id, flags = forwarded(bes[0].seen[-1])
        assert flags == "01" and bes[0].seen[-1].header("tracestate") is None
        assert (await c.request(path="/down")).status == 503
        got = await until(lambda: len(r.spans()) >= 2 and r.spans())
        c.close()
    (_, ok), (_, down) = sorted(got, key=lambda rs: rs[1].start_time_unix_nano)
    assert ok.trace_id == bytes.fromhex(trace_id) and ok.span_id == bytes.fromhex(span_id)
    assert ok.parent_span_id == b""
    assert down.trace_id != ok.trace_id
    assert down.status.code == trace_pb.Status.STATUS_CODE_ERROR
    assert attrs(down)["http.response.status_code"] == 503
    assert attrs(down)["lb.route"] == "down" and "lb.backend" not in attrs(down)


async def test_invalid_traceparent_starts_a_new_trace_without_its_tracestate(tmp_path):
    cases = [
        f"00-{TRACE.upper()}-{PARENT}-01",
        f"00-{'0' * 32}-{PARENT}-01",
        f"00-{TRACE}-{'0' * 16}-01",
        f"ff-{TRACE}-{PARENT}-01",
        f"00-{TRACE}-{PARENT}-01-extra",
        "nonsense",
    ]
    r = Receiver()
    async with traced(tmp_path, r) as (lb, bes):
        c = await Client.connect(lb.port)
        for value in cases:
            resp = await c.request(headers=f"traceparent: {value}\r\ntracestate: x=1\r\n")
            assert resp.status == 200
            seen = bes[0].seen[-1]
            _, trace_id, _, flags = forwarded(seen)
            assert trace_id != TRACE and flags == "01", value
            assert seen.header("tracestate") is None, value
        # Two traceparent headers name no single parent: a new trace too.
        two = f"traceparent: 00-{TRACE}-{PARENT}-01\r\n" * 2
        assert (await c.request(headers=two)).status == 200
        assert forwarded(bes[0].seen[-1])[1] != TRACE
        got = await until(lambda: len(r.spans()) >= len(cases) + 1 and r.spans())
        c.close()
    assert len(got) == len(cases) + 1
    assert all(span.parent_span_id == b"" for _, span in got)


async def test_unsampled_parent_is_propagated_but_not_exported(tmp_path):
    unsampled = "1" * 32
    r = Receiver()
    async with traced(tmp_path, r) as (lb, bes):
        c = await Client.connect(lb.port)
        resp = await c.request(
            headers=f"traceparent: 00-{unsampled}-{PARENT}-00\r\ntracestate: k=v\r\n"
        )
        assert resp.status == 200
        _, trace_id, span_id, flags = forwarded(bes[0].seen[-1])
        assert (trace_id, flags) == (unsampled, "00") and span_id != PARENT
        assert bes[0].seen[-1].header("tracestate") == "k=v"
        # A sampled request after it: its span arrives; spans leave in order, so the
        # unsampled one would have been in the same export or an earlier one.
        await c.request(headers=f"traceparent: 00-{TRACE}-{PARENT}-01\r\n")
        assert await until(r.spans)
        c.close()
        exported = await metric(lb, "exported")
    assert [s.trace_id for _, s in r.spans()] == [bytes.fromhex(TRACE)]
    assert exported == 1


async def test_sampling_zero_propagates_without_spans(tmp_path):
    r = Receiver()
    async with traced(tmp_path, r, sampling=0.0) as (lb, bes):
        c = await Client.connect(lb.port)
        ids = set()
        for _ in range(5):
            assert (await c.request()).status == 200
            _, trace_id, _, flags = forwarded(bes[0].seen[-1])
            assert flags == "00"
            ids.add(trace_id)
        assert len(ids) == 5
        # The parent's sampled flag wins over the ratio.
        await c.request(headers=f"traceparent: 00-{TRACE}-{PARENT}-01\r\n")
        assert await until(r.spans)
        c.close()
    assert [s.trace_id for _, s in r.spans()] == [bytes.fromhex(TRACE)]


async def counted(lb, result: str, n: int) -> float:
    """`lb_tracing_spans_total{result}` once it reaches `n`, or as it is after 10 s."""
    got = 0.0
    deadline = time.monotonic() + 10
    while got < n and time.monotonic() < deadline:
        got = await metric(lb, result)
        await asyncio.sleep(0.05)
    return got


@pytest.mark.parametrize("down", [False, True], ids=["receiver-500", "receiver-down"])
async def test_export_failures_never_touch_requests_and_are_counted(tmp_path, down):
    r = Receiver(status=500)
    otlp = {"timeout": "300ms"}
    if down:
        otlp["endpoint"] = f"http://127.0.0.1:{free_port()}/v1/traces"
    async with traced(tmp_path, r, otlp=otlp, batch=1) as (lb, _):
        c = await Client.connect(lb.port)
        for _ in range(3):
            assert (await c.request()).status == 200
        c.close()
        assert await counted(lb, "failed", 3) == 3
        assert await metric(lb, "exported") == 0
    assert bool(r.exports) is not down


async def test_a_full_queue_drops_and_counts(tmp_path):
    r = Receiver(hold=asyncio.Event())
    async with traced(tmp_path, r, otlp={"timeout": "5s"}, batch=1, max_queue=1) as (lb, _):
        c = await Client.connect(lb.port)
        for _ in range(5):  # the exporter holds one in its export, the queue one more
            assert (await c.request()).status == 200
        assert await metric(lb, "dropped") >= 3
        r.hold.set()
        exported = await counted(lb, "exported", 2)
        assert exported + await metric(lb, "dropped") == 5
        c.close()


async def test_queued_spans_are_exported_at_shutdown(tmp_path):
    r = Receiver()
    async with receiver(r) as addr, backends(1) as bes:
        text = config(bes, f"http://{addr}/v1/traces", interval="1h")
        async with running_lb(tmp_path, text) as lb:
            c = await Client.connect(lb.port)
            assert (await c.request()).status == 200
            c.close()
            assert not r.exports
        # running_lb's exit shut lb down: the span went out on the way.
        assert len(r.spans()) == 1


async def test_otlp_headers_and_gzip(tmp_path):
    r = Receiver()
    otlp = {"headers": {"x-api-key": "k-123"}, "compression": True}
    async with traced(tmp_path, r, otlp=otlp) as (lb, _):
        c = await Client.connect(lb.port)
        assert (await c.request()).status == 200
        assert await until(r.spans)
        c.close()
    headers, _ = r.exports[0]
    assert headers["x-api-key"] == "k-123" and headers["Content-Encoding"] == "gzip"
    assert headers["Content-Type"] == "application/x-protobuf"


async def test_access_log_carries_the_trace_id(tmp_path):
    log = tmp_path / "access.log"
    access = f"    access_log: {{path: {log}}}\n"
    async with traced(tmp_path, Receiver(), access, sampling=0.0) as (lb, bes):
        c = await Client.connect(lb.port)
        assert (await c.request()).status == 200
        assert (await c.request(headers=f"traceparent: 00-{TRACE}-{PARENT}-00\r\n")).status
        first = forwarded(bes[0].seen[0])[1]
        c.close()
        assert await until(lambda: log.exists() and len(log.read_text().splitlines()) >= 2)
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["trace_id"] for e in entries] == [first, TRACE]


async def test_tracing_off_leaves_the_headers_alone(tmp_path):
    log = tmp_path / "access.log"
    async with backends(1) as bes:
        text = config(bes, None, f"    access_log: {{path: {log}}}\n")
        async with running_lb(tmp_path, text) as lb:
            assert lb.server.runtime.tracer is None
            assert not [o for o in lb.server.runtime.observers if type(o).__name__ == "SpanQueue"]
            c = await Client.connect(lb.port)
            sent = f"00-{TRACE}-{PARENT}-01"
            assert (await c.request(headers=f"traceparent: {sent}\r\n")).status == 200
            assert bes[0].seen[-1].header("traceparent") == sent
            assert (await c.request()).status == 200
            assert bes[0].seen[-1].header("traceparent") is None
            c.close()
            await until(lambda: log.exists() and len(log.read_text().splitlines()) >= 2)
    assert {json.loads(line)["trace_id"] for line in log.read_text().splitlines()} == {None}


async def test_reload_turns_tracing_on_changes_sampling_and_off(tmp_path):
    r = Receiver()
    async with receiver(r) as addr, backends(1) as bes:
        off = config(bes, None)
        async with running_lb(tmp_path, off) as lb:
            c = await Client.connect(lb.port)
            await c.request()
            assert bes[0].seen[-1].header("traceparent") is None
            endpoint = f"http://{addr}/v1/traces"
            for sampling, flags in ((1.0, "01"), (0.0, "00")):
                lb.write_config(off + tracing_yaml(endpoint, sampling=sampling))
                assert (await lb.server.reload())[0]
                await c.request()
                assert forwarded(bes[0].seen[-1])[3] == flags
            lb.write_config(off)
            assert (await lb.server.reload())[0]
            await c.request()
            assert bes[0].seen[-1].header("traceparent") is None
            assert await until(r.spans)
            c.close()
    assert len(r.spans()) == 1  # the one request sampled at 1.0


async def test_http2_requests_are_traced(tmp_path):
    pytest.importorskip("lb._h2", reason="lb._h2 not built (libnghttp2-dev missing)")
    httpx = pytest.importorskip("httpx")
    r = Receiver()
    h2 = "    protocols: [http1, h2]\n"
    async with (
        traced(tmp_path, r, h2) as (lb, bes),
        httpx.AsyncClient(http1=False, http2=True) as client,
    ):
        resp = await client.get(f"{lb.url}/h2", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
        assert resp.status_code == 200 and resp.http_version == "HTTP/2"
        _, trace_id, span_id, _ = forwarded(bes[0].seen[-1])
        assert trace_id == TRACE
        got = await until(r.spans)
    (_, span) = got[0]
    assert span.span_id == bytes.fromhex(span_id)
    assert span.parent_span_id == bytes.fromhex(PARENT)
    assert attrs(span)["network.protocol.version"] == "2"
    assert attrs(span)["url.path"] == "/h2"


def problems(tmp_path, tracing: str) -> str:
    path = tmp_path / "lb.yaml"
    path.write_text(lb_yaml(["127.0.0.1:1"], port=free_port(), admin_port=free_port()) + tracing)
    with pytest.raises(ConfigError) as info:
        load(str(path))
    out = "\n".join(str(p) for p in info.value.problems)
    assert f"{path}:" in out  # file:line positions
    return out


def test_config_is_validated(tmp_path):
    out = problems(
        tmp_path,
        "tracing:\n"
        "  otlp:\n"
        '    endpoint: "ftp://collector/v1/traces"\n'
        "    timeout: 0s\n"
        '    headers: {"bad name": x}\n'
        "  sampling: 1.5\n",
    )
    for want in (
        "tracing.otlp.endpoint: an http:// or https:// URL",
        "tracing.otlp.timeout: expected a positive duration",
        'tracing.otlp.headers: "bad name" is not a header name',
        'tracing.sampling: expected a ratio from 0 to 1, found "1.5"',
    ):
        assert want in out, (want, out)
    out = problems(tmp_path, 'tracing: {max_queue: 10, batch: 20, service_name: ""}\n')
    assert "tracing.batch: expected at most max_queue" in out
    assert "tracing.service_name: expected a non-empty name" in out
    out = problems(tmp_path, 'tracing: {otlp: {endpoint: "http://collector:99999/v1/traces"}}\n')
    assert "tracing.otlp.endpoint" in out


def test_random_ids_are_not_repeated():
    tracer = Propagator(1.0)
    seen = set()
    for _ in range(1000):
        info = RequestInfo()
        tracer.begin(info)
        seen.add((info.trace.trace_id, info.trace.span_id))
    assert len(seen) == 1000
