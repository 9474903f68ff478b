"""Circuit breaking: a closed/open/half-open breaker and Envoy-style concurrency caps.

`Breaker` trips on either signal, whichever comes first:
- `consecutive_failures` failures in a row (fast reaction to a backend that just died);
- a failure ratio of at least `failure_ratio` over the rolling `window`, once the window holds
  at least `min_requests` outcomes (so three failures out of four at 3 a.m. do not trip it).
Open, it rejects until `open_for` has passed, then half-opens and lets `half_open_requests`
probes through: all succeed -> closed, any fails -> open again. Each reopening without a
successful close in between doubles the open time, up to `max_open_for`, so a backend that
stays broken is probed less and less often; a successful close resets the growth. Unlike
Traefik's breaker, every state and transition is counted for metrics (`transitions`,
`opened_times`) and reported through `on_transition`.

The window is a ring of fixed buckets (one per second for a 10 s window) with running sums, so
recording an outcome is a few integer operations and never allocates: the newest bucket's
counts are kept apart, in two integers (C integers, compiled), and join the ring when time
moves past them.

`Caps` are Envoy's cluster circuit breakers: hard limits on connections, pending requests,
active requests and active retries, each with an overflow counter.

Built with Cython (setup.py), `Breaker` and `Caps` are extension types typed by breaker.pxd:
`record` runs once or twice per proxied request. `BreakerSettings` stays a Python dataclass,
read only when an outcome is a failure.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerSettings:
    failure_ratio: float = 0.5
    min_requests: int = 20
    window: float = 10.0
    consecutive_failures: int = 5  # 0 disables the consecutive trigger
    open_for: float = 5.0
    max_open_for: float = 60.0
    half_open_requests: int = 1

    def __post_init__(self) -> None:
        if not 0.0 < self.failure_ratio <= 1.0:
            raise ValueError("failure_ratio must be in (0, 1]")
        if self.min_requests < 1 or self.consecutive_failures < 0:
            raise ValueError("min_requests must be >= 1 and consecutive_failures >= 0")
        if self.window <= 0 or self.open_for <= 0 or self.max_open_for < self.open_for:
            raise ValueError("window and open_for must be positive, max_open_for >= open_for")
        if self.half_open_requests < 1:
            raise ValueError("half_open_requests must be at least 1")


class Breaker:
    """State machine closed -> open -> half_open -> closed | open, driven by injected `now`."""

    __slots__ = (
        "_consecutive",
        "_failed",
        "_fails",
        "_newest_failed",
        "_newest_total",
        "_open_for",
        "_per_second",
        "_probe_successes",
        "_probes",
        "_reopenings",
        "_slot",
        "_tick",
        "_total",
        "_totals",
        "on_transition",
        "open_until",
        "opened_times",
        "probe_deadline",
        "settings",
        "state",
        "transitions",
    )

    def __init__(
        self,
        settings: BreakerSettings | None = None,
        *,
        on_transition: Callable[[str, str], None] | None = None,
    ) -> None:
        self.settings = settings = settings or BreakerSettings()
        self.on_transition = on_transition
        self.state = CLOSED
        self.opened_times = 0
        self.transitions: dict[tuple[str, str], int] = {}
        self.open_until = 0.0
        self._open_for = settings.open_for  # the duration of the latest opening
        self._reopenings = 0  # openings since the last successful close
        buckets = max(1, math.ceil(settings.window))
        self._per_second = buckets / settings.window  # buckets per second: time -> tick
        self._totals = [0] * buckets
        self._fails = [0] * buckets
        self._tick = 0  # bucket number (time x buckets per second) of the newest bucket
        self._slot = 0  # its index in the ring
        self._newest_total = 0  # the newest bucket's counts, not yet in the ring
        self._newest_failed = 0
        self._total = 0
        self._failed = 0
        self._consecutive = 0
        self._probes = 0  # probes admitted and not yet recorded
        self._probe_successes = 0
        self.probe_deadline = 0.0  # half-open: a probe not reported by then counts as failed

    @property
    def window_counts(self) -> tuple[int, int]:
        """(requests, failures) currently in the rolling window."""
        return self._total, self._failed

    def allow(self, now: float) -> bool:
        state = self.state
        if state == CLOSED:
            return True
        if state == OPEN and not self.half_open(now):
            return False
        if self._probes < self.settings.half_open_requests:
            self._probes += 1
            return True
        if now >= self.probe_deadline:
            # A probe never reported (its request was cancelled or is stuck): count it as a
            # failure rather than stay half-open, rejecting everything, forever.
            self._open(now)
        return False

    def half_open(self, now: float) -> bool:
        """Open -> half_open once `open_until` has passed, admitting no probe yet; True if it
        moved. `allow` does this lazily; an owner that takes an open backend out of rotation
        calls it from a timer, so the backend comes back to receive its probes."""
        if self.state != OPEN or now < self.open_until:
            return False
        self._move(HALF_OPEN)
        self._probes = 0
        self._probe_successes = 0
        self.probe_deadline = now + self._open_for
        return True

    def record(self, ok: bool, now: float) -> None:
        state = self.state
        if state == CLOSED:
            # The window count, inline: this runs once or twice for every proxied request.
            tick = int(now * self._per_second)
            if tick > self._tick:
                self._advance(tick)
            self._newest_total += 1
            self._total += 1
            if ok:
                self._consecutive = 0
                return
            self._newest_failed += 1
            self._failed += 1
            self._consecutive += 1
            s = self.settings
            if (s.consecutive_failures and self._consecutive >= s.consecutive_failures) or (
                self._total >= s.min_requests and self._failed >= s.failure_ratio * self._total
            ):
                self._open(now)
        elif state == HALF_OPEN:
            if self._probes:
                self._probes -= 1
            if not ok:
                self._open(now)
                return
            self._probe_successes += 1
            if self._probe_successes >= self.settings.half_open_requests:
                self._close()
        # Open: outcomes of requests admitted before it opened say nothing new.

    def _advance(self, tick: int) -> None:
        """Empty the buckets time has moved past; a gap as long as the window empties all."""
        totals, fails = self._totals, self._fails
        n = len(totals)
        totals[self._slot] = self._newest_total
        fails[self._slot] = self._newest_failed
        self._newest_total = self._newest_failed = 0
        for step in range(1, min(tick - self._tick, n) + 1):
            slot = (self._tick + step) % n
            self._total -= totals[slot]
            self._failed -= fails[slot]
            totals[slot] = 0
            fails[slot] = 0
        self._tick = tick
        self._slot = tick % n

    def _clear_window(self) -> None:
        for i in range(len(self._totals)):
            self._totals[i] = 0
            self._fails[i] = 0
        self._newest_total = self._newest_failed = 0
        self._total = 0
        self._failed = 0
        self._consecutive = 0

    def _open(self, now: float) -> None:
        s = self.settings
        self._open_for = min(s.max_open_for, s.open_for * 2.0 ** min(self._reopenings, 64))
        self._reopenings += 1
        self.open_until = now + self._open_for
        self.opened_times += 1
        self._move(OPEN)

    def _close(self) -> None:
        self._reopenings = 0
        # Failures from before the opening were already acted on; start from a clean window.
        self._clear_window()
        self._move(CLOSED)

    def _move(self, new: str) -> None:
        old = self.state
        self.state = new
        key = (old, new)
        self.transitions[key] = self.transitions.get(key, 0) + 1
        if self.on_transition is not None:
            self.on_transition(old, new)


class Caps:
    """Envoy-style per-service concurrency caps, as plain integers the service gate
    (traffic/gates.py) compares and counts inline; `overflows` counts refusals per cap.
    Retries go through `try_acquire_retry`/`release_retry`, each success paired with one
    release."""

    __slots__ = (
        "connections",
        "max_connections",
        "max_pending",
        "max_requests",
        "max_retries",
        "overflows",
        "pending",
        "requests",
        "retries",
    )

    def __init__(
        self,
        max_connections: int = 1024,
        max_pending: int = 1024,
        max_requests: int = 1024,
        max_retries: int = 3,
    ) -> None:
        self.max_connections = max_connections
        self.max_pending = max_pending
        self.max_requests = max_requests
        self.max_retries = max_retries
        self.connections = 0
        self.pending = 0
        self.requests = 0
        self.retries = 0
        self.overflows = {"connections": 0, "pending": 0, "requests": 0, "retries": 0}

    def try_acquire_retry(self) -> bool:
        if self.retries < self.max_retries:
            self.retries += 1
            return True
        self.overflows["retries"] += 1
        return False

    def release_retry(self) -> None:
        if self.retries > 0:
            self.retries -= 1
