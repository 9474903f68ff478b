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
