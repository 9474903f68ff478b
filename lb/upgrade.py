"""Zero-downtime upgrades: a running lb hands its listening sockets to its successor.

`lb run --upgrade-socket PATH` serves hand-overs on a Unix socket at PATH (mode 0600). A new
lb started with `--upgrade-from PATH` (usually with `--upgrade-socket PATH` too, so that it can
be upgraded in turn) takes over like this, one message per SOCK_SEQPACKET packet:

    new -> old   {"op": "hello", "pid": ...}
    old -> new   {"op": "sockets", "listeners": [[host, port], ...], "admin": [host, port]}
                 with the listening sockets themselves (SCM_RIGHTS), in the order of
                 "listeners" (an address once per socket), the admin port's last
    new          starts: the same sockets accept in both processes, so no connection is
                 refused and none waiting in a backlog is lost
    new -> old   {"op": "ready"}
    old -> new   {"op": "done"}, once it has removed PATH; the new process serves hand-overs
                 at PATH from now on
    old          stops accepting and stops its admin port
    old          drains like a SIGTERM (`Server.shutdown`, with `HANDOVER_GRACE`) and exits

Before "ready" nothing has changed for the old process: a successor that fails to start (a bad
config, a port it cannot add, a crash) leaves it serving as it was. A request already in flight
on the old process, a WebSocket or a stream, finishes there within the listeners' `drain`;
keep-alive connections get `Connection: close` on their next response (or are closed once
idle past the grace), so their clients reconnect to the new process.

With `--workers N` the supervisors hand over the admin port and tell each other where their
workers serve upgrades (`"workers": [PATH.w0, ...]` in the sockets message), and the workers
hand over their listening sockets by the same exchange, one connection per old worker, before
the new supervisor says "ready" (`{"op": "ready", "workers": W}`: W old workers have a
successor). New worker i is the successor of old workers i, i+N, i+2N, ... (its supervisor
passes it `--upgrade-from PATH.wi --also-upgrade-from PATH.w(i+N) ...`): it takes each one's
sockets in turn, starts accepting on all of them (an address may come once per socket, from
one predecessor or several), and only then says "ready" to each. So an old tree with more
workers than the new one closes none of its listening sockets: each old worker's pass to
exactly one new worker, which hands them all over again at the next upgrade; nothing waiting
in a backlog is reset and no connection hashed to one of them is refused. New workers beyond
the old count open their own sockets (SO_REUSEPORT), as on a first start. A new worker that
fails before its "ready" changes nothing for its predecessors; one that cannot take over
from all of them gives up on all. Meanwhile the old supervisor restarts none of its workers
that leave (they drain once their successor serves), unless the upgrade is abandoned. The
two trees do not share in-flight counts or in-process rate-limit state while both run.

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
from typing import Protocol

log = logging.getLogger("lb.upgrade")

Address = tuple[str, int]
# What a predecessor hands over: listening sockets by address, the admin port's, and what
# else the sockets message says
Offer = tuple[list[tuple[Address, socket.socket]], socket.socket | None, dict[str, object]]
HANDSHAKE_TIMEOUT = 30.0  # seconds each side waits for the other's next message
HANDOVER_GRACE = 1.0  # idle keep-alive connections get this long to send one last request
_MAX_MESSAGE = 65536
_MAX_FDS = 1024


@dataclass
class Inherited:
    """The listening sockets predecessors handed over, taken as a config needs them."""

    listeners: dict[Address, list[socket.socket]] = field(default_factory=dict)
    admin: socket.socket | None = None
    workers: list[str] = field(default_factory=list)  # a supervisor's: its workers' paths

    def take(self, address: Address) -> list[socket.socket]:
        return self.listeners.pop(address, [])

    def close_unused(self) -> None:
        """The predecessors' sockets that the new config does not listen on."""
        for address in self.listeners:
            log.info("not listening on %s:%d any more (not in the config)", *address)
        self.close()

    def close(self) -> None:
        for socks in self.listeners.values():
            for sock in socks:
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

    def take_sockets(self, inherited: Inherited) -> None:
        """Blocking: connect, say hello, receive the listening sockets into `inherited`."""
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
        workers = message.get("workers") or []
        if isinstance(workers, list):
            inherited.workers = [str(w) for w in workers]
        for (host, port), fd in zip(listeners, fds, strict=False):
            inherited.listeners.setdefault((str(host), int(port)), []).append(_listening(fd))
        if admin is not None:
            if inherited.admin is not None:  # one admin port: the last predecessor's
                inherited.admin.close()
            inherited.admin = _listening(fds[-1])
        log.info("took %d listening sockets over from pid %s", len(fds), message.get("pid", "?"))

    def finish(self, workers: int | None = None) -> None:
        """Blocking: tell the predecessor this lb serves, wait until it has stopped accepting.
        A supervisor says how many of the predecessor's workers its own took over."""
        message: dict[str, object] = {"op": "ready"}
        if workers is not None:
            message["workers"] = workers
        try:
            _send(self.sock, message)
            _expect(self.sock, "done")
        finally:
            self.sock.close()


