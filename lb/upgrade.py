"""Zero-downtime upgrades: a running lb hands its listening sockets to its successor.

`lb run --upgrade-socket PATH` serves hand-overs on a Unix socket at PATH (mode 0600). A new
lb started with `--upgrade-from PATH` (usually with `--upgrade-socket PATH` too, so that it can
be upgraded in turn) takes over like this, one message per SOCK_SEQPACKET packet:

    new -> old   {"op": "hello", "pid": ...}
    old -> new   {"op": "sockets", "listeners": [[host, port], ...], "admin": [host, port]}
                 with the listening sockets themselves (SCM_RIGHTS), the admin port's last
    new          starts: the same sockets accept in both processes, so no connection is
                 refused and none waiting in a backlog is lost
    new -> old   {"op": "ready"}
    old          stops accepting and stops its admin port, removes PATH
    old -> new   {"op": "done"}; the new process serves hand-overs at PATH from now on
    old          drains like a SIGTERM (`Server.shutdown`, with `HANDOVER_GRACE`) and exits

Before "ready" nothing has changed for the old process: a successor that fails to start (a bad
config, a port it cannot add, a crash) leaves it serving as it was. A request already in flight
on the old process, a WebSocket or a stream, finishes there within the listeners' `drain`;
keep-alive connections get `Connection: close` on their next response (or are closed once
idle past the grace), so their clients reconnect to the new process.

Under systemd the successor tells the service manager that it is the main process now
(`sd_notify`: MAINPID and READY=1, with `NotifyAccess=all`), so the unit keeps running when
the old process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger("lb.upgrade")

Address = tuple[str, int]
HANDSHAKE_TIMEOUT = 30.0  # seconds each side waits for the other's next message
HANDOVER_GRACE = 1.0  # idle keep-alive connections get this long to send one last request
_MAX_MESSAGE = 65536
_MAX_FDS = 1024


@dataclass
class Inherited:
    """The listening sockets a predecessor handed over, taken as a config needs them."""

    listeners: dict[Address, socket.socket] = field(default_factory=dict)
    admin: socket.socket | None = None

    def take(self, address: Address) -> socket.socket | None:
        return self.listeners.pop(address, None)

    def close_unused(self) -> None:
        """The predecessor's sockets that the new config does not listen on."""
        for address, sock in self.listeners.items():
            log.info("not listening on %s:%d any more (not in the config)", *address)
            sock.close()
        self.listeners.clear()
        if self.admin is not None:
            self.admin.close()
            self.admin = None


class UpgradeError(Exception):
    """The hand-over could not happen; the running lb is unchanged."""


