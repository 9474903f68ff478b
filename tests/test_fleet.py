"""One view of the fleet and the dashboard's charts: two lbs registered in the Consul test server
list each other with their config hashes (`GET /api/fleet`); `GET /api/series` has rates right
after traffic; the dashboard in headless Chromium draws the charts and the fleet table and asks
nothing of any host but lb's admin address."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from conftest import LB, Client, backends, free_port, lb_yaml, ok_response, running_lb
from test_dashboard import CHROMIUM, chromium

from lb.discovery.fleet import instance_state
from lb.observe.recorder import BUCKETS
from lb.observe.series import (
    BACKENDS_PER_SERVICE,
    MAX_SERIES,
    SLOTS,
    WIDTH,
    SeriesRing,
    quantile,
)
from lb.observe.series_report import merge, raw, render, render_local, window_seconds

SCREENSHOT_COPY = "/tmp/lb-dashboard-fleet.png"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)
    monkeypatch.delenv("CONSUL_HTTP_ADDR", raising=False)


def registered(addresses: list[str], consul: str, *, port: int, admin_port: int) -> str:
    return lb_yaml(
        addresses,
        port=port,
        admin_port=admin_port,
        extra=f'consul:\n  address: "{consul}"\n'
        "  register: {name: lb-edge, check_interval: 1s}\n",
    )


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def get(lb: LB, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.get(lb.admin + path) as r:
        return r.status, await r.json()


async def fleet_of(lb: LB) -> dict[str, Any]:
    code, body = await get(lb, "/api/fleet")
    assert code == 200, body
    return body


async def until_fleet(lb: LB, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Polls /api/fleet (at most one Consul read a second) until `predicate` holds."""
    deadline = time.monotonic() + 15
    while True:
        body = await fleet_of(lb)
        if predicate(body):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"fleet never matched: {json.dumps(body, indent=1)}")
        await asyncio.sleep(0.25)


