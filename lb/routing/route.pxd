# Augmenting declarations for route.py: compiled, Route is an extension type, so the request
# path reads its action, rules and policies as C fields.
cimport cython


@cython.final
cdef class Route:
    cdef public str name
    cdef public object config
    cdef public tuple order
    cdef public tuple hosts
    cdef public object path_kind
    cdef public object path_value
    cdef public object condition
    cdef public object service
    cdef public object split
    cdef public object rewrite
    cdef public object request_rules
    cdef public object response_rules
    cdef public object response_head_timeout
    cdef public object idle_timeout
    cdef public object max_body_size
    cdef public object guard
    cdef public object limiter
    cdef public object retry
    cdef public object compress
    cdef public object mirror
    cdef public object redirect
    cdef public object fixed
    cdef public object stats
