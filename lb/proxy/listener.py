"""A listener as the data path sees it: its settings, refreshed in place on reload, and its
connections. The listening sockets themselves are lb/listeners.py's."""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import TYPE_CHECKING, Any

from ..config import model
from ..edge.client_caps import ConnectionCaps, connection_caps
from ..routing.route import Route, compile_route
from .tls import TlsSwitch

if TYPE_CHECKING:
    from ..runtime import Runtime
    from .downstream import ClientConnection


class ListenerRuntime:
    """Per-listener settings the data path reads, refreshed in place on reload."""

    # Compiled, an extension type (listener.pxd); this names the same fields for the twin.
    # fmt: off
    __slots__ = (
        "accepted", "cfg", "client_caps", "client_cert_header", "connections", "default_host",
        "forced_route", "h2", "h2_idle", "h2_settings", "http1", "http2", "loop",
        "max_body_size", "max_header_size", "name", "proto_header", "runtime", "scheme",
        "timeouts", "tls", "tunnels",
    )
    # fmt: on

    def __init__(
        self, runtime: Runtime, cfg: model.Listener, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.runtime = runtime
        self.loop = loop
        self.tls: TlsSwitch | None = None
        self.connections: set[ClientConnection] = set()
        self.tunnels: set[Any] = set()
        self.accepted = 0
        self.client_caps: ConnectionCaps | None = None
        self.configure(cfg)

    def configure(self, cfg: model.Listener) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.timeouts = cfg.timeouts
        self.max_header_size = cfg.limits.max_header_size
        self.max_body_size = cfg.limits.max_body_size
        self.scheme = "https" if cfg.tls else "http"
        self.proto_header = (b"x-forwarded-proto", self.scheme.encode())
        self.client_caps = connection_caps(
            self.client_caps,
            cfg.name,
            cfg.max_connections_per_client,
            self.runtime.counters["client_connections_refused"],
        )
        # mTLS: the header that carries the verified client certificate (lb/edge/mtls.py)
        auth = cfg.tls.client_auth if cfg.tls is not None else None
        header = auth.forward_header if auth is not None else None
        self.client_cert_header = header.lower().encode("latin-1") if header else None
        self.default_host = f"{cfg.bind[0]}:{cfg.bind[1]}".encode()
        self.http1 = "http1" in cfg.protocols
        self.h2 = "h2" in cfg.protocols  # then a ProtocolChooser takes each connection first
        # HTTP/2 clients' limits (read as each connection opens): the Session's settings, and
        # the connection timers of http2/downstream.py.
        h2 = cfg.http2 if cfg.http2 is not None else model.Http2Settings()
        self.http2 = h2
        self.h2_settings = h2.session_settings(cfg.limits.max_header_size)
        idle = h2.idle_timeout
        self.h2_idle = cfg.timeouts.keepalive_idle if idle is None else idle
        # A plain listener that only sends clients to HTTPS answers every request with 308.
        self.forced_route: Route | None = None
        if cfg.redirect_to_https is not None:
            redirect = model.Redirect(scheme="https", port=cfg.redirect_to_https, status=308)
            self.forced_route = compile_route(
                model.Route(name=f"{cfg.name}:https-redirect", redirect=redirect), 0
            )

    def accept(self, sock: socket.socket) -> None:
        """A connection the listener's Acceptor took (and counted in `runtime.descriptors`)."""
        caps = self.client_caps
        ip = b""
        if caps is not None:
            ip = peer_ip(sock)
            if not ip or not caps.enter(ip):
                sock.close()  # gone already, or at the client's cap: no byte either way
                self.runtime.descriptors.release()
                return
        tls = self.tls.root if self.tls is not None else None
        self.loop.create_task(self._start(sock, tls, ip))

    async def _start(self, sock: socket.socket, tls: ssl.SSLContext | None, ip: bytes) -> None:
        conn: Any
        if self.h2:
            from .http2.choose import ProtocolChooser

            conn = ProtocolChooser(self)
        else:
            # Imported here: compiled, the client side cimports this module's type.
            from .downstream import ClientConnection

            conn = ClientConnection(self)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await self.loop.connect_accepted_socket(lambda: conn, sock, ssl=tls)
        except (Exception, asyncio.CancelledError):
            # A failed TLS handshake, say; the transport closed the socket. A connection that
            # started gives its descriptor back when it closes, one that did not, here.
            if conn.transport is None:
                self.gone(ip)

    def opened(self, conn: ClientConnection) -> None:
        self.connections.add(conn)
        self.accepted += 1

    def closed(self, conn: ClientConnection) -> None:
        self.connections.discard(conn)
        self.gone(conn.peer_ip)

    def gone(self, ip: bytes) -> None:
        """An accepted connection from `ip` has closed, whether or not a protocol took it."""
        self.runtime.descriptors.release()
        if self.client_caps is not None:
            self.client_caps.leave(ip)


def peer_ip(sock: socket.socket) -> bytes:
    """The peer's address as the connections spell it (`peer_ip`); b"" once it has gone."""
    try:
        return str(sock.getpeername()[0]).encode()
    except OSError:
        return b""
