# Augmenting declarations for stream.py: compiled, H2Stream is an extension type the exchange
# calls through Downstream's vtable, as it calls an HTTP/1.1 connection.
cimport cython

from lb.proxy.exchange cimport Exchange
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
