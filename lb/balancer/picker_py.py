"""Weighted-least-connections and least-latency picker, pure Python twin of ``lb._picker``.

Both implementations run the same algorithm with the same integer arithmetic and the same PRNG,
so for the same sequence of calls they return the same slots. Any change here must be made in
``ext/picker.pyx`` too; ``tests/test_picker_equivalence.py`` checks it.

Choice
    Candidates are live slots with weight > 0 that are eligible (eligibility is ignored when
    ``panic`` is true). The candidate with the lowest ``in_flight / effective_weight`` wins,
    compared by cross-multiplication on integers. Ties are broken by NGINX's smooth weighted round
    robin over the tied set only, which gives exact weight proportions when the pool is idle.

Effective weight
    ``weight * permille``, with permille 1000 outside slow start and
    ``max(100, floor(1000 * elapsed / window))`` during it (Envoy's slow start, aggression 1.0,
    min_weight_percent 10). A slot leaves slow start the first time ``elapsed >= window`` is seen.
    Ramping slots are kept in a list so that ``pick`` pays nothing when no slot ramps and
    O(ramping slots) when some do.

Large pools: weighted power of two choices
    Above ``P2C_THRESHOLD`` live slots the exact scan is replaced by an approximation: two slots are
    drawn with probability proportional to effective weight (a Fenwick tree over the slots, updated
    in O(log n) whenever an effective weight changes) and the one with the lower
    ``in_flight / effective_weight`` is taken; on a tie the first draw wins, because preferring the
    lower slot would skew an idle pool towards low slot numbers. Ineligible draws are skipped; after
    ``P2C_MAX_DRAWS`` draws without an eligible one, the exact scan decides. The draws come from
    splitmix64 seeded with ``seed``.

    What is approximate: the winner is the better of two weighted samples, not the global
    minimum, so under load ``in_flight / weight`` is balanced statistically (the spread stays
    small, as power of two choices guarantees) rather than exactly, and an idle pool follows the
    weights in expectation rather than in an exact round-robin cycle. When a fraction q of the
    effective weight is ineligible, a pick falls back to the O(n) scan with probability q ** 8
    (0.4% at q = 1/2, 5.8% at q = 0.7); in panic mode no draw is skipped.

    The threshold is the compiled picker's (see its docstring for the measurements behind it);
    the twin uses the same value so both make the same choices.

Least latency: Peak EWMA (``set_latency``)
    As in the compiled picker (see its docstring): an RTT estimate per slot, peak-sensitive and
    decaying with ``exp(-elapsed / decay)``, cost ``estimate * (in_flight + 1) /
    effective_weight``, power of two choices over distinct candidates at every pool size. The
    doubles go through the same operations in the same order as the C code, and ``math.exp`` is
    the C library's ``exp``, so both pick the same slots.

Shared counts (worker processes)
    ``attach(slot, buffer, total_index, own_index)`` works as in the compiled picker (see its
    docstring) but through a ``memoryview`` cast to int64, with plain reads and writes: atomic
    enough for one process under the GIL, not across processes. The twin is for machines
    without a C compiler, and ``lb run --workers N`` refuses to start with it. So do
    ``attach_sum`` and the sums (``in_flight_sum``, ``total_in_flight_sum``) that a bounded
    consistent-hash table (``lb.balancer.hashring_py``) compares with.
"""

from __future__ import annotations

import heapq
import math
import operator
from array import array

P2C_THRESHOLD = 128
P2C_MAX_DRAWS = 8
# Bounds weight * 1000 * in_flight well inside int64, so C and Python never disagree on overflow.
MAX_WEIGHT = 1_000_000
# Samples are clamped to 0..MAX_RTT seconds: an infinite one would turn the decay into NaN.
MAX_RTT = 1e6

_FULL_PERMILLE = 1000
_MIN_PERMILLE = 100
_INITIAL_CAPACITY = 8
_MASK64 = (1 << 64) - 1


def _ramp_permille(elapsed: float, window: float) -> int:
    """Permille of the weight after ``elapsed`` seconds of a ``window``; -1 once it is over."""
    if elapsed >= window:
        return -1
    q = 1000.0 * elapsed / window
    # "not >=" also catches NaN, as in the compiled version.
    if not q >= 100.0:
        return _MIN_PERMILLE
    return math.floor(q)


def _check_weight(weight: int) -> int:
    value = operator.index(weight)
    if not 0 <= value <= MAX_WEIGHT:
        raise ValueError(f"weight must be within 0..{MAX_WEIGHT}, got {value}")
    return value


