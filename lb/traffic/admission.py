"""Rate limits on the request path: the key a request is counted under, the decision, the 429.

`Admission` is what a route holds as `route.limiter`: the listener's limit (if the listener
has one) and the route's own, checked in that order. A local limit decides in place; a limit
shared through Redis needs a round trip, so `admit` hands the exchange to a task that calls
`ex.forward()` or answers 429 once Redis (or the failure policy) has decided.

Keys: `client_ip` is the peer address, or, when the peer is one of the listener's
`trusted_proxies`, the right-most X-Forwarded-For address outside them (anything further left
was written by the client and could be forged); `header:NAME` is the first value of that
header, empty when absent (such requests share one bucket); `route` is the route's name, so a
listener-level limit keyed by it gives each route its own bucket. Several parts combine into
one key.

Built with Cython (setup.py), `TrustedProxies`, the key parts (`Key` and its kinds), `Limit`
and `Admission` are extension types typed by admission.pxd: `admit` runs once per
rate-limited request, and calls the key and the limiter in C.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Hashable
from typing import Any

from ..config import model
from ..proxy.exchange import DONE
from .ratelimit import Decision
from .ratelimit_redis import RedisLimiter
from .shared_ratelimit import local_limiter  # shared by the workers of `lb run --workers N`

log = logging.getLogger(__name__)

_BODY = b"429 Too Many Requests\n"
_SEPARATOR = b"\x1f"  # joins key parts; cannot occur in an address or a header value
# Addresses judged per listener. Only X-Forwarded-For hops a trusted proxy passed on are looked
# up, but those are written by clients: the cache is emptied rather than grown when full.
_TRUST_CACHE_MAX = 4096

Counts = dict[tuple[str, ...], int]
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """One listener's `trusted_proxies`: who the client is behind them."""

    __slots__ = ("_cache", "networks")

    def __init__(self, cidrs: list[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)
        self._cache: dict[bytes, bool] = {}

    def trusted(self, ip: bytes) -> bool:
        hit = self._cache.get(ip)
        if hit is None:
            hit = _within(ip, self.networks)
            if len(self._cache) >= _TRUST_CACHE_MAX:
                self._cache.clear()
            self._cache[ip] = hit
        return hit

    def client_ip(self, peer: bytes, xff: bytes | None) -> bytes:
        if xff is None or not self.trusted(peer):
            return peer
        hop = peer
        for part in reversed(xff.split(b",")):
            hop = part.strip()
            if not self.trusted(hop):
                return hop
        return hop  # every hop is trusted: the left-most is the best there is


def _within(ip: bytes, networks: tuple[IpNetwork, ...]) -> bool:
    # A function of its own: compiled, `trusted` is a cpdef method, which holds no generator.
    try:
        addr = ipaddress.ip_address(ip.decode("latin-1"))
    except ValueError:
        return False
    return any(addr in net for net in networks)


class Key:
    """A compiled `key` spec: `of(ex)` is the key an exchange is counted under. Small classes
    rather than closures: compiled, a limit calls `of` in C, and `of` reads the exchange's
    fields directly. Calling a key is calling `of`."""

    __slots__ = ()

    def __call__(self, ex: Any) -> Hashable:
        return self.of(ex)

    def of(self, ex: Any) -> Hashable:
        raise NotImplementedError


class ClientIp(Key):
    """`client_ip`. `trusted` (listener name -> proxies) is read per request, so the
    controller can refresh it in place on reload and limits kept across reloads follow."""

    __slots__ = ("trusted",)

    def __init__(self, trusted: dict[str, TrustedProxies]) -> None:
        self.trusted = trusted

    def of(self, ex: Any) -> bytes:
        client = ex.client
        trusted = self.trusted
        if not trusted:
            return client.peer_ip  # type: ignore[no-any-return]
        proxies = trusted.get(client.listener.name)
        if proxies is None:
            return client.peer_ip  # type: ignore[no-any-return]
        return proxies.client_ip(client.peer_ip, ex.info.xff)  # type: ignore[no-any-return]


class Host(Key):
    """`header:host`: the request's host, which the head analysis has already found."""

    __slots__ = ()

    def of(self, ex: Any) -> bytes:
        return ex.info.host or b""  # type: ignore[no-any-return]


class Header(Key):
    """`header:NAME`: the first value of that header, empty when absent."""

    __slots__ = ("name",)

    def __init__(self, name: bytes) -> None:
        self.name = name  # lower case

    def of(self, ex: Any) -> bytes:
        name = self.name
        for n, v in ex.info.forward:
            if n.lower() == name:
                return v  # type: ignore[no-any-return]
        return b""


class RouteName(Key):
    """`route`: the route's name, so a listener-level limit gives each route its own bucket."""

    __slots__ = ()

    def of(self, ex: Any) -> bytes:
        return ex.route.name.encode()  # type: ignore[no-any-return]


class Joined(Key):
    """Several parts, joined into one key."""

    __slots__ = ("parts",)

    def __init__(self, parts: tuple[Key, ...]) -> None:
        self.parts = parts

    def of(self, ex: Any) -> bytes:
        return _SEPARATOR.join([part.of(ex) for part in self.parts])


def key_function(parts: list[str], trusted: dict[str, TrustedProxies]) -> Key:
    """Compile a `key` spec; `trusted` is read per request (see ClientIp)."""
    keys: list[Key] = []
    for part in parts:
        if part == "client_ip":
            keys.append(ClientIp(trusted))
        elif part == "route":
            keys.append(RouteName())
        else:
            name = part.partition(":")[2].strip().lower().encode("latin-1")
            keys.append(Host() if name == b"host" else Header(name))
    return keys[0] if len(keys) == 1 else Joined(tuple(keys))


class Limit:
    """One configured limit (a listener's or a route's) with its counters.

    `decisions` counts "allowed", "limited", "dry_run_limited" and "redis_failure" (decisions
    taken by the failure policy because Redis did not answer); the same events also go to
    the metrics registry under the scope ("listener" or "route") and name.

    A route whose only limit is its own, kept in process, holds the Limit itself as
    `route.limiter` (`admit`); any other combination goes through an `Admission`.
    """

    __slots__ = (
        "_allowed",
        "_counts",
        "_dry_run",
        "_limited",
        "_redis_errors",
        "allowed",
        "cfg",
        "dry_run",
        "dry_run_limited",
        "key",
        "limited",
        "local",
        "name",
        "redis_failures",
        "scope",
        "shared",
    )

    def __init__(
        self,
        scope: str,
        name: str,
        cfg: model.RateLimit,
        key: Key,
        registry: dict[str, Counts],
        shared: RedisLimiter | None = None,
    ) -> None:
        rate, period = cfg.rate
        self.scope = scope
        self.name = name
        self.cfg = cfg
        self.key = key
        self.dry_run = cfg.dry_run
        self.local = (
            shared.local
            if shared is not None
            else local_limiter(scope, name, rate, period, cfg.burst, max_keys=cfg.max_keys)
        )
        self.shared = shared
        self.allowed = 0
        self.limited = 0
        self.dry_run_limited = 0
        self.redis_failures = 0
        self._counts = registry["ratelimit"]
        self._redis_errors = registry["ratelimit_redis_errors"]
        self._allowed = (scope, name, "allowed")
        self._limited = (scope, name, "limited")
        self._dry_run = (scope, name, "dry_run")

    @property
    def decisions(self) -> dict[str, int]:
        return {
            "allowed": self.allowed,
            "limited": self.limited,
            "dry_run_limited": self.dry_run_limited,
            "redis_failure": self.redis_failures,
        }

    def admit(self, ex: Any) -> bool:
        """Decide in process; False when the request was answered with 429."""
        key = self.key.of(ex)
        if self.local.allow(key, ex.t0):
            self.allowed += 1
            self._counts[self._allowed] += 1
            return True
        return self.settle(ex, self.local.check(key, ex.t0))

    async def decide(self, ex: Any) -> Decision:
        """Decide through Redis, or by the failure policy when Redis does not answer."""
        shared = self.shared
        assert shared is not None
        key = self.key.of(ex)
        text = key.decode("latin-1") if isinstance(key, bytes) else str(key)
        d = await shared.check(text, ex.t0)
        if shared.degraded:
            self.redis_failures += 1
            self._redis_errors[(shared.failure_policy,)] += 1
        return d

    def settle(self, ex: Any, d: Decision) -> bool:
        """Count a decision; answer 429 unless it allowed the request or this is a dry run."""
        if d.allowed:
            self.allowed += 1
            self._counts[self._allowed] += 1
            return True
        if self.dry_run:
            self.dry_run_limited += 1
            self._counts[self._dry_run] += 1
            return True
        self.limited += 1
        self._counts[self._limited] += 1
        ex.reply(429, _BODY, self.local.headers(d, self.name))
        return False


class Admission:
    """`route.limiter` in general: the listener's limit, then the route's; a limit shared
    through Redis makes the decision asynchronous."""

    __slots__ = ("by_listener", "route_limit", "tasks")

    def __init__(self, by_listener: dict[str, Limit], route_limit: Limit | None) -> None:
        # Shared with the controller and every route compiled with it; empty when no listener
        # has a limit, which the request path tests first.
        self.by_listener = by_listener
        self.route_limit = route_limit
        self.tasks: set[asyncio.Task[None]] = set()

    def admit(self, ex: Any) -> bool:
        by_listener = self.by_listener
        first = by_listener.get(ex.client.listener.name) if by_listener else None
        second = self.route_limit
        if first is None:
            if second is None:
                return True
            if second.shared is None:
                return second.admit(ex)
            self._later(ex, (second,))
            return False
        if first.shared is None and (second is None or second.shared is None):
            return first.admit(ex) and (second is None or second.admit(ex))
        self._later(ex, (first,) if second is None else (first, second))
        return False

    def _later(self, ex: Any, limits: tuple[Limit, ...]) -> None:
        task = ex.client.loop.create_task(self._admit_shared(ex, limits))
        self.tasks.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(self.tasks.discard)

    async def _admit_shared(self, ex: Any, limits: tuple[Limit, ...]) -> None:
        try:
            for limit in limits:
                if limit.shared is None:
                    allowed = limit.admit(ex)
                else:
                    d = await limit.decide(ex)
                    if ex.phase == DONE:
                        return  # the client left while Redis answered
                    allowed = limit.settle(ex, d)
                if not allowed:
                    return
            ex.forward()
        except Exception:
            # Nothing above should raise; if it does, answer rather than leave the client hanging.
            log.exception("rate limit decision failed")
            if ex.phase != DONE:
                ex.reply_error(500)
