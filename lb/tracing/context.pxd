# Augmenting declarations for context.py: compiled, the trace context is an extension type
# and `begin` a typed call on every request head while tracing is on.
cimport cython

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
    cdef object _new_trace
    cdef object _new_span

    @cython.locals(header=bytes)
    cpdef begin(self, RequestInfo info)
    @cython.locals(parents=list, states=list, rest=list, item=tuple, header=bytes, span=bytes)
    cpdef _continue(self, RequestInfo info)


@cython.locals(ctx=TraceContext)
cdef TraceContext _context(bytes header, object parent_id, bint sampled, object tracestate)

cdef bytes TRACEPARENT
cdef bytes TRACESTATE
cdef bytes _ZERO_TRACE
cdef bytes _ZERO_SPAN
cdef long _ONE
