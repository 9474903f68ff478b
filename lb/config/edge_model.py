"""The edge policies' schema: who may come in, and how much one client may take.

Route fields (`routes[].ip_filter`, `basic_auth`, `forward_auth`, `jwt`, `client_in_flight`)
and listener fields (`listeners[].ip_filter`, `jwt`, `max_connections_per_client`,
`tls.client_auth`). A listener's policy applies to every route it serves, before the route's
own; lb/edge compiles both into `Route.guard`.
"""

import os
import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from ..edge import htpasswd
from ..edge.jwks import parse_jwks
from .fieldtypes import Cidr, Duration, InputFile, Positive, Report

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP field name (RFC 9110 5.6.2)
# Headers lb itself decides (framing, routing, forwarding): no policy may set them.
_RESERVED = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "te", "upgrade", "keep-alive",
     "proxy-connection", "trailer", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
     "x-request-id", "expect"}
)  # fmt: skip


def _file(report: Report, name: str, path: str | None) -> bool:
    if path is not None and not os.path.isfile(path):
        report(name, f'file not found: "{path}"')
        return False
    return path is not None


def _header_names(report: Report, name: str, headers: list[str]) -> None:
    for h in headers:
        if not _TOKEN.fullmatch(h):
            report(name, f'"{h}" is not a header name')
        elif h.lower() in _RESERVED:
            report(name, f'"{h}" is set by lb itself and cannot be set by a policy')


@dataclass
class IpFilter:
    # The client is the peer address, or behind trusted_proxies the right-most untrusted
    # X-Forwarded-For hop, as the rate limiter's client_ip key. deny wins over allow; with an
    # allow list, an address outside it is refused. Refused: 403.
    allow: list[Cidr] = field(default_factory=list)
    deny: list[Cidr] = field(default_factory=list)

    def check(self, report: Report) -> None:
        if not self.allow and not self.deny:
            report("", "an ip_filter needs allow, deny or both")


@dataclass
class BasicAuth:
    # bcrypt ($2y$) and SHA-crypt ($5$, $6$) lines, as `htpasswd -B` / `-2` write
    htpasswd: InputFile
    realm: str = "lb"
    # Forward the client's Authorization header to the backend (removed by default).
    forward_authorization: bool = False
    cache: Duration = 60.0  # how long a successful verification is remembered (0: never)

    def check(self, report: Report) -> None:
        if _file(report, "htpasswd", self.htpasswd):
            users, problems = htpasswd.read(self.htpasswd)
            for problem in problems:
                report("htpasswd", problem)
            if not users and not problems:
                report("htpasswd", f'"{self.htpasswd}" lists no user')
        if self.cache < 0:
            report("cache", "expected a duration >= 0")


@dataclass
class ForwardAuth:
    url: str  # http://host:port/path of the auth service
    # Copied from the client's request onto the subrequest (besides method, URI, client address).
    request_headers: list[str] = field(default_factory=lambda: ["authorization", "cookie"])
    # Copied from a 2xx answer onto the forwarded request.
    response_headers: list[str] = field(default_factory=list)
    timeout: Duration = 2.0
    on_error: Literal["deny", "allow"] = "deny"  # auth service down or slow: 503, or let in
    cache: Duration = 0.0  # remember 2xx answers this long, keyed on cache_key (0: off)
    cache_key: list[str] = field(default_factory=lambda: ["authorization", "cookie"])
    max_idle: Positive = 16  # keep-alive connections kept to the auth service

    def check(self, report: Report) -> None:
        parts = urlsplit(self.url)
        if parts.scheme != "http" or not parts.hostname:
            report("url", "expected an http://host[:port]/path URL of the auth service")
        if self.timeout <= 0:
            report("timeout", "expected a positive duration")
        if self.cache < 0:
            report("cache", "expected a duration >= 0")
        _header_names(report, "response_headers", self.response_headers)


@dataclass
class Jwt:
    # Keys: exactly one of jwks_file, jwks_url (refreshed every jwks_refresh, the last good set
    # kept when a refresh fails), secret_file (HS256).
    jwks_file: InputFile | None = None
    jwks_url: str | None = None
    jwks_refresh: Duration = 300.0
    secret_file: InputFile | None = None
    algorithms: list[Literal["RS256", "ES256", "EdDSA", "HS256"]] = field(
        default_factory=lambda: ["RS256", "ES256", "EdDSA"]
    )
    issuer: str | None = None
    audiences: list[str] = field(default_factory=list)
    clock_skew: Duration = 30.0  # leeway on exp and nbf
    cookie: str | None = None  # read the token from this cookie when no Bearer header is sent
    claims_to_headers: dict[str, str] = field(default_factory=dict)  # claim -> request header
    forward_token: bool = True
    realm: str = "lb"  # of the WWW-Authenticate: Bearer challenge

    def check(self, report: Report) -> None:
        sources = [s for s in (self.jwks_file, self.jwks_url, self.secret_file) if s]
        if len(sources) != 1:
            report("", "a jwt policy needs exactly one of jwks_file, jwks_url, secret_file")
        if _file(report, "jwks_file", self.jwks_file):
            try:
                with open(self.jwks_file, "rb") as f:  # type: ignore[arg-type]
                    parse_jwks(f.read(), self.jwks_file)  # type: ignore[arg-type]
            except (OSError, ValueError) as exc:
                report("jwks_file", str(exc))
        if (
            _file(report, "secret_file", self.secret_file)
            and os.path.getsize(
                self.secret_file  # type: ignore[arg-type]
            )
            < 32
        ):
            report("secret_file", "an HS256 secret needs at least 32 bytes (RFC 7518 3.2)")
        if self.jwks_url is not None and urlsplit(self.jwks_url).scheme not in ("http", "https"):
            report("jwks_url", "expected an http:// or https:// URL")
        if self.jwks_refresh <= 0:
            report("jwks_refresh", "expected a positive duration")
        _header_names(report, "claims_to_headers", list(self.claims_to_headers.values()))
        if self.secret_file and self.algorithms != ["HS256"]:
            report("algorithms", "secret_file is for HS256: set algorithms: [HS256]")
        if "HS256" in self.algorithms and not self.secret_file:
            report("algorithms", "HS256 needs secret_file")


@dataclass
class ClientInFlight:
    # At most `max` requests of one client key in flight on the route (Traefik InFlightReq).
    max: Positive
    key: list[str] = field(default_factory=lambda: ["client_ip"])  # as rate_limit's key
    status: Literal[429, 503] = 429
    max_keys: Positive = 100_000

    def check(self, report: Report) -> None:
        for k in self.key:
            if k not in ("client_ip", "route") and not k.startswith("header:"):
                report("key", f'expected client_ip, route or header:NAME, found "{k}"')


@dataclass
class ClientAuth:
    # mTLS: `require` refuses the handshake without a certificate the CA bundle verifies;
    # `request` asks for one and forwards what was verified.
    mode: Literal["require", "request"]
    ca: InputFile  # PEM bundle of the CAs client certificates must chain to
    # The verified subject and SANs, forwarded to backends in this header (and matchable
    # in routes like any header); a client-sent header of that name is removed.
    forward_header: str | None = "x-client-cert"

    def check(self, report: Report) -> None:
        if not os.path.isfile(self.ca):
            report("ca", f'file not found: "{self.ca}"')
        header = self.forward_header
        if header is not None:
            if not _TOKEN.fullmatch(header):
                report("forward_header", f'expected a header name, found "{header}"')
            elif header.lower() in _RESERVED:
                report("forward_header", f'"{header}" is a header lb itself reads')
