"""One lazily re-armed timer per connection instead of a timer per request.

Moving a deadline is a float store; the loop timer only fires once per timeout period and
re-arms itself if the deadline moved later, so keep-alive traffic creates almost no timers.
"""

import asyncio
from collections.abc import Callable
from math import inf


class Deadline:
    __slots__ = ("_callback", "_loop", "_time", "_timer", "_when", "deadline", "kind")

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[str], None]) -> None:
        self._loop = loop
        self._time = loop.time  # bound once: deadlines move on every request
        self._callback = callback
        self._timer: asyncio.TimerHandle | None = None
        self._when = inf
        self.deadline = inf
        self.kind = ""

    def set(self, seconds: float, kind: str, now: float | None = None) -> None:
        self.deadline = (self._time() if now is None else now) + seconds
        self.kind = kind
        if self.deadline < self._when:
            if self._timer is not None:
                self._timer.cancel()
            self._when = self.deadline
            self._timer = self._loop.call_at(self.deadline, self._fire)

    def clear(self) -> None:
        self.deadline = inf

    def cancel(self) -> None:
        self.deadline = inf
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._when = inf

    def _fire(self) -> None:
        self._timer = None
        self._when = inf
        if self.deadline == inf:
            return
        if self._time() >= self.deadline:
            self.deadline = inf
            self._callback(self.kind)
        else:
            self._when = self.deadline
            self._timer = self._loop.call_at(self.deadline, self._fire)
