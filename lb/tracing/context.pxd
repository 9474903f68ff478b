# Augmenting declarations for context.py: compiled, the trace context is an extension type
# and `begin` a typed call on every request head while tracing is on.
cimport cython
from libc.stdint cimport uint64_t

from lb.proxy.headers cimport RequestInfo, lower_name


@cython.final
@cython.freelist(64)
cdef class TraceContext:
    cdef public bytes header
    cdef public object parent_id
    cdef public bint sampled
    cdef public object tracestate


@cython.final
cdef class Propagator:
    cdef public uint64_t bound
    cdef public bint everything
    cdef public uint64_t state

    @cython.locals(z=uint64_t)
    cdef uint64_t _next(self)
    @cython.locals(
        buf=bytearray, low=uint64_t, sampled=bint, header=bytes,
    )
    cpdef begin(self, RequestInfo info)
    @cython.locals(parents=list, states=list, rest=list, item=tuple, header=bytes)
    cpdef _continue(self, RequestInfo info)


@cython.locals(i=Py_ssize_t)
cdef void _hex(bytearray buf, Py_ssize_t at, uint64_t value)

cdef bytes TRACEPARENT
cdef bytes TRACESTATE
cdef bytes _ZERO_TRACE
cdef bytes _ZERO_SPAN
cdef bytes _TEMPLATE
cdef bytes _DIGITS
cdef long _ONE
cdef uint64_t _M, _GOLDEN, _MIX1, _MIX2
