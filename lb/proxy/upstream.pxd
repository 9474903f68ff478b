# Augmenting declarations for upstream.py: compiled, UpstreamConnection is an extension type.
cimport cython

from lb.proxy.exchange cimport Exchange
from lb.proxy.outbox cimport Writer
from lb.proxy.timer cimport Deadline


@cython.final
cdef class UpstreamConnection(Writer):
    cdef public object backend
    cdef public object loop
    cdef public double idle_timeout
    cdef public object parser
    cdef public object exchange  # an Exchange, or a Tunnel once upgraded
    cdef public bint closed
    cdef public bint reused
    cdef public bint head_only
    cdef public bint saw_bytes
    cdef public bint raw
    cdef public bint dirty
    cdef public list pending
    cdef public list _headers
    cdef public Deadline deadline

    @cython.locals(ex=Exchange, pending=list)
    cpdef data_received(self, data)
    cpdef on_header(self, name, value)
    @cython.locals(ex=Exchange, headers=list)
    cpdef on_headers_complete(self)
    @cython.locals(ex=Exchange)
    cpdef on_body(self, body)
    @cython.locals(ex=Exchange, headers=list)
    cpdef on_message_complete(self)
    cpdef send(self, exchange, bytes data, bint head_only)
    cpdef release(self, Py_ssize_t max_idle)
    cpdef close(self)
    cpdef abort(self)


cpdef UpstreamConnection take_idle(backend)
