# Augmenting declarations for service.py: compiled, Service is an extension type, so the
# request path reads its picker, slots and timeouts as C fields.
cimport cython

from lb.balancer.backend cimport Backend


@cython.final
cdef class Service:
    cdef public str name
    cdef public object config
    cdef public double head_timeout
    cdef public double idle_timeout
    cdef public Py_ssize_t max_idle
    cdef public bint h2
    cdef public bint least_latency
    cdef public double penalty
    cdef public object clock
    cdef public object picker
    cdef public dict backends
    cdef public list by_slot
    cdef public bint panic
    cdef public object gate
    cdef public object caps
    cdef public object breaker
    cdef public object outlier
    cdef public object discovery
    cdef public Service fallback
    cdef public list on_change
    cdef public object balance

    @cython.locals(b=Backend)
    cpdef Backend admit(self, Py_ssize_t slot, double now)
    cpdef release(self, Backend b)
    cpdef answered(self, Backend b, long status, double sent)
