# Augmenting declarations for context.py: compiled, the trace context is an extension type
# and `begin` a typed call on every request head while tracing is on.
cimport cython

from lb.proxy.headers cimport RequestInfo, lower_name


@cython.final
@cython.freelist(64)
cdef class TraceContext:
    cdef public bytes trace_id
    cdef public bytes span_id
    cdef public object parent_id
    cdef public bint sampled
    cdef public object tracestate


@cython.final
cdef class Propagator:
    cdef public object bound

    @cython.locals(forward=list, item=tuple, name=bytes, n=Py_ssize_t, ctx=TraceContext)
    cpdef begin(self, RequestInfo info)
    @cython.locals(parents=list, states=list, rest=list, item=tuple, ctx=TraceContext)
    cpdef _continue(self, RequestInfo info)


cpdef bytes _span_id()
cpdef bytes _header(TraceContext ctx)

cdef bytes TRACEPARENT
cdef bytes TRACESTATE
cdef bytes _ZERO_TRACE
cdef bytes _ZERO_SPAN
cdef long _T
