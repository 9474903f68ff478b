# Augmenting declarations for network.py: compiled, the ip_filter and client_in_flight
# policies read the exchange and their rule or table as C fields.
cimport cython

from lb.edge.client_caps cimport InFlight, Slot
from lb.edge.ipfilter cimport IpRule
from lb.proxy.exchange cimport Exchange
from lb.traffic.admission cimport ClientIp


@cython.final
cdef class IpFilterPolicy:
    cdef public ClientIp client_ip
    cdef public str name
    cdef public IpRule rule

    cpdef check(self, Exchange ex)


@cython.final
cdef class ClientInFlightPolicy:
    cdef public InFlight in_flight
    cdef public str name

    @cython.locals(in_flight=InFlight, slot=Slot)
    cpdef check(self, Exchange ex)
