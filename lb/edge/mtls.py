"""Client certificates on TLS listeners (mTLS): asking for them, and telling backends who the
client is.

`verify_clients` turns a listener's server contexts into ones that ask for a certificate
(`request`: a client without one is still served; `require`: the handshake fails without
one) and verify it against the `ca` bundle; a certificate that does not verify fails the
handshake in both modes. It is applied to every context of the listener, the root and the
ones SNI picks, since the context a handshake ends on is the one that verifies.

The verified certificate is described once per connection, as it opens (`describe`), in the
shape of Envoy's x-forwarded-client-cert: `Subject="CN=alice,O=Acme";DNS=a.example;URI=...`
(the subject in RFC 4514 order and escaping, then one `NAME=value` per subject alternative
name). `with_client_cert` puts it in each request's headers before routing, after removing
any header of that name the client sent, so routes match it and backends receive it like any
other header; a connection without a certificate forwards none.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from ..config.edge_model import ClientAuth

if TYPE_CHECKING:
    import asyncio

Headers = list[tuple[bytes, bytes]]

_MODES = {"require": ssl.CERT_REQUIRED, "request": ssl.CERT_OPTIONAL}
_SHORT = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "domainComponent": "DC",
    "streetAddress": "STREET",
    "userId": "UID",
}
_SAN = {"DNS": "DNS", "URI": "URI", "email": "Email", "IP Address": "IP"}
_RFC4514_SPECIAL = frozenset(',+"\\<>;=')


def verify_clients(ctx: ssl.SSLContext, auth: ClientAuth) -> None:
    ctx.verify_mode = _MODES[auth.mode]
    ctx.load_verify_locations(cafile=auth.ca)


def _escape(value: str) -> str:
    out = []
    for i, ch in enumerate(value):
        if ch < " " or ch == "\x7f":
            continue  # a verified certificate, but a header line is no place for controls
        if ch in _RFC4514_SPECIAL or (ch in " #" and i == 0) or (ch == " " and i == len(value) - 1):
            out.append("\\")
        out.append(ch)
    return "".join(out)


def _san(value: str) -> str:
    """A name as an element of the header: the separators percent-encoded, as in a URI."""
    text = "".join(ch for ch in value if " " <= ch != "\x7f")
    return text.replace("%", "%25").replace(";", "%3B").replace(",", "%2C").replace('"', "%22")


def describe(cert: dict[str, object]) -> bytes | None:
    """The header value for a certificate as `SSLObject.getpeercert()` decodes it."""
    if not cert:
        return None
    rdns = cert.get("subject", ())
    assert isinstance(rdns, tuple)
    subject = ",".join(
        "+".join(f"{_SHORT.get(k, k)}={_escape(v)}" for k, v in rdn) for rdn in reversed(rdns)
    )
    parts = ['Subject="' + subject.replace("\\", "\\\\").replace('"', '\\"') + '"']
    sans = cert.get("subjectAltName", ())
    assert isinstance(sans, tuple)
    for kind, value in sans:
        name = _SAN.get(kind)
        if name is not None:
            parts.append(f"{name}={_san(value)}")
    return ";".join(parts).encode("utf-8")


def peer_description(transport: asyncio.BaseTransport) -> bytes | None:
    """What a new connection's verified client certificate forwards; None without one."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    return describe(cert) if cert else None


def with_client_cert(headers: Headers, name: bytes, value: bytes | None) -> Headers:
    """`headers` without the client's own `name` headers, plus the connection's (if any)."""
    out = [item for item in headers if item[0].lower() != name]
    if value is not None:
        out.append((name, value))
    return out
