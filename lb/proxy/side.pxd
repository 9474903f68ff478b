# Augmenting declarations for side.py: compiled, Downstream is the extension type whose
# methods the exchange calls through a vtable, whatever the protocol below.
cimport cython

from lb.proxy.exchange cimport Exchange
from lb.proxy.outbox cimport Writer


cdef class Downstream(Writer):
    cdef public object listener
    cdef public object loop
    cdef public object peer_ip

    cpdef send_interim(self, Exchange ex, long status, list headers)
    cpdef send_head(self, Exchange ex, long status, list headers, Py_ssize_t length)
    cpdef send_body(self, bytes chunk)
    cpdef send_end(self, trailers)
    cpdef Py_ssize_t send_reply(
        self, Exchange ex, long status, object body, object headers, object content_type
    ) except -1
    cpdef object body_limit(self, Exchange ex)
    cpdef pause_reading(self, long reason)
    cpdef resume_reading(self, long reason)
    cpdef exchange_done(self, Exchange ex, bint close)
    cpdef start_tunnel(self, Exchange ex, conn, bytes rest)
    cpdef abort(self)
