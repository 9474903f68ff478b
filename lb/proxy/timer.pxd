# Augmenting declarations for timer.py: compiled, Deadline is an extension type (see setup.py).
cimport cython
@cython.final
cdef class Deadline:
    cdef public object _loop
    cdef public object _time
    cdef public object _callback
    cdef public object _timer
    cdef public double _when
    cdef public double deadline
    cdef public object kind

    cpdef set(self, double seconds, object kind, object now=*)
    cpdef clear(self)
    cpdef cancel(self)
