# Augmenting declarations for client_caps.py: compiled, the caps count in C fields; the
# shared table (`shared`, an lb._shm.ClientCounts) is called only with --workers.
cimport cython

from lb.proxy.exchange cimport Exchange
from lb.traffic.admission cimport Key


@cython.final
cdef class ConnectionCaps:
    cdef public tuple _refused
    cdef public dict counts
    cdef public long limit
    cdef public str listener
    cdef public object refused
    cdef public dict rows
    cdef public object shared

    @cython.locals(counts=dict, n=long, row=long)
    cpdef bint enter(self, bytes ip) except -1
    cpdef bint _refuse(self) except -1
    @cython.locals(counts=dict, n=long, row=long)
    cpdef leave(self, bytes ip)


@cython.final
cdef class Slot:
    cdef public long count
    cdef public object key
    cdef public long row
    cdef public InFlight table

    cpdef leave(self, Exchange ex)


@cython.final
cdef class InFlight:
    cdef public Key key
    cdef public tuple key_parts
    cdef public long max
    cdef public long max_keys
    cdef public Slot overflow
    cdef public str route
    cdef public object shared
    cdef public dict slots
    cdef public long status

    cpdef configure(self, cfg)
    @cython.locals(slot=Slot, row=long)
    cpdef take(self, Exchange ex)
