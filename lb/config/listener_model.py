"""The listener side of the config schema: `Listener` and the mappings under it (TLS and its
certificates, timeouts, limits, HTTP/2 settings, the access log, a rate limit), with the rules
that tell an HTTP listener's fields from a TCP listener's (`mode`).

`RateLimit` lives here because a listener has one; a route's (`model.Route`) is the same block.
Every class is re-exported by model.py, where the rest of the schema is.
"""

import difflib
import os
import re
from dataclasses import dataclass, field
from typing import Annotated, Literal

from .edge_model import ClientAuth, IpFilter, Jwt
from .fieldtypes import (
    Address,
    Cidr,
    ConnectionWindow,
    Duration,
    FrameSize,
    InputFile,
    NonNegative,
    Positive,
    Rate,
    Report,
    Size,
    Size32,
    WindowSize,
)
from .schema import OneOrMany, marks


@dataclass
class Certificate:
    cert: InputFile
    key: InputFile

    def check(self, report: Report) -> None:
        for name in ("cert", "key"):
            if not os.path.isfile(getattr(self, name)):
                report(name, f'file not found: "{getattr(self, name)}"')


@dataclass
class ListenerTls:
    certificates: list[Certificate]
    min_version: Literal["1.2", "1.3"] = "1.2"
    client_auth: ClientAuth | None = None  # mTLS

    def check(self, report: Report) -> None:
        if not self.certificates:
            report("certificates", "at least one certificate is needed")


@dataclass
class ListenerTimeouts:
    client_head: Duration = 10.0  # the whole request head must arrive within this (408 after)
    keepalive_idle: Duration = 60.0  # idle keep-alive client connections are closed after this
    client_body_idle: Duration = 60.0  # no body bytes from the client for this long: 408
    drain: Duration = 30.0  # graceful shutdown: how long in-flight requests may take
    # mode: tcp only: no bytes either way for this long closes both sides. 5 minutes, the
    # order of what TCP load balancers use (AWS NLB 350 s; HAProxy users set `timeout
    # client/server` in minutes for TCP): long enough for a quiet database session.
    idle: Duration = 300.0


@dataclass
class Limits:
    max_header_size: Size = 64 * 1024  # request line + headers; 431 beyond
    max_body_size: Size | None = None  # 413 beyond; none by default, like HAProxy and Envoy


@dataclass
class Http2Settings:
    """What lb lets an HTTP/2 client do (`listeners[].http2`); the first six are the SETTINGS
    lb sends. Defaults: HAProxy's tune.h2.* and RFC 9113's initial values."""

    max_concurrent_streams: Positive = 100  # streams open at once; more: REFUSED_STREAM
    initial_window_size: WindowSize = 65535  # per stream: body bytes in flight before an ACK
    connection_window_size: ConnectionWindow = 1 << 20  # all streams together (1 MiB)
    header_table_size: Size32 = 4096  # the HPACK dynamic table
    max_header_list_size: Size32 | None = None  # None: limits.max_header_size
    max_frame_size: FrameSize = 16384
    # No open stream for this long: GOAWAY NO_ERROR and close; None: timeouts.keepalive_idle,
    # 0: never (Envoy's idle_timeout).
    idle_timeout: Duration | None = None
    # A connection that sent nothing for ping_interval gets a PING; nothing back within
    # ping_timeout (the ACK or any other frame): GOAWAY and closed. None or 0: no PINGs.
    ping_interval: Duration | None = None
    ping_timeout: Duration = 20.0
    # Streams a connection may open, then the two-phase GOAWAY and in-flight streams finish;
    # 0: unlimited (HAProxy's max-reqs-per-conn, Envoy's max_requests_per_connection).
    max_requests_per_connection: NonNegative = 0
    # Rapid reset (CVE-2023-44487): stream resets the client causes, a token bucket; past
    # it, GOAWAY ENHANCE_YOUR_CALM.
    max_resets_per_second: Positive = 200
    reset_burst: Positive = 1000

    def check(self, report: Report) -> None:
        if self.idle_timeout is not None and self.idle_timeout < 0:
            report("idle_timeout", "expected a duration >= 0")
        if self.ping_interval is not None and self.ping_interval < 0:
            report("ping_interval", "expected a duration >= 0")
        if self.ping_timeout <= 0:
            report("ping_timeout", "expected a positive duration")
        elif "ping_timeout" in marks(self) and "ping_interval" not in marks(self):
            # (an explicit ping_interval: 0 is PINGs off on purpose, the timeout kept for later)
            report("ping_timeout", "ping_timeout needs ping_interval: PINGs are off without it")

    def session_settings(self, max_header_size: int) -> dict[str, int]:
        """The lb._h2 Session settings; max_header_size is the listener's limits'."""
        header_list = self.max_header_list_size
        return {
            "max_concurrent_streams": self.max_concurrent_streams,
            "initial_window_size": self.initial_window_size,
            "connection_window_size": self.connection_window_size,
            "header_table_size": self.header_table_size,
            "max_header_list_size": max_header_size if header_list is None else header_list,
            "max_frame_size": self.max_frame_size,
            "max_resets_per_second": self.max_resets_per_second,
            "reset_burst": self.reset_burst,
        }


