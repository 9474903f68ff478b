"""A transport-free harness for the data path: the real protocol and exchange classes, fed
bytes by the test, with fake transports and a fake clock (no sockets, no sleeping).

    h = Harness(config_text)
    client = h.client()                    # a ClientConnection on a fake transport
    backend = h.pooled("app")              # an idle pooled connection to app's first backend
    client.send(b"GET / HTTP/1.1\\r\\nhost: a\\r\\n\\r\\n")
    assert backend.received().startswith(b"GET / ")
    backend.send(ok_response(b"hi"))
    assert client.received().endswith(b"hi")
    h.advance(61)                          # time passes: due timers fire, nothing else runs

`FakeLoop` stands in for the event loop where the data path uses one: its clock only moves
with `advance`, `call_soon` callbacks (the outbox's end-of-iteration flush) run when the test
reads what was written, and timers run when `advance` passes them.
"""

from __future__ import annotations

import heapq
import itertools
import os
import tempfile
from collections.abc import Callable
from typing import Any

from lb.config import load
from lb.proxy.accept import Descriptors
from lb.proxy.downstream import ClientConnection
from lb.proxy.listener import ListenerRuntime
from lb.proxy.upstream import UpstreamConnection
from lb.runtime import Runtime


class FakeHandle:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    def __init__(self) -> None:
        self.now = 1000.0
        self._soon: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self._timers: list[tuple[float, int, FakeHandle, Callable[..., Any], tuple[Any, ...]]] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self.now

    def call_soon(self, cb: Callable[..., Any], *args: Any) -> FakeHandle:
        self._soon.append((cb, args))
        return FakeHandle()

    def call_at(self, when: float, cb: Callable[..., Any], *args: Any) -> FakeHandle:
        handle = FakeHandle()
        heapq.heappush(self._timers, (when, next(self._seq), handle, cb, args))
        return handle

    def call_later(self, delay: float, cb: Callable[..., Any], *args: Any) -> FakeHandle:
        return self.call_at(self.now + delay, cb, *args)

    def create_task(self, coro: Any) -> None:
        coro.close()
        raise AssertionError("the harness has no event loop for tasks: pool a connection first")

    def run_ready(self) -> None:
        for _ in range(1000):  # bounded: callbacks that keep scheduling more are a bug
            if not self._soon:
                return
            ready, self._soon = self._soon, []
            for cb, args in ready:
                cb(*args)
        raise AssertionError("call_soon callbacks never settle")

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        self.run_ready()
        while self._timers and self._timers[0][0] <= end:
            when, _, handle, cb, args = heapq.heappop(self._timers)
            self.now = max(self.now, when)
            if not handle.cancelled:
                cb(*args)
            self.run_ready()
        self.now = end


class FakeTransport:
    """What a protocol writes, and whether it closed or aborted."""

    def __init__(self, loop: FakeLoop, peer: tuple[str, int] = ("127.0.0.1", 5555)) -> None:
        self.loop = loop
        self.peer = peer
        self.out: list[bytes] = []
        self.closed = False
        self.aborted = False
        self.eof_written = False
        self.reading = True
        self.protocol: Any = None

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def get_extra_info(self, key: str) -> Any:
        return self.peer if key == "peername" else None

    def _lost(self) -> None:
        if self.protocol is not None:
            protocol, self.protocol = self.protocol, None
            self.loop.call_soon(protocol.connection_lost, None)

    def close(self) -> None:
        if not self.is_closing():
            self.closed = True
            self._lost()

    def abort(self) -> None:
        if not self.is_closing():
            self.aborted = True
            self._lost()


class Side:
    """One end of the data path as the test sees it: bytes in, bytes out."""

    def __init__(self, loop: FakeLoop, protocol: Any, transport: FakeTransport) -> None:
        self.loop = loop
        self.protocol = protocol
        self.transport = transport

    def send(self, data: bytes) -> None:
        self.protocol.data_received(data)
        self.loop.run_ready()

    def received(self) -> bytes:
        """Everything written to this side since the last call."""
        self.loop.run_ready()
        out = b"".join(self.transport.out)
        self.transport.out.clear()
        return out

    @property
    def closed(self) -> bool:
        self.loop.run_ready()
        return self.transport.is_closing()


class Harness:
    def __init__(self, config: str) -> None:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write(config)
        try:
            loaded = load(f.name)
        finally:
            os.unlink(f.name)
        self.loop = FakeLoop()
        loop: Any = self.loop
        self.runtime = Runtime(loaded, loop, Descriptors(1 << 20))
        self.listener = ListenerRuntime(self.runtime, loaded.config.listeners[0], loop)

    def client(self) -> Side:
        conn = ClientConnection(self.listener)
        transport = FakeTransport(self.loop)
        transport.protocol = conn
        self.runtime.descriptors.clients += 1  # as the acceptor counts it
        conn.connection_made(transport)
        return Side(self.loop, conn, transport)

    def pooled(self, service: str = "app") -> Side:
        """An idle keep-alive connection in the pool of the service's first backend."""
        backend = next(iter(self.runtime.services[service].backends.values()))
        conn = UpstreamConnection(backend, self.loop, self.runtime.outbox, 60.0)  # type: ignore[arg-type]
        transport = FakeTransport(self.loop, (backend.host, backend.port))
        transport.protocol = conn
        conn.connection_made(transport)
        conn.release(1024)
        return Side(self.loop, conn, transport)

    def advance(self, seconds: float) -> None:
        self.loop.advance(seconds)
