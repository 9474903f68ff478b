"""A two-way byte tunnel after a 101 Switching Protocols (WebSocket), with an idle timeout.

The client and backend connections keep their Protocol objects; each forwards raw bytes to
the other and pauses the other's reading when its own write buffer fills.
"""

from typing import Any

from .flow import PAUSE_UPSTREAM
from .timer import Deadline


class Tunnel:
    __slots__ = ("backend", "client", "deadline", "idle")

    def __init__(self, client: Any, backend: Any, idle: float) -> None:
        self.client = client
        self.backend = backend
        self.idle = idle
        backend.exchange = self  # backend bytes now arrive at on-data below
        backend.head_only = False
        backend.raw = True
        self.deadline = Deadline(client.loop, self._on_idle)
        self.deadline.set(idle, "tunnel-idle")
        client.listener.tunnels.add(self)

    # The backend connection calls these in place of an exchange's methods.
    def to_client(self, data: bytes) -> None:
        self.deadline.set(self.idle, "tunnel-idle")
        self.client.write(data)

    def to_backend(self, data: bytes) -> None:
        self.deadline.set(self.idle, "tunnel-idle")
        self.backend.write(data)

    def upstream_lost(self, conn: Any) -> None:
        self.client.tunnel = None
        self.close()

    def upstream_paused(self) -> None:
        self.client.pause_reading(PAUSE_UPSTREAM)

    def upstream_resumed(self) -> None:
        self.client.resume_reading(PAUSE_UPSTREAM)

    def upstream_timeout(self, conn: Any, kind: str) -> None:
        self.close()

    def pause_backend(self) -> None:
        t = self.backend.transport
        if t is not None:
            t.pause_reading()

    def resume_backend(self) -> None:
        t = self.backend.transport
        if t is not None and not t.is_closing():
            t.resume_reading()

    def _on_idle(self, kind: str) -> None:
        self.close()

    def close(self) -> None:
        self.deadline.cancel()
        self.client.listener.tunnels.discard(self)
        self.backend.exchange = None
        self.backend.close()
        self.client.tunnel = None
        self.client._close_after_write()
