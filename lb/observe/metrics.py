"""Prometheus metrics: plain counters on the request path, families built at scrape time.

The request path (`Metrics.record`, from `recorder.py`, compiled; once per finished exchange)
only does dict look-ups and integer additions on objects resolved once: a `RouteStats` per
route name (cached in `Route.stats`), a `ServiceStats` per service name and a `BackendStats`
per backend address. Histograms are fixed bucket arrays (`bisect` on the duration). Nothing is
formatted and no label string is built per request; `Exposition.collect` (exposition.py) turns
the counts into metric families when Prometheus scrapes.

Label cardinality: a service's first `metrics.max_backends_per_service` backends (in the order
lb first sees them) get their own `backend` label; the rest fold into `backend="other"`. A
backend keeps its label for as long as it stays in the service, so no series ever moves from
one label to another. When a folded backend leaves, its counts are kept in the service's
`retired` stats, so `other` counters never go down; a labelled backend that leaves takes its
series with it (they end, as they would with a restart).

Extension points for the traffic-control and discovery code, read at scrape time only:

- `Service.gate.breaker` (or `Service.breaker`) and `Backend.breaker`: any object with `.state`
  ("closed" | "open" | "half_open") and `.transitions` (dict[(from, to)] -> int), like
  `lb.traffic.breaker.Breaker`.
- `Service.gate.caps` (or `Service.caps`): an object with `.overflows` (dict[cap] -> int) and the
  current counts as attributes `connections`, `pending`, `requests`, `retries`, like
  `lb.traffic.breaker.Caps`.
- `Service.gate.outlier` (or `Service.outlier`): an object with `.ejections_total`, `.overflows`
  and `.ejected` (a dict of the backends ejected now), like `lb.traffic.outlier.OutlierDetector`.
- `Service.gate`: `.rejected` and `.fallbacks`, the requests its open breaker answered 503 or
  sent to the fallback service (`lb.traffic.gates.ServiceGate`).
- `Service.discovery`: an object with `.last_success` (Unix time or None), `.errors` (int) and
  `.stale` (bool), like a `lb.discovery.consul.ServiceWatch`.
- `runtime.counters`: a generic registry, `dict[str, dict[tuple[str, ...], int]]`, for counters
  bumped on paths this module does not see. Increment with
  `runtime.counters["ratelimit"][("route", "api", "limited")] += 1`; a `Counters` dict creates
  the inner dict on first use. Each key must be declared once with `register_counter` (the ones
  below are declared here) so that it is exported under a documented name and labels.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from ..traffic.breaker import CLOSED, HALF_OPEN, OPEN
from .recorder import OTHER, Recorder

STATES = ("up", "draining", "down")
BREAKER_STATES = (CLOSED, OPEN, HALF_OPEN)
CAPS = ("connections", "pending", "requests", "retries")


# -- the generic counter registry ---------------------------------------------------------------
class Counters(dict[str, dict[tuple[str, ...], int]]):
    """`runtime.counters`: a missing key yields a fresh `defaultdict(int)`, so an increment
    never has to check whether its counter exists."""

    def __missing__(self, key: str) -> dict[tuple[str, ...], int]:
        value: dict[tuple[str, ...], int] = defaultdict(int)
        self[key] = value
        return value


@dataclass(frozen=True)
class CounterSpec:
    name: str  # the exported name, ending in _total
    doc: str
    labels: tuple[str, ...]  # one per element of the key tuples


COUNTERS: dict[str, CounterSpec] = {}


def register_counter(key: str, name: str, doc: str, labels: tuple[str, ...]) -> None:
    """Declare how `runtime.counters[key]` is exported; names must start with `lb_`."""
    if not name.startswith("lb_") or not name.endswith("_total"):
        raise ValueError(f"counter names look like lb_..._total, not {name!r}")
    COUNTERS[key] = CounterSpec(name, doc, labels)


register_counter(
    "ratelimit",
    "lb_ratelimit_decisions_total",
    "Rate-limit decisions; scope is listener or route, decision allowed, limited or dry_run.",
    ("scope", "name", "decision"),
)
register_counter(
    "ratelimit_redis_errors",
    "lb_ratelimit_redis_errors_total",
    "Redis failures of shared rate limits, by the failure policy applied (local, allow, deny).",
    ("action",),
)
register_counter(
    "retry_budget_exhausted",
    "lb_retry_budget_exhausted_total",
    "Retries not attempted because the route's retry budget was spent.",
    ("route",),
)
register_counter(
    "accept_errors",
    "lb_accept_errors_total",
    "accept() failures that paused a listener, by errno (EMFILE, ENFILE, ENOBUFS, ENOMEM).",
    ("listener", "reason"),
)
register_counter(
    "discovery_errors",
    "lb_discovery_source_errors_total",
    "Errors of discovery sources not tied to one service (e.g. the Consul catalog watch).",
    ("source",),
)

# mode: tcp listeners (lb/proxy/tcp); lb_tcp_active_connections is a gauge of exposition.py.
register_counter(
    "tcp_connections",
    "lb_tcp_connections_total",
    "Connections of tcp listeners proxied to a backend (counted once it is connected).",
    ("listener", "service", "backend"),
)
register_counter(
    "tcp_bytes",
    "lb_tcp_bytes_total",
    'Bytes forwarded by tcp listeners: direction="in" from clients, "out" to clients.',
    ("listener", "direction"),
)
register_counter(
    "tcp_connect_failures",
    "lb_tcp_connect_failures_total",
    "Failed connection attempts of tcp listeners to a service's backends (each try).",
    ("service",),
)
register_counter(
    "tcp_terminations",
    "lb_tcp_terminations_total",
    "Ended connections of tcp listeners by reason (done, client-closed, idle-timeout, ...).",
    ("listener", "reason"),
)


class BackendLabels:
    """The `backend` label of the lb_tcp_* series: a service's first `limit` backends (in the
    order they are first counted) keep their name, later ones share "other", as in the
    HTTP series. Only labelled names are remembered, so memory stays bounded too."""

    def __init__(self) -> None:
        self._named: dict[str, set[str]] = {}

    def label(self, service: str, backend: str, limit: int) -> str:
        named = self._named.get(service)
        if named is None:
            named = self._named[service] = set()
        if backend in named:
            return backend
        if len(named) < limit:
            named.add(backend)
            return backend
        return OTHER


def service_part(svc: Any, name: str) -> Any:
    """A service's traffic-control object (`breaker`, `caps`, `outlier`): held by its `gate`,
    or by the service itself."""
    part = getattr(svc, name, None)
    if part is None:
        part = getattr(getattr(svc, "gate", None), name, None)
    return part


def _backend_counters(b: Any) -> dict[tuple[str, ...], int]:
    out: dict[tuple[str, ...], int] = {("selected",): b.selected}
    breaker = b.breaker
    if breaker is not None:
        for (old, new), n in getattr(breaker, "transitions", {}).items():
            out[("transition", old, new)] = n
    return out


class Metrics(Recorder):
    """The recorder (request path, `recorder.py`) plus what scrapes and the admin API read."""

    # -- scrape time -----------------------------------------------------------------------------
    def sync(self) -> None:
        """Follow membership: label new backends in service order, retire the ones gone,
        snapshot the counters that live on Backend objects."""
        live_services = self.runtime.services
        for name in [n for n in self.services if n and n not in live_services]:
            del self.services[name]
        for svc in live_services.values():
            ss = self.services.get(svc.name) or self._service(svc.name)
            for b in svc.backends.values():
                bs = ss.backends.get(b.name) or self._backend(ss, b.name)
                if bs.backend is not b:
                    if bs.backend is not None and bs.label == OTHER:
                        # A new Backend object restarts its counters: bank the old ones.
                        for k, n in bs.seen.items():
                            ss.retired.seen[k] = ss.retired.seen.get(k, 0) + n
                    bs.backend = b
                bs.seen = _backend_counters(b)
            live = {b.name for b in svc.backends.values()}
            for name in [n for n in ss.backends if n and n not in live]:
                bs = ss.backends.pop(name)
                if bs.label == OTHER:
                    ss.retired.absorb(bs)
                else:
                    # Its own series end, but the route's latency histogram must not go down.
                    ss.retired.absorb_durations(bs)
                    ss.labelled -= 1

    def backend_totals(self, service: str, backend: str) -> tuple[int, int] | None:
        """(requests, errors) seen for one backend, for the admin API."""
        ss = self.services.get(service)
        bs = ss.backends.get(backend) if ss is not None else None
        return (bs.requests, bs.errors) if bs is not None else None

    def route_totals(self) -> dict[str, list[int]]:
        """Route name -> [requests, 5xx answers], for the admin API."""
        totals: dict[str, list[int]] = {}
        for ss in self.services.values():
            for bs in (*ss.backends.values(), ss.retired):
                for (route, status, _), n in bs.codes().items():
                    t = totals.get(route)
                    if t is None:
                        t = totals[route] = [0, 0]
                    t[0] += n
                    if status >= 500:
                        t[1] += n
        return totals
