"""`balance: {mode: least_latency}` (Peak EWMA): the picker's rules with both implementations,
then through lb with real backends: a backend slowed on command loses its share, 429/503 and
failed connections count as the penalty, and drain, ejection, slow start and shared counts
keep working."""

from __future__ import annotations

import asyncio
import math
import mmap
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import Client
from faulty import Faulty, backend_of, faulty, get, lb_for, reload

from lb.balancer import picker_py
from lb.balancer.service import Service
from lb.config import ConfigError, load, model

try:
    from lb import _picker

    IMPLEMENTATIONS: list[Any] = [_picker.Picker, picker_py.Picker]
except ImportError:  # the twin alone, as under LB_PURE_PYTHON=1 without a build
    IMPLEMENTATIONS = [picker_py.Picker]


@pytest.fixture(params=IMPLEMENTATIONS, ids=lambda cls: cls.__module__)
def picker_cls(request: pytest.FixtureRequest) -> Any:
    return request.param


def latency_picker(cls: Any, weights: list[int], decay: float = 10.0) -> Any:
    picker = cls(3)
    for w in weights:
        picker.add(w, 0.0)
    picker.set_latency(decay, 1.0)
    return picker


def share(picker: Any, rtts: list[float], n: int, now: float = 0.0, hold: int = 0) -> Counter[int]:
    """n picks from `now` on, one after the other, each answered after its slot's RTT (the
    clock moves by it); `hold` requests stay in flight on whatever they were picked for, so
    that the in-flight counts matter too."""
    seen: Counter[int] = Counter()
    held = [picker.pick(now) for _ in range(hold)]
    for _ in range(n):
        slot = picker.pick(now)
        seen[slot] += 1
        now += rtts[slot]
        picker.observe(slot, rtts[slot], now)
        picker.release(slot)
    for slot in held:
        picker.release(slot)
    return seen


# -- the picker --------------------------------------------------------------------------------
def test_a_slow_slot_loses_its_share_and_is_tried_again_once_its_estimate_decays(
    picker_cls: Any,
) -> None:
    picker = latency_picker(picker_cls, [1, 1, 1], decay=1.0)
    seen = share(picker, [0.020, 0.001, 0.001], 2000)  # about 2 s
    assert seen[0] < 20
    assert abs(seen[1] - seen[2]) < 400
    estimate = picker.latency(0, 2.0)
    assert estimate is not None and estimate > 0.002
    # Fast again: once its estimate has decayed to the others' (e^-3 of 20 ms: 3 decays),
    # it is picked, its samples are fast, and it gets its third again.
    seen = share(picker, [0.001, 0.001, 0.001], 9000, now=2.0)
    assert seen[0] > 1500


def test_a_peak_replaces_the_estimate_and_a_lower_sample_blends_in(picker_cls: Any) -> None:
    picker = latency_picker(picker_cls, [1], decay=10.0)
    assert picker.latency(0, 0.0) is None
    picker.observe(0, 0.010, 0.0)
    assert picker.latency(0, 0.0) == 0.010
    picker.observe(0, 0.050, 0.0)  # a peak
    assert picker.latency(0, 0.0) == 0.050
    picker.observe(0, 0.010, 10.0)  # one decay later: e^-1 of the old, the rest the sample
    w = math.exp(-1.0)
    assert picker.latency(0, 10.0) == pytest.approx(0.050 * w + 0.010 * (1 - w))


def test_a_newcomer_is_tried_at_once_but_one_request_at_a_time(picker_cls: Any) -> None:
    picker = latency_picker(picker_cls, [1, 1])
    for slot in (0, 1):
        picker.observe(slot, 0.001, 0.0)
        assert picker.pick(0.0) >= 0  # some traffic in flight
    new = picker.add(1, 0.0)
    picks = [picker.pick(0.0) for _ in range(20)]
    assert picks.count(new) == 1  # tried, then penalised while its first answer is out
    picker.observe(new, 0.001, 0.0)
    picker.release(new)
    assert picker.latency(new, 0.0) == 0.001


def test_weight_zero_and_ineligible_slots_are_never_picked(picker_cls: Any) -> None:
    picker = latency_picker(picker_cls, [1, 1, 1])
    picker.set_weight(0, 0)  # drained
    picker.set_eligible(1, False, 0.0)  # down (checks, ejection, open breaker)
    picker.observe(2, 1.0, 0.0)  # the slowest, and the only one left
    assert {picker.pick(0.0) for _ in range(50)} == {2}
    assert picker.pick(0.0, True) in (1, 2)  # panic ignores eligibility, not weight 0


def test_slow_start_and_weights_scale_the_cost(picker_cls: Any) -> None:
    picker = picker_cls(3)
    picker.add(1, 0.0)
    picker.add(1, 0.0, 100.0)  # ramping: 10% of its weight
    picker.set_latency(10.0, 1.0)
    seen = share(picker, [0.001, 0.001], 2000, hold=20)
    assert seen[1] < seen[0] / 3
    heavy = latency_picker(picker_cls, [1, 4])
    seen = share(heavy, [0.001, 0.001], 2000, hold=20)
    assert seen[1] > 2 * seen[0]


