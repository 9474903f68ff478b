"""Process lifecycle: bind listeners, serve, reload, and shut down gracefully."""

import asyncio
import logging
import signal
import ssl
import threading
from collections.abc import Callable
from typing import Any

from .admin.app import AdminServer
from .balancer.install import install as install_balancing
from .compress.install import install as install_compression
from .config import ConfigError, Loaded
from .config.watch import ConfigWatcher, signature
from .discovery.kvconfig import KvConfig
from .discovery.manager import install as install_discovery
from .edge.install import install as install_edge
from .listeners import ListenerPlan, prepare_listeners
from .mirror.install import install as install_mirroring
from .observe import install as install_observability
from .proxy.accept import Acceptor, Descriptors, raise_descriptor_limit
from .proxy.downstream import ClientConnection
from .proxy.listener import ListenerRuntime
from .proxy.tcp.listener import TcpListenerRuntime
from .runtime import Runtime
from .tracing import install as install_tracing
from .traffic.control import install as install_traffic_control
from .upgrade import HANDOVER_GRACE, Inherited, Offer

log = logging.getLogger("lb")


class Server:
    def __init__(
        self,
        config_path: str,
        loaded: Loaded,
        *,
        reuse_port: bool = False,
        watch_interval: float = 1.0,
        inherited: Inherited | None = None,
    ) -> None:
        self.config_path = config_path
        # What the files looked like when last read: the watcher reloads when they change.
        self.config_signature = signature(config_path, loaded.inputs)
        self.loop = asyncio.get_running_loop()
        self.runtime = Runtime(loaded, self.loop, Descriptors(raise_descriptor_limit()))
        self.reuse_port = reuse_port
        # A predecessor's listening sockets (lb/upgrade.py), used where the config listens.
        self.inherited = inherited
        self.superseded = False  # a successor serves: drain with HANDOVER_GRACE
        # One per listening address, kept across reloads while some listener binds there.
        self.acceptors: dict[tuple[str, int], Acceptor] = {}
        # Listeners a reload removed (or switched between http and tcp), until their last
        # connection has closed.
        self.retired: list[ListenerRuntime | TcpListenerRuntime] = []
        self.stopping = asyncio.Event()
        self.reload_lock = asyncio.Lock()
        self.admin: Any = None
        # Builds the admin server from this Server; None: lb.admin.app.AdminServer on
        # config.admin.bind. A worker of `lb run --workers N` serves it privately (lb.workers).
        self.admin_factory: Callable[[Server], Any] | None = None
        self.discovery: Any = None  # lb.discovery.manager.DiscoveryManager, set by start()
        self.reloads = {"success": 0, "failure": 0}
        self.last_reload_ok = True
        self.last_reload_errors: list[str] = []
        # What a reload reads: the files, and the Consul KV documents of a config_source.
        self.source = KvConfig(self, loaded)
        # Components with async start()/stop()/reconfigure(); stop() runs before draining.
        self.extensions: list[Any] = [ConfigWatcher(self, interval=watch_interval), self.source]

    async def start(self) -> None:
        """Everything is ready before the listeners open: the first request accepted is
        limited, observed and routed like any other, and a signal then is never lost. The
        subsystems plug in in the order lb/hooks.py explains."""
        self._install_signals()
        install_edge(self)
        install_traffic_control(self)
        install_balancing(self)
        install_compression(self)
        install_mirroring(self)
        self.admin = (self.admin_factory or AdminServer)(self)
        install_observability(self)
        install_tracing(self)
        install_discovery(self)
        await self.admin.start()
        for ext in self.extensions:
            await ext.start()
        self._serve_listeners(await self._prepare_listeners(self.runtime.config.listeners))
        if self.inherited is not None:
            self.inherited.close_unused()
            self.inherited = None

    async def _prepare_listeners(self, configs: list[Any]) -> ListenerPlan:
        descriptors = self.runtime.descriptors
        errors = self.runtime.counters["accept_errors"]
        return await prepare_listeners(
            configs,
            self.acceptors,
            lambda socks: Acceptor(socks, self.loop, descriptors, errors),
            self.reuse_port,
            self.inherited,
        )

    def _serve_listeners(self, plan: ListenerPlan) -> None:
        """Switch to the prepared listeners: new sockets accept first, then the sockets no
        listener binds any more close; connections already open carry on where they are."""
        runtime = self.runtime
        listeners: dict[str, ListenerRuntime | TcpListenerRuntime] = {}
        for cfg in plan.configs:
            lr = runtime.listeners.get(cfg.name)
            kind = TcpListenerRuntime if cfg.mode == "tcp" else ListenerRuntime
            if lr is None or type(lr) is not kind:  # new, or its mode changed
                lr = kind(runtime, cfg, self.loop)
            else:
                lr.configure(cfg)
            lr.tls = plan.tls[cfg.name]
            listeners[cfg.name] = lr
        for cfg in plan.configs:
            lr = listeners[cfg.name]
            plan.acceptors[cfg.bind].serve(cfg.name, lr.accept)
            if cfg.bind in plan.bound:
                log.info("listening on %s:%d (%s)", cfg.bind[0], cfg.bind[1], cfg.name)
        for name, lr in runtime.listeners.items():
            if listeners.get(name) is not lr and lr.connections:
                self.retired.append(lr)
        self.retired = [lr for lr in self.retired if lr.connections]
        runtime.listeners = listeners
        for address, acceptor in self.acceptors.items():
            if address not in plan.acceptors:
                acceptor.close()
                log.info("stopped listening on %s:%d", *address)
        self.acceptors = plan.acceptors

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # embedded in another program's thread: signals are that program's business
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.stopping.set)
        self.loop.add_signal_handler(signal.SIGHUP, lambda: self.loop.create_task(self.reload()))

    def _remove_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self.loop.remove_signal_handler(sig)

    async def reload(self) -> tuple[bool, list[str]]:
        """Validate and compile off the request path, then swap; a bad config changes nothing."""
        async with self.reload_lock:
            running = self.runtime.loaded.inputs
            self.config_signature = signature(self.config_path, running)
            try:
                loaded = await self.loop.run_in_executor(None, self.source.load)
            except ConfigError as exc:
                errors = [str(p) for p in exc.problems]
                for line in errors:
                    log.error("reload refused: %s", line)
                self.reloads["failure"] += 1
                self.last_reload_ok = False
                self.last_reload_errors = errors
                return False, errors
            if loaded.digest == self.runtime.loaded.digest:
                self.reloads["success"] += 1
                self.last_reload_ok = True
                self.last_reload_errors = []
                return True, []
            try:
                await self._apply(loaded)
            except (OSError, ValueError, ssl.SSLError) as exc:
                msg = f"{self.config_path}: reload refused: {exc}"
                log.error(msg)
                self.reloads["failure"] += 1
                self.last_reload_ok = False
                self.last_reload_errors = [msg]
                return False, [msg]
            self.reloads["success"] += 1
            self.last_reload_ok = True
            self.last_reload_errors = []
            log.info("config reloaded (%s)", loaded.digest[:12])
            return True, []

    async def _apply(self, loaded: Loaded) -> None:
        """Everything that can fail (binding sockets, loading certificates, opening log
        files) is prepared first: a failure there changes nothing and closes what it made."""
        plan = await self._prepare_listeners(loaded.config.listeners)
        try:
            self.runtime.apply(loaded)
        except BaseException:
            plan.discard()
            raise
        self._serve_listeners(plan)
        for ext in self.extensions:
            await ext.reconfigure()

    async def serve(self) -> None:
        await self.start()
        await self.stopping.wait()
        await self.shutdown(self.grace())

    def grace(self) -> float:
        return HANDOVER_GRACE if self.superseded else 0.0

    def stop_accepting(self) -> None:
        for acceptor in self.acceptors.values():
            acceptor.close()
        self.acceptors = {}

    # -- upgrades (lb/upgrade.py) -----------------------------------------------------------------
    def handover_sockets(self) -> Offer:
        listeners = [
            (address, sock) for address, acc in self.acceptors.items() for sock in acc.socks
        ]
        admin = self.admin.listening_socket() if self.admin is not None else None
        return listeners, admin, {}

    def handover_abandoned(self) -> None:
        """Nothing changed here before the successor said it served."""

    async def handed_over(self, ready: dict[str, object]) -> None:
        self.stop_accepting()
        if self.admin is not None:
            await self.admin.stop_listening()
        self.superseded = True
        self.stopping.set()

    async def shutdown(self, grace: float = 0.0) -> None:
        """Stop accepting, close idle connections, let in-flight ones finish up to the drain.
        With a `grace` (after an upgrade), idle HTTP/1.1 connections are first left open that
        long, marked to close after one more response: a client that was about to send on
        one gets its answer (with `Connection: close`) instead of a closed connection."""
        log.info("shutting down: draining")
        self._remove_signals()
        for ext in self.extensions:
            await ext.stop()
        drain = max((c.timeouts.drain for c in self.runtime.config.listeners), default=0)
        self.stop_accepting()
        deadline = self.loop.time() + drain
        listeners = [*self.runtime.listeners.values(), *self.retired]
        if grace > 0:
            for lr in listeners:
                for conn in lr.connections:
                    if isinstance(conn, ClientConnection):
                        conn.closing = True
            until = min(deadline, self.loop.time() + grace)
            while self.loop.time() < until and any(lr.connections for lr in listeners):
                await asyncio.sleep(0.05)
        while self.loop.time() < deadline:
            for lr in listeners:
                for conn in list(lr.connections):
                    conn.close_idle()
            # Wait for connections to be gone, not merely closing: a closing one may still
            # be flushing its last response.
            if not any(lr.connections for lr in listeners):
                break
            await asyncio.sleep(0.05)
        for lr in listeners:
            for conn in list(lr.connections):
                conn.abort()
            for tunnel in list(lr.tunnels):
                tunnel.close()
        for svc in self.runtime.services.values():
            for b in svc.backends.values():
                b.close_idle()
        if self.admin is not None:
            await self.admin.stop()
        log.info("stopped")
