"""Active checks for one service's backends, kept in step with its backend set and reloads.

Every backend that is in the service (static, or announced by discovery) has one checker in
`backend.checker`; a backend that leaves has its checker cancelled by `Service._retire`. A
reload that keeps a backend keeps its checker, its rise/fall counters and its verdict, and
only hands it the new settings (Traefik restarts its checkers on every reload).
"""

from __future__ import annotations

import functools
import ssl
from typing import Any

from ..config import model
from .active import ActiveChecker, HealthCheckSettings


def settings_from(cfg: model.HealthCheck) -> HealthCheckSettings:
    return HealthCheckSettings(
        path=cfg.path,
        type=cfg.type,
        expected=frozenset(cfg.expected_statuses),
        interval=cfg.interval,
        timeout=cfg.timeout,
        rise=cfg.rise,
        fall=cfg.fall,
        jitter=cfg.jitter,
        host=cfg.host,
        grpc_service=cfg.grpc_service or "",
    )


class ServiceHealth:
    def __init__(
        self, service: Any, settings: HealthCheckSettings, tls: ssl.SSLContext | None
    ) -> None:
        self.service = service
        self.settings = settings
        self.tls = tls

    def configure(self, settings: HealthCheckSettings, tls: ssl.SSLContext | None) -> None:
        """New settings for running checkers; the next probe of each uses them."""
        if settings == self.settings and tls is self.tls:
            return
        self.settings = settings
        self.tls = tls
        for b in self.service.backends.values():
            if b.checker is not None:
                b.checker.tls_context = tls
                b.checker.update(settings)

    def sync(self) -> None:
        """Start a checker for each backend that has none (new, or back before it drained)."""
        for b in self.service.backends.values():
            if b.checker is None and not b.removed:
                checker = ActiveChecker(
                    b.host,
                    b.port,
                    self.settings,
                    functools.partial(self._changed, b),
                    tls_context=self.tls,
                )
                b.checker = checker
                checker.spawn()

    def stop(self, *, forget: bool) -> None:
        """Cancel every checker; with `forget` (checks removed from the config) their verdicts
        go too, so a backend they had taken down takes traffic again."""
        for b in self.service.backends.values():
            if b.checker is None:
                continue
            b.checker.cancel()
            b.checker = None
            if forget:
                down = not b.check_ok
                b.check_ok = True
                b.check_reason = ""
                if down:
                    self.service.refresh(b)

    def _changed(self, b: Any, healthy: bool, reason: str) -> None:
        if b.removed:
            return
        b.check_ok = healthy
        b.check_reason = reason
        self.service.refresh(b)
