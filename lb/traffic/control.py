"""Traffic control wired into the running proxy: rate limits, service gates (caps and the
service breaker), backend breakers, outlier ejection, retries and active health checks.

`install(server)` attaches one `TrafficControl` to the runtime. It compiles the current config
and then every reloaded one, through `Runtime.compile_hooks`, on the new route table before
the table is swapped in. State is kept across reloads wherever its config did not change: a
limit keeps its buckets (a reload hands no client a fresh burst), a retry its budget, a
service its gate counts, breakers, ejections and health checkers. Keys: (scope, name) for
limits, the route name for retries, the Service object (which reloads update in place) for
the rest.

Outcomes come back through the runtime's hooks: `record_failure` once per failed attempt
(backend breakers, outlier detection) and `record` once per exchange (the outcome of its last
attempt for the backend, the exchange's outcome for the service breaker, and the release of
the retry slots it held). Both hooks are attached only while some service or route needs
them, so a config without these features pays nothing per request.

Built with Cython (setup.py), `TrafficControl` is an extension type typed by control.pxd, so
its per-exchange `record` reads the exchange and the breakers as C fields.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from ..config import model
from ..proxy.failures import BAD_STATUS, CLIENT_GONE, Failure
from ..routing.table import RouteTable
from ..runtime import set_hook
from .admission import Admission, Limit, TrustedProxies, key_function
from .breaker import CLOSED
from .gates import RouteRetry
from .passive import ServiceControl
from .ratelimit import LocalLimiter
from .ratelimit_redis import RedisLimiter, client_for

DEFAULT_RETRIES = model.Retries()


class TrafficControl:
    __slots__ = (
        "_closing",
        "clock",
        "counters",
        "limits",
        "listener_limits",
        "loop",
        "redis",
        "retries",
        "runtime",
        "services",
        "trusted",
    )

    def __init__(
        self,
        runtime: Any,
        loop: asyncio.AbstractEventLoop,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.runtime = runtime
        self.loop = loop
        self.clock = clock or loop.time
        self.counters: dict[str, Any] = runtime.counters
        self.services: dict[Any, ServiceControl] = {}
        # (scope, name) -> (the settings it was built from, the limit)
        self.limits: dict[tuple[str, str], tuple[Any, Limit]] = {}
        self.retries: dict[str, RouteRetry] = {}
        # Shared with the compiled routes and refreshed in place, so that limits kept across a
        # reload see the listeners' new settings.
        self.listener_limits: dict[str, Limit] = {}
        self.trusted: dict[str, TrustedProxies] = {}
        self.redis: dict[tuple[str, float], Redis] = {}  # one client per (url, timeout)
        self._closing: set[asyncio.Task[None]] = set()

    # -- compiling a config -----------------------------------------------------------------------
    def compile(self, table: RouteTable) -> None:
        """`Runtime.compile_hooks`: runs with services and `runtime.config` already updated."""
        cfg: model.Config = self.runtime.config
        self.trusted.clear()
        for lc in cfg.listeners:
            if lc.trusted_proxies:
                self.trusted[lc.name] = TrustedProxies(lc.trusted_proxies)
        limits: dict[tuple[str, str], tuple[Any, Limit]] = {}
        clients: set[tuple[str, float]] = set()
        self.listener_limits.clear()
        for lc in cfg.listeners:
            if lc.rate_limit is not None:
                limit = self._limit("listener", lc.name, lc.rate_limit, cfg, limits, clients)
                self.listener_limits[lc.name] = limit
        retries: dict[str, RouteRetry] = {}
        for route in table.routes:
            rc = route.config
            if rc.service is None and rc.split is None:
                continue  # answered by lb itself: nothing to limit or retry
            own = None
            if rc.rate_limit is not None:
                own = self._limit("route", route.name, rc.rate_limit, cfg, limits, clients)
            if self.listener_limits or (own is not None and own.shared is not None):
                route.limiter = Admission(self.listener_limits, own)
            else:
                route.limiter = own  # the common case, one call on the request path
            # Every proxied route retries: without `retries:` it has the defaults, so that a
            # backend crash is invisible to idempotent requests (`attempts: 1` turns it off).
            wanted = rc.retries if rc.retries is not None else DEFAULT_RETRIES
            retry = self.retries.get(route.name)
            if retry is None or retry.cfg != wanted:
                retry = RouteRetry(route.name, wanted, self.counters)
            route.retry = retries[route.name] = retry
        self.limits = limits
        self.retries = retries
        for key in set(self.redis) - clients:
            task = self.loop.create_task(self.redis.pop(key).aclose())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        self._compile_services()
        needed = any(sc.active for sc in self.services.values())
        self.runtime.observe(self, needed)
        set_hook(self.runtime.failure_hooks, self, needed)

    def _limit(
        self,
        scope: str,
        name: str,
        rl: model.RateLimit,
        cfg: model.Config,
        made: dict[tuple[str, str], tuple[Any, Limit]],
        clients: set[tuple[str, float]],
    ) -> Limit:
        redis_cfg = (cfg.redis or model.Redis()) if rl.backend == "redis" else None
        origin = (rl, redis_cfg)
        client_key = (redis_cfg.url, redis_cfg.timeout) if redis_cfg is not None else None
        if client_key is not None:
            clients.add(client_key)
        old = self.limits.get((scope, name))
        if old is not None and old[0] == origin:
            made[(scope, name)] = old
            return old[1]
        shared = None
        rate, period = rl.rate
        if redis_cfg is not None and client_key is not None:
            client = self.redis.get(client_key)
            if client is None:
                client = self.redis[client_key] = client_for(redis_cfg.url, redis_cfg.timeout)
            shared = RedisLimiter(
                redis_cfg.url,
                rate,
                period,
                rl.burst,
                prefix=f"lb:rl:{scope}:{name}:",
                timeout=redis_cfg.timeout,
                failure_policy=rl.on_redis_failure,
                local=LocalLimiter(rate, period, rl.burst, max_keys=rl.max_keys),
                client=client,
            )
        limit = Limit(scope, name, rl, key_function(rl.key, self.trusted), self.counters, shared)
        made[(scope, name)] = (origin, limit)
        return limit

    def _compile_services(self) -> None:
        runtime = self.runtime
        live = set(runtime.services.values())
        for svc in list(self.services):
            if svc not in live:
                self.services.pop(svc).close(forget=True)
        for svc in live:
            sc = self.services.get(svc)
            if sc is None:
                sc = self.services[svc] = ServiceControl(svc, self.clock, self.loop)
            # Health checks of a TLS service probe over TLS, with the data path's context.
            tls = runtime.upstream_tls(svc) if svc.config.health_check is not None else None
            sc.configure(svc.config, tls)

    # -- outcomes (runtime.observers and runtime.failure_hooks) -----------------------------------
    def record_failure(self, svc: Any, backend: Any, failure: Failure) -> None:
        sc = self.services.get(svc)
        if sc is not None:
            sc.failed(backend, failure, self.clock())

    def record(self, ex: Any, ok: bool) -> None:
        b = ex.last_backend
        if b is None:
            return  # lb answered without a backend
        failure = ex.failure
        if ex.response_started and ex.status < 500 and (failure is None or failure is CLIENT_GONE):
            # The common case, inline: a response from the backend, and not a 5xx.
            now = ex.t0
            breaker = b.breaker
            if breaker is not None:
                if breaker.state == CLOSED:
                    breaker.record(True, now)
                else:
                    breaker.outcome(True, now)
            outlier = b.service.outlier
            if outlier is not None:
                outlier.record(b, True, now)
            breaker = ex.service.breaker
            if breaker is not None:
                breaker.record(True, now)
            return
        if ex.response_started:
            failure = BAD_STATUS if ex.status >= 500 else failure
            sc = self.services.get(b.service)
            if sc is not None and failure is not None:
                sc.failed(b, failure, self.clock())
        elif failure is None or not failure.attempt:
            # No verdict: the client left, or lb answered before the backend did. (Failed
            # attempts were counted for their backends as they failed.)
            return
        breaker = ex.service.breaker
        if breaker is not None:
            sc = self.services.get(ex.service)
            bad = sc is not None and failure in sc.failure_kinds
            breaker.record(not bad, self.clock() if bad else ex.t0)

    def refusal(self, conn: Any, status: int) -> None:
        """Connections refused before any exchange say nothing about backends."""

    # -- the Server extension interface -----------------------------------------------------------
    async def start(self) -> None:
        """Nothing to start: install() compiled the running config."""

    async def reconfigure(self) -> None:
        """Nothing to do: the compile hook ran inside Runtime.apply()."""

    async def stop(self) -> None:
        for sc in self.services.values():
            sc.close(forget=False)
        for client in self.redis.values():
            await client.aclose()
        self.redis.clear()


def install(server: Any) -> TrafficControl:
    """Attach traffic control to `server`'s runtime and compile the running config."""
    runtime = server.runtime
    control = TrafficControl(runtime, server.loop)
    runtime.compile_hooks.append(control.compile)
    server.extensions.append(control)
    control.compile(runtime.table)
    return control
