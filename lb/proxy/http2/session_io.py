"""What both HTTP/2 connections do with their libnghttp2 `Session` (lb._h2): `H2Connection`
toward a client (downstream.py) and `H2BackendConnection` toward a backend
(backend_connection.py) differ in their streams, not in how a session meets its transport.

Bytes read go to the session (`receive`); a connection error there ends the connection once
the session's answer (its GOAWAY) is written. Output waits in the session until the end of the
loop iteration (`kick` puts the connection in the outbox), so the frames of every stream that
answered in one iteration leave in one write; none is taken while the transport's buffer is
full (`write_paused`), and the transport is closed after the last of it once the session has
nothing more to say or the connection is `closing`. A stream already gone makes `reset` and
`consume` no-ops: its close tells whoever still cares.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from lb import _h2

from ..outbox import Outbox, Writer

log = logging.getLogger("lb.proxy")
H2Error = _h2.H2Error


class SessionIO(Writer):
    """The transport side of one HTTP/2 connection; `streams` maps stream ids to the side's
    stream objects."""

    __slots__ = ("_queued", "closing", "loop", "session", "streams", "write_paused")

    def __init__(self, outbox: Outbox, loop: asyncio.AbstractEventLoop) -> None:
        Writer.__init__(self, outbox)
        self.loop = loop
        self.session: Any = None  # the subclass makes it: the Session's delegate is the subclass
        self.streams: dict[int, Any] = {}
        self._queued = False
        self.closing = False
        self.write_paused = False

    # -- input ------------------------------------------------------------------------------------
    def receive(self, data: bytes, peer: object) -> None:
        """Bytes from the transport into the session; `peer` names the other end in the log."""
        if self.closing:
            return
        try:
            self.session.receive(data)
        except H2Error as exc:
            log.debug("HTTP/2 connection error from %s: %s", peer, exc)
            self.closing = True
        except Exception:
            log.error("internal error handling HTTP/2 input from %s", peer, exc_info=True)
            self.closing = True

    def close_session(self) -> None:
        """The transport is gone: every stream's close, so that their exchanges learn."""
        self.discard_output()
        try:
            self.session.close()
        except Exception:
            log.exception("internal error closing an HTTP/2 connection")
        self.streams.clear()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.kick()

    # -- output -----------------------------------------------------------------------------------
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
                data = self.take_output()
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

    def take_output(self) -> bytes:
        """What the session has to write now."""
        return self.session.output()

    # -- stream operations ------------------------------------------------------------------------
    def reset(self, sid: int, code: int) -> None:
        try:
            self.session.reset_stream(sid, code)
        except H2Error:
            pass
        self.kick()

    def consume(self, sid: int, n: int) -> None:
        """n body bytes of the stream were passed on: the peer may send that much more."""
        try:
            self.session.consume(sid, n)
        except H2Error:
            return
        self.kick()
