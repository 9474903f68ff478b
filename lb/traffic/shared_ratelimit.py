"""Rate limits shared by the worker processes of `lb run --workers N`.

`local_limiter(...)` is the drop-in for `LocalLimiter(...)` where a configured limit is built:
in a worker it returns a `SharedLimiter` over `lb.shm.SharedGcra`, so all workers spend one
budget per client; in a single process it returns the plain `LocalLimiter`. Both answer
`check`, `allow` and `headers` alike (same GCRA, same rounding slack, same Decision figures).
"""

from __future__ import annotations

from collections.abc import Hashable

from ..shm import SharedGcra, active_segment
from .ratelimit import Decision, GcraLimit, LocalLimiter


class SharedLimiter(GcraLimit):
    """`LocalLimiter`'s interface with its state in the shared segment. Keys are hashed with
    `hash()`, which agrees across workers because they share PYTHONHASHSEED; the segment's
    table, not `max_keys`, bounds the keys held."""

    def __init__(self, gcra: SharedGcra, rate: float, period: float, burst: int) -> None:
        super().__init__(rate, period, burst)
        self.gcra = gcra

    @property
    def overflowed(self) -> int:
        return self.gcra.overflowed

    def check(self, key: Hashable, now: float, cost: int = 1) -> Decision:
        interval, tolerance = self.interval, self.tolerance
        allowed, tat = self.gcra.check(hash(key), now, cost * interval, tolerance, self._slack)
        remaining = int((tolerance - (tat - now)) / interval + 1e-3)
        if allowed:
            return Decision(True, self.limit, remaining, tat - now, 0.0)
        if cost > self.limit:
            raise ValueError(f"cost {cost} exceeds the limit {self.limit}; never admissible")
        wait = tat + cost * interval - tolerance - now
        return Decision(False, self.limit, remaining, tat - now, wait)

    def allow(self, key: Hashable, now: float) -> bool:
        return self.gcra.check(hash(key), now, self.interval, self.tolerance, self._slack)[0]


def local_limiter(
    scope: str, name: str, rate: float, period: float, burst: int, *, max_keys: int
) -> LocalLimiter | SharedLimiter:
    """The in-process limiter of one configured limit; `scope` and `name` (e.g. "route",
    "api") identify it across workers."""
    segment = active_segment()
    if segment is None:
        return LocalLimiter(rate, period, burst, max_keys=max_keys)
    return SharedLimiter(SharedGcra(segment, f"{scope}:{name}"), rate, period, burst)
