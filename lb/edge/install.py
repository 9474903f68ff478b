"""The edge policies wired into the running proxy: `install(server)` attaches an `Edge`, which
compiles the current config and then every reloaded one (`Runtime.compile_hooks`) into
`Route.guard` chains (lb/edge/chain.py), plus `Runtime.unrouted_guard` for requests that
match no route on a listener with policies.

State is kept across reloads wherever its config did not change: a basic-auth policy keeps
its verified credentials while its htpasswd file reads the same, a JWKS URL keeps its keys
and its refresh task, a forward-auth route its cache and the auth service its pool. Files
(htpasswd, JWKS, secret) are read again on every compile, so a reload picks up their changes;
a file that cannot be read then keeps the policy built from its last good read (logged). An
ip_filter keeps its compiled lists (and their memo) while its config is the same, a route's
client_in_flight its counts while its key is the same. What a config no longer uses is
closed: refresh tasks cancelled, pools closed.

The client an ip_filter judges and client_in_flight counts is the rate limiter's client_ip
key (`ClientIp`, the same function), behind the listeners' `trusted_proxies`, refreshed in
place on every compile.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import TYPE_CHECKING

from ..config import model
from ..config.edge_model import BasicAuth, ClientInFlight, ForwardAuth, IpFilter, Jwt
from ..observe.metrics import Counters
from ..routing.table import RouteTable
from ..traffic.admission import ClientIp, TrustedProxies, key_function
from . import htpasswd
from .basic_auth import BasicAuthPolicy, Verifier
from .chain import Chain, Policy, Step
from .client_caps import InFlight
from .forward_auth import AuthPool, ForwardAuthPolicy
from .ipfilter import IpRule
from .jwks import JwksUrl, StaticKeys, parse_jwks, secret_keys
from .jwt_auth import JwtPolicy, KeySource
from .metrics import Decisions
from .network import ClientInFlightPolicy, IpFilterPolicy

if TYPE_CHECKING:
    from ..runtime import Runtime
    from ..server import Server

log = logging.getLogger("lb.edge")

# (policy, reroute): a listener's jwt that copies claims asks for a new route lookup after it
ListenerPart = list[tuple[Policy, bool]]


class Edge:
    def __init__(self, runtime: Runtime, loop: asyncio.AbstractEventLoop) -> None:
        self.runtime = runtime
        self.loop = loop
        self.verifier: Verifier | None = None  # made with the first basic_auth policy
        # route name -> (settings, htpasswd digest, policy)
        self.basic: dict[str, tuple[BasicAuth, bytes, BasicAuthPolicy]] = {}
        # (scope, name) -> (settings, key-file digest, policy); scope "listener" or "route"
        self.jwt: dict[tuple[str, str], tuple[Jwt, bytes, JwtPolicy]] = {}
        self.jwks_urls: dict[tuple[str, float], JwksUrl] = {}
        self.forward: dict[str, tuple[ForwardAuth, ForwardAuthPolicy]] = {}
        self.pools: dict[tuple[str, int], AuthPool] = {}
        self.trusted: dict[str, TrustedProxies] = {}  # by listener, refreshed in place
        self.client_ip = ClientIp(self.trusted)
        # (scope, name) -> (the config it was compiled from, the rule)
        self.rules: dict[tuple[str, str], tuple[IpFilter, IpRule]] = {}
        self.in_flight: dict[str, InFlight] = {}  # by route name
        self._closing: set[asyncio.Task[None]] = set()

    # -- compiling a config -----------------------------------------------------------------------
    def compile(self, table: RouteTable) -> None:
        """`Runtime.compile_hooks`: runs with `runtime.config` already updated."""
        cfg: model.Config = self.runtime.config
        basic: dict[str, tuple[BasicAuth, bytes, BasicAuthPolicy]] = {}
        jwts: dict[tuple[str, str], tuple[Jwt, bytes, JwtPolicy]] = {}
        urls: dict[tuple[str, float], JwksUrl] = {}
        forward: dict[str, tuple[ForwardAuth, ForwardAuthPolicy]] = {}
        pools: dict[tuple[str, int], AuthPool] = {}
        rules: dict[tuple[str, str], tuple[IpFilter, IpRule]] = {}
        in_flight: dict[str, InFlight] = {}
        self.trusted.clear()
        for lc in cfg.listeners:
            if lc.trusted_proxies:
                self.trusted[lc.name] = TrustedProxies(lc.trusted_proxies)
        listeners: dict[str, ListenerPart] = {}
        for lc in cfg.listeners:
            part: ListenerPart = []
            if lc.mode == "http" and lc.ip_filter is not None:
                rule = self._rule(("listener", lc.name), lc.ip_filter, rules)
                part.append((IpFilterPolicy("listener_ip_filter", rule, self.client_ip), False))
            if lc.mode == "http" and lc.jwt is not None:
                policy = self._jwt(("listener", lc.name), lc.jwt, jwts, urls)
                part.append((policy, bool(lc.jwt.claims_to_headers)))
            if part:
                listeners[lc.name] = part
        counters = self.runtime.counters
        for route in table.routes:
            rc = route.config
            own: list[Policy] = []
            if rc.ip_filter is not None:
                rule = self._rule(("route", route.name), rc.ip_filter, rules)
                own.append(IpFilterPolicy("ip_filter", rule, self.client_ip))
            if rc.basic_auth is not None:
                own.append(self._basic(route.name, rc.basic_auth, basic))
            if rc.jwt is not None:
                own.append(self._jwt(("route", route.name), rc.jwt, jwts, urls))
            if rc.forward_auth is not None:
                own.append(self._forward(route.name, rc.forward_auth, forward, pools))
            if rc.client_in_flight is not None:  # last: it holds a slot once it admits
                cap = in_flight[route.name] = self._in_flight(route.name, rc.client_in_flight)
                own.append(ClientInFlightPolicy(cap))
            if not own and not listeners:
                route.guard = None
                continue
            mine = tuple(Step(p, Decisions(counters, p.name, route.name)) for p in own)
            by_listener = {
                name: _steps(part, route.name, counters) + mine for name, part in listeners.items()
            }
            route.guard = Chain(by_listener, mine)
        self.runtime.unrouted_guard = (
            Chain({name: _steps(part, "", counters) for name, part in listeners.items()}, ())
            if listeners
            else None
        )
        self._retire(basic, jwts, urls, forward, pools)
        self.rules, self.in_flight = rules, in_flight

    def _rule(
        self,
        key: tuple[str, str],
        cfg: IpFilter,
        made: dict[tuple[str, str], tuple[IpFilter, IpRule]],
    ) -> IpRule:
        old = self.rules.get(key)
        rule = old[1] if old is not None and old[0] == cfg else IpRule(cfg)
        made[key] = (cfg, rule)
        return rule

    def _in_flight(self, route: str, cfg: ClientInFlight) -> InFlight:
        old = self.in_flight.get(route)
        if old is not None and old.key_parts == tuple(cfg.key):
            old.configure(cfg)
            return old
        return InFlight(route, cfg, key_function(cfg.key, self.trusted))

    def _basic(
        self, route: str, cfg: BasicAuth, made: dict[str, tuple[BasicAuth, bytes, BasicAuthPolicy]]
    ) -> BasicAuthPolicy:
        old = self.basic.get(route)
        users, problems = htpasswd.read(cfg.htpasswd)
        if problems:
            for problem in problems:
                log.error("route %s: basic_auth: %s", route, problem)
            if old is not None and old[0] == cfg:
                made[route] = old
                return old[2]
            # Nothing good to keep: refuse everyone rather than let anyone in.
            users = {}
        digest = hashlib.sha256(repr(sorted(users.items())).encode()).digest()
        if old is not None and old[0] == cfg and old[1] == digest:
            made[route] = old
            return old[2]
        if self.verifier is None:
            self.verifier = Verifier()
        policy = BasicAuthPolicy(cfg, users, self.verifier)
        made[route] = (cfg, digest, policy)
        return policy

    def _jwt(
        self,
        key: tuple[str, str],
        cfg: Jwt,
        made: dict[tuple[str, str], tuple[Jwt, bytes, JwtPolicy]],
        urls: dict[tuple[str, float], JwksUrl],
    ) -> JwtPolicy:
        old = self.jwt.get(key)
        source: KeySource | None = None
        digest = b""
        if cfg.jwks_url:
            ukey = (cfg.jwks_url, float(cfg.jwks_refresh))
            fetcher = urls.get(ukey) or self.jwks_urls.get(ukey)
            if fetcher is None:
                fetcher = JwksUrl(cfg.jwks_url, float(cfg.jwks_refresh), self.loop)
            source = urls[ukey] = fetcher
        else:
            path = cfg.jwks_file or cfg.secret_file
            assert path is not None  # the config check wants exactly one key source
            try:
                with open(path, "rb") as f:
                    raw = f.read()
                digest = hashlib.sha256(raw).digest()
                if old is not None and old[0] == cfg and old[1] == digest:
                    made[key] = old
                    return old[2]
                keys = parse_jwks(raw, path) if cfg.jwks_file else secret_keys(raw.strip())
                source = StaticKeys(keys)
            except (OSError, ValueError) as exc:
                log.error("%s %s: jwt: %s", key[0], key[1], exc)
                if old is not None and old[0] == cfg:
                    made[key] = old
                    return old[2]
                source = StaticKeys(None)  # nothing to verify with: every token refused (503)
        if old is not None and old[0] == cfg and old[1] == digest and old[2].source is source:
            made[key] = old
            return old[2]
        policy = JwtPolicy(cfg, source)
        made[key] = (cfg, digest, policy)
        return policy

    def _forward(
        self,
        route: str,
        cfg: ForwardAuth,
        made: dict[str, tuple[ForwardAuth, ForwardAuthPolicy]],
        pools: dict[tuple[str, int], AuthPool],
    ) -> ForwardAuthPolicy:
        pkey = (cfg.url, cfg.max_idle)
        pool = pools.get(pkey) or self.pools.get(pkey) or AuthPool(cfg.max_idle)
        pools[pkey] = pool
        old = self.forward.get(route)
        if old is not None and old[0] == cfg and old[1].pool is pool:
            made[route] = old
            return old[1]
        policy = ForwardAuthPolicy(cfg, route, pool, self.runtime.counters)
        made[route] = (cfg, policy)
        return policy

    def _retire(
        self,
        basic: dict[str, tuple[BasicAuth, bytes, BasicAuthPolicy]],
        jwts: dict[tuple[str, str], tuple[Jwt, bytes, JwtPolicy]],
        urls: dict[tuple[str, float], JwksUrl],
        forward: dict[str, tuple[ForwardAuth, ForwardAuthPolicy]],
        pools: dict[tuple[str, int], AuthPool],
    ) -> None:
        for ukey, fetcher in self.jwks_urls.items():
            if urls.get(ukey) is not fetcher:
                fetcher.close()
        for pkey, pool in self.pools.items():
            if pools.get(pkey) is not pool:
                self._close_later(pool)
        self.basic, self.jwt, self.jwks_urls = basic, jwts, urls
        self.forward, self.pools = forward, pools

    def _close_later(self, pool: AuthPool) -> None:
        task = self.loop.create_task(pool.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    # -- the Server extension interface -----------------------------------------------------------
    async def start(self) -> None:
        """Nothing to start: install() compiled the running config."""

    async def reconfigure(self) -> None:
        """Nothing to do: the compile hook ran inside Runtime.apply()."""

    async def stop(self) -> None:
        for fetcher in self.jwks_urls.values():
            fetcher.close()
        for pool in self.pools.values():
            await pool.close()
        if self.verifier is not None:
            self.verifier.close()


def _steps(part: ListenerPart, route: str, counters: Counters) -> tuple[Step, ...]:
    return tuple(Step(p, Decisions(counters, p.name, route), reroute) for p, reroute in part)


def install(server: Server) -> Edge:
    """Attach the edge policies to `server`'s runtime and compile the running config."""
    runtime = server.runtime
    edge = Edge(runtime, server.loop)
    runtime.compile_hooks.append(edge.compile)
    server.extensions.append(edge)
    edge.compile(runtime.table)
    return edge
