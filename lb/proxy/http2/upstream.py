"""The backend side over HTTP/2 (`services.NAME.protocol: h2`), on lb._h2.

`H2BackendConnection` is one connection to a backend (h2c by prior knowledge, or TLS with
ALPN h2): the Protocol, the client-side `Session` and its streams. Each attempt of an
exchange gets an `H2UpstreamStream`, its `upstream`, through the same `Upstream` interface as
a pooled HTTP/1.1 connection: the exchange sends the request as messages and gets the
response back through `Exchange.response_*`.

The pool is per backend (`Backend.h2`): a request takes a stream on a connection that has room
under the peer's SETTINGS_MAX_CONCURRENT_STREAMS; a new connection is opened only when all are
full. Until a new connection has the peer's SETTINGS, the requests that chose it wait on it
(`pending`); those beyond its real limit then go through the pool again.

A stream the backend did not process (RST_STREAM REFUSED_STREAM, above a GOAWAY's last stream
id, or refused locally) fails with `REFUSED_STREAM`, which the exchange moves elsewhere
whatever the method. A lost connection loses every stream on it. A gRPC request's
`grpc-timeout` bounds its wait for the response (the route's timeouts still apply).
"""

from __future__ import annotations

import asyncio
import errno
import logging
from typing import TYPE_CHECKING, Any

from lb import _h2

from .. import failures as F
from .. import grpc
from ..headers import analyze_response, lower_name
from ..outbox import Writer
from ..side import Upstream
from ..timer import Deadline

if TYPE_CHECKING:
    from ...balancer.backend import Backend
    from ..exchange import Exchange

log = logging.getLogger("lb.proxy")
H2Error = _h2.H2Error
DONE = 6  # exchange.DONE (a module constant there, not importable compiled)
_NO_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE})
# Never on an HTTP/2 wire (RFC 9113 8.2.2); host becomes :authority.
_DROP = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
     b"transfer-encoding", b"upgrade", b"host", b"content-length")
)  # fmt: skip
_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
_SETTINGS = {"initial_window_size": 1 << 18, "connection_window_size": 1 << 22}


def grpc_timeout(value: bytes) -> float | None:
    """A grpc-timeout value ("100m", "5S", at most 8 digits) in seconds; None if malformed."""
    unit = _UNITS.get(value[-1:])
    digits = value[:-1]
    if unit is None or not digits.isdigit() or len(digits) > 8:
        return None
    return int(digits) * unit


class H2Pool:
    """A backend's HTTP/2 connections, the ones still connecting included."""

    __slots__ = ("backend", "conns")

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.conns: list[H2BackendConnection] = []


def dispatch(ex: Exchange, b: Backend) -> None:
    """A stream on `b` for the exchange's attempt: on a connection with room, on one still
    connecting, or on a new one."""
    client = ex.client
    if getattr(client, "protocol", None) is None and _is_grpc(ex.info.forward):
        # gRPC needs HTTP/2 on both sides (trailers, streams): no blame on the backend.
        ex.backend = ex.last_backend = None
        ex.upstream_name = ""
        ex.service.release(b)
        ex.reply(505, b"gRPC needs HTTP/2 from the client\n")
        return
    pool = b.h2
    if pool is None:
        pool = b.h2 = H2Pool(b)
    for conn in pool.conns:
        if conn.ready:
            if conn.has_room():
                conn.start(ex)
                return
        elif not conn.failed and len(conn.pending) < conn.room_guess():
            conn.pending.append(ex)
            return
    svc = ex.service
    conn = H2BackendConnection(pool, client.loop, client.outbox, svc.config.pool.idle_timeout)
    pool.conns.append(conn)
    conn.pending.append(ex)
    task = client.loop.create_task(conn.open(svc, client.listener.runtime))
    conn.task = task


