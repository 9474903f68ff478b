# Augmenting declarations for headers.py: compiled, the head summaries are extension types.
cimport cython

@cython.final
@cython.freelist(64)
cdef class RequestInfo:
    cdef public object host
    cdef public object content_length
    cdef public bint chunked
    cdef public bint connection_tokens
    cdef public object upgrade
    cdef public bint expect_continue
    cdef public object request_id
    cdef public object xff
    cdef public object authorization
    cdef public object cookie
    cdef public list forward
    cdef public object trace
    cdef public bint trace_headers


@cython.final
@cython.freelist(64)
cdef class ResponseInfo:
    cdef public object content_length
    cdef public bint chunked
    cdef public list forward


cpdef bytes lower_name(bytes name)
@cython.locals(info=RequestInfo, forward=list, item=tuple, name=bytes, value=bytes, lname=bytes, n=Py_ssize_t)
cpdef RequestInfo analyze_request(list headers)
cpdef bint is_http10(RequestInfo info, bint keep_alive, parser) except -1
cpdef http10_rules(RequestInfo info)
@cython.locals(info=ResponseInfo, forward=list, item=tuple, name=bytes, value=bytes, lname=bytes, n=Py_ssize_t)
cpdef ResponseInfo analyze_response(list headers)
@cython.locals(item=tuple)
cpdef add_lines(list parts, list headers)
cpdef bytes join_headers(list headers)
cpdef bytes content_length_line(Py_ssize_t n)
cdef list _LENGTH_LINES

cdef dict _LOWER
cdef frozenset HOP_BY_HOP
cdef frozenset CREDENTIALS
cdef frozenset TRACE_CONTEXT
cdef frozenset _SPECIAL
cdef bytes _REQUEST_FILTER
cdef bytes _RESPONSE_FILTER
