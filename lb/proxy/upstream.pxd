# Augmenting declarations for upstream.py: compiled, UpstreamConnection is an extension type.
cimport cython

from lb.balancer.backend cimport Backend
from lb.proxy.exchange cimport Exchange
from lb.proxy.headers cimport (
    RequestInfo, add_lines, analyze_response, content_length_line, join_headers
)
from lb.proxy.side cimport Upstream
from lb.proxy.timer cimport Deadline


@cython.final
cdef class UpstreamConnection(Upstream):
    cdef public Backend backend
    cdef public object loop
    cdef public double idle_timeout
    cdef public object parser
    cdef public object exchange  # an Exchange, or a Tunnel once upgraded
    cdef public bint head_only
    cdef public bint raw
    cdef public bint dirty
    cdef public bint chunked_request
    cdef public bint interim
    cdef public bint started
    cdef public bint until_eof
    cdef public bint keep_alive
    cdef public bint done
    cdef public list _headers

    @cython.locals(ex=Exchange)
    cpdef data_received(self, data)
    cpdef on_header(self, name, value)
    @cython.locals(ex=Exchange, headers=list, status=long)
    cpdef on_headers_complete(self)
    @cython.locals(ex=Exchange)
    cpdef on_body(self, body)
    @cython.locals(ex=Exchange, headers=list)
    cpdef on_message_complete(self)


@cython.locals(conn=UpstreamConnection)
cpdef UpstreamConnection take_idle(Backend backend)
