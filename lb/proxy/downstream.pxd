# Augmenting declarations for downstream.py: compiled, ClientConnection is an extension type.
cimport cython
from lb.proxy.exchange cimport Exchange
from lb.proxy.headers cimport (
    RequestInfo, add_lines, analyze_request, content_length_line, http10_rules, is_http10, join_headers
)
from lb.proxy.side cimport Downstream
from lb.proxy.timer cimport Deadline


@cython.final
cdef class ClientConnection(Downstream):
    cdef public object parser
    cdef public object client_cert
    cdef public Exchange current
    cdef public object queue
    cdef public Exchange _req
    cdef public bytes _url
    cdef public list _headers
    cdef public list _trailers
    cdef public Py_ssize_t _head_bytes
    cdef public bint in_headers
    cdef public bint lingering
    cdef public long _paused
    cdef public bint closing
    cdef public bint chunked_out
    cdef public bint close_after
    cdef public object tunnel
    cdef public Deadline deadline

    @cython.locals(
        ex=Exchange, method=bytes, target=bytes, path=str, query=str, http10=bint,
        keep_alive=bint, info=RequestInfo
    )
    cpdef on_headers_complete(self)
    cpdef _close_after_write(self, bint unread=*)


cpdef str _route_host(raw)
cpdef bytes _status_line(long status)
cdef dict _STATUS_LINES
