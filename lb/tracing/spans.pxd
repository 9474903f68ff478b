# Augmenting declarations for spans.py: compiled, `record` reads the exchange's fields and its
# trace context as C fields, so that an unsampled exchange costs a few loads.
cimport cython

from lb.proxy.exchange cimport Exchange
from lb.proxy.headers cimport RequestInfo
from lb.tracing.context cimport TraceContext


@cython.final
cdef class SpanQueue:
    cdef public object spans
    cdef public Py_ssize_t max_queue
    cdef public Py_ssize_t batch
    cdef public object dropped
    cdef public object wake

    @cython.locals(info=RequestInfo, trace=TraceContext, status=long)
    cpdef record(self, Exchange ex, bint ok)
    cpdef refusal(self, conn, long status)
