"""`lb_backend_latency_ewma_seconds{service, backend}`: the RTT estimate that a least_latency
service's picker holds for each backend (lb/balancer/picker_py.py, Peak EWMA), read from the
picker at scrape time, so the request path keeps nothing for it. Services in another mode have
no series; nor has a backend before its first sample, nor the folded `backend="other"`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily

from .metrics import Metrics
from .recorder import OTHER


def latency_families(runtime: Any, metrics: Metrics) -> Iterator[GaugeMetricFamily]:
    ewma = GaugeMetricFamily(
        "lb_backend_latency_ewma_seconds",
        "least_latency services: the backend's peak-sensitive moving average of the time to "
        "the response head (a 429, 503 or failed attempt counts as the penalty).",
        labels=["service", "backend"],
    )
    for svc in runtime.services.values():
        ss = metrics.services.get(svc.name)
        if not svc.least_latency or ss is None:
            continue
        for b in svc.backends.values():
            bs = ss.backends.get(b.name)
            if bs is None or bs.label == OTHER or b.removed:
                continue
            value = svc.latency(b)
            if value is not None:
                ewma.add_metric([svc.name, bs.label], value)
    yield ewma
