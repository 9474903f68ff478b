# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""Consistent-hash tables, compiled (``lb._hashring``): a Ketama ring or a Maglev table.

``lb.balancer.hashring_py`` is the pure-Python twin: same tables, same walk, same arithmetic,
so for the same calls both return the same slots. Any change here must be made there too;
``tests/test_hashring_equivalence.py`` checks it.

Members
    ``rebuild(members, size)`` takes ``(slot, weight, name)`` triples (slot: the picker's slot
    of the backend; name: "host:port" as bytes) and fills the table from the names alone,
    taken in sorted order, so every worker process builds the same table whatever its slots.
    Weight 0 members get no entries. Per-slot state (eligibility, ramp) survives a rebuild:
    it is the service's, not the table's.

Ring (``RING``, Ketama style)
    Member m gets ``max(1, round(size * n * w_m / W))`` points (``size`` = virtual nodes of an
    average-weight member), scaled down if the total would pass ``MAX_RING_POINTS`` (Envoy's
    maximum_ring_size). Point j of a member hashes ``name + b"_" + str(j)`` with XXH64 (seed
    0), as Envoy's ring_hash names its points. The points are sorted (ties by member order);
    a key's place is the first point >= XXH64(key), wrapping to the first, found through an
    index of the points by the hash's top bits (about four points per bucket).

Maglev (``MAGLEV``)
    Envoy's weighted Maglev: ``size`` is the table length M (a prime); member m has
    ``offset = XXH64(name, 0) % M`` and ``skip = XXH64(name, 1) % (M - 1) + 1`` and takes
    entries of its permutation ``(offset + skip * next) % M`` in rounds, a member of weight w
    taking a turn in round i when ``i * w >= target`` (then ``target += max weight``). A key's
    place is ``XXH64(key) % M``.

The walk
    From its place a key walks the entries forward (wrapping) to the first that is eligible
    (``set_eligible``; every member counts in ``panic``), whose ramp admits it, and, with a
    bound, whose in-flight count is below its share: ``load * W < c * (total + 1) * w`` in
    doubles (W: the eligible members' weight, total: every slot's in-flight), which is
    Google's consistent hashing with bounded loads, weighted. ``spilled`` then says whether
    the choice passed over an eligible member for its load. Some member is always below its
    share when c >= 1, so the walk ends within one lap.

In-flight counts
    A bounded table keeps no counts of its own: it reads the service's picker (``lb._picker``,
    cimported through ``lb/_picker.pxd``), ``flight(slot)`` for a member's load and
    ``flight_sum()`` for the total. Under ``lb run --workers N`` those are the shared counts
    of every worker (``Picker.attach``, ``Picker.attach_sum``), so the bound holds for the
    whole tree: with equal weights, a request goes to a backend only while its load is below
    ``c * (total + 1) / n``, so with nothing released a backend holds at most
    ``ceil(c * N / n)`` of N requests (plus one per other worker deciding at the same instant:
    reading a count and adding to it are two steps). Members must be live slots of the picker.

Slow start
    A ramping slot (``set_permille`` below 1000) admits the keys whose second hash
    ``splitmix64(h) % 1000`` is below its permille: which keys move to a newcomer is fixed
    by the key, and their share grows with the ramp. Ramps are asked of the first
    ``RAMP_PROBES`` eligible entries only; past them the first eligible one is taken, so a
    table where almost everything ramps still answers in a bounded walk.
