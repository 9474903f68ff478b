# Augmenting declarations for backend_connection.py: compiled, H2BackendConnection is an
# extension type; its streams and its pool call it through its vtable.
cimport cython

from lb.proxy.exchange cimport Exchange
from lb.proxy.http2.backend_stream cimport H2UpstreamStream
from lb.proxy.http2.session_io cimport SessionIO
from lb.proxy.http2.upstream cimport H2Pool
from lb.proxy.timer cimport Deadline


@cython.final
cdef class H2BackendConnection(SessionIO):
    cdef public bytes _first
    cdef public Deadline deadline
    cdef public bint draining
    cdef public bint failed
    cdef public double idle_timeout
    cdef public list pending
    cdef public H2Pool pool
    cdef public bint ready
    cdef public object ready_future
    cdef public bytes scheme
    cdef public object task
    cdef public long used

    cpdef long room_guess(self)
    cpdef bint has_room(self) except -1
    cpdef start(self, Exchange ex)
    # The session's callbacks: cpdef, so that their streams are typed.
    @cython.locals(st=H2UpstreamStream)
    cpdef on_headers(self, long sid, list headers, bint end_stream)
    @cython.locals(st=H2UpstreamStream)
    cpdef on_trailers(self, long sid, list headers)
    @cython.locals(st=H2UpstreamStream)
    cpdef on_data(self, long sid, bytes data)
    @cython.locals(st=H2UpstreamStream)
    cpdef on_end_stream(self, long sid)
    @cython.locals(st=H2UpstreamStream)
    cpdef on_stream_close(self, long sid, long code)
    @cython.locals(st=H2UpstreamStream)
    cpdef on_drained(self, long sid)
    cpdef maybe_idle(self)
    cpdef leave_pool(self)
    cpdef close(self)
