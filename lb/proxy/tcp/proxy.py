"""One client connection of a tcp listener and its backend connection, spliced both ways.

Phases: PREAMBLE (reading what decides where to go: a PROXY header from a trusted proxy, a
TLS ClientHello for passthrough; bounded by the listener's `client_head` timeout), CONNECTING
(dial.py; the client is not read meanwhile, so what it sends waits in the kernel), SPLICING,
CLOSED. Most connections skip PREAMBLE: a plain tcp listener dials as soon as it accepts, so
protocols where the server speaks first work.

Splicing: each side writes what the other reads. When one side's transport stops taking
writes (its buffer is over the high-water mark), the other side stops being read until it
drains, so memory stays bounded whatever the speeds (as in tunnel.py). An EOF from one side is
passed on as a half-close (`write_eof`), so request/response protocols that signal the end of
a request by shutting down their write side work; both EOFs end the connection normally. No
bytes either way for the listener's `timeouts.idle` aborts both sides.

`reason` says why it ended, once: the first cause wins. When both sides are closed the
connection is counted and logged (Runtime.tcp_observers) and leaves its listener.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, cast

from ...balancer.backend import Backend
from ...balancer.service import Service
from ..timer import Deadline
from . import proxy_protocol, sni
from .dial import dial

if TYPE_CHECKING:
    from .listener import TcpListenerRuntime

PREAMBLE, CONNECTING, SPLICING, CLOSED = range(4)
EARLY_LIMIT = 64 * 1024  # backend bytes held before the connection is handed over

Address = tuple[str, int]


class ClientSide(asyncio.Protocol):
    __slots__ = ("conn", "eof", "lost", "peer_paused", "transport")

    def __init__(self, conn: TcpConnection) -> None:
        self.conn = conn
        self.transport: asyncio.Transport | None = None
        self.eof = False
        self.lost = False
        self.peer_paused = False  # not read while the backend's buffer is full

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = t = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.conn.client_made(t)

    def data_received(self, data: bytes) -> None:
        self.conn.from_client(data)

    def eof_received(self) -> bool:
        return self.conn.client_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.conn.client_lost(exc)

    def pause_writing(self) -> None:
        self.conn.pause(self.conn.upstream)

    def resume_writing(self) -> None:
        self.conn.resume(self.conn.upstream)


class BackendSide(asyncio.Protocol):
    """Until `attached` (the dial has handed it over), what arrives is kept in `early`: a
    server that speaks first may do so before the dial's coroutine resumes."""

    __slots__ = ("attached", "conn", "early", "eof", "lost", "peer_paused", "transport")

    def __init__(self, conn: TcpConnection) -> None:
        self.conn = conn
        self.transport: asyncio.Transport | None = None
        self.attached = False
        self.early = bytearray()
        self.eof = False
        self.lost = False
        self.peer_paused = False  # not read while the client's buffer is full

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.attached:
            self.conn.from_backend(data)
            return
        self.early += data
        if len(self.early) > EARLY_LIMIT and self.transport is not None:
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.eof = True
        return self.conn.backend_eof() if self.attached else True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.attached:
            self.conn.backend_lost(exc)

    def pause_writing(self) -> None:
        self.conn.pause(self.conn.client)

    def resume_writing(self) -> None:
        self.conn.resume(self.conn.client)


