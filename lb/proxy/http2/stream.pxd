# Augmenting declarations for stream.py: compiled, H2Stream is an extension type the exchange
# calls through Downstream's vtable, as it calls an HTTP/1.1 connection.
cimport cython

from lb.proxy.exchange cimport Exchange
from lb.proxy.headers cimport lower_name
from lb.proxy.http2.downstream cimport H2Connection
from lb.proxy.side cimport Downstream


@cython.final
cdef class H2Stream(Downstream):
    cdef public H2Connection conn
    cdef public long sid
    cdef public Exchange ex
    cdef public object expected
    cdef public Py_ssize_t received
    cdef public Py_ssize_t held
    cdef public long paused
    cdef public bint client_paused
    cdef public bint req_ended
    cdef public bint grpc
    cdef public object head
    cdef public list trailers

    cpdef Py_ssize_t answer(
        self, long status, object body, object headers, object content_type=*, bint head=*
    ) except -1
    cpdef _note_status(self, list fields)
    cpdef bint _submit(self, long status, list fields, bint end) except -1
    @cython.locals(ex=Exchange, n=Py_ssize_t)
    cpdef body(self, bytes data)
    @cython.locals(ex=Exchange)
    cpdef end(self)
    @cython.locals(ex=Exchange)
    cpdef closed(self, long code)
    @cython.locals(ex=Exchange)
    cpdef _malformed(self)


@cython.locals(name=bytes, low=bytes)
cpdef list _response_headers(list headers)
cdef frozenset _HOP_BY_HOP
