"""What an exchange needs of its two sides: the downstream and upstream interfaces.

Downstream, the side its request came from: an HTTP/1.1 client connection (downstream.py)
or an HTTP/2 stream (http2/downstream.py). The exchange hands each response over as
messages (interim heads, the head, body chunks, the end with its trailers, or an answer of
lb's own, whole) and asks for flow control by reason (flow.py). Upstream, the side it goes
out on: a pooled HTTP/1.1 connection (upstream.py) or an HTTP/2 stream to a backend; the
exchange hands it the request as messages (head, body chunks, end with trailers) and gets
the response back the same way (`Exchange.response_*`). The framing of each message on the
wire is the side's business alone.

Compiled, these are extension types whose methods the exchange calls through a vtable; the
sides subclass them (Cython allows one base, hence Writer: the loop-iteration outbox every
side writes through, directly or through its connection).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .outbox import Outbox, Writer
from .timer import Deadline

if TYPE_CHECKING:
    from .exchange import Exchange
    from .headers import RequestInfo
    from .listener import ListenerRuntime


class Downstream(Writer):
    """`grpc_status`: the grpc-status a gRPC call's answer carried to the client, as sent
    ("14"); None for anything else (HTTP/1.1 never sets it): the metrics and the access log
    read it."""

    __slots__ = ("grpc_status", "listener", "loop", "peer_ip")

    def __init__(self, listener: ListenerRuntime, outbox: Outbox) -> None:
        Writer.__init__(self, outbox)
        self.listener = listener
        self.loop: asyncio.AbstractEventLoop = listener.loop
        self.peer_ip = b"unknown"
        self.grpc_status: str | None = None

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

    def start_tunnel(self, ex: Exchange, conn: Upstream, rest: bytes) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        """Cut the exchange off mid-response: nothing sensible can be sent any more."""
        raise NotImplementedError


class Upstream(Writer):
    """`closed`: it can carry nothing more; `reused`: it carried an earlier request (a reset
    before any answer may then be the backend closing it idle); `saw_bytes`: the backend has
    answered something of this request; `deadline`: the timer of the phase it is in."""

    __slots__ = ("closed", "deadline", "reused", "saw_bytes")

    def __init__(self, outbox: Outbox, deadline: Deadline) -> None:
        Writer.__init__(self, outbox)
        self.closed = False
        self.reused = False
        self.saw_bytes = False
        self.deadline = deadline

    def send_request(
        self,
        exchange: Exchange,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        info: RequestInfo,
        authority: bytes,
        forwarded: list[tuple[bytes, bytes]],
        upgrade: bool,
    ) -> None:
        """The request head: `headers` as routing left them, then the ones lb adds."""
        raise NotImplementedError

    def send_body(self, chunk: bytes) -> None:
        raise NotImplementedError

    def send_end(self, trailers: list[tuple[bytes, bytes]]) -> None:
        raise NotImplementedError

    def pause_reading(self) -> None:
        raise NotImplementedError

    def resume_reading(self) -> None:
        raise NotImplementedError

    def release(self, max_idle: int) -> None:
        """The exchange is done with it, the response read to its end: reuse it or close it."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        """Abandon it: nothing more it says is wanted, nothing unsent will be sent."""
        raise NotImplementedError
