# Augmenting declarations for request.py: compiled, every HTTP/2 stream's request head is
# translated in C, called directly by H2Connection.
cimport cython

from lb.proxy.headers cimport RequestInfo, analyze_request


@cython.final
@cython.freelist(64)
cdef class RequestHead:
    cdef public bint grpc
    cdef public RequestInfo info
    cdef public bytes method
    cdef public str path
    cdef public str query
    cdef public list regular
    cdef public bytes target


@cython.locals(
    item=tuple, name=bytes, method=bytes, scheme=bytes, authority=bytes, path=bytes,
    regular=list, cookies=list, info=RequestInfo, head=RequestHead,
)
cpdef RequestHead request_head(list headers, bint end_stream)
@cython.locals(name=bytes)
cdef bint _is_grpc(list regular) except -1
@cython.locals(spath=str, query=str)
cdef int _split_target(RequestHead head, bytes path) except -1

cdef tuple _PSEUDO
