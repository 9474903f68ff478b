"""Backend connections: a keep-alive pool per backend and the response side of an exchange.

A connection goes back to the pool only when its last response was read to the end, the
request was fully written, and neither side asked to close; a connection the backend closes
while idle leaves the pool at once (connection_lost).
"""

import asyncio
import ssl
from math import inf
from typing import Any

import httptools

from ..balancer.backend import Backend
from .outbox import Outbox, Writer
from .timer import Deadline


class UpstreamConnection(Writer):
    __slots__ = (
        "_headers",
        "backend",
        "closed",
        "deadline",
        "dirty",
        "exchange",
        "head_only",
        "idle_timeout",
        "loop",
        "parser",
        "pending",
        "raw",
        "reused",
        "saw_bytes",
    )

    def __init__(
        self,
        backend: Backend,
        loop: asyncio.AbstractEventLoop,
        outbox: Outbox,
        idle_timeout: float,
    ) -> None:
        Writer.__init__(self, outbox)
        self.backend = backend
        self.loop = loop
        self.idle_timeout = idle_timeout
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Any = None
        self.closed = False
        self.reused = False
        self.head_only = False  # the request was HEAD: the response has no body whatever it says
        self.saw_bytes = False
        self.raw = False  # tunnelling: bytes go straight to the client
        self.dirty = False  # the backend broke framing: close instead of pooling
        self.pending: list[bytes] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self.deadline = Deadline(loop, self._on_timeout)

    # -- transport events -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.backend.open_conns += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            self.backend.open_conns -= 1
        self.deadline.cancel()
        ex = self.exchange
        if ex is not None:
            self.exchange = None
            ex.upstream_lost(self, exc)
        else:
            try:
                self.backend.idle.remove(self)
            except ValueError:
                pass

    def data_received(self, data: bytes) -> None:
        if self.exchange is None:
            # Bytes on an idle connection: the backend is confused; never reuse it.
            self.close()
            return
        if self.raw:
            self.exchange.to_client(data)  # a Tunnel
            return
        ex = self.exchange
        self.saw_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._flush(ex)
            ex.upstream_upgraded(self, data[upgrade.args[0] :])
            return
        except httptools.HttpParserError:
            if self.exchange is not None:
                self.exchange.upstream_failed(self)
            return
        pending = self.pending
        if pending:
            # One write per received chunk: head and body of a small response leave together.
            self.pending = []
            ex.client.write(b"".join(pending) if len(pending) > 1 else pending[0])
        if self.exchange is ex:
            if ex.response_done:
                ex.response_finished(self)
            elif ex.response_started:
                self.deadline.set(ex.idle_timeout(), "idle")

    def _flush(self, ex: Any) -> None:
        if self.pending:
            out = self.pending
            self.pending = []
            ex.write_client(b"".join(out) if len(out) > 1 else out[0])

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.upstream_paused()

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.upstream_resumed()

    # -- parser callbacks -----------------------------------------------------------------------
    # No on_message_begin/on_status: the list below is swapped out when a head completes (so
    # what follows a body are trailers), and lb sends the standard reason phrase.
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        headers = self._headers
        self._headers = []
        ex = self.exchange
        if ex is not None:
            parser = self.parser
            status = parser.get_status_code()
            ex.response_head(self, status, headers, parser.should_keep_alive())
            if self.head_only and status >= 200:
                ex.response_complete(self, [])

    def on_body(self, body: bytes) -> None:
        ex = self.exchange
        if ex is not None:
            if self.head_only:
                # A body after a HEAD response: drop it, and never reuse this connection.
                self.reused = False
                self.dirty = True
                return
            ex.resp_bytes += len(body)
            self.pending.append(b"%x\r\n%b\r\n" % (len(body), body) if ex.chunked_out else body)

    def on_message_complete(self) -> None:
        ex = self.exchange
        if ex is not None and not self.head_only:
            headers = self._headers  # after a body: trailers of a chunked response
            self._headers = []
            ex.response_complete(self, headers)

    # -- lifecycle ------------------------------------------------------------------------------
    def send(self, exchange: Any, data: bytes, head_only: bool) -> None:
        self.exchange = exchange
        self.head_only = head_only
        self.saw_bytes = False
        self.write(data)

    def release(self, max_idle: int) -> None:
        """Back to the pool, or closed when the pool is full."""
        self.exchange = None
        if self.head_only:
            # The parser still expects the body the headers announced; start afresh.
            self.parser = httptools.HttpResponseParser(self)
        if self.closed or self.dirty or len(self.backend.idle) >= max_idle or self.backend.removed:
            self.close()
            return
        self.reused = True
        self.backend.idle.append(self)
        self.deadline.set(self.idle_timeout, "pool-idle")

    def close(self) -> None:
        self.exchange = None
        if self.transport is not None and not self.transport.is_closing():
            self.flush()
            self.transport.close()
        if not self.closed:
            self.closed = True
            self.backend.open_conns -= 1
        self.deadline.cancel()
        try:
            self.backend.idle.remove(self)
        except ValueError:
            pass

    def abort(self) -> None:
        self.discard_output()
        if self.transport is not None:
            self.transport.abort()
        self.close()

    def _on_timeout(self, kind: str) -> None:
        ex = self.exchange
        if ex is None:
            self.close()  # idle in the pool too long
        else:
            ex.upstream_timeout(self, kind)


def take_idle(backend: Backend) -> UpstreamConnection | None:
    idle = backend.idle
    while idle:
        conn = idle.pop()
        if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
            conn.deadline.deadline = inf
            return conn
    return None


async def connect(
    backend: Backend,
    loop: asyncio.AbstractEventLoop,
    outbox: Outbox,
    idle_timeout: float,
    tls: ssl.SSLContext | None,
    sni: str | None,
) -> UpstreamConnection:
    _, proto = await loop.create_connection(
        lambda: UpstreamConnection(backend, loop, outbox, idle_timeout),
        backend.host,
        backend.port,
        ssl=tls,
        server_hostname=(sni or backend.host) if tls else None,
    )
    return proto
