"""`routes[].forward_auth`: ask an auth service whether a request may go on (Traefik's
ForwardAuth, Envoy's HTTP ext_authz).

The subrequest is a GET to `url` with the request's `request_headers` and, as Traefik sends
them, X-Forwarded-Method, -Proto, -Host, -Uri and -For (the client address, after what
trusted hops said). A 2xx answer admits: its `response_headers` are set on the forwarded
request, after the client's own headers of those names are removed (so they cannot be
forged). Any other answer goes back to the client as it is: status, headers and body (a 302 to
a login page, a 401 with its challenge). No answer within `timeout`, or none usable, is
counted in `lb_forward_auth_errors_total{route, reason}` and decided by `on_error`: `deny`
(503) or `allow`.

Connections to the auth service are kept alive in an aiohttp pool of at most `max_idle`,
shared by the routes asking the same URL. With `cache`, 2xx answers are remembered that long,
keyed on the values of the `cache_key` headers.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import aiohttp
from multidict import CIMultiDict

from ..config.edge_model import ForwardAuth
from ..observe.metrics import Counters
from ..proxy.headers import lower_name
from .chain import Refusal, Verdict, vouch
from .metrics import FORWARD_AUTH_ERRORS

if TYPE_CHECKING:
    from ..proxy.exchange import Exchange

BODY_LIMIT = 64 * 1024  # of an auth service's refusal, passed on to the client
CACHE_MAX = 10_000
KEEPALIVE = 30.0  # seconds an idle connection to the auth service is kept
_UNAVAILABLE = Refusal(503, b"503 Service Unavailable: authorization unavailable\n", result="error")
Headers = list[tuple[bytes, bytes]]
# Not passed on from a refusal: the connection's own, and framing lb writes itself.
_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
     b"transfer-encoding", b"upgrade", b"content-length"}
)  # fmt: skip


class AuthPool:
    """Keep-alive connections to one auth service, opened on first use."""

    __slots__ = ("max_idle", "session")

    def __init__(self, max_idle: int) -> None:
        self.max_idle = max_idle
        self.session: aiohttp.ClientSession | None = None

    def get(self) -> aiohttp.ClientSession:
        if self.session is None:  # made in a coroutine: aiohttp wants the running loop
            connector = aiohttp.TCPConnector(limit=self.max_idle, keepalive_timeout=KEEPALIVE)
            self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        return self.session

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()


class BadAnswer(Exception):
    """The auth service answered something lb cannot pass on."""


class ForwardAuthPolicy:
    name = "forward_auth"
    __slots__ = (
        "_errors", "allow_on_error", "cache", "cache_key", "pool", "request_headers",
        "response_headers", "route", "strip", "timeout", "ttl", "url",
    )  # fmt: skip

    def __init__(self, cfg: ForwardAuth, route: str, pool: AuthPool, counters: Counters) -> None:
        self.url = cfg.url
        self.route = route
        self.pool = pool
        self.timeout = float(cfg.timeout)
        self.allow_on_error = cfg.on_error == "allow"
        self.request_headers = frozenset(h.lower().encode("latin-1") for h in cfg.request_headers)
        self.response_headers = tuple(h.lower() for h in cfg.response_headers)
        self.strip = frozenset(h.encode("latin-1") for h in self.response_headers)
        self.ttl = float(cfg.cache)
        self.cache_key = tuple(h.lower().encode("latin-1") for h in cfg.cache_key)
        self.cache: dict[tuple[bytes, ...], tuple[Headers, float]] = {}
        self._errors = counters[FORWARD_AUTH_ERRORS]

    def check(self, ex: Exchange) -> Verdict:
        key = None
        if self.ttl > 0:
            key = self._cache_key(ex.info.forward)
            hit = self.cache.get(key)
            if hit is not None:
                if hit[1] > ex.t0:
                    vouch(ex, self.strip, hit[0])
                    return None
                del self.cache[key]
        return self._ask(ex, key)

    async def _ask(self, ex: Exchange, key: tuple[bytes, ...] | None) -> Refusal | None:
        try:
            async with asyncio.timeout(self.timeout):
                status, headers, body = await self._subrequest(ex)
        except TimeoutError:
            return self._failed(ex, "timeout")
        except (aiohttp.ClientConnectorError, OSError):
            return self._failed(ex, "unreachable")
        except (aiohttp.ClientError, BadAnswer):
            return self._failed(ex, "bad_response")
        if 200 <= status < 300:
            copied = [(n, v) for n, v in headers if lower_name(n).decode() in self.response_headers]
            if key is not None:
                cache = self.cache
                if len(cache) >= CACHE_MAX:
                    del cache[next(iter(cache))]
                cache[key] = (copied, time.monotonic() + self.ttl)
            vouch(ex, self.strip, copied)
            return None
        passed = [(n, v) for n, v in headers if lower_name(n) not in _HOP_BY_HOP]
        return Refusal(status, body, passed, content_type=None)

    async def _subrequest(self, ex: Exchange) -> tuple[int, Headers, bytes]:
        info = ex.info
        client = ex.client
        listener = client.listener
        out: CIMultiDict[str] = CIMultiDict()
        wanted = self.request_headers
        for name, value in info.forward:
            if lower_name(name) in wanted:
                out.add(name.decode("latin-1"), value.decode("latin-1"))
        xff = client.peer_ip if info.xff is None else info.xff + b", " + client.peer_ip
        out["X-Forwarded-For"] = xff.decode("latin-1")
        out["X-Forwarded-Method"] = ex.method.decode("latin-1")
        out["X-Forwarded-Proto"] = listener.scheme
        out["X-Forwarded-Host"] = (info.host or listener.default_host).decode("latin-1")
        out["X-Forwarded-Uri"] = ex.target.decode("latin-1")
        session = self.pool.get()
        async with session.get(self.url, headers=out, allow_redirects=False) as resp:
            if resp.content_length is not None and resp.content_length > BODY_LIMIT:
                raise BadAnswer("body too large")
            body = bytearray()
            async for chunk in resp.content.iter_chunked(16384):
                body += chunk
                if len(body) > BODY_LIMIT:
                    raise BadAnswer("body too large")
            return resp.status, list(resp.raw_headers), bytes(body)

    def _failed(self, ex: Exchange, reason: str) -> Refusal | None:
        self._errors[(self.route, reason)] += 1
        if self.allow_on_error:
            vouch(ex, self.strip, [])
            return None
        return _UNAVAILABLE

    def _cache_key(self, headers: Headers) -> tuple[bytes, ...]:
        names = self.cache_key
        values = [b""] * len(names)
        for name, value in headers:
            low = lower_name(name)
            if low in names:
                i = names.index(low)
                values[i] = value if not values[i] else values[i] + b"\x1f" + value
        return tuple(values)
