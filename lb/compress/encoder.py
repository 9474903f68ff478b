"""One response's compression, between its exchange and the client side: `body` and `end`
take the backend's chunks and end in place of `Downstream.send_body` / `send_end`, and hand
the compressed chunks on to them. The framing stays the side's business (chunked for
HTTP/1.1, DATA frames for HTTP/2).

A chunk of at least OFF_LOOP bytes is compressed in a worker thread (the codecs release the
GIL), so that a large body never stalls the loop: while it is, the exchange stops reading
its backend (`Exchange.hold_upstream`), what the current read still delivers waits here in
order, and the end waits behind it. A response whose backend finished meanwhile is settled
by `Exchange.delivered` once its last bytes are out. The client leaving meanwhile drops it.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from ..proxy.exchange import DONE
from ..proxy.flow import HOLD_ENCODER

if TYPE_CHECKING:
    from ..proxy.exchange import Exchange
    from .codecs import Stream

log = logging.getLogger("lb.compress")
# A chunk this large costs 0.1 ms (zstd 3) to 2 ms (gzip 6 on source text) of CPU at the
# default levels (bench/compress_bench.py): compressed in a thread instead, where it does not
# hold up the loop's other connections. Smaller ones cost less than the hand-off to a thread.
OFF_LOOP = 64 * 1024
THREADS = 2
_executor: ThreadPoolExecutor | None = None


def executor() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(THREADS, thread_name_prefix="lb-compress")
    return _executor


class Encoder:
    __slots__ = (
        "_busy", "_counts", "_deliver", "_ending", "_ex", "_key_in", "_key_out", "_queue",
        "_stream",
    )  # fmt: skip

    def __init__(
        self,
        ex: Exchange,
        stream: Stream,
        counts: dict[tuple[str, ...], int],
        key_in: tuple[str, ...],
        key_out: tuple[str, ...],
    ) -> None:
        self._ex = ex
        self._stream = stream
        self._counts = counts  # lb_compress_bytes_total, by (route, codec, direction)
        self._key_in = key_in
        self._key_out = key_out
        self._busy = False  # a chunk is being compressed off the loop
        self._queue: list[bytes] = []  # chunks that arrived meanwhile, in order
        self._ending: list[tuple[bytes, bytes]] | None = None  # the end's trailers, if waiting
        self._deliver = False  # the exchange waits for delivered()

    def body(self, chunk: bytes) -> None:
        self._counts[self._key_in] += len(chunk)
        if self._busy:
            self._queue.append(chunk)
        elif len(chunk) >= OFF_LOOP:
            self._off_loop(chunk)
        else:
            self._emit(self._stream.step(chunk))

    def end(self, trailers: list[tuple[bytes, bytes]]) -> None:
        if self._busy:
            self._ending = trailers
        else:
            self._end(trailers)

    def waiting(self) -> bool:
        """Whether output is still being made off the loop; if so, the exchange is told
        through `delivered()` once it is all handed to the client side."""
        if self._busy:
            self._deliver = True
        return self._busy

    def _end(self, trailers: list[tuple[bytes, bytes]]) -> None:
        self._emit(self._stream.finish())
        self._ex.client.send_end(trailers)

    def _emit(self, out: bytes) -> None:
        if out:  # an empty chunk would end a chunked HTTP/1.1 body
            n = len(out)
            self._counts[self._key_out] += n
            ex = self._ex
            ex.resp_bytes += n
            ex.client.send_body(out)

    def _off_loop(self, data: bytes) -> None:
        self._busy = True
        ex = self._ex
        ex.hold_upstream(HOLD_ENCODER)
        future = ex.client.loop.run_in_executor(executor(), self._stream.step, data)
        future.add_done_callback(self._stepped)

    def _stepped(self, future: Future[bytes]) -> None:
        self._busy = False
        ex = self._ex
        if ex.phase == DONE:
            return  # the client went away meanwhile: nobody to send it to
        try:
            out = future.result()
        except Exception:
            log.exception("compressing a response failed")
            ex.client.abort()
            return
        self._emit(out)
        if self._queue:
            data = b"".join(self._queue)
            self._queue = []
            if len(data) >= OFF_LOOP:
                self._off_loop(data)
                return
            self._emit(self._stream.step(data))
        if self._ending is not None:
            self._end(self._ending)
        ex.release_upstream(HOLD_ENCODER)
        if self._deliver:
            ex.delivered()
