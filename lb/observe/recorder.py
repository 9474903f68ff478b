"""The request-path half of the metrics: counts kept per route, service and backend.

`Recorder.record` runs once per finished exchange. Built with Cython (setup.py), this module
and the .pxd beside it make the stats classes extension types and read the exchange's fields
directly; uncompiled (or with LB_PURE_PYTHON=1) the same file runs as it is.

Durations come from `time.monotonic()`, not `loop.time()`: uvloop's clock ticks in whole
milliseconds, which would leave sub-millisecond requests with no duration at all.
"""

from bisect import bisect_left
from time import monotonic
from typing import TYPE_CHECKING, Any

from ..proxy.grpc import LABELS as GRPC_LABELS

if TYPE_CHECKING:
    from ..hooks import ExchangeView

# Request durations at an ingress: sub-millisecond for lb's own answers and cached backends,
# up to the 30 s default response-head timeout and a little beyond for streamed bodies.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_LE = (*(repr(b) for b in BUCKETS), "+Inf")

# Methods outside this set come from clients and would make the label unbounded.
METHOD_NAMES = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE")
_METHOD_INDEX = {m.encode(): i for i, m in enumerate(METHOD_NAMES)}
_OTHER_INDEX = len(METHOD_NAMES)
_METHOD_LABELS = (*METHOD_NAMES, "OTHER")
OTHER = "other"  # the folded backend label


class Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # per bucket, not cumulative; last is +Inf
        self.sum = 0.0

    def add(self, other: "Histogram") -> None:
        counts = self.counts
        for i, n in enumerate(other.counts):
            counts[i] += n
        self.sum += other.sum

    def cumulative(self) -> list[tuple[str, float]]:
        out, acc = [], 0
        for le, n in zip(_LE, self.counts, strict=True):
            acc += n
            out.append((le, acc))
        return out


class Count:
    """One request counter, incremented in place: counting makes no int object."""

    __slots__ = ("key", "n")

    def __init__(self, key: tuple[str, int, str], n: int = 0) -> None:
        self.key = key  # (route, status, method): the labels it is exported with
        self.n = n


class RouteStats:
    __slots__ = ("failures", "grpc", "index", "name", "retries")

    def __init__(self, name: str, index: int) -> None:
        self.name = name
        self.index = index  # unique per RouteStats, part of the int keys of BackendStats.cells
        self.retries: dict[str, int] = {}  # by service name
        self.failures: dict[tuple[str, str], int] = {}  # (service, failure kind)
        self.grpc: dict[str, int] = {}  # gRPC answers by grpc-status name ("other" folded)


class BackendStats:
    """Counts for one backend address of one service. `seen` holds the counters read from the
    Backend object (selections, breaker transitions) at the last scrape. `durations` are kept
    per backend and route (the look-up a per-route histogram would cost anyway): summed, they
    are lb_request_duration_seconds{route, service}; alone, a backend's latency quantiles for
    the admin API's series."""

    __slots__ = (
        "backend",
        "cells",
        "durations",
        "errors",
        "failures",
        "label",
        "name",
        "requests",
        "seen",
        "upstream_count",
        "upstream_sum",
    )

    def __init__(self, name: str, label: str) -> None:
        self.name = name
        self.label = label
        # Request counts by route, status and method, under one int key made of all three (see
        # Recorder.record): finding the counter allocates nothing and hashes one int.
        self.cells: dict[int, Count] = {}
        self.durations: dict[str, Histogram] = {}  # by route name ("" when none)
        self.requests = 0
        self.errors = 0  # 5xx answers and exchanges that failed, client departures aside
        self.upstream_count = 0
        self.upstream_sum = 0.0
        self.failures: dict[str, int] = {}  # upstream attempt failures by kind
        self.seen: dict[tuple[str, ...], int] = {}
        self.backend: Any = None

    def codes(self) -> dict[tuple[str, int, str], int]:
        """(route, status, method) -> requests, for scrapes and the admin API."""
        out: dict[tuple[str, int, str], int] = {}
        for c in self.cells.values():
            # Two counts share a key when a route was removed and added again by reloads.
            out[c.key] = out.get(c.key, 0) + c.n
        return out

    def drop_routes(self, live: set[str]) -> None:
        """Routes removed by a reload take their series with them."""
        if any(c.key[0] not in live for c in self.cells.values()):
            self.cells = {k: c for k, c in self.cells.items() if c.key[0] in live}
        if any(r not in live for r in self.durations):
            self.durations = {r: h for r, h in self.durations.items() if r in live}

    def absorb_durations(self, other: "BackendStats") -> None:
        for route, src in other.durations.items():
            h = self.durations.get(route)
            if h is None:
                h = self.durations[route] = Histogram()
            h.add(src)

    def absorb(self, other: "BackendStats") -> None:
        for k, c in other.cells.items():
            mine = self.cells.get(k)
            if mine is None:
                self.cells[k] = Count(c.key, c.n)
            else:
                mine.n += c.n
        for d, src in (
            (self.failures, other.failures),
            (self.seen, other.seen),
        ):
            for k, n in src.items():
                d[k] = d.get(k, 0) + n  # type: ignore[index, attr-defined]
        self.absorb_durations(other)
        self.requests += other.requests
        self.errors += other.errors
        self.upstream_count += other.upstream_count
        self.upstream_sum += other.upstream_sum


