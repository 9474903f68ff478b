"""One HTTP/2 connection to a backend: `H2BackendConnection`, the Protocol, the client-side
`Session` (lb._h2) and its streams (backend_stream.py), on h2c by prior knowledge or TLS with
ALPN h2.

It routes the session's callbacks to the streams, takes the session's output once per loop
iteration (the outbox, through session_io.py as a client connection does), and ends itself:
idle once no stream is left (closed after the pool's idle timeout, at once when draining after
a GOAWAY or when its backend left). A lost connection loses every stream on it. Opening it,
and handing it requests, is the pool's job (upstream.py).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from lb import _h2

from ..outbox import Outbox
from ..timer import Deadline
from .backend_stream import H2UpstreamStream
from .session_io import SessionIO

if TYPE_CHECKING:
    from ..exchange import Exchange
    from .upstream import H2Pool

log = logging.getLogger("lb.proxy")
H2Error = _h2.H2Error
_SETTINGS = {"initial_window_size": 1 << 18, "connection_window_size": 1 << 22}


class H2BackendConnection(SessionIO):
    """One HTTP/2 connection to a backend: the Protocol, the Session and its streams."""

    __slots__ = (
        "_first",
        "deadline",
        "draining",
        "failed",
        "idle_timeout",
        "pending",
        "pool",
        "ready",
        "ready_future",
        "scheme",
        "task",
        "used",
    )

    def __init__(
        self, pool: H2Pool, loop: asyncio.AbstractEventLoop, outbox: Outbox, idle_timeout: float
    ) -> None:
        SessionIO.__init__(self, outbox, loop)
        self.pool = pool
        self.idle_timeout = idle_timeout
        self.session = _h2.Session(self, server=False, settings=_SETTINGS)
        self.pending: list[Exchange] = []  # waiting for the connection to be ready
        self.ready = False  # connected, and the peer's SETTINGS are in
        self.failed = False
        self.draining = False  # a GOAWAY came: no new streams
        self.used = 0  # streams started on it
        self.scheme = b"http"
        self.task: asyncio.Task[None] | None = None
        self.ready_future: asyncio.Future[None] = loop.create_future()
        self._first = b""  # the peer's first bytes until its SETTINGS frame is complete
        self.deadline = Deadline(loop, self._on_timeout)

    # -- streams --------------------------------------------------------------------------------
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
        self.closing = True
        self.pool.backend.open_conns -= 1
        self.deadline.cancel()
        self.leave_pool()
        if not self.ready_future.done():
            self.ready_future.set_exception(ConnectionError("closed before SETTINGS"))
        self.close_session()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.receive(data, self.pool.backend.name)
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
        self.maybe_idle()

    def on_goaway(self, code: int, last_stream_id: int) -> None:
        self.draining = True  # streams above last_stream_id close next, REFUSED_STREAM
        self.leave_pool()

    def on_drained(self, sid: int) -> None:
        st = self.streams.get(sid)
        if st is not None and st.write_paused:
            st.write_paused = False
            if st.ex is not None:
                st.ex.upstream_resumed()

    # -- lifecycle ------------------------------------------------------------------------------
    def maybe_idle(self) -> None:
        if self.streams or not self.ready or self.closing:
            return
        if self.draining or self.pool.backend.removed:
            self.close()
        else:
            self.deadline.set(self.idle_timeout, "pool-idle")

    def leave_pool(self) -> None:
        try:
            self.pool.conns.remove(self)
        except ValueError:
            pass

    def close(self) -> None:
        """GOAWAY, then closed once it is written; streams still open are lost."""
        if self.closing:
            return
        self.leave_pool()
        try:
            self.session.goaway(_h2.NO_ERROR)
        except H2Error:
            pass
        self.closing = True
        self.kick()

    def _on_timeout(self, kind: str) -> None:
        if not self.streams:
            self.close()
