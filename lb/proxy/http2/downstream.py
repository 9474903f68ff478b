"""The client side over HTTP/2: one connection Protocol, one Downstream per stream.

`H2Connection` owns the transport and the libnghttp2 `Session` (lb._h2); each request stream
becomes an `H2Stream`, the side its `Exchange` answers through, exactly as it answers an
HTTP/1.1 connection. Output is the session's: whatever the streams submit is taken from it
once per loop iteration (the outbox), so the frames of many streams leave in one write. A new
stream's request head is validated and translated by request.py; it is routed here.

Flow control both ways is the binding's: received DATA is acknowledged (`consume`) once the
exchange has taken it, and not while it asks to pause; sent DATA queues per stream, and above
the binding's high water the exchange pauses its backend until `on_drained`.
"""

import asyncio
import logging
from time import monotonic
from typing import Any

from lb import _h2

from .. import grpc, responses
from ..downstream import _route_host
from ..exchange import Exchange
from ..headers import BadRequest, lower_name
from ..outbox import Writer
from ..side import Downstream
from ..timer import Deadline
from .request import Reset, is_grpc_request, request_head, split_target

log = logging.getLogger("lb.proxy")
H2Error = _h2.H2Error
# Not forwarded in a response: HTTP/1.1 framing and connection-specific fields (RFC 9113
# 8.2.2), content-length too (lb adds its own when the length is known).
_HOP_BY_HOP = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
     b"transfer-encoding", b"upgrade", b"content-length")
)  # fmt: skip


def _response_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    out = []
    for name, value in headers:
        low = lower_name(name)
        if low not in _HOP_BY_HOP:
            out.append((low, value))
    return out


