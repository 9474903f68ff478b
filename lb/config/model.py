"""The config schema: one dataclass per YAML mapping. Defaults follow HAProxy/Envoy practice.

Field types drive validation (see schema.py); `check()` holds rules spanning fields.
"""

import difflib
import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Literal

from .schema import Check, OneOrMany, Unit, marks
from .units import parse_duration, parse_rate, parse_size

Report = Callable[[str, str], None]

Duration = Annotated[float, Unit(parse_duration, numbers_ok=True)]
Size = Annotated[int, Unit(parse_size)]
Rate = Annotated[tuple[float, float], Unit(parse_rate)]
Percent = Annotated[float, Check(lambda v: 0 <= v <= 100, "a percentage from 0 to 100")]
Positive = Annotated[int, Check(lambda v: v > 0, "a positive integer")]
NonNegative = Annotated[int, Check(lambda v: v >= 0, "an integer >= 0")]
Weight = Annotated[int, Check(lambda v: 0 <= v <= 1_000_000, "a weight from 0 to 1000000")]
Status = Annotated[int, Check(lambda v: 100 <= v <= 599, "an HTTP status from 100 to 599")]


def _valid_regex(text: str) -> bool:
    try:
        re.compile(text)
    except re.error:
        return False
    return True


def split_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f'an address "host:port", found "{text}"')
    return host.strip("[]"), int(port)


