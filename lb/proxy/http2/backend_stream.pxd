# Augmenting declarations for backend_stream.py: compiled, H2UpstreamStream is an extension
# type the exchange calls through Upstream's vtable, as it calls a pooled HTTP/1.1 connection.
cimport cython

from lb.proxy.exchange cimport Exchange
from lb.proxy.headers cimport ResponseInfo, analyze_response, lower_name
from lb.proxy.http2.backend_connection cimport H2BackendConnection
from lb.proxy.side cimport Upstream


@cython.final
cdef class H2UpstreamStream(Upstream):
    cdef public H2BackendConnection conn
    cdef public Exchange ex
    cdef public bint grpc
    cdef public object grpc_timer
    cdef public bint head_only
    cdef public Py_ssize_t held
    cdef public bint paused
    cdef public bint req_ended
    cdef public long sid
    cdef public bint started
    cdef public list trailers
    cdef public bint write_paused

    @cython.locals(ex=Exchange, item=tuple, name=bytes, status=long, regular=list,
                   info=ResponseInfo, code=long)
    cpdef on_headers(self, list headers, bint end_stream)
    @cython.locals(ex=Exchange, n=Py_ssize_t)
    cpdef on_data(self, bytes data)
    @cython.locals(ex=Exchange)
    cpdef on_end_stream(self)
    @cython.locals(ex=Exchange)
    cpdef on_close(self, long code)
    cpdef _detach(self)


cdef frozenset _DROP
cdef dict _UNITS
