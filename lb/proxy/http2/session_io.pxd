# Augmenting declarations for session_io.py: compiled, SessionIO is the extension type both
# HTTP/2 connections extend; their streams call kick/reset/consume through its vtable.
cimport cython

from lb.proxy.outbox cimport Writer


cdef class SessionIO(Writer):
    cdef public object loop
    cdef public object session
    cdef public dict streams
    cdef public bint _queued
    cdef public bint closing
    cdef public bint write_paused

    cpdef receive(self, data, object peer)
    cpdef close_session(self)
    cpdef kick(self)
    cpdef bytes take_output(self)
    cpdef reset(self, long sid, long code)
    cpdef consume(self, long sid, Py_ssize_t n)
