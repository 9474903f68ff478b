# Augmenting declarations for metrics.py: compiled, a policy's decision counters are an
# extension type the chain calls in C.
cimport cython


@cython.final
cdef class Decisions:
    cdef public object _counts  # a defaultdict: a dict field takes exact dicts only
    cdef public str policy
    cdef public str route
    cdef public tuple _allowed

    cpdef allowed(self)
    cpdef refused(self, str result)
