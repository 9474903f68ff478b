"""One request on an HTTP/2 backend connection: `H2UpstreamStream`, an exchange's attempt.

It is the exchange's `upstream` through the same `Upstream` interface as a pooled HTTP/1.1
connection: the exchange sends the request as messages (translated here into HTTP/2 fields,
hop-by-hop headers dropped), and gets the response back through `Exchange.response_*` as the
connection (backend_connection.py) hands this stream its frames.

A stream the backend did not process (RST_STREAM REFUSED_STREAM, above a GOAWAY's last stream
id, or refused locally) fails with `REFUSED_STREAM`, which the exchange moves elsewhere
whatever the method. A gRPC request's `grpc-timeout` bounds its wait for the response (the
route's timeouts still apply). A gRPC call answered trailers-only (HEADERS with END_STREAM:
nothing of it has reached the client) with a grpc-status its route retries is offered to
`retry_later.retry_grpc` before the head goes on.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from lb import _h2

from .. import failures as F
from .. import grpc
from ..headers import analyze_response, lower_name
from ..retry_later import retry_grpc
from ..side import Upstream
from ..timer import Deadline

if TYPE_CHECKING:
    from ..exchange import Exchange
    from .backend_connection import H2BackendConnection

H2Error = _h2.H2Error
# Never on an HTTP/2 wire (RFC 9113 8.2.2); host becomes :authority.
_DROP = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
     b"transfer-encoding", b"upgrade", b"host", b"content-length")
)  # fmt: skip
_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def grpc_timeout(value: bytes) -> float | None:
    """A grpc-timeout value ("100m", "5S", at most 8 digits) in seconds; None if malformed."""
    unit = _UNITS.get(value[-1:])
    digits = value[:-1]
    if unit is None or not digits.isdigit() or len(digits) > 8:
        return None
    return int(digits) * unit


class H2UpstreamStream(Upstream):
    """One request on an HTTP/2 backend connection: the `upstream` of its exchange."""

    __slots__ = (
        "conn",
        "ex",
        "grpc",
        "grpc_timer",
        "head_only",
        "held",
        "paused",
        "req_ended",
        "sid",
        "started",
        "trailers",
        "write_paused",
    )

    def __init__(self, conn: H2BackendConnection) -> None:
        Upstream.__init__(self, conn.outbox, Deadline(conn.loop, self._on_timeout))
        self.transport = conn.transport
        self.conn = conn
        self.reused = conn.used > 0
        self.ex: Any = None
        self.sid = 0
        self.grpc = False  # a gRPC request: a trailers-only answer may be retried
        self.head_only = False
        self.started = False  # the final response head is in
        self.req_ended = False  # END_STREAM sent (or the stream is gone)
        self.paused = False
        self.write_paused = False
        self.held = 0  # body bytes passed on while paused, acknowledged on resume
        self.trailers: list[tuple[bytes, bytes]] = []
        self.grpc_timer: asyncio.TimerHandle | None = None

    # -- the request, from the exchange ---------------------------------------------------------
    def send_request(
        self,
        exchange: Exchange,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        info: Any,
        authority: bytes,
        forwarded: list[tuple[bytes, bytes]],
        upgrade: bool,
    ) -> None:
        conn = self.conn
        self.ex = exchange
        self.head_only = method == b"HEAD"
        fields = [
            (b":method", method),
            (b":scheme", conn.scheme),
            (b":authority", authority),
            (b":path", target),
        ]
        is_grpc = False
        timeout = None
        for name, value in headers:
            low = lower_name(name)
            if low in _DROP:
                continue
            if low == b"content-type":
                is_grpc = grpc.is_grpc(value)
            elif low == b"grpc-timeout":
                timeout = grpc_timeout(value)
            fields.append((low, value))
        if is_grpc:
            self.grpc = True
            fields.append((b"te", b"trailers"))  # gRPC servers require it
        if info.content_length is not None:
            fields.append((b"content-length", str(info.content_length).encode()))
        fields += forwarded
        end = not (info.chunked or info.content_length)
        try:
            self.sid = conn.session.submit_request(fields, end)
        except H2Error:
            # No stream could be opened (a GOAWAY, or the peer's limit): not processed.
            self.closed = self.req_ended = True
            conn.loop.call_soon(self._refused, exchange)
            return
        self.req_ended = end
        conn.streams[self.sid] = self
        conn.kick()
        if is_grpc and timeout is not None:
            self.grpc_timer = conn.loop.call_later(timeout, self._grpc_expired)

    def send_body(self, chunk: bytes) -> None:
        if self.closed or self.req_ended:
            return
        try:
            ok = self.conn.session.send_data(self.sid, chunk)
        except H2Error:
            return  # the stream is gone; its close tells the exchange
        self.conn.kick()
        if not ok and not self.write_paused and self.ex is not None:
            self.write_paused = True
            self.ex.upstream_paused()

    def send_end(self, trailers: list[tuple[bytes, bytes]]) -> None:
        if self.closed or self.req_ended:
            return
        self.req_ended = True
        s = self.conn.session
        try:
            if trailers:
                s.send_trailers(self.sid, [(lower_name(n), v) for n, v in trailers])
            else:
                s.send_data(self.sid, b"", True)
        except H2Error:
            return
        self.conn.kick()

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False
        if self.held:
            held, self.held = self.held, 0
            self.conn.consume(self.sid, held)

    # -- lifecycle ------------------------------------------------------------------------------
    def release(self, max_idle: int) -> None:
        """The response is complete: the stream is done with (the connection stays)."""
        self._detach()
        if not self.req_ended:
            self.req_ended = True
            self.conn.reset(self.sid, _h2.CANCEL)

    def close(self) -> None:
        self._detach()
        if not self.req_ended or self.sid in self.conn.streams:
            self.req_ended = True
            if self.sid:
                self.conn.reset(self.sid, _h2.CANCEL)

    def abort(self) -> None:
        self.close()

    def _detach(self) -> None:
        self.ex = None
        self.closed = True
        self.deadline.cancel()
        if self.grpc_timer is not None:
            self.grpc_timer.cancel()
            self.grpc_timer = None
        if self.held:
            held, self.held = self.held, 0
            self.conn.consume(self.sid, held)

    def _on_timeout(self, kind: str) -> None:
        ex = self.ex
        if ex is not None:
            ex.upstream_timeout(self, kind)

    def _grpc_expired(self) -> None:
        self.grpc_timer = None
        ex = self.ex
        if ex is not None:
            ex.upstream_timeout(self, "idle" if self.started else "response-head")

    def _refused(self, ex: Exchange) -> None:
        if ex.upstream is self:
            self.ex = None
            ex.attempt_failed(F.REFUSED_STREAM)

    # -- from the session -----------------------------------------------------------------------
    def on_headers(self, headers: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        ex = self.ex
        if ex is None:
            return
        self.saw_bytes = True
        status = 0
        regular = []
        for item in headers:
            name = item[0]
            if name[:1] == b":":
                if name == b":status":
                    status = int(item[1])
            else:
                regular.append(item)
        if status < 200:
            if status >= 100:
                ex.response_interim(status, regular)
            return
        try:
            info = analyze_response(regular)
        except ValueError:
            ex.upstream_failed(self)
            return
        if end_stream and not self.head_only:
            info.content_length = 0  # a head alone (a gRPC trailers-only response)
            if self.grpc and status < 500:
                code = grpc.status_code(regular)
                if code > 0 and retry_grpc(ex, code):
                    return  # dropped unseen: the exchange tries again
        self.started = True
        self.deadline.set(ex.idle_timeout(), "idle")
        ex.response_head(self, status, info)

    def on_data(self, data: bytes) -> None:
        ex = self.ex
        n = len(data)
        if ex is None or not self.started:
            self.conn.consume(self.sid, n)
            return
        ex.response_body(data)
        if self.ex is ex:
            self.deadline.set(ex.idle_timeout(), "idle")
        if self.paused:
            self.held += n
        else:
            self.conn.consume(self.sid, n)

    def on_end_stream(self) -> None:
        ex = self.ex
        if ex is None:
            return
        if not self.started:
            ex.upstream_failed(self)  # END_STREAM without a final head
            return
        trailers, self.trailers = self.trailers, []
        ex.response_end(trailers)
        if self.ex is ex:
            ex.response_finished(self)

    def on_close(self, code: int) -> None:
        self.closed = self.req_ended = True
        ex = self.ex
        self._detach()
        self.held = 0
        if ex is None:
            return
        if code == _h2.REFUSED_STREAM and not self.started:
            ex.attempt_failed(F.REFUSED_STREAM)
        else:
            ex.upstream_lost(self)
