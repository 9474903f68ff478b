# Augmenting declarations for backend.py: compiled, Backend is an extension type, so the
# request path reads its pool, slot and breaker as C fields.
cimport cython

from lb.traffic.breaker cimport Breaker


@cython.final
cdef class Backend:
    cdef public object service
    cdef public str host
    cdef public object port
    cdef public tuple address
    cdef public str name
    cdef public object weight
    cdef public Py_ssize_t slot
    cdef public list idle
    cdef public Py_ssize_t open_conns
    cdef public object h2
    cdef public bint drained
    cdef public bint removed
    cdef public bint check_ok
    cdef public str check_reason
    cdef public object checker
    cdef public double ejected_until
    cdef public Breaker breaker
    cdef public long long requests
    cdef public long long failures
    cdef public long long selected
    cdef public object stats

    cpdef bint eligible(self, double now) except -1
