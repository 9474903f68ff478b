# Augmenting declarations for chain.py: compiled, a route's chain runs its steps as C calls on
# typed fields; each policy's `check` is a Python call (policies are of several types).
cimport cython

from lb.edge.metrics cimport Decisions
from lb.proxy.exchange cimport Exchange
from lb.proxy.headers cimport RequestInfo


@cython.final
cdef class Step:
    cdef public object policy
    cdef public Decisions decisions
    cdef public bint reroute


@cython.final
cdef class Chain:
    cdef public dict by_listener
    cdef public tuple default
    cdef public set tasks

    @cython.locals(by_listener=dict, steps=tuple)
    cpdef bint admit(self, Exchange ex) except -1
    @cython.locals(i=Py_ssize_t, step=Step)
    cpdef bint _run(self, Exchange ex, tuple steps, Py_ssize_t start) except -1
    @cython.locals(info=RequestInfo)
    cpdef bint _same_route(self, Exchange ex) except -1


cpdef _refuse(Exchange ex, Step step, refusal)
cpdef list without(list headers, frozenset names)
@cython.locals(info=RequestInfo, forward=list)
cpdef vouch(Exchange ex, frozenset strip, list headers)
@cython.locals(low=bytes)
cpdef _note(RequestInfo info)