def _send(sock: socket.socket, message: dict[str, object], fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode()
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.sendall(data)


def _receive(sock: socket.socket) -> tuple[dict[str, object], list[int]]:
    data, fds, _, _ = socket.recv_fds(sock, _MAX_MESSAGE, _MAX_FDS)
    if not data:
        for fd in fds:
            os.close(fd)
        raise UpgradeError("the other lb closed the upgrade socket")
    try:
        message = json.loads(data)
    except ValueError as exc:
        raise UpgradeError(f"garbled upgrade message: {exc}") from exc
    if not isinstance(message, dict):
        raise UpgradeError("garbled upgrade message")
    return message, list(fds)


def _expect(sock: socket.socket, op: str) -> tuple[dict[str, object], list[int]]:
    message, fds = _receive(sock)
    if message.get("op") != op:
        for fd in fds:
            os.close(fd)
        raise UpgradeError(f"expected {op!r} from the other lb, got {message.get('op')!r}")
    return message, fds


# -- the successor's side ----------------------------------------------------------------------
class Successor:
    """A new lb taking over from the one serving `path`."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.settimeout(HANDSHAKE_TIMEOUT)

    def take_sockets(self) -> Inherited:
        """Blocking: connect, say hello, receive the listening sockets."""
        try:
            self.sock.connect(self.path)
        except OSError as exc:
            raise UpgradeError(f"no lb to upgrade from at {self.path}: {exc.strerror}") from exc
        _send(self.sock, {"op": "hello", "pid": os.getpid()})
        message, fds = _expect(self.sock, "sockets")
        listeners = message.get("listeners")
        admin = message.get("admin")
        if not isinstance(listeners, list) or len(fds) != len(listeners) + (admin is not None):
            for fd in fds:
                os.close(fd)
            raise UpgradeError("the sockets handed over do not match their addresses")
        inherited = Inherited()
        for (host, port), fd in zip(listeners, fds, strict=False):
            inherited.listeners[(str(host), int(port))] = _listening(fd)
        if admin is not None:
            inherited.admin = _listening(fds[-1])
        log.info("took %d listening sockets over from pid %s", len(fds), message.get("pid", "?"))
        return inherited

    def finish(self) -> None:
        """Blocking: tell the predecessor this lb serves, wait until it has stopped accepting."""
        try:
            _send(self.sock, {"op": "ready"})
            _expect(self.sock, "done")
        finally:
            self.sock.close()


def _listening(fd: int) -> socket.socket:
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    return sock


# -- the running lb's side ---------------------------------------------------------------------
class UpgradeListener:
    """A Server extension: serves one hand-over at a time at `path`."""

    def __init__(self, server: Server, path: str) -> None:
        self.server = server
        self.path = path
        self.sock: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # a predecessor's, gone by now, or one that crashed
        old_mask = os.umask(0o177)
        try:
            sock.bind(self.path)
        finally:
            os.umask(old_mask)
        sock.listen(1)
        sock.setblocking(False)
        self.sock = sock
        self._task = asyncio.get_running_loop().create_task(self._serve())
        log.info("serving upgrades at %s", self.path)

    async def reconfigure(self) -> None:
        """Nothing of its own in the config."""

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._close()

    def _close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while self.sock is not None:
            conn, _ = await loop.sock_accept(self.sock)
            try:
                done = await self._hand_over(conn)
            except (OSError, UpgradeError) as exc:
                log.warning("upgrade abandoned, still serving: %s", exc)
                done = False
            finally:
                conn.close()
            if done:
                return

    async def _hand_over(self, conn: socket.socket) -> bool:
        loop = asyncio.get_running_loop()
        conn.setblocking(True)
        conn.settimeout(HANDSHAKE_TIMEOUT)
        server = self.server
        async with server.reload_lock:  # the acceptors stay as they are meanwhile
            hello, _ = await loop.run_in_executor(None, _expect, conn, "hello")
            addresses = list(server.acceptors)
            fds = [server.acceptors[a].sock.fileno() for a in addresses]
            admin = server.admin.listening_socket() if server.admin is not None else None
            if admin is not None:
                fds.append(admin.fileno())
            message = {
                "op": "sockets",
                "pid": os.getpid(),
                "listeners": [list(a) for a in addresses],
                "admin": list(admin.getsockname()[:2]) if admin is not None else None,
            }
            await loop.run_in_executor(None, _send, conn, message, fds)
            log.info("listening sockets handed to pid %s; waiting for it", hello.get("pid"))
            # A successor that dies or gives up before "ready" leaves this lb as it was.
            await loop.run_in_executor(None, _expect, conn, "ready")
            server.stop_accepting()
            if server.admin is not None:
                await server.admin.stop_listening()
            self._close()
            await loop.run_in_executor(None, _send, conn, {"op": "done"})
        log.info("upgraded: pid %s serves now; draining", hello.get("pid"))
        server.handed_over = True
        server.stopping.set()
        return True


def notify_systemd(message: str) -> None:
    """sd_notify(3) without libsystemd: a datagram to $NOTIFY_SOCKET, if there is one."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]  # an abstract socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(message.encode(), path)
        except OSError as exc:
            log.warning("sd_notify failed: %s", exc)