"""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t
from libc.stdlib cimport free, malloc, qsort, realloc

from lb._picker cimport Picker

from operator import index as _index

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    /* XXH64 (Yann Collet's xxHash, 64-bit), as the xxhash package computes it. */
    #define LB_P1 11400714785074694791ULL
    #define LB_P2 14029467366897019727ULL
    #define LB_P3 1609587929392839161ULL
    #define LB_P4 9650029242287828579ULL
    #define LB_P5 2870177450012600261ULL
    static inline uint64_t lb_rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
    static inline uint64_t lb_read64(const unsigned char *p) {
        uint64_t v; memcpy(&v, p, 8); return v;
    }
    static inline uint32_t lb_read32(const unsigned char *p) {
        uint32_t v; memcpy(&v, p, 4); return v;
    }
    static inline uint64_t lb_round(uint64_t acc, uint64_t input) {
        acc += input * LB_P2; acc = lb_rotl(acc, 31); return acc * LB_P1;
    }
    static inline uint64_t lb_merge(uint64_t acc, uint64_t val) {
        acc ^= lb_round(0, val); return acc * LB_P1 + LB_P4;
    }
    static uint64_t lb_xxh64(const unsigned char *p, size_t len, uint64_t seed) {
        const unsigned char *end = p + len;
        uint64_t h;
        if (len >= 32) {
            uint64_t v1 = seed + LB_P1 + LB_P2, v2 = seed + LB_P2, v3 = seed, v4 = seed - LB_P1;
            do {
                v1 = lb_round(v1, lb_read64(p)); v2 = lb_round(v2, lb_read64(p + 8));
                v3 = lb_round(v3, lb_read64(p + 16)); v4 = lb_round(v4, lb_read64(p + 24));
                p += 32;
            } while (p + 32 <= end);
            h = lb_rotl(v1, 1) + lb_rotl(v2, 7) + lb_rotl(v3, 12) + lb_rotl(v4, 18);
            h = lb_merge(h, v1); h = lb_merge(h, v2); h = lb_merge(h, v3); h = lb_merge(h, v4);
        } else {
            h = seed + LB_P5;
        }
        h += (uint64_t)len;
        while (p + 8 <= end) {
            h ^= lb_round(0, lb_read64(p)); h = lb_rotl(h, 27) * LB_P1 + LB_P4; p += 8;
        }
        if (p + 4 <= end) {
            h ^= (uint64_t)lb_read32(p) * LB_P1; h = lb_rotl(h, 23) * LB_P2 + LB_P3; p += 4;
        }
        while (p < end) { h ^= (*p) * LB_P5; h = lb_rotl(h, 11) * LB_P1; p++; }
        h ^= h >> 33; h *= LB_P2; h ^= h >> 29; h *= LB_P3; h ^= h >> 32;
        return h;
    }
    /* splitmix64's finalizer: the key's second, independent hash (slow-start admission). */
    static inline uint64_t lb_splitmix64_mix(uint64_t z) {
        z += 0x9E3779B97F4A7C15ULL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        return z ^ (z >> 31);
    }
    typedef struct { uint64_t hash; int32_t member; } lb_point;
    static int lb_point_cmp(const void *a, const void *b) {
        const lb_point *x = (const lb_point *)a, *y = (const lb_point *)b;
        if (x->hash != y->hash) return x->hash < y->hash ? -1 : 1;
        return (x->member > y->member) - (x->member < y->member);
    }
    """
    uint64_t lb_xxh64(const unsigned char *p, size_t len, uint64_t seed) noexcept nogil
    uint64_t lb_splitmix64_mix(uint64_t z) noexcept nogil
    ctypedef struct lb_point:
        uint64_t hash
        int32_t member
    int lb_point_cmp(const void *a, const void *b) noexcept nogil

cdef enum:
    _RING = 0
    _MAGLEV = 1
    _FULL_PERMILLE = 1000
    _RAMP_PROBES = 16

RING = _RING
MAGLEV = _MAGLEV
RAMP_PROBES = _RAMP_PROBES
MAX_RING_POINTS = 8_388_608  # Envoy's maximum_ring_size
MAX_TABLE_SIZE = 5_000_011  # Envoy's largest Maglev table


def xxh64(bytes data, uint64_t seed=0) -> int:
    """XXH64 of ``data``: what keys and member names hash to."""
    return lb_xxh64(<const unsigned char *>data, len(data), seed)


cdef void *_resize(void *ptr, size_t size) except NULL:
    cdef void *grown = realloc(ptr, size if size else 1)
    if grown == NULL:
        raise MemoryError()
    return grown


