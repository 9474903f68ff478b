"""TLS for listeners: certificates picked by SNI, minimum version, ALPN (h2, http/1.1), and
client certificates (mTLS, lb/edge/mtls.py)."""

import ssl

from ..config import model
from ..edge.mtls import verify_clients

_HTTP1 = ("http/1.1",)


def alpn_for(protocols: list[str]) -> list[str]:
    """The ALPN ids a listener offers, h2 first when it speaks HTTP/2."""
    return (["h2"] if "h2" in protocols else []) + (["http/1.1"] if "http1" in protocols else [])


def _context(
    cert: model.Certificate, tls: model.ListenerTls, alpn: tuple[str, ...] = _HTTP1
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if tls.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    )
    ctx.load_cert_chain(cert.cert, cert.key)
    ctx.set_alpn_protocols(list(alpn))  # every context: the one SNI picks answers ALPN
    if tls.client_auth is not None:
        verify_clients(ctx, tls.client_auth)  # every context: the one SNI picks verifies
    return ctx


def _names(cert_path: str) -> list[str]:
    decoded = ssl._ssl._test_decode_cert(cert_path)  # type: ignore[attr-defined]
    names = [v for k, v in decoded.get("subjectAltName", ()) if k == "DNS"]
    if not names:
        for rdn in decoded.get("subject", ()):
            for k, v in rdn:
                if k == "commonName":
                    names.append(v)
    return [n.lower() for n in names]


class SniContexts:
    """The first certificate is the default; the others are chosen by the client's SNI."""

    def __init__(self, tls: model.ListenerTls, alpn: tuple[str, ...] = _HTTP1) -> None:
        self.default = _context(tls.certificates[0], tls, alpn)
        self.exact: dict[str, ssl.SSLContext] = {}
        self.wild: dict[str, ssl.SSLContext] = {}
        for cert in tls.certificates:
            ctx = self.default if cert is tls.certificates[0] else _context(cert, tls, alpn)
            for name in _names(cert.cert):
                if name.startswith("*."):
                    self.wild.setdefault(name[1:], ctx)
                else:
                    self.exact.setdefault(name, ctx)


class TlsSwitch:
    """One root context per listener config; each handshake is moved to the context of the
    certificate the client's SNI names. A reload builds a new switch (lb/listeners.py), and
    handshakes already under way finish on the old one."""

    def __init__(self, tls: model.ListenerTls, protocols: list[str] | None = None) -> None:
        alpn = tuple(alpn_for(protocols)) if protocols else _HTTP1
        self.current = SniContexts(tls, alpn)
        self.root = _context(tls.certificates[0], tls, alpn)
        self.root.sni_callback = self._pick

    def _pick(self, sock: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        cur = self.current
        ctx = cur.default
        if name:
            name = name.lower()
            found = cur.exact.get(name)
            if found is None and "." in name:
                found = cur.wild.get(name[name.index(".") :])
            ctx = found or ctx
        sock.context = ctx
