"""The compiled picker and its pure-Python twin make identical choices.

Random sequences of every operation are applied to both, below and above the power-of-two-choices
threshold and in least-latency mode (Peak EWMA, with RTT samples), and every result is compared.
Slots may be attached to shared counters, and the sum over every slot too (each picker has its
own copy of the shared buffer, and "other workers" change both copies alike), and the copies
must stay byte for byte equal.
"""

from __future__ import annotations

import mmap
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from lb.balancer import picker_py

try:
    from lb import _picker
except ImportError:
    pytest.skip(
        "lb._picker is not built (run: python setup.py build_ext --inplace)",
        allow_module_level=True,
    )

MAX_POOL = picker_py.P2C_THRESHOLD * 3
SHARED_ROWS = 8  # rows of [total, own] words in each picker's stand-in for the shared segment
SUM_ROW = SHARED_ROWS  # and one more, for the sum over every slot

weights = st.one_of(st.integers(0, 6), st.just(picker_py.MAX_WEIGHT))
windows = st.sampled_from([0.0, 0.5, 3.0, 20.0])
decays = st.sampled_from([0.0, 0.5, 10.0])  # 0: least connections
penalties = st.sampled_from([0.0, 0.25, 1.0])
rtts = st.one_of(
    st.floats(0.0, 2.0), st.sampled_from([-1.0, 1e-6, float("inf"), float("nan"), 1e9])
)


