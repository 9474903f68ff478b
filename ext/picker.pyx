# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""Weighted-least-connections and least-latency picker, compiled (``lb._picker``).

``lb.balancer.picker_py`` is the pure-Python twin: same algorithm, same integer arithmetic, same
PRNG, so for the same sequence of calls both return the same slots. Any change here must be made
there too; ``tests/test_picker_equivalence.py`` checks it.

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

    The threshold, 128 live slots, comes from timing take + release from Python on an idle pool,
    the scan's worst case (every slot ties and gets a round-robin update), with the threshold
    forced to each extreme, on a shared 2-core x86-64 VM: the scan costs about 55 ns + 1.3 ns per
    slot (~130 ns at 64 slots, ~205 ns at 128, ~260 ns at 160, ~290 ns at 192) while two choices
    cost 110-140 ns from 64 to 256 slots, ~150 ns at 1,000 and ~205 ns at 10,000. The costs cross
    near 64 slots; from 64 to 128 the scan costs up to ~90 ns more but stays exact and well within
    the 300 ns budget, which is worth it for small pools, where each backend carries a large share
    and sampling noise would be most visible.

Least latency: Peak EWMA (``set_latency``)
    Finagle's and Linkerd's ``peak_ewma``. Each slot keeps an RTT estimate: a sample above the
    estimate (decayed to now) replaces it, a lower one blends in with weight
    ``1 - exp(-elapsed / decay)``, ``elapsed`` being the time since the slot's last sample; between
    samples the estimate decays towards 0 by ``exp(-elapsed / decay)``, so a slot that stopped
    getting traffic for being slow is tried again in time. A slot's cost is
    ``estimate * (in_flight + 1) / effective_weight``; before its first sample it is 0 while
    nothing is in flight on it (a newcomer is tried at once) and ``penalty * (in_flight + 1) /
    effective_weight`` once something is (one request at a time until it has answered). The
    choice is power of two choices at every pool size: two distinct candidates drawn by effective
    weight as above (so weights, slow start and drain still shape it), the lower cost wins, the
    first draw on a tie; after ``P2C_MAX_DRAWS`` draws without an eligible candidate, an O(n)
    scan for the lowest cost decides. The arithmetic is IEEE double, the same operations in the
    same order as the twin's (built with ``-ffp-contract=off``, so no fused multiply-add), and
    ``exp`` is the C library's in both.

