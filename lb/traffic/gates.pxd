# Augmenting declarations for gates.py: compiled, the service gate is an extension type that
# reads the exchange, the caps and the service breaker as C fields.
cimport cython

from lb.proxy.exchange cimport Exchange
from lb.traffic.breaker cimport Breaker, Caps


@cython.final
cdef class ServiceGate:
    cdef public object service
    cdef public object clock
    cdef public Caps caps
    cdef public Breaker breaker
    cdef public long long rejected
    cdef public long long fallbacks
    cdef public long long _headroom

    @cython.locals(breaker=Breaker, caps=Caps, n=cython.longlong)
    cpdef bint enter(self, Exchange ex) except -1
    @cython.locals(caps=Caps, retries=long)
    cpdef leave(self, Exchange ex)
    cpdef bint take_retry(self) except -1
    @cython.locals(caps=Caps, conns=cython.longlong, idle=cython.longlong, busy=cython.longlong)
    cpdef bint _pool_admits(self, long long requests) except -1
    cpdef bint _open(self, Exchange ex) except -1