def by_id(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {i["id"]: i for i in body["instances"]}


async def traffic(port: int, n: int, path: str = "/") -> None:
    c = await Client.connect(port)
    try:
        for i in range(n):
            await c.request(path=f"{path}{i}")
    finally:
        c.close()


# -- the fleet -----------------------------------------------------------------------------------
async def test_two_instances_list_each_other_and_a_reload_shows_the_new_hash(tmp_path, consul):
    async with backends(1) as bes:
        addresses = [b.address for b in bes]
        ports = [(free_port(), free_port()) for _ in range(2)]
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        texts = [registered(addresses, consul.address, port=p, admin_port=a) for p, a in ports]
        async with (
            running_lb(tmp_path / "a", texts[0]) as a,
            running_lb(tmp_path / "b", texts[1]) as b,
        ):
            ids = [f"lb-edge-127.0.0.1-{p}" for p, _ in ports]

            def everyone_passing(body: dict[str, Any]) -> bool:
                return [i["state"] for i in body["instances"]] == ["passing", "passing"]

            for lb, me, other in ((a, ids[0], ids[1]), (b, ids[1], ids[0])):
                body = await until_fleet(lb, everyone_passing)
                assert body["consul"]["service"] == "lb-edge" and not body["stale"]
                assert [i["id"] for i in body["instances"]] == [me, other]  # itself first
                mine, theirs = by_id(body)[me], by_id(body)[other]
                assert mine["self"] and not theirs["self"]
                assert mine["admin"] == lb.admin
                assert mine["version"] == theirs["version"]
                assert theirs["admin"] == (b if lb is a else a).admin
                assert mine["uptime_seconds"] >= 0 and theirs["uptime_seconds"] >= 0
                # The same file but for its ports: a different hash (ports are in the config).
                assert mine["config_hash"] == lb.server.runtime.loaded.digest
                assert theirs["config_hash"] == (b if lb is a else a).server.runtime.loaded.digest

            # b loads a new config: Consul's Meta follows (registered again, not removed first).
            old_hash = b.server.runtime.loaded.digest
            b.write_config(texts[1].replace("prefix: /", "prefix: /v2"))
            assert (await b.server.reload()) == (True, [])
            new_hash = b.server.runtime.loaded.digest
            assert new_hash != old_hash
            key = ("consul-test", ids[1])
            created = consul.instances[key].create_index
            await until(lambda: consul.instances[key].meta.get("lb_config_hash") == new_hash)
            assert consul.instances[key].create_index == created  # updated in place
            body = await until_fleet(a, lambda f: by_id(f)[ids[1]]["config_hash"] == new_hash)
            seen = by_id(body)
            assert not seen[ids[1]]["same_config"] and seen[ids[0]]["same_config"]
            assert body["newest_config"] == new_hash
            assert seen[ids[0]]["old_config"] and not seen[ids[1]]["old_config"]
            body = await fleet_of(b)
            assert not by_id(body)[ids[0]]["same_config"]
            assert by_id(body)[ids[0]]["old_config"]

            # Consul goes away: the last list, marked stale, with the error.
            await consul.stop()
            await asyncio.sleep(1.1)  # past the shared read's interval
            body = await fleet_of(a)
            assert body["stale"] and body["consul"]["error"]
            assert body["consul"]["age_seconds"] >= 1
            assert set(by_id(body)) == set(ids)
            async with aiohttp.ClientSession() as s, s.get(a.admin + "/metrics") as r:
                assert 'lb_discovery_source_errors_total{source="consul_fleet"}' in await r.text()


async def test_a_failing_instance_shows_critical(tmp_path, consul):
    async with backends(1) as bes:
        port, admin_port = free_port(), free_port()
        text = registered([bes[0].address], consul.address, port=port, admin_port=admin_port)
        async with running_lb(tmp_path, text) as lb:
            consul.register(
                "lb-edge",
                id="lb-edge-10.9.9.9-80",
                address="10.9.9.9",
                port=80,
                meta={"lb_config_hash": "f" * 64, "lb_version": "0.0.9"},
                status="critical",
            )
            body = await until_fleet(lb, lambda f: len(f["instances"]) == 2)
            ghost = by_id(body)["lb-edge-10.9.9.9-80"]
            assert ghost["state"] == "critical"
            assert ghost["version"] == "0.0.9" and not ghost["same_config"]
            assert ghost["uptime_seconds"] is None  # it did not say when it started


async def test_without_registration_the_fleet_is_this_lb(tmp_path):
    async with backends(1) as bes:
        text = lb_yaml([bes[0].address], port=free_port(), admin_port=free_port())
        async with running_lb(tmp_path, text) as lb:
            body = await fleet_of(lb)
    assert body["consul"] is None and not body["stale"]
    (me,) = body["instances"]
    assert me["self"] and me["same_config"] and me["state"] == "local"
    assert me["config_hash"] == lb.server.runtime.loaded.digest


def test_instance_state_is_the_worst_check():
    def check(status: str, cid: str = "service:x") -> dict[str, str]:
        return {"Status": status, "CheckID": cid}

    assert instance_state([check("passing"), check("passing", "serfHealth")]) == "passing"
    assert instance_state([check("passing"), check("warning")]) == "warning"
    assert instance_state([check("warning"), check("critical", "serfHealth")]) == "critical"
    assert instance_state([check("critical", "_service_maintenance:x")]) == "maintenance"
    assert instance_state([check("bogus")]) == "critical"


# -- the series ----------------------------------------------------------------------------------
def failing(req: Any) -> bytes:
    return ok_response(b"no", status="503 Service Unavailable")


async def test_series_has_rates_on_the_first_read(tmp_path):
    async with backends(1) as good, backends(1, respond=failing) as bad:
        text = lb_yaml([good[0].address, bad[0].address], port=free_port(), admin_port=free_port())
        async with running_lb(tmp_path, text) as lb:
            await traffic(lb.port, 40)
            code, body = await get(lb, "/api/series?window=15m")  # no sample taken yet
            assert code == 200
            (svc,) = body["services"]
            last = svc["last"]
            rps, eps, p50, p99 = (
                last[k] for k in ("requests_per_s", "errors_per_s", "p50_s", "p99_s")
            )
            assert svc["name"] == "app" and rps > 0 and eps > 0
            assert 0 < p50 <= p99 <= BUCKETS[-1]
            backends_ = {b["backend"]: b for b in body["backends"]}
            assert set(backends_) == {good[0].address, bad[0].address}
            assert backends_[good[0].address]["last"]["errors_per_s"] == 0  # the good one
            assert backends_[bad[0].address]["last"]["errors_per_s"] > 0

            # A sample makes a point of the ring; more traffic shows in `last` at once.
            sampler = lb.server.admin.observe.series
            sampler.sample()
            await traffic(lb.port, 10)
            code, body = await get(lb, "/api/series")
            (svc,) = body["services"]
            assert len(body["times"]) == 1 and body["times"][0] % 5 == 0
            assert len(svc["requests_per_s"]) == 1 and svc["requests_per_s"][0] > 0
            assert svc["p99_s"][0] >= svc["p50_s"][0] > 0
            assert svc["last"]["requests_per_s"] > 0
            assert body["window"] == body["interval"]
            assert body["limits"] == {
                "backends_per_service": BACKENDS_PER_SERVICE,
                "max_series": MAX_SERIES,
            }

            # This lb's ring and the workers' path (raw, merged, rendered) agree point for point.
            local = render_local(sampler, 900, metrics_enabled=True)
            merged = render(merge([raw(sampler, 900)]), metrics_enabled=True)
            assert local["times"] == merged["times"]
            for kind in ("services", "backends"):
                for mine, theirs in zip(local[kind], merged[kind], strict=True):
                    for column in ("requests_per_s", "errors_per_s", "p50_s", "p99_s"):
                        assert mine[column] == theirs[column]

            # The raw form counts exactly what was sent since the sample.
            code, doc = await get(lb, "/api/series?raw=1")
            (row,) = [r for s, b, r in doc["live"]["series"] if b is None]
            assert row[0] == 10 and sum(row[2:]) == 10 and len(row) == WIDTH

            for bad_window in ("bogus", "-5m", "0"):
                code, err = await get(lb, f"/api/series?window={bad_window}")
                assert code == 400 and "window" in err["error"]


async def test_a_route_removed_by_a_reload_leaves_no_negative_point(tmp_path):
    async with backends(1) as bes:
        routes = (
            "routes:\n"
            "  - {name: old, match: {path: {prefix: /old}}, service: app}\n"
            "  - {name: all, match: {path: {prefix: /}}, service: app}\n"
        )
        port = free_port()
        text = lb_yaml([bes[0].address], port=port, admin_port=free_port(), routes=routes)
        async with running_lb(tmp_path, text) as lb:
            sampler = lb.server.admin.observe.series
            await traffic(lb.port, 20, "/old/")
            sampler.sample()
            lb.write_config(
                text.replace("  - {name: old, match: {path: {prefix: /old}}, service: app}\n", "")
            )
            assert (await lb.server.reload()) == (True, [])
            async with aiohttp.ClientSession() as s, s.get(lb.admin + "/metrics") as r:
                assert r.status == 200  # the scrape drops the removed route's histograms
            await traffic(lb.port, 5)
            sampler.sample()
            _, doc = await get(lb, "/api/series?raw=1")
            (rows,) = [r for s, b, r in doc["series"] if b is None]
            assert [r[0] for r in rows] == [20, 5]
            assert [sum(r[2:]) for r in rows] == [20, 5]  # no negative increment


def test_the_ring_is_bounded_in_points_and_series():
    ring = SeriesRing(slots=4)
    row = [1] + [0] * (WIDTH - 1)
    for i in range(10):
        ring.write(float(i * 5), 5.0, {("web", None): row, ("web", f"b{i}"): row})
    assert ring.filled == 4
    assert [ring.times[s] for s in ring.order(100)] == [30.0, 35.0, 40.0, 45.0]
    # A backend gone for a whole window is dropped; the ones still inside it are kept.
    assert set(ring.data) == {
        ("web", None),
        ("web", "b6"),
        ("web", "b7"),
        ("web", "b8"),
        ("web", "b9"),
    }
    many = {("svc", f"b{i}"): row for i in range(MAX_SERIES + 5)}
    ring = SeriesRing(slots=2)
    ring.write(0.0, 5.0, many)
    assert len(ring.data) == MAX_SERIES and ring.dropped == 5
    # An idle series takes no memory.
    ring.write(5.0, 5.0, {("idle", None): [0] * WIDTH})
    assert ("idle", None) not in ring.data
    assert window_seconds("1h") == SLOTS * 5.0 and window_seconds("5m") == 300.0


def test_quantiles_interpolate_inside_the_bucket():
    counts = [0] * (len(BUCKETS) + 1)
    assert quantile(counts, 0.5) is None
    counts[1] = 100  # all between 1 and 2.5 ms
    assert quantile(counts, 0.5) == pytest.approx(0.00175)
    counts[-1] = 100  # half beyond the last bound
    assert quantile(counts, 0.99) == BUCKETS[-1]


def test_workers_series_merge_sums_counts_and_merges_histograms():
    def doc(times: list[float], rows: list[Any], live: list[int]) -> dict[str, Any]:
        return {
            "interval": 5.0,
            "times": times,
            "spans": [5.0] * len(times),
            "series": [["web", None, rows]],
            "live": {"time": 100.0, "span": 4.0, "series": [["web", None, live]]},
            "dropped": 0,
        }

    def row(requests: int, bucket: int) -> list[int]:
        r = [0] * WIDTH
        r[0] = requests
        r[2 + bucket] = requests
        return r

    fast, slow = row(50, 0), row(50, 9)  # <= 1 ms; 0.5-1 s
    merged = merge([doc([90.0, 95.0], [fast, 0], fast), doc([95.0], [slow], slow)])
    assert merged["times"] == [90.0, 95.0]
    out = render(merged, metrics_enabled=True)
    (svc,) = out["services"]
    assert svc["requests_per_s"] == [10.0, 10.0]
    # The merged histogram's median sits between the workers' (never their average).
    assert svc["p50_s"][0] < 0.001 and svc["p50_s"][1] > 0.5
    assert svc["last"]["requests_per_s"] == pytest.approx(100 / 4.0)
    # The 50th of 100: the fast bucket's top, from the merged histogram.
    assert svc["last"]["p50_s"] == pytest.approx(0.001)
    assert svc["last"]["p99_s"] > 0.5


# -- the dashboard -------------------------------------------------------------------------------
HTTP_URL = re.compile(r"https?://([^/\"'\s:]+)")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (Debian package `chromium`)")
async def test_dashboard_draws_charts_and_the_fleet_offline(tmp_path, consul):
    async with backends(2) as good, backends(1, respond=failing) as bad:
        addresses = [b.address for b in (*good, *bad)]
        ports = [(free_port(), free_port()) for _ in range(2)]
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        texts = [registered(addresses, consul.address, port=p, admin_port=a) for p, a in ports]
        async with (
            running_lb(tmp_path / "a", texts[0]) as a,
            running_lb(tmp_path / "b", texts[1]) as b,
        ):
            b.write_config(texts[1].replace("prefix: /", "prefix: /v2"))
            assert (await b.server.reload()) == (True, [])
            await until_fleet(a, lambda f: [i["state"] for i in f["instances"]] == ["passing"] * 2)
            await until_fleet(
                a, lambda f: not by_id(f)[f"lb-edge-127.0.0.1-{ports[1][0]}"]["same_config"]
            )
            sampler = a.server.admin.observe.series
            for _ in range(3):  # three points in the ring, and traffic since the last one
                await traffic(a.port, 30)
                sampler.sample()
            await traffic(a.port, 30)

            shot = tmp_path / "dashboard.png"
            netlog = tmp_path / "netlog.json"
            await chromium(
                a.admin + "/",
                tmp_path,
                f"--screenshot={shot}",
                "--window-size=1400,1300",
                f"--log-net-log={netlog}",
            )
            dom = (await chromium(a.admin + "/", tmp_path, "--dump-dom")).decode()

    (tmp_path / "dashboard.html").write_text(dom)
    assert shot.stat().st_size > 10_000
    shutil.copyfile(shot, SCREENSHOT_COPY)
    app = dom[dom.index('<main id="app">') : dom.index("</main>")]

    # Charts: three per service, each with the service's line and one per backend.
    charts = re.search(r'data-charts="app">(.*?)</div>', app, re.S)
    assert charts, "the service has its charts"
    svgs = re.findall(r"<svg.*?</svg>", charts.group(1), re.S)
    assert len(svgs) == 3
    assert all(svg.count("<path ") >= 1 + len(addresses) for svg in svgs[:2])
    assert svgs[2].count("<path ") >= 2 * (1 + len(addresses))  # p50 and p99 each
    assert 'stroke-dasharray="4 3"' in svgs[2]
    for address in addresses:
        assert address in app[app.index("legend") :]  # in the legend
    # Rates on the first poll, from lb's own last point: never a dash for the service.
    rates = re.findall(r"<b>([\d.k]+)</b> req/s", app)
    assert rates and float(rates[0].rstrip("k")) > 0

    # The fleet: both instances, the other one on a newer config.
    rows = dict(re.findall(r'data-instance="([^"]+)" data-config="(\w+)"', app))
    assert rows == {
        f"lb-edge-127.0.0.1-{ports[0][0]}": "same",
        f"lb-edge-127.0.0.1-{ports[1][0]}": "differs",
    }
    mine = re.search(rf'data-instance="lb-edge-127.0.0.1-{ports[0][0]}".*?</tr>', app, re.S)
    assert mine and 'class="old-config"' in mine.group(0) and "old config" in mine.group(0)
    assert "this one" in mine.group(0) and "passing" in mine.group(0)

    # Offline: the page names no host but lb's, and Chromium asked nothing of any other.
    page_hosts = set(HTTP_URL.findall(dom))
    assert page_hosts <= {"127.0.0.1"}, page_hosts
    # Chromium's own background calls (updates, accounts) are not the page's: the page's
    # requests are those it initiated.
    log = json.loads(netlog.read_text())
    origin = a.admin
    asked = {
        e["params"]["url"]
        for e in log["events"]
        if isinstance(e.get("params"), dict) and e["params"].get("initiator") == origin
    }
    assert {"/api/status", "/api/series?window=15m", "/api/fleet"} <= {
        u.removeprefix(origin) for u in asked
    }, asked
    assert all(u.startswith(origin + "/") for u in asked), asked


async def test_the_admin_token_guards_fleet_and_series(tmp_path):
    async with backends(1) as bes:
        text = lb_yaml([bes[0].address], port=free_port(), admin_port=free_port()).replace(
            "admin:\n", "admin:\n  token: t0ken\n"
        )
        async with running_lb(tmp_path, text) as lb, aiohttp.ClientSession() as s:
            for path in ("/api/fleet", "/api/series"):
                async with s.get(lb.admin + path) as r:
                    assert r.status == 401
                async with s.get(lb.admin + path, headers={"Authorization": "Bearer t0ken"}) as r:
                    assert r.status == 200
