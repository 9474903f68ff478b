"""Accepting client connections with lb's own accept loop, within the descriptor budget.

The event loop's built-in servers handle EMFILE by accepting and closing the connection at
once (libuv's reserve-descriptor trick): the client sees a reset, and nothing is logged or
counted. Here lb stops accepting instead, so new connections wait in the kernel's backlog
until descriptors are free again, as HAProxy does:

- at most `Descriptors.max_clients` client connections are open at once, half of what the
  descriptor limit leaves after a reserve for the admin server, health checks, discovery and
  log files (each client connection may hold one backend connection);
- at that cap every listener stops accepting until a client connection closes;
- should accept() still fail for want of descriptors or memory (other processes, a lower
  system-wide limit), the listener pauses for `EXHAUSTED_PAUSE` and tries again, counting
  each failure and logging at most once per `LOG_INTERVAL`. It never spins.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
from collections.abc import Callable
from math import inf

log = logging.getLogger("lb.proxy")

RESERVED_FDS = 64  # admin server, health checks, Consul, Redis, log files, config reads
BATCH = 64  # accepts per wake-up (HAProxy's maxaccept): one busy listener cannot hog the loop
EXHAUSTED_PAUSE = 0.1
LOG_INTERVAL = 10.0
_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class LogThrottle:
    """Says whether a recurring condition may be logged now: at most once per LOG_INTERVAL."""

    __slots__ = ("_at",)

    def __init__(self) -> None:
        self._at = -inf

    def due(self, now: float) -> bool:
        if now - self._at < LOG_INTERVAL:
            return False
        self._at = now
        return True


def raise_descriptor_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (a common soft limit is 1024, far below
    what a proxy needs); the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if target == resource.RLIM_INFINITY:
        try:
            with open("/proc/sys/fs/nr_open") as f:
                target = int(f.read())
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.info("file descriptors: soft limit raised from %d to %d", soft, target)
            soft = target
        except (OSError, ValueError) as exc:
            log.warning("file descriptors: could not raise the soft limit %d: %s", soft, exc)
    return int(soft) if soft != resource.RLIM_INFINITY else 1 << 20


class Descriptors:
    """The process's budget of client connections, shared by every listener."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.max_clients = max(1, (limit - RESERVED_FDS) // 2)
        self.clients = 0  # accepted and not yet closed, handshakes included
        self.waiting: set[Acceptor] = set()  # acceptors stopped at the cap
        self.limited = 0  # times accepting stopped at the cap
        self._log = LogThrottle()

    def full(self, loop: asyncio.AbstractEventLoop) -> bool:
        if self.clients < self.max_clients:
            return False
        self.limited += 1
        if self._log.due(loop.time()):
            log.warning(
                "accepting paused: %d client connections open, the most the descriptor limit "
                "(%d) allows; new connections wait in the backlog",
                self.clients,
                self.limit,
            )
        return True

    def release(self) -> None:
        self.clients -= 1
        if self.waiting and self.clients < self.max_clients:
            waiting = list(self.waiting)
            self.waiting.clear()
            for acceptor in waiting:
                acceptor.start()


Handler = Callable[[socket.socket], None]


class Acceptor:
    """Accepts on the listening sockets of one address and hands each connection to
    `handler`. A reload can move them to another listener (`handler` is reassigned): they are
    never rebound. An address has several sockets after an upgrade made a worker the
    successor of more than one (lb/upgrade.py): each is a member of the SO_REUSEPORT group
    whose backlog the kernel fills, so each is accepted on until it is handed over again."""

    def __init__(
        self,
        socks: list[socket.socket],
        loop: asyncio.AbstractEventLoop,
        descriptors: Descriptors,
        errors: dict[tuple[str, ...], int],
    ) -> None:
        if not socks:
            raise ValueError("an acceptor needs at least one listening socket")
        self.socks = socks
        self.loop = loop
        self.descriptors = descriptors
        self.errors = errors  # (listener, reason) -> accept() failures
        self.name = ""
        self.handler: Handler | None = None
        self.reading = False
        self.closed = False
        self._retry: asyncio.TimerHandle | None = None
        self._log = LogThrottle()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.socks[0].getsockname()[:2]
        return str(host), int(port)

    def serve(self, name: str, handler: Handler) -> None:
        self.name = name
        self.handler = handler
        self.start()

    def start(self) -> None:
        if not self.reading and not self.closed and self.handler is not None:
            self.reading = True
            for sock in self.socks:
                self.loop.add_reader(sock.fileno(), self._accept, sock)

    def stop(self) -> None:
        if self.reading:
            self.reading = False
            for sock in self.socks:
                self.loop.remove_reader(sock.fileno())

    def close(self) -> None:
        self.stop()
        self.closed = True
        self.descriptors.waiting.discard(self)
        if self._retry is not None:
            self._retry.cancel()
        for sock in self.socks:
            sock.close()

    def _accept(self, sock: socket.socket) -> None:
        d = self.descriptors
        handler = self.handler
        assert handler is not None
        for _ in range(BATCH):
            if d.full(self.loop):
                self.stop()
                d.waiting.add(self)
                return
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _EXHAUSTED:
                    self._exhausted(exc)
                    return
                continue  # ECONNABORTED and the like: that one connection is gone
            d.clients += 1
            handler(conn)

    def _exhausted(self, exc: OSError) -> None:
        reason = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        self.errors[(self.name, reason)] += 1
        if self._log.due(self.loop.time()):
            log.error(
                "listener %s: accept failed (%s: %s); pausing accepts for %d ms, "
                "%d client connections open",
                self.name,
                reason,
                exc.strerror,
                EXHAUSTED_PAUSE * 1000,
                self.descriptors.clients,
            )
        self.stop()
        self._retry = self.loop.call_later(EXHAUSTED_PAUSE, self._resume)

    def _resume(self) -> None:
        self._retry = None
        self.start()


def bind(address: tuple[str, int], reuse_port: bool) -> socket.socket:
    host, port = address
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(4096)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
