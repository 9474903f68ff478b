# Augmenting declarations for outbox.py: compiled, Writer and Outbox are extension types.
cimport cython

cdef class Outbox


cdef class Writer:
    cdef public list _out
    cdef public Py_ssize_t _out_bytes
    cdef public Outbox outbox
    cdef public object transport

    cpdef write(self, data)
    cpdef flush(self)
    cpdef discard_output(self)


@cython.final
cdef class Outbox:
    cdef public object _loop
    cdef public bint _scheduled
    cdef public list _writers

    cpdef add(self, Writer writer)
    @cython.locals(w=Writer)
    cpdef flush(self)
