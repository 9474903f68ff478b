"""Totals across workers: one Prometheus exposition and one status report made from N.

Metrics. Each worker's exposition is parsed; series (name and label set) are combined by the
family's rule, in the order of the lowest-index worker that has them:

- sum: counters, histograms and summaries, and the gauges of things each worker holds on its
  own: `lb_client_connections`, `lb_requests_in_flight`, `lb_backend_in_flight`,
  `lb_cap_active`, `lb_process_resident_memory_bytes`, `lb_process_virtual_memory_bytes`,
  `lb_process_open_fds`;
- max: `lb_config_reload_total` (every worker counts each reload),
  `lb_config_last_reload_timestamp_seconds`, `lb_discovery_last_success_timestamp_seconds`,
  `lb_discovery_stale`;
- min: `lb_config_last_reload_success` (0 if any worker's last reload failed),
  `lb_process_start_time_seconds` (the oldest process);
- the first worker's series only: `*_info` gauges (`lb_build_info`, `lb_config_info`);
- the first worker's value: every other gauge (backend state and weight, panic, breaker state,
  ejected, ...). Each worker keeps its own view of these; they agree unless one worker's health
  checks, breakers or outlier detection saw something the others did not.

The supervisor adds `lb_workers{status}`, `lb_worker_restarts_total{worker}` and its own
`lb_process_*` series (summed with the workers').

In-flight gauges are sums because each worker reports its own requests (`Picker.in_flight`);
the shared counts the pickers compare are the same totals.

Status. Worker 0's report (the lowest-index running worker), with the request counters of
listeners, routes, services and backends summed over all workers; states, weights and
configuration are worker 0's.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

SUM_GAUGES = frozenset(
    {
        "lb_client_connections",
        "lb_requests_in_flight",
        "lb_backend_in_flight",
        "lb_cap_active",
        "lb_process_resident_memory_bytes",
        "lb_process_virtual_memory_bytes",
        "lb_process_open_fds",
    }
)
MIN_GAUGES = frozenset({"lb_config_last_reload_success", "lb_process_start_time_seconds"})
MAX_GAUGES = frozenset(
    {
        "lb_config_last_reload_timestamp_seconds",
        "lb_discovery_last_success_timestamp_seconds",
        "lb_discovery_stale",
    }
)
MAX_COUNTERS = frozenset({"lb_config_reload"})
_ADDITIVE_TYPES = frozenset({"counter", "histogram", "summary", "gaugehistogram"})


def rule(family: Metric) -> str:
    """How a family's series combine: "sum", "min", "max", "first" or "info"."""
    name = family.name
    if family.type in _ADDITIVE_TYPES:
        return "max" if name in MAX_COUNTERS else "sum"
    if family.type == "info" or name.endswith("_info"):
        return "info"
    if name in SUM_GAUGES:
        return "sum"
    if name in MIN_GAUGES:
        return "min"
    if name in MAX_GAUGES:
        return "max"
    return "first"


def merge_expositions(texts: Iterable[str]) -> list[Metric]:
    """Families of several text expositions (Prometheus format 0.0.4), combined by `rule`."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for fam in text_string_to_metric_families(text):
            merged = families.get(fam.name)
            if merged is None:
                merged = families[fam.name] = Metric(fam.name, fam.documentation, fam.type)
                values[fam.name] = {}
            elif rule(merged) == "info":
                continue
            how = rule(merged)
            series = values[fam.name]
            for s in fam.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                old = series.get(key)
                if old is None:
                    series[key] = s.value
                elif how == "sum":
                    series[key] = old + s.value
                elif how == "min":
                    series[key] = min(old, s.value)
                elif how == "max":
                    series[key] = max(old, s.value)
    for name, fam in families.items():
        for (sample, labels), value in values[name].items():
            fam.add_sample(sample, dict(labels), value)
    return list(families.values())


class Families:
    """A collector over fixed families, for prometheus_client's encoders."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


# -- /api/status ----------------------------------------------------------------------------------
_LISTENER_SUMS = ("connections", "accepted")
_ROUTE_SUMS = ("requests", "errors")
_SERVICE_SUMS = ("in_flight",)
_BACKEND_SUMS = ("in_flight", "selected", "failures", "requests", "errors")


def _add(into: dict[str, Any], other: dict[str, Any], keys: tuple[str, ...]) -> None:
    for k in keys:
        a, b = into.get(k), other.get(k)
        if isinstance(a, int | float) and isinstance(b, int | float):
            into[k] = a + b


def _by_name(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in items if "name" in item}


def merge_status(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The first report with the others' request counters added in (matched by name)."""
    base = reports[0]
    for other in reports[1:]:
        listeners = _by_name(other.get("listeners", []))
        for item in base.get("listeners", []):
            _add(item, listeners.get(item["name"], {}), _LISTENER_SUMS)
        routes = _by_name(other.get("routes", []))
        for item in base.get("routes", []):
            _add(item, routes.get(item["name"], {}), _ROUTE_SUMS)
        services = _by_name(other.get("services", []))
        for svc in base.get("services", []):
            theirs = services.get(svc["name"], {})
            _add(svc, theirs, _SERVICE_SUMS)
            overflows = (theirs.get("caps") or {}).get("overflows", {})
            mine = (svc.get("caps") or {}).get("overflows")
            if mine is not None:
                for cap, n in overflows.items():
                    mine[cap] = mine.get(cap, 0) + n
            backends = _by_name(theirs.get("backends", []))
            for b in svc.get("backends", []):
                _add(b, backends.get(b["name"], {}), _BACKEND_SUMS)
    return base