def test_shared_counts_from_other_workers_make_a_slot_dearer(picker_cls: Any) -> None:
    picker = latency_picker(picker_cls, [1, 1])
    for slot in (0, 1):
        picker.observe(slot, 0.001, 0.0)
    buf = mmap.mmap(-1, 32)
    picker.attach(0, buf, 0, 1)
    view = memoryview(buf).cast("q")
    view[0] += 50  # other workers' requests on slot 0
    assert {picker.pick(0.0) for _ in range(20)} == {1}
    assert view[1] == 0  # this worker's own column: none of its picks went to slot 0
    view.release()


def test_back_to_least_connections(picker_cls: Any) -> None:
    picker = latency_picker(picker_cls, [1, 1])
    picker.observe(0, 5.0, 0.0)
    picker.set_latency(0.0, 1.0)
    assert picker.latency(0, 0.0) is None
    picks = [picker.pick(0.0) for _ in range(4)]  # fewest in flight, the 5 s forgotten
    assert picks[0] == 0 and Counter(picks) == {0: 2, 1: 2}


# -- config ------------------------------------------------------------------------------------
def service_yaml(balance: str) -> str:
    return f"""\
listeners: [{{name: web, bind: "127.0.0.1:8080"}}]
services:
  app:
    backends: ["127.0.0.1:9001"]
    balance: {balance}
routes: [{{name: all, match: {{path: {{prefix: /}}}}, service: app}}]
"""


def load_text(tmp_path: Path, text: str) -> model.Config:
    path = tmp_path / "lb.yaml"
    path.write_text(text)
    return load(str(path), environ={}).config


def test_config_defaults_and_validation(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, service_yaml("{}"))
    assert cfg.services["app"].balance == model.Balance()
    cfg = load_text(tmp_path, service_yaml("{mode: least_latency, decay: 2s, penalty: 250ms}"))
    balance = cfg.services["app"].balance
    assert (balance.mode, balance.decay, balance.penalty) == ("least_latency", 2.0, 0.25)
    for bad, words in [
        ("{mode: fastest}", "services.app.balance.mode"),
        ("{decay: 5s}", "decay applies to mode: least_latency"),
        ("{mode: least_latency, penalty: 0s}", "expected a positive duration"),
        ("{mode: least_latency, virtual_nodes: 10}", "applies to mode: ring_hash and maglev"),
        ("{mode: maglev, hash_on: client_ip, decay: 1s}", "decay applies to mode: least_latency"),
    ]:
        with pytest.raises(ConfigError) as err:
            load_text(tmp_path, service_yaml(bad))
        assert words in str(err.value)


def test_the_mode_follows_the_config() -> None:
    svc = Service("app", model.Service())
    svc.update([("127.0.0.1", 9001, 1)])
    b = next(iter(svc.backends.values()))
    svc.answered(b, 200, 0.0)  # least connections: no sample kept
    assert svc.latency(b) is None
    svc.configure(model.Service(balance=model.Balance("least_latency", penalty=0.5)))
    svc.answered(b, 503, 0.0)
    assert svc.latency(b) == pytest.approx(0.5, rel=1e-3)


# -- through lb --------------------------------------------------------------------------------
LEAST_LATENCY = "    balance: {mode: least_latency, decay: 10s, penalty: 1s}\n"


async def spread(lb: Any, n: int, concurrency: int = 6) -> Counter[bytes]:
    """n requests over `concurrency` keep-alive connections; which backend answered each."""
    seen: Counter[bytes] = Counter()
    per = n // concurrency

    async def worker() -> None:
        client = await Client.connect(lb.port)
        try:
            for _ in range(per):
                seen[(await client.request("GET", "/")).body] += 1
        finally:
            client.close()

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), 60)
    return seen


async def test_a_backend_slowed_on_command_loses_its_share(tmp_path: Path) -> None:
    async with (
        faulty("a", "b", "c") as (a, b, c),
        lb_for(tmp_path, [a, b, c], extra_service=LEAST_LATENCY) as lb,
    ):
        before = await spread(lb, 120)
        assert set(before) == {b"a", b"b", b"c"}
        a.mode, a.delay = "slow", 0.05
        after = await spread(lb, 300)
        assert sum(after.values()) == 300
        assert after[b"a"] < 300 / 6, after  # well below a third
        text = await metrics(lb)
        slow = gauge(text, a)
        assert slow is not None and slow > 0.02
        fast = gauge(text, b)
        assert fast is not None and fast < slow


