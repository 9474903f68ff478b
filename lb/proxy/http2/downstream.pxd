# Augmenting declarations for downstream.py: compiled, H2Connection is an extension type.
cimport cython

from lb.proxy.exchange cimport Exchange
from lb.proxy.headers cimport RequestInfo
from lb.proxy.http2.request cimport RequestHead, request_head
from lb.proxy.http2.session_io cimport SessionIO
from lb.proxy.http2.stream cimport H2Stream
from lb.proxy.timer cimport Deadline


@cython.final
cdef class H2Connection(SessionIO):
    cdef public object listener
    cdef public object peer_ip
    cdef public object client_cert
    cdef public long max_requests
    cdef public long requests
    cdef public double ping_interval
    cdef public double ping_timeout
    cdef public Deadline pinger
    cdef public list _resets
    cdef public Py_ssize_t _got
    cdef public bint draining
    cdef public bint goaway_sent
    cdef public Deadline deadline

    cpdef reset_after_output(self, long sid)
    # The session's callbacks: cpdef, so that their streams are typed.
    @cython.locals(st=H2Stream, ex=Exchange)
    cpdef on_headers(self, long sid, list headers, bint end_stream)
    @cython.locals(head=RequestHead, info=RequestInfo, ex=Exchange)
    cpdef _start(self, H2Stream st, list headers, bint end_stream)
    cpdef _refuse(self, H2Stream st, long status)
    @cython.locals(st=H2Stream)
    cpdef on_data(self, long sid, bytes data)
    @cython.locals(st=H2Stream)
    cpdef on_end_stream(self, long sid)
    @cython.locals(st=H2Stream)
    cpdef on_stream_close(self, long sid, long code)
    @cython.locals(st=H2Stream)
    cpdef on_drained(self, long sid)
    cpdef stream_done(self)
