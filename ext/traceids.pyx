# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""W3C trace ids, compiled (``lb._traceids``): made and written as hex straight into the
``traceparent`` value lb forwards, with its sampling decision.

``lb.tracing.ids_py`` is the pure-Python twin: for the same seed and bound both give the same
headers in the same order. Any change here must be made there too;
``tests/test_traceids_equivalence.py`` checks it.

Ids come from SplitMix64 (Steele, Lea, Flood 2014): every output of a seed's 2^64 period is
distinct, uniform enough for the trace id's low 64 bits to be sampled on (OpenTelemetry's
TraceIdRatioBased: sampled when they are below ``bound``, or always with ``everything``), and
an all-zero output, invalid as an id, is replaced by 1. A new trace takes three outputs in
order: the trace id's high and low halves, then lb's span id.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint64_t

cdef const char *DIGITS = b"0123456789abcdef"
cdef uint64_t GOLDEN = 0x9E3779B97F4A7C15ULL
cdef uint64_t MIX1 = 0xBF58476D1CE4E5B9ULL
cdef uint64_t MIX2 = 0x94D049BB133111EBULL


cdef inline void _hex(char *out, uint64_t value) noexcept nogil:
    """`value`'s 16 lower-case hex digits into out[0:16]."""
    cdef int i
    for i in range(15, -1, -1):
        out[i] = DIGITS[value & 15]
        value >>= 4


cdef class TraceIds:
    cdef uint64_t state
    cdef readonly uint64_t bound
    cdef readonly bint everything

    def __cinit__(self, uint64_t seed, uint64_t bound, bint everything):
        self.state = seed
        self.bound = bound
        self.everything = everything

    cdef inline uint64_t _next(self) noexcept:
        cdef uint64_t z
        self.state += GOLDEN
        z = self.state
        z = (z ^ (z >> 30)) * MIX1
        z = (z ^ (z >> 27)) * MIX2
        z ^= z >> 31
        return z if z != 0 else 1

    def new_trace(self) -> bytes:
        """``00-<trace id>-<span id>-<flags>``, the flags 01 when the trace is sampled."""
        cdef bytes header = PyBytes_FromStringAndSize(NULL, 55)
        cdef char *out = PyBytes_AS_STRING(header)
        cdef uint64_t low
        out[0] = b"0"
        out[1] = b"0"
        out[2] = b"-"
        _hex(out + 3, self._next())
        low = self._next()
        _hex(out + 19, low)
        out[35] = b"-"
        _hex(out + 36, self._next())
        out[52] = b"-"
        out[53] = b"0"
        out[54] = b"1" if self.everything or low < self.bound else b"0"
        return header

    def new_span(self) -> bytes:
        """A span id alone: lb's, under a parent's trace id."""
        cdef bytes span = PyBytes_FromStringAndSize(NULL, 16)
        _hex(PyBytes_AS_STRING(span), self._next())
        return span
