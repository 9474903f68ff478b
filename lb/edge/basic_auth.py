"""`routes[].basic_auth`: users and passwords from an htpasswd file (RFC 7617).

bcrypt and SHA-crypt are slow on purpose, so no verification runs on the event loop: a
`Verifier` (a few threads, shared by every route; bcrypt releases the GIL) checks them, and
admits at most `MAX_PENDING` at a time (running or queued): beyond that a request is answered
503 at once, so that a flood of wrong passwords costs the loop little and cannot queue other
clients behind it. A successful verification is remembered for `cache` seconds, keyed on
`hash()` of the Authorization header: SipHash under this process's secret key, 64 bits, so the
cache holds no password and a header that is not the one verified passes with odds of about
one in 2^64 / (credentials cached). A client sending the same credentials again costs a dict
lookup. Wrong passwords are not remembered.

Refused: 401 with `WWW-Authenticate: Basic realm="..."`, counted as `denied`; verifications
all busy: 503 with `Retry-After: 1`, counted as `overloaded`.
"""

from __future__ import annotations

import asyncio
import binascii
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from time import monotonic
from typing import TYPE_CHECKING

from ..config.edge_model import BasicAuth
from . import htpasswd
from .chain import Refusal, Verdict, without

if TYPE_CHECKING:
    from ..proxy.exchange import Exchange

THREADS = 2  # verifications in parallel: each takes a core while it runs
MAX_PENDING = 32  # verifications running or queued; beyond, 503 at once
CACHE_MAX = 10_000  # remembered credentials per route; the oldest go first
AUTHORIZATION = b"authorization"
_STRIP = frozenset({AUTHORIZATION})
_BUSY = Refusal(
    503, b"503 Service Unavailable: too many logins at once\n", [(b"retry-after", b"1")],
    "overloaded",
)  # fmt: skip


class Verifier:
    """The bounded thread pool where passwords are checked."""

    __slots__ = ("max_pending", "pending", "pool")

    def __init__(self, threads: int = THREADS, max_pending: int = MAX_PENDING) -> None:
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="lb-basic-auth")
        self.max_pending = max_pending
        self.pending = 0

    def submit(
        self, loop: asyncio.AbstractEventLoop, password: bytes, hashed: str
    ) -> asyncio.Future[bool] | None:
        """The verification under way, or None when too many are."""
        if self.pending >= self.max_pending:
            return None
        self.pending += 1
        fut = loop.run_in_executor(self.pool, htpasswd.verify, password, hashed)
        fut.add_done_callback(self._done)
        return fut

    def _done(self, fut: asyncio.Future[bool]) -> None:
        self.pending -= 1

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class BasicAuthPolicy:
    """One route's basic auth: its users, and the credentials it verified lately."""

    __slots__ = ("cache", "challenge", "name", "pending", "strip", "ttl", "users", "verifier")

    def __init__(self, cfg: BasicAuth, users: dict[bytes, str], verifier: Verifier) -> None:
        self.name = "basic_auth"
        self.users = users
        self.verifier = verifier
        self.ttl = float(cfg.cache)
        self.strip = not cfg.forward_authorization
        realm = cfg.realm.replace("\\", "\\\\").replace('"', '\\"')
        self.challenge = Refusal(
            401,
            b"401 Unauthorized\n",
            [(b"www-authenticate", f'Basic realm="{realm}"'.encode())],
        )
        self.cache: dict[int, float] = {}  # hash() of the header -> when it expires
        self.pending: dict[int, asyncio.Future[bool]] = {}  # verifications under way

    def check(self, ex: Exchange) -> Verdict:
        value = ex.info.authorization
        if value is None:
            return self.challenge
        key = hash(value)
        expires = self.cache.get(key)
        if expires is not None:
            if expires > ex.t0:
                self._admit(ex)
                return None
            del self.cache[key]
        credentials = _credentials(value)
        if credentials is None:
            return self.challenge
        user, password = credentials
        hashed = self.users.get(user)
        # One verification per credential at a time: a client opening many connections at
        # once (a browser, a pool) sends the same header on each, and all of them wait for it.
        fut = self.pending.get(key)
        if fut is None:
            fut = self.verifier.submit(ex.client.loop, password, hashed or htpasswd.DUMMY)
            if fut is None:
                return _BUSY
            self.pending[key] = fut
            fut.add_done_callback(partial(self._verified, key))
        return self._settle(ex, fut, key, hashed is not None)

    def _verified(self, key: int, fut: asyncio.Future[bool]) -> None:
        self.pending.pop(key, None)

    async def _settle(
        self, ex: Exchange, fut: asyncio.Future[bool], key: int, known: bool
    ) -> Refusal | None:
        if not await fut or not known:
            return self.challenge
        if self.ttl > 0:
            cache = self.cache
            if len(cache) >= CACHE_MAX:
                del cache[next(iter(cache))]  # the oldest entry: dicts keep insertion order
            cache[key] = monotonic() + self.ttl
        self._admit(ex)
        return None

    def _admit(self, ex: Exchange) -> None:
        if self.strip:
            info = ex.info
            info.forward = without(info.forward, _STRIP)
            info.authorization = None


def _credentials(value: bytes) -> tuple[bytes, bytes] | None:
    """(user, password) of a `Basic` Authorization value, None when it is not one."""
    scheme, _, encoded = value.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = binascii.a2b_base64(encoded.strip(), strict_mode=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    return user, password