class ServiceStats:
    __slots__ = ("backends", "labelled", "name", "retired")

    def __init__(self, name: str) -> None:
        self.name = name
        self.backends: dict[str, BackendStats] = {}
        self.labelled = 0
        self.retired = BackendStats("", OTHER)


class Recorder:
    """The request-path observer (`record`, `refusal`) and failure hook (`record_failure`)."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self.routes: dict[str, RouteStats] = {}
        self.no_route = RouteStats("", 0)
        self._route_ids = 1
        self.services: dict[str, ServiceStats] = {}
        self.refused: dict[tuple[str, int], int] = {}

    def record(self, ex: "ExchangeView", ok: bool) -> None:
        now = monotonic()
        route = ex.route
        if route is None:
            rs = self.no_route
        else:
            rs = route.stats
            if rs is None:
                rs = self._route(route)
        svc = ex.service
        sname = "" if svc is None else svc.name
        ss = self.services.get(sname)
        if ss is None:
            ss = self._service(sname)
        bs = ss.backends.get(ex.upstream_name)
        if bs is None:
            bs = self._backend(ss, ex.upstream_name)
        status = ex.status
        method = _METHOD_INDEX.get(ex.method, _OTHER_INDEX)
        key = (rs.index * 1000 + status) * 16 + method
        count = bs.cells.get(key)
        if count is None:
            count = bs.cells[key] = Count((rs.name, status, _METHOD_LABELS[method]))
        count.n += 1
        bs.requests += 1
        failure = ex.failure
        if failure is not None:
            fkey = (sname, failure.label)
            rs.failures[fkey] = rs.failures.get(fkey, 0) + 1
            if failure.breaker:  # a verdict on the backend, not the client leaving
                bs.errors += 1
        elif status >= 500:
            bs.errors += 1
        if ex.retries:
            rs.retries[sname] = rs.retries.get(sname, 0) + ex.retries
        grpc_status = ex.client.grpc_status  # a C field, None but for gRPC calls
        if grpc_status is not None:
            label = GRPC_LABELS.get(grpc_status, OTHER)
            rs.grpc[label] = rs.grpc.get(label, 0) + 1
        t = ex.t_upstream
        if t:
            bs.upstream_count += 1
            bs.upstream_sum += now - t
        h = bs.durations.get(rs.name)
        if h is None:
            h = bs.durations[rs.name] = Histogram()
        d = now - ex.t0
        h.counts[bisect_left(BUCKETS, d)] += 1
        h.sum += d

    def refusal(self, conn: Any, status: int) -> None:
        key = (conn.listener.name, status)
        self.refused[key] = self.refused.get(key, 0) + 1

    def record_failure(self, svc: Any, backend: Any, failure: Any) -> None:
        ss = self.services.get(svc.name) or self._service(svc.name)
        bs = ss.backends.get(backend.name) or self._backend(ss, backend.name)
        label = failure.label
        bs.failures[label] = bs.failures.get(label, 0) + 1

    # -- first sight of a route, service or backend ------------------------------------------------
    def _route(self, route: Any) -> RouteStats:
        # Routes are recompiled on reload; the counts live on by name.
        rs = self.routes.get(route.name)
        if rs is None:
            rs = self.routes[route.name] = RouteStats(route.name, self._route_ids)
            self._route_ids += 1
        route.stats = rs
        return rs

    def _service(self, name: str) -> ServiceStats:
        ss = self.services[name] = ServiceStats(name)
        return ss

    def _backend(self, ss: ServiceStats, name: str) -> BackendStats:
        if not name:
            label = ""  # no backend was chosen (none available, or lb answered itself)
        elif ss.labelled < self.runtime.config.metrics.max_backends_per_service:
            label = name
            ss.labelled += 1
        else:
            label = OTHER
        bs = ss.backends[name] = BackendStats(name, label)
        return bs