class H2Stream(Downstream):
    """One request stream, the `client` of its exchange."""

    __slots__ = (
        "client_paused",
        "conn",
        "ex",
        "expected",
        "grpc",
        "grpc_status",
        "head",
        "held",
        "paused",
        "received",
        "req_ended",
        "sid",
        "trailers",
    )
    protocol = "HTTP/2.0"

    def __init__(self, conn: "H2Connection", sid: int) -> None:
        Downstream.__init__(self, conn.listener, conn.outbox)
        self.peer_ip = conn.peer_ip
        self.conn = conn
        self.sid = sid
        self.ex: Exchange | None = None
        self.expected: int | None = None  # content-length, when given
        self.received = 0
        self.held = 0  # body bytes passed on but not acknowledged: reading is paused
        self.paused = 0
        self.client_paused = False
        self.req_ended = False
        self.grpc = False
        self.grpc_status: str | None = None  # as sent to the client (the access log's)
        self.head: tuple[int, list[tuple[bytes, bytes]]] | None = None  # held for the end
        self.trailers: list[tuple[bytes, bytes]] = []

    # -- the response, from the exchange --------------------------------------------------------
    def send_interim(self, ex: Exchange, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        if status != 101:
            self._submit(status, _response_headers(headers), False)

    def send_head(
        self, ex: Exchange, status: int, headers: list[tuple[bytes, bytes]], length: int
    ) -> None:
        fields = _response_headers(headers)
        if length == 0:
            # No body: the head waits for the end, to go as one HEADERS frame with END_STREAM
            # (a gRPC trailers-only response must), or before the trailers.
            if not self.grpc:
                fields.append((b"content-length", b"0"))
            self.head = (status, fields)
            return
        if length > 0:
            fields.append((b"content-length", str(length).encode()))
        self._submit(status, fields, False)

    def send_body(self, chunk: bytes) -> None:
        if self.head is not None:
            head, self.head = self.head, None
            self._submit(head[0], head[1], False)
        try:
            ok = self.conn.session.send_data(self.sid, chunk)
        except H2Error:
            return  # the stream is gone; its close tells the exchange
        self.conn.kick()
        if not ok and not self.client_paused and self.ex is not None:
            self.client_paused = True
            self.ex.client_paused()

    def send_end(self, trailers: list[tuple[bytes, bytes]]) -> None:
        if self.grpc:
            self._note_status(trailers)
        if self.head is not None:
            head, self.head = self.head, None
            if not trailers:
                if self.grpc:
                    self._note_status(head[1])
                self._submit(head[0], head[1], True)
                return
            self._submit(head[0], head[1], False)
        s = self.conn.session
        try:
            if trailers:
                s.send_trailers(self.sid, _response_headers(trailers))
            else:
                s.send_data(self.sid, b"", True)
        except H2Error:
            return
        self.conn.kick()

    def send_reply(
        self,
        ex: Exchange,
        status: int,
        body: bytes | None,
        headers: list[tuple[bytes, bytes]] | None,
        content_type: bytes | None,
    ) -> int:
        return self.answer(status, body, headers, content_type, ex.method == b"HEAD")

    def answer(
        self,
        status: int,
        body: bytes | None,
        headers: list[tuple[bytes, bytes]] | None,
        content_type: bytes | None = responses.TEXT,
        head: bool = False,
    ) -> int:
        """An answer of lb's own, whole; gRPC-shaped for a gRPC request's errors."""
        if self.grpc and status >= 400 and body is None:
            fields = grpc.error_headers(status)
            self.grpc_status = fields[1][1].decode()
            self._submit(200, fields, True)
            return sum(len(n) + len(v) for n, v in fields)
        if body is None:
            body = responses.error_body(status)
        fields = _response_headers(headers) if headers else []
        if content_type is not None:
            fields.append((b"content-type", content_type))
        fields.append((b"content-length", str(len(body)).encode()))
        if head or not body:
            self._submit(status, fields, True)
            return 0
        if self._submit(status, fields, False):
            try:
                self.conn.session.send_data(self.sid, body, True)
            except H2Error:
                return 0
        return len(body)

    def _note_status(self, fields: list[tuple[bytes, bytes]]) -> None:
        for name, value in fields:
            if lower_name(name) == b"grpc-status":
                self.grpc_status = value.decode("latin-1")

    def _submit(self, status: int, fields: list[tuple[bytes, bytes]], end: bool) -> bool:
        try:
            self.conn.session.submit_response(self.sid, status, fields, end)
        except H2Error:
            return False
        self.conn.kick()
        return True

    # -- the exchange's requests ----------------------------------------------------------------
    def body_limit(self, ex: Exchange) -> int | None:
        route = ex.route
        if route is not None and route.max_body_size is not None:
            return route.max_body_size
        return self.listener.max_body_size

    def pause_reading(self, reason: int) -> None:
        self.paused |= reason

    def resume_reading(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and self.held:
                held, self.held = self.held, 0
                self.conn.consume(self.sid, held)

    def exchange_done(self, ex: Exchange, close: bool) -> None:
        if self.ex is not ex:
            return
        self.ex = None
        if not self.req_ended:
            # The answer came before the whole request: once the answer is out, tell the
            # client to stop sending (RFC 9113 8.1), rather than read what nobody wants.
            self.conn.reset_after_output(self.sid)
        self.conn.stream_done()

    def start_tunnel(self, ex: Exchange, conn: Any, rest: bytes) -> None:
        conn.abort()  # an HTTP/2 request never asks for an upgrade
        self.abort()

    def abort(self) -> None:
        ex, self.ex = self.ex, None
        self.conn.reset(self.sid, _h2.INTERNAL_ERROR)
        if ex is not None:
            ex.client_lost()
        self.conn.stream_done()

    # -- from the connection --------------------------------------------------------------------
    def body(self, data: bytes) -> None:
        ex = self.ex
        n = len(data)
        if ex is None:
            self.conn.consume(self.sid, n)  # answered already: drop it, keep the window open
            return
        self.received += n
        if self.expected is not None and self.received > self.expected:
            self._malformed()
            return
        ex.request_body(data)
        if self.paused:
            self.held += n
        else:
            self.conn.consume(self.sid, n)

    def end(self) -> None:
        self.req_ended = True
        ex = self.ex
        if ex is None:
            return
        if self.expected is not None and self.received != self.expected:
            self._malformed()
            return
        ex.request_complete(self.trailers)

    def closed(self, code: int) -> None:
        ex, self.ex = self.ex, None
        if ex is not None:
            ex.client_lost()

    def _malformed(self) -> None:
        ex, self.ex = self.ex, None
        self.conn.reset(self.sid, _h2.PROTOCOL_ERROR)
        if ex is not None:
            ex.client_lost()


class H2Connection(Writer):
    """An HTTP/2 client connection: the Protocol, the Session and its streams."""

    __slots__ = (
        "_got",
        "_queued",
        "_resets",
        "closing",
        "deadline",
        "draining",
        "goaway_sent",
        "listener",
        "loop",
        "peer_ip",
        "session",
        "streams",
        "write_paused",
    )

    def __init__(self, listener: Any) -> None:
        Writer.__init__(self, listener.runtime.outbox)
        self.listener = listener
        self.loop = listener.loop
        self.peer_ip = b"unknown"
        self.streams: dict[int, H2Stream] = {}
        self.session = _h2.Session(
            self, server=True, settings={"max_header_list_size": listener.max_header_size}
        )
        self._queued = False
        self._resets: list[int] = []
        self._got = 0  # bytes received while waiting for the preface; -1 after it
        self.closing = False
        self.draining = False
        self.goaway_sent = False
        self.write_paused = False
        self.deadline = Deadline(self.loop, self._on_timeout)

    # -- transport events -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer_ip = str(peer[0]).encode()
        self.listener.opened(self)
        self.deadline.set(self.listener.timeouts.client_head, "head")
        self.kick()  # our SETTINGS

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.deadline.cancel()
        self.listener.closed(self)
        self.discard_output()
        try:
            self.session.close()  # every stream's close: their exchanges learn the client left
        except Exception:
            log.exception("internal error closing an HTTP/2 connection")
        self.streams.clear()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self.session.receive(data)
        except H2Error as exc:
            log.debug("HTTP/2 connection error from %s: %s", self.peer_ip, exc)
            self.closing = True
        except Exception:
            log.error("internal error handling HTTP/2 input", exc_info=True)
            self.closing = True
        if self._got >= 0:
            self._got += len(data)
            if self._got >= 33:  # the preface and a frame header: the client speaks HTTP/2
                self._got = -1
                self.deadline.clear()
                self.stream_done()
        self.kick()

    def eof_received(self) -> bool | None:
        self.closing = True
        return None

    def pause_writing(self) -> None:
        # The socket's buffer is full: take no more output from the session (streams reach
        # their high water and pause their backends), and read nothing that needs an answer.
        self.write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
        self.kick()

    # -- output ---------------------------------------------------------------------------------
    def kick(self) -> None:
        """Output waits in the session: take it at the end of this loop iteration."""
        if not self._queued:
            self._queued = True
            self.outbox.add(self)

    def flush(self) -> None:
        self._queued = False
        s = self.session
        t = self.transport
        if not self.write_paused:
            try:
                data = s.output()
                if self._resets:
                    self._reset_sent()
                    data += s.output()
            except Exception:
                log.error("internal error sending HTTP/2 output", exc_info=True)
                self.closing = True
                data = s.output()
            if data:
                self._out.append(data)
                self._out_bytes += len(data)
            Writer.flush(self)
        closing = self.closing or s.is_closed()
        if closing and t is not None and not self.write_paused and not t.is_closing():
            t.close()  # after what is buffered, the GOAWAY included

    def _reset_sent(self) -> None:
        s = self.session
        waiting = []
        for sid in self._resets:
            if s.queued(sid):
                waiting.append(sid)  # its answer is not all framed yet
            else:
                s.reset_stream(sid, _h2.NO_ERROR)
        self._resets = waiting

    def reset_after_output(self, sid: int) -> None:
        self._resets.append(sid)
        self.kick()

    def reset(self, sid: int, code: int) -> None:
        try:
            self.session.reset_stream(sid, code)
        except H2Error:
            pass
        self.kick()

    def consume(self, sid: int, n: int) -> None:
        try:
            self.session.consume(sid, n)
        except H2Error:
            return
        self.kick()

    # -- session callbacks ----------------------------------------------------------------------
    def on_headers(self, sid: int, headers: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        st = H2Stream(self, sid)
        self.streams[sid] = st
        if self.deadline.kind == "idle":
            self.deadline.clear()
        try:
            self._start(st, headers, end_stream)
        except Reset:
            self.reset(sid, _h2.PROTOCOL_ERROR)
        except BadRequest as exc:
            self._refuse(st, exc.status)
        except Exception:
            log.error("internal error handling a request", exc_info=True)
            if st.ex is not None:
                ex, st.ex = st.ex, None
                ex.client_lost()
            self._refuse(st, 500)

    def _start(self, st: H2Stream, headers: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        method, path, info, regular = request_head(headers, end_stream)
        st.expected = info.content_length
        st.grpc = is_grpc_request(regular)
        target, spath, query = split_target(path)
        listener = self.listener
        route = listener.forced_route or listener.runtime.table.lookup(
            _route_host(info.host), method, spath, query, regular
        )
        ex = Exchange(st, method, target, spath, query, info, False, True, route, monotonic())
        st.ex = ex
        limit = st.body_limit(ex)
        if limit is not None and (info.content_length or 0) > limit:
            ex.req_done = False
            ex.reply_error(413)
            return
        ex.start()

    def _refuse(self, st: H2Stream, status: int) -> None:
        self.listener.runtime.record_refusal(st, status)
        st.answer(status, None, None)
        if not st.req_ended:
            self.reset_after_output(st.sid)

    def on_trailers(self, sid: int, headers: list[tuple[bytes, bytes]]) -> None:
        st = self.streams.get(sid)
        if st is not None:
            if any(name[:1] == b":" for name, _ in headers):
                st._malformed()
                return
            st.trailers = headers

    def on_data(self, sid: int, data: bytes) -> None:
        st = self.streams.get(sid)
        if st is None:
            self.session.consume(sid, len(data))
        else:
            st.body(data)

    def on_end_stream(self, sid: int) -> None:
        st = self.streams.get(sid)
        if st is not None:
            st.end()

    def on_stream_close(self, sid: int, code: int) -> None:
        st = self.streams.pop(sid, None)
        if sid in self._resets:
            self._resets.remove(sid)
        if st is not None:
            st.closed(code)
        self.stream_done()

    def on_goaway(self, code: int, last_stream_id: int) -> None:
        pass

    def on_drained(self, sid: int) -> None:
        st = self.streams.get(sid)
        if st is not None and st.client_paused:
            st.client_paused = False
            if st.ex is not None:
                st.ex.client_resumed()

    # -- lifecycle ------------------------------------------------------------------------------
    def stream_done(self) -> None:
        """A stream (or its exchange) ended: idle, or done draining, once none is left."""
        if self.streams or self.closing or self._got >= 0:
            return
        if self.draining:
            self._goaway()
            self.closing = True
            self.kick()
        else:
            self.deadline.set(self.listener.timeouts.keepalive_idle, "idle")

    def close_idle(self) -> bool:
        """Graceful shutdown (called repeatedly while draining): a shutdown notice first, the
        real GOAWAY on the next call, a round trip later; closed once no stream is left."""
        if self.closing:
            return True
        if not self.draining:
            self.draining = True
            try:
                self.session.shutdown_notice()
            except H2Error:
                self.closing = True
            self.kick()
            return False
        self._goaway()
        if not self.streams:
            self.closing = True
        self.kick()
        return self.closing

    def _goaway(self) -> None:
        if not self.goaway_sent:
            self.goaway_sent = True
            try:
                self.session.goaway(_h2.NO_ERROR)
            except H2Error:
                pass

    def abort(self) -> None:
        self.closing = True
        self.discard_output()
        if self.transport is not None:
            self.transport.abort()

    def _on_timeout(self, kind: str) -> None:
        self._goaway()
        self.closing = True
        self.kick()
