"""/metrics on the admin port: exposition format, counters under real traffic, cardinality."""

import asyncio
import shutil
import subprocess
from collections import defaultdict

import aiohttp
import pytest
from conftest import Client, backends, exchange, free_port, lb_yaml, ok_response, running_lb
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families

from lb.observe.metrics import COUNTERS, Metrics, register_counter
from lb.observe.recorder import BUCKETS

ROUTES = """\
routes:
  - name: api
    match: {path: {prefix: /api}}
    service: app
  - name: hello
    match: {path: {exact: /hello}}
    respond: {status: 200, body: "hi"}
"""


async def scrape(lb, accept: str = "") -> str:
    headers = {"Accept": accept} if accept else {}
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{lb.admin}/metrics", headers=headers) as r,
    ):
        assert r.status == 200
        return await r.text()


def samples(text: str) -> dict[str, dict[tuple, float]]:
    """name -> {sorted label items -> value}."""
    out: dict[str, dict[tuple, float]] = defaultdict(dict)
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name][tuple(sorted(s.labels.items()))] = s.value
    return out


def value(text: str, metric: str, /, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    return sum(
        v
        for key, v in samples(text).get(metric, {}).items()
        if all(dict(key).get(k) == want for k, want in labels.items())
    )


def label_values(text: str, name: str, label: str) -> set[str]:
    return {dict(k)[label] for k in samples(text).get(name, {})}


def lb_for(tmp_path, bes, **kw):
    kw.setdefault("routes", ROUTES)
    return running_lb(
        tmp_path, lb_yaml([b.address for b in bes], port=free_port(), admin_port=free_port(), **kw)
    )


def promtool_check(text: str) -> None:
    if shutil.which("promtool") is None:
        pytest.skip("promtool not installed (Debian package `prometheus`)")
    res = subprocess.run(
        ["promtool", "check", "metrics"], input=text.encode(), capture_output=True, timeout=30
    )
    out = (res.stdout + res.stderr).decode()
    assert res.returncode == 0 and not out.strip(), out


async def traffic(lb) -> None:
    c = await Client.connect(lb.port)
    for _ in range(3):
        assert (await c.request(path="/api/x")).status == 200
    assert (await c.request("POST", path="/api/x", body=b"x")).status == 200
    assert (await c.request("PROPFIND", path="/api/x")).status == 200
    assert (await c.request(path="/hello")).status == 200
    assert (await c.request(path="/nowhere")).status == 404
    c.close()
    raw = await exchange(lb.port, b"GARBAGE\r\n\r\n", until_close=True)
    assert raw.startswith(b"HTTP/1.1 400")


async def test_exposition_parses_and_passes_promtool(tmp_path):
    async with backends(2) as bes, lb_for(tmp_path, bes) as lb:
        await traffic(lb)
        text = await scrape(lb)
        families = list(text_string_to_metric_families(text))
        names = {f.name for f in families}
        assert all(n.startswith("lb_") for n in names), sorted(names)
        for expected in (
            "lb_requests",
            "lb_request_duration_seconds",
            "lb_backend_state",
            "lb_build_info",
            "lb_config_reload",
            "lb_client_connections",
            "lb_refused",
            "lb_process_cpu_seconds",
        ):
            assert expected in names, expected
        promtool_check(text)
        # Prometheus itself asks for OpenMetrics first; that rendering must parse too.
        om = await scrape(lb, "application/openmetrics-text;version=1.0.0")
        assert om.rstrip().endswith("# EOF")
        assert {f.name for f in parse_om(om)} >= {"lb_requests", "lb_build"}


async def test_counters_follow_real_traffic(tmp_path):
    async with backends(2) as bes, lb_for(tmp_path, bes) as lb:
        await traffic(lb)
        text = await scrape(lb)
        svc_total = value(text, "lb_requests_total", route="api", service="app")
        assert svc_total == 5
        assert value(text, "lb_requests_total", route="api", method="GET", code="200") == 3
        assert value(text, "lb_requests_total", route="api", method="POST") == 1
        assert value(text, "lb_requests_total", route="api", method="OTHER") == 1
        assert label_values(text, "lb_requests_total", "backend") >= {b.address for b in bes}
        assert value(text, "lb_requests_total", route="hello", service="", backend="") == 1
        assert value(text, "lb_requests_total", route="", code="404") == 1
        assert value(text, "lb_refused_total", listener="web", code="400") == 1
        assert value(text, "lb_backend_selected_total", service="app") == 5
        assert value(text, "lb_request_duration_seconds_count", route="api", service="app") == 5
        inf = value(text, "lb_request_duration_seconds_bucket", route="api", le="+Inf")
        assert inf == 5
        assert len(label_values(text, "lb_request_duration_seconds_bucket", "le")) == (
            len(BUCKETS) + 1
        )
        assert value(text, "lb_upstream_duration_seconds_count", service="app") == 5
        assert value(text, "lb_client_connections_accepted_total", listener="web") == 2
        assert value(text, "lb_backend_up", service="app") == 2
        assert value(text, "lb_config_reload_total", result="success") == 0
        assert value(text, "lb_config_last_reload_success") == 1
        info = samples(text)["lb_build_info"]
        (labels,) = info
        assert dict(labels)["loop"] in ("uvloop", "asyncio")
        assert dict(labels)["picker"] in ("cython", "python")


async def test_in_flight_gauges_during_a_slow_request(tmp_path):
    release = asyncio.Event()

    async def slow(req):
        await release.wait()
        return ok_response(b"late")

    async with backends(1, respond=slow) as bes, lb_for(tmp_path, bes) as lb:
        c = await Client.connect(lb.port)
        pending = asyncio.create_task(c.request(path="/api/slow"))
        for _ in range(100):
            text = await scrape(lb)
            if value(text, "lb_requests_in_flight", service="app") == 1:
                break
            await asyncio.sleep(0.02)
        assert value(text, "lb_backend_in_flight", backend=bes[0].address) == 1
        assert value(text, "lb_client_connections", listener="web") == 1
        release.set()
        assert (await pending).status == 200
        c.close()
        text = await scrape(lb)
        assert value(text, "lb_requests_in_flight", service="app") == 0


async def test_backend_state_failures_and_drain(tmp_path):
    dead = free_port()  # nothing listens here
    no_retries = ROUTES.replace("service: app\n", "service: app\n    retries: {attempts: 1}\n")
    async with backends(1) as bes:
        text_yaml = lb_yaml(
            [bes[0].address, f"127.0.0.1:{dead}"],
            port=free_port(),
            admin_port=free_port(),
            routes=no_retries,
        )
        async with running_lb(tmp_path, text_yaml) as lb:
            c = await Client.connect(lb.port)
            statuses = [(await c.request(path="/api/x")).status for _ in range(4)]
            c.close()
            assert 502 in statuses
            text = await scrape(lb)
            dead_name = f"127.0.0.1:{dead}"
            assert value(text, "lb_backend_failures_total", backend=dead_name) >= 1
            assert (
                value(text, "lb_backend_failures_total", backend=dead_name, kind="connect-failure")
                >= 1
            )
            assert value(text, "lb_requests_total", backend=dead_name, code="502") >= 1
            assert value(text, "lb_request_failures_total", failure="connect-failure") >= 1
            async with aiohttp.ClientSession() as s:
                url = f"{lb.admin}/api/backends/app/{dead_name}/drain"
                async with s.post(url) as r:
                    assert r.status == 200
            text = await scrape(lb)
            assert value(text, "lb_backend_up", backend=dead_name) == 0
            assert value(text, "lb_backend_state", backend=dead_name, state="draining") == 1
            assert value(text, "lb_backend_state", backend=dead_name, state="up") == 0
            assert value(text, "lb_service_backends", service="app", state="draining") == 1
            assert value(text, "lb_service_backends", service="app", state="up") == 1


async def test_backend_labels_fold_into_other(tmp_path):
    async with backends(5) as bes:
        cfg = lb_yaml(
            [b.address for b in bes],
            port=free_port(),
            admin_port=free_port(),
            routes=ROUTES,
            extra="metrics:\n  max_backends_per_service: 2\n",
        )
        async with running_lb(tmp_path, cfg) as lb:
            c = await Client.connect(lb.port)
            for _ in range(20):
                assert (await c.request(path="/api/x")).status == 200
            c.close()
            text = await scrape(lb)
            labels = label_values(text, "lb_requests_total", "backend")
            assert "other" in labels and len(labels) == 3, labels
            assert label_values(text, "lb_backend_up", "backend") == labels
            assert value(text, "lb_requests_total", service="app") == 20
            assert value(text, "lb_backend_up", backend="other") == 3
            assert value(text, "lb_backend_weight", backend="other") == 3
            assert value(text, "lb_backend_state", backend="other", state="up") == 3
            assert value(text, "lb_backend_selected_total", service="app") == 20
            promtool_check(text)
            other_before = value(text, "lb_requests_total", backend="other")
            selected_before = value(text, "lb_backend_selected_total", backend="other")

            # A folded backend leaves: "other" must not go down (that would read as a reset).
            folded = [b for b in bes if b.address not in labels]
            keep = [b.address for b in bes if b is not folded[0]]
            lb.write_config(
                lb_yaml(
                    keep,
                    port=lb.port,
                    admin_port=lb.admin_port,
                    routes=ROUTES,
                    extra="metrics:\n  max_backends_per_service: 2\n",
                )
            )
            ok, errors = await lb.server.reload()
            assert ok, errors
            text = await scrape(lb)
            assert value(text, "lb_requests_total", backend="other") == other_before
            assert value(text, "lb_backend_selected_total", backend="other") == selected_before
            assert value(text, "lb_backend_up", backend="other") == 2
            assert label_values(text, "lb_requests_total", "backend") == labels


async def test_metrics_disabled_installs_no_observer(tmp_path):
    async with (
        backends(1) as bes,
        lb_for(tmp_path, bes, extra="metrics:\n  enabled: false\n") as lb,
    ):
        runtime = lb.server.runtime
        assert not any(isinstance(o, Metrics) for o in runtime.observers)
        assert not any(isinstance(h, Metrics) for h in runtime.failure_hooks)
        c = await Client.connect(lb.port)
        assert (await c.request(path="/api/x")).status == 200
        c.close()
        text = await scrape(lb)
        names = {f.name for f in text_string_to_metric_families(text)}
        assert {"lb_build_info", "lb_config_reload", "lb_config_last_reload_success"} <= names
        assert "lb_requests" not in names
        promtool_check(text)


class FakeWatch:
    """A Consul watch as the discovery code attaches it to `Service.discovery`."""

    last_success = 1_700_000_000.0
    errors = 3
    stale = True
    last_error = "connection refused"


TRAFFIC_CONTROL = """\
    circuit_breaker: {consecutive_failures: 2, min_requests: 100, open_for: 60s}
    outlier_detection: {consecutive_errors: 50}
routes:
  - name: api
    match: {path: {prefix: /api}}
    service: app
  - name: limited
    match: {path: {prefix: /limited}}
    service: app
    rate_limit: {rate: "1/m", burst: 0}
"""


def failing(req):
    return ok_response(b"no", status="500 Internal Server Error")


async def test_traffic_control_and_discovery_families(tmp_path):
    async with backends(1) as good, backends(1, respond=failing) as bad:
        cfg = lb_yaml(
            [good[0].address, bad[0].address],
            port=free_port(),
            admin_port=free_port(),
            extra_service=TRAFFIC_CONTROL.split("routes:")[0],
            routes="routes:" + TRAFFIC_CONTROL.split("routes:")[1],
        )
        async with running_lb(tmp_path, cfg) as lb:
            svc = lb.server.runtime.services["app"]
            svc.discovery = FakeWatch()
            sick = bad[0].address
            c = await Client.connect(lb.port)
            for _ in range(8):  # the sick backend fails twice in a row and its breaker opens
                await c.request(path="/api/x")
            limited = [(await c.request(path="/limited")).status for _ in range(3)]
            c.close()
            assert limited[0] == 200 and limited[1:] == [429, 429]
            text = await scrape(lb)
        assert value(text, "lb_breaker_state", backend=sick, state="open") == 1
        assert value(text, "lb_breaker_state", backend=sick, state="closed") == 0
        assert value(text, "lb_breaker_state", backend=good[0].address, state="closed") == 1
        assert value(text, "lb_breaker_state", service="app", backend="", state="closed") == 1
        assert value(text, "lb_breaker_transitions_total", backend=sick, **{"from": "closed"}) == 1
        assert (
            value(text, "lb_backend_state", backend=sick, state="down", reason="circuit-open") == 1
        )
        assert value(text, "lb_requests_total", backend=sick, code="500") == 2
        assert value(text, "lb_cap_active", service="app", cap="requests") == 0
        assert value(text, "lb_cap_overflows_total", service="app", cap="requests") == 0
        assert value(text, "lb_outlier_ejections_total", service="app") == 0
        assert value(text, "lb_breaker_rejected_total", service="app") == 0
        limit = {"scope": "route", "name": "limited"}
        assert value(text, "lb_ratelimit_decisions_total", **limit, decision="allowed") == 1
        assert value(text, "lb_ratelimit_decisions_total", **limit, decision="limited") == 2
        assert value(text, "lb_requests_total", route="limited", code="429") == 2
        assert value(text, "lb_discovery_stale", service="app") == 1
        assert value(text, "lb_discovery_errors_total", service="app") == 3
        assert value(text, "lb_discovery_last_success_timestamp_seconds") == 1_700_000_000
        promtool_check(text)


async def test_generic_counter_registry(tmp_path):
    async with backends(1) as bes, lb_for(tmp_path, bes) as lb:
        counters = lb.server.runtime.counters
        counters["retry_budget_exhausted"][("api",)] += 1
        counters["discovery_errors"][("catalog",)] += 4
        register_counter("test_widgets", "lb_test_widgets_total", "Widgets.", ("kind",))
        try:
            counters["test_widgets"][("blue",)] += 2
            text = await scrape(lb)
        finally:
            del COUNTERS["test_widgets"]
        assert value(text, "lb_retry_budget_exhausted_total", route="api") == 1
        assert value(text, "lb_discovery_source_errors_total", source="catalog") == 4
        assert value(text, "lb_test_widgets_total", kind="blue") == 2
        with pytest.raises(ValueError):
            register_counter("bad", "widgets", "No prefix.", ())
