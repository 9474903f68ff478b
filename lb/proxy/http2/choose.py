"""Which protocol a new client connection speaks, on a listener that offers HTTP/2.

Over TLS, ALPN says (h2 or http/1.1); otherwise the first bytes do: the HTTP/2 client preface
means HTTP/2 by prior knowledge (h2c), anything else HTTP/1.1. Once decided, this Protocol
hands the transport, and the bytes it held, to the real one and is forgotten.
"""

import asyncio
from typing import Any

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class ProtocolChooser(asyncio.Protocol):
    __slots__ = ("_buf", "_timer", "listener", "transport")

    def __init__(self, listener: Any) -> None:
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self._buf = b""
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        ssl_object = transport.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        if alpn == "h2":
            self._hand_over(True)
        elif alpn == "http/1.1":
            self._hand_over(False)
        else:
            self._timer = self.listener.loop.call_later(
                self.listener.timeouts.client_head, transport.close
            )

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data
        self._buf = buf
        if buf[:24] == PREFACE[: len(buf)] and len(buf) < 24:
            return  # may still become the preface
        self._hand_over(buf.startswith(PREFACE))

    def eof_received(self) -> bool | None:
        return None  # nothing decided yet: close

    def connection_lost(self, exc: Exception | None) -> None:
        # Never handed over: the descriptor the acceptor counted is given back here.
        if self._timer is not None:
            self._timer.cancel()
        # Its client's address as connections spell it: a per-client count is given back too.
        peer = self.transport.get_extra_info("peername") if self.transport else None
        self.listener.gone(str(peer[0]).encode() if peer else b"")

    def _hand_over(self, h2: bool) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        t = self.transport
        assert t is not None
        listener = self.listener
        if (h2 and not listener.h2) or (not h2 and not listener.http1):
            t.close()
            return
        if h2:
            from .downstream import H2Connection

            proto: Any = H2Connection(listener)
        else:
            from ..downstream import ClientConnection

            proto = ClientConnection(listener)
        t.set_protocol(proto)
        proto.connection_made(t)
        buf, self._buf = self._buf, b""
        if buf and not t.is_closing():
            proto.data_received(buf)