Shared counts (worker processes)
    ``attach(slot, buffer, total_index, own_index)`` makes the slot's choices read a counter
    in a shared buffer (``lb.shm``: one int64 cell per service and backend, counted by every
    worker) instead of this picker's own count. From then on ``pick`` and ``release`` also add
    to that cell with atomic instructions and mirror this picker's own count into the
    worker's column cell (``own_index``, read by the supervisor to undo a crashed worker's
    counts). ``in_flight`` stays this picker's own count, which is what a service needs to know
    when a retired backend's last request is done; ``total_in_flight`` reads the shared one.
    Unattached slots, and every slot while none is attached, take the private-array path of
    before, at the same speed. The round-robin tie-break state stays per picker: ties are
    broken per worker, the counts compared are global.

    ``attach_sum(buffer, total_index, own_index)`` does the same for the sum over every slot
    (``total_in_flight_sum``; ``in_flight_sum`` is this picker's own): a bounded
    consistent-hash walk (``lb._hashring``) compares a slot's count with that sum. Every
    request of the picker counts there, attached slot or not.

The C interface
    ``lb/_picker.pxd`` declares the fields and C methods, so that ``lb._hashring`` reads the
    counts through ``flight(slot)`` and ``flight_sum()``, inline functions over these fields.
"""

from libc.math cimport exp, floor
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memset

import heapq
from operator import index as _index

cdef extern from "lb_atomic.h":
    void lb_store(int64_t *p, int64_t v) noexcept nogil
    int64_t lb_add(int64_t *p, int64_t delta) noexcept nogil

cdef extern from *:
    """
    #include <stdint.h>
    /* splitmix64 (Steele, Lea & Flood 2014); the twin repeats it with 64-bit masks. */
    static inline uint64_t lb_splitmix64(uint64_t *state) {
        uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        return z ^ (z >> 31);
    }
    """
    uint64_t lb_splitmix64(uint64_t *state) noexcept nogil

cdef enum:
    _FULL_PERMILLE = 1000
    _MIN_PERMILLE = 100
    _THRESHOLD = 128
    _MAX_DRAWS = 8
    _INITIAL_CAPACITY = 8

P2C_THRESHOLD = _THRESHOLD
P2C_MAX_DRAWS = _MAX_DRAWS
# Bounds weight * 1000 * in_flight well inside int64, so C and Python never disagree on overflow.
MAX_WEIGHT = 1_000_000
# Samples are clamped to 0..MAX_RTT seconds: an infinite one would turn the decay into NaN.
cdef double _MAX_RTT = 1e6
MAX_RTT = _MAX_RTT


cdef inline int64_t _ramp_permille(double elapsed, double window) noexcept nogil:
    """Permille of the weight after ``elapsed`` seconds of a ``window``; -1 once it is over."""
    cdef double q
    if elapsed >= window:
        return -1
    q = 1000.0 * elapsed / window
    # "not >=" also catches NaN, which must never reach the integer cast.
    if not q >= 100.0:
        return _MIN_PERMILLE
    return <int64_t>floor(q)


cdef void *_resize(void *ptr, size_t size) except NULL:
    cdef void *grown = realloc(ptr, size)
    if grown == NULL:
        raise MemoryError()
    return grown


cdef class Picker:
    """Least-connections or least-latency picker over integer slots; see the module docstring."""

    def __cinit__(self, *args, **kwargs):
        self._cap = 0
        self._free = []
        self._views = {}

    def __init__(self, object seed=1) -> None:
        self._rng = _index(seed) & 0xFFFFFFFFFFFFFFFF
        if self._cap == 0:
            self._grow(_INITIAL_CAPACITY)

    def __dealloc__(self):
        free(self._alive)
        free(self._elig)
        free(self._weight)
        free(self._permille)
        free(self._eff)
        free(self._elig_eff)
        free(self._current)
        free(self._in_flight)
        free(self._ss_start)
        free(self._ss_window)
        free(self._ramp_pos)
        free(self._ramp_slots)
        free(self._ties)
        free(self._tree)
        free(self._total_ptr)
        free(self._own_ptr)
        free(self._rtt)
        free(self._rtt_at)

    cdef int _grow(self, Py_ssize_t cap) except -1:
        # cap stays a power of two so the Fenwick descent needs no bounds check.
        cdef Py_ssize_t old = self._cap, i, j
        cdef size_t n = <size_t>cap
        self._alive = <uint8_t *>_resize(self._alive, n * sizeof(uint8_t))
        self._elig = <uint8_t *>_resize(self._elig, n * sizeof(uint8_t))
        self._weight = <int64_t *>_resize(self._weight, n * sizeof(int64_t))
        self._permille = <int64_t *>_resize(self._permille, n * sizeof(int64_t))
        self._eff = <int64_t *>_resize(self._eff, n * sizeof(int64_t))
        self._elig_eff = <int64_t *>_resize(self._elig_eff, n * sizeof(int64_t))
        self._current = <int64_t *>_resize(self._current, n * sizeof(int64_t))
        self._in_flight = <int64_t *>_resize(self._in_flight, n * sizeof(int64_t))
        self._ss_start = <double *>_resize(self._ss_start, n * sizeof(double))
        self._ss_window = <double *>_resize(self._ss_window, n * sizeof(double))
        self._ramp_pos = <Py_ssize_t *>_resize(self._ramp_pos, n * sizeof(Py_ssize_t))
        self._ramp_slots = <Py_ssize_t *>_resize(self._ramp_slots, n * sizeof(Py_ssize_t))
        self._ties = <Py_ssize_t *>_resize(self._ties, n * sizeof(Py_ssize_t))
        self._tree = <int64_t *>_resize(self._tree, (n + 1) * sizeof(int64_t))
        self._total_ptr = <int64_t **>_resize(self._total_ptr, n * sizeof(int64_t *))
        self._own_ptr = <int64_t **>_resize(self._own_ptr, n * sizeof(int64_t *))
        self._rtt = <double *>_resize(self._rtt, n * sizeof(double))
        self._rtt_at = <double *>_resize(self._rtt_at, n * sizeof(double))
        for i in range(old, cap):
            self._alive[i] = 0
            self._elig[i] = 0
            self._weight[i] = 0
            self._permille[i] = _FULL_PERMILLE
            self._eff[i] = 0
            self._elig_eff[i] = 0
            self._current[i] = 0
            self._in_flight[i] = 0
            self._ss_start[i] = 0.0
            self._ss_window[i] = 0.0
            self._ramp_pos[i] = -1
            self._total_ptr[i] = NULL
            self._own_ptr[i] = NULL
            self._rtt[i] = -1.0
            self._rtt_at[i] = 0.0
        memset(self._tree, 0, (n + 1) * sizeof(int64_t))
        for i in range(1, cap + 1):
            self._tree[i] += self._eff[i - 1]
            j = i + (i & -i)
            if j <= cap:
                self._tree[j] += self._tree[i]
        self._cap = cap
        return 0

    cdef inline int _check(self, Py_ssize_t slot) except -1:
        if slot < 0 or slot >= self._high or not self._alive[slot]:
            raise IndexError(f"no live backend in slot {slot}")
        return 0

    cdef inline void _set_eff(self, Py_ssize_t slot, int64_t eff) noexcept:
        cdef int64_t delta = eff - self._eff[slot]
        cdef Py_ssize_t i = slot + 1
        if delta == 0:
            return
        self._eff[slot] = eff
        if self._elig[slot]:
            self._elig_eff[slot] = eff
        self._total += delta
        while i <= self._cap:
            self._tree[i] += delta
            i += i & -i

    cdef inline void _set_permille(self, Py_ssize_t slot, int64_t permille) noexcept:
        self._permille[slot] = permille
        self._set_eff(slot, self._weight[slot] * permille)

    cdef void _ramp_on(self, Py_ssize_t slot, double now, double window) noexcept:
        if self._ramp_pos[slot] < 0:
            self._ramp_pos[slot] = self._ramping
            self._ramp_slots[self._ramping] = slot
            self._ramping += 1
        self._ss_start[slot] = now
        self._ss_window[slot] = window
        self._set_permille(slot, _MIN_PERMILLE)

    cdef void _ramp_off(self, Py_ssize_t slot) noexcept:
        cdef Py_ssize_t pos = self._ramp_pos[slot], last
        if pos < 0:
            return
        self._ramping -= 1
        last = self._ramp_slots[self._ramping]
        self._ramp_slots[pos] = last
        self._ramp_pos[last] = pos
        self._ramp_pos[slot] = -1
        self._set_permille(slot, _FULL_PERMILLE)

    cdef void _advance_ramps(self, double now) noexcept:
        # Backwards, so the swap-remove in _ramp_off only moves already visited entries.
        cdef Py_ssize_t k = self._ramping - 1, slot
        cdef int64_t permille
        while k >= 0:
            slot = self._ramp_slots[k]
            permille = _ramp_permille(now - self._ss_start[slot], self._ss_window[slot])
            if permille < 0:
                self._ramp_off(slot)
            elif permille != self._permille[slot]:
                self._set_permille(slot, permille)
            k -= 1

    cdef Py_ssize_t _scan(self, bint panic) noexcept:
        # One pass: the round-robin step is applied to each slot as it joins the tied set and
        # undone if a strictly better slot empties the set. Each slot joins and leaves at most
        # once, so this is still O(n), and an idle pool (all tied) needs no second pass. The
        # result equals the twin's two-pass version.
        cdef Py_ssize_t i, k, best = -1, ties = 0
        cdef int64_t eff, flight, lhs, rhs
        cdef int64_t best_eff = 0, best_flight = 0, total = 0, best_current = 0
        cdef int64_t *effs = self._eff if panic else self._elig_eff
        cdef int64_t *flights = self._in_flight
        cdef int64_t *current = self._current
        cdef Py_ssize_t *tied = self._ties
        cdef int64_t **totals = self._total_ptr
        cdef int64_t *shared
        cdef bint attached = self._attached != 0  # loop-invariant: the compiler unswitches
        for i in range(self._high):
            eff = effs[i]
            if eff <= 0:
                continue
            flight = flights[i]
            if attached:
                shared = totals[i]
                if shared != NULL:
                    flight = lb_load(shared)
            if ties:
                lhs = flight * best_eff
                rhs = best_flight * eff
                if lhs > rhs:
                    continue
                if lhs < rhs:
                    for k in range(ties):
                        current[tied[k]] -= effs[tied[k]]
                    ties = 0
            if ties == 0:
                best_flight = flight
                best_eff = eff
                total = 0
                best = i
                best_current = current[i] + eff
            current[i] += eff
            total += eff
            if current[i] > best_current:
                best = i
                best_current = current[i]
            tied[ties] = i
            ties += 1
        if best >= 0:
            current[best] -= total
        return best

    cdef inline Py_ssize_t _draw(self) noexcept:
        # Smallest slot whose cumulative effective weight exceeds a uniform r in [0, total).
        cdef uint64_t r = lb_splitmix64(&self._rng) % <uint64_t>self._total
        cdef Py_ssize_t pos = 0, step = self._cap >> 1, nxt
        cdef int64_t rest = <int64_t>r
        while step:
            nxt = pos + step
            if self._tree[nxt] <= rest:
                pos = nxt
                rest -= self._tree[nxt]
            step >>= 1
        return pos

    cdef Py_ssize_t _p2c(self, bint panic) noexcept:
        cdef Py_ssize_t first = -1, second = -1, slot
        cdef int draw
        if self._total == 0:
            return -1
        for draw in range(_MAX_DRAWS):
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
        if self.flight(second) * self._eff[first] < self.flight(first) * self._eff[second]:
            return second
        return first

    cdef inline double _estimate(self, Py_ssize_t slot, double now) noexcept:
        """The slot's RTT estimate decayed to ``now``; -1 before its first sample."""
        cdef double rtt = self._rtt[slot]
        cdef double dt = now - self._rtt_at[slot]
        if rtt > 0.0 and dt > 0.0:
            return rtt * exp(-dt / self._decay)
        return rtt

    cdef inline double _cost(self, Py_ssize_t slot, double now) noexcept:
        cdef int64_t flight = self.flight(slot)
        cdef double rtt = self._estimate(slot, now)
        if rtt < 0.0:
            if flight <= 0:
                return 0.0
            rtt = self._penalty
        return rtt * <double>(flight + 1) / <double>self._eff[slot]

    cdef Py_ssize_t _p2c_latency(self, bint panic, double now) noexcept:
        # Two distinct candidates: with a handful of backends, a slot drawn twice would be
        # taken without a comparison, whatever its cost.
        cdef Py_ssize_t first = -1, second = -1, slot
        cdef int draw
        if self._total == 0:
            return -1
        for draw in range(_MAX_DRAWS):
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
        if second >= 0 and self._cost(second, now) < self._cost(first, now):
            return second
        return first

    cdef Py_ssize_t _scan_latency(self, bint panic, double now) noexcept:
        cdef Py_ssize_t i, best = -1
        cdef double cost, best_cost = 0.0
        cdef int64_t *effs = self._eff if panic else self._elig_eff
        for i in range(self._high):
            if effs[i] <= 0:
                continue
            cost = self._cost(i, now)
            if best < 0 or cost < best_cost:
                best = i
                best_cost = cost
        return best

    cdef inline void _count(self, Py_ssize_t slot, int64_t delta) noexcept:
        self._in_flight[slot] += delta
        if self._attached and self._total_ptr[slot] != NULL:
            lb_add(self._total_ptr[slot], delta)
            lb_store(self._own_ptr[slot], self._in_flight[slot])
        self._count_sum(delta)

    cdef inline void _count_sum(self, int64_t delta) noexcept:
        self._own_sum += delta
        if self._sum_ptr != NULL:
            lb_add(self._sum_ptr, delta)
            lb_store(self._sum_own_ptr, self._own_sum)

    cdef void _detach(self, Py_ssize_t slot) noexcept:
        # Withdraw this picker's own requests from the shared count; other workers' stay.
        cdef int64_t *shared = self._total_ptr[slot]
        if shared == NULL:
            return
        lb_add(shared, -self._in_flight[slot])
        lb_store(self._own_ptr[slot], 0)
        self._total_ptr[slot] = NULL
        self._own_ptr[slot] = NULL
        self._attached -= 1
        del self._views[slot]

    cdef int64_t _check_weight(self, object weight) except -1:
        cdef object value = _index(weight)
        if not 0 <= value <= MAX_WEIGHT:
            raise ValueError(f"weight must be within 0..{MAX_WEIGHT}, got {value}")
        return value

    def add(self, object weight, double now, double slow_start=0.0) -> int:
        """Add a backend and return its slot (the lowest freed slot is reused first)."""
        cdef int64_t w = self._check_weight(weight)
        cdef Py_ssize_t slot
        if self._free:
            slot = heapq.heappop(self._free)
        else:
            if self._high == self._cap:
                self._grow(self._cap * 2)
            slot = self._high
            self._high += 1
        self._alive[slot] = 1
        self._elig[slot] = 1
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

    def remove(self, Py_ssize_t slot) -> None:
        """Free ``slot``; the caller has released all of its requests."""
        self._check(slot)
        self._detach(slot)
        self._ramp_off(slot)
        if self._elig[slot] and self._weight[slot] > 0:
            self._eligible -= 1
        self._set_eff(slot, 0)
        self._alive[slot] = 0
        self._elig[slot] = 0
        self._weight[slot] = 0
        self._current[slot] = 0
        self._count_sum(-self._in_flight[slot])  # none, when the caller kept its word
        self._in_flight[slot] = 0
        self._rtt[slot] = -1.0
        self._live -= 1
        heapq.heappush(self._free, slot)

    def set_weight(self, Py_ssize_t slot, object weight) -> None:
        """Change the weight; 0 drains the slot (never picked, releases still count)."""
        self._check(slot)
        cdef int64_t w = self._check_weight(weight)
        if self._elig[slot]:
            self._eligible += (w > 0) - (self._weight[slot] > 0)
        self._weight[slot] = w
        self._set_permille(slot, self._permille[slot])

    def set_eligible(
        self, Py_ssize_t slot, bint eligible, double now, double slow_start=0.0
    ) -> None:
        """Mark the slot up or down; coming back up restarts slow start when ``slow_start > 0``."""
        self._check(slot)
        if eligible == self._elig[slot]:
            return
        self._elig[slot] = eligible
        self._elig_eff[slot] = self._eff[slot] if eligible else 0
        if self._weight[slot] > 0:
            self._eligible += 1 if eligible else -1
        if eligible and slow_start > 0.0:
            self._ramp_on(slot, now, slow_start)

    def restart_slow_start(self, Py_ssize_t slot, double now, double slow_start) -> None:
        """Start a new ramp at ``now``; ``slow_start <= 0`` ends any ramp at once."""
        self._check(slot)
        if slow_start > 0.0:
            self._ramp_on(slot, now, slow_start)
        else:
            self._ramp_off(slot)

    def pick(self, double now, bint panic=False) -> int:
        """Choose a slot and count a request on it; -1 when there is no candidate."""
        cdef Py_ssize_t slot
        if self._ramping:
            self._advance_ramps(now)
        if not panic and self._eligible == 0:
            return -1
        if self._decay > 0.0:
            slot = self._p2c_latency(panic, now)
        elif self._live > _THRESHOLD:
            slot = self._p2c(panic)
        else:
            slot = self._scan(panic)
        if slot >= 0:
            self._count(slot, 1)
        return slot

    def release(self, Py_ssize_t slot) -> int:
        """Count a finished request; returns the slot's new in-flight count (never below 0)."""
        self._check(slot)
        if self._in_flight[slot] > 0:
            self._count(slot, -1)
        return self._in_flight[slot]

    def set_latency(self, double decay, double penalty) -> None:
        """Choose by Peak EWMA (module docstring) with time constant ``decay`` seconds, counting
        a busy slot without a sample as ``penalty``; ``decay <= 0``: least connections again.
        Switching it on starts every slot without a sample."""
        cdef Py_ssize_t i
        if not decay > 0.0:
            self._decay = 0.0
            return
        if self._decay == 0.0:
            for i in range(self._high):
                self._rtt[i] = -1.0
        self._decay = decay
        self._penalty = min(max(penalty, 0.0), _MAX_RTT)

    def observe(self, Py_ssize_t slot, double rtt, double now) -> None:
        """An RTT sample of ``rtt`` seconds at ``now`` (least latency; ignored otherwise)."""
        self._check(slot)
        cdef double prior = self._rtt[slot], w
        if self._decay == 0.0:
            return
        if not rtt >= 0.0:
            rtt = 0.0
        elif rtt > _MAX_RTT:
            rtt = _MAX_RTT
        if prior < 0.0:
            self._rtt[slot] = rtt
        else:
            w = now - self._rtt_at[slot]
            w = exp(-w / self._decay) if w > 0.0 else 1.0
            prior = prior * w
            self._rtt[slot] = rtt if rtt > prior else prior + rtt * (1.0 - w)
        self._rtt_at[slot] = now

    def latency(self, Py_ssize_t slot, double now) -> float | None:
        """The slot's RTT estimate in seconds at ``now``; None before its first sample, or
        when the picker is not choosing by latency."""
        self._check(slot)
        if self._decay == 0.0 or self._rtt[slot] < 0.0:
            return None
        return self._estimate(slot, now)

    def take(self, Py_ssize_t slot) -> None:
        """Count a request on a slot chosen elsewhere (consistent hashing, affinity), as
        ``pick`` counts its own choice; ``release`` ends it."""
        self._check(slot)
        self._count(slot, 1)

    def in_flight(self, Py_ssize_t slot) -> int:
        """This picker's own requests on the slot."""
        self._check(slot)
        return self._in_flight[slot]

    def total_in_flight(self, Py_ssize_t slot) -> int:
        """The count choices compare: every worker's when attached, else ``in_flight``."""
        self._check(slot)
        return self.flight(slot)

    def in_flight_sum(self) -> int:
        """This picker's own requests over every slot."""
        return self._own_sum

    def total_in_flight_sum(self) -> int:
        """Every slot's requests: every worker's when the sum is attached (``attach_sum``),
        else ``in_flight_sum``; what a bounded consistent-hash walk shares out."""
        return self.flight_sum()

    def attach(
        self, Py_ssize_t slot, object buffer, Py_ssize_t total_index, Py_ssize_t own_index
    ) -> None:
        """Compare the slot by the int64 word ``total_index`` of the writable ``buffer``
        (counted by every process attached to it) and mirror this picker's own count into
        word ``own_index``; this picker's requests already on the slot join the shared count.
        ``remove`` withdraws them again and detaches."""
        self._check(slot)
        cdef unsigned char[::1] raw = buffer
        cdef Py_ssize_t words = raw.shape[0] // 8
        if not (0 <= total_index < words and 0 <= own_index < words):
            raise IndexError(f"words {total_index}, {own_index} outside 0..{words - 1}")
        if (<size_t>&raw[0]) % 8:
            raise ValueError("shared counters need an 8-byte aligned buffer")
        self._detach(slot)
        self._views[slot] = raw
        self._total_ptr[slot] = <int64_t *>&raw[0] + total_index
        self._own_ptr[slot] = <int64_t *>&raw[0] + own_index
        self._attached += 1
        lb_add(self._total_ptr[slot], self._in_flight[slot])
        lb_store(self._own_ptr[slot], self._in_flight[slot])

    def attach_sum(self, object buffer, Py_ssize_t total_index, Py_ssize_t own_index) -> None:
        """Count every request of this picker, whatever its slot, in the int64 word
        ``total_index`` of ``buffer`` too (the service's sum over every worker), mirroring
        ``in_flight_sum`` into word ``own_index``; this picker's requests in flight join it."""
        cdef unsigned char[::1] raw = buffer
        cdef Py_ssize_t words = raw.shape[0] // 8
        if not (0 <= total_index < words and 0 <= own_index < words):
            raise IndexError(f"words {total_index}, {own_index} outside 0..{words - 1}")
        if (<size_t>&raw[0]) % 8:
            raise ValueError("shared counters need an 8-byte aligned buffer")
        self.detach_sum()
        self._sum_view = raw
        self._sum_ptr = <int64_t *>&raw[0] + total_index
        self._sum_own_ptr = <int64_t *>&raw[0] + own_index
        lb_add(self._sum_ptr, self._own_sum)
        lb_store(self._sum_own_ptr, self._own_sum)

    def detach_sum(self) -> None:
        """Withdraw this picker's requests from the shared sum and stop counting there."""
        if self._sum_ptr == NULL:
            return
        lb_add(self._sum_ptr, -self._own_sum)
        lb_store(self._sum_own_ptr, 0)
        self._sum_ptr = NULL
        self._sum_own_ptr = NULL
        self._sum_view = None

    def effective_weight(self, Py_ssize_t slot, double now) -> float:
        """``weight * slow-start factor`` at ``now``, without changing any state."""
        self._check(slot)
        cdef int64_t permille = _FULL_PERMILLE
        if self._ramp_pos[slot] >= 0:
            permille = _ramp_permille(now - self._ss_start[slot], self._ss_window[slot])
            if permille < 0:
                permille = _FULL_PERMILLE
        return <double>(self._weight[slot] * permille) / 1000.0

    def eligible_count(self) -> int:
        """Live, eligible slots with weight > 0."""
        return self._eligible

    def __len__(self) -> int:
        return self._live