def _is_grpc(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if len(name) == 12 and lower_name(name) == b"content-type":
            return grpc.is_grpc(value)
    return False


class H2UpstreamStream(Upstream):
    """One request on an HTTP/2 backend connection: the `upstream` of its exchange."""

    __slots__ = (
        "conn",
        "ex",
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


class H2BackendConnection(Writer):
    """One HTTP/2 connection to a backend: the Protocol, the Session and its streams."""

    __slots__ = (
        "_first",
        "_queued",
        "closing",
        "deadline",
        "draining",
        "failed",
        "idle_timeout",
        "loop",
        "pending",
        "pool",
        "ready",
        "ready_future",
        "scheme",
        "session",
        "streams",
        "task",
        "used",
        "write_paused",
    )

    def __init__(
        self, pool: H2Pool, loop: asyncio.AbstractEventLoop, outbox: Any, idle_timeout: float
    ) -> None:
        Writer.__init__(self, outbox)
        self.pool = pool
        self.loop = loop
        self.idle_timeout = idle_timeout
        self.session = _h2.Session(self, server=False, settings=_SETTINGS)
        self.streams: dict[int, H2UpstreamStream] = {}
        self.pending: list[Exchange] = []  # waiting for the connection to be ready
        self.ready = False  # connected, and the peer's SETTINGS are in
        self.failed = False
        self.closing = False
        self.draining = False  # a GOAWAY came: no new streams
        self.write_paused = False
        self.used = 0  # streams started on it
        self.scheme = b"http"
        self.task: asyncio.Task[None] | None = None
        self.ready_future: asyncio.Future[None] = loop.create_future()
        self._first = b""  # the peer's first bytes until its SETTINGS frame is complete
        self._queued = False
        self.deadline = Deadline(loop, self._on_timeout)

    # -- opening --------------------------------------------------------------------------------
    async def open(self, svc: Any, runtime: Any) -> None:
        b = self.pool.backend
        cfg = svc.config
        tls = runtime.upstream_tls(svc, True)
        failure = None
        try:
            await asyncio.wait_for(self._connect(b, cfg, tls), cfg.timeouts.connect)
        except TimeoutError:
            failure = F.CONNECT_TIMEOUT
        except (OSError, asyncio.CancelledError, H2Error, ConnectionError) as exc:
            if isinstance(exc, OSError) and exc.errno in _NO_DESCRIPTORS:
                failure = F.NO_DESCRIPTORS
            else:
                failure = F.CONNECT_FAILURE
        if failure is not None:
            self._fail(failure)
            return
        self.ready = True
        self._hand_out()

    async def _connect(self, b: Backend, cfg: Any, tls: Any) -> None:
        server_hostname = None
        if tls is not None:
            self.scheme = b"https"
            server_hostname = (cfg.tls.sni if cfg.tls else None) or b.host
        await self.loop.create_connection(
            lambda: self, b.host, b.port, ssl=tls, server_hostname=server_hostname
        )
        if tls is not None:
            ssl_object = self.transport.get_extra_info("ssl_object")
            if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
                log.warning("backend %s did not agree to HTTP/2 by ALPN", b.name)
                raise ConnectionError("no ALPN h2")
        await self.ready_future

    def _fail(self, failure: F.Failure) -> None:
        self.failed = True
        if not self.ready_future.done():
            self.ready_future.cancel()
        self._leave_pool()
        if self.transport is not None:
            self.transport.abort()
        b = self.pool.backend
        pending, self.pending = self.pending, []
        for ex in pending:
            if ex.phase == DONE or ex.backend is not b:
                continue
            if failure is F.NO_DESCRIPTORS:
                ex.out_of_descriptors()
            else:
                ex.attempt_failed(failure)

    def _hand_out(self) -> None:
        """Ready: the requests that waited start here, up to the peer's limit; the rest go
        through the pool again."""
        b = self.pool.backend
        pending, self.pending = self.pending, []
        for ex in pending:
            if ex.phase == DONE or ex.backend is not b:
                continue
            try:
                if self.has_room():
                    self.start(ex)
                else:
                    dispatch(ex, b)
            except Exception:
                ex._internal_error()
        self._maybe_idle()

    def room_guess(self) -> int:
        return 100  # nghttp2's assumption until the peer's SETTINGS say

    def has_room(self) -> bool:
        s = self.session
        return (
            not self.closing
            and not self.draining
            and s.open_streams() < s.remote_max_concurrent_streams()
        )

    def start(self, ex: Exchange) -> None:
        st = H2UpstreamStream(self)
        self.used += 1
        if self.deadline.kind == "pool-idle":
            self.deadline.clear()
        ex.connected(st, self.pool.backend)

    # -- transport events -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.pool.backend.open_conns += 1
        self.kick()  # the preface and our SETTINGS

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closing:
            self.closing = True
        self.pool.backend.open_conns -= 1
        self.deadline.cancel()
        self.discard_output()
        self._leave_pool()
        if not self.ready_future.done():
            self.ready_future.set_exception(ConnectionError("closed before SETTINGS"))
        try:
            self.session.close()  # every stream's on_stream_close: their exchanges learn
        except Exception:
            log.exception("internal error closing an HTTP/2 backend connection")
        self.streams.clear()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self.session.receive(data)
        except H2Error as exc:
            log.debug("HTTP/2 connection error from backend %s: %s", self.pool.backend.name, exc)
            self.closing = True
        except Exception:
            log.error("internal error handling HTTP/2 backend input", exc_info=True)
            self.closing = True
        if not self.ready_future.done():
            first = self._first + data
            # The server's preface is a SETTINGS frame: ready once it is all in.
            if len(first) >= 9 and len(first) >= 9 + int.from_bytes(first[:3], "big"):
                self._first = b""
                self.ready_future.set_result(None)
            else:
                self._first = first
        self.kick()

    def eof_received(self) -> bool | None:
        return None

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.kick()

    # -- output ---------------------------------------------------------------------------------
    def kick(self) -> None:
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
            t.close()

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
        st = self.streams.get(sid)
        if st is not None:
            st.on_headers(headers, end_stream)

    def on_trailers(self, sid: int, headers: list[tuple[bytes, bytes]]) -> None:
        st = self.streams.get(sid)
        if st is not None:
            st.trailers = [h for h in headers if h[0][:1] != b":"]

    def on_data(self, sid: int, data: bytes) -> None:
        st = self.streams.get(sid)
        if st is None:
            self.session.consume(sid, len(data))
        else:
            st.on_data(data)

    def on_end_stream(self, sid: int) -> None:
        st = self.streams.get(sid)
        if st is not None:
            st.on_end_stream()

    def on_stream_close(self, sid: int, code: int) -> None:
        st = self.streams.pop(sid, None)
        if st is not None:
            st.on_close(code)
        self._maybe_idle()

    def on_goaway(self, code: int, last_stream_id: int) -> None:
        self.draining = True  # streams above last_stream_id close next, REFUSED_STREAM
        self._leave_pool()

    def on_drained(self, sid: int) -> None:
        st = self.streams.get(sid)
        if st is not None and st.write_paused:
            st.write_paused = False
            if st.ex is not None:
                st.ex.upstream_resumed()

    # -- lifecycle ------------------------------------------------------------------------------
    def _maybe_idle(self) -> None:
        if self.streams or not self.ready or self.closing:
            return
        if self.draining or self.pool.backend.removed:
            self.close()
        else:
            self.deadline.set(self.idle_timeout, "pool-idle")

    def _leave_pool(self) -> None:
        try:
            self.pool.conns.remove(self)
        except ValueError:
            pass

    def close(self) -> None:
        """GOAWAY, then closed once it is written; streams still open are lost."""
        if self.closing:
            return
        self._leave_pool()
        try:
            self.session.goaway(_h2.NO_ERROR)
        except H2Error:
            pass
        self.closing = True
        self.kick()

    def _on_timeout(self, kind: str) -> None:
        if not self.streams:
            self.close()


def close_all(backend: Backend) -> None:
    """Close a backend's HTTP/2 connections (it left, or lb stops)."""
    pool = backend.h2
    if pool is not None:
        for conn in list(pool.conns):
            conn.close()