class Picker:
    """Least-connections or least-latency picker over integer slots; see the module docstring."""

    def __init__(self, seed: int = 1) -> None:
        self._rng = operator.index(seed) & _MASK64
        self._cap = 0
        self._high = 0  # slots at or above this were never used
        self._live = 0
        self._eligible = 0
        self._ramping = 0
        self._total = 0  # sum of effective weights of all live slots
        self._free: list[int] = []  # min-heap of freed slots
        self._alive: list[bool] = []
        self._elig: list[bool] = []
        self._weight: list[int] = []
        self._permille: list[int] = []
        self._eff: list[int] = []
        self._current: list[int] = []  # smooth weighted round robin state
        self._in_flight = array("q")
        self._ss_start: list[float] = []
        self._ss_window: list[float] = []
        self._ramp_pos: list[int] = []  # index in _ramp_slots, -1 when not ramping
        self._ramp_slots: list[int] = []
        self._tree: list[int] = [0]  # Fenwick tree of _eff, 1-based
        # slot -> (int64 view of a shared buffer, total word, own word); see attach().
        self._shared: dict[int, tuple[memoryview, int, int]] = {}
        self._own_sum = 0  # this picker's requests over every slot
        self._sum: tuple[memoryview, int, int] | None = None  # as _shared, for the sum
        self._decay = 0.0  # least_latency's time constant in seconds; 0: least connections
        self._penalty = 0.0  # the RTT a slot without a sample counts as while busy
        self._rtt: list[float] = []  # RTT estimate in seconds as of _rtt_at; -1: no sample yet
        self._rtt_at: list[float] = []
        self._grow(_INITIAL_CAPACITY)

    def _grow(self, cap: int) -> None:
        # cap stays a power of two so the Fenwick descent needs no bounds check.
        extra = cap - self._cap
        self._alive += [False] * extra
        self._elig += [False] * extra
        self._weight += [0] * extra
        self._permille += [_FULL_PERMILLE] * extra
        self._eff += [0] * extra
        self._current += [0] * extra
        self._in_flight.extend([0] * extra)
        self._ss_start += [0.0] * extra
        self._ss_window += [0.0] * extra
        self._ramp_pos += [-1] * extra
        self._rtt += [-1.0] * extra
        self._rtt_at += [0.0] * extra
        tree = [0] * (cap + 1)
        for i in range(1, cap + 1):
            tree[i] += self._eff[i - 1]
            j = i + (i & -i)
            if j <= cap:
                tree[j] += tree[i]
        self._tree = tree
        self._cap = cap

    def _check(self, slot: int) -> int:
        slot = operator.index(slot)
        if slot < 0 or slot >= self._high or not self._alive[slot]:
            raise IndexError(f"no live backend in slot {slot}")
        return slot

    def _set_eff(self, slot: int, eff: int) -> None:
        delta = eff - self._eff[slot]
        if delta == 0:
            return
        self._eff[slot] = eff
        self._total += delta
        i = slot + 1
        while i <= self._cap:
            self._tree[i] += delta
            i += i & -i

    def _set_permille(self, slot: int, permille: int) -> None:
        self._permille[slot] = permille
        self._set_eff(slot, self._weight[slot] * permille)

    def _ramp_on(self, slot: int, now: float, window: float) -> None:
        if self._ramp_pos[slot] < 0:
            self._ramp_pos[slot] = self._ramping
            self._ramp_slots.append(slot)
            self._ramping += 1
        self._ss_start[slot] = float(now)
        self._ss_window[slot] = float(window)
        self._set_permille(slot, _MIN_PERMILLE)

    def _ramp_off(self, slot: int) -> None:
        pos = self._ramp_pos[slot]
        if pos < 0:
            return
        self._ramping -= 1
        last = self._ramp_slots.pop()
        if last != slot:
            self._ramp_slots[pos] = last
            self._ramp_pos[last] = pos
        self._ramp_pos[slot] = -1
        self._set_permille(slot, _FULL_PERMILLE)

    def _advance_ramps(self, now: float) -> None:
        # Backwards, so the swap-remove in _ramp_off only moves already visited entries.
        for k in range(self._ramping - 1, -1, -1):
            slot = self._ramp_slots[k]
            permille = _ramp_permille(now - self._ss_start[slot], self._ss_window[slot])
            if permille < 0:
                self._ramp_off(slot)
            elif permille != self._permille[slot]:
                self._set_permille(slot, permille)

    def _flights(self) -> array[int] | list[int]:
        """The counts choices compare: the shared ones of attached slots, else the own ones."""
        if not self._shared:
            return self._in_flight
        flights = self._in_flight.tolist()
        for slot, (view, total, _) in self._shared.items():
            flights[slot] = view[total]
        return flights

    def _scan(self, panic: bool) -> int:
        """Exact choice: lowest in_flight/eff, ties by smooth weighted round robin."""
        tied: list[int] = []
        best_flight = best_eff = 0
        flights = self._flights()
        for slot in range(self._high):
            eff = self._eff[slot]
            if eff <= 0 or not (panic or self._elig[slot]):
                continue
            flight = flights[slot]
            if tied:
                lhs = flight * best_eff
                rhs = best_flight * eff
                if lhs > rhs:
                    continue
                if lhs < rhs:
                    tied.clear()
            if not tied:
                best_flight = flight
                best_eff = eff
            tied.append(slot)
        if not tied:
            return -1
        if len(tied) == 1:
            return tied[0]
        best = tied[0]
        total = 0
        for slot in tied:
            eff = self._eff[slot]
            self._current[slot] += eff
            total += eff
            if self._current[slot] > self._current[best]:
                best = slot
        self._current[best] -= total
        return best

    def _next_random(self) -> int:
        """splitmix64, masked to 64 bits exactly like the C version wraps."""
        self._rng = (self._rng + 0x9E3779B97F4A7C15) & _MASK64
        z = self._rng
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return z ^ (z >> 31)

    def _draw(self) -> int:
        """Smallest slot whose cumulative effective weight exceeds a uniform r in [0, total)."""
        rest = self._next_random() % self._total
        pos = 0
        step = self._cap >> 1
        while step:
            nxt = pos + step
            if self._tree[nxt] <= rest:
                pos = nxt
                rest -= self._tree[nxt]
            step >>= 1
        return pos

    def _p2c(self, panic: bool) -> int:
        """Approximate choice for large pools: the better of two weighted draws."""
        if self._total == 0:
            return -1
        first = second = -1
        for _ in range(P2C_MAX_DRAWS):
            slot = self._draw()
            if not (panic or self._elig[slot]):
                continue
            if first < 0:
                first = slot
            else:
                second = slot
                break
        if first < 0:
            return self._scan(panic)
        if second < 0:
            return first
        flights, effs = self._flights(), self._eff
        if flights[second] * effs[first] < flights[first] * effs[second]:
            return second
        return first

    def _estimate(self, slot: int, now: float) -> float:
        """The slot's RTT estimate decayed to ``now``; -1 before its first sample."""
        rtt = self._rtt[slot]
        dt = now - self._rtt_at[slot]
        if rtt > 0.0 and dt > 0.0:
            return rtt * math.exp(-dt / self._decay)
        return rtt

    def _cost(self, slot: int, flights: array[int] | list[int], now: float) -> float:
        flight = flights[slot]
        rtt = self._estimate(slot, now)
        if rtt < 0.0:
            if flight <= 0:
                return 0.0
            rtt = self._penalty
        return rtt * float(flight + 1) / float(self._eff[slot])

    def _p2c_latency(self, panic: bool, now: float) -> int:
        """Peak EWMA's choice: the cheaper of two distinct weighted draws."""
        if self._total == 0:
            return -1
        first = second = -1
        for _ in range(P2C_MAX_DRAWS):
            slot = self._draw()
            if slot == first or not (panic or self._elig[slot]):
                continue
            if first >= 0:
                second = slot
                break
            first = slot
            if self._eff[slot] == self._total:
                break  # no other slot has weight: there is no second to draw
        if first < 0:
            return self._scan_latency(panic, now)
        flights = self._flights()
        if second >= 0 and self._cost(second, flights, now) < self._cost(first, flights, now):
            return second
        return first

    def _scan_latency(self, panic: bool, now: float) -> int:
        best, best_cost = -1, 0.0
        flights = self._flights()
        for slot in range(self._high):
            if self._eff[slot] <= 0 or not (panic or self._elig[slot]):
                continue
            cost = self._cost(slot, flights, now)
            if best < 0 or cost < best_cost:
                best, best_cost = slot, cost
        return best

    def add(self, weight: int, now: float, slow_start: float = 0.0) -> int:
        """Add a backend and return its slot (the lowest freed slot is reused first)."""
        w = _check_weight(weight)
        if self._free:
            slot = heapq.heappop(self._free)
        else:
            if self._high == self._cap:
                self._grow(self._cap * 2)
            slot = self._high
            self._high += 1
        self._alive[slot] = True
        self._elig[slot] = True
        self._weight[slot] = w
        self._current[slot] = 0
        self._in_flight[slot] = 0
        self._rtt[slot] = -1.0
        self._live += 1
        if w > 0:
            self._eligible += 1
        if slow_start > 0.0:
            self._ramp_on(slot, now, slow_start)
        else:
            self._set_permille(slot, _FULL_PERMILLE)
        return slot

    def remove(self, slot: int) -> None:
        """Free ``slot``; the caller has released all of its requests."""
        slot = self._check(slot)
        self._detach(slot)
        self._ramp_off(slot)
        if self._elig[slot] and self._weight[slot] > 0:
            self._eligible -= 1
        self._set_eff(slot, 0)
        self._alive[slot] = False
        self._elig[slot] = False
        self._weight[slot] = 0
        self._current[slot] = 0
        self._count_sum(-self._in_flight[slot])  # none, when the caller kept its word
        self._in_flight[slot] = 0
        self._rtt[slot] = -1.0
        self._live -= 1
        heapq.heappush(self._free, slot)

    def set_weight(self, slot: int, weight: int) -> None:
        """Change the weight; 0 drains the slot (never picked, releases still count)."""
        slot = self._check(slot)
        w = _check_weight(weight)
        if self._elig[slot]:
            self._eligible += (w > 0) - (self._weight[slot] > 0)
        self._weight[slot] = w
        self._set_permille(slot, self._permille[slot])

    def set_eligible(self, slot: int, eligible: bool, now: float, slow_start: float = 0.0) -> None:
        """Mark the slot up or down; coming back up restarts slow start when ``slow_start > 0``."""
        slot = self._check(slot)
        eligible = bool(eligible)
        if eligible == self._elig[slot]:
            return
        self._elig[slot] = eligible
        if self._weight[slot] > 0:
            self._eligible += 1 if eligible else -1
        if eligible and slow_start > 0.0:
            self._ramp_on(slot, now, slow_start)

    def restart_slow_start(self, slot: int, now: float, slow_start: float) -> None:
        """Start a new ramp at ``now``; ``slow_start <= 0`` ends any ramp at once."""
        slot = self._check(slot)
        if slow_start > 0.0:
            self._ramp_on(slot, now, slow_start)
        else:
            self._ramp_off(slot)

    def pick(self, now: float, panic: bool = False) -> int:
        """Choose a slot and count a request on it; -1 when there is no candidate."""
        if self._ramping:
            self._advance_ramps(now)
        if not panic and self._eligible == 0:
            return -1
        if self._decay > 0.0:
            slot = self._p2c_latency(panic, now)
        elif self._live > P2C_THRESHOLD:
            slot = self._p2c(panic)
        else:
            slot = self._scan(panic)
        if slot >= 0:
            self._count(slot, 1)
        return slot

    def release(self, slot: int) -> int:
        """Count a finished request; returns the slot's new in-flight count (never below 0)."""
        slot = self._check(slot)
        if self._in_flight[slot] > 0:
            self._count(slot, -1)
        return self._in_flight[slot]

    def set_latency(self, decay: float, penalty: float) -> None:
        """Choose by Peak EWMA with time constant ``decay`` seconds, counting a busy slot
        without a sample as ``penalty``; ``decay <= 0``: least connections again. Switching it
        on starts every slot without a sample."""
        decay, penalty = float(decay), float(penalty)
        if not decay > 0.0:
            self._decay = 0.0
            return
        if self._decay == 0.0:
            self._rtt[: self._high] = [-1.0] * self._high
        self._decay = decay
        self._penalty = min(max(penalty, 0.0), MAX_RTT)

    def observe(self, slot: int, rtt: float, now: float) -> None:
        """An RTT sample of ``rtt`` seconds at ``now`` (least latency; ignored otherwise)."""
        slot = self._check(slot)
        rtt, now = float(rtt), float(now)
        prior = self._rtt[slot]
        if self._decay == 0.0:
            return
        if not rtt >= 0.0:
            rtt = 0.0
        elif rtt > MAX_RTT:
            rtt = MAX_RTT
        if prior < 0.0:
            self._rtt[slot] = rtt
        else:
            w = now - self._rtt_at[slot]
            w = math.exp(-w / self._decay) if w > 0.0 else 1.0
            prior = prior * w
            self._rtt[slot] = rtt if rtt > prior else prior + rtt * (1.0 - w)
        self._rtt_at[slot] = now

    def latency(self, slot: int, now: float) -> float | None:
        """The slot's RTT estimate in seconds at ``now``; None before its first sample, or
        when the picker is not choosing by latency."""
        slot = self._check(slot)
        if self._decay == 0.0 or self._rtt[slot] < 0.0:
            return None
        return self._estimate(slot, float(now))

    def take(self, slot: int) -> None:
        """Count a request on a slot chosen elsewhere (consistent hashing, affinity), as
        ``pick`` counts its own choice; ``release`` ends it."""
        self._count(self._check(slot), 1)

    def in_flight(self, slot: int) -> int:
        """This picker's own requests on the slot."""
        return self._in_flight[self._check(slot)]

    def total_in_flight(self, slot: int) -> int:
        """The count choices compare: every worker's when attached, else ``in_flight``."""
        slot = self._check(slot)
        shared = self._shared.get(slot)
        return self._in_flight[slot] if shared is None else shared[0][shared[1]]

    def in_flight_sum(self) -> int:
        """This picker's own requests over every slot."""
        return self._own_sum

    def total_in_flight_sum(self) -> int:
        """Every slot's requests: every worker's when the sum is attached (``attach_sum``),
        else ``in_flight_sum``; what a bounded consistent-hash walk shares out."""
        return self._own_sum if self._sum is None else self._sum[0][self._sum[1]]

    def attach(self, slot: int, buffer: object, total_index: int, own_index: int) -> None:
        """Compare the slot by int64 word ``total_index`` of ``buffer``; see the docstring."""
        slot = self._check(slot)
        view = memoryview(buffer).cast("B").cast("q")  # type: ignore[arg-type]
        words = len(view)
        if not (0 <= total_index < words and 0 <= own_index < words):
            raise IndexError(f"words {total_index}, {own_index} outside 0..{words - 1}")
        self._detach(slot)
        self._shared[slot] = (view, total_index, own_index)
        view[total_index] += self._in_flight[slot]
        view[own_index] = self._in_flight[slot]

    def attach_sum(self, buffer: object, total_index: int, own_index: int) -> None:
        """Count every request in int64 word ``total_index`` of ``buffer`` too; see the
        compiled picker's docstring."""
        view = memoryview(buffer).cast("B").cast("q")  # type: ignore[arg-type]
        words = len(view)
        if not (0 <= total_index < words and 0 <= own_index < words):
            raise IndexError(f"words {total_index}, {own_index} outside 0..{words - 1}")
        self.detach_sum()
        self._sum = (view, total_index, own_index)
        view[total_index] += self._own_sum
        view[own_index] = self._own_sum

    def detach_sum(self) -> None:
        """Withdraw this picker's requests from the shared sum and stop counting there."""
        if self._sum is not None:
            view, total, own = self._sum
            view[total] -= self._own_sum
            view[own] = 0
            self._sum = None

    def _count(self, slot: int, delta: int) -> None:
        self._in_flight[slot] += delta
        shared = self._shared.get(slot)
        if shared is not None:
            view, total, own = shared
            view[total] += delta
            view[own] = self._in_flight[slot]
        self._count_sum(delta)

    def _count_sum(self, delta: int) -> None:
        self._own_sum += delta
        if self._sum is not None:
            view, total, own = self._sum
            view[total] += delta
            view[own] = self._own_sum

    def _detach(self, slot: int) -> None:
        # Withdraw this picker's own requests from the shared count; other workers' stay.
        shared = self._shared.pop(slot, None)
        if shared is not None:
            view, total, own = shared
            view[total] -= self._in_flight[slot]
            view[own] = 0

    def effective_weight(self, slot: int, now: float) -> float:
        """``weight * slow-start factor`` at ``now``, without changing any state."""
        slot = self._check(slot)
        permille = _FULL_PERMILLE
        if self._ramp_pos[slot] >= 0:
            permille = _ramp_permille(now - self._ss_start[slot], self._ss_window[slot])
            if permille < 0:
                permille = _FULL_PERMILLE
        return self._weight[slot] * permille / 1000

    def eligible_count(self) -> int:
        """Live, eligible slots with weight > 0."""
        return self._eligible

    def __len__(self) -> int:
        return self._live
