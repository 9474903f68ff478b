"""The config schema: one dataclass per YAML mapping. Defaults follow HAProxy/Envoy practice.

Field types drive validation (see schema.py); `check()` holds rules spanning fields. The
shared field types are in fieldtypes.py; the listener side (`Listener` and what is under it)
is in listener_model.py, re-exported here so that `model.Listener` is where it always was.
"""

import os
from dataclasses import dataclass, field
from typing import Annotated, Literal

from .balance_model import Affinity, Balance
from .consul_model import ConsulConnection
from .edge_model import BasicAuth, ClientInFlight, ForwardAuth, IpFilter, Jwt
from .fieldtypes import (
    Address,
    Duration,
    GrpcStatus,
    InputFile,
    NonNegative,
    Percent,
    Positive,
    Regex,
    Report,
    Size,
    Status,
    Weight,
    split_hostport,
)
from .listener_model import (  # noqa: F401 (re-exported: model.Certificate and the rest)
    AccessLog,
    Certificate,
    Http2Settings,
    Limits,
    Listener,
    ListenerTimeouts,
    ListenerTls,
    RateLimit,
)
from .schema import Check, OneOrMany, marks
from .shape_model import Compress, Mirror
from .source_model import ConfigSource
from .tracing_model import Tracing


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
class Consul(ConsulConnection):
    auto: bool = False
    register: ConsulSelfRegistration | None = None


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
    ca: InputFile | None = None  # None: system trust store
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
    # which backend a request goes to (lb/config/balance_model.py)
    balance: Balance = field(default_factory=Balance)
    affinity: Affinity | None = None

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
    # gRPC calls answered trailers-only (nothing sent to the client yet) with one of these
    # grpc-status codes are retried too, like a 5xx, whatever the `on` list and the method
    grpc_status: list[GrpcStatus] = field(default_factory=list)
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
    # edge policies (lb/config/edge_model.py), asked in this order before the rate limit
    ip_filter: IpFilter | None = None
    basic_auth: BasicAuth | None = None
    jwt: Jwt | None = None
    forward_auth: ForwardAuth | None = None
    client_in_flight: ClientInFlight | None = None
    compress: Compress | None = None  # lb/config/shape_model.py
    mirror: Mirror | None = None

    def check(self, report: Report) -> None:
        actions = [a for a in ("service", "split", "redirect", "respond") if getattr(self, a)]
        if len(actions) != 1:
            report("", "a route needs exactly one action: service, split, redirect or respond")
        for name in ("compress", "mirror"):
            if getattr(self, name) is not None and not (self.service or self.split):
                report(name, f"{name} applies to routes that forward (service or split)")
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
    config_source: ConfigSource | None = None  # from the local files only (source_model.py)
    tracing: Tracing | None = None  # lb/config/tracing_model.py
