# Augmenting declarations for recorder.py: compiled, the stats are extension types and
# `record` reads the exchange's fields directly.
cimport cython

from lb.proxy.exchange cimport Exchange


@cython.final
cdef class Histogram:
    cdef public list counts
    cdef public double sum


@cython.final
cdef class Count:
    cdef public tuple key
    cdef public long long n


@cython.final
cdef class RouteStats:
    cdef public long index
    cdef public str name
    cdef public dict retries
    cdef public dict failures
    cdef public dict grpc


@cython.final
cdef class BackendStats:
    cdef public object backend
    cdef public dict cells
    cdef public dict durations
    cdef public long long errors
    cdef public dict failures
    cdef public str label
    cdef public str name
    cdef public long long requests
    cdef public dict seen
    cdef public long long upstream_count
    cdef public double upstream_sum


@cython.final
cdef class ServiceStats:
    cdef public dict backends
    cdef public long labelled
    cdef public str name
    cdef public BackendStats retired


cdef class Recorder:
    cdef public object runtime
    cdef public dict routes
    cdef public RouteStats no_route
    cdef public dict services
    cdef public dict refused
    cdef public long _route_ids

    @cython.locals(
        rs=RouteStats, ss=ServiceStats, bs=BackendStats, h=Histogram, count=Count,
        now=double, t=double, d=double, status=long, method=long, key=cython.longlong,
    )
    cpdef record(self, Exchange ex, bint ok)