@dataclass
class AccessLog:
    enabled: bool = True
    path: str | None = None  # None: stdout
    fields: list[str] | None = None  # None: all fields

    def check(self, report: Report) -> None:
        from ..observe.accesslog import FIELDS, TCP_FIELDS

        known = (*FIELDS, *(f for f in TCP_FIELDS if f not in FIELDS))
        for name in self.fields or ():  # which mode each field belongs to: Listener.check
            if name not in known:
                hint = difflib.get_close_matches(name, known, n=1)
                extra = f' (did you mean "{hint[0]}"?)' if hint else ""
                report("fields", f'unknown access-log field "{name}"{extra}')


@dataclass
class RateLimit:
    rate: Rate
    burst: NonNegative = 0
    key: Annotated[list[str], OneOrMany] = field(default_factory=lambda: ["client_ip"])
    dry_run: bool = False
    backend: Literal["local", "redis"] = "local"
    on_redis_failure: Literal["local", "allow", "deny"] = "local"
    max_keys: Positive = 100_000

    def check(self, report: Report) -> None:
        for k in self.key:
            if k not in ("client_ip", "route") and not k.startswith("header:"):
                report("key", f'expected client_ip, route or header:NAME, found "{k}"')


_HOST_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")


def _valid_sni_pattern(pattern: str) -> bool:
    """A host name, or "*." and a host name (any subdomain of it, at any depth)."""
    host = pattern[2:] if pattern.startswith("*.") else pattern
    labels = host.split(".")
    return 0 < len(host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)


