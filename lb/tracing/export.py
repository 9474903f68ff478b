"""The exporter thread: the queued span tuples (spans.py) are encoded (otlp.py) and posted to
the collector in batches over OTLP/HTTP, protobuf bodies, gzip when asked.

The thread wakes when a full batch waits (`SpanQueue.wake`) or `interval` after it last
exported, whichever comes first. A batch is retried as the OTLP/HTTP spec asks, on connection
errors and on 429, 502, 503 and 504, with exponential backoff, within `otlp.timeout`; then, or on
any other answer, its spans count as failed and nothing else happens: the loop never waits on
the exporter. On close the thread exports what is left, for at most one more `otlp.timeout`.
"""

from __future__ import annotations

import gzip
import logging
import threading
import time
from typing import TYPE_CHECKING

import requests
from opentelemetry.sdk.resources import Resource

from .. import __version__
from .otlp import Encoder

if TYPE_CHECKING:
    from ..config.tracing_model import Tracing
    from .spans import SpanQueue, SpanRecord

log = logging.getLogger("lb.tracing")
RETRYABLE = frozenset({429, 502, 503, 504})
FIRST_BACKOFF = 0.25  # seconds; doubled on each retry


class Exporter:
    def __init__(self, cfg: Tracing, queue: SpanQueue, counts: dict[tuple[str, ...], int]) -> None:
        otlp = cfg.otlp
        # The SDK's resource: its telemetry.sdk.* attributes and OTEL_RESOURCE_ATTRIBUTES.
        resource = Resource.create(
            {"service.name": cfg.service_name, "service.version": __version__}
        )
        self._encoder = Encoder(dict(resource.attributes), __version__)  # type: ignore[arg-type]
        self._endpoint = otlp.endpoint
        self._gzip = otlp.compression
        self._session = requests.Session()
        self._session.headers.update(otlp.headers)
        self._session.headers["Content-Type"] = "application/x-protobuf"
        if otlp.compression:
            self._session.headers["Content-Encoding"] = "gzip"
        self._queue = queue
        self._batch = cfg.batch
        self._interval = cfg.interval
        self._timeout = otlp.timeout
        self._counts = counts  # runtime.counters[SPANS]: ("exported",) and ("failed",) only here
        self._wake = threading.Event()
        self._stop = threading.Event()  # cuts a backoff short at close
        self._closing = False
        self._last_error = ""
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
        self._stop.set()  # a retry still waiting gives up
        self._thread.join(1.0)
        self._session.close()

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
            offset = time.time_ns() - time.monotonic_ns()  # the loop's clock to Unix time
            body = self._encoder.request([self._encoder.span(r, offset) for r in batch])
            ok = self._post(gzip.compress(body, 5) if self._gzip else body)
        except Exception:
            log.exception("tracing: encoding %d spans failed", len(batch))
            ok = False
        self._counts[("exported",) if ok else ("failed",)] += len(batch)
        return True

    def _post(self, body: bytes) -> bool:
        deadline = time.monotonic() + self._timeout
        backoff = FIRST_BACKOFF
        while True:
            left = deadline - time.monotonic()
            try:
                resp = self._session.post(self._endpoint, data=body, timeout=max(left, 0.001))
                if resp.ok:
                    self._recovered()
                    return True
                error, retry = f"HTTP {resp.status_code}", resp.status_code in RETRYABLE
            except requests.RequestException as exc:
                error = f"{type(exc).__name__}: {exc}"
                retry = isinstance(exc, requests.ConnectionError | requests.Timeout)
            if not retry or backoff >= deadline - time.monotonic() or self._stop.wait(backoff):
                self._failed(error)
                return False
            backoff *= 2

    def _failed(self, error: str) -> None:
        if error != self._last_error:  # one line per distinct error, not per batch
            self._last_error = error
            log.warning(
                "tracing: export to %s failed (%s); its spans count as failed",
                self._endpoint,
                error,
            )

    def _recovered(self) -> None:
        if self._last_error:
            self._last_error = ""
            log.info("tracing: exporting to %s again", self._endpoint)
