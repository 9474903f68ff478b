# Augmenting declarations for side.py: compiled, Downstream and Upstream are the extension
# types whose methods the exchange calls through a vtable, whatever the protocol below.
cimport cython

from lb.proxy.exchange cimport Exchange
from lb.proxy.headers cimport RequestInfo
from lb.proxy.listener cimport ListenerRuntime
from lb.proxy.outbox cimport Outbox, Writer
from lb.proxy.timer cimport Deadline


cdef class Upstream


cdef class Downstream(Writer):
    cdef public ListenerRuntime listener
    cdef public object loop
    cdef public object peer_ip
    cdef public object grpc_status

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
    cpdef start_tunnel(self, Exchange ex, Upstream conn, bytes rest)
    cpdef abort(self)


cdef class Upstream(Writer):
    cdef public bint closed
    cdef public bint reused
    cdef public bint saw_bytes
    cdef public Deadline deadline

    cpdef send_request(
        self, Exchange exchange, bytes method, bytes target, list headers, RequestInfo info,
        bytes authority, list forwarded, bint upgrade
    )
    cpdef send_body(self, bytes chunk)
    cpdef send_end(self, trailers)
    cpdef pause_reading(self)
    cpdef resume_reading(self)
    cpdef release(self, Py_ssize_t max_idle)
    cpdef close(self)
    cpdef abort(self)
