"""The running state: the compiled snapshot (routes + services) and the live listeners.

A reload compiles a new RouteTable and applies service changes in place (survivors keep
in-flight counts and pools), then swaps the table reference: requests already routed keep
the Route object they hold, new ones see the new table.
"""

import asyncio
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .balancer.service import Service, static_specs
from .config import Loaded, model
from .hooks import ExchangeView, FailureHook, Guard, Observer, TcpObserver
from .observe.metrics import BackendLabels, Counters
from .proxy.accept import Descriptors
from .proxy.failures import Failure
from .proxy.listener import ListenerRuntime
from .proxy.outbox import Outbox
from .routing.table import RouteTable

if TYPE_CHECKING:
    from .proxy.downstream import ClientConnection
    from .proxy.tcp.listener import TcpListenerRuntime
    from .tracing.context import Propagator

H = TypeVar("H")


def set_hook(hooks: list[H], hook: H, on: bool) -> None:
    """Attach or detach an observer/failure hook: features pay per request only while on."""
    present = any(h is hook for h in hooks)
    if on and not present:
        hooks.append(hook)
    elif not on and present:
        hooks[:] = [h for h in hooks if h is not hook]


class Runtime:
    def __init__(
        self, loaded: Loaded, loop: asyncio.AbstractEventLoop, descriptors: Descriptors
    ) -> None:
        self.loop = loop
        self.descriptors = descriptors
        self.counters = Counters()  # the plain counters every subsystem adds to
        self.outbox = Outbox(loop)  # what the connections write, sent once per loop iteration
        self.loaded = loaded
        self.config = loaded.config
        self.loaded_at = time.time()
        self.services: dict[str, Service] = {}
        self.table = RouteTable([])
        # By name; a mode: tcp listener has a TcpListenerRuntime (lb/proxy/tcp/listener.py).
        self.listeners: dict[str, ListenerRuntime | TcpListenerRuntime] = {}
        # record(exchange, ok) hooks: metrics, access log, spans; attached by `observe`
        self.observers: list[Observer] = []
        # Their bound `record`s, which the exchange calls: no method looked up per request.
        self.recorders: list[Callable[[ExchangeView, bool], None]] = []
        # record_tcp(connection) hooks, called as a tcp listener's connection ends: access log
        self.tcp_observers: list[TcpObserver] = []
        self.tcp_labels = BackendLabels()  # bounded `backend` labels of the lb_tcp_* series
        self.failure_hooks: list[FailureHook] = []
        # Run on every new table right before it is swapped in (config apply and dynamic
        # routes), when services and `config` are already updated: traffic control attaches
        # route limiters, retries and service gates there.
        self.compile_hooks: list[Callable[[RouteTable], None]] = []
        # Asked when a request matches no route: the listeners' edge policies (lb/edge).
        self.unrouted_guard: Guard | None = None
        # Handed each request head while tracing is on (lb/tracing); None: tracing is off.
        self.tracer: Propagator | None = None
        # Declared outside the config (Consul tags); the config wins a service name.
        self.dynamic_routes: list[model.Route] = []
        self.dynamic_services: dict[str, model.Service] = {}
        self._tls: dict[tuple[str, bool], ssl.SSLContext | None] = {}
        self.apply(loaded)

    # -- config ---------------------------------------------------------------------------------
    def apply(self, loaded: Loaded) -> None:
        """Install a validated config. Services update in place; the table swaps at the end."""
        cfg = loaded.config
        table = RouteTable(cfg.routes + self.dynamic_routes)
        wanted = {**self.dynamic_services, **cfg.services}
        for name, scfg in wanted.items():
            svc = self.services.get(name)
            if svc is None:
                svc = self.services[name] = Service(name, scfg)
            else:
                svc.configure(scfg)
            if scfg.discovery == "static":
                svc.update(static_specs(scfg))
            self._tls.pop((name, False), None)
            self._tls.pop((name, True), None)
        for name in list(self.services):
            if name not in wanted:
                # Routes no longer reach it; drain what is in flight, then forget it.
                self.services.pop(name).update([])
        for svc in self.services.values():
            fb = svc.config.fallback
            svc.fallback = self.services.get(fb) if fb else None
        self.loaded = loaded
        self.config = cfg
        self.loaded_at = time.time()
        self._swap(table)

    def _swap(self, table: RouteTable) -> None:
        for hook in self.compile_hooks:
            hook(table)
        self.table = table

    def set_dynamic_routes(
        self, routes: list[model.Route], services: dict[str, model.Service]
    ) -> None:
        """Install routes and services declared outside the config, after the config's routes
        (which win ties in match order). Services are added or drained; the table swaps last."""
        table = RouteTable(self.config.routes + routes)
        self.dynamic_routes = list(routes)
        self.dynamic_services = dict(services)
        for name, scfg in services.items():
            if name not in self.services:
                self.services[name] = Service(name, scfg)
        for name in list(self.services):
            if name not in self.config.services and name not in services:
                self.services.pop(name).update([])
        self._swap(table)

    def upstream_tls(self, svc: Service, h2: bool | None = None) -> ssl.SSLContext | None:
        """The TLS context toward a service's backends; ALPN h2 for the HTTP/2 data path
        (`h2` True), http/1.1 otherwise. None (health checks): h2 only for gRPC checks."""
        if h2 is None:
            hc = svc.config.health_check
            h2 = hc is not None and hc.type == "grpc"
        key = (svc.name, h2)
        if key in self._tls:
            return self._tls[key]
        tls = svc.config.tls
        ctx: ssl.SSLContext | None = None
        if tls is not None:
            ctx = ssl.create_default_context(cafile=tls.ca)
            if not tls.verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["h2"] if h2 else ["http/1.1"])
        self._tls[key] = ctx
        return ctx

    def observe(self, observer: Observer, on: bool) -> None:
        """Attach or detach an exchange observer (set_hook), keeping `recorders` in step."""
        set_hook(self.observers, observer, on)
        self.recorders = [obs.record for obs in self.observers]

    # -- outcomes -------------------------------------------------------------------------------
    def record_failure(self, svc: Service, backend: Any, failure: Failure) -> None:
        backend.failures += 1
        svc.failed(backend, failure)  # least_latency's penalty
        for hook in self.failure_hooks:
            hook.record_failure(svc, backend, failure)

    def record_refusal(self, conn: "ClientConnection", status: int) -> None:
        for obs in self.observers:
            obs.refusal(conn, status)
