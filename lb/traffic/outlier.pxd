# Augmenting declarations for outlier.py: compiled, the detector is an extension type, so the
# per-request `record` of a success is a C call and a dict probe. The settings stay Python
# numbers, as configured (a reload changes them in place).
cimport cython


@cython.final
cdef class OutlierDetector:
    cdef public object consecutive_errors
    cdef public object base_ejection
    cdef public object max_ejection_percent
    cdef public object max_ejection
    cdef public object interval
    cdef public bint always_eject_one
    cdef public dict times_ejected
    cdef public long long ejections_total
    cdef public long long overflows
    cdef public set _backends
    cdef public dict _errors
    cdef public dict _ejected
    cdef public dict _forgiving

    cpdef bint record(self, key, bint ok, double now) except -1
    cpdef bint _may_eject(self) except -1
