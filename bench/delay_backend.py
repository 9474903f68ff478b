"""Keep-alive HTTP/1.1 backends that can be slowed on command, for bench/latency_pick_bench.py:

    python bench/delay_backend.py PORT [PORT ...]

One process serves every PORT on 127.0.0.1. `GET` (any path) answers 200 with the body
`ok PORT`, after the port's delay; `POST /__delay?ms=N` sets that port's delay to N ms and
answers at once. Request bodies are not expected (the bench sends none). Runs until killed.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any


class Backend(asyncio.Protocol):
    def __init__(self, port: int, delays: dict[int, float]) -> None:
        self.port = port
        self.delays = delays
        self.buf = b""
        self.transport: Any = None
        body = b"ok %d\n" % port
        self.answer = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%b" % (len(body), body)
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.writer: asyncio.Task[None] | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.writer = asyncio.get_running_loop().create_task(self.answers())

    def connection_lost(self, exc: Exception | None) -> None:
        if self.writer is not None:
            self.writer.cancel()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, _, self.buf = self.buf.partition(b"\r\n\r\n")
            self.queue.put_nowait(head)

    async def answers(self) -> None:
        # In order, as HTTP/1.1 requires of a pipelining client.
        while True:
            head = await self.queue.get()
            line = head.split(b"\r\n", 1)[0]
            if line.startswith(b"POST /__delay?ms="):
                ms = int(line.split(b"=", 1)[1].split(b" ", 1)[0])
                self.delays[self.port] = ms / 1000
                out = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
            else:
                delay = self.delays[self.port]
                if delay:
                    await asyncio.sleep(delay)
                out = self.answer
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(out)


async def serve(ports: list[int]) -> None:
    loop = asyncio.get_running_loop()
    delays = dict.fromkeys(ports, 0.0)
    servers = [
        await loop.create_server(
            lambda p=p: Backend(p, delays), "127.0.0.1", p, reuse_address=True, backlog=1024
        )
        for p in ports
    ]
    await asyncio.gather(*(s.serve_forever() for s in servers))


def main() -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve([int(p) for p in sys.argv[1:]]))
    else:
        uvloop.run(serve([int(p) for p in sys.argv[1:]]))


if __name__ == "__main__":
    main()
