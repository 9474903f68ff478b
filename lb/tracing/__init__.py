"""Tracing: W3C Trace Context on every request, OpenTelemetry spans for the sampled ones.

`install(server)` runs once in `Server.start()` and adds a `Tracing` extension that follows
reloads. With `tracing:` absent nothing of this package is on the request path:
`Runtime.tracer` is None (the client sides' one check) and no observer is attached; the
OpenTelemetry packages are not even imported. With it:

- context.py: `Runtime.tracer`, a `Propagator` the client sides hand each request head to;
- spans.py: a `SpanQueue` observer that queues the sampled exchanges' span fields;
- otlp.py: their encoding as an OTLP `ExportTraceServiceRequest` (opentelemetry-proto);
- export.py: an `Exporter` thread that encodes them and posts them over OTLP/HTTP.

`lb_tracing_spans_total{result}` counts the sampled spans: `exported`, `dropped` (the queue was
full) and `failed` (their export failed).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from ..observe.metrics import register_counter
from .context import Propagator
from .spans import SpanQueue

if TYPE_CHECKING:
    from ..config.tracing_model import Tracing as TracingConfig
    from .export import Exporter

__all__ = ["Tracing", "install"]

SPANS = "tracing_spans"
RESULTS = ("exported", "dropped", "failed")
register_counter(
    SPANS,
    "lb_tracing_spans_total",
    "Sampled spans by outcome: exported, dropped (the export queue was full) or failed.",
    ("result",),
)


def _export_settings(cfg: TracingConfig) -> tuple[Any, ...]:
    """What the queue and the exporter are built from: the rest (sampling) changes in place."""
    return (dataclasses.astuple(cfg.otlp), cfg.service_name, cfg.max_queue, cfg.batch, cfg.interval)


class Tracing:
    def __init__(self, server: Any) -> None:
        self.server = server
        self.cfg: TracingConfig | None = None
        self.queue: SpanQueue | None = None
        self.exporter: Exporter | None = None
        self.counts = server.runtime.counters[SPANS]
        for result in RESULTS:
            self.counts[(result,)] += 0  # exported as 0 from the start
        self._apply()

    def _apply(self) -> None:
        runtime = self.server.runtime
        cfg: TracingConfig | None = runtime.config.tracing
        if cfg == self.cfg:
            return
        old, self.cfg = self.cfg, cfg
        runtime.tracer = Propagator(cfg.sampling) if cfg is not None else None
        if cfg is not None and old is not None and _export_settings(cfg) == _export_settings(old):
            return  # only the sampling changed
        self._retire()
        if cfg is None:
            return
        from .export import Exporter  # OpenTelemetry is imported only once tracing is set

        self.queue = SpanQueue(cfg.max_queue, cfg.batch, self.counts)
        self.exporter = Exporter(cfg, self.queue, self.counts)
        self.exporter.start()
        runtime.observe(self.queue, True)

    def _retire(self) -> None:
        """Detach the queue and let its exporter send what it holds, off the loop."""
        if self.queue is not None:
            self.server.runtime.observe(self.queue, False)
        exporter, self.queue, self.exporter = self.exporter, None, None
        if exporter is not None:
            self.server.loop.run_in_executor(None, exporter.close)

    # -- the Server extension interface ------------------------------------------------------------
    async def start(self) -> None:
        """Nothing to start: the constructor attached what the config asks for."""

    async def reconfigure(self) -> None:
        self._apply()

    async def stop(self) -> None:
        """Before the drain: the requests that finish during it are still traced."""

    async def close(self) -> None:
        """After the drain (the admin server's stop): export what is queued, then stop."""
        self.server.runtime.tracer = None
        if self.queue is not None:
            self.server.runtime.observe(self.queue, False)
        exporter, self.queue, self.exporter, self.cfg = self.exporter, None, None, None
        if exporter is not None:
            await self.server.loop.run_in_executor(None, exporter.close)


def install(server: Any) -> Tracing:
    tracing = Tracing(server)
    server.extensions.append(tracing)
    server.admin.on_stop.append(tracing.close)
    return tracing
