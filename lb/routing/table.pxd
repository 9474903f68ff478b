# Augmenting declarations for table.py: compiled, the lookup runs as C with typed steps.
cimport cython


@cython.final
cdef class PrefixGroup:
    cdef public dict by_prefix
    cdef public tuple lengths

    @cython.locals(n=Py_ssize_t)
    cpdef object find(self, str path)


@cython.final
cdef class RouteTable:
    cdef public list routes
    cdef public dict by_name
    cdef public dict _wild
    cdef public dict _exact
    cdef public tuple _any

    @cython.locals(dot=Py_ssize_t)
    cpdef tuple steps_for(self, str host)
    @cython.locals(steps=tuple, group=PrefixGroup)
    cpdef object lookup(self, str host, bytes method, str path, str query, list headers)
