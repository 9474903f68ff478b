# Augmenting declarations for ratelimit.py: compiled, the GCRA limiters are extension types
# and `allow`, the request path's check, computes in C doubles. The worker-shared and Redis
# limiters subclass GcraLimit in Python; LocalLimiter is not final either, as Cython refuses a
# final class that overrides a base method (`allow`). The figures set from the configuration
# (rate, period, burst, limit) stay Python numbers, as given.
cimport cython


@cython.final
cdef class Tat:
    cdef public double at


cdef class GcraLimit:
    cdef public object rate
    cdef public object period
    cdef public object burst
    cdef public double interval
    cdef public object limit
    cdef public double tolerance
    cdef public double _slack
    cdef public object _headers

    cpdef bint allow(self, key, double now) except -1


cdef class LocalLimiter(GcraLimit):
    cdef public Py_ssize_t max_keys
    cdef public object _tats  # an OrderedDict
    cdef public Tat _last
    cdef public double _overflow_tat
    cdef public long long overflowed

    @cython.locals(held=Tat, overflow=bint, interval=double, tolerance=double, wait=double)
    cpdef check(self, key, double now, cost=*)
    @cython.locals(held=Tat, tat=double, new_tat=double)
    cpdef bint allow(self, key, double now) except -1
    @cython.locals(held=Tat, full=bint)
    cpdef bint _room_for_newcomer(self, double now) except -1
