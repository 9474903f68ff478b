"""The last 15 minutes of traffic per service and per backend, kept by lb itself for the
dashboard's charts (`GET /api/series`).

A background task samples the request-path counters (`recorder.py`) every `INTERVAL` seconds,
at wall-clock multiples of it (so that the workers of `lb run --workers N` sample the same
slots), and writes each series' increments into a fixed ring of `SLOTS` points: requests,
errors (what `lb_requests_total` and the breaker count as errors: 5xx and failed exchanges)
and the request-duration histogram's bucket counts, and beside them their rates and p50/p99,
computed once then. Nothing is added to the request path; `series_report.py` serves the ring.

Bounds: each service's first `BACKENDS_PER_SERVICE` backends with a metrics label (the order
lb first saw them) get a series of their own; the others, folded or beyond that count, share
one `other` series. At most `MAX_SERIES` series exist; a series whose service or backend has
been gone for a whole window is dropped. Memory: 4 bytes x `WIDTH` x `SLOTS` per series
plus 8 bytes x 4 x `SLOTS` (19 KiB in all), allocated when a series first has traffic.

Increments are taken per BackendStats object and per route histogram: a backend that leaves
(its counts go), a stats object that starts over (its service was removed and added again) or
a route a reload removed never yields a negative or a double-counted point.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from array import array
from collections.abc import Sequence
from typing import Any

from .recorder import BUCKETS, OTHER, BackendStats

log = logging.getLogger(__name__)

INTERVAL = 5.0
SLOTS = 180  # 15 minutes
WIDTH = 2 + len(BUCKETS) + 1  # requests, errors, one count per bucket (the last is +Inf)
BACKENDS_PER_SERVICE = 10
MAX_SERIES = 512

Key = tuple[str, str | None]  # (service, None) for a service, (service, backend label)
Row = list[int]
Values = tuple[float, float, float | None, float | None]


class Reading:
    """What one BackendStats object had counted at a sample: its request and error counts and
    each route's histogram (the object and a copy of its counts)."""

    __slots__ = ("errors", "histograms", "requests", "stats")

    def __init__(self, bs: BackendStats) -> None:
        self.stats = bs
        self.requests = bs.requests
        self.errors = bs.errors
        self.histograms = {route: (h, list(h.counts)) for route, h in bs.durations.items()}

    def since(self, before: Reading | None) -> Row:
        """The increments since `before`; all of it when `before` read another object (the
        stats started over). A route's histogram is compared with itself only: one that a
        reload removed just stops counting."""
        row = [0] * WIDTH
        if before is None or before.stats is not self.stats:
            before = None
        row[0] = self.requests - (before.requests if before else 0)
        row[1] = self.errors - (before.errors if before else 0)
        for route, (h, counts) in self.histograms.items():
            old = before.histograms.get(route) if before else None
            if old is not None and old[0] is h:
                for i, n in enumerate(counts):
                    row[2 + i] += n - old[1][i]
            else:
                for i, n in enumerate(counts):
                    row[2 + i] += n
        return row


def _add(into: Row, row: Row) -> None:
    for i, n in enumerate(row):
        into[i] += n


