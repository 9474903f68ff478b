"""What an exchange needs of the side its request came from: the downstream interface.

An HTTP/1.1 client connection (downstream.py) is one; an HTTP/2 stream is another. The
exchange hands each response over as messages (interim heads, the head, body chunks, the end
with its trailers, or an answer of lb's own, whole) and asks for flow control by reason
(flow.py); the framing of each message on the wire is the side's business alone.

Compiled, this is an extension type whose methods the exchange calls through a vtable; the
sides subclass it (Cython allows one base, hence Writer: the loop-iteration outbox every
side writes through, directly or through its connection).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .outbox import Outbox, Writer

if TYPE_CHECKING:
    from ..runtime import ListenerRuntime
    from .exchange import Exchange
    from .upstream import UpstreamConnection


class Downstream(Writer):
    __slots__ = ("listener", "loop", "peer_ip")

    def __init__(self, listener: ListenerRuntime, outbox: Outbox) -> None:
        Writer.__init__(self, outbox)
        self.listener = listener
        self.loop: asyncio.AbstractEventLoop = listener.loop
        self.peer_ip = b"unknown"

    # -- the response, as messages --------------------------------------------------------------
    def send_interim(self, ex: Exchange, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        raise NotImplementedError

    def send_head(
        self, ex: Exchange, status: int, headers: list[tuple[bytes, bytes]], length: int
    ) -> None:
        """The response head; `length` is the body's, -1 when unknown until its end."""
        raise NotImplementedError

    def send_body(self, chunk: bytes) -> None:
        raise NotImplementedError

    def send_end(self, trailers: list[tuple[bytes, bytes]]) -> None:
        raise NotImplementedError

    def send_reply(
        self,
        ex: Exchange,
        status: int,
        body: bytes | None,
        headers: list[tuple[bytes, bytes]] | None,
        content_type: bytes | None,
    ) -> int:
        """An answer of lb's own, whole; the bytes it took. `body` None: the canned page."""
        raise NotImplementedError

    # -- the exchange's requests of its side ----------------------------------------------------
    def body_limit(self, ex: Exchange) -> int | None:
        raise NotImplementedError

    def pause_reading(self, reason: int) -> None:
        raise NotImplementedError

    def resume_reading(self, reason: int) -> None:
        raise NotImplementedError

    def exchange_done(self, ex: Exchange, close: bool) -> None:
        """The exchange is over (its response handed over, or abandoned); `close`: the
        request was not read to its end, so what follows cannot be trusted."""
        raise NotImplementedError

    def start_tunnel(self, ex: Exchange, conn: UpstreamConnection, rest: bytes) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        """Cut the exchange off mid-response: nothing sensible can be sent any more."""
        raise NotImplementedError
