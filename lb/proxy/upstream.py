"""The HTTP/1.1 backend side: a keep-alive pool per backend, each connection writing the
requests an exchange forwards and handing it the responses as messages.

What the exchange sees of a response: `response_interim(status, headers)` for a 1xx, then
`response_head(conn, status, info)` (the headers to forward and the body's length, hop-by-hop
headers gone), `response_body(chunk)` per piece of body without its framing, and
`response_end(trailers)`; after the read in which it ended, `response_finished(conn)`. Bytes
on the wire (request line, chunked framing, Connection) are this module's business alone.

A connection goes back to the pool only when its last response was read to the end, the
request was fully written, and neither side asked to close; a connection the backend closes
while idle leaves the pool at once (connection_lost).
"""

import asyncio
import errno
from math import inf
from typing import TYPE_CHECKING, Any

import httptools

from ..balancer.backend import Backend
from . import failures as F
from .headers import (
    RequestInfo,
    add_lines,
    analyze_response,
    content_length_line,
    join_headers,
)
from .outbox import Outbox
from .side import Upstream
from .timer import Deadline

_NO_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE})

if TYPE_CHECKING:
    from .exchange import Exchange


class UpstreamConnection(Upstream):
    __slots__ = (
        "_headers",
        "backend",
        "chunked_request",
        "dirty",
        "done",
        "exchange",
        "head_only",
        "idle_timeout",
        "interim",
        "keep_alive",
        "loop",
        "parser",
        "raw",
        "started",
        "until_eof",
    )

    def __init__(
        self,
        backend: Backend,
        loop: asyncio.AbstractEventLoop,
        outbox: Outbox,
        idle_timeout: float,
    ) -> None:
        Upstream.__init__(self, outbox, Deadline(loop, self._on_timeout))
        self.backend = backend
        self.loop = loop
        self.idle_timeout = idle_timeout
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Any = None
        self.head_only = False  # the request was HEAD: the response has no body whatever it says
        self.raw = False  # tunnelling: bytes go straight to the client
        self.dirty = False  # the backend broke framing: close instead of pooling
        self.chunked_request = False  # the request body goes out in chunks
        self.interim = False  # a 1xx head is in: its end is not the response's
        self.started = False  # the final response head is in
        self.until_eof = False  # the response body ends when the backend closes
        self.keep_alive = True  # the response let the connection be reused
        self.done = False  # the response is complete
        self._headers: list[tuple[bytes, bytes]] = []

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
        if ex is None:
            try:
                self.backend.idle.remove(self)
            except ValueError:
                pass
            return
        self.exchange = None
        if self.raw:
            ex.upstream_lost(self)  # a Tunnel
        elif self.started and self.until_eof and not self.done:
            # A close-delimited body: the backend's close is the end of the response.
            self.done = True
            ex.response_end([])
            ex.response_finished(self)
        else:
            ex.upstream_lost(self)

    def data_received(self, data: bytes) -> None:
        if self.raw:
            tunnel = self.exchange
            if tunnel is not None:
                tunnel.to_client(data)
            return
        ex = self.exchange
        if ex is None:
            # Bytes on an idle connection: the backend is confused; never reuse it.
            self.close()
            return
        self.saw_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            ex.upstream_upgraded(self, data[upgrade.args[0] :])
            return
        except httptools.HttpParserError:
            if self.exchange is not None:
                self.exchange.upstream_failed(self)
            return
        if self.exchange is ex:
            if self.done:
                ex.response_finished(self)
            elif self.started:
                self.deadline.set(ex.idle_timeout(), "idle")

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
        if ex is None:
            return
        parser = self.parser
        status = parser.get_status_code()
        if status < 200 and status != 101:
            self.interim = True
            ex.response_interim(status, headers)
            return
        info = analyze_response(headers)
        self.started = True
        self.keep_alive = parser.should_keep_alive()
        self.deadline.deadline = inf  # the head is in; data_received re-arms idle per chunk
        self.until_eof = not (
            info.chunked or info.content_length is not None or self.head_only or status == 101
        ) and status not in (204, 304)
        ex.response_head(self, status, info)
        if self.head_only and self.exchange is ex:
            self.done = True
            ex.response_end([])

    def on_body(self, body: bytes) -> None:
        ex = self.exchange
        if ex is not None:
            if self.head_only:
                # A body after a HEAD response: drop it, and never reuse this connection.
                self.reused = False
                self.dirty = True
                return
            ex.response_body(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False  # a 1xx is a message of its own: the response goes on
            return
        ex = self.exchange
        if ex is not None and not self.head_only:
            headers = self._headers  # after a body: trailers of a chunked response
            self._headers = []
            self.done = True
            ex.response_end(headers)

    # -- the request, from the exchange ---------------------------------------------------------
    def send_request(
        self,
        exchange: "Exchange",
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        info: RequestInfo,
        authority: bytes,
        forwarded: list[tuple[bytes, bytes]],
        upgrade: bool,
    ) -> None:
        self.exchange = exchange
        self.head_only = method == b"HEAD"
        self.saw_bytes = False
        self.started = self.done = self.interim = self.until_eof = False
        self.keep_alive = True
        parts = [method, b" ", target, b" HTTP/1.1\r\n"]
        add_lines(parts, headers)
        parts += (b"host: ", authority, b"\r\n")
        add_lines(parts, forwarded)
        if upgrade:
            parts += (b"connection: upgrade\r\nupgrade: ", info.upgrade or b"", b"\r\n")
        self.chunked_request = info.chunked
        if info.chunked:
            parts.append(b"transfer-encoding: chunked\r\n\r\n")
        elif info.content_length is not None:
            parts.append(content_length_line(info.content_length))
            parts.append(b"\r\n")
        else:
            parts.append(b"\r\n")
        self.write(b"".join(parts))

    def send_body(self, chunk: bytes) -> None:
        self.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if self.chunked_request else chunk)

    def send_end(self, trailers: list[tuple[bytes, bytes]]) -> None:
        if self.chunked_request:
            self.write(b"0\r\n" + join_headers(trailers) + b"\r\n")

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    # -- lifecycle ------------------------------------------------------------------------------
    def release(self, max_idle: int) -> None:
        """Back to the pool, or closed when it cannot be reused or the pool is full."""
        self.exchange = None
        if self.head_only:
            # The parser still expects the body the headers announced; start afresh.
            self.parser = httptools.HttpResponseParser(self)
        if (
            self.closed
            or self.dirty
            or not self.keep_alive
            or len(self.backend.idle) >= max_idle
            or self.backend.removed
        ):
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
        self.exchange = None
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


async def open_for(ex: "Exchange", backend: Backend) -> None:
    """A new connection to `backend` for an exchange's attempt: handed to it once open
    (`connected`), or the failure reported the way the exchange's failures name it."""
    svc = ex.service
    cfg = svc.config
    client = ex.client
    loop = client.loop
    outbox = client.outbox
    idle = cfg.pool.idle_timeout
    tls = client.listener.runtime.upstream_tls(svc)
    try:
        _, conn = await asyncio.wait_for(
            loop.create_connection(
                lambda: UpstreamConnection(backend, loop, outbox, idle),
                backend.host,
                backend.port,
                ssl=tls,
                server_hostname=((cfg.tls.sni if cfg.tls else None) or backend.host)
                if tls
                else None,
            ),
            cfg.timeouts.connect,
        )
    except TimeoutError:
        ex.attempt_failed(F.CONNECT_TIMEOUT)
        return
    except (OSError, asyncio.CancelledError) as exc:
        if isinstance(exc, OSError) and exc.errno in _NO_DESCRIPTORS:
            ex.out_of_descriptors()  # lb's shortage, not the backend's fault
        else:
            ex.attempt_failed(F.CONNECT_FAILURE)
        return
    ex.connected(conn, backend)
