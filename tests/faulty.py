"""A test backend that fails on command, and helpers shared by the traffic-control tests."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from conftest import LB, Client, Response, free_port, lb_yaml, ok_response, read_request, running_lb


class Faulty:
    """An HTTP/1.1 keep-alive backend whose `mode` says how it answers the next request:

    "ok" (200 with its name as body), a status ("500", "503"), "reset" (drop the connection
    once the request is read), "hang" (never answer, until the connection is dropped),
    "slow" (answer 200 after `delay`).
    `refuse()` stops listening, `resume()` listens again on the same port. `GET /healthz` answers
    `health` (a status) and is not counted in `requests`.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.mode = "ok"
        self.delay = 0.3
        self.health = 200
        self.requests = 0
        self.health_checks = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> Faulty:
        self._server = await asyncio.start_server(self._conn, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def refuse(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._writers):
            w.transport.abort()

    async def resume(self) -> None:
        await self.start()

    async def stop(self) -> None:
        await self.refuse()

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                req = await read_request(reader)
                if req is None:
                    return
                if req.path == "/healthz":
                    self.health_checks += 1
                    writer.write(ok_response(b"health\n", f"{self.health} X"))
                    continue
                self.requests += 1
                mode = self.mode
                if mode == "reset":
                    writer.transport.abort()
                    return
                if mode == "hang":
                    await reader.read()  # until lb (or refuse()) drops the connection
                    return
                if mode == "slow":
                    await asyncio.sleep(self.delay)
                status = mode if mode.isdigit() else "200"
                writer.write(ok_response(self.name.encode(), f"{status} X"))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()


@contextlib.asynccontextmanager
async def faulty(*names: str) -> AsyncIterator[list[Faulty]]:
    started = [await Faulty(n).start() for n in names]
    try:
        yield started
    finally:
        for b in started:
            await b.stop()


def config(
    backends: list[Any], *, port: int = 0, admin_port: int = 0, **kw: Any
) -> tuple[str, int, int]:
    """lb_yaml for these backends, with ports picked unless given (a reload keeps them)."""
    port = port or free_port()
    admin_port = admin_port or free_port()
    addresses = [b if isinstance(b, str) else b.address for b in backends]
    return lb_yaml(addresses, port=port, admin_port=admin_port, **kw), port, admin_port


@contextlib.asynccontextmanager
async def lb_for(tmp_path: Path, backends: list[Any], **kw: Any) -> AsyncIterator[LB]:
    text, _, _ = config(backends, **kw)
    async with running_lb(tmp_path, text) as lb:
        yield lb


async def reload(lb: LB, backends: list[Any], **kw: Any) -> None:
    text, _, _ = config(backends, port=lb.port, admin_port=lb.admin_port, **kw)
    lb.config_path.write_text(text)
    ok, errors = await lb.server.reload()
    assert ok, errors


async def get(lb: LB, path: str = "/", method: str = "GET", **kw: Any) -> Response:
    """One request on a fresh connection."""
    client = await Client.connect(lb.port)
    try:
        return await client.request(method, path, **kw)
    finally:
        client.close()


def backend_of(lb: LB, b: Faulty, service: str = "app") -> Any:
    return lb.server.runtime.services[service].backends[("127.0.0.1", b.port)]


async def eventually(check: Any, timeout: float = 3.0, step: float = 0.01) -> None:
    """Wait until `check()` is true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(step)


def reset(client: Client) -> None:
    """Drop a client connection with a TCP reset (a plain close is a half-close, after which
    lb still owes, and waits to send, the response)."""
    sock = client.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.writer.transport.abort()
