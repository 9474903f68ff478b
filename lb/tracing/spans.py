"""The loop's half of span export: an `Observer` that keeps what a sampled exchange's span
needs, as a plain tuple, in a bounded queue for the exporter thread (export.py).

No OpenTelemetry object is made on the loop: the exporter builds the spans from these tuples.
Compiled (spans.pxd), an unsampled exchange costs a call and two field reads here. A full queue
(the collector is slow or down and the exporter is retrying) drops the span and counts it.
"""

from __future__ import annotations

from collections import deque
from time import monotonic
from typing import TYPE_CHECKING, Any

from ..proxy.failures import CLIENT_GONE

if TYPE_CHECKING:
    from ..hooks import ExchangeView
    from .context import TraceContext

# What the exporter reads of one span, in this order (export.py unpacks it).
SpanRecord = tuple[
    "TraceContext",  # ids, parent, tracestate
    float,  # start, monotonic seconds (the exchange's t0)
    float,  # end, monotonic seconds
    bytes,  # method
    str,  # path, without the query
    bytes | None,  # Host
    str | None,  # route name
    str | None,  # service name
    str,  # backend address of the last attempt ("" without one)
    int,  # status sent (0: none)
    int,  # retries
    str | None,  # failure label, when the exchange failed
    bool,  # an error for the span: a 5xx or a failure not the client's doing
    bytes,  # client address
    str | None,  # protocol as the access log spells it (HTTP/2 sides say "HTTP/2")
    str | None,  # grpc-status sent to the client
]


class SpanQueue:
    """`Runtime.observers` member while tracing is on."""

    # Compiled, an extension type (spans.pxd); this names the same fields for the twin.
    __slots__ = ("batch", "dropped", "max_queue", "spans", "wake")

    def __init__(self, max_queue: int, batch: int, dropped: dict[tuple[str, ...], int]) -> None:
        self.spans: deque[SpanRecord] = deque()  # appended here, popped by the exporter thread
        self.max_queue = max_queue
        self.batch = batch
        self.dropped = dropped  # runtime.counters[SPANS], bumped under ("dropped",) only here
        self.wake: Any = None  # set by the exporter: called when a full batch is waiting

    def record(self, ex: ExchangeView, ok: bool) -> None:
        info = ex.info
        trace = info.trace
        if trace is None or not trace.sampled:
            return
        spans = self.spans
        if len(spans) >= self.max_queue:
            self.dropped[("dropped",)] += 1
            return
        route, svc, failure, client = ex.route, ex.service, ex.failure, ex.client
        status = ex.status
        spans.append(
            (
                trace,
                ex.t0,
                monotonic(),
                ex.method,
                ex.path,
                info.host,
                route.name if route is not None else None,
                svc.name if svc is not None else None,
                ex.upstream_name,
                status,
                ex.retries,
                failure.label if failure is not None else None,
                status >= 500 or (failure is not None and failure is not CLIENT_GONE),
                client.peer_ip,
                getattr(client, "protocol", None) or ("HTTP/1.0" if ex.http10 else "HTTP/1.1"),
                client.grpc_status,
            )
        )
        if len(spans) >= self.batch and self.wake is not None:
            self.wake()

    def refusal(self, conn: Any, status: int) -> None:
        """Refused before an exchange began (unparseable, too large): no trace context."""