@dataclass
class Listener:
    name: str
    bind: Address
    # http: lb speaks HTTP (routes choose the service); tcp: bytes are forwarded as they are
    # (HAProxy's `mode tcp`), to `service` or, with tls_passthrough, by the ClientHello's SNI.
    mode: Literal["http", "tcp"] = "http"
    tls: ListenerTls | None = None
    redirect_to_https: int | None = None  # plain listener answering 308 to https on this port
    timeouts: ListenerTimeouts = field(default_factory=ListenerTimeouts)
    limits: Limits = field(default_factory=Limits)
    access_log: AccessLog | None = None
    rate_limit: RateLimit | None = None
    trusted_proxies: list[Cidr] = field(default_factory=list)
    # Accept a PROXY protocol v1/v2 header, from trusted_proxies only (tcp listeners).
    proxy_protocol: bool = False
    service: str | None = None  # tcp: where connections go
    tls_passthrough: bool = False  # tcp: choose by the SNI of the ClientHello, TLS untouched
    sni_routes: dict[str, str] = field(default_factory=dict)  # host or "*.domain" -> service
    default_service: str | None = None  # passthrough: no SNI, or none matching; else closed
    # mode: http: what clients may speak. h2: HTTP/2 by ALPN over TLS, by prior knowledge
    # (the client preface) on a plain listener.
    protocols: list[Literal["http1", "h2"]] = field(default_factory=lambda: ["http1"])
    http2: Http2Settings | None = None  # with h2 in protocols: limits on HTTP/2 clients
    # edge policies for every route served here, asked before the route's own
    ip_filter: IpFilter | None = None
    jwt: Jwt | None = None
    # More connections than this from one client address are closed at accept (HAProxy's
    # conn_cur); across --workers the count is shared as local rate limits are.
    max_connections_per_client: Positive | None = None

    def check(self, report: Report) -> None:
        from ..observe.accesslog import FIELDS, TCP_FIELDS

        if self.mode == "tcp":
            self._check_tcp(report)
        else:
            self._check_http(report)
        if self.proxy_protocol and not self.trusted_proxies:
            report(
                "proxy_protocol",
                "proxy_protocol needs trusted_proxies: the addresses allowed to send the header",
            )
        fields = self.access_log.fields if self.access_log is not None else None
        allowed = TCP_FIELDS if self.mode == "tcp" else FIELDS
        for name in fields or ():
            if name not in allowed:
                report("access_log", f'"{name}" is not an access-log field of mode: {self.mode}')

    def _check_tcp(self, report: Report) -> None:
        http_only = {
            "tls": self.tls is not None,
            "redirect_to_https": self.redirect_to_https is not None,
            "limits": "limits" in marks(self),
            "rate_limit": self.rate_limit is not None,
            "protocols": "protocols" in marks(self),
            "http2": self.http2 is not None,
            "jwt": self.jwt is not None,
        }
        for name, given in http_only.items():
            if given:
                report(name, f"{name} applies to mode: http listeners, not to mode: tcp")
        for name in ("client_body_idle", "keepalive_idle"):
            if name in marks(self.timeouts):
                report("timeouts", f"timeouts.{name} applies to mode: http listeners")
        if not self.tls_passthrough:
            if self.service is None:
                report("", "a mode: tcp listener needs service: NAME, or tls_passthrough: true")
            for name in ("sni_routes", "default_service"):
                if getattr(self, name):
                    report(name, f"{name} needs tls_passthrough: true")
            return
        if self.service is not None:
            report("service", "with tls_passthrough, use sni_routes and default_service")
        if not self.sni_routes and self.default_service is None:
            report("sni_routes", "tls_passthrough needs sni_routes or a default_service")
        seen: set[str] = set()
        for pattern in self.sni_routes:
            if not _valid_sni_pattern(pattern.lower()):
                report(
                    "sni_routes",
                    f'expected a host name or "*.example.com", found "{pattern}"',
                )
            elif pattern.lower() in seen:
                report("sni_routes", f'"{pattern}" is given twice')
            seen.add(pattern.lower())

    def _check_http(self, report: Report) -> None:
        tcp_only = {
            "service": self.service is not None,
            "tls_passthrough": self.tls_passthrough,
            "sni_routes": bool(self.sni_routes),
            "default_service": self.default_service is not None,
        }
        for name, given in tcp_only.items():
            if given:
                report(name, f"{name} applies to mode: tcp listeners; HTTP goes by routes")
        if "idle" in marks(self.timeouts):
            report("timeouts", "timeouts.idle applies to mode: tcp listeners")
        if not self.protocols:
            report("protocols", "at least one protocol is needed: http1, h2")
        elif "h2" in self.protocols:
            from ..proxy.http2 import available

            if not available():
                report("protocols", "HTTP/2 unavailable: lb._h2 not built (libnghttp2-dev missing)")
        if self.http2 is not None and "h2" not in self.protocols:
            report("http2", "http2 settings need h2 in protocols: no client speaks HTTP/2 here")
        if self.proxy_protocol:
            report("proxy_protocol", "proxy_protocol is supported on mode: tcp listeners only")
