# Augmenting declarations for control.py: compiled, the traffic observer is an extension type
# whose `record` (once per exchange) reads the exchange, the breakers and the outlier detector
# as C fields and calls their compiled methods directly.
cimport cython

from lb.proxy.exchange cimport Exchange
from lb.traffic.breaker cimport Breaker
from lb.traffic.outlier cimport OutlierDetector


@cython.final
cdef class TrafficControl:
    cdef public object runtime
    cdef public object loop
    cdef public object clock
    cdef public object counters
    cdef public dict services
    cdef public dict limits
    cdef public dict retries
    cdef public dict listener_limits
    cdef public dict trusted
    cdef public dict redis
    cdef public set _closing

    @cython.locals(breaker=Breaker, outlier=OutlierDetector, now=double, bad=bint)
    cpdef record(self, Exchange ex, bint ok)
