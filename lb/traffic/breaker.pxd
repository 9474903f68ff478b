# Augmenting declarations for breaker.py: compiled, the breaker and the caps are extension
# types, so the gate and the traffic observer read and count their fields as C values.
# Not final: passive.BackendBreaker subclasses Breaker (in Python) and overrides `allow`.
cimport cython


cdef class Breaker:
    cdef public object settings
    cdef public object on_transition
    cdef public str state
    cdef public long long opened_times
    cdef public dict transitions
    cdef public double open_until
    cdef public double _open_for
    cdef public long long _reopenings
    cdef public double _per_second
    cdef public list _totals
    cdef public list _fails
    cdef public long long _tick
    cdef public Py_ssize_t _slot
    cdef public long long _newest_total
    cdef public long long _newest_failed
    cdef public long long _total
    cdef public long long _failed
    cdef public long long _consecutive
    cdef public long long _probes
    cdef public long long _probe_successes
    cdef public double probe_deadline

    cpdef bint allow(self, double now) except -1
    cpdef bint half_open(self, double now) except -1
    @cython.locals(tick=cython.longlong)
    cpdef record(self, bint ok, double now)
    @cython.locals(totals=list, fails=list, n=Py_ssize_t, step=cython.longlong, slot=Py_ssize_t)
    cpdef _advance(self, long long tick)
    cpdef _open(self, double now)
    cpdef _move(self, str new)


@cython.final
cdef class Caps:
    cdef public long long max_connections
    cdef public long long max_pending
    cdef public long long max_requests
    cdef public long long max_retries
    cdef public long long connections
    cdef public long long pending
    cdef public long long requests
    cdef public long long retries
    cdef public dict overflows

    cpdef bint try_acquire_retry(self) except -1
    cpdef release_retry(self)
