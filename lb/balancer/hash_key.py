"""The request key a consistent-hash service hashes (`balance.hash_on`), read from the
exchange; None when the request lacks it (the service then picks by least connections).

Small classes rather than closures, like the rate limiter's keys (lb/traffic/admission.py),
whose `ClientIp` is `client_ip` here too: the same client behind `trusted_proxies`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ..config.balance_model import HashOn
from ..proxy.headers import lower_name
from ..traffic.admission import ClientIp, TrustedProxies

if TYPE_CHECKING:
    from ..proxy.exchange import Exchange


def cookie_value(cookie: bytes | None, name: bytes) -> bytes | None:
    """The first value of cookie `name` in the request's Cookie values, as the head analysis
    noted them (`RequestInfo.cookie`, several headers joined)."""
    if cookie is None:
        return None
    prefix = name + b"="
    for part in cookie.split(b";"):
        part = part.strip()
        if part.startswith(prefix):
            return part[len(prefix) :]
    return None


class HashKey(Protocol):
    """What a service hashes on: the request's key, None when it has none."""

    __slots__ = ()

    def of(self, ex: Exchange) -> bytes | None: ...


class HeaderKey(HashKey):
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name.lower().encode("latin-1")

    def of(self, ex: Exchange) -> bytes | None:
        name = self.name
        for n, v in ex.info.forward:
            if lower_name(n) == name:
                return v
        return None


class CookieKey(HashKey):
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name.encode("latin-1")

    def of(self, ex: Exchange) -> bytes | None:
        return cookie_value(ex.info.cookie, self.name)


class QueryKey(HashKey):
    """The raw (still percent-encoded) value of the first `name=` parameter."""

    __slots__ = ("prefix",)

    def __init__(self, name: str) -> None:
        self.prefix = name + "="

    def of(self, ex: Exchange) -> bytes | None:
        query = ex.query
        if not query:
            return None
        prefix = self.prefix
        for part in query.split("&"):
            if part.startswith(prefix):
                return part[len(prefix) :].encode("latin-1")
        return None


class ClientKey(HashKey):
    __slots__ = ("client_ip",)

    def __init__(self, trusted: dict[str, TrustedProxies]) -> None:
        self.client_ip = ClientIp(trusted)

    def of(self, ex: Exchange) -> bytes | None:
        return self.client_ip.of(ex)


def hash_key(cfg: HashOn, trusted: dict[str, TrustedProxies]) -> HashKey:
    """Compile `hash_on`; `trusted` (listener -> proxies) is read per request."""
    if cfg.header is not None:
        return HeaderKey(cfg.header)
    if cfg.cookie is not None:
        return CookieKey(cfg.cookie)
    if cfg.query is not None:
        return QueryKey(cfg.query)
    return ClientKey(trusted)