def _valid_cidr(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


Regex = Annotated[str, Check(_valid_regex, "a valid regular expression")]
Address = Annotated[tuple[str, int], Unit(split_hostport)]
Cidr = Annotated[str, Check(_valid_cidr, "a CIDR like 10.0.0.0/8")]


# -- listeners ---------------------------------------------------------------------------------
@dataclass
class Certificate:
    cert: str
    key: str

    def check(self, report: Report) -> None:
        for name in ("cert", "key"):
            if not os.path.isfile(getattr(self, name)):
                report(name, f'file not found: "{getattr(self, name)}"')


@dataclass
class ListenerTls:
    certificates: list[Certificate]
    min_version: Literal["1.2", "1.3"] = "1.2"

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
        if self.proxy_protocol:
            report("proxy_protocol", "proxy_protocol is supported on mode: tcp listeners only")


# -- control plane -----------------------------------------------------------------------------
@dataclass
class Admin:
    bind: Address = ("127.0.0.1", 9901)
    token: str | None = None

    def check(self, report: Report) -> None:
        if self.bind[0] not in ("127.0.0.1", "localhost", "::1") and not self.token:
            report("token", "binding the admin port beyond loopback requires a bearer token")


@dataclass
class Metrics:
    enabled: bool = True
    max_backends_per_service: Positive = 100  # per-backend labels beyond this fold into "other"


@dataclass
class ConsulSelfRegistration:
    name: str = "lb"
    id: str | None = None
    address: str | None = None
    check_interval: Duration = 10.0


@dataclass
class Consul:
    address: str = field(
        default_factory=lambda: os.environ.get("CONSUL_HTTP_ADDR", "http://127.0.0.1:8500")
    )
    token: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    consistency: Literal["default", "stale", "consistent"] = "default"
    wait: Duration = 300.0
    auto: bool = False
    register: ConsulSelfRegistration | None = None

    def check(self, report: Report) -> None:
        if not 0 < self.wait <= 600:
            report("wait", "expected a blocking wait between 0 and 10m")
        # The client's own parser, so that `lb check` accepts exactly the addresses lb runs with.
        from ..discovery.consul import split_address

        try:
            split_address(self.address)
        except ValueError as exc:
            report("address", str(exc))
        if self.key_file and not self.cert_file:
            report("key_file", "a client key needs cert_file")


@dataclass
class Redis:
    url: str = "redis://127.0.0.1:6379/0"
    timeout: Duration = 0.05


# -- services ----------------------------------------------------------------------------------
@dataclass
class BackendSpec:
    address: Address
    weight: Weight = 1

    @classmethod
    def from_scalar(cls, text: str) -> "BackendSpec":
        return cls(split_hostport(text))


@dataclass
class ConsulService:
    service: str
    tags: list[str] = field(default_factory=list)
    datacenter: str | None = None
    weight: Weight | None = None  # overrides Consul's Weights.Passing when set


@dataclass
class ServiceTimeouts:
    connect: Duration = 5.0
    response_head: Duration = 30.0  # 504 when the backend's response head takes longer
    idle: Duration = 60.0  # no bytes either way while streaming: close


@dataclass
class Pool:
    # Idle keep-alive connections kept per backend. Generous, like HAProxy and Envoy (which keep
    # all): a small pool churns a TCP connection per request once concurrency exceeds it.
    max_idle: NonNegative = 1024
    idle_timeout: Duration = 60.0


@dataclass
class UpstreamTls:
    ca: str | None = None  # None: system trust store
    sni: str | None = None
    verify: bool = True

    def check(self, report: Report) -> None:
        if self.ca is not None and not os.path.isfile(self.ca):
            report("ca", f'file not found: "{self.ca}"')


@dataclass
class HealthCheck:
    # tcp: passes when a connection opens in time; grpc: grpc.health.v1.Health/Check over
    # HTTP/2 (the service named by grpc_service, "" for the server), passes on SERVING
    type: Literal["http", "tcp", "grpc"] = "http"
    path: str = "/healthz"
    expected_statuses: list[Status] = field(default_factory=lambda: list(range(200, 400)))
    interval: Duration = 2.0
    timeout: Duration = 1.0
    rise: Positive = 2
    fall: Positive = 3
    jitter: Annotated[float, Check(lambda v: 0 <= v < 1, "a fraction from 0 to 1")] = 0.1
    host: str | None = None
    grpc_service: str | None = None

    def check(self, report: Report) -> None:
        if self.grpc_service is not None and self.type != "grpc":
            report("grpc_service", "grpc_service applies to type: grpc health checks")
        if not self.path.startswith("/") or any(c in self.path for c in " \r\n"):
            report("path", f'a path starting with "/", without spaces, found "{self.path}"')
        for name in ("interval", "timeout"):
            if getattr(self, name) <= 0:
                report(name, "expected a positive duration")
        if self.type != "http":
            for name in ("path", "expected_statuses"):
                if name in marks(self):
                    report(name, f"{name} applies to type: http health checks")
        if self.type == "tcp" and "host" in marks(self):
            report("host", "host applies to type: http and grpc health checks")


@dataclass
class CircuitBreaker:
    max_connections: Positive = 1024
    max_pending: Positive = 1024
    max_requests: Positive = 1024
    # Concurrent retries; None: the routes' retry budgets decide (Envoy ignores max_retries
    # once a budget is set: a fixed 3 turns one lost backend into errors).
    max_retries: NonNegative | None = None
    failure_ratio: Annotated[float, Check(lambda v: 0 < v <= 1, "a ratio in (0, 1]")] = 0.5
    min_requests: Positive = 20
    window: Duration = 10.0
    consecutive_failures: Positive = 5
    open_for: Duration = 5.0
    max_open_for: Duration = 60.0
    half_open_requests: Positive = 1
    failure_on: list[Literal["connect", "timeout", "5xx"]] = field(
        default_factory=lambda: ["connect", "timeout", "5xx"]
    )

    def check(self, report: Report) -> None:
        for name in ("window", "open_for"):
            if getattr(self, name) <= 0:
                report(name, "expected a positive duration")
        if self.max_open_for < self.open_for:
            report("max_open_for", "expected at least open_for")


@dataclass
class OutlierDetection:
    consecutive_errors: Positive = 5
    base_ejection: Duration = 30.0
    max_ejection: Duration = 300.0
    max_ejection_percent: Percent = 10.0

    def check(self, report: Report) -> None:
        if self.base_ejection <= 0:
            report("base_ejection", "expected a positive duration")


@dataclass
class Service:
    discovery: Literal["static", "consul"] = "static"
    backends: list[BackendSpec] = field(default_factory=list)
    consul: ConsulService | None = None
    slow_start: Duration = 0.0
    timeouts: ServiceTimeouts = field(default_factory=ServiceTimeouts)
    pool: Pool = field(default_factory=Pool)
    tls: UpstreamTls | None = None
    health_check: HealthCheck | None = None
    circuit_breaker: CircuitBreaker | None = None
    outlier_detection: OutlierDetection | None = None
    panic_threshold: Percent = 50.0
    fallback: str | None = None
    # Sent to each backend connection of a tcp listener before the client's bytes (HAProxy's
    # send-proxy / send-proxy-v2): the backend learns the client's address.
    proxy_protocol: Literal["v1", "v2"] | None = None
    # How lb speaks to the backends of an HTTP listener's routes: HTTP/1.1 (a keep-alive pool)
    # or HTTP/2 (h2c by prior knowledge, or ALPN h2 with tls; streams multiplexed on a pool).
    protocol: Literal["http1", "h2"] = "http1"

    def check(self, report: Report) -> None:
        if self.protocol == "h2":
            from ..proxy.http2 import available

            if not available():
                report("protocol", "HTTP/2 unavailable: lb._h2 not built (libnghttp2-dev missing)")
        hc = self.health_check
        if hc is not None and hc.type == "grpc" and self.protocol != "h2":
            report("health_check", "type: grpc health checks need protocol: h2")
        if self.discovery == "consul" and self.consul is None:
            report("consul", "discovery: consul needs consul: {service: NAME}")
        if self.discovery == "static" and self.consul is not None:
            report("consul", "consul settings need discovery: consul")
        if self.discovery == "consul" and self.backends:
            report("backends", "static backends cannot be combined with discovery: consul")
        seen: set[tuple[str, int]] = set()
        for b in self.backends:
            if b.address in seen:
                report("backends", f"duplicate backend {b.address[0]}:{b.address[1]}")
            seen.add(b.address)


# -- routes ------------------------------------------------------------------------------------
@dataclass
class PathMatch:
    exact: str | None = None
    prefix: str | None = None
    regex: Regex | None = None

    def check(self, report: Report) -> None:
        given = [k for k in ("exact", "prefix", "regex") if getattr(self, k) is not None]
        if len(given) != 1:
            report("", "expected exactly one of exact, prefix, regex")
        for k in ("exact", "prefix"):
            v = getattr(self, k)
            if v is not None and not v.startswith("/"):
                report(k, f'a path starts with "/", found "{v}"')


@dataclass
class ValueMatch:
    name: str
    exact: str | None = None
    regex: Regex | None = None
    present: bool | None = None

    def check(self, report: Report) -> None:
        given = [k for k in ("exact", "regex", "present") if getattr(self, k) is not None]
        if len(given) != 1:
            report("", "expected exactly one of exact, regex, present")


@dataclass
class Match:
    host: Annotated[list[str], OneOrMany] = field(default_factory=list)
    path: PathMatch | None = None
    methods: list[str] = field(default_factory=list)
    headers: list[ValueMatch] = field(default_factory=list)
    query: list[ValueMatch] = field(default_factory=list)

    def check(self, report: Report) -> None:
        for h in self.host:
            if "*" in h and not (h.startswith("*.") and "*" not in h[2:]):
                report("host", f'a wildcard host looks like "*.example.com", found "{h}"')
        self.methods = [m.upper() for m in self.methods]


@dataclass
class SplitTarget:
    service: str
    weight: NonNegative


@dataclass
class Sticky:
    header: str | None = None
    cookie: str | None = None

    def check(self, report: Report) -> None:
        if (self.header is None) == (self.cookie is None):
            report("", "expected exactly one of header, cookie")


@dataclass
class RegexRewrite:
    pattern: Regex
    replacement: str


@dataclass
class Rewrite:
    strip_prefix: str | None = None
    add_prefix: str | None = None
    regex: RegexRewrite | None = None


@dataclass
class HeaderOps:
    set: dict[str, str] = field(default_factory=dict)
    add: dict[str, str] = field(default_factory=dict)
    remove: list[str] = field(default_factory=list)


@dataclass
class Redirect:
    scheme: Literal["http", "https"] | None = None
    host: str | None = None
    port: int | None = None
    path: str | None = None
    status: Literal[301, 302, 307, 308] = 302


@dataclass
class Respond:
    status: Status = 200
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class RouteTimeouts:
    response_head: Duration | None = None
    idle: Duration | None = None


@dataclass
class Retries:
    attempts: Annotated[int, Check(lambda v: 1 <= v <= 10, "1 to 10 attempts")] = 2
    on: list[Literal["connect-failure", "reset", "5xx", "gateway-error", "retriable-status"]] = (
        field(default_factory=lambda: ["connect-failure", "reset"])
    )
    statuses: list[Status] = field(default_factory=lambda: [502, 503, 504])
    per_try_timeout: Duration | None = None
    backoff: Duration = 0.025
    max_backoff: Duration = 0.25
    budget_percent: Percent = 20.0
    min_retry_concurrency: NonNegative = 3

    def check(self, report: Report) -> None:
        if self.per_try_timeout is not None and self.per_try_timeout <= 0:
            report("per_try_timeout", "expected a positive duration")


@dataclass
class Route:
    name: str
    match: Match = field(default_factory=Match)
    priority: int | None = None
    service: str | None = None
    split: list[SplitTarget] | None = None
    sticky: Sticky | None = None
    redirect: Redirect | None = None
    respond: Respond | None = None
    rewrite: Rewrite | None = None
    request_headers: HeaderOps = field(default_factory=HeaderOps)
    response_headers: HeaderOps = field(default_factory=HeaderOps)
    timeouts: RouteTimeouts = field(default_factory=RouteTimeouts)
    max_body_size: Size | None = None
    rate_limit: RateLimit | None = None
    retries: Retries | None = None

    def check(self, report: Report) -> None:
        actions = [a for a in ("service", "split", "redirect", "respond") if getattr(self, a)]
        if len(actions) != 1:
            report("", "a route needs exactly one action: service, split, redirect or respond")
        if self.split is not None and sum(t.weight for t in self.split) == 0:
            report("split", "the split's weights add up to 0")
        if self.sticky is not None and self.split is None:
            report("sticky", "sticky applies to a split")


@dataclass
class Config:
    listeners: list[Listener] = field(default_factory=list)
    admin: Admin = field(default_factory=Admin)
    metrics: Metrics = field(default_factory=Metrics)
    consul: Consul | None = None
    redis: Redis | None = None
    services: dict[str, Service] = field(default_factory=dict)
    routes: list[Route] = field(default_factory=list)
