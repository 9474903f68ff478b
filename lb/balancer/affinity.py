"""Backend affinity by cookie (`services.NAME.affinity`): the response names the backend that
served it in a cookie, and a later request carrying it goes back there while it is eligible.

The cookie's value is an opaque id, never the address: the first 9 bytes of a BLAKE2b of
"service NUL host:port", keyed with `secret_file`'s bytes when one is set (unguessable, so an
address cannot be confirmed from an id), base64url: 12 characters. Ids depend on the config
alone, so every worker process and every restart with the same secret agree on them.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable

from ..config import balance_model
from .backend import Backend
from .hash_key import cookie_value

Header = tuple[bytes, bytes]
ID_BYTES = 9


def backend_id(service: str, address: str, secret: bytes) -> bytes:
    digest = hashlib.blake2b(
        f"{service}\0{address}".encode(), digest_size=ID_BYTES, key=secret[:64]
    ).digest()
    return base64.urlsafe_b64encode(digest)


class Affinity:
    """One service's cookie: the ids of its backends, and the Set-Cookie header of each."""

    __slots__ = ("attributes", "backends", "cfg", "headers", "name", "secret", "service")

    def __init__(self, service: str, cfg: balance_model.Affinity, secret: bytes) -> None:
        self.service = service
        self.cfg = cfg
        self.secret = secret
        self.name = cfg.cookie.encode("latin-1")
        attrs = f"; Path={cfg.path}; HttpOnly; SameSite=Lax"
        if cfg.ttl is not None:
            attrs += f"; Max-Age={int(cfg.ttl)}"
        if cfg.secure:
            attrs += "; Secure"
        self.attributes = attrs.encode("latin-1")
        self.backends: dict[bytes, Backend] = {}  # id -> backend
        self.headers: dict[Backend, Header] = {}  # backend -> its Set-Cookie header

    def rebuild(self, backends: Iterable[Backend]) -> None:
        """The ids of the service's backends (at membership changes, off the request path)."""
        ids: dict[bytes, Backend] = {}
        headers: dict[Backend, Header] = {}
        for b in backends:
            if b.removed:
                continue
            bid = backend_id(self.service, b.name, self.secret)
            ids[bid] = b
            headers[b] = (b"set-cookie", self.name + b"=" + bid + self.attributes)
        self.backends, self.headers = ids, headers

    def requested(self, cookie: bytes | None) -> bytes | None:
        """The id the request's Cookie values (`RequestInfo.cookie`) name, if any."""
        return cookie_value(cookie, self.name)
