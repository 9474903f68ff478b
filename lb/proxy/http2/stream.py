"""One HTTP/2 request stream as the side its exchange answers through (a `Downstream`).

The exchange hands the response over as messages; here they become the stream's frames in
the connection's session (`H2Connection`, downstream.py): the head (held when empty, so that
a bodyless answer is one HEADERS frame with END_STREAM), DATA under the binding's flow
control (above its high water the exchange pauses its backend until the stream drains),
trailers, and lb's own answers, gRPC-shaped for a gRPC request. The request body comes in the
other way (`body`, `end`) and is acknowledged to the client only as the exchange takes it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lb import _h2

from .. import grpc, responses
from ..exchange import Exchange
from ..headers import lower_name
from ..side import Downstream

H2Error = _h2.H2Error

if TYPE_CHECKING:
    from .downstream import H2Connection

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
        "head",
        "held",
        "paused",
        "received",
        "req_ended",
        "sid",
        "trailers",
    )
    protocol = "HTTP/2.0"

    def __init__(self, conn: H2Connection, sid: int) -> None:
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
        self.grpc = False  # grpc_status (Downstream's): as sent to the client
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
            size = 0
            for name, value in fields:
                size += len(name) + len(value)
            return size
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
