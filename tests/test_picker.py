"""Behaviour of the weighted-least-connections picker, for both implementations."""

from __future__ import annotations

import heapq
import importlib
import math
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from lb.balancer import picker_py

try:
    from lb import _picker
except ImportError:
    _picker = None

NOT_BUILT = "lb._picker is not built (run: python setup.py build_ext --inplace)"

IMPLEMENTATIONS = [
    pytest.param(picker_py.Picker, id="python"),
    pytest.param(
        getattr(_picker, "Picker", None),
        id="cython",
        marks=pytest.mark.skipif(_picker is None, reason=NOT_BUILT),
    ),
]

Factory = Callable[..., Any]


@pytest.fixture(params=IMPLEMENTATIONS)
def make(request: pytest.FixtureRequest) -> Factory:
    return request.param


def take_release(picker: Any, n: int, now: float = 0.0) -> list[int]:
    """Sequential traffic: every request finishes before the next starts."""
    picks = []
    for _ in range(n):
        slot = picker.pick(now)
        picks.append(slot)
        if slot >= 0:
            picker.release(slot)
    return picks


def test_weights_1_2_3_split_exactly_and_smoothly(make: Factory) -> None:
    picker = make()
    weights = [1, 2, 3]
    for w in weights:
        picker.add(w, 0.0)
    picks = take_release(picker, 6000)
    assert Counter(picks) == {0: 1000, 1: 2000, 2: 3000}
    seen = Counter()
    for k, slot in enumerate(picks, start=1):
        seen[slot] += 1
        for s, w in enumerate(weights):
            assert seen[s] <= math.ceil(w / 6 * k) + 1, (k, s)


def test_nginx_sequence_for_5_1_1(make: Factory) -> None:
    picker = make()
    for w in (5, 1, 1):
        picker.add(w, 0.0)
    sequence = "".join("abc"[s] for s in take_release(picker, 14))
    assert sequence == "aabacaa" * 2


def test_slow_backend_holds_proportional_in_flight_and_gets_fewer_picks(make: Factory) -> None:
    picker = make()
    weights = [2, 2, 4]
    latency = [4, 16, 4]  # ticks; slot 1 is slow
    for w in weights:
        picker.add(w, 0.0)
    due: list[tuple[int, int]] = []  # (finish tick, slot)
    picks = Counter()
    ratio_sums = [0.0, 0.0, 0.0]
    ticks = 2000
    for tick in range(ticks):
        while due and due[0][0] <= tick:
            picker.release(heapq.heappop(due)[1])
        for _ in range(6):
            slot = picker.pick(float(tick))
            picks[slot] += 1
            heapq.heappush(due, (tick + latency[slot], slot))
        ratios = [picker.in_flight(s) / weights[s] for s in range(3)]
        # Least connections: right after picking, no backend is more than one request per unit
        # of weight ahead of another.
        assert max(ratios) - min(ratios) <= 1.0, (tick, ratios)
        for s in range(3):
            ratio_sums[s] += ratios[s]
    means = [r / ticks for r in ratio_sums]
    assert max(means) - min(means) < 0.25, means
    # Little's law: in_flight = rate * latency, so with in_flight ~ weight, rate ~ weight / latency.
    assert picks[1] == pytest.approx(picks[0] / 4, rel=0.05)
    assert picks[2] == pytest.approx(2 * picks[0], rel=0.05)


def test_drained_backend_gets_nothing_but_can_release(make: Factory) -> None:
    picker = make()
    a = picker.add(1, 0.0)
    b = picker.add(1, 0.0)
    held = [picker.pick(0.0) for _ in range(4)]
    assert Counter(held) == {a: 2, b: 2}
    picker.set_weight(a, 0)
    assert picker.eligible_count() == 1
    assert all(picker.pick(0.0) == b for _ in range(50))
    assert picker.release(a) == 1
    assert picker.release(a) == 0
    assert picker.effective_weight(a, 0.0) == 0.0
    picker.set_weight(a, 1)
    assert picker.eligible_count() == 2
    assert picker.pick(0.0) == a


