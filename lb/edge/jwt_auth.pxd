# Augmenting declarations for jwt_auth.py: compiled, a remembered token is C calls on the
# exchange's noted Authorization and Cookie values; verification stays PyJWT's.
cimport cython

from lb.proxy.exchange cimport Exchange
from lb.proxy.headers cimport RequestInfo


@cython.final
cdef class JwtPolicy:
    cdef public object _cached_keys
    cdef public dict _refusals
    cdef public frozenset algorithms
    cdef public object audiences
    cdef public dict cache
    cdef public tuple claims
    cdef public object cookie
    cdef public object issuer
    cdef public object missing
    cdef public str name
    cdef public dict options
    cdef public str realm
    cdef public double skew
    cdef public object source
    cdef public frozenset strip

    @cython.locals(info=RequestInfo, carrier=bytes, hit=tuple)
    cpdef check(self, Exchange ex)
    @cython.locals(hit=tuple, t0=double, ttl=double)
    cpdef _decide(self, Exchange ex, bytes token, bytes carrier, keys)
    @cython.locals(cache=dict)
    cpdef _remember(self, bytes key, tuple entry)
