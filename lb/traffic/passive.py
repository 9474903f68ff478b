"""Passive health of one service's backends: circuit breakers and outlier ejection, fed by the
outcome of every attempt, plus the service's gate and active checks, kept across reloads.

What counts as a failure for the breakers is the `failure_on` list of the service's
`circuit_breaker`: "connect" (refused or timed-out connections), "timeout" (connect timeout,
no response head in time, a stalled response body) and "5xx" (a 5xx status, and what lb itself
answers 502: a reset before the response head, a protocol error; a reset mid-body too).
Outlier ejection counts them all: it is about consecutive gateway errors, as in Envoy.

One `circuit_breaker` section sets up both levels: each backend's breaker sees every attempt,
the service's own breaker (in its gate) sees each exchange once, after retries, as the
client saw it. So with retries a failing backend opens its own breaker, not the service's.

A backend whose breaker is open is not eligible. A timer half-opens it when its open time is
over; from then on `Service.pick` asks the breaker before each request (`allow`), so only the
probe quota gets through, and takes the backend out of rotation again while the probes are
out. Each probe outcome brings it back for the next probe, or closes or reopens the breaker.

Built with Cython (setup.py), `BackendBreaker` is an extension type typed by passive.pxd, so
the traffic observer records each attempt's outcome with a C call; `ServiceControl`, which
only acts on configuration and failures, stays a plain class.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ..config import model
from ..health.manager import ServiceHealth, settings_from
from ..proxy.failures import Failure, counted_by
from .breaker import HALF_OPEN, OPEN, Breaker, BreakerSettings
from .gates import ServiceGate, breaker_settings
from .outlier import OutlierDetector

Clock = Callable[[], float]


class BackendBreaker(Breaker):
    """`backend.breaker`: a Breaker whose transitions update the backend's eligibility."""

    __slots__ = ("_timer", "backend", "clock", "loop", "service")

    def __init__(
        self,
        settings: BreakerSettings,
        service: Any,
        backend: Any,
        clock: Clock,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(settings, on_transition=self._moved)
        self.service = service
        self.backend = backend
        self.clock = clock
        self.loop = loop
        self._timer: asyncio.TimerHandle | None = None

    def allow(self, now: float) -> bool:
        # Breaker.allow named, not super(): compiled, a cpdef method has no __class__ cell.
        if Breaker.allow(self, now):
            return True
        if self.state == HALF_OPEN and self._timer is None:
            # Out of rotation while its probes are out; look again at the probe deadline, so
            # a probe that never reports (its client left) cannot keep it out for good.
            self._timer = self.loop.call_later(max(0.0, self.probe_deadline - now), self._wake)
        return False

    def outcome(self, ok: bool, now: float) -> None:
        probing = self.state == HALF_OPEN
        self.record(ok, now)
        if probing and self.state == HALF_OPEN:
            self._refresh(now)  # a probe slot came free

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _moved(self, old: str, new: str) -> None:
        self.cancel()
        now = self.clock()
        if new == OPEN:
            self._timer = self.loop.call_later(max(0.0, self.open_until - now), self._wake)
        self._refresh(now)

    def _wake(self) -> None:
        self._timer = None
        now = self.clock()
        if self.state != OPEN:
            self._refresh(now)
        elif not self.half_open(now):  # woke a hair early
            self._timer = self.loop.call_later(max(0.0, self.open_until - now), self._wake)

    def _refresh(self, now: float) -> None:
        b = self.backend
        if b.breaker is self and not b.removed:
            self.service.refresh(b, now)


class ServiceControl:
    """Everything traffic control attaches to one service; lives as long as the service."""

    def __init__(self, service: Any, clock: Clock, loop: asyncio.AbstractEventLoop) -> None:
        self.service = service
        self.clock = clock
        self.loop = loop
        self.gate: ServiceGate | None = None
        self.breaker_settings: BreakerSettings | None = None
        self.failure_kinds: frozenset[Failure] = frozenset()
        self.outlier: OutlierDetector | None = None
        self.health: ServiceHealth | None = None
        self._tick_timer: asyncio.TimerHandle | None = None
        service.on_change.append(self.sync)

    @property
    def active(self) -> bool:
        """Whether outcomes matter to this service."""
        return self.gate is not None or self.outlier is not None

    # -- configuration ----------------------------------------------------------------------------
    def configure(self, cfg: model.Service, tls: Any) -> None:
        svc = self.service
        cb = cfg.circuit_breaker
        if cb is None:
            self.gate = None
        elif self.gate is None:
            self.gate = ServiceGate(svc, cb, self.clock)
        else:
            self.gate.configure(cb)
        svc.gate = self.gate
        svc.caps = self.gate.caps if self.gate is not None else None
        svc.breaker = self.gate.breaker if self.gate is not None else None
        self.failure_kinds = counted_by(cb.failure_on) if cb is not None else frozenset()
        settings = breaker_settings(cb) if cb is not None else None
        if settings != self.breaker_settings:
            self.breaker_settings = settings
            self._replace_breakers()
        self._configure_outlier(cfg.outlier_detection)
        svc.outlier = self.outlier
        if cfg.health_check is None:
            health, self.health = self.health, None  # first: stop() refreshes, refresh syncs
            if health is not None:
                health.stop(forget=True)
        elif self.health is None:
            self.health = ServiceHealth(svc, settings_from(cfg.health_check), tls)
        else:
            self.health.configure(settings_from(cfg.health_check), tls)
        self.sync(svc)

    def _replace_breakers(self) -> None:
        """Changed breaker settings start every backend afresh, closed."""
        svc = self.service
        now = self.clock()
        for b in list(svc.backends.values()):
            old = b.breaker
            if old is None:
                continue
            old.cancel()
            b.breaker = None
            if old.state == OPEN and not b.removed:
                svc.refresh(b, now)

    def _configure_outlier(self, cfg: model.OutlierDetection | None) -> None:
        det = self.outlier
        if cfg is None:
            if det is not None:
                self.outlier = None
                self._cancel_tick()
                now = self.clock()
                for b in list(det.ejected):
                    b.ejected_until = 0.0
                    if not b.removed:
                        self.service.refresh(b, now)
            return
        if det is None:
            self.outlier = OutlierDetector(
                cfg.consecutive_errors, cfg.base_ejection, cfg.max_ejection_percent,
                cfg.max_ejection,
            )  # fmt: skip
            return
        # Settings change in place: who is ejected, and how often, is kept.
        det.consecutive_errors = cfg.consecutive_errors
        det.base_ejection = cfg.base_ejection
        det.max_ejection_percent = cfg.max_ejection_percent
        det.max_ejection = max(cfg.max_ejection, cfg.base_ejection)

    def sync(self, svc: Any) -> None:
        """`Service.on_change`: equip backends that are new (static reload or discovery)."""
        settings = self.breaker_settings
        if settings is not None:
            for b in svc.backends.values():
                if b.breaker is None and not b.removed:
                    b.breaker = BackendBreaker(settings, svc, b, self.clock, self.loop)
        if self.health is not None:
            self.health.sync()
        if self.outlier is not None:
            self.outlier.set_backends(b for b in svc.backends.values() if not b.removed)

    def close(self, *, forget: bool) -> None:
        """Stop timers and checkers: the service is gone (`forget`) or lb is stopping."""
        svc = self.service
        if self.sync in svc.on_change:
            svc.on_change.remove(self.sync)
        self._cancel_tick()
        for b in svc.backends.values():
            if b.breaker is not None:
                b.breaker.cancel()
        if self.health is not None:
            self.health.stop(forget=forget)

    # -- outcomes ---------------------------------------------------------------------------------
    def failed(self, b: Any, failure: Failure, now: float) -> None:
        breaker = b.breaker
        if breaker is not None:
            breaker.outcome(failure not in self.failure_kinds, now)
        det = self.outlier
        if det is not None:
            self._tick(now)  # returns expired ejections and forgives old ones first
            if det.record(b, False, now):
                b.ejected_until = det.ejected_until(b)
                self.service.refresh(b, now)
                self._schedule_tick(now)

    # -- ejection timer ---------------------------------------------------------------------------
    def _tick(self, now: float) -> None:
        det = self.outlier
        if det is None:
            return
        for b in det.tick(now):
            b.ejected_until = 0.0
            if not b.removed:
                self.service.refresh(b, now)

    def _schedule_tick(self, now: float) -> None:
        self._cancel_tick()
        det = self.outlier
        if det is not None and det.ejected:
            due = min(det.ejected.values())
            self._tick_timer = self.loop.call_later(max(0.0, due - now), self._on_tick)

    def _on_tick(self) -> None:
        self._tick_timer = None
        now = self.clock()
        self._tick(now)
        self._schedule_tick(now)

    def _cancel_tick(self) -> None:
        if self._tick_timer is not None:
            self._tick_timer.cancel()
            self._tick_timer = None
