# Augmenting declarations for upstream.py: compiled, the pool is an extension type and the
# exchange's dispatch reaches its connections through their vtable.
cimport cython

from lb.proxy.exchange cimport Exchange
from lb.proxy.http2.backend_connection cimport H2BackendConnection


@cython.final
cdef class H2Pool:
    cdef public object backend
    cdef public list conns


@cython.locals(pool=H2Pool, conn=H2BackendConnection)
cpdef dispatch(Exchange ex, b)
@cython.locals(name=bytes)
cdef bint _is_grpc(list headers) except -1
@cython.locals(ex=Exchange)
cpdef _fail(H2BackendConnection conn, failure)
@cython.locals(ex=Exchange)
cpdef _hand_out(H2BackendConnection conn)
