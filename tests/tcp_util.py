"""Helpers for the tests of mode: tcp listeners: byte-level backends, configs, metrics."""

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

Handler = Callable[["TcpServer", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def echo(server: "TcpServer", reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """Echo every byte; pass the client's EOF on (half-close) once everything is echoed."""
    while data := await reader.read(256 * 1024):
        w.write(data)
        await w.drain()
    if w.can_write_eof():
        w.write_eof()


@dataclass
class TcpServer:
    """A real TCP (or TLS) server on 127.0.0.1 running `handler` per connection."""

    handler: Handler = echo
    tls: ssl.SSLContext | None = None
    port: int = 0
    accepted: int = 0
    open: int = 0
    received: list[bytes] = field(default_factory=list)  # for handlers that collect
    server: asyncio.base_events.Server | None = None
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def start(self) -> "TcpServer":
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", self.port, ssl=self.tls)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for w in self.writers:
                w.transport.abort()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        self.writers.append(writer)
        try:
            await self.handler(self, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, RuntimeError):
            pass  # RuntimeError: uvloop's word for a write after the test aborted it
        finally:
            self.open -= 1
            writer.close()


@contextlib.asynccontextmanager
async def servers(*handlers: Handler, tls: ssl.SSLContext | None = None) -> AsyncIterator[list]:
    started = [await TcpServer(h, tls).start() for h in handlers]
    try:
        yield started
    finally:
        for s in started:
            await s.stop()


def tagged(tag: bytes) -> Handler:
    """A backend that says who it is, then echoes."""

    async def handler(server: TcpServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(tag)
        await echo(server, r, w)

    return handler


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)


async def roundtrip(port: int, data: bytes = b"ping", prefix: int = 0) -> bytes:
    """Open a connection, send `data`, read the `prefix` bytes a tagged backend sends first
    plus the echo; returns the prefix."""
    r, w = await connect(port)
    try:
        w.write(data)
        got = await asyncio.wait_for(r.readexactly(prefix + len(data)), 5)
        assert got[prefix:] == data
        return got[:prefix]
    finally:
        w.close()


async def closed_by_peer(r: asyncio.StreamReader, timeout: float = 5.0) -> bool:
    """True once the peer has closed (EOF or reset) within `timeout`."""
    try:
        async with asyncio.timeout(timeout):
            while await r.read(65536):
                pass
    except (ConnectionError, ssl.SSLError):
        return True
    except TimeoutError:
        return False
    return True


async def scrape(admin_port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of lb's /metrics: (name, sorted labels) -> value."""
    url = f"http://127.0.0.1:{admin_port}/metrics"
    async with aiohttp.ClientSession() as s, s.get(url) as resp:
        text = await resp.text()
    out = {}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def sample(metrics: dict, name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


async def log_lines(path: Path, want: int, timeout: float = 3.0) -> list[dict]:
    """The access log's JSON lines once there are at least `want` (the writer is async)."""
    lines: list[dict] = []
    async with asyncio.timeout(timeout):
        while True:
            if path.exists():
                lines = [json.loads(x) for x in path.read_text().splitlines() if x]
                if len(lines) >= want:
                    return lines
            await asyncio.sleep(0.02)


async def until(check: Callable[[], bool], timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


def tcp_config(admin_port: int, listeners: str, services: str, extra: str = "") -> str:
    """A config from listener and service snippets; `running_lb` reports the first listener."""
    admin = f'admin:\n  bind: "127.0.0.1:{admin_port}"\n'
    return f"listeners:\n{listeners}{admin}services:\n{services}{extra}"


def listener(name: str, port: int, body: str = "    service: app\n") -> str:
    return f'  - name: {name}\n    bind: "127.0.0.1:{port}"\n    mode: tcp\n{body}'


def service(name: str, backends: list[str], body: str = "") -> str:
    items = ", ".join(f'"{b}"' for b in backends)
    return f"  {name}:\n    backends: [{items}]\n{body}"
