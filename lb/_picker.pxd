# The C interface of lb._picker (ext/picker.pyx): its fields and C methods, declared here so
# that lb._hashring can cimport the type and read the in-flight counts a bounded walk compares
# with the two inline methods below, at C speed (no Python call per entry walked).
from libc.stdint cimport int64_t, uint8_t, uint64_t


cdef extern from "lb_atomic.h":
    int64_t lb_load(int64_t *p) noexcept nogil


cdef class Picker:
    cdef Py_ssize_t _cap
    cdef Py_ssize_t _high
    cdef Py_ssize_t _live
    cdef Py_ssize_t _eligible
    cdef Py_ssize_t _ramping
    cdef int64_t _total
    cdef uint64_t _rng
    cdef list _free
    cdef uint8_t *_alive
    cdef uint8_t *_elig
    cdef int64_t *_weight
    cdef int64_t *_permille
    cdef int64_t *_eff
    cdef int64_t *_elig_eff  # _eff where eligible, else 0: the non-panic scan reads one array
    cdef int64_t *_current
    cdef int64_t *_in_flight
    cdef double *_ss_start
    cdef double *_ss_window
    cdef Py_ssize_t *_ramp_pos
    cdef Py_ssize_t *_ramp_slots
    cdef Py_ssize_t *_ties
    cdef int64_t *_tree
    cdef int64_t **_total_ptr  # shared cell counted by all workers; NULL: not attached
    cdef int64_t **_own_ptr  # this worker's column cell of the same row
    cdef Py_ssize_t _attached
    cdef dict _views  # slot -> buffer view held while its pointers are in use
    cdef int64_t _own_sum  # this picker's requests over every slot
    cdef int64_t *_sum_ptr  # shared cell: every worker's requests of the service; NULL: none
    cdef int64_t *_sum_own_ptr  # this worker's column cell of the sum's row
    cdef object _sum_view  # the buffer view held while _sum_ptr is in use
    cdef double _decay  # least_latency's time constant in seconds; 0: least connections
    cdef double _penalty  # the RTT a slot without a sample counts as while busy
    cdef double *_rtt  # RTT estimate in seconds as of _rtt_at; -1: no sample yet
    cdef double *_rtt_at

    cdef int _grow(self, Py_ssize_t cap) except -1
    cdef inline int _check(self, Py_ssize_t slot) except -1
    cdef inline void _set_eff(self, Py_ssize_t slot, int64_t eff) noexcept
    cdef inline void _set_permille(self, Py_ssize_t slot, int64_t permille) noexcept
    cdef void _ramp_on(self, Py_ssize_t slot, double now, double window) noexcept
    cdef void _ramp_off(self, Py_ssize_t slot) noexcept
    cdef void _advance_ramps(self, double now) noexcept
    cdef Py_ssize_t _scan(self, bint panic) noexcept
    cdef inline Py_ssize_t _draw(self) noexcept
    cdef Py_ssize_t _p2c(self, bint panic) noexcept
    cdef inline double _estimate(self, Py_ssize_t slot, double now) noexcept
    cdef inline double _cost(self, Py_ssize_t slot, double now) noexcept
    cdef Py_ssize_t _p2c_latency(self, bint panic, double now) noexcept
    cdef Py_ssize_t _scan_latency(self, bint panic, double now) noexcept
    cdef inline void _count(self, Py_ssize_t slot, int64_t delta) noexcept
    cdef inline void _count_sum(self, int64_t delta) noexcept
    cdef void _detach(self, Py_ssize_t slot) noexcept
    cdef int64_t _check_weight(self, object weight) except -1

    cdef inline int64_t flight(self, Py_ssize_t slot) noexcept:
        """The count choices compare: the shared one when attached, else this picker's."""
        cdef int64_t *shared
        if self._attached:
            shared = self._total_ptr[slot]
            if shared != NULL:
                return lb_load(shared)
        return self._in_flight[slot]

    cdef inline int64_t flight_sum(self) noexcept:
        """``flight`` summed over every slot: every worker's when the sum is attached."""
        if self._sum_ptr != NULL:
            return lb_load(self._sum_ptr)
        return self._own_sum