class PickerPair(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.twin: Any = None
        self.ext: Any = None
        self.now = 0.0
        self.slots: list[int] = []
        self.held: list[int] = []  # one entry per request picked and not yet released
        self.twin_buf = mmap.mmap(-1, (SUM_ROW + 1) * 16)
        self.ext_buf = mmap.mmap(-1, (SUM_ROW + 1) * 16)
        self.others = [0] * (SUM_ROW + 1)  # requests "other workers" hold on each row

    def both(self, method: str, *args: Any) -> Any:
        expected = getattr(self.twin, method)(*args)
        got = getattr(self.ext, method)(*args)
        assert got == expected, (method, args)
        return expected

    @initialize(
        seed=st.integers(0, 2**64 - 1), count=st.integers(0, 8), weight=weights, decay=decays
    )
    def start(self, seed: int, count: int, weight: int, decay: float) -> None:
        self.twin = picker_py.Picker(seed)
        self.ext = _picker.Picker(seed)
        for _ in range(count):
            self.slots.append(self.both("add", weight, self.now))
        self.both("set_latency", decay, 1.0)

    @rule(decay=decays, penalty=penalties)
    def set_latency(self, decay: float, penalty: float) -> None:
        self.both("set_latency", decay, penalty)

    @precondition(lambda self: self.slots)
    @rule(data=st.data(), rtt=rtts, count=st.integers(1, 10))
    def observe(self, data: st.DataObject, rtt: float, count: int) -> None:
        for _ in range(count):
            self.both("observe", data.draw(st.sampled_from(self.slots)), rtt, self.now)

    @precondition(lambda self: len(self.slots) < MAX_POOL)
    @rule(weight=weights, slow_start=windows)
    def add(self, weight: int, slow_start: float) -> None:
        self.slots.append(self.both("add", weight, self.now, slow_start))

    @precondition(lambda self: len(self.slots) < MAX_POOL)
    @rule(count=st.integers(1, picker_py.P2C_THRESHOLD + 10), weight=st.integers(1, 4))
    def add_many(self, count: int, weight: int) -> None:
        # Large steps are what carry the pool across the threshold in either direction.
        for i in range(min(count, MAX_POOL - len(self.slots))):
            self.slots.append(self.both("add", weight + i % 3, self.now))

    @precondition(lambda self: self.slots)
    @rule(data=st.data(), count=st.integers(1, picker_py.P2C_THRESHOLD))
    def remove(self, data: st.DataObject, count: int) -> None:
        for _ in range(min(count, len(self.slots))):
            slot = self.slots.pop(data.draw(st.integers(0, len(self.slots) - 1)))
            while slot in self.held:
                self.held.remove(slot)
                self.both("release", slot)
            self.both("remove", slot)

    @precondition(lambda self: self.slots)
    @rule(data=st.data(), weight=weights)
    def set_weight(self, data: st.DataObject, weight: int) -> None:
        self.both("set_weight", data.draw(st.sampled_from(self.slots)), weight)

    @precondition(lambda self: self.slots)
    @rule(data=st.data(), eligible=st.booleans(), slow_start=windows, spread=st.integers(1, 50))
    def set_eligible(
        self, data: st.DataObject, eligible: bool, slow_start: float, spread: int
    ) -> None:
        # Several slots at once, so that large pools get mostly-down phases too.
        first = data.draw(st.integers(0, len(self.slots) - 1))
        for slot in self.slots[first : first + spread]:
            self.both("set_eligible", slot, eligible, self.now, slow_start)

    @precondition(lambda self: self.slots)
    @rule(data=st.data(), slow_start=windows)
    def restart_slow_start(self, data: st.DataObject, slow_start: float) -> None:
        slot = data.draw(st.sampled_from(self.slots))
        self.both("restart_slow_start", slot, self.now, slow_start)

    @rule(dt=st.one_of(st.floats(0.0, 5.0), st.floats(-1.0, 0.0)))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule(count=st.integers(1, 30), panic=st.booleans(), keep=st.booleans())
    def pick(self, count: int, panic: bool, keep: bool) -> None:
        above = len(self.slots) > picker_py.P2C_THRESHOLD
        if self.twin._decay > 0.0:
            event("pick by least latency")
        else:
            event("pick with power of two choices" if above else "pick with the exact scan")
        for _ in range(count):
            slot = self.both("pick", self.now, panic)
            if slot < 0:
                continue
            if keep:
                self.held.append(slot)
            else:
                self.both("release", slot)

    @precondition(lambda self: self.slots)
    @rule(data=st.data())
    def take(self, data: st.DataObject) -> None:
        slot = data.draw(st.sampled_from(self.slots))
        self.both("take", slot)
        self.held.append(slot)

    @precondition(lambda self: self.held)
    @rule(data=st.data(), count=st.integers(1, 30))
    def release(self, data: st.DataObject, count: int) -> None:
        for _ in range(min(count, len(self.held))):
            slot = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
            self.both("release", slot)

    @precondition(lambda self: self.slots)
    @rule(data=st.data())
    def release_idle(self, data: st.DataObject) -> None:
        # Releasing more than was picked must clamp at 0 in both.
        self.both("release", data.draw(st.sampled_from(self.slots)))

    @precondition(lambda self: self.slots)
    @rule(data=st.data(), row=st.integers(0, SHARED_ROWS - 1))
    def attach(self, data: st.DataObject, row: int) -> None:
        slot = data.draw(st.sampled_from(self.slots))
        self.twin.attach(slot, self.twin_buf, 2 * row, 2 * row + 1)
        self.ext.attach(slot, self.ext_buf, 2 * row, 2 * row + 1)

    @rule(attached=st.booleans())
    def attach_sum(self, attached: bool) -> None:
        if attached:
            self.twin.attach_sum(self.twin_buf, 2 * SUM_ROW, 2 * SUM_ROW + 1)
            self.ext.attach_sum(self.ext_buf, 2 * SUM_ROW, 2 * SUM_ROW + 1)
        else:
            self.both("detach_sum")

    @rule(row=st.integers(0, SUM_ROW), data=st.data())
    def other_workers(self, row: int, data: st.DataObject) -> None:
        delta = data.draw(st.integers(-self.others[row], 40))
        self.others[row] += delta
        for buf in (self.twin_buf, self.ext_buf):
            view = memoryview(buf).cast("q")
            view[2 * row] += delta
            view.release()

    @rule()
    def compare_every_slot(self) -> None:
        for slot in self.slots:
            self.both("in_flight", slot)
            self.both("total_in_flight", slot)
            self.both("effective_weight", slot, self.now)
            self.both("latency", slot, self.now)

    @invariant()
    def same_counts(self) -> None:
        if self.twin is not None:
            self.both("__len__")
            self.both("eligible_count")
            self.both("in_flight_sum")
            self.both("total_in_flight_sum")
            assert self.twin_buf[:] == self.ext_buf[:]


PickerPair.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
test_twin_and_extension_agree = PickerPair.TestCase


def test_scripted_large_pool_agrees() -> None:
    """A fixed long script that is sure to spend most of its time above the threshold."""
    rng = random.Random(2024)
    twin, ext = picker_py.Picker(9), _picker.Picker(9)
    now = 0.0
    held: list[int] = []
    for i in range(picker_py.P2C_THRESHOLD * 2):
        slow_start = 10.0 if i % 7 == 0 else 0.0
        assert twin.add(1 + i % 4, now, slow_start) == ext.add(1 + i % 4, now, slow_start)
    size = picker_py.P2C_THRESHOLD * 2
    for step in range(20_000):
        op = rng.random()
        if op < 0.5:
            panic = rng.random() < 0.1
            slot = twin.pick(now, panic)
            assert ext.pick(now, panic) == slot, step
            if slot >= 0:
                held.append(slot)
        elif op < 0.9 and held:
            slot = held.pop(rng.randrange(len(held)))
            assert twin.release(slot) == ext.release(slot)
        elif op < 0.95:
            slot, up = rng.randrange(size), rng.random() < 0.6
            twin.set_eligible(slot, up, now, 5.0)
            ext.set_eligible(slot, up, now, 5.0)
        elif op < 0.97:
            slot, weight = rng.randrange(size), rng.randrange(5)
            twin.set_weight(slot, weight)
            ext.set_weight(slot, weight)
        else:
            now += rng.random()
    assert twin.eligible_count() == ext.eligible_count()
    for slot in range(size):
        assert twin.in_flight(slot) == ext.in_flight(slot)
        assert twin.effective_weight(slot, now) == ext.effective_weight(slot, now)


def test_scripted_least_latency_agrees() -> None:
    """Least latency over a small and a large pool, with samples, slow starts and downs."""
    for size in (3, picker_py.P2C_THRESHOLD * 2):
        rng = random.Random(size)
        twin, ext = picker_py.Picker(5), _picker.Picker(5)
        now = 0.0
        for i in range(size):
            slow_start = 10.0 if i % 7 == 0 else 0.0
            assert twin.add(1 + i % 4, now, slow_start) == ext.add(1 + i % 4, now, slow_start)
        twin.set_latency(2.0, 0.5)
        ext.set_latency(2.0, 0.5)
        held: list[int] = []
        for step in range(20_000):
            op = rng.random()
            if op < 0.5:
                panic = rng.random() < 0.1
                slot = twin.pick(now, panic)
                assert ext.pick(now, panic) == slot, step
                if slot >= 0:
                    held.append(slot)
            elif op < 0.9 and held:
                slot = held.pop(rng.randrange(len(held)))
                rtt = rng.expovariate(1000.0) * (1 + slot % 3)
                twin.observe(slot, rtt, now)
                ext.observe(slot, rtt, now)
                assert twin.release(slot) == ext.release(slot)
            elif op < 0.93:
                slot, up = rng.randrange(size), rng.random() < 0.6
                twin.set_eligible(slot, up, now, 5.0)
                ext.set_eligible(slot, up, now, 5.0)
            else:
                now += rng.random() * 0.1
        for slot in range(size):
            assert twin.latency(slot, now) == ext.latency(slot, now)
            assert twin.in_flight(slot) == ext.in_flight(slot)