def test_ineligible_gets_nothing_unless_panic(make: Factory) -> None:
    picker = make()
    a = picker.add(1, 0.0)
    b = picker.add(1, 0.0)
    picker.set_eligible(a, False, 0.0)
    assert picker.eligible_count() == 1
    assert all(picker.pick(0.0) == b for _ in range(10))
    # b now holds 10 requests, so the least loaded backend, even if ineligible, wins in panic.
    assert picker.pick(0.0, panic=True) == a
    picker.set_eligible(b, False, 0.0)
    assert picker.eligible_count() == 0
    assert picker.pick(0.0) == -1
    assert picker.pick(0.0, panic=True) == a
    picker.set_weight(a, 0)
    picker.set_weight(b, 0)
    assert picker.pick(0.0, panic=True) == -1


def test_nothing_to_pick_returns_minus_one(make: Factory) -> None:
    picker = make()
    assert picker.pick(0.0) == -1
    assert picker.pick(0.0, panic=True) == -1
    slot = picker.add(0, 0.0)
    assert picker.eligible_count() == 0
    assert picker.pick(0.0) == -1
    assert picker.in_flight(slot) == 0


def test_slow_start_ramps_linearly_from_ten_percent(make: Factory) -> None:
    picker = make()
    old = picker.add(1, 100.0)
    new = picker.add(4, 100.0, slow_start=10.0)
    expected = {100.0: 0.4, 100.5: 0.4, 101.0: 0.4, 102.5: 1.0, 105.0: 2.0, 110.0: 4.0}
    for now, eff in expected.items():
        assert picker.effective_weight(new, now) == pytest.approx(eff), now
    assert picker.effective_weight(old, 100.0) == 1.0
    # An idle pool splits exactly by effective weight (in permille: old is 1000) over one
    # round-robin cycle.
    for now, share in ((100.0, 400), (102.5, 1000), (105.0, 2000), (110.0, 4000)):
        picks = Counter(take_release(picker, 1000 + share, now))
        assert picks == {old: 1000, new: share}, now
    # Past the window the backend is out of slow start for good.
    assert picker.effective_weight(new, 100.0) == 4.0


def test_slow_start_restarts(make: Factory) -> None:
    picker = make()
    slot = picker.add(10, 0.0)
    picker.set_eligible(slot, False, 5.0)
    picker.set_eligible(slot, True, 5.0, slow_start=10.0)
    assert picker.effective_weight(slot, 10.0) == pytest.approx(5.0)
    picker.restart_slow_start(slot, 20.0, 4.0)
    assert picker.effective_weight(slot, 21.0) == pytest.approx(2.5)
    picker.restart_slow_start(slot, 21.0, 0.0)
    assert picker.effective_weight(slot, 21.0) == 10.0
    # Coming back without a window, or an already eligible slot, does not ramp.
    picker.set_eligible(slot, True, 30.0, slow_start=10.0)
    picker.set_eligible(slot, False, 30.0)
    picker.set_eligible(slot, True, 30.0)
    assert picker.effective_weight(slot, 30.0) == 10.0


def test_remove_and_add_reuse_lowest_slot(make: Factory) -> None:
    picker = make()
    slots = [picker.add(1, 0.0) for _ in range(5)]
    assert slots == [0, 1, 2, 3, 4]
    picker.remove(3)
    picker.remove(1)
    assert len(picker) == 3
    assert picker.eligible_count() == 3
    assert [picker.add(2, 0.0) for _ in range(3)] == [1, 3, 5]
    assert len(picker) == 6
    assert picker.in_flight(1) == 0
    with pytest.raises(IndexError):
        picker.in_flight(6)
    picker.remove(5)
    with pytest.raises(IndexError):
        picker.release(5)
    with pytest.raises(IndexError):
        picker.remove(-1)


def test_removed_backend_is_never_picked(make: Factory) -> None:
    picker = make()
    a = picker.add(1, 0.0)
    b = picker.add(1, 0.0)
    picker.remove(a)
    assert set(take_release(picker, 20)) == {b}


def test_release_never_goes_negative(make: Factory) -> None:
    picker = make()
    slot = picker.add(1, 0.0)
    assert picker.release(slot) == 0
    assert picker.pick(0.0) == slot
    assert picker.release(slot) == 0
    assert picker.release(slot) == 0
    assert picker.in_flight(slot) == 0


def test_weight_is_validated(make: Factory) -> None:
    picker = make()
    with pytest.raises(ValueError):
        picker.add(-1, 0.0)
    with pytest.raises(ValueError):
        picker.add(picker_py.MAX_WEIGHT + 1, 0.0)
    with pytest.raises(TypeError):
        picker.add(1.5, 0.0)
    slot = picker.add(picker_py.MAX_WEIGHT, 0.0)
    with pytest.raises(ValueError):
        picker.set_weight(slot, -3)