def ring_points(list weights, Py_ssize_t vnodes) -> list:
    """Points per member of a ring: weights in member order, ``vnodes`` per average weight."""
    cdef Py_ssize_t n = len(weights)
    cdef object total = sum(weights)
    counts = [max(1, (2 * vnodes * n * w + total) // (2 * total)) for w in weights]
    cdef object points = sum(counts)
    if points > MAX_RING_POINTS:
        counts = [max(1, c * MAX_RING_POINTS // points) for c in counts]
    return counts


cdef class HashTable:
    """A ring or a Maglev table over picker slots; see the module docstring."""

    cdef readonly int kind
    cdef readonly double bound  # c of the bounded loads; 0: unbounded
    cdef public bint spilled  # the last pick passed over an eligible member for its load
    cdef Py_ssize_t _n  # entries
    cdef uint64_t *_points  # ring: sorted point hashes, one per entry
    cdef int32_t *_buckets  # ring: index of the first point of each top-bits bucket, and n
    cdef int _shift  # ring: a hash's bucket is h >> _shift
    cdef int32_t *_entries  # the slot of each entry
    cdef Py_ssize_t _cap  # slots the per-slot arrays hold
    cdef uint8_t *_elig
    cdef int64_t *_weight  # a member's weight; 0: not a member
    cdef int64_t *_permille
    cdef Py_ssize_t _ramping
    cdef Picker _picker  # whose in-flight counts the bound compares; None: unbounded
    cdef int64_t _elig_weight
    cdef int64_t _all_weight

    def __cinit__(self, *args, **kwargs):
        self._cap = 0
        self._n = 0

    def __init__(self, int kind, double bound=0.0, Picker picker=None) -> None:
        if kind != _RING and kind != _MAGLEV:
            raise ValueError(f"kind must be RING or MAGLEV, got {kind}")
        if bound != 0.0 and not bound >= 1.0:
            raise ValueError(f"a load bound is at least 1, got {bound}")
        if bound != 0.0 and picker is None:
            raise ValueError("a load bound compares the in-flight counts of a picker: pass it")
        self.kind = kind
        self.bound = bound
        self._picker = picker if bound != 0.0 else None
        self.spilled = False
        self._grow(8)

    def __dealloc__(self):
        free(self._points)
        free(self._buckets)
        free(self._entries)
        free(self._elig)
        free(self._weight)
        free(self._permille)

    cdef int _grow(self, Py_ssize_t cap) except -1:
        cdef Py_ssize_t i, old = self._cap
        cdef size_t n = <size_t>cap
        if cap <= old:
            return 0
        self._elig = <uint8_t *>_resize(self._elig, n * sizeof(uint8_t))
        self._weight = <int64_t *>_resize(self._weight, n * sizeof(int64_t))
        self._permille = <int64_t *>_resize(self._permille, n * sizeof(int64_t))
        for i in range(old, cap):
            self._elig[i] = 0
            self._weight[i] = 0
            self._permille[i] = _FULL_PERMILLE
        self._cap = cap
        return 0

    cdef inline int _check(self, Py_ssize_t slot) except -1:
        if slot < 0:
            raise IndexError(f"no slot {slot}")
        if slot >= self._cap:
            self._grow(max(slot + 1, 2 * self._cap))
        return 0

    # -- building ---------------------------------------------------------------------------------
    def rebuild(self, list members, Py_ssize_t size) -> None:
        """Fill the table from ``(slot, weight, name)`` members; ``size``: virtual nodes per
        average member (ring) or the table length, a prime (Maglev)."""
        cdef Py_ssize_t i
        cdef list ordered = sorted(
            [(bytes(name), _index(slot), _index(weight)) for slot, weight, name in members
             if weight > 0]
        )
        cdef list slots = [m[1] for m in ordered]
        cdef list weights = [m[2] for m in ordered]
        if len(set(slots)) != len(slots):
            raise ValueError("a slot appears twice among the members")
        if size < 1:
            raise ValueError(f"size must be positive, got {size}")
        if self._picker is not None:
            for i in range(len(slots)):
                self._check_live(slots[i])
        for i in range(self._cap):
            self._weight[i] = 0
        for i in range(len(slots)):
            self._check(slots[i])
            self._weight[<Py_ssize_t>slots[i]] = weights[i]
        free(self._points)
        free(self._buckets)
        free(self._entries)
        self._points = NULL
        self._buckets = NULL
        self._entries = NULL
        self._n = 0
        if ordered:
            if self.kind == _RING:
                self._build_ring([m[0] for m in ordered], slots, weights, size)
            else:
                if size > MAX_TABLE_SIZE:
                    raise ValueError(f"a Maglev table has at most {MAX_TABLE_SIZE} entries")
                self._build_maglev([m[0] for m in ordered], slots, weights, size)
        self._sums()

    cdef int _check_live(self, Py_ssize_t slot) except -1:
        # The walk reads the picker's arrays at the slot: it must be one of the picker's.
        cdef Picker picker = self._picker
        if not (0 <= slot < picker._high and picker._alive[slot]):
            raise ValueError(f"slot {slot} is not a live slot of the picker")
        return 0

    cdef int _build_ring(self, list names, list slots, list weights, Py_ssize_t vnodes) except -1:
        cdef list counts = ring_points(weights, vnodes)
        cdef Py_ssize_t total = sum(counts), m, j, k = 0
        cdef lb_point *points = <lb_point *>malloc(total * sizeof(lb_point))
        cdef bytes name, label
        if points == NULL:
            raise MemoryError()
        try:
            self._points = <uint64_t *>_resize(NULL, total * sizeof(uint64_t))
            self._entries = <int32_t *>_resize(NULL, total * sizeof(int32_t))
            for m in range(len(names)):
                name = names[m]
                for j in range(<Py_ssize_t>counts[m]):
                    label = name + b"_" + str(j).encode()
                    points[k].hash = lb_xxh64(<const unsigned char *>label, len(label), 0)
                    points[k].member = <int32_t>m
                    k += 1
            qsort(points, total, sizeof(lb_point), lb_point_cmp)
            for k in range(total):
                self._points[k] = points[k].hash
                self._entries[k] = <int32_t>slots[points[k].member]
            self._n = total
            self._index_buckets()
        finally:
            free(points)
        return 0

    cdef int _index_buckets(self) except -1:
        # About four points per bucket: a lookup reads one bucket and searches a cache line or
        # two of points instead of a binary search's dozen scattered reads over the whole ring.
        cdef int bits = 1
        cdef Py_ssize_t b, k = 0, buckets
        while bits < 24 and (<Py_ssize_t>1 << bits) * 4 < self._n:
            bits += 1
        buckets = <Py_ssize_t>1 << bits
        self._shift = 64 - bits
        self._buckets = <int32_t *>_resize(NULL, (buckets + 1) * sizeof(int32_t))
        for b in range(buckets + 1):
            while k < self._n and <Py_ssize_t>(self._points[k] >> self._shift) < b:
                k += 1
            self._buckets[b] = <int32_t>k
        return 0

    cdef int _build_maglev(self, list names, list slots, list weights, Py_ssize_t size) except -1:
        cdef Py_ssize_t n = len(names), m, filled = 0
        cdef uint64_t M = <uint64_t>size, c
        cdef int64_t iteration = 0, top = max(weights)
        cdef uint64_t *offset = <uint64_t *>malloc(n * sizeof(uint64_t))
        cdef uint64_t *skip = <uint64_t *>malloc(n * sizeof(uint64_t))
        cdef uint64_t *nxt = <uint64_t *>malloc(n * sizeof(uint64_t))
        cdef int64_t *target = <int64_t *>malloc(n * sizeof(int64_t))
        cdef int64_t *weight = <int64_t *>malloc(n * sizeof(int64_t))
        cdef int32_t *table
        cdef bytes name
        try:
            if offset == NULL or skip == NULL or nxt == NULL or target == NULL or weight == NULL:
                raise MemoryError()
            if size < 2:
                raise ValueError("a Maglev table needs at least 2 entries")
            self._entries = <int32_t *>_resize(NULL, size * sizeof(int32_t))
            table = self._entries
            for m in range(size):
                table[m] = -1
            for m in range(n):
                name = names[m]
                offset[m] = lb_xxh64(<const unsigned char *>name, len(name), 0) % M
                skip[m] = lb_xxh64(<const unsigned char *>name, len(name), 1) % (M - 1) + 1
                nxt[m] = 0
                target[m] = 0
                weight[m] = weights[m]
            while filled < size:
                for m in range(n):
                    if filled >= size:
                        break
                    if iteration * weight[m] < target[m]:
                        continue
                    target[m] += top
                    c = (offset[m] + skip[m] * nxt[m]) % M
                    while table[c] >= 0:
                        nxt[m] += 1
                        c = (offset[m] + skip[m] * nxt[m]) % M
                    table[c] = <int32_t>slots[m]
                    nxt[m] += 1
                    filled += 1
                iteration += 1
            self._n = size
        finally:
            free(offset)
            free(skip)
            free(nxt)
            free(target)
            free(weight)
        return 0

    cdef void _sums(self) noexcept:
        cdef Py_ssize_t i
        self._elig_weight = 0
        self._all_weight = 0
        for i in range(self._cap):
            self._all_weight += self._weight[i]
            if self._elig[i]:
                self._elig_weight += self._weight[i]

    # -- per-slot state ---------------------------------------------------------------------------
    def set_eligible(self, Py_ssize_t slot, bint eligible) -> None:
        self._check(slot)
        if self._elig[slot] == eligible:
            return
        self._elig[slot] = eligible
        if eligible:
            self._elig_weight += self._weight[slot]
        else:
            self._elig_weight -= self._weight[slot]

    def eligible(self, Py_ssize_t slot) -> bool:
        self._check(slot)
        return self._elig[slot] != 0

    def set_permille(self, Py_ssize_t slot, Py_ssize_t permille) -> None:
        """The share of its keys a ramping slot admits, in permille (1000: all, no ramp)."""
        self._check(slot)
        permille = min(max(permille, 0), _FULL_PERMILLE)
        if (self._permille[slot] < _FULL_PERMILLE) != (permille < _FULL_PERMILLE):
            self._ramping += 1 if permille < _FULL_PERMILLE else -1
        self._permille[slot] = permille

    def entries(self) -> list:
        """The slot of every entry, in table order (tests compare tables by it)."""
        return [self._entries[i] for i in range(self._n)]

    def __len__(self) -> int:
        return self._n

    # -- the request path -------------------------------------------------------------------------
    def pick(self, bytes key, bint panic=False) -> int:
        """The slot for ``key``, or -1 when no member is eligible; see the module docstring."""
        return self._pick(lb_xxh64(<const unsigned char *>key, len(key), 0), panic)

    def pick_hash(self, uint64_t h, bint panic=False) -> int:
        """``pick`` for a key already hashed with XXH64."""
        return self._pick(h, panic)

    cdef Py_ssize_t _start(self, uint64_t h) noexcept:
        cdef Py_ssize_t lo, hi, mid, b
        if self.kind == _MAGLEV:
            return <Py_ssize_t>(h % <uint64_t>self._n)
        b = <Py_ssize_t>(h >> self._shift)
        lo = self._buckets[b]
        hi = self._buckets[b + 1]
        while lo < hi:  # the first point >= h: within the bucket, or the next bucket's first
            mid = (lo + hi) >> 1
            if self._points[mid] < h:
                lo = mid + 1
            else:
                hi = mid
        return 0 if lo == self._n else lo

    cdef Py_ssize_t _pick(self, uint64_t h, bint panic) noexcept:
        cdef Py_ssize_t n = self._n, i, step, s, first = -1, probes = 0
        cdef int64_t weight_sum = self._all_weight if panic else self._elig_weight
        cdef double limit = 0.0
        cdef bint bounded = self.bound > 0.0
        cdef int64_t admit = 0
        cdef int32_t *entries = self._entries
        cdef uint8_t *elig = self._elig
        cdef Picker picker = self._picker
        self.spilled = False
        if n == 0 or weight_sum <= 0:
            return -1
        if bounded:
            limit = self.bound * <double>(picker.flight_sum() + 1)
        if self._ramping:
            admit = <int64_t>(lb_splitmix64_mix(h) % 1000)
        i = self._start(h)
        for step in range(n):
            s = entries[i]
            i += 1
            if i == n:
                i = 0
            if not (panic or elig[s]):
                continue
            if self._ramping and probes < _RAMP_PROBES:
                probes += 1
                if admit >= self._permille[s]:
                    continue
            if not bounded:
                return s
            if first < 0:
                first = s
            if <double>picker.flight(s) * <double>weight_sum < limit * <double>self._weight[s]:
                self.spilled = s != first
                return s
        if first < 0:  # every eligible entry ramped the key away: the first eligible one
            i = self._start(h)
            for step in range(n):
                s = entries[i]
                i += 1
                if i == n:
                    i = 0
                if panic or elig[s]:
                    return s
        return first
