"""The network edge policies attached to the compiled routes: IP allow and deny lists (the
listener's, then the route's) and the route's cap on requests in flight per client.

`install(server)` adds a `NetworkEdge` to the runtime's compile hooks, after traffic
control's: every new route table gets, on each route that proxies and has any of these
policies (or is served by a listener that has one), a `NetworkGuard` as `route.guard`. A
guard another installer put there first runs after this one (`Then`): these decisions are
cheap and synchronous, so they go first.

State kept across reloads: an ip_filter's compiled lists (and their memo) while its config is
the same, a route's in-flight counts while its key spec is the same (requests in flight at a
reload leave the table they entered either way). The trusted proxies behind which the client
is the right-most untrusted X-Forwarded-For hop are the rate limiter's rule, through the same
`ClientIp` key, refreshed in place.

Every decision counts in `lb_edge_decisions_total{policy, route, result}` (a dict increment
on a key built here); a refused exchange names its policy in `ex.refused_by`, which the
access log writes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import model
from ..config.edge_model import ClientInFlight, IpFilter
from ..observe.metrics import register_counter
from ..routing.table import RouteTable
from ..traffic.admission import ClientIp, TrustedProxies, key_function
from .client_caps import InFlight
from .ipfilter import IpRule

if TYPE_CHECKING:
    from ..hooks import Guard
    from ..proxy.exchange import Exchange
    from ..runtime import Runtime
    from ..server import Server

register_counter(
    "edge_decisions",
    "lb_edge_decisions_total",
    "Edge policy decisions by policy (ip_filter, listener_ip_filter, client_in_flight, ...), "
    "route and result (allowed, refused).",
    ("policy", "route", "result"),
)
# Counted by the listeners as they accept (lb/edge/client_caps.py, lb/runtime.py).
register_counter(
    "client_connections_refused",
    "lb_client_connections_refused_total",
    "Connections closed as they were accepted, by listener and policy "
    "(max_connections_per_client, ip_filter on tcp listeners).",
    ("listener", "policy"),
)

Decisions = dict[tuple[str, ...], int]
LISTENER_IP_FILTER = "listener_ip_filter"
IP_FILTER = "ip_filter"
CLIENT_IN_FLIGHT = "client_in_flight"


class NetworkGuard:
    """`route.guard` for one route: the listener's ip_filter, the route's, its in-flight cap."""

    __slots__ = (
        "_cap_no",
        "_cap_ok",
        "_listener_no",
        "_listener_ok",
        "_route_no",
        "_route_ok",
        "by_listener",
        "client_ip",
        "counts",
        "in_flight",
        "rule",
    )

    def __init__(
        self,
        route: str,
        by_listener: dict[str, IpRule],
        rule: IpRule | None,
        in_flight: InFlight | None,
        client_ip: ClientIp,
        counts: Decisions,
    ) -> None:
        self.by_listener = by_listener  # shared with the installer, refreshed in place
        self.rule = rule
        self.in_flight = in_flight
        self.client_ip = client_ip
        self.counts = counts
        # (policy, route, result) keys, built once: a decision costs a dict increment
        self._listener_ok = (LISTENER_IP_FILTER, route, "allowed")
        self._listener_no = (LISTENER_IP_FILTER, route, "refused")
        self._route_ok = (IP_FILTER, route, "allowed")
        self._route_no = (IP_FILTER, route, "refused")
        self._cap_ok = (CLIENT_IN_FLIGHT, route, "allowed")
        self._cap_no = (CLIENT_IN_FLIGHT, route, "refused")

    def admit(self, ex: Exchange) -> bool:
        ip = None
        by_listener = self.by_listener
        if by_listener:
            rule = by_listener.get(ex.client.listener.name)
            if rule is not None:
                ip = self.client_ip.of(ex)
                if not rule.admits(ip):
                    return self._refuse(ex, self._listener_no, 403)
                self.counts[self._listener_ok] += 1
        rule = self.rule
        if rule is not None:
            if ip is None:
                ip = self.client_ip.of(ex)
            if not rule.admits(ip):
                return self._refuse(ex, self._route_no, 403)
            self.counts[self._route_ok] += 1
        in_flight = self.in_flight
        if in_flight is not None:
            slot = in_flight.take(ex)
            if slot is None:
                return self._refuse(ex, self._cap_no, in_flight.status)
            ex.guard = slot
            self.counts[self._cap_ok] += 1
        return True

    def _refuse(self, ex: Exchange, decision: tuple[str, str, str], status: int) -> bool:
        self.counts[decision] += 1
        ex.refused_by = decision[0]
        ex.reply_error(status)
        return False


class Then:
    """Two guards in turn: the second is asked once the first has let the exchange in (the
    first decides synchronously, so the second may answer later)."""

    __slots__ = ("first", "second")

    def __init__(self, first: Guard, second: Guard) -> None:
        self.first = first
        self.second = second

    def admit(self, ex: Exchange) -> bool:
        return self.first.admit(ex) and self.second.admit(ex)


class NetworkEdge:
    """Compiles the network policies of each new route table (`Runtime.compile_hooks`)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.counts: Decisions = runtime.counters["edge_decisions"]
        self.trusted: dict[str, TrustedProxies] = {}
        self.client_ip = ClientIp(self.trusted)
        self.by_listener: dict[str, IpRule] = {}
        # (scope, name) -> (the config it was compiled from, the rule)
        self.rules: dict[tuple[str, str], tuple[IpFilter, IpRule]] = {}
        self.in_flight: dict[str, InFlight] = {}  # by route name

    def compile(self, table: RouteTable) -> None:
        cfg: model.Config = self.runtime.config
        self.trusted.clear()
        for lc in cfg.listeners:
            if lc.trusted_proxies:
                self.trusted[lc.name] = TrustedProxies(lc.trusted_proxies)
        rules: dict[tuple[str, str], tuple[IpFilter, IpRule]] = {}
        self.by_listener.clear()
        for lc in cfg.listeners:
            if lc.mode == "http" and lc.ip_filter is not None:
                self.by_listener[lc.name] = self._rule("listener", lc.name, lc.ip_filter, rules)
        in_flight: dict[str, InFlight] = {}
        for route in table.routes:
            rc = route.config
            if rc.service is None and rc.split is None:
                continue  # answered by lb itself: the config check refuses policies there
            rule = None
            if rc.ip_filter is not None:
                rule = self._rule("route", route.name, rc.ip_filter, rules)
            cap = None
            if rc.client_in_flight is not None:
                cap = in_flight[route.name] = self._in_flight(route.name, rc.client_in_flight)
            if not self.by_listener and rule is None and cap is None:
                continue
            guard = NetworkGuard(
                route.name, self.by_listener, rule, cap, self.client_ip, self.counts
            )
            route.guard = guard if route.guard is None else Then(guard, route.guard)
        self.rules = rules
        self.in_flight = in_flight

    def _rule(
        self,
        scope: str,
        name: str,
        cfg: IpFilter,
        made: dict[tuple[str, str], tuple[IpFilter, IpRule]],
    ) -> IpRule:
        old = self.rules.get((scope, name))
        rule = old[1] if old is not None and old[0] == cfg else IpRule(cfg)
        made[(scope, name)] = (cfg, rule)
        return rule

    def _in_flight(self, route: str, cfg: ClientInFlight) -> InFlight:
        old = self.in_flight.get(route)
        if old is not None and old.key_parts == tuple(cfg.key):
            old.configure(cfg)
            return old
        return InFlight(cfg, key_function(cfg.key, self.trusted))


def install(server: Server) -> NetworkEdge:
    """Attach the network edge policies to `server`'s runtime and compile the running config."""
    runtime = server.runtime
    edge = NetworkEdge(runtime)
    runtime.compile_hooks.append(edge.compile)
    edge.compile(runtime.table)
    return edge
