"""Shared test helpers: free ports, real backends, an in-process lb, raw-socket clients."""

import asyncio
import contextlib
import socket
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lb.config import load
from lb.server import Server

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
    uvloop = None  # type: ignore[assignment]


def pytest_asyncio_loop_factories(config: Any, item: Any) -> dict[str, Any]:
    # lb runs on uvloop in production; test on it too.
    return {"uvloop": uvloop.new_event_loop} if uvloop else {"asyncio": asyncio.new_event_loop}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Seen:
    """A request as a test backend received it."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n.lower() == name.lower()), None)


Handler = Callable[["RawBackend", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class RawBackend:
    """A real TCP backend; by default a keep-alive HTTP/1.1 server answering "ok <port>".

    `respond` may be replaced to shape answers; `handler` replaces the whole connection loop
    for misbehaving backends (resets, garbage, silence).
    """

    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0
    respond: Callable[[Seen], bytes | Awaitable[bytes]] | None = None
    handler: Handler | None = None
    server: asyncio.base_events.Server | None = None
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def start(self) -> "RawBackend":
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for w in self.writers:
                w.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            if self.handler is not None:
                await self.handler(self, reader, writer)
                return
            while True:
                req = await read_request(reader)
                if req is None:
                    return
                self.seen.append(req)
                if self.respond is None:
                    out = ok_response(f"ok {self.port}\n".encode())
                else:
                    out = self.respond(req)
                    if asyncio.iscoroutine(out):
                        out = await out
                writer.write(out)  # type: ignore[arg-type]
                await writer.drain()
                if req.header("connection") == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()


def ok_response(body: bytes, status: str = "200 OK", headers: str = "") -> bytes:
    return (f"HTTP/1.1 {status}\r\ncontent-length: {len(body)}\r\n{headers}\r\n").encode() + body


async def read_request(reader: asyncio.StreamReader) -> Seen | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = []
    for line in lines[1:]:
        if line:
            n, _, v = line.partition(":")
            headers.append((n.strip(), v.strip()))
    hd = {n.lower(): v for n, v in headers}
    body = b""
    if "content-length" in hd:
        body = await reader.readexactly(int(hd["content-length"]))
    elif hd.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                break
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    if hd.get("expect") == "100-continue":
        pass
    return Seen(method, path, headers, body)


@dataclass
class LB:
    server: Server
    config_path: Path
    port: int
    admin_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def write_config(self, text: str) -> None:
        self.config_path.write_text(textwrap.dedent(text))


def lb_yaml(
    backends: list[str] | None = None,
    *,
    port: int,
    admin_port: int,
    extra_service: str = "",
    extra_listener: str = "",
    routes: str | None = None,
    extra: str = "",
) -> str:
    """A config with one listener, one service `app` and a catch-all route, for tests."""
    lines = "\n".join(f'      - "{b}"' for b in (backends or []))
    backends_yaml = f"    backends:\n{lines}\n" if backends else "    backends: []\n"
    routes = (
        routes
        if routes is not None
        else textwrap.dedent("""\
        routes:
          - name: all
            match: {path: {prefix: /}}
            service: app
        """)
    )
    return (
        f'listeners:\n  - name: web\n    bind: "127.0.0.1:{port}"\n{extra_listener}'
        f'admin:\n  bind: "127.0.0.1:{admin_port}"\n'
        f"services:\n  app:\n{backends_yaml}{extra_service}"
        f"{routes}{extra}"
    )


@contextlib.asynccontextmanager
async def running_lb(tmp_path: Path, text: str, watch_interval: float = 1.0) -> AsyncIterator[LB]:
    path = tmp_path / "lb.yaml"
    path.write_text(text)
    server = Server(str(path), load(str(path)), watch_interval=watch_interval)
    await server.start()
    listener = next(iter(server.runtime.listeners.values()))
    port = listener.cfg.bind[1]
    try:
        yield LB(server, path, port, server.runtime.config.admin.bind[1])
    finally:
        await server.shutdown()


@contextlib.asynccontextmanager
async def serve_app(app: Any) -> AsyncIterator[str]:
    """An aiohttp `web.Application` served on a free loopback port: its "host:port"."""
    from aiohttp import web

    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def backends(n: int = 2, **kw: Any) -> AsyncIterator[list[RawBackend]]:
    started = [await RawBackend(**kw).start() for _ in range(n)]
    try:
        yield started
    finally:
        for b in started:
            await b.stop()


@contextlib.asynccontextmanager
async def proxy(
    tmp_path: Path, n: int = 2, **yaml_kw: Any
) -> AsyncIterator[tuple[LB, list[RawBackend]]]:
    """The common case: n default backends and lb in front of them."""
    async with (
        backends(n) as bes,
        running_lb(
            tmp_path,
            lb_yaml([b.address for b in bes], port=free_port(), admin_port=free_port(), **yaml_kw),
        ) as lb,
    ):
        yield lb, bes


async def exchange(
    port: int, data: bytes, *, timeout: float = 5.0, until_close: bool = False
) -> bytes:
    """Send raw bytes; read one response (or everything until the server closes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        if until_close:
            return await asyncio.wait_for(reader.read(), timeout)
        return await asyncio.wait_for(read_response(reader), timeout)
    finally:
        writer.close()


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    raw_head: bytes

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n.lower() == name.lower()), None)


async def read_response(reader: asyncio.StreamReader, head_only: bool = False) -> Response:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = []
    for line in lines[1:]:
        if line:
            n, _, v = line.partition(":")
            headers.append((n.strip(), v.strip()))
    hd = {n.lower(): v for n, v in headers}
    body = b""
    if head_only or status in (204, 304) or 100 <= status < 200:
        pass
    elif "content-length" in hd:
        body = await reader.readexactly(int(hd["content-length"]))
    elif hd.get("transfer-encoding") == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                trailer = b""
                while (line_b := await reader.readuntil(b"\r\n")) != b"\r\n":
                    trailer += line_b
                for tl in trailer.decode().split("\r\n"):
                    if tl:
                        n, _, v = tl.partition(":")
                        headers.append((n.strip(), v.strip()))
                break
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    else:
        body = await reader.read()
    return Response(status, headers, body, head)


class Client:
    """A keep-alive raw HTTP client on one connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> "Client":
        r, w = await asyncio.open_connection("127.0.0.1", port)
        return cls(r, w)

    async def request(
        self,
        method: str = "GET",
        path: str = "/",
        *,
        host: str = "test",
        headers: str = "",
        body: bytes | None = None,
        timeout: float = 5.0,
    ) -> Response:
        extra = f"content-length: {len(body)}\r\n" if body is not None else ""
        self.writer.write(
            f"{method} {path} HTTP/1.1\r\nhost: {host}\r\n{headers}{extra}\r\n".encode()
            + (body or b"")
        )
        await self.writer.drain()
        return await asyncio.wait_for(read_response(self.reader, method == "HEAD"), timeout)

    async def closed(self, timeout: float = 2.0) -> bool:
        try:
            return await asyncio.wait_for(self.reader.read(1), timeout) == b""
        except (ConnectionError, TimeoutError):
            return True

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
async def consul() -> AsyncIterator[Any]:
    """A Consul HTTP API test server (tests/consul_server.py) on a free loopback port."""
    from consul_server import ConsulTestServer

    srv = ConsulTestServer()
    await srv.start()
    yield srv
    await srv.stop()


def pytest_configure(config: Any) -> None:
    config.addinivalue_line(
        "markers", "soak: soak and fault scenarios (LB_SOAK=long, `make soak`, for the long form)"
    )
