"""W3C trace ids in pure Python: the twin of the compiled ``lb._traceids`` (ext/traceids.pyx,
whose docstring says how ids are made and sampled). For the same seed and bound both give the
same headers in the same order; tests/test_traceids_equivalence.py checks it."""

_M = 0xFFFFFFFFFFFFFFFF
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB


class TraceIds:
    __slots__ = ("bound", "everything", "state")

    def __init__(self, seed: int, bound: int, everything: bool) -> None:
        self.state = seed
        self.bound = bound
        self.everything = everything

    def _next(self) -> int:
        self.state = z = (self.state + _GOLDEN) & _M
        z = ((z ^ (z >> 30)) * _MIX1) & _M
        z = ((z ^ (z >> 27)) * _MIX2) & _M
        return (z ^ (z >> 31)) or 1

    def new_trace(self) -> bytes:
        """``00-<trace id>-<span id>-<flags>``, the flags 01 when the trace is sampled."""
        high = self._next()
        low = self._next()
        span = self._next()
        sampled = self.everything or low < self.bound
        return b"00-%016x%016x-%016x-0%c" % (high, low, span, 49 if sampled else 48)

    def new_span(self) -> bytes:
        """A span id alone: lb's, under a parent's trace id."""
        return b"%016x" % self._next()
