# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""Atomic int64 cells over a shared buffer (``lb._shm``), for ``lb.shm``.

The buffer is an mmap that every worker process maps; ``Cells`` takes its address once and
then reads and writes 64-bit words with the GCC atomics of ``lb_atomic.h``, so workers can
claim table rows and count without locks. Indexes are in words (8 bytes), bounds-checked.
"""

from libc.stdint cimport int64_t, uint64_t, uintptr_t

cdef extern from "lb_atomic.h":
    int64_t lb_load(int64_t *p) noexcept nogil
    void lb_store(int64_t *p, int64_t v) noexcept nogil
    int64_t lb_add(int64_t *p, int64_t delta) noexcept nogil
    int lb_cas(int64_t *p, int64_t expected, int64_t desired) noexcept nogil
    double lb_bits_to_double(int64_t bits) noexcept nogil
    uint64_t lb_mix64(uint64_t z) noexcept nogil
    int64_t lb_find_or_claim(
        int64_t *base, int64_t rows, int64_t words, int64_t key, int64_t probes
    ) noexcept nogil
    int lb_gcra(
        int64_t *tat_cell, double now, double increment, double tolerance, double slack,
        double *tat_out
    ) noexcept nogil


cdef class Cells:
    """The int64 words of a writable buffer, read and written atomically."""

    cdef object _view  # holds the buffer export: the mmap cannot be closed under us
    cdef int64_t *_base
    cdef Py_ssize_t _words

    def __cinit__(self, object buffer):
        cdef unsigned char[::1] raw = buffer
        if raw.shape[0] < 8 or (<uintptr_t>&raw[0]) % 8:
            raise ValueError("shared cells need an 8-byte aligned buffer of 8 bytes or more")
        self._view = raw
        self._base = <int64_t *>&raw[0]
        self._words = raw.shape[0] // 8

    cdef inline int64_t *_at(self, Py_ssize_t index) except NULL:
        if index < 0 or index >= self._words:
            raise IndexError(f"word {index} outside 0..{self._words - 1}")
        return self._base + index

    cdef int _span(self, Py_ssize_t start, int64_t rows, int64_t words) except -1:
        if rows <= 0 or words <= 0 or start < 0 or start + rows * words > self._words:
            raise IndexError("table outside the buffer")
        return 0

    def __len__(self) -> int:
        return self._words

    def load(self, Py_ssize_t index) -> int:
        return lb_load(self._at(index))

    def store(self, Py_ssize_t index, int64_t value) -> None:
        lb_store(self._at(index), value)

    def add(self, Py_ssize_t index, int64_t delta) -> int:
        """Add atomically; returns the new value."""
        return lb_add(self._at(index), delta) + delta

    def cas(self, Py_ssize_t index, int64_t expected, int64_t desired) -> bool:
        return lb_cas(self._at(index), expected, desired) != 0

    def find_or_claim(
        self, Py_ssize_t start, int64_t rows, int64_t words, int64_t key, int64_t probes
    ) -> int:
        """Row of ``key`` (claimed by CAS if new) in the table at word ``start``; -1 if full."""
        self._span(start, rows, words)
        if key == 0:
            raise ValueError("key 0 marks an empty row")
        return lb_find_or_claim(self._base + start, rows, words, key, probes)

    def gcra_check(
        self,
        Py_ssize_t start,
        int64_t rows,
        int64_t probes,
        uint64_t key_hash,
        uint64_t salt,
        Py_ssize_t overflow_index,
        double now,
        double increment,
        double tolerance,
        double slack,
    ) -> tuple:
        """One GCRA decision for ``key_hash`` of the limiter ``salt`` in the table of
        [key, TAT bits] rows at word ``start``: (allowed, TAT after it, overflowed). A key
        that finds no row is judged on the TAT in word ``overflow_index`` instead."""
        cdef int64_t key = <int64_t>(lb_mix64(key_hash ^ lb_mix64(salt)) >> 1)
        cdef int64_t row
        cdef int64_t *cell
        cdef double tat = 0.0
        cdef int allowed
        self._span(start, rows, 2)
        if key == 0:
            key = 1
        row = _gcra_row(self._base + start, rows, key, probes, now)
        cell = self._at(overflow_index) if row < 0 else self._base + start + 2 * row + 1
        allowed = lb_gcra(cell, now, increment, tolerance, slack, &tat)
        return allowed != 0, tat, row < 0


cdef int64_t _gcra_row(
    int64_t *base, int64_t rows, int64_t key, int64_t probes, double now
) noexcept nogil:
    """Row of ``key``; when its probe window holds only other keys, the first one whose TAT
    has passed is taken over (such a key is indistinguishable from one never seen). -1 when
    every probed key is still live."""
    cdef int64_t r, i, victim, victim_key
    cdef int attempt
    for attempt in range(2):  # a second look if another process took the same victim
        r = lb_find_or_claim(base, rows, 2, key, probes)
        if r >= 0:
            return r
        victim = -1
        victim_key = 0
        for i in range(min(probes, rows)):
            r = (<int64_t>(<uint64_t>key % <uint64_t>rows) + i) % rows
            if not lb_bits_to_double(lb_load(base + 2 * r + 1)) > now:
                victim = r
                victim_key = lb_load(base + 2 * r)
                break
        if victim < 0:
            return -1
        if lb_cas(base + 2 * victim, victim_key, key):
            return victim
    return -1


# -- counts per client (lb.shm.SharedCaps) ---------------------------------------------------------
# A row is [key << COUNT_BITS | count, own_0, ..., own_(workers-1)]: key and count in one word, so
# that taking over a row whose count fell to 0 and counting in it are one compare-and-swap each,
# and a row in use (count > 0) cannot change hands. `own_w` is what worker w holds of the count,
# withdrawn when the worker dies.
cdef enum:
    COUNT_BITS = 24
    COUNT_MASK = (1 << 24) - 1


cdef inline int64_t _cap_key(uint64_t key_hash) noexcept nogil:
    cdef int64_t key = <int64_t>(lb_mix64(key_hash) >> (COUNT_BITS + 1))
    return key if key != 0 else 1


cdef int64_t _cap_take(
    int64_t *row, int64_t key, int64_t limit, int64_t worker
) noexcept nogil:
    """One more in `row` when it holds `key` (or is free) and its count is below `limit`:
    1 counted, 0 at the limit, -1 the row holds another key now."""
    cdef int64_t word, count
    while True:
        word = lb_load(row)
        count = word & COUNT_MASK
        if count == 0:
            if lb_cas(row, word, (key << COUNT_BITS) | 1):
                break
            continue
        if (word >> COUNT_BITS) != key:
            return -1
        if count >= limit:
            return 0
        if lb_cas(row, word, word + 1):
            break
    lb_add(row + 1 + worker, 1)
    return 1


cdef class ClientCounts:
    """A table of counts per client key shared by all workers, in the segment's caps area."""

    cdef Cells _cells
    cdef int64_t *_base
    cdef int64_t _rows
    cdef int64_t _words
    cdef int64_t _probes
    cdef int64_t _worker

    def __cinit__(
        self, Cells cells, Py_ssize_t start, int64_t rows, int64_t workers, int64_t probes,
        int64_t worker,
    ):
        cells._span(start, rows, 1 + workers)
        if not 0 <= worker < workers:
            raise ValueError(f"worker {worker} outside 0..{workers - 1}")
        self._cells = cells
        self._base = cells._base + start
        self._rows = rows
        self._words = 1 + workers
        self._probes = min(probes, rows)
        self._worker = worker

    def enter(self, int64_t key_hash, int64_t limit) -> int:
        """Count one for the key when all workers together hold fewer than `limit`: its row
        (give it to `enter_row` and `leave`), -1 at the limit, -2 when no row is free."""
        cdef int64_t key = _cap_key(<uint64_t>key_hash), word, r, i
        cdef int64_t start = <int64_t>(<uint64_t>key % <uint64_t>self._rows)
        cdef int64_t got
        # The key's own row first, wherever it lies in the window: a free row ahead of it must
        # not start a second count for the same key.
        for i in range(self._probes):
            r = (start + i) % self._rows
            word = lb_load(self._base + r * self._words)
            if (word & COUNT_MASK) != 0 and (word >> COUNT_BITS) == key:
                got = _cap_take(self._base + r * self._words, key, limit, self._worker)
                if got >= 0:
                    return r if got else -1
        for i in range(self._probes):
            r = (start + i) % self._rows
            got = _cap_take(self._base + r * self._words, key, limit, self._worker)
            if got >= 0:
                return r if got else -1
        return -2

    def enter_row(self, int64_t row, int64_t limit) -> bool:
        """One more in a row this worker already holds a count of (so its key cannot have
        changed), when below `limit`."""
        cdef int64_t *cell = self._row(row)
        cdef int64_t word
        while True:
            word = lb_load(cell)
            if (word & COUNT_MASK) >= limit:
                return False
            if lb_cas(cell, word, word + 1):
                lb_add(cell + 1 + self._worker, 1)
                return True

    def leave(self, int64_t row) -> None:
        cdef int64_t *cell = self._row(row)
        lb_add(cell, -1)
        lb_add(cell + 1 + self._worker, -1)

    def count(self, int64_t row) -> int:
        return lb_load(self._row(row)) & COUNT_MASK

    def forget_worker(self, int64_t worker) -> int:
        """Withdraw what a dead worker held from every row; returns how much that was."""
        cdef int64_t r, own, gone = 0
        cdef int64_t *cell
        if not 0 <= worker < self._words - 1:
            raise ValueError(f"worker {worker} outside 0..{self._words - 2}")
        for r in range(self._rows):
            cell = self._base + r * self._words
            own = lb_load(cell + 1 + worker)
            if own:
                lb_add(cell, -own)
                lb_store(cell + 1 + worker, 0)
                gone += own
        return gone

    cdef inline int64_t *_row(self, int64_t row) except NULL:
        if row < 0 or row >= self._rows:
            raise IndexError(f"row {row} outside 0..{self._rows - 1}")
        return self._base + row * self._words
