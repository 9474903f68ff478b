"""`routes[].jwt` and `listeners[].jwt`: bearer tokens (RFC 7519) verified with PyJWT.

The token is read from `Authorization: Bearer`, or from `cookie` when no Bearer header is
sent. Its header's `alg` must be one of `algorithms` and the key's own (a JWK of type RSA is
for RS256 only, and so on: no algorithm confusion); `kid` picks the key, and a token without
one is tried against every key. `exp` and `nbf` allow `clock_skew`; `iss` must equal `issuer`
and `aud` name one of `audiences`, when set.

A verified token is remembered until it expires (at most CACHE_TTL), until the keys change,
keyed on the header value that carried it (the Authorization value, or the whole Cookie
header) and on the token itself: a client sending the same header again costs a dict lookup,
and one whose other cookies changed a cookie parse more. RS256/ES256/EdDSA
verification (tens of microseconds) runs on the loop; nothing here blocks.

Admitted: the headers named in `claims_to_headers` are first removed from the request (a
client cannot forge them), then set from the token's claims (`a.b` reads a nested claim; a
list is joined with ","; an object is JSON; control characters are dropped);
`forward_token: false` removes the Authorization header too. Refused: 401 with
`WWW-Authenticate: Bearer realm="..."` when no token was sent, and `Bearer realm="...",
error="invalid_token", error_description="..."` saying why (RFC 6750).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import TYPE_CHECKING

import jwt
from jwt import exceptions as E

from ..config.edge_model import Jwt
from .chain import Refusal, Verdict, vouch
from .jwks import JwksUrl, KeySet, StaticKeys

if TYPE_CHECKING:
    from ..proxy.exchange import Exchange

CACHE_TTL = 300.0  # seconds a verified token is remembered at most
CACHE_MAX = 10_000  # remembered tokens per policy; the oldest go first
FIRST_KEYS_WAIT = 5.0  # a request arriving before a JWKS URL's first answer waits this long
AUTHORIZATION = b"authorization"
_UNSAFE = re.compile(rb"[\x00-\x1f\x7f]")  # kept out of header values made from claims
_REASONS: list[tuple[type[Exception], str]] = [
    (E.ExpiredSignatureError, "the token has expired"),
    (E.ImmatureSignatureError, "the token is not valid yet"),
    (E.InvalidAudienceError, "wrong audience"),
    (E.InvalidIssuerError, "wrong issuer"),
    (E.InvalidSignatureError, "bad signature"),
    (E.MissingRequiredClaimError, "a required claim is missing"),
    (E.InvalidAlgorithmError, "algorithm not allowed"),
    (E.DecodeError, "malformed token"),
]

Headers = list[tuple[bytes, bytes]]
KeySource = StaticKeys | JwksUrl


class Invalid(Exception):
    """A token refused, and why (the error_description)."""


class JwtPolicy:
    __slots__ = (
        "_cached_keys", "_refusals", "algorithms", "audiences", "cache", "claims", "cookie",
        "issuer", "missing", "name", "options", "realm", "skew", "source", "strip",
    )  # fmt: skip

    def __init__(self, cfg: Jwt, source: KeySource) -> None:
        self.name = "jwt"
        self.source = source
        self.algorithms = frozenset(cfg.algorithms)
        self.issuer = cfg.issuer
        self.audiences = list(cfg.audiences) or None
        self.options = {"verify_aud": bool(cfg.audiences)}
        self.skew = float(cfg.clock_skew)
        self.cookie = cfg.cookie.encode() + b"=" if cfg.cookie else None
        self.claims = tuple(
            (claim, header.lower().encode("latin-1"))
            for claim, header in cfg.claims_to_headers.items()
        )
        names = {h for _, h in self.claims}
        if not cfg.forward_token:
            names.add(AUTHORIZATION)
        self.strip = frozenset(names)
        self.realm = cfg.realm.replace("\\", "\\\\").replace('"', '\\"')
        self.missing = Refusal(
            401,
            b"401 Unauthorized\n",
            [(b"www-authenticate", f'Bearer realm="{self.realm}"'.encode())],
        )
        self._refusals: dict[str, Refusal] = {}
        # the carrying header's value, and the token -> (headers to vouch, until): a deadline
        # on the loop's clock, the exchange's t0
        self.cache: dict[bytes, tuple[Headers, float]] = {}
        self._cached_keys: KeySet | None = None

    def check(self, ex: Exchange) -> Verdict:
        info = ex.info
        carrier = info.authorization
        if carrier is None or carrier[:7].lower() != b"bearer ":
            carrier = info.cookie if self.cookie is not None else None
            if carrier is None:
                return self.missing
        keys = self.source.keys
        if keys is not None and keys is self._cached_keys:
            hit = self.cache.get(carrier)
            if hit is not None and ex.t0 < hit[1]:
                vouch(ex, self.strip, hit[0])
                return None
        token = self._token(carrier)
        if token is None:
            return self.missing
        if keys is None:
            return self._when_keys(ex, token, carrier)
        return self._decide(ex, token, carrier, keys)

    async def _when_keys(self, ex: Exchange, token: bytes, carrier: bytes) -> Refusal | None:
        try:
            await asyncio.wait_for(self.source.ready.wait(), FIRST_KEYS_WAIT)
        except TimeoutError:
            pass
        keys = self.source.keys
        if keys is None:
            return Refusal(503, b"503 Service Unavailable: no signing keys yet\n", result="error")
        return self._decide(ex, token, carrier, keys)

    def _decide(self, ex: Exchange, token: bytes, carrier: bytes, keys: KeySet) -> Refusal | None:
        cache = self.cache
        if keys is not self._cached_keys:
            cache.clear()  # rotated: a token of a removed key must not pass on memory
            self._cached_keys = keys
        t0 = ex.t0
        hit = cache.get(token)
        if hit is None or t0 >= hit[1]:
            cache.pop(token, None)
            try:
                claims = self._verify(token, keys)
            except Invalid as exc:
                return self._invalid(str(exc))
            headers = [(h, v) for name, h in self.claims if (v := _claim(claims, name)) is not None]
            exp = claims.get("exp")
            ttl = CACHE_TTL
            if isinstance(exp, int | float):
                ttl = min(ttl, exp + self.skew - time.time())  # exp is a wall-clock time
            hit = (headers, t0 + ttl)
            self._remember(token, hit)
        if carrier != token:
            self._remember(carrier, hit)
        vouch(ex, self.strip, hit[0])
        return None

    def _remember(self, key: bytes, entry: tuple[Headers, float]) -> None:
        cache = self.cache
        if key not in cache and len(cache) >= CACHE_MAX:
            del cache[next(iter(cache))]  # the oldest entry: dicts keep insertion order
        cache[key] = entry

    def _verify(self, token: bytes, keys: KeySet) -> dict[str, object]:
        try:
            header = jwt.get_unverified_header(token)
        except E.DecodeError:
            raise Invalid("malformed token") from None
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise Invalid("algorithm not allowed")
        kid = header.get("kid")
        if kid is not None:
            key = keys.by_kid.get(kid) if isinstance(kid, str) else None
            if key is None:
                raise Invalid("unknown key id")
            candidates = [key] if key.algorithm == alg else []
        else:
            candidates = [k for k in keys.keys if k.algorithm == alg]
        if not candidates:
            raise Invalid("no key for the token's algorithm")
        for key in candidates:
            try:
                return jwt.decode(  # type: ignore[no-any-return]
                    token,
                    key.key,  # type: ignore[arg-type]
                    algorithms=[alg],
                    audience=self.audiences,
                    issuer=self.issuer,
                    leeway=self.skew,
                    options=self.options,  # type: ignore[arg-type]
                )
            except E.InvalidSignatureError:
                continue  # without a kid, the next key may be the one
            except E.InvalidTokenError as exc:
                raise Invalid(_reason(exc)) from None
        raise Invalid("bad signature")

    def _invalid(self, reason: str) -> Refusal:
        refusal = self._refusals.get(reason)
        if refusal is None:
            challenge = (
                f'Bearer realm="{self.realm}", error="invalid_token", error_description="{reason}"'
            )
            refusal = self._refusals[reason] = Refusal(
                401, b"401 Unauthorized\n", [(b"www-authenticate", challenge.encode())]
            )
        return refusal

    def _token(self, carrier: bytes) -> bytes | None:
        """The token in a `Bearer` Authorization value, or in the Cookie header."""
        if carrier[:7].lower() == b"bearer ":
            return carrier[7:].strip() or None
        prefix = self.cookie
        assert prefix is not None  # check() passes a Cookie header only with `cookie` set
        for part in carrier.split(b";"):
            part = part.strip()
            if part.startswith(prefix) and len(part) > len(prefix):
                return part[len(prefix) :]
        return None


def _claim(claims: dict[str, object], name: str) -> bytes | None:
    """The header value of a claim, None when the token has no such claim. A name is first a
    top-level claim (namespaced ones are URLs, dots included), else a path `a.b`."""
    value: object = claims
    if name in claims:
        value = claims[name]
    else:
        for part in name.split("."):
            if not isinstance(value, dict) or part not in value:
                return None
            value = value[part]
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = value
    elif isinstance(value, list):
        text = ",".join(v if isinstance(v, str) else json.dumps(v) for v in value)
    else:
        text = json.dumps(value, separators=(",", ":"))
    return _UNSAFE.sub(b"", text.encode())


def _reason(exc: Exception) -> str:
    for kind, reason in _REASONS:
        if isinstance(exc, kind):
            return reason
    return "invalid token"