def quantile(buckets: Sequence[int], q: float) -> float | None:
    """Linear interpolation inside the bucket holding the q-th request (as Prometheus's
    histogram_quantile does); the +Inf bucket answers the highest finite bound."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(buckets):
        if n and seen + n >= rank:
            if i == len(BUCKETS):
                return BUCKETS[-1]
            lower = BUCKETS[i - 1] if i else 0.0
            return lower + (BUCKETS[i] - lower) * (rank - seen) / n
        seen += n
    return BUCKETS[-1]


def values(span: float, row: Row | int) -> Values:
    """(requests/s, errors/s, p50, p99) of one row of increments; rounded (to the microsecond
    for latencies) so that the JSON stays short."""
    if not row or span <= 0:
        return (0.0, 0.0, None, None)
    buckets = row[2:]  # type: ignore[index]
    p50, p99 = quantile(buckets, 0.5), quantile(buckets, 0.99)
    return (
        round(row[0] / span, 3),  # type: ignore[index]
        round(row[1] / span, 3),  # type: ignore[index]
        None if p50 is None else round(p50, 6),
        None if p99 is None else round(p99, 6),
    )


_NONE = float("nan")  # a missing latency in the values arrays


class SeriesRing:
    """Points of every series, in one shared ring of slots (oldest overwritten): the counts
    (`data`, for merging across workers) and their values (`views`, computed once per sample,
    so that reading the API computes nothing per point)."""

    def __init__(self, slots: int = SLOTS) -> None:
        self.slots = slots
        self.times = array("d", bytes(8 * slots))  # wall-clock end of each slot's interval
        self.spans = array("d", bytes(8 * slots))  # seconds each slot's increments cover
        self.head = 0  # the next slot written
        self.filled = 0
        self.data: dict[Key, array[int]] = {}
        self.views: dict[Key, array[float]] = {}  # 4 values per slot, NaN for None
        self.seen: dict[Key, int] = {}  # the sample count when each series last had a reading
        self.samples = 0
        self.dropped = 0  # readings refused because MAX_SERIES series exist

    def write(self, t: float, span: float, rows: dict[Key, Row]) -> None:
        slot = self.head
        self.times[slot] = t
        self.spans[slot] = span
        self.samples += 1
        zero, idle = array("I", bytes(4 * WIDTH)), array("d", (0.0, 0.0, _NONE, _NONE))
        for key, data in self.data.items():
            if key not in rows:
                data[slot * WIDTH : (slot + 1) * WIDTH] = zero
                self.views[key][slot * 4 : slot * 4 + 4] = idle
        for key, row in rows.items():
            data = self.data.get(key)
            if data is None:
                if not any(row):
                    continue  # no traffic yet: no memory either
                if len(self.data) >= MAX_SERIES:
                    self.dropped += 1
                    continue
                data = self.data[key] = array("I", bytes(4 * WIDTH * self.slots))
                self.views[key] = array("d", (0.0, 0.0, _NONE, _NONE) * self.slots)
            data[slot * WIDTH : (slot + 1) * WIDTH] = array("I", row)
            view = [_NONE if v is None else v for v in values(span, row)]
            self.views[key][slot * 4 : slot * 4 + 4] = array("d", view)
            self.seen[key] = self.samples
        for key in [k for k, n in self.seen.items() if self.samples - n >= self.slots]:
            del self.seen[key], self.data[key], self.views[key]
        self.head = (slot + 1) % self.slots
        self.filled = min(self.filled + 1, self.slots)

    def order(self, last: int) -> list[int]:
        """The slots of the newest `last` points, oldest first."""
        n = min(last, self.filled)
        return [(self.head - n + i) % self.slots for i in range(n)]

    def row(self, key: Key, slot: int) -> Row:
        return list(self.data[key][slot * WIDTH : (slot + 1) * WIDTH])

    def columns(self, key: Key, slots: list[int]) -> list[list[float | None]]:
        """The four value columns of a series over `slots`, None where no latency is known."""
        view = self.views[key]
        out: list[list[float | None]] = []
        for k in range(4):
            col = [view[s * 4 + k] for s in slots]
            out.append([None if v != v else v for v in col] if k >= 2 else col)  # NaN: None
        return out


class SeriesSampler:
    """Samples `metrics` into `ring` every INTERVAL seconds while started."""

    def __init__(self, metrics: Any, ring: SeriesRing | None = None) -> None:
        self.metrics = metrics
        self.ring = ring or SeriesRing()
        # What each BackendStats object had counted at the last sample.
        self._last: dict[tuple[str, str], Reading] = {}
        self._last_mono = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(INTERVAL - time.time() % INTERVAL)
            try:
                self.sample()
            except Exception:  # a bug here must not end the charts for good
                log.exception("sampling the series failed")

    def sample(self) -> None:
        now = time.monotonic()
        rows, self._last = self._increments(commit=True)
        t = round(time.time() / INTERVAL) * INTERVAL
        self.ring.write(t, now - self._last_mono, rows)
        self._last_mono = now

    def live(self) -> tuple[float, dict[Key, Row]]:
        """(seconds covered, increments per series) since the last sample, without sampling."""
        rows, _ = self._increments(commit=False)
        return time.monotonic() - self._last_mono, rows

    def _increments(self, *, commit: bool) -> tuple[dict[Key, Row], dict[tuple[str, str], Reading]]:
        rows: dict[Key, Row] = {}
        current: dict[tuple[str, str], Reading] = {}
        for ss in list(self.metrics.services.values()):
            if not ss.name:
                continue  # requests no service took (lb's own answers, no route)
            service = rows[(ss.name, None)] = [0] * WIDTH
            own = 0
            for bs in list(ss.backends.values()):
                reading = Reading(bs)
                delta = reading.since(self._last.get((ss.name, bs.name)))
                if commit:
                    current[(ss.name, bs.name)] = reading
                _add(service, delta)
                if not bs.name:
                    continue  # no backend was chosen: the service's count only
                label = bs.label
                if label != OTHER and own < BACKENDS_PER_SERVICE:
                    own += 1
                else:
                    label = OTHER
                into = rows.get((ss.name, label))
                if into is None:
                    rows[(ss.name, label)] = delta
                else:
                    _add(into, delta)
        return rows, current
