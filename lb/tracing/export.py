"""The exporter thread: the queued span tuples (spans.py) become OpenTelemetry SDK
`ReadableSpan`s and go to the collector in batches, through the SDK's OTLP/HTTP exporter.

The thread wakes when a full batch waits (`SpanQueue.wake`) or `interval` after it last
exported, whichever comes first. An export that fails, however it fails (collector down,
refusing, slow past `otlp.timeout`, after the SDK's own retries of what is worth retrying),
counts its spans as failed and nothing else happens: the loop never waits on it. On close the
thread exports what is left, for at most one more `otlp.timeout`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags, TraceState
from opentelemetry.trace.status import Status, StatusCode

from .. import __version__

if TYPE_CHECKING:
    from ..config.tracing_model import Tracing
    from .spans import SpanQueue, SpanRecord

log = logging.getLogger("lb.tracing")
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_UNSET = Status(StatusCode.UNSET)
_VERSIONS = {"2.0": "2", "3.0": "3"}


class Exporter:
    def __init__(self, cfg: Tracing, queue: SpanQueue, counts: dict[tuple[str, ...], int]) -> None:
        otlp = cfg.otlp
        self._otlp = OTLPSpanExporter(
            endpoint=otlp.endpoint,
            headers=dict(otlp.headers),
            timeout=otlp.timeout,
            compression=Compression.Gzip if otlp.compression else Compression.NoCompression,
        )
        # Resource.create adds the SDK's own attributes and OTEL_RESOURCE_ATTRIBUTES.
        self._resource = Resource.create(
            {"service.name": cfg.service_name, "service.version": __version__}
        )
        self._scope = InstrumentationScope("lb", __version__)
        self._queue = queue
        self._batch = cfg.batch
        self._interval = cfg.interval
        self._timeout = otlp.timeout
        self._counts = counts  # runtime.counters[SPANS]: ("exported",) and ("failed",) only here
        self._wake = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="lb-tracing-export", daemon=True)

    def start(self) -> None:
        self._queue.wake = self._wake.set
        self._thread.start()

    def close(self) -> None:
        """Blocking (run it off the loop): export what is queued, then stop the thread."""
        self._queue.wake = None
        self._closing = True
        self._wake.set()
        self._thread.join(self._timeout + 1.0)
        self._otlp.shutdown()  # ends a retry still waiting, if the join gave up on it
        self._thread.join(1.0)

    # -- in the thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._closing:
            self._wake.wait(self._interval)
            self._wake.clear()
            while self._send() and not self._closing:  # all that is queued, batch by batch
                pass
        while self._send():
            pass

    def _send(self) -> bool:
        """One batch off the queue to the collector; False when the queue was empty."""
        queue = self._queue.spans
        batch: list[SpanRecord] = []
        while queue and len(batch) < self._batch:
            batch.append(queue.popleft())
        if not batch:
            return False
        try:
            offset = time.time_ns() - time.monotonic_ns()  # the loop's clock to wall time
            result = self._otlp.export([self._span(r, offset) for r in batch])
        except Exception:
            log.exception("tracing: building or exporting %d spans failed", len(batch))
            result = SpanExportResult.FAILURE
        key = ("exported",) if result is SpanExportResult.SUCCESS else ("failed",)
        self._counts[key] += len(batch)
        return True

    def _span(self, r: SpanRecord, offset: int) -> ReadableSpan:
        (trace, t0, t1, method, path, host, route, service, backend, status, retries,
         failure, error, client, protocol, grpc_status) = r  # fmt: skip
        trace_id = int(trace.trace_id, 16)
        state = None
        if trace.tracestate is not None:  # the client's, as forwarded; invalid entries dropped
            state = TraceState.from_header([trace.tracestate.decode("latin-1")])
        context = SpanContext(trace_id, int(trace.span_id, 16), False, _SAMPLED, state)
        parent = None
        if trace.parent_id is not None:
            parent = SpanContext(trace_id, int(trace.parent_id, 16), True, _SAMPLED, state)
        verb = method.decode("latin-1")
        attributes: dict[str, str | int] = {
            "http.request.method": verb,
            "url.path": path,
            "client.address": client.decode("latin-1"),
            "lb.retries": retries,
        }
        if host is not None:
            _address(attributes, "server", host.decode("latin-1"))
        if protocol is not None:
            version = protocol.rpartition("/")[2]  # "1.1", and "2" as conventions spell it
            attributes["network.protocol.version"] = _VERSIONS.get(version, version)
        if status:
            attributes["http.response.status_code"] = status
        if route is not None:
            attributes["lb.route"] = route
        if service is not None:
            attributes["lb.service"] = service
        if backend:
            attributes["lb.backend"] = backend
            _address(attributes, "network.peer", backend)
        if failure is not None:
            attributes["lb.failure"] = failure
        if grpc_status is not None and grpc_status.isdigit():
            attributes["rpc.grpc.status_code"] = int(grpc_status)
        return ReadableSpan(
            name=f"{verb} {route}" if route is not None else verb,
            context=context,
            parent=parent,
            resource=self._resource,
            attributes=attributes,
            kind=SpanKind.SERVER,
            status=Status(StatusCode.ERROR, failure or str(status)) if error else _UNSET,
            start_time=int(t0 * 1e9) + offset,
            end_time=int(t1 * 1e9) + offset,
            instrumentation_scope=self._scope,
        )


def _address(attributes: dict[str, str | int], prefix: str, authority: str) -> None:
    """`host[:port]` as semantic conventions' `<prefix>.address` and `<prefix>.port`."""
    host, sep, port = authority.rpartition(":")
    if sep and port.isdigit():
        attributes[prefix + ".port"] = int(port)
    else:
        host = authority
    attributes[prefix + ".address"] = host.strip("[]")