class TcpConnection:
    """The pair, its counts, and why it ended (read by the access log: accesslog.py)."""

    def __init__(self, listener: TcpListenerRuntime) -> None:
        self.listener = listener
        self.loop = listener.loop
        self.client = ClientSide(self)
        self.upstream: BackendSide | None = None
        self.phase = PREAMBLE
        self.peer: Address = ("unknown", 0)
        self.local: Address = ("unknown", 0)
        self.source: Address = self.peer  # the client: the PROXY header's, else the peer
        self.destination: Address = self.local
        self.sni: str | None = None
        self.service: Service | None = None
        self.backend: Backend | None = None
        self.attempts = 0
        self.bytes_in = 0  # from the client
        self.bytes_out = 0  # to the client
        self.t0 = time.monotonic()
        self.started = time.time()
        self.connect_time: float | None = None
        self.reason = ""
        self.pending = bytearray()  # client bytes read before the backend connection is up
        self.expect_proxy = False  # a PROXY header must come first (trusted peer)
        self.sniff = False  # an untrusted peer: refuse it if it sends a PROXY header anyway
        self.task: asyncio.Task[None] | None = None
        self.deadline = Deadline(self.loop, self._expired)
        self.idle = listener.timeouts.idle
        counters = listener.runtime.counters
        self._bytes = counters["tcp_bytes"]
        self._in_key = (listener.name, "in")
        self._out_key = (listener.name, "out")
        self._finished = False

    # -- the client side ------------------------------------------------------------------------
    def client_made(self, transport: asyncio.Transport) -> None:
        listener = self.listener
        listener.opened(self)
        self.peer = self.source = _address(transport.get_extra_info("peername"))
        self.local = self.destination = _address(transport.get_extra_info("sockname"))
        if listener.proxy_protocol:
            if listener.trusted(self.peer[0]):
                self.expect_proxy = True
            else:
                self.sniff = True
        if self.expect_proxy or listener.passthrough:
            self.deadline.set(listener.timeouts.client_head, "client-head")
        else:
            self._dispatch()

    def from_client(self, data: bytes) -> None:
        if self.phase == SPLICING:
            self.deadline.set(self.idle, "idle")
            if self.sniff:
                self._sniff(data)
                return
            self.bytes_in += len(data)
            self._bytes[self._in_key] += len(data)
            upstream = self.upstream
            assert upstream is not None and upstream.transport is not None
            if not upstream.lost:
                upstream.transport.write(data)
            return
        self.pending += data
        if self.phase == PREAMBLE:
            self._preamble()

    def _preamble(self) -> None:
        listener = self.listener
        if self.sniff:  # passthrough, untrusted peer: a PROXY header is refused as such
            seen = proxy_protocol.looks_like(self.pending)
            if seen is None:
                return
            if seen:
                self.end("proxy-protocol")
                return
            self.sniff = False
        if self.expect_proxy:
            try:
                header, used = proxy_protocol.parse(self.pending)
            except proxy_protocol.ProxyProtocolError:
                self.end("proxy-protocol")
                return
            if header is None:
                return
            del self.pending[:used]
            self.expect_proxy = False
            if header.source is not None and header.destination is not None:
                self.source, self.destination = header.source, header.destination
        if listener.passthrough:
            try:
                hello = sni.parse(self.pending)
            except sni.BadHello:
                self.end("bad-hello")
                return
            if hello is None:
                return
            self.sni = hello.server_name
        self._dispatch()

    def _dispatch(self) -> None:
        """Where to go is decided: the listener's service now (a reload changes it for
        connections from then on), and a backend of it."""
        listener = self.listener
        name = listener.service_for(self.sni) if listener.passthrough else listener.service
        svc = listener.runtime.services.get(name) if name is not None else None
        if svc is None:
            self.end("no-service")
            return
        self.service = svc
        self.phase = CONNECTING
        self.deadline.cancel()
        client = self.client.transport
        assert client is not None
        client.pause_reading()
        self.task = self.loop.create_task(dial(self, svc))
        self.task.add_done_callback(self._dialled)

    def _sniff(self, data: bytes) -> None:
        """An untrusted peer's first bytes: held while they could still begin a PROXY header
        (at most 12), refused if they do, forwarded as they are if not."""
        self.pending += data
        seen = proxy_protocol.looks_like(self.pending)
        if seen is None:
            return
        if seen:
            self.end("proxy-protocol")
            return
        self.sniff = False
        data, self.pending = bytes(self.pending), bytearray()
        self.from_client(data)

    def client_eof(self) -> bool:
        self.client.eof = True
        if self.phase == SPLICING:
            upstream = self.upstream
            assert upstream is not None and upstream.transport is not None
            if self.sniff and self.pending:  # a few bytes that were only the start of a protocol
                self.sniff = False
                data, self.pending = bytes(self.pending), bytearray()
                self.from_client(data)
            if upstream.eof:
                self._close("done")
            elif upstream.transport.can_write_eof():
                upstream.transport.write_eof()
            else:
                self._close("client-closed")
            return True
        if self.phase == CONNECTING:
            return True  # passed on once connected
        self.end("client-closed")  # before saying where to go
        return False

    def client_lost(self, exc: Exception | None) -> None:
        if not self.reason:
            self.reason = "client-reset" if exc is not None else "client-closed"
        # The idle deadline stays armed: a backend that stops reading cannot hold the close
        # below (which flushes) up for longer than that.
        self.phase = CLOSED
        if self.task is not None and not self.task.done():
            self.task.cancel()
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None and not upstream.lost:
            upstream.transport.close()  # what the client sent last still goes out
        self._maybe_finished()

    # -- the backend side -----------------------------------------------------------------------
    def backend_side(self) -> BackendSide:
        return BackendSide(self)

    def connected(self, svc: Service, b: Backend, side: BackendSide, took: float) -> None:
        """From dial(): the backend connection is up; from here the pair owns the backend's
        slot and count (`backend_lost` gives them back)."""
        self.service, self.backend, self.upstream = svc, b, side
        self.connect_time = took
        side.attached = True
        listener = self.listener
        runtime = listener.runtime
        label = runtime.tcp_labels.label(
            svc.name, b.name, runtime.config.metrics.max_backends_per_service
        )
        runtime.counters["tcp_connections"][(listener.name, svc.name, label)] += 1
        t = side.transport
        assert t is not None
        if self.phase == CLOSED:  # the client left while the dial finished
            if side.lost:
                self.backend_lost(None)
            else:
                t.close()
            return
        self.phase = SPLICING
        self.deadline.set(self.idle, "idle")
        if side.early:  # a server that spoke first (and may have closed already)
            data = bytes(side.early)
            side.early.clear()
            self.from_backend(data)
            if not side.eof and not side.lost:
                t.resume_reading()
        if side.lost:
            self.backend_lost(None)
            return
        version = svc.config.proxy_protocol
        if version is not None:
            t.write(proxy_protocol.encode(version, self.source, self.destination))
        if self.pending:
            data, self.pending = bytes(self.pending), bytearray()
            self.from_client(data)
        if self.client.eof:
            self.client_eof()
        if side.eof and self.phase == SPLICING:
            self.backend_eof()
        client = self.client.transport
        if self.phase == SPLICING and client is not None and not self.client.peer_paused:
            client.resume_reading()

    def from_backend(self, data: bytes) -> None:
        self.deadline.set(self.idle, "idle")
        self.bytes_out += len(data)
        self._bytes[self._out_key] += len(data)
        client = self.client.transport
        assert client is not None
        if not self.client.lost:
            client.write(data)

    def backend_eof(self) -> bool:
        client = self.client
        assert client.transport is not None
        if client.lost:
            return True
        if client.eof:
            self._close("done")
        elif client.transport.can_write_eof():
            client.transport.write_eof()
        else:
            self._close("backend-closed")
        return True

    def backend_lost(self, exc: Exception | None) -> None:
        upstream = self.upstream
        assert upstream is not None
        if not self.reason:
            self.reason = "backend-reset" if exc is not None else "backend-closed"
        self.phase = CLOSED
        b, svc = self.backend, self.service
        if b is not None and svc is not None:
            b.open_conns -= 1
            svc.release(b)
        client = self.client.transport
        if client is not None and not self.client.lost:
            client.close()  # flushes what the backend sent last
        self._maybe_finished()

    # -- back-pressure ----------------------------------------------------------------------------
    def pause(self, side: ClientSide | BackendSide | None) -> None:
        """The other side's buffer is full: stop reading `side` until it drains."""
        if side is None or side.transport is None or side.eof or side.lost:
            return
        side.peer_paused = True
        side.transport.pause_reading()

    def resume(self, side: ClientSide | BackendSide | None) -> None:
        if side is None or not side.peer_paused:
            return
        side.peer_paused = False
        t = side.transport
        if t is not None and not side.eof and not t.is_closing() and self.phase == SPLICING:
            t.resume_reading()

    # -- ending ---------------------------------------------------------------------------------
    def end(self, reason: str) -> None:
        """Close the client: a refusal or a failure, before (or instead of) splicing."""
        if not self.reason:
            self.reason = reason
        self.phase = CLOSED
        if self.upstream is None:  # nothing was written to the client: the close is at once
            self.deadline.cancel()
        t = self.client.transport
        if t is not None and not t.is_closing():
            t.close()

    def _close(self, reason: str) -> None:
        """Both directions are finished (or cannot be half-closed): close both, flushing."""
        if not self.reason:
            self.reason = reason
        for side in (self.client, self.upstream):
            if side is not None and side.transport is not None and not side.lost:
                side.transport.close()

    def abort(self, reason: str = "shutdown") -> None:
        """Cut both sides now: a peer that stopped reading cannot hold a close up."""
        if not self.reason:
            self.reason = reason
        if self.task is not None and not self.task.done():
            self.task.cancel()
        for side in (self.client, self.upstream):
            if side is not None and side.transport is not None and not side.lost:
                side.transport.abort()

    def close_idle(self) -> bool:
        """Shutdown's drain: a connection still saying where it goes is closed; one with a
        backend (or getting one) is left alone until the drain is over."""
        if self.phase == PREAMBLE:
            self.end("shutdown")
            return True
        return False

    def _expired(self, kind: str) -> None:
        if kind == "client-head":
            self.end("client-head-timeout")
        else:
            self.abort("idle-timeout")

    def _dialled(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.end("internal-error")  # a bug in dial(): the client must not hang on it
        self._maybe_finished()

    def _maybe_finished(self) -> None:
        """Count and log the connection once both sides are closed and no dial is running."""
        if self._finished or not self.client.lost:
            return
        if self.upstream is not None and not self.upstream.lost:
            return
        if self.task is not None and not self.task.done():
            return
        self._finished = True
        self.deadline.cancel()
        listener = self.listener
        runtime = listener.runtime
        runtime.counters["tcp_terminations"][(listener.name, self.reason or "done")] += 1
        for obs in runtime.tcp_observers:
            obs.record_tcp(self)
        listener.closed(self)


def _address(info: object) -> Address:
    if isinstance(info, tuple) and len(info) >= 2:
        return str(info[0]), int(info[1])
    return "unknown", 0
