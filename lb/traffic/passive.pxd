# Augmenting declarations for passive.py: compiled, the backend breaker is an extension type
# (a Breaker with no instance dict), so calls to the Breaker methods it does not override
# dispatch in C, with no look for a Python override. Not final: Cython refuses a final class
# that overrides a base method (`allow`).

from lb.traffic.breaker cimport Breaker


cdef class BackendBreaker(Breaker):
    cdef public object service
    cdef public object backend
    cdef public object clock
    cdef public object loop
    cdef public object _timer

    cpdef bint allow(self, double now) except -1
    cpdef outcome(self, bint ok, double now)
