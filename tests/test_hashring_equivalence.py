"""The compiled hash tables and their pure-Python twin make identical choices.

Random sequences of every operation (rebuilds with members coming and going and weights
changing, eligibility, slow-start ramps, in-flight counts, picks with and without panic) are
applied to both, for the ring and for Maglev, with and without a load bound, and every result
is compared, down to the table's entries. XXH64 is checked against the xxhash package.

Like with like: the compiled table reads the counts of a compiled picker, the twin those of a
twin picker. The pickers' slots may be attached to shared counters, their sums too, and
"other workers" change both copies of the shared buffer alike, so the bound is also compared
on counts that are not the picker's own.
"""

from __future__ import annotations

import mmap
from typing import Any

import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from lb.balancer import hashring_py, picker_py

try:
    from lb import _hashring, _picker
except ImportError:
    pytest.skip(
        "lb._hashring is not built (run: python setup.py build_ext --inplace)",
        allow_module_level=True,
    )

SLOTS = 24
SUM_ROW = SLOTS  # rows of [total, own] words: one per slot, then the sum's
NAMES = [f"10.0.{i // 8}.{i % 8}:{8000 + i}".encode() for i in range(SLOTS)]
weights = st.one_of(st.integers(0, 4), st.just(1000))
keys = st.binary(min_size=0, max_size=40)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=100), seed=st.sampled_from([0, 1, 2**63 + 5]))
def test_xxh64_is_the_reference(data: bytes, seed: int) -> None:
    assert _hashring.xxh64(data, seed) == xxhash.xxh64_intdigest(data, seed)
    assert hashring_py.xxh64(data, seed) == xxhash.xxh64_intdigest(data, seed)


