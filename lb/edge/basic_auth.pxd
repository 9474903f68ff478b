# Augmenting declarations for basic_auth.py: compiled, a cached verification is C calls on
# the exchange's noted Authorization value; the verifier pool stays Python.
cimport cython

from lb.proxy.exchange cimport Exchange
from lb.proxy.headers cimport RequestInfo


@cython.final
cdef class BasicAuthPolicy:
    cdef public dict cache
    cdef public dict pending
    cdef public object challenge
    cdef public str name
    cdef public bint strip
    cdef public double ttl
    cdef public dict users
    cdef public object verifier

    @cython.locals(value=bytes, expires=object, key=Py_hash_t)
    cpdef check(self, Exchange ex)
    @cython.locals(info=RequestInfo)
    cpdef _admit(self, Exchange ex)
