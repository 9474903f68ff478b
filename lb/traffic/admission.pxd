# Augmenting declarations for admission.py: compiled, the limits are extension types that read
# the exchange's fields directly. `local` is a LocalLimiter or a worker-shared SharedLimiter
# (a Python subclass of GcraLimit): `allow` is a C call to either.
cimport cython

from lb.proxy.exchange cimport Exchange
from lb.traffic.ratelimit cimport GcraLimit


@cython.final
cdef class TrustedProxies:
    cdef public tuple networks
    cdef public dict _cache

    cpdef bint trusted(self, ip) except -1
    cpdef client_ip(self, peer, xff)


# The key parts: not final, since Cython refuses a final class overriding a base method.
cdef class Key:
    cpdef object of(self, Exchange ex)


cdef class ClientIp(Key):
    cdef public dict trusted

    @cython.locals(trusted=dict, proxies=TrustedProxies)
    cpdef object of(self, Exchange ex)


cdef class Host(Key):
    cpdef object of(self, Exchange ex)


cdef class Header(Key):
    cdef public bytes name

    cpdef object of(self, Exchange ex)


cdef class RouteName(Key):
    cpdef object of(self, Exchange ex)


cdef class Joined(Key):
    cdef public tuple parts

    @cython.locals(part=Key)
    cpdef object of(self, Exchange ex)


@cython.final
cdef class Limit:
    cdef public str scope
    cdef public str name
    cdef public object cfg
    cdef public Key key
    cdef public bint dry_run
    cdef public GcraLimit local
    cdef public object shared
    cdef public long long allowed
    cdef public long long limited
    cdef public long long dry_run_limited
    cdef public long long redis_failures
    cdef public object _counts  # a defaultdict: a dict field takes exact dicts only
    cdef public object _redis_errors
    cdef public tuple _allowed
    cdef public tuple _limited
    cdef public tuple _dry_run

    cpdef bint admit(self, Exchange ex) except -1
    cpdef bint settle(self, Exchange ex, d) except -1


@cython.final
cdef class Admission:
    cdef public dict by_listener
    cdef public Limit route_limit
    cdef public set tasks

    @cython.locals(by_listener=dict, first=Limit, second=Limit)
    cpdef bint admit(self, Exchange ex) except -1
    cpdef _later(self, Exchange ex, tuple limits)
