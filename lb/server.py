"""Process lifecycle: bind listeners, serve, reload, and shut down gracefully."""

import asyncio
import logging
import signal
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

from .admin.app import AdminServer
from .config import ConfigError, Loaded, load
from .config.watch import ConfigWatcher, signature
from .discovery.manager import install as install_discovery
from .observe import install as install_observability
from .proxy.tls import TlsSwitch
from .runtime import ListenerRuntime, Runtime
from .traffic.control import install as install_traffic_control

log = logging.getLogger("lb")


def listener_tls(cfg: Any) -> TlsSwitch | None:
    return TlsSwitch(cfg.tls) if cfg.tls is not None else None


class Server:
    def __init__(
        self,
        config_path: str,
        loaded: Loaded,
        *,
        reuse_port: bool = False,
        watch_interval: float = 1.0,
    ) -> None:
        self.config_path = config_path
        # What the files looked like when last read: the watcher reloads when they change.
        self.config_signature = signature(config_path)
        self.loop = asyncio.get_running_loop()
        self.runtime = Runtime(loaded, self.loop)
        self.reuse_port = reuse_port
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
        # Components with async start()/stop()/reconfigure(); stop() runs before draining.
        self.extensions: list[Any] = [ConfigWatcher(self, interval=watch_interval)]

    async def start(self) -> None:
        """Everything is ready before the listeners open: the first request accepted is
        limited, observed and routed like any other, and a signal then is never lost."""
        self._install_signals()
        install_traffic_control(self)
        self.admin = (self.admin_factory or AdminServer)(self)
        install_observability(self)
        install_discovery(self)
        await self.admin.start()
        for ext in self.extensions:
            await ext.start()
        for cfg in self.runtime.config.listeners:
            await self._bind(cfg)

    async def _bind(self, cfg: Any) -> None:
        lr = ListenerRuntime(self.runtime, cfg, self.loop)
        host, port = cfg.bind
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(4096)
        sock.setblocking(False)
        lr.tls = listener_tls(cfg)
        lr.server = await self.loop.create_server(
            lr.protocol, sock=sock, ssl=lr.tls.root if lr.tls else None, backlog=4096
        )
        self.runtime.listeners[cfg.name] = lr
        log.info("listening on %s:%d (%s)", host, port, cfg.name)

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
            self.config_signature = signature(self.config_path)
            try:
                loaded = await self.loop.run_in_executor(None, load, self.config_path)
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
        old = {c.name: c for c in self.runtime.config.listeners}
        new = {c.name: c for c in loaded.config.listeners}
        added = [c for n, c in new.items() if n not in old or old[n].bind != c.bind]
        kept = {n: c for n, c in new.items() if n in old and old[n].bind == c.bind}
        # Certificates load before anything changes: a bad one refuses the whole reload.
        switches = {n: TlsSwitch(c.tls) for n, c in kept.items() if c.tls is not None}
        for n, c in kept.items():
            lr = self.runtime.listeners[n]
            if (c.tls is None) != (lr.tls is None):
                raise ValueError(
                    f"listener {n}: TLS cannot be switched on or off in place; "
                    "change its bind address too"
                )
        self.runtime.apply(loaded)
        for name, cfg in kept.items():
            lr = self.runtime.listeners[name]
            lr.configure(cfg)
            if name in switches and lr.tls is not None:
                lr.tls.current = switches[name].current
        for name in [n for n in old if n not in new or old[n].bind != new[n].bind]:
            lr = self.runtime.listeners.pop(name, None)
            if lr is not None and lr.server is not None:
                lr.server.close()  # stop accepting; open connections finish on their own
        for cfg in added:
            await self._bind(cfg)
        for ext in self.extensions:
            await ext.reconfigure()

    async def serve(self) -> None:
        await self.start()
        await self.stopping.wait()
        await self.shutdown()

    async def shutdown(self) -> None:
        """Stop accepting, close idle connections, let in-flight ones finish up to the drain."""
        log.info("shutting down: draining")
        self._remove_signals()
        for ext in self.extensions:
            await ext.stop()
        drain = max((c.timeouts.drain for c in self.runtime.config.listeners), default=0)
        for lr in self.runtime.listeners.values():
            if lr.server is not None:
                lr.server.close()
        deadline = self.loop.time() + drain
        listeners = list(self.runtime.listeners.values())
        while self.loop.time() < deadline:
            for lr in listeners:
                for conn in list(lr.connections):
                    conn.close_idle()
            # Wait for connections to be gone, not merely closing: a closing one may still
            # be flushing its last response.
            if not any(lr.connections for lr in listeners):
                break
            await asyncio.sleep(0.05)
        for lr in self.runtime.listeners.values():
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
