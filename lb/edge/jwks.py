"""Signing keys for `jwt` policies: a JWKS file, a JWKS URL refreshed in the background, or an
HMAC secret file.

A `KeySet` is an immutable snapshot; a source replaces its `keys` with a new one when the keys
change, which is how a policy knows to drop the tokens it verified with the old ones. A URL's
last good set is kept while refreshes fail (logged, and counted in `failures`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

import aiohttp
from jwt import PyJWK
from jwt.exceptions import PyJWKError

log = logging.getLogger("lb.edge")

FETCH_TIMEOUT = 5.0  # one JWKS request
RETRY_AFTER_FAILURE = 5.0  # a failed refresh is tried again this soon, however long `refresh`


@dataclass(frozen=True, slots=True)
class Key:
    algorithm: str  # RS256, ES256, EdDSA, HS256: a token must name this one to use the key
    key: object  # a `cryptography` public key, or the HMAC secret (bytes)


@dataclass(frozen=True, slots=True)
class KeySet:
    by_kid: dict[str, Key]
    keys: tuple[Key, ...]  # all of them, for tokens without a kid


def parse_jwks(raw: bytes | str, origin: str) -> KeySet:
    """A JWKS document's usable keys; ValueError when it has none (or is no JWKS)."""
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{origin}: not JSON: {exc}") from None
    entries = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f'{origin}: expected a JWKS: {{"keys": [...]}}')
    by_kid: dict[str, Key] = {}
    keys: list[Key] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue  # an encryption key, say: nothing to verify with
        try:
            jwk = PyJWK(entry)
        except PyJWKError as exc:
            log.warning("%s: key %d skipped: %s", origin, i, exc)
            continue
        key = Key(jwk.algorithm_name, jwk.key)
        keys.append(key)
        if isinstance(entry.get("kid"), str):
            by_kid[entry["kid"]] = key
    if not keys:
        raise ValueError(f"{origin}: no usable signing key")
    return KeySet(by_kid, tuple(keys))


def secret_keys(secret: bytes) -> KeySet:
    key = Key("HS256", secret)
    return KeySet({}, (key,))


class StaticKeys:
    """Keys read from a file when the config was compiled (None: the file could not be read,
    and no token passes)."""

    __slots__ = ("keys", "ready")

    def __init__(self, keys: KeySet | None) -> None:
        self.keys = keys
        self.ready = asyncio.Event()
        self.ready.set()

    def close(self) -> None:
        """Nothing runs in the background."""


class JwksUrl:
    """A JWKS URL, fetched now and every `refresh` seconds; `ready` is set once a first set
    has arrived (a request before then waits for it)."""

    __slots__ = ("_task", "failures", "keys", "ready", "refresh", "url")

    def __init__(self, url: str, refresh: float, loop: asyncio.AbstractEventLoop) -> None:
        self.url = url
        self.refresh = refresh
        self.keys: KeySet | None = None
        self.failures = 0
        self.ready = asyncio.Event()
        self._task = loop.create_task(self._run())

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                wait = self.refresh
                try:
                    self._update(await self._fetch(session))
                except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                    self.failures += 1
                    kept = "keeping the last good keys" if self.keys else "no keys yet"
                    log.warning("JWKS %s: refresh failed (%s); %s", self.url, exc, kept)
                    wait = min(wait, RETRY_AFTER_FAILURE)
                await asyncio.sleep(wait)

    async def _fetch(self, session: aiohttp.ClientSession) -> KeySet:
        async with session.get(self.url) as resp:
            if resp.status != 200:
                raise ValueError(f"HTTP {resp.status}")
            return parse_jwks(await resp.read(), self.url)

    def _update(self, keys: KeySet) -> None:
        if keys != self.keys:  # unchanged: the verified tokens' cache stays valid
            self.keys = keys
        self.ready.set()

    def close(self) -> None:
        self._task.cancel()
