"""Observability: Prometheus metrics and access logs, plugged into the runtime's observers.

`install(server)` runs once in `Server.start()`, after the admin server is created. It adds an
`Observability` extension that follows reloads: the metrics observer is attached only while
`metrics.enabled` (so a metrics-off lb pays nothing per request), and the access log only while
some listener logs. `/metrics` always answers: with metrics off it carries the build, config
and process families.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.process_collector import ProcessCollector

from ..runtime import set_hook
from .accesslog import AccessLog
from .exposition import Exposition
from .metrics import Metrics
from .series import SeriesSampler

__all__ = ["Observability", "install"]


class Observability:
    def __init__(self, server: Any) -> None:
        self.server = server
        runtime = server.runtime
        self.started_at = time.time()
        self.metrics = Metrics(runtime)
        self.series = SeriesSampler(self.metrics)  # the dashboard's charts (series.py)
        self.access_log = AccessLog(server.loop)
        # A registry of its own: several servers in one process (tests) must not collide.
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(
            Exposition(
                server, self.metrics, enabled=self.metrics_enabled, extra=[self.access_log.families]
            )
        )
        ProcessCollector(namespace="lb", registry=self.registry)
        self._apply()

    def metrics_enabled(self) -> bool:
        return bool(self.server.runtime.config.metrics.enabled)

    def _apply(self) -> None:
        runtime = self.server.runtime
        runtime.observe(self.metrics, self.metrics_enabled())
        set_hook(runtime.failure_hooks, self.metrics, self.metrics_enabled())
        for sink in self.access_log.configure(runtime.config.listeners):
            self.server.loop.create_task(sink.close())
        runtime.observe(self.access_log, self.access_log.active)
        set_hook(runtime.tcp_observers, self.access_log, self.access_log.active)

    # -- the Server extension interface ------------------------------------------------------------
    async def start(self) -> None:
        """Observers are attached by the constructor; the series sampler starts here."""
        self.series.start()

    async def reconfigure(self) -> None:
        self._apply()

    async def stop(self) -> None:
        """Called before the drain: keep logging the requests that finish during it;
        `close` (from the admin server's stop, the last step of shutdown) flushes."""

    async def close(self) -> None:
        await self.series.stop()
        runtime = self.server.runtime
        runtime.observe(self.access_log, False)
        set_hook(runtime.tcp_observers, self.access_log, False)
        await self.access_log.close()


def install(server: Any) -> Observability:
    obs = Observability(server)
    server.extensions.append(obs)
    server.admin.observe = obs
    server.admin.on_stop.append(obs.close)
    return obs
