"""The typed seams where subsystems plug into the data path, and nowhere else.

The request path calls out at four points, each through one of the interfaces below, and each
filled by one subsystem, installed by `Server.start` in this order (each one may use what the
ones before it set up):

1. the edge policies (`lb.edge.install.install`): `Route.guard` (a `Guard`: the listener's
   policies, then the route's, composed by `lb.edge.chain.Chain`) and
   `Runtime.unrouted_guard` (the listeners' policies, for requests that match no route); the
   per-listener connection caps (`max_connections_per_client`, and `ip_filter` on tcp
   listeners) are the listener runtimes' own, applied as they accept;
2. traffic control (`lb.traffic.control.install`): `Route.limiter` (an `Admitter`),
   `Route.retry`, `Service.gate` (a `Gate`), backend breakers, and an `Observer` +
   `FailureHook` while some service needs outcomes;
   then consistent hashing and affinity (`lb.balancer.install.install`): `Service.balance`
   for services with a hash mode or an affinity cookie, which the exchange asks instead of
   its inline least-connections pick;
3. compression and mirroring (`lb.compress.install`, `lb.mirror.install`): `Route.compress`
   (asked at each response head; it may set `Exchange.encoder`, which then takes the body
   and the end in place of the client side) and `Route.mirror` (asked as a request is
   forwarded; it may set `Exchange.mirror`, which then takes the request body);
4. the admin server, which the next step registers its metrics with;
5. observability (`lb.observe.install`): the metrics `Observer` + `FailureHook` and the
   access-log `Observer`, each attached only while enabled, so that what is off costs nothing;
   then tracing (`lb.tracing.install`): `Runtime.tracer`, which the client sides hand each
   request head to (W3C trace context), and a span `Observer`, only while `tracing` is set;
6. discovery (`lb.discovery.manager.install`): backend sets into `Service.update`.

A mode: tcp listener (`lb.proxy.tcp`) has no exchanges: it reports each connection once, as it
ends, to the `TcpObserver`s in `Runtime.tcp_observers` (the access log), and its failed
connection attempts through `Runtime.record_failure` like the HTTP path.

Least latency (`balance.mode: least_latency`) plugs into nothing: it is a mode of the service's
own picker, which the exchange feeds at each response head (`Service.answered`, a flag check
for the other modes) and `Runtime.record_failure` at each failed attempt (`Service.failed`).

Every reload recompiles the routes and runs `Runtime.compile_hooks` on the new table before it
is swapped in, which is how the edge policies and traffic control re-attach their parts to
the compiled routes.
"""

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .balancer.backend import Backend
    from .balancer.service import Service
    from .proxy.downstream import ClientConnection
    from .proxy.exchange import Exchange
    from .proxy.failures import Failure
    from .proxy.headers import RequestInfo
    from .proxy.side import Downstream
    from .proxy.tcp.proxy import TcpConnection
    from .routing.route import Route


class ExchangeView(Protocol):
    """What an observer may read of a finished exchange, and nothing it may change. The
    compiled recorder reads these as C fields of the Exchange; this says which ones."""

    @property
    def route(self) -> "Route | None": ...
    @property
    def service(self) -> "Service | None": ...
    @property
    def last_backend(self) -> "Backend | None": ...
    @property
    def upstream_name(self) -> str: ...
    @property
    def client(self) -> "Downstream": ...
    @property
    def method(self) -> bytes: ...
    @property
    def path(self) -> str: ...
    @property
    def http10(self) -> bool: ...
    @property
    def info(self) -> "RequestInfo": ...
    @property
    def status(self) -> int: ...
    @property
    def response_started(self) -> bool: ...
    @property
    def failure(self) -> "Failure | None": ...
    @property
    def t0(self) -> float: ...
    @property
    def t_upstream(self) -> float: ...
    @property
    def attempts(self) -> int: ...
    @property
    def retries(self) -> int: ...
    @property
    def resp_bytes(self) -> int: ...
    @property
    def refused_by(self) -> str | None: ...


class Observer(Protocol):
    """Told of every finished exchange (once), and of connections refused before one."""

    def record(self, ex: ExchangeView, ok: bool) -> None: ...

    def refusal(self, conn: "ClientConnection", status: int) -> None: ...


class TcpObserver(Protocol):
    """Told of every connection of a tcp listener once, when both its sides have closed."""

    def record_tcp(self, conn: "TcpConnection") -> None: ...


class FailureHook(Protocol):
    """Told of every failed attempt on a backend, as it fails (retries included)."""

    def record_failure(self, svc: "Service", backend: "Backend", failure: "Failure") -> None: ...


class Admitter(Protocol):
    """`Route.limiter`: True lets the exchange go on now; False means it answered the client
    itself (429) or calls `ex.forward()` once it has decided (a Redis-shared limit)."""

    def admit(self, ex: "Exchange") -> bool: ...


class Guard(Protocol):
    """`Route.guard`: the edge policies (who may come in), asked before the rate limits. True
    lets the exchange go on now; False means it answered the client itself (401, 403, ...) or
    calls `ex.admitted()` once it has decided (a verification off the loop, a subrequest). A
    guard that holds something per exchange (an in-flight slot) sets `ex.guard` to a
    `Holder` of it, left exactly once in `Exchange._finish`."""

    def admit(self, ex: "Exchange") -> bool: ...


class Holder(Protocol):
    """`ex.guard`: what an edge policy holds for one exchange until it finishes."""

    def leave(self, ex: "Exchange") -> None: ...


class Gate(Protocol):
    """`Service.gate`: the service's caps and breaker, entered once per exchange and left in
    `Exchange._finish`; a retry takes a cap slot too."""

    def enter(self, ex: "Exchange") -> bool: ...

    def leave(self, ex: "Exchange") -> None: ...

    def take_retry(self) -> bool: ...
