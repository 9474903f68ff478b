# Augmenting declarations for ipfilter.py: compiled, a rule's memoised verdict is a C call.
cimport cython


@cython.final
cdef class IpRule:
    cdef public dict _memo
    cdef public object allow
    cdef public object cfg
    cdef public object deny

    @cython.locals(memo=dict)
    cpdef bint admits(self, bytes ip) except -1
    cpdef bint judge(self, bytes ip) except -1
