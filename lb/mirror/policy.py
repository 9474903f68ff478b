"""One route's `mirror` settings, compiled: `Route.mirror`, asked once per forwarded request.

Sampling is a running sum (Bresenham's): `percent` is added per request and a copy made each
time the sum passes 100, so 10% copies exactly every tenth request, with no random draw. A
copy is skipped, and counted, when `max_in_flight` copies are under way ("skipped_busy") or
its body is over `max_body` (a Content-Length says so at once; a chunked body once it has
grown past it). The in-flight slot is taken as the copy is sent, when its request is whole,
and given back when the shadow has answered, failed or timed out (sender.py).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ..config.shape_model import Mirror
from ..observe.metrics import Counters
from . import metrics
from .copy import MirrorCopy, request_head
from .sender import deliver

if TYPE_CHECKING:
    from ..proxy.exchange import Exchange
    from ..runtime import Runtime


class MirrorPolicy:
    __slots__ = (
        "_counts", "_sum", "_tasks", "cfg", "in_flight", "max_body", "max_in_flight",
        "percent", "route", "runtime",
    )  # fmt: skip

    def __init__(self, cfg: Mirror, route: str, runtime: Runtime, counters: Counters) -> None:
        self.cfg = cfg
        self.route = route
        self.runtime = runtime
        self.percent = cfg.percent
        self.max_body = cfg.max_body
        self.max_in_flight = cfg.max_in_flight
        self.in_flight = 0
        self._sum = 0.0
        self._counts = counters[metrics.REQUESTS]
        self._tasks: set[asyncio.Task[None]] = set()  # referenced until done

    def copy(self, ex: Exchange) -> None:
        """The exchange is about to be forwarded: copy it, or not; with a body still to come,
        `ex.mirror` takes it (`MirrorCopy.body`, `end`). Upgrades (WebSocket) are not
        copied: a shadow cannot share the client's connection."""
        if ex.upgrade:
            return
        self._sum += self.percent
        if self._sum < 100.0:
            return
        self._sum -= 100.0
        if self.in_flight >= self.max_in_flight:
            self.count("skipped_busy")
            return
        length = ex.info.content_length
        if ex.body_bytes > self.max_body or (length is not None and length > self.max_body):
            self.skipped_body()
            return
        # Body bytes that came before the request was forwarded wait in body_buf, all of them:
        # nothing has gone to a backend yet.
        copy = MirrorCopy(self, request_head(ex), list(ex.body_buf), ex.body_bytes)
        if ex.req_done:
            copy.send()
        else:
            ex.mirror = copy

    def send(self, request: bytes) -> None:
        if self.in_flight >= self.max_in_flight:
            self.count("skipped_busy")
            return
        self.in_flight += 1
        task = self.runtime.loop.create_task(deliver(self, request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def skipped_body(self) -> None:
        self.count("skipped_body")

    def count(self, result: str) -> None:
        self._counts[(self.route, result)] += 1
