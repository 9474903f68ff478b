"""`GET /api/series`: the sampled ring (`series.py`) as rates and latency quantiles.

Two forms. The raw form (`?raw=1`) carries the counts as sampled: per slot its time and span,
per series one row of (requests, errors, bucket counts) per slot, 0 for a slot with none; and
`live`, the increments since the last sample. The supervisor of `lb run --workers N` merges
its workers' raw forms slot by slot (`merge`: counts summed, buckets summed) and renders the
sum, so quantiles across workers come from the merged histograms, never from averaging
quantiles.

The rendered form has, per series, `points`: [time, requests/s, errors/s, p50, p99] with the
latencies in seconds (null without requests), and `last`: the same over the newest data (the
time since the last sample, together with the last full slot while that time is under half an
interval), so a rate shows on the first read, right after lb started or traffic began.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ..config.units import parse_duration
from .recorder import BUCKETS
from .series import BACKENDS_PER_SERVICE, INTERVAL, MAX_SERIES, SLOTS, Key, Row, SeriesSampler

COLUMNS = ["time", "requests_per_s", "errors_per_s", "p50_s", "p99_s"]


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


def _point(t: float, span: float, row: Row | int) -> list[Any]:
    if not row or span <= 0:
        return [t, 0.0, 0.0, None, None]
    buckets = row[2:]  # type: ignore[index]
    return [t, row[0] / span, row[1] / span, quantile(buckets, 0.5), quantile(buckets, 0.99)]  # type: ignore[index]


def render(doc: dict[str, Any], *, metrics_enabled: bool) -> dict[str, Any]:
    """The rendered form of a raw one."""
    times, spans = doc["times"], doc["spans"]
    live = doc["live"] or {"time": time.time(), "span": 0.0, "series": []}
    live_rows: dict[Key, Row | int] = {(s, b): row for s, b, row in live["series"]}
    # Too short a stretch since the last sample gives a jumpy rate: add the last full slot.
    widen = bool(times) and live["span"] < doc["interval"] / 2
    services, backends = [], []
    keys = [(s, b) for s, b, _ in doc["series"]]
    keys += [k for k in live_rows if k not in set(keys)]
    by_key = {(s, b): rows for s, b, rows in doc["series"]}
    for key in sorted(keys, key=lambda k: (k[0], k[1] or "")):
        rows = by_key.get(key, [0] * len(times))
        span, row = live["span"], live_rows.get(key, 0)
        if widen:
            span, row = span + spans[-1], _sum(row, rows[-1])
        item = {
            "points": [_point(t, s, r) for t, s, r in zip(times, spans, rows, strict=True)],
            "last": _point(live["time"], span, row),
        }
        if key[1] is None:
            services.append({"name": key[0], **item})
        else:
            backends.append({"service": key[0], "backend": key[1], **item})
    return {
        "metrics_enabled": metrics_enabled,
        "interval": doc["interval"],
        "window": len(times) * doc["interval"],
        "time": live["time"],
        "columns": COLUMNS,
        "services": services,
        "backends": backends,
        "limits": {"backends_per_service": BACKENDS_PER_SERVICE, "max_series": MAX_SERIES},
        "dropped": doc.get("dropped", 0),
    }


def window_seconds(text: str | None) -> float:
    """The `window` query parameter ("15m", "300s", "90"): at most the ring's length."""
    seconds = parse_duration(text) if text else SLOTS * INTERVAL
    if seconds <= 0:
        raise ValueError("window must be positive")
    return min(seconds, SLOTS * INTERVAL)