def large_pool(make: Factory, size: int) -> tuple[Any, list[int], set[int]]:
    """Weights alternate 1 and 3; every fifth backend is ineligible."""
    picker = make(seed=42)
    weights = [1 + 2 * (i % 2) for i in range(size)]
    down = set()
    for i, w in enumerate(weights):
        picker.add(w, 0.0)
        if i % 5 == 0:
            picker.set_eligible(i, False, 0.0)
            down.add(i)
    return picker, weights, down


def test_large_pool_respects_eligibility_and_weights(make: Factory) -> None:
    size = 5000
    assert size > picker_py.P2C_THRESHOLD
    picker, weights, down = large_pool(make, size)
    assert picker.eligible_count() == size - len(down)
    picks = Counter(take_release(picker, 40_000))
    assert not down & picks.keys()
    heavy = sum(n for s, n in picks.items() if weights[s] == 3)
    assert heavy / 40_000 == pytest.approx(0.75, abs=0.015)
    # No bias by slot number (a "lower slot wins ties" rule would give the low half ~75%).
    low = sum(n for s, n in picks.items() if s < size // 2)
    assert low / 40_000 == pytest.approx(0.5, abs=0.015)


def test_large_pool_balances_in_flight_by_weight(make: Factory) -> None:
    picker, weights, down = large_pool(make, 2000)
    for _ in range(16_000):
        picker.pick(0.0)
    light = [picker.in_flight(s) for s in range(2000) if s not in down and weights[s] == 1]
    heavy = [picker.in_flight(s) for s in range(2000) if s not in down and weights[s] == 3]
    assert not any(picker.in_flight(s) for s in down)
    ratio = (sum(heavy) / len(heavy)) / (sum(light) / len(light))
    assert ratio == pytest.approx(3.0, rel=0.1)
    # Two choices keep the spread small: nobody is far above its fair share.
    assert max(light) <= 10
    assert max(heavy) <= 20


def test_large_pool_panic_and_mostly_down(make: Factory) -> None:
    picker, _, _ = large_pool(make, 1000)
    for s in range(1000):
        picker.set_eligible(s, s == 777, 0.0)
    assert picker.eligible_count() == 1
    # Eight weighted draws nearly always miss the only eligible slot; the scan still finds it.
    assert set(take_release(picker, 50)) == {777}
    picker.set_eligible(777, False, 0.0)
    assert picker.pick(0.0) == -1
    assert take_release(picker, 100) == [-1] * 100
    panic = Counter(picker.pick(0.0, panic=True) for _ in range(2000))
    assert len(panic) > 500


def test_large_pool_slow_start(make: Factory) -> None:
    picker = make(seed=3)
    for _ in range(999):
        picker.add(1, 0.0)
    new = picker.add(1000, 0.0, slow_start=10.0)
    # In permille-weight the newcomer has 100,000 of 1,099,000 at first, then about half.
    early = Counter(take_release(picker, 20_000, now=0.0))[new]
    late = Counter(take_release(picker, 20_000, now=10.0))[new]
    assert early == pytest.approx(20_000 * 100 / 1099, rel=0.1)
    assert late == pytest.approx(10_000, rel=0.05)


def test_thresholds_match() -> None:
    if _picker is None:
        pytest.skip(NOT_BUILT)
    assert _picker.P2C_THRESHOLD == picker_py.P2C_THRESHOLD
    assert _picker.P2C_MAX_DRAWS == picker_py.P2C_MAX_DRAWS
    assert _picker.MAX_WEIGHT == picker_py.MAX_WEIGHT


def test_binding_prefers_extension_and_obeys_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from lb.balancer import picker

    try:
        monkeypatch.setenv("LB_PICKER", "python")
        importlib.reload(picker)
        assert picker.IMPLEMENTATION == "python"
        assert picker.Picker is picker_py.Picker
        monkeypatch.delenv("LB_PICKER")
        importlib.reload(picker)
        assert picker.Picker is (picker_py.Picker if _picker is None else _picker.Picker)
        loaded = picker.IMPLEMENTATION
        assert loaded == ("python" if _picker is None else "cython")
    finally:
        monkeypatch.delenv("LB_PICKER", raising=False)
        importlib.reload(picker)
