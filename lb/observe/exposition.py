"""The scrape side of the metrics: every `lb_` family built from live state and the plain
counters the request path keeps (`metrics.py`), once per scrape, by a custom collector."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from .. import __version__
from ..balancer.picker import IMPLEMENTATION
from .latency_metrics import latency_families
from .metrics import BREAKER_STATES, CAPS, COUNTERS, STATES, Metrics, service_part
from .recorder import OTHER, BackendStats, Histogram

log = logging.getLogger(__name__)


def _loop_name() -> str:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return "unknown"
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


class Exposition(Collector):
    """Builds every `lb_` family from live state and the counters above, per scrape."""

    def __init__(
        self,
        server: Any,
        metrics: Metrics,
        *,
        enabled: Callable[[], bool],
        extra: Iterable[Callable[[], Iterable[Any]]] = (),
    ) -> None:
        self.server = server
        self.metrics = metrics
        self.enabled = enabled
        self.extra = list(extra)
        self.loop = _loop_name()

    def collect(self) -> Iterator[Any]:
        yield from self._identity()
        if not self.enabled():
            return
        m = self.metrics
        m.sync()
        yield from self._requests()
        yield from self._backends()
        yield from latency_families(self.server.runtime, m)
        yield from self._listeners()
        yield from self._traffic_control()
        yield from self._generic()
        for source in self.extra:
            yield from source()

    # -- lb itself and its config ------------------------------------------------------------------
    def _identity(self) -> Iterator[Any]:
        server = self.server
        runtime = server.runtime
        info = InfoMetricFamily("lb_build", "lb version, picker implementation and event loop.")
        info.add_metric([], {"version": __version__, "picker": IMPLEMENTATION, "loop": self.loop})
        yield info
        cfg = InfoMetricFamily("lb_config", "The running config's hash (first 12 hex digits).")
        cfg.add_metric([], {"hash": runtime.loaded.digest[:12]})
        yield cfg
        reloads = CounterMetricFamily(
            "lb_config_reload", "Config reloads by result.", labels=["result"]
        )
        for result in ("success", "failure"):
            reloads.add_metric([result], server.reloads.get(result, 0))
        yield reloads
        yield GaugeMetricFamily(
            "lb_config_last_reload_success",
            "1 if the last reload succeeded (or none was tried), else 0.",
            value=1 if server.last_reload_ok else 0,
        )
        yield GaugeMetricFamily(
            "lb_config_last_reload_timestamp_seconds",
            "Unix time the running config was loaded: at start or by the last reload that "
            "changed it.",
            value=runtime.loaded_at,
        )

    # -- requests ----------------------------------------------------------------------------------
    def _requests(self) -> Iterator[Any]:
        m = self.metrics
        live = {r.name for r in self.server.runtime.table.routes}
        live.add("")
        requests = CounterMetricFamily(
            "lb_requests",
            "Finished requests by route, service, backend, status code and method "
            "(code 0: no response was sent).",
            labels=["route", "service", "backend", "code", "method"],
        )
        upstream = SummaryMetricFamily(
            "lb_upstream_duration_seconds",
            "Time from sending the request to a backend (last attempt) to the end of its response.",
            labels=["service", "backend"],
        )
        for ss in m.services.values():
            ss.retired.drop_routes(live)
            other = ss.retired.codes()
            up_count, up_sum = ss.retired.upstream_count, ss.retired.upstream_sum
            for bs in ss.backends.values():
                bs.drop_routes(live)
                codes = bs.codes()
                if bs.label == OTHER:
                    for k, n in codes.items():
                        other[k] = other.get(k, 0) + n
                    up_count += bs.upstream_count
                    up_sum += bs.upstream_sum
                    continue
                for (route, code, method), n in codes.items():
                    requests.add_metric([route, ss.name, bs.label, str(code), method], n)
                if bs.upstream_count:
                    upstream.add_metric([ss.name, bs.label], bs.upstream_count, bs.upstream_sum)
            for (route, code, method), n in other.items():
                requests.add_metric([route, ss.name, OTHER, str(code), method], n)
            if up_count:
                upstream.add_metric([ss.name, OTHER], up_count, up_sum)
        yield requests
        yield upstream

        for name in [n for n in m.routes if n not in live]:
            del m.routes[name]
        durations = HistogramMetricFamily(
            "lb_request_duration_seconds",
            "Time from the request head's arrival to the end of the response.",
            labels=["route", "service"],
        )
        retries = CounterMetricFamily(
            "lb_retries", "Retries made, by route and service.", labels=["route", "service"]
        )
        failures = CounterMetricFamily(
            "lb_request_failures",
            "Requests that ended in a failure, by kind (connect-failure, connect-timeout, reset, "
            "response-head, reset-after-head, upstream-idle, client-gone, ...).",
            labels=["route", "service", "failure"],
        )
        grpc = CounterMetricFamily(
            "lb_grpc_responses",
            "gRPC calls by route and the grpc-status their answer carried to the client "
            "(OK, UNAVAILABLE, ...; other: a value outside the 17 codes).",
            labels=["route", "grpc_status"],
        )
        # Kept per backend (recorder.py): summed per route and service here.
        for ss in m.services.values():
            by_route: dict[str, Histogram] = {}
            for bs in (*ss.backends.values(), ss.retired):
                for route, h in bs.durations.items():
                    total = by_route.get(route)
                    if total is None:
                        total = by_route[route] = Histogram()
                    total.add(h)
            for route, h in by_route.items():
                durations.add_metric([route, ss.name], h.cumulative(), h.sum)
        for rs in (*m.routes.values(), m.no_route):
            for sname, n in rs.retries.items():
                retries.add_metric([rs.name, sname], n)
            for (sname, kind), n in rs.failures.items():
                failures.add_metric([rs.name, sname, kind], n)
            for code, n in rs.grpc.items():
                grpc.add_metric([rs.name, code], n)
        yield durations
        yield retries
        yield failures
        yield grpc

    # -- backends ----------------------------------------------------------------------------
    def _backends(self) -> Iterator[Any]:
        m = self.metrics
        runtime = self.server.runtime
        svc_in_flight = GaugeMetricFamily(
            "lb_requests_in_flight",
            "Requests being served by the service's backends.",
            labels=["service"],
        )
        panic = GaugeMetricFamily(
            "lb_service_panic",
            "1 while the service balances over all backends because too few are healthy "
            "(panic threshold).",
            labels=["service"],
        )
        members = GaugeMetricFamily(
            "lb_service_backends", "Backends of a service by state.", labels=["service", "state"]
        )
        fams = _BackendFamilies()
        for svc in runtime.services.values():
            ss = m.services.get(svc.name)
            if ss is None:
                continue
            name = svc.name
            now = svc.clock()
            panic.add_metric([name], 1 if svc.panic else 0)
            total_in_flight = 0
            by_state = dict.fromkeys(STATES, 0)
            other = _View()
            other.add_counts(ss.retired)
            for b in svc.backends.values():
                bs = ss.backends.get(b.name)
                if bs is None:
                    continue
                view = other if bs.label == OTHER else _View()
                st = view.add(svc, b, bs, now)
                total_in_flight += view.last_in_flight
                by_state[st] += 1
                if view is not other:
                    fams.emit(name, bs.label, view)
            if other.members or other.seen or other.failures:
                fams.emit(name, OTHER, other)
            svc_breaker = service_part(svc, "breaker")
            if svc_breaker is not None:
                current = getattr(svc_breaker, "state", None)
                for s in BREAKER_STATES:
                    fams.breaker_state.add_metric([name, "", s], 1 if s == current else 0)
                for (old, new), n in getattr(svc_breaker, "transitions", {}).items():
                    fams.transitions.add_metric([name, "", old, new], n)
            svc_in_flight.add_metric([name], total_in_flight)
            for s, n in by_state.items():
                members.add_metric([name, s], n)
        yield from (svc_in_flight, panic, members)
        yield from fams.all()

    # -- listeners ---------------------------------------------------------------------------------
    def _listeners(self) -> Iterator[Any]:
        runtime = self.server.runtime
        conns = GaugeMetricFamily(
            "lb_client_connections", "Open client connections.", labels=["listener"]
        )
        accepted = CounterMetricFamily(
            "lb_client_connections_accepted", "Client connections accepted.", labels=["listener"]
        )
        tcp = GaugeMetricFamily(
            "lb_tcp_active_connections",
            "Open connections of tcp listeners (client side; with a backend or still choosing).",
            labels=["listener"],
        )
        for name, lr in runtime.listeners.items():
            conns.add_metric([name], len(lr.connections))
            accepted.add_metric([name], lr.accepted)
            if lr.cfg.mode == "tcp":
                tcp.add_metric([name], len(lr.connections))
        refused = CounterMetricFamily(
            "lb_refused",
            "Requests refused before routing (400, 408, 413, 431, ...).",
            labels=["listener", "code"],
        )
        for (listener, code), n in self.metrics.refused.items():
            refused.add_metric([listener, str(code)], n)
        d = runtime.descriptors
        cap = GaugeMetricFamily(
            "lb_client_connections_max",
            "Client connections lb takes at once: half the descriptor limit, less a reserve.",
            value=d.max_clients,
        )
        limited = CounterMetricFamily(
            "lb_accept_limited",
            "Times accepting stopped at lb_client_connections_max (connections wait in the "
            "backlog).",
            value=d.limited,
        )
        yield from (conns, accepted, refused, cap, limited, tcp)

    # -- traffic control and discovery extension points --------------------------------------------
    def _traffic_control(self) -> Iterator[Any]:
        runtime = self.server.runtime
        overflows = CounterMetricFamily(
            "lb_cap_overflows",
            "Requests refused by a service's concurrency cap "
            "(connections, pending, requests, retries).",
            labels=["service", "cap"],
        )
        active = GaugeMetricFamily(
            "lb_cap_active", "Current usage of each concurrency cap.", labels=["service", "cap"]
        )
        ejections = CounterMetricFamily(
            "lb_outlier_ejections", "Outlier ejections.", labels=["service"]
        )
        ejected = GaugeMetricFamily(
            "lb_outlier_ejected", "Backends ejected now.", labels=["service"]
        )
        ejection_overflows = CounterMetricFamily(
            "lb_outlier_ejection_overflows",
            "Ejections not made because max_ejection_percent was reached.",
            labels=["service"],
        )
        last_success = GaugeMetricFamily(
            "lb_discovery_last_success_timestamp_seconds",
            "Unix time of the last successful discovery read for the service.",
            labels=["service"],
        )
        errors = CounterMetricFamily(
            "lb_discovery_errors", "Failed discovery reads.", labels=["service"]
        )
        stale = GaugeMetricFamily(
            "lb_discovery_stale",
            "1 while the last discovery read failed and the last known good set is in use.",
            labels=["service"],
        )
        rejected = CounterMetricFamily(
            "lb_breaker_rejected",
            "Requests answered 503 because the service's breaker was open.",
            labels=["service"],
        )
        fallbacks = CounterMetricFamily(
            "lb_breaker_fallbacks",
            "Requests sent to the fallback service because the service's breaker was open.",
            labels=["service"],
        )
        for svc in runtime.services.values():
            name = svc.name
            gate = getattr(svc, "gate", None)
            if gate is not None:
                rejected.add_metric([name], getattr(gate, "rejected", 0))
                fallbacks.add_metric([name], getattr(gate, "fallbacks", 0))
            caps = service_part(svc, "caps")
            if caps is not None:
                for cap, n in getattr(caps, "overflows", {}).items():
                    overflows.add_metric([name, cap], n)
                for cap in CAPS:
                    value = getattr(caps, cap, None)
                    if isinstance(value, int):
                        active.add_metric([name, cap], value)
            outlier = service_part(svc, "outlier")
            if outlier is not None:
                ejections.add_metric([name], getattr(outlier, "ejections_total", 0))
                ejected.add_metric([name], len(getattr(outlier, "ejected", ())))
                ejection_overflows.add_metric([name], getattr(outlier, "overflows", 0))
            disc = getattr(svc, "discovery", None)
            if disc is not None:
                when = getattr(disc, "last_success", None)
                if when is not None:
                    last_success.add_metric([name], when)
                errors.add_metric([name], getattr(disc, "errors", 0))
                stale.add_metric([name], 1 if getattr(disc, "stale", False) else 0)
        yield from (
            rejected,
            fallbacks,
            overflows,
            active,
            ejections,
            ejected,
            ejection_overflows,
            last_success,
            errors,
            stale,
        )

    def _generic(self) -> Iterator[Any]:
        counters = getattr(self.server.runtime, "counters", None) or {}
        for key, spec in COUNTERS.items():
            fam = CounterMetricFamily(spec.name, spec.doc, labels=list(spec.labels))
            for labels, n in list(counters.get(key, {}).items()):
                if len(labels) == len(spec.labels):
                    fam.add_metric([str(v) for v in labels], n)
            yield fam
        for key in counters:
            if key not in COUNTERS and key not in _WARNED:
                _WARNED.add(key)
                log.warning(
                    "runtime.counters[%r] is not exported: declare it with "
                    "lb.observe.metrics.register_counter",
                    key,
                )


_WARNED: set[str] = set()


class _View:
    """One `backend` label's worth of backends: one backend, or all of a service's folded
    ones (then gauges are sums and state series count backends)."""

    def __init__(self) -> None:
        self.members = 0
        self.states: dict[tuple[str, str], int] = {}
        self.in_flight = 0
        self.last_in_flight = 0
        self.weight = 0
        self.up = 0
        self.breakers: dict[str, int] = {}
        self.seen: dict[tuple[str, ...], int] = {}
        self.failures: dict[str, int] = {}

    def add_counts(self, bs: BackendStats) -> None:
        for k, n in bs.seen.items():
            self.seen[k] = self.seen.get(k, 0) + n
        for kind, n in bs.failures.items():
            self.failures[kind] = self.failures.get(kind, 0) + n

    def add(self, svc: Any, b: Any, bs: BackendStats, now: float) -> str:
        """Count one backend in; returns its state."""
        st, reason = b.state(now)
        self.members += 1
        self.states[(st, reason)] = self.states.get((st, reason), 0) + 1
        self.last_in_flight = svc.in_flight(b)
        self.in_flight += self.last_in_flight
        self.weight += b.weight
        self.up += st == "up"
        breaker = getattr(b.breaker, "state", None)
        if breaker is not None:
            self.breakers[breaker] = self.breakers.get(breaker, 0) + 1
        self.add_counts(bs)
        return st


class _BackendFamilies:
    def __init__(self) -> None:
        sb = ["service", "backend"]
        self.in_flight = GaugeMetricFamily(
            "lb_backend_in_flight", "Requests in flight per backend.", labels=sb
        )
        self.weight = GaugeMetricFamily("lb_backend_weight", "Configured weight.", labels=sb)
        self.up = GaugeMetricFamily(
            "lb_backend_up",
            '1 if the backend takes traffic (for backend="other": how many do).',
            labels=sb,
        )
        self.state = GaugeMetricFamily(
            "lb_backend_state",
            "1 for the backend's current state (with its reason), 0 for the others; for "
            'backend="other": how many are in each.',
            labels=[*sb, "state", "reason"],
        )
        self.selected = CounterMetricFamily(
            "lb_backend_selected",
            "Times the picker chose the backend (retries included).",
            labels=sb,
        )
        self.failures = CounterMetricFamily(
            "lb_backend_failures",
            "Failed attempts to a backend by kind (connect-failure, connect-timeout, reset, "
            "protocol, response-head).",
            labels=[*sb, "kind"],
        )
        self.breaker_state = GaugeMetricFamily(
            "lb_breaker_state",
            'Circuit breaker state: 1 for the current one (for backend="other": how many '
            'are in it). backend="" is the service\'s own breaker.',
            labels=[*sb, "state"],
        )
        self.transitions = CounterMetricFamily(
            "lb_breaker_transitions",
            "Circuit breaker state changes.",
            labels=[*sb, "from", "to"],
        )

    def emit(self, service: str, label: str, v: _View) -> None:
        sb = [service, label]
        if v.members:
            self.in_flight.add_metric(sb, v.in_flight)
            self.weight.add_metric(sb, v.weight)
            self.up.add_metric(sb, v.up)
            for s in STATES:
                current = [(r, n) for (st, r), n in v.states.items() if st == s]
                for reason, n in current or [("", 0)]:
                    self.state.add_metric([*sb, s, reason], n)
        for key, n in v.seen.items():
            if key[0] == "selected":
                self.selected.add_metric(sb, n)
            else:
                self.transitions.add_metric([*sb, key[1], key[2]], n)
        for kind, n in v.failures.items():
            self.failures.add_metric([*sb, kind], n)
        if v.breakers:
            for s in BREAKER_STATES:
                self.breaker_state.add_metric([*sb, s], v.breakers.get(s, 0))

    def all(self) -> tuple[Any, ...]:
        return (
            self.in_flight,
            self.weight,
            self.up,
            self.state,
            self.selected,
            self.failures,
            self.breaker_state,
            self.transitions,
        )
