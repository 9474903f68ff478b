"""Consistent-hash tables, pure-Python twin of the compiled ``lb._hashring``.

Same tables, same walk, same arithmetic (doubles where the compiled one uses doubles), so for
the same calls both return the same slots. Any change here must be made in ``ext/hashring.pyx``
too; ``tests/test_hashring_equivalence.py`` checks it. The module docstring there describes
the ring, the Maglev table, the walk with bounded loads and slow start.

A bounded table reads the in-flight counts of its picker, as the compiled one does, but
through the picker's methods (``total_in_flight``, ``total_in_flight_sum``), so it takes either
picker: ``LB_PURE_PYTHON=1`` pairs this twin with the compiled ``lb._picker``.
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Sequence
from typing import Protocol

import xxhash

RING = 0
MAGLEV = 1
RAMP_PROBES = 16
MAX_RING_POINTS = 8_388_608  # Envoy's maximum_ring_size
MAX_TABLE_SIZE = 5_000_011  # Envoy's largest Maglev table

_FULL_PERMILLE = 1000
_MASK64 = (1 << 64) - 1

Member = tuple[int, int, bytes]  # (picker slot, weight, b"host:port")


class Counts(Protocol):
    """What a bounded table reads of a picker (``lb._picker`` or ``picker_py``)."""

    def in_flight(self, slot: int) -> int: ...
    def total_in_flight(self, slot: int) -> int: ...
    def total_in_flight_sum(self) -> int: ...


def xxh64(data: bytes, seed: int = 0) -> int:
    """XXH64 of ``data``: what keys and member names hash to."""
    return xxhash.xxh64_intdigest(data, seed)


def _mix64(z: int) -> int:
    """splitmix64's finalizer, masked to 64 bits as the C version wraps."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def ring_points(weights: list[int], vnodes: int) -> list[int]:
    """Points per member of a ring: weights in member order, ``vnodes`` per average weight."""
    n, total = len(weights), sum(weights)
    counts = [max(1, (2 * vnodes * n * w + total) // (2 * total)) for w in weights]
    points = sum(counts)
    if points > MAX_RING_POINTS:
        counts = [max(1, c * MAX_RING_POINTS // points) for c in counts]
    return counts


class HashTable:
    """A ring or a Maglev table over picker slots; see ``ext/hashring.pyx``."""

    def __init__(self, kind: int, bound: float = 0.0, picker: Counts | None = None) -> None:
        if kind not in (RING, MAGLEV):
            raise ValueError(f"kind must be RING or MAGLEV, got {kind}")
        if bound != 0.0 and not bound >= 1.0:
            raise ValueError(f"a load bound is at least 1, got {bound}")
        if bound != 0.0 and picker is None:
            raise ValueError("a load bound compares the in-flight counts of a picker: pass it")
        self.kind = kind
        self.bound = float(bound)
        self._picker = picker if bound != 0.0 else None
        self.spilled = False
        self._points: list[int] = []
        self._entries: list[int] = []
        self._elig: list[bool] = []
        self._weight: list[int] = []
        self._permille: list[int] = []
        self._ramping = 0
        self._elig_weight = 0
        self._all_weight = 0
        self._grow(8)

    def _grow(self, cap: int) -> None:
        extra = cap - len(self._elig)
        if extra > 0:
            self._elig += [False] * extra
            self._weight += [0] * extra
            self._permille += [_FULL_PERMILLE] * extra

    def _check(self, slot: int) -> int:
        slot = operator.index(slot)
        if slot < 0:
            raise IndexError(f"no slot {slot}")
        if slot >= len(self._elig):
            self._grow(max(slot + 1, 2 * len(self._elig)))
        return slot

    # -- building ---------------------------------------------------------------------------------
    def rebuild(self, members: Sequence[Member], size: int) -> None:
        """Fill the table from ``(slot, weight, name)`` members; ``size``: virtual nodes per
        average member (ring) or the table length, a prime (Maglev)."""
        ordered = sorted(
            (bytes(name), operator.index(slot), operator.index(weight))
            for slot, weight, name in members
            if weight > 0
        )
        slots = [m[1] for m in ordered]
        weights = [m[2] for m in ordered]
        if len(set(slots)) != len(slots):
            raise ValueError("a slot appears twice among the members")
        if size < 1:
            raise ValueError(f"size must be positive, got {size}")
        if self._picker is not None:
            for slot in slots:
                self._check_live(self._picker, slot)
        self._weight = [0] * len(self._weight)
        for slot, weight in zip(slots, weights, strict=True):
            self._weight[self._check(slot)] = weight
        self._points, self._entries = [], []
        if ordered:
            names = [m[0] for m in ordered]
            if self.kind == RING:
                self._build_ring(names, slots, weights, size)
            else:
                if size > MAX_TABLE_SIZE:
                    raise ValueError(f"a Maglev table has at most {MAX_TABLE_SIZE} entries")
                self._build_maglev(names, slots, weights, size)
        self._sums()

    @staticmethod
    def _check_live(picker: Counts, slot: int) -> None:
        try:
            picker.in_flight(slot)
        except IndexError:
            raise ValueError(f"slot {slot} is not a live slot of the picker") from None

    def _build_ring(
        self, names: list[bytes], slots: list[int], weights: list[int], vnodes: int
    ) -> None:
        points: list[tuple[int, int]] = []
        for m, count in enumerate(ring_points(weights, vnodes)):
            name = names[m]
            points += [(xxh64(name + b"_" + str(j).encode()), m) for j in range(count)]
        points.sort()
        self._points = [h for h, _ in points]
        self._entries = [slots[m] for _, m in points]

    def _build_maglev(
        self, names: list[bytes], slots: list[int], weights: list[int], size: int
    ) -> None:
        if size < 2:
            raise ValueError("a Maglev table needs at least 2 entries")
        n = len(names)
        offset = [xxh64(name, 0) % size for name in names]
        skip = [xxh64(name, 1) % (size - 1) + 1 for name in names]
        nxt = [0] * n
        target = [0] * n
        top = max(weights)
        table = [-1] * size
        filled = iteration = 0
        while filled < size:
            for m in range(n):
                if filled >= size:
                    break
                if iteration * weights[m] < target[m]:
                    continue
                target[m] += top
                c = (offset[m] + skip[m] * nxt[m]) % size
                while table[c] >= 0:
                    nxt[m] += 1
                    c = (offset[m] + skip[m] * nxt[m]) % size
                table[c] = slots[m]
                nxt[m] += 1
                filled += 1
            iteration += 1
        self._entries = table

    def _sums(self) -> None:
        self._all_weight = sum(self._weight)
        self._elig_weight = sum(w for w, e in zip(self._weight, self._elig, strict=True) if e)

    # -- per-slot state ---------------------------------------------------------------------------
    def set_eligible(self, slot: int, eligible: bool) -> None:
        slot = self._check(slot)
        eligible = bool(eligible)
        if self._elig[slot] == eligible:
            return
        self._elig[slot] = eligible
        self._elig_weight += self._weight[slot] if eligible else -self._weight[slot]

    def eligible(self, slot: int) -> bool:
        return self._elig[self._check(slot)]

    def set_permille(self, slot: int, permille: int) -> None:
        """The share of its keys a ramping slot admits, in permille (1000: all, no ramp)."""
        slot = self._check(slot)
        permille = min(max(operator.index(permille), 0), _FULL_PERMILLE)
        if (self._permille[slot] < _FULL_PERMILLE) != (permille < _FULL_PERMILLE):
            self._ramping += 1 if permille < _FULL_PERMILLE else -1
        self._permille[slot] = permille

    def entries(self) -> list[int]:
        """The slot of every entry, in table order (tests compare tables by it)."""
        return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    # -- the request path -------------------------------------------------------------------------
    def pick(self, key: bytes, panic: bool = False) -> int:
        """The slot for ``key``, or -1 when no member is eligible."""
        return self._pick(xxh64(key), panic)

    def pick_hash(self, h: int, panic: bool = False) -> int:
        """``pick`` for a key already hashed with XXH64."""
        return self._pick(h & _MASK64, panic)

    def _start(self, h: int) -> int:
        n = len(self._entries)
        if self.kind == MAGLEV:
            return h % n
        lo = bisect.bisect_left(self._points, h)  # the first point >= h (compiled: bucketed)
        return 0 if lo == n else lo

    def _pick(self, h: int, panic: bool) -> int:
        entries, elig = self._entries, self._elig
        n = len(entries)
        weight_sum = self._all_weight if panic else self._elig_weight
        self.spilled = False
        if n == 0 or weight_sum <= 0:
            return -1
        picker = self._picker
        limit = 0.0 if picker is None else self.bound * float(picker.total_in_flight_sum() + 1)
        admit = _mix64(h) % 1000 if self._ramping else 0
        first = -1
        probes = 0
        i = self._start(h)
        for _ in range(n):
            s = entries[i]
            i += 1
            if i == n:
                i = 0
            if not (panic or elig[s]):
                continue
            if self._ramping and probes < RAMP_PROBES:
                probes += 1
                if admit >= self._permille[s]:
                    continue
            if picker is None:
                return s
            if first < 0:
                first = s
            load = picker.total_in_flight(s)
            if float(load) * float(weight_sum) < limit * float(self._weight[s]):
                self.spilled = s != first
                return s
        if first < 0:  # every eligible entry ramped the key away: the first eligible one
            i = self._start(h)
            for _ in range(n):
                s = entries[i]
                i = 0 if i + 1 == n else i + 1
                if panic or elig[s]:
                    return s
        return first
