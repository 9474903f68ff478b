"""`GET /api/series`: the sampled ring (`series.py`) as rates and latency quantiles.

Two forms. The raw form (`?raw=1`) carries the counts as sampled: per slot its time and span,
per series one row of (requests, errors, bucket counts) per slot, 0 for a slot with none; and
`live`, the increments since the last sample. The supervisor of `lb run --workers N` merges
its workers' raw forms slot by slot (`merge`: counts summed, buckets summed) and renders the
sum, so quantiles across workers come from the merged histograms, never from averaging
quantiles.

The rendered form has `times` (the end of each slot) and, per series, one column per value:
`requests_per_s`, `errors_per_s`, `p50_s` and `p99_s` (seconds; null without requests), and
`last`: the same over the newest data (the time since the last sample, together with the last
full slot while that time is under half an interval), so a rate shows on the first read, right
after lb started or traffic began. This lb's own ring computed its values when it sampled:
reading it costs no quantile.
"""

from __future__ import annotations

import time
from typing import Any

from ..config.units import parse_duration
from .series import (
    BACKENDS_PER_SERVICE,
    INTERVAL,
    MAX_SERIES,
    SLOTS,
    Key,
    Row,
    SeriesSampler,
    Values,
    values,
)

COLUMNS = ("requests_per_s", "errors_per_s", "p50_s", "p99_s")
Columns = list[list[float | None]]


def raw(sampler: SeriesSampler, window: float) -> dict[str, Any]:
    ring = sampler.ring
    slots = list(ring.order(max(1, round(window / INTERVAL))))
    span, live = sampler.live()
    series = []
    for key in ring.data:
        rows = [ring.row(key, s) for s in slots]
        series.append([key[0], key[1], [r if any(r) else 0 for r in rows]])
    return {
        "interval": INTERVAL,
        "times": [ring.times[s] for s in slots],
        "spans": [ring.spans[s] for s in slots],
        "series": series,
        "live": {
            "time": time.time(),
            "span": span,
            "series": [[k[0], k[1], row] for k, row in live.items() if any(row)],
        },
        "dropped": ring.dropped,
    }


def _sum(a: Row | int, b: Row | int) -> Row | int:
    if not a:
        return b
    if not b:
        return a
    return [x + y for x, y in zip(a, b, strict=True)]  # type: ignore[arg-type]


def merge(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """One raw form from several (the workers'), matched by slot time and series."""
    if not docs:
        return {"interval": INTERVAL, "times": [], "spans": [], "series": [], "live": None}
    spans: dict[float, float] = {}
    for doc in docs:
        for t, span in zip(doc["times"], doc["spans"], strict=True):
            spans.setdefault(t, span)
    times = sorted(spans)[-SLOTS:]
    index = {t: i for i, t in enumerate(times)}
    series: dict[Key, list[Row | int]] = {}
    live: dict[Key, Row | int] = {}
    for doc in docs:
        for service, backend, rows in doc["series"]:
            into = series.setdefault((service, backend), [0] * len(times))
            for t, row in zip(doc["times"], rows, strict=True):
                i = index.get(t)
                if i is not None:
                    into[i] = _sum(into[i], row)
        for service, backend, row in doc["live"]["series"]:
            live[(service, backend)] = _sum(live.get((service, backend), 0), row)
    first = docs[0]
    return {
        "interval": first["interval"],
        "times": times,
        "spans": [spans[t] for t in times],
        "series": [[k[0], k[1], rows] for k, rows in series.items()],
        "live": {
            "time": first["live"]["time"],
            "span": first["live"]["span"],
            "series": [[k[0], k[1], row] for k, row in live.items()],
        },
        "dropped": sum(doc.get("dropped", 0) for doc in docs),
    }


def _item(key: Key, columns: Columns, last: Values) -> dict[str, Any]:
    item: dict[str, Any] = (
        {"name": key[0]} if key[1] is None else {"service": key[0], "backend": key[1]}
    )
    item.update(zip(COLUMNS, columns, strict=True))
    item["last"] = dict(zip(COLUMNS, last, strict=True))
    return item


def _answer(
    interval: float,
    times: list[float],
    now: float,
    items: list[tuple[Key, Columns, Values]],
    dropped: int,
    metrics_enabled: bool,
) -> dict[str, Any]:
    items.sort(key=lambda i: (i[0][0], i[0][1] or ""))
    return {
        "metrics_enabled": metrics_enabled,
        "interval": interval,
        "window": len(times) * interval,
        "time": now,
        "times": times,
        "services": [_item(*i) for i in items if i[0][1] is None],
        "backends": [_item(*i) for i in items if i[0][1] is not None],
        "limits": {"backends_per_service": BACKENDS_PER_SERVICE, "max_series": MAX_SERIES},
        "dropped": dropped,
    }


def render_local(sampler: SeriesSampler, window: float, *, metrics_enabled: bool) -> dict[str, Any]:
    """The rendered form of this lb's own ring, whose values were computed when sampled."""
    ring = sampler.ring
    slots = ring.order(max(1, round(window / INTERVAL)))
    span, live = sampler.live()
    # Too short a stretch since the last sample gives a jumpy rate: add the last full slot.
    widen = slots[-1] if slots and span < INTERVAL / 2 else None
    n = len(slots)
    idle: Columns = [[0.0] * n, [0.0] * n, [None] * n, [None] * n]
    items = []
    for key in {*ring.data, *live}:
        row: Row | int = live.get(key, 0)
        last_span = span
        if widen is not None and key in ring.data:
            row, last_span = _sum(row, ring.row(key, widen)), span + ring.spans[widen]
        columns = ring.columns(key, slots) if key in ring.data else idle
        items.append((key, columns, values(last_span, row)))
    times = [ring.times[s] for s in slots]
    return _answer(INTERVAL, times, time.time(), items, ring.dropped, metrics_enabled)


def render(doc: dict[str, Any], *, metrics_enabled: bool) -> dict[str, Any]:
    """The rendered form of a raw one (the workers' merged rings)."""
    times, spans = doc["times"], doc["spans"]
    live = doc["live"] or {"time": time.time(), "span": 0.0, "series": []}
    live_rows: dict[Key, Row | int] = {(s, b): row for s, b, row in live["series"]}
    widen = bool(times) and live["span"] < doc["interval"] / 2
    by_key: dict[Key, list[Row | int]] = {(s, b): rows for s, b, rows in doc["series"]}
    items = []
    for key in {*by_key, *live_rows}:
        rows = by_key.get(key, [0] * len(times))
        span, row = live["span"], live_rows.get(key, 0)
        if widen:
            span, row = span + spans[-1], _sum(row, rows[-1])
        points = [values(s, r) for s, r in zip(spans, rows, strict=True)]
        columns = [list(c) for c in zip(*points, strict=True)] if points else [[], [], [], []]
        items.append((key, columns, values(span, row)))
    return _answer(
        doc["interval"], times, live["time"], items, doc.get("dropped", 0), metrics_enabled
    )


def window_seconds(text: str | None) -> float:
    """The `window` query parameter ("15m", "300s", "90"): at most the ring's length."""
    seconds = parse_duration(text) if text else SLOTS * INTERVAL
    if seconds <= 0:
        raise ValueError("window must be positive")
    return min(seconds, SLOTS * INTERVAL)