class TablePair(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.twin: Any = None
        self.ext: Any = None
        self.held: list[int] = []
        self.twin_picker = picker_py.Picker()
        self.ext_picker = _picker.Picker()
        for _ in range(SLOTS):
            assert self.twin_picker.add(1, 0.0) == self.ext_picker.add(1, 0.0)
        self.twin_buf = mmap.mmap(-1, (SUM_ROW + 1) * 16)
        self.ext_buf = mmap.mmap(-1, (SUM_ROW + 1) * 16)
        self.others = [0] * (SUM_ROW + 1)  # requests "other workers" hold on each row

    def both(self, method: str, *args: Any) -> Any:
        expected = getattr(self.twin, method)(*args)
        got = getattr(self.ext, method)(*args)
        assert got == expected, (method, args)
        return expected

    def pickers(self, method: str, *args: Any) -> Any:
        expected = getattr(self.twin_picker, method)(*args)
        got = getattr(self.ext_picker, method)(*args)
        assert got == expected, (method, args)
        return expected

    @initialize(
        kind=st.sampled_from([hashring_py.RING, hashring_py.MAGLEV]),
        bound=st.sampled_from([0.0, 1.0, 1.25, 2.0]),
        shared=st.booleans(),
    )
    def start(self, kind: int, bound: float, shared: bool) -> None:
        self.twin = hashring_py.HashTable(kind, bound, self.twin_picker)
        self.ext = _hashring.HashTable(kind, bound, self.ext_picker)
        self.kind = kind
        if shared:  # as under --workers: every count is the shared one from the start
            for slot in range(SLOTS):
                self.attach(slot)
            self.attach_sum(True)

    @rule(
        data=st.data(),
        size=st.sampled_from([1, 7, 40, 160]),
        prime=st.sampled_from([2, 3, 13, 251, 1009, 65537]),
    )
    def rebuild(self, data: st.DataObject, size: int, prime: int) -> None:
        chosen = data.draw(st.lists(st.integers(0, SLOTS - 1), unique=True, max_size=SLOTS))
        members = [(s, data.draw(weights), NAMES[s]) for s in chosen]
        self.both("rebuild", members, size if self.kind == hashring_py.RING else prime)

    @rule(slot=st.integers(0, SLOTS - 1), eligible=st.booleans())
    def set_eligible(self, slot: int, eligible: bool) -> None:
        self.both("set_eligible", slot, eligible)

    @rule(slot=st.integers(0, SLOTS - 1), permille=st.integers(-5, 1200))
    def set_permille(self, slot: int, permille: int) -> None:
        self.both("set_permille", slot, permille)

    @rule(slot=st.integers(0, SLOTS - 1), count=st.integers(1, 20))
    def take(self, slot: int, count: int) -> None:
        for _ in range(count):
            self.pickers("take", slot)
            self.held.append(slot)

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        slot = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        self.pickers("release", slot)

    @rule(slot=st.integers(0, SLOTS - 1))
    def release_idle(self, slot: int) -> None:
        if slot not in self.held:
            self.pickers("release", slot)  # nothing in flight: clamps at 0 in both

    @rule(slot=st.integers(0, SLOTS - 1))
    def attach(self, slot: int) -> None:
        self.twin_picker.attach(slot, self.twin_buf, 2 * slot, 2 * slot + 1)
        self.ext_picker.attach(slot, self.ext_buf, 2 * slot, 2 * slot + 1)

    @rule(attached=st.booleans())
    def attach_sum(self, attached: bool) -> None:
        if attached:
            self.twin_picker.attach_sum(self.twin_buf, 2 * SUM_ROW, 2 * SUM_ROW + 1)
            self.ext_picker.attach_sum(self.ext_buf, 2 * SUM_ROW, 2 * SUM_ROW + 1)
        else:
            self.pickers("detach_sum")

    @rule(row=st.integers(0, SUM_ROW), data=st.data())
    def other_workers(self, row: int, data: st.DataObject) -> None:
        delta = data.draw(st.integers(-self.others[row], 40))
        self.others[row] += delta
        for buf in (self.twin_buf, self.ext_buf):
            view = memoryview(buf).cast("q")
            view[2 * row] += delta
            view.release()

    @rule(batch=st.lists(keys, min_size=1, max_size=30), panic=st.booleans(), keep=st.booleans())
    def pick(self, batch: list[bytes], panic: bool, keep: bool) -> None:
        for key in batch:
            slot = self.both("pick", key, panic)
            assert self.twin.spilled == self.ext.spilled
            if slot >= 0 and keep:
                self.pickers("take", slot)
                self.held.append(slot)

    @rule(h=st.integers(0, 2**64 - 1))
    def pick_hash(self, h: int) -> None:
        self.both("pick_hash", h, False)

    @invariant()
    def same_tables(self) -> None:
        if self.twin is not None:
            self.both("entries")
            self.both("__len__")
            self.pickers("in_flight_sum")
            self.pickers("total_in_flight_sum")
            for slot in range(SLOTS):
                self.pickers("total_in_flight", slot)
                self.both("eligible", slot)
            assert self.twin_buf[:] == self.ext_buf[:]


TablePair.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
test_twin_and_extension_agree = TablePair.TestCase


def test_large_tables_agree() -> None:
    """1,000 weighted members: the scaled ring and a 100x Maglev table come out equal."""
    members = [(i, 1 + i % 5, f"192.168.{i // 250}.{i % 250}:80".encode()) for i in range(1000)]
    for kind, size in ((hashring_py.RING, 160), (hashring_py.MAGLEV, 100_003)):
        twin_picker, ext_picker = picker_py.Picker(), _picker.Picker()
        for _ in members:
            twin_picker.add(1, 0.0)
            ext_picker.add(1, 0.0)
        twin = hashring_py.HashTable(kind, 1.25, twin_picker)
        ext = _hashring.HashTable(kind, 1.25, ext_picker)
        twin.rebuild(members, size)
        ext.rebuild(members, size)
        assert twin.entries() == ext.entries()
        for slot, _, _ in members:
            twin.set_eligible(slot, slot % 7 != 0)
            ext.set_eligible(slot, slot % 7 != 0)
        for i in range(3000):
            key = f"user-{i % 700}".encode()
            slot = twin.pick(key)
            assert ext.pick(key) == slot
            twin_picker.take(slot)
            ext_picker.take(slot)
