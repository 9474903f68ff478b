"""A mode: tcp listener's running side: its settings, refreshed in place on reload, and the
connections it accepted.

`Server._serve_listeners` makes one of these instead of a `ListenerRuntime` for a listener with
`mode: tcp`, and hands it the sockets the listener's `Acceptor` accepts (counted in
`runtime.descriptors` like HTTP connections). A reload that changes the service or the SNI
routes affects the connections accepted from then on; those open keep the service and backend
they have. A removed listener stops accepting, and its connections carry on until they end or
the drain at shutdown is over.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import TYPE_CHECKING

from ...config import model
from ...edge.client_caps import ConnectionCaps, connection_caps
from ...edge.ipfilter import IpRule
from ..tls import TlsSwitch
from .proxy import TcpConnection

if TYPE_CHECKING:
    from ...runtime import Runtime

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class SniRoutes:
    """Host -> service: an exact name first, then the longest matching "*.domain" (any depth
    of subdomain, as for HTTP routes), then the default (None: the connection is closed)."""

    def __init__(self, routes: dict[str, str], default: str | None) -> None:
        self.exact: dict[str, str] = {}
        self.wildcard: dict[str, str] = {}  # ".example.com" -> service
        for pattern, service in routes.items():
            pattern = pattern.lower().rstrip(".")
            if pattern.startswith("*."):
                self.wildcard[pattern[1:]] = service
            else:
                self.exact[pattern] = service
        self.default = default

    def service_for(self, host: str | None) -> str | None:
        if host is None:
            return self.default
        found = self.exact.get(host)
        if found is not None:
            return found
        if self.wildcard:
            dot = host.find(".")
            while dot >= 0:
                found = self.wildcard.get(host[dot:])
                if found is not None:
                    return found
                dot = host.find(".", dot + 1)
        return self.default


class TcpListenerRuntime:
    """What a tcp listener's connections read: the same interface the server, the admin API
    and the metrics use for an HTTP listener (`cfg`, `name`, `connections`, `accepted`)."""

    tunnels: frozenset[object] = frozenset()  # HTTP upgrades only; shutdown looks for them

    def __init__(self, runtime: Runtime, cfg: model.Listener, loop: asyncio.AbstractEventLoop):
        self.runtime = runtime
        self.loop = loop
        self.tls: TlsSwitch | None = None  # always None: TLS is passed through, not ended
        self.connections: set[TcpConnection] = set()
        self.accepted = 0
        self.client_caps: ConnectionCaps | None = None
        self.ip_rule: IpRule | None = None
        self.configure(cfg)

    def configure(self, cfg: model.Listener) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.timeouts = cfg.timeouts
        self.service = cfg.service
        self.passthrough = cfg.tls_passthrough
        self.routes = SniRoutes(cfg.sni_routes, cfg.default_service)
        # Edge policies at L4, on the peer address, as each connection is accepted.
        refused = self.runtime.counters["client_connections_refused"]
        self.client_caps = connection_caps(
            self.client_caps, cfg.name, cfg.max_connections_per_client, refused
        )
        ipf = cfg.ip_filter
        if ipf is None:
            self.ip_rule = None
        elif self.ip_rule is None or self.ip_rule.cfg != ipf:
            self.ip_rule = IpRule(ipf)  # the same lists keep their compiled form and memo
        self._ip_refused = (cfg.name, "ip_filter")
        self.proxy_protocol = cfg.proxy_protocol
        self.networks: tuple[Network, ...] = tuple(
            ipaddress.ip_network(c, strict=False) for c in cfg.trusted_proxies
        )

    def service_for(self, host: str | None) -> str | None:
        return self.routes.service_for(host)

    def trusted(self, ip: str) -> bool:
        """Whether the peer may send a PROXY header (an IPv4 peer of a dual-stack socket
        shows as ::ffff:a.b.c.d and is judged as a.b.c.d)."""
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.networks)

    # -- connections ----------------------------------------------------------------------------
    def accept(self, sock: socket.socket) -> None:
        """A connection the listener's Acceptor took (and counted in `runtime.descriptors`)."""
        caps, rule = self.client_caps, self.ip_rule
        ip = b""
        if caps is not None or rule is not None:
            try:
                ip = str(sock.getpeername()[0]).encode()
            except OSError:
                ip = b""  # gone already
            if not ip:
                refused = True
            elif rule is not None and not rule.admits(ip):
                self.runtime.counters["client_connections_refused"][self._ip_refused] += 1
                refused = True
            else:
                refused = caps is not None and not caps.enter(ip)
            if refused:
                sock.close()  # no byte either way
                self.runtime.descriptors.release()
                return
        self.loop.create_task(self._start(sock, ip))

    async def _start(self, sock: socket.socket, ip: bytes) -> None:
        conn = TcpConnection(self)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await self.loop.connect_accepted_socket(lambda: conn.client, sock)
        except (Exception, asyncio.CancelledError):
            # A connection that started gives its descriptor back when it ends; one that did
            # not, here.
            if conn.client.transport is None:
                sock.close()
                self._gone(ip)

    def opened(self, conn: TcpConnection) -> None:
        self.connections.add(conn)
        self.accepted += 1

    def closed(self, conn: TcpConnection) -> None:
        self.connections.discard(conn)
        self._gone(conn.peer[0].encode())

    def _gone(self, ip: bytes) -> None:
        self.runtime.descriptors.release()
        if self.client_caps is not None:
            self.client_caps.leave(ip)
