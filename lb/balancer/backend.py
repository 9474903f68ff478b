"""A backend: where it is, its idle connection pool, and the inputs that decide its state."""

from typing import TYPE_CHECKING, Any

from ..traffic.breaker import OPEN

if TYPE_CHECKING:
    from ..health.active import ActiveChecker
    from ..observe.recorder import BackendStats
    from ..proxy.upstream import UpstreamConnection
    from ..traffic.breaker import Breaker
    from .service import Service


class Backend:
    """State has one owner per input (discovery, active checks, outlier ejection, breaker,
    operator drain); `state()` merges them into one answer with its reason."""

    __slots__ = (
        "address",
        "breaker",
        "check_ok",
        "check_reason",
        "checker",
        "drained",
        "ejected_until",
        "failures",
        "h2",
        "host",
        "idle",
        "name",
        "open_conns",
        "port",
        "removed",
        "requests",
        "selected",
        "service",
        "slot",
        "stats",
        "weight",
    )

    def __init__(self, service: "Service", host: str, port: int, weight: int, slot: int) -> None:
        self.service = service
        self.host = host
        self.port = port
        self.address = (host, port)
        self.name = f"{host}:{port}"
        self.weight = weight
        self.slot = slot
        self.idle: list[UpstreamConnection] = []  # pooled keep-alive connections, newest last
        self.open_conns = 0
        self.h2: Any = None  # the HTTP/2 connection pool (lb.proxy.http2.upstream.H2Pool)
        self.drained = False  # operator drain (admin API)
        self.removed = False  # gone from config/discovery; kept until in-flight reaches 0
        self.check_ok = True
        self.check_reason = ""
        self.checker: ActiveChecker | None = None
        self.ejected_until = 0.0
        self.breaker: Breaker | None = None
        self.requests = 0
        self.failures = 0
        self.selected = 0
        self.stats: BackendStats | None = None

    def eligible(self, now: float) -> bool:
        return (
            not self.drained
            and not self.removed
            and self.check_ok
            and self.ejected_until <= now
            and (self.breaker is None or self.breaker.state != OPEN)
        )

    def state(self, now: float) -> tuple[str, str]:
        """(state, reason) as operators see it."""
        if self.removed:
            return "draining", "removed"
        if self.drained or self.weight == 0:
            return "draining", "draining"
        if not self.check_ok:
            return "down", self.check_reason or "active-check-failed"
        if self.ejected_until > now:
            return "down", "ejected"
        if self.breaker is not None and self.breaker.state == OPEN:
            return "down", "circuit-open"
        return "up", ""

    def close_idle(self) -> None:
        idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()
        if self.h2 is not None:
            for h2conn in list(self.h2.conns):
                if not h2conn.streams:
                    h2conn.close()
