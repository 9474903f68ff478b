"""The client side over HTTP/2: the connection Protocol (its streams: stream.py).

`H2Connection` owns the transport and the libnghttp2 `Session` (lb._h2); each request stream
becomes an `H2Stream`, the side its `Exchange` answers through, exactly as it answers an
HTTP/1.1 connection. Output is the session's: whatever the streams submit is taken from it
once per loop iteration (the outbox; session_io.py, shared with the backend side), so the
frames of many streams leave in one write. A new
stream's request head is validated and translated by request.py; it is routed here.

Flow control both ways is the binding's: received DATA is acknowledged (`consume`) once the
exchange has taken it, and not while it asks to pause; sent DATA queues per stream, and above
the binding's high water the exchange pauses its backend until `on_drained`.

The client's limits are the listener's `http2:` (config/listener_model.py `Http2Settings`):
the SETTINGS and flood guards go to the Session; the timers are here. `deadline` is the
connection's one timer for the preface (`client_head`), for idleness (`idle_timeout`: no open
stream) and for the final GOAWAY of a drain that `max_requests_per_connection` started;
`pinger` (only with `ping_interval`) sends a PING once the client sent nothing for that long.
The binding does not report PING ACKs, so any bytes from the client after the PING count as
its answer (the ACK is such bytes; anything else proves it alive as well); none within
`ping_timeout`: GOAWAY and closed.
"""

import asyncio
import logging
from time import monotonic
from typing import Any

from lb import _h2

from ...edge.mtls import peer_description, with_client_cert
from ..downstream import _route_host
from ..exchange import Exchange
from ..headers import BadRequest
from ..timer import Deadline
from .request import Reset, request_head
from .session_io import SessionIO
from .stream import H2Stream

log = logging.getLogger("lb.proxy")
H2Error = _h2.H2Error
# Between the shutdown notice and the final GOAWAY when max_requests_per_connection is reached
# and streams are still open: a round trip, generously (RFC 9113 6.8); the final one goes at
# once when the last stream ends first.
_NOTICE_RTT = 1.0


class H2Connection(SessionIO):
    """An HTTP/2 client connection: the Protocol, the Session and its streams."""

    __slots__ = (
        "_got",
        "_resets",
        "client_cert",
        "deadline",
        "draining",
        "goaway_sent",
        "listener",
        "max_requests",
        "peer_ip",
        "ping_interval",
        "ping_timeout",
        "pinger",
        "requests",
    )

    def __init__(self, listener: Any) -> None:
        SessionIO.__init__(self, listener.runtime.outbox, listener.loop)
        self.listener = listener
        self.peer_ip = b"unknown"
        self.client_cert: bytes | None = None  # mTLS: what the listener forwards about it
        self.session = _h2.Session(self, server=True, settings=listener.h2_settings)
        h2 = listener.http2
        self.max_requests = h2.max_requests_per_connection  # 0: unlimited
        self.requests = 0  # streams the client opened
        self.ping_interval = h2.ping_interval or 0.0
        self.ping_timeout = h2.ping_timeout
        self.pinger = Deadline(self.loop, self._on_ping) if self.ping_interval else None
        self._resets: list[int] = []
        self._got = 0  # bytes received while waiting for the preface; -1 after it
        self.draining = False
        self.goaway_sent = False
        self.deadline = Deadline(self.loop, self._on_timeout)

    # -- transport events -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer_ip = str(peer[0]).encode()
        if self.listener.client_cert_header is not None:
            self.client_cert = peer_description(transport)
        self.listener.opened(self)
        self.deadline.set(self.listener.timeouts.client_head, "head")
        self.kick()  # our SETTINGS

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.deadline.cancel()
        if self.pinger is not None:
            self.pinger.cancel()
        self.listener.closed(self)
        self.close_session()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.receive(data, self.peer_ip)
        if self._got >= 0:
            self._got += len(data)
            if self._got >= 33:  # the preface and a frame header: the client speaks HTTP/2
                self._got = -1
                self.deadline.clear()
                self.stream_done()
        if self.pinger is not None and self._got < 0 and not self.closing:
            self.pinger.set(self.ping_interval, "ping")  # alive: the next PING moves later
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
    def take_output(self) -> bytes:
        s = self.session
        data = s.output()
        if self._resets:
            self._reset_sent()
            data += s.output()
        return data

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

    # -- session callbacks ----------------------------------------------------------------------
    def on_headers(self, sid: int, headers: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        st = H2Stream(self, sid)
        self.streams[sid] = st
        if self.deadline.kind == "idle":
            self.deadline.clear()
        self.requests += 1
        if self.requests == self.max_requests:
            self._last_request()
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
        cert_header = self.listener.client_cert_header
        if cert_header is not None:  # mTLS: routed and forwarded like the client's headers
            headers = with_client_cert(headers, cert_header, self.client_cert)
        head = request_head(headers, end_stream)
        info = head.info
        st.expected = info.content_length
        st.grpc = head.grpc
        listener = self.listener
        tracer = listener.runtime.tracer
        if tracer is not None:  # W3C trace context (lb/tracing), as for HTTP/1.1
            tracer.begin(info)
        route = listener.forced_route or listener.runtime.table.lookup(
            _route_host(info.host), head.method, head.path, head.query, head.regular
        )
        ex = Exchange(
            st,
            head.method,
            head.target,
            head.path,
            head.query,
            info,
            False,
            True,
            route,
            monotonic(),
        )
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
            idle = self.listener.h2_idle  # idle_timeout, by default timeouts.keepalive_idle
            if idle > 0:
                self.deadline.set(idle, "idle")

    def _last_request(self) -> None:
        """max_requests_per_connection reached, with this stream: the shutdown notice now, the
        final GOAWAY (this stream's id, or higher for streams already on their way) once the
        streams are done or a round trip later; the streams it admits finish."""
        if self.draining or self.closing:
            return
        self.draining = True
        try:
            self.session.shutdown_notice()
        except H2Error:
            self.closing = True
        self.deadline.set(_NOTICE_RTT, "goaway")
        self.kick()

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
        if kind == "goaway" and self.streams:
            self.kick()  # the final GOAWAY; the streams it admitted finish first
            return
        self.closing = True
        self.kick()

    def _on_ping(self, kind: str) -> None:
        pinger = self.pinger
        if self.closing or pinger is None:
            if kind == "kill" and self.transport is not None:
                self.abort()  # the GOAWAY could not even be written
            return
        if kind == "ping":
            try:
                self.session.ping()
            except H2Error:
                return
            pinger.set(self.ping_timeout, "ack")
            self.kick()
            return
        log.debug("HTTP/2 client %s did not answer a PING: closed", self.peer_ip)
        self._goaway()
        self.closing = True
        pinger.set(self.ping_timeout, "kill")
        self.kick()
