"""A service: its backends, updated in place, and the picker that chooses among them."""

import time
from collections.abc import Callable, Iterable, Sequence
from time import monotonic
from typing import TYPE_CHECKING

from ..config import model
from ..proxy.failures import BAD_STATUS, Failure
from ..shm import attach_backend
from ..traffic.breaker import CLOSED
from .backend import Backend
from .picker import Picker

if TYPE_CHECKING:
    from ..discovery.consul import ServiceWatch
    from ..hooks import Gate
    from ..traffic.breaker import Breaker, Caps
    from ..traffic.outlier import OutlierDetector
    from .balance import Balance


class Service:
    # Compiled, an extension type (service.pxd); this names the same fields for the twin.
    # fmt: off
    __slots__ = (
        "backends", "balance", "breaker", "by_slot", "caps", "clock", "config", "discovery",
        "fallback", "gate", "h2", "head_timeout", "idle_timeout", "least_latency", "max_idle",
        "name", "on_change", "outlier", "panic", "penalty", "picker",
    )
    # fmt: on

    def __init__(
        self, name: str, config: model.Service, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.name = name
        self.picker = Picker()
        self.configure(config)
        self.clock = clock
        self.backends: dict[tuple[str, int], Backend] = {}
        self.by_slot: list[Backend | None] = []
        self.panic = False
        self.gate: Gate | None = None  # caps + service breaker (traffic control)
        # Traffic control's state, read by metrics and the admin API: the gate's caps and
        # breaker (None without circuit_breaker), the outlier detector.
        self.caps: Caps | None = None
        self.breaker: Breaker | None = None
        self.outlier: OutlierDetector | None = None
        self.discovery: ServiceWatch | None = None  # the watch feeding it, when not static
        self.fallback: Service | None = None
        self.on_change: list[Callable[[Service], None]] = []
        # Consistent hashing and/or affinity (lb/balancer/balance.py); None: least connections
        self.balance: Balance | None = None

    def configure(self, config: model.Service) -> None:
        """A (new) config; what the request path reads of it, as plain attributes."""
        self.config = config
        self.head_timeout = float(config.timeouts.response_head)
        self.idle_timeout = float(config.timeouts.idle)
        self.max_idle = config.pool.max_idle
        self.h2 = config.protocol == "h2"  # HTTP/2 to the backends (lb/proxy/http2/upstream.py)
        balance = config.balance
        self.least_latency = balance.mode == "least_latency"
        self.penalty = float(balance.penalty)
        self.picker.set_latency(float(balance.decay) if self.least_latency else 0.0, self.penalty)

    # -- membership -----------------------------------------------------------------------------
    def update(self, specs: Iterable[tuple[str, int, int]]) -> None:
        """Apply a backend set in place: survivors keep counts and pools, leavers drain."""
        now = self.clock()
        wanted: dict[tuple[str, int], int] = {}
        for host, port, weight in specs:
            wanted[(host, port)] = weight
        for addr, b in list(self.backends.items()):
            if addr not in wanted:
                self._retire(b)
        for addr, weight in wanted.items():
            b = self.backends.get(addr)
            if b is None:
                slot = self.picker.add(weight, now, self.config.slow_start)
                attach_backend(self.picker, slot, self.name, addr)  # no-op unless --workers
                b = Backend(self, addr[0], addr[1], weight, slot)
                self.backends[addr] = b
                if slot >= len(self.by_slot):
                    self.by_slot.extend([None] * (slot + 1 - len(self.by_slot)))
                self.by_slot[slot] = b
            elif b.removed:
                # Back before it finished draining: serve it again, slow start as a newcomer.
                b.removed = False
                b.weight = weight
                self.picker.set_weight(b.slot, weight)
                self.picker.restart_slow_start(b.slot, now, self.config.slow_start)
            elif b.weight != weight:
                b.weight = weight
                self.picker.set_weight(b.slot, weight)
            self.refresh(b, now)
        if self.balance is not None:
            self.balance.rebuild(now)
        self._changed()

    def _retire(self, b: Backend) -> None:
        b.removed = True
        b.close_idle()
        if b.checker is not None:
            b.checker.cancel()
            b.checker = None
        if self.picker.in_flight(b.slot) == 0:
            self._drop(b)
        else:
            self.picker.set_weight(b.slot, 0)

    def _drop(self, b: Backend) -> None:
        self.picker.remove(b.slot)
        self.by_slot[b.slot] = None
        if self.backends.get(b.address) is b:
            del self.backends[b.address]

    def _changed(self) -> None:
        live = [
            b for b in self.backends.values() if not b.removed and b.weight > 0 and not b.drained
        ]
        self.panic = panic(self.picker.eligible_count(), len(live), self.config.panic_threshold)
        for cb in self.on_change:
            cb(self)

    def refresh(self, b: Backend, now: float | None = None) -> None:
        """Recompute a backend's eligibility after one of its inputs changed."""
        now = self.clock() if now is None else now
        eligible = b.eligible(now)
        self.picker.set_eligible(b.slot, eligible, now, self.config.slow_start if eligible else 0.0)
        if self.balance is not None:
            self.balance.refreshed(b, eligible, now)
        self._changed()

    def set_drained(self, b: Backend, drained: bool) -> None:
        b.drained = drained
        if drained:
            self.picker.set_weight(b.slot, 0)
        else:
            self.picker.set_weight(b.slot, b.weight)
        self.refresh(b)

    # -- the request path -----------------------------------------------------------------------
    def pick(self, now: float, exclude: Sequence[Backend] = ()) -> Backend | None:
        """Choose and take a backend (in-flight + 1); None when nothing can serve. Backends in
        `exclude` (those a retry already tried) are passed over while any other can serve."""
        picker = self.picker
        while True:
            skip = [b for b in exclude if not b.removed] if len(self.backends) > 1 else []
            if skip:
                if self.panic:
                    # Panic picks regardless of eligibility: the exclusion takes the weight
                    # away for this one pick instead.
                    for b in skip:
                        picker.set_weight(b.slot, 0)
                    slot = picker.pick(now, True)
                    for b in skip:
                        picker.set_weight(b.slot, 0 if b.drained else b.weight)
                else:
                    for b in skip:
                        picker.set_eligible(b.slot, False, now, 0.0)
                    slot = picker.pick(now, False)
                    for b in skip:
                        picker.set_eligible(b.slot, b.eligible(now), now, 0.0)
                if slot < 0:
                    slot = picker.pick(now, self.panic)
            else:
                slot = picker.pick(now, self.panic)
            if slot < 0:
                return None
            b = self.admit(slot, now)
            if b is not None:
                return b

    def admit(self, slot: int, now: float) -> Backend | None:
        """The backend in a slot the picker chose, unless its breaker refuses: one half-open
        with all its probes out gets no more requests until one reports (the breaker then
        refreshes it), so its slot is released and taken out of rotation; None then."""
        b = self.by_slot[slot]
        assert b is not None
        breaker = b.breaker
        if breaker is None or breaker.state == CLOSED or self.panic or breaker.allow(now):
            b.selected += 1
            return b
        self.picker.release(slot)
        self.picker.set_eligible(slot, False, now, 0.0)
        if self.balance is not None:
            self.balance.refused(slot)
        return None

    def release(self, b: Backend) -> None:
        """Give the slot back; exactly once per pick, however the exchange ended."""
        if self.picker.release(b.slot) == 0 and b.removed:
            self._drop(b)

    def in_flight(self, b: Backend) -> int:
        return self.picker.in_flight(b.slot)

    # -- least_latency's samples ------------------------------------------------------------------
    def answered(self, b: Backend, status: int, sent: float) -> None:
        """The response head of an attempt on `b`, sent at `sent` (monotonic), is in: in
        least_latency mode, the time since is its RTT sample; a 429 or 503 counts as the
        penalty (the backend is shedding load: its speed says nothing)."""
        if self.least_latency and b is not None:
            now = monotonic()
            rtt = self.penalty if status == 503 or status == 429 else now - sent
            self.picker.observe(b.slot, rtt, now)

    def failed(self, b: Backend, failure: Failure) -> None:
        """A failed attempt (Runtime.record_failure): in least_latency mode the penalty, for
        failures that judge the backend and had no response head (a retried status had one)."""
        if (
            self.least_latency
            and failure.breaker
            and failure is not BAD_STATUS
            and self.by_slot[b.slot] is b  # given back already: the slot may be another's now
        ):
            self.picker.observe(b.slot, self.penalty, monotonic())

    def latency(self, b: Backend) -> float | None:
        """The backend's RTT estimate now, in seconds (metrics); None: no sample, or not
        least_latency."""
        return self.picker.latency(b.slot, monotonic())


def panic(healthy: int, total: int, threshold_percent: float) -> bool:
    """Envoy's panic threshold: with fewer than this share of backends healthy, balance over
    all of them rather than overload the few left (0 = off)."""
    return total > 0 and healthy * 100.0 < threshold_percent * total


def static_specs(config: model.Service) -> list[tuple[str, int, int]]:
    return [(b.address[0], b.address[1], b.weight) for b in config.backends]