def _listening(fd: int) -> socket.socket:
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    return sock


# -- the running lb's side ---------------------------------------------------------------------
class Predecessor(Protocol):
    """What hands over: a Server (lb/server.py) or a supervisor (lb/workers/supervisor.py)."""

    reload_lock: asyncio.Lock

    def handover_sockets(self) -> Offer:
        """The listening sockets by address, the admin port's, and what else to say."""
        ...

    def handover_abandoned(self) -> None:
        """The successor left before it served: carry on as before."""
        ...

    async def handed_over(self, ready: dict[str, object]) -> None:
        """The successor serves (`ready` is its message): stop accepting and drain."""
        ...


class UpgradeListener:
    """A Server or supervisor extension: serves one hand-over at a time at `path`."""

    def __init__(self, server: Predecessor, path: str) -> None:
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
            self.server.handover_abandoned()

    async def _hand_over(self, conn: socket.socket) -> bool:
        loop = asyncio.get_running_loop()
        conn.setblocking(True)
        conn.settimeout(HANDSHAKE_TIMEOUT)
        server = self.server
        async with server.reload_lock:  # the acceptors stay as they are meanwhile
            hello, _ = await loop.run_in_executor(None, _expect, conn, "hello")
            listeners, admin, extra = server.handover_sockets()
            fds = [sock.fileno() for _, sock in listeners]
            if admin is not None:
                fds.append(admin.fileno())
            message = {
                **extra,
                "op": "sockets",
                "pid": os.getpid(),
                "listeners": [list(address) for address, _ in listeners],
                "admin": list(admin.getsockname()[:2]) if admin is not None else None,
            }
            await loop.run_in_executor(None, _send, conn, message, fds)
            log.info("listening sockets handed to pid %s; waiting for it", hello.get("pid"))
            # A successor that dies or gives up before "ready" leaves this lb as it was.
            ready, _ = await loop.run_in_executor(None, _expect, conn, "ready")
            self._close()
            # "done" first: stopping this lb stops this listener too, mid-exchange otherwise.
            await loop.run_in_executor(None, _send, conn, {"op": "done"})
        log.info("upgraded: pid %s serves now; draining", hello.get("pid"))
        await server.handed_over(ready)
        return True


# -- the steps of a start, for `lb run` and each worker ------------------------------------------
async def take_over(paths: list[str]) -> tuple[list[Successor], Inherited | None]:
    """The sockets of the predecessors serving upgrades at `paths`, all in one Inherited
    (None without a path). Raises UpgradeError or OSError when one of them cannot hand over,
    having let go of the others before saying "ready": they carry on as they were."""
    if not paths:
        return [], None
    loop = asyncio.get_running_loop()
    successors: list[Successor] = []
    inherited = Inherited()
    try:
        for path in paths:
            successors.append(Successor(path))
            await loop.run_in_executor(None, successors[-1].take_sockets, inherited)
    except BaseException:
        for successor in successors:
            successor.sock.close()
        inherited.close()
        raise
    return successors, inherited


async def complete(successors: list[Successor], workers: int | None = None) -> None:
    """Once this lb serves: its predecessors stop accepting."""
    loop = asyncio.get_running_loop()

    async def finish(successor: Successor) -> None:
        try:
            await loop.run_in_executor(None, successor.finish, workers)
        except (OSError, UpgradeError) as exc:
            # Both accept now; the predecessor drains by itself once it has read "ready".
            log.warning("upgrade hand-over with %s: %s", successor.path, exc)

    await asyncio.gather(*(finish(s) for s in successors))


async def offer_upgrades(owner: Predecessor, path: str | None) -> UpgradeListener | None:
    if not path:
        return None
    listener = UpgradeListener(owner, path)
    await listener.start()
    return listener


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