async def test_429_and_503_count_as_the_penalty(tmp_path: Path) -> None:
    async with (
        faulty("a", "b", "c") as (a, b, c),
        lb_for(tmp_path, [a, b, c], extra_service=LEAST_LATENCY) as lb,
    ):
        svc = lb.server.runtime.services["app"]
        for backend, status in ((a, "503"), (b, "429")):
            backend.mode = status
            seen = backend.requests
            for _ in range(100):
                if backend.requests > seen:
                    break
                await get(lb)
            # The penalty, decayed for as long as the answer took to reach the test (a loaded
            # machine may stall it for a while; decaying to 0.5 takes 7 s).
            estimate = svc.latency(backend_of(lb, backend))
            assert estimate is not None and 0.5 < estimate <= 1.0
            backend.mode = "ok"
            if backend is a:
                # Answering again, it is left alone for now: each pair it is drawn in, the
                # other backend wins.
                shares = await spread(lb, 120)
                assert shares[b"a"] <= 3, shares


async def test_a_refused_connection_counts_as_the_penalty(tmp_path: Path) -> None:
    async with (
        faulty("a", "b") as (a, b),
        lb_for(tmp_path, [a, b], extra_service=LEAST_LATENCY) as lb,
    ):
        await a.refuse()
        statuses = Counter([(await get(lb)).status for _ in range(40)])
        assert statuses[502] <= 2, statuses  # once, maybe twice before the sample is in
        estimate = svc_latency(lb, a)
        assert estimate is not None and 0.5 < estimate <= 1.0  # the penalty, decayed a little
        assert (await metrics(lb)).count("lb_backend_latency_ewma_seconds{") == 2


async def test_drain_and_ejection_win_over_latency(tmp_path: Path) -> None:
    service = LEAST_LATENCY + (
        "    outlier_detection: {consecutive_errors: 2, base_ejection: 30s, "
        "max_ejection_percent: 50}\n"
    )
    async with (
        faulty("a", "b", "c") as (a, b, c),
        lb_for(tmp_path, [a, b, c], extra_service=service) as lb,
    ):
        # The fastest backend, drained through the admin API, gets nothing.
        b.mode = c.mode = "slow"
        b.delay = c.delay = 0.01
        await post(lb, f"/api/backends/app/{a.address}/drain")
        seen = await spread(lb, 60)
        assert b"a" not in seen, seen
        await post(lb, f"/api/backends/app/{a.address}/undrain")
        # Two 500s eject it; fast again, it still gets nothing while ejected.
        a.mode = "500"
        for _ in range(200):
            if a.requests >= 2:
                break
            await get(lb)
        loop = lb.server.loop
        assert backend_of(lb, a).state(loop.time()) == ("down", "ejected")
        a.mode = "ok"
        requests = a.requests
        await spread(lb, 60)
        assert a.requests == requests


async def test_an_affinity_cookie_holds_and_a_new_client_goes_by_latency(tmp_path: Path) -> None:
    service = LEAST_LATENCY + "    affinity: {cookie: lb_aff}\n"
    async with (
        faulty("a", "b", "c") as (a, b, c),
        lb_for(tmp_path, [a, b, c], extra_service=service) as lb,
    ):
        b.mode = c.mode = "slow"
        b.delay = c.delay = 0.005
        await spread(lb, 30)  # every backend has samples, a the fastest
        a.mode, a.delay = "slow", 0.05
        client = await Client.connect(lb.port)
        try:
            # The cheapest until it has answered slowly once: a new client lands on it.
            for _ in range(50):
                r = await client.request("GET", "/")
                if r.body == b"a":
                    break
            else:
                pytest.fail("a never served")
            cookie = (r.header("set-cookie") or "").split(";")[0]
            assert cookie.startswith("lb_aff=")
            for _ in range(3):  # slow or not, the cookie takes the client back to it
                r = await client.request("GET", "/", headers=f"cookie: {cookie}\r\n")
                assert r.body == b"a"
        finally:
            client.close()
        seen = await spread(lb, 60)  # clients without the cookie avoid the slow one
        assert seen[b"a"] < 10, seen


async def test_reload_switches_modes_and_keeps_serving(tmp_path: Path) -> None:
    async with faulty("a", "b") as (a, b), lb_for(tmp_path, [a, b]) as lb:
        svc = lb.server.runtime.services["app"]
        await spread(lb, 12)
        assert svc_latency(lb, a) is None
        await reload(lb, [a, b], extra_service=LEAST_LATENCY)
        assert svc.least_latency
        await spread(lb, 12)
        assert svc_latency(lb, a) is not None
        await reload(lb, [a, b])
        assert not svc.least_latency and svc_latency(lb, a) is None
        seen = await spread(lb, 12)
        assert sum(seen.values()) == 12


# -- helpers -----------------------------------------------------------------------------------
def svc_latency(lb: Any, b: Faulty) -> float | None:
    return lb.server.runtime.services["app"].latency(backend_of(lb, b))


async def admin(lb: Any, method: str, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.admin_port)
    try:
        head = f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n"
        writer.write(head.encode())
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


async def post(lb: Any, path: str) -> None:
    status, body = await admin(lb, "POST", path)
    assert status == 200, body


async def metrics(lb: Any) -> str:
    status, body = await admin(lb, "GET", "/metrics")
    assert status == 200
    return body


def gauge(text: str, b: Faulty) -> float | None:
    prefix = f'lb_backend_latency_ewma_seconds{{backend="{b.address}",service="app"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return None
