"""The server name (SNI) of a TLS ClientHello, read without terminating TLS.

A passthrough listener peeks at the first bytes a client sends, which must be a ClientHello in
one or more TLS handshake records (RFC 8446 5.1 lets a handshake message span records), and
routes by the `server_name` extension (RFC 6066 3). Nothing here trusts a length it has not
bounded: every length is checked against the bytes that are there, the whole hello against
MAX_HELLO, and anything that is not a well-formed ClientHello raises `BadHello`, the one
exception this module raises.

A ClientHello that names two servers (two SNI extensions, or two host names in one) is refused
rather than routed by one of them: the backend's TLS stack might pick the other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_HELLO = 16 * 1024  # bytes, record headers included; real ClientHellos are 0.2-2 KiB
_HANDSHAKE = 22  # TLS record content type
_CLIENT_HELLO = 1  # handshake message type
_MAX_RECORD = 1 << 14  # TLSPlaintext.length limit (RFC 8446 5.1)
_SERVER_NAME = 0  # extension type
_HOST_NAME = 0  # ServerName.name_type
_LABEL = re.compile(rb"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")


class BadHello(ValueError):
    """The bytes are not a ClientHello lb can route by: not TLS, malformed, or too large."""


@dataclass(frozen=True, slots=True)
class Hello:
    server_name: str | None  # lower case, without a trailing dot; None: the client sent none
    length: int  # bytes of the records that carried the ClientHello


def parse(buf: bytes | bytearray) -> Hello | None:
    """The ClientHello at the start of `buf`, None while more bytes are needed."""
    body = bytearray()
    need = 0  # the handshake message's length with its 4-byte header, once known
    pos = 0
    while True:
        header = bytes(buf[pos : pos + 5])
        _check_record_header(header)
        if len(header) < 5:
            return None
        length = int.from_bytes(header[3:5], "big")
        if length == 0 or length > _MAX_RECORD:
            raise BadHello(f"TLS record length {length}")
        end = pos + 5 + length
        if end > MAX_HELLO:
            raise BadHello(f"ClientHello over {MAX_HELLO} bytes")
        if not body and len(buf) > pos + 5 and buf[pos + 5] != _CLIENT_HELLO:
            raise BadHello("the first handshake message is not a ClientHello")
        if len(buf) < end:
            return None
        body += buf[pos + 5 : end]
        pos = end
        if not need and len(body) >= 4:
            if body[0] != _CLIENT_HELLO:
                raise BadHello("the first handshake message is not a ClientHello")
            need = 4 + int.from_bytes(body[1:4], "big")
            if need > MAX_HELLO:
                raise BadHello(f"ClientHello over {MAX_HELLO} bytes")
        if need and len(body) >= need:
            return Hello(_server_name(_Reader(bytes(body[4:need]))), pos)


def _check_record_header(header: bytes) -> None:
    """Fail on the first byte that cannot start a handshake record, before the rest arrives."""
    if header and header[0] != _HANDSHAKE:
        raise BadHello("not a TLS handshake record")
    if len(header) > 1 and header[1] != 3:
        raise BadHello("not a TLS record version")
    if len(header) > 2 and header[2] > 4:
        raise BadHello("not a TLS record version")


class _Reader:
    """Bounds-checked reads from one length-delimited part of the hello."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        if n > self.left:
            raise BadHello("truncated ClientHello")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, size: int) -> _Reader:
        """A sub-reader over a vector prefixed with a `size`-byte length."""
        return _Reader(self.take(self.uint(size)))


def _server_name(hello: _Reader) -> str | None:
    hello.take(2 + 32)  # legacy_version, random
    if len(hello.vector(1).data) > 32:
        raise BadHello("session id over 32 bytes")
    suites = hello.vector(2).data
    if not suites or len(suites) % 2:
        raise BadHello("bad cipher suite list")
    if not hello.vector(1).data:
        raise BadHello("no compression methods")
    if not hello.left:
        return None  # no extensions at all (a pre-TLS 1.2 client): no SNI
    extensions = hello.vector(2)
    if hello.left:
        raise BadHello("bytes after the extensions")
    seen: set[int] = set()
    name: str | None = None
    while extensions.left:
        kind = extensions.uint(2)
        data = extensions.vector(2)
        if kind in seen:
            raise BadHello(f"extension {kind} given twice")
        seen.add(kind)
        if kind == _SERVER_NAME:
            name = _host_name(data)
    return name


def _host_name(ext: _Reader) -> str:
    names = ext.vector(2)
    if ext.left or not names.left:
        raise BadHello("malformed server_name extension")
    host: bytes | None = None
    while names.left:
        kind = names.uint(1)
        value = names.vector(2).data
        if kind != _HOST_NAME:
            continue  # other name types are reserved; skipped like OpenSSL does
        if host is not None:
            raise BadHello("two host names in server_name")
        host = value
    if host is None:
        raise BadHello("server_name without a host name")
    return _valid_host(host)


def _valid_host(raw: bytes) -> str:
    host = raw.lower()
    if host.endswith(b"."):
        host = host[:-1]
    if not 0 < len(host) <= 253 or not all(_LABEL.fullmatch(p) for p in host.split(b".")):
        raise BadHello("server_name is not a host name")
    return host.decode("ascii")
