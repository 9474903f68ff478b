# Augmenting declarations for downstream.py: compiled, H2Connection is an extension type.
cimport cython

from lb.proxy.outbox cimport Writer
from lb.proxy.timer cimport Deadline


@cython.final
cdef class H2Connection(Writer):
    cdef public object listener
    cdef public object loop
    cdef public object peer_ip
    cdef public object client_cert
    cdef public dict streams
    cdef public object session
    cdef public long max_requests
    cdef public long requests
    cdef public double ping_interval
    cdef public double ping_timeout
    cdef public Deadline pinger
    cdef public bint _queued
    cdef public list _resets
    cdef public Py_ssize_t _got
    cdef public bint closing
    cdef public bint draining
    cdef public bint goaway_sent
    cdef public bint write_paused
    cdef public Deadline deadline
