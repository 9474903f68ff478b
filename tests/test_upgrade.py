"""Zero-downtime upgrades (lb/upgrade.py): `lb run --upgrade-from` takes the listening sockets
over from the running lb, under load, ten times in a row, as real processes."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from conftest import Client, free_port, lb_yaml, serve_app
from procs import LbProcess

CONNECTIONS = 64
UPGRADES = 10


@contextlib.asynccontextmanager
async def app_backend(release: asyncio.Event) -> AsyncIterator[str]:
    async def plain(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="slow")

    async def ws(request: web.Request) -> web.StreamResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            await sock.send_str("echo " + msg.data)
        return sock

    app = web.Application()
    app.router.add_get("/", plain)
    app.router.add_get("/slow", slow)
    app.router.add_get("/ws", ws)
    async with serve_app(app) as address:
        yield address


class Load:
    """Keep-alive clients sending requests back to back; a `Connection: close` answer (what
    a draining lb sends) makes a client reconnect, as HTTP clients do."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ok = 0
        self.failed: list[str] = []
        self.refused = 0
        self.reconnects = 0
        self.stop = asyncio.Event()

    async def client(self) -> None:
        conn: Client | None = None
        while not self.stop.is_set():
            if conn is None:
                try:
                    conn = await Client.connect(self.port)
                except ConnectionRefusedError:
                    self.refused += 1
                    await asyncio.sleep(0.01)
                    continue
            try:
                resp = await conn.request("GET", "/")
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                self.failed.append(repr(exc))
                conn.close()
                conn = None
                continue
            if resp.status == 200 and resp.body == b"ok":
                self.ok += 1
            else:
                self.failed.append(f"{resp.status} {resp.body[:40]!r}")
            if resp.header("connection") == "close":
                conn.close()
                conn = None
                self.reconnects += 1
        if conn is not None:
            conn.close()


async def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("workers", [(), ("--workers", "2")], ids=["one-process", "workers"])
async def test_ten_upgrades_under_load_refuse_and_fail_nothing(
    tmp_path: Path, workers: tuple[str, ...]
) -> None:
    release = asyncio.Event()
    port, admin = free_port(), free_port()
    sock = str(tmp_path / "lb.sock")
    config = tmp_path / "lb.yaml"
    async with app_backend(release) as backend, aiohttp.ClientSession() as http:
        # The WebSocket and the slow request outlive ten upgrades: a drain long enough.
        drain = "    timeouts: {drain: 120s}\n"
        config.write_text(lb_yaml([backend], port=port, admin_port=admin, extra_listener=drain))
        procs = [LbProcess(config, "--upgrade-socket", sock, *workers)]
        load = Load(port)
        tasks: list[asyncio.Task[None]] = []
        try:
            serving = f"serving upgrades at {sock}\n"  # the supervisor's, with --workers
            await wait_for(lambda: serving in procs[0].output(), 20, "first lb")
            tasks = [asyncio.create_task(load.client()) for _ in range(CONNECTIONS)]
            # Started on the first process, finished there after the upgrades.
            ws = await http.ws_connect(f"http://127.0.0.1:{port}/ws")
            slow = asyncio.create_task(http.get(f"http://127.0.0.1:{port}/slow"))
            await asyncio.sleep(0.3)
            for i in range(UPGRADES):
                log = tmp_path / f"lb-{i}.yaml"  # LbProcess logs beside its config's name
                log.write_text(config.read_text())
                new = LbProcess(log, "--upgrade-from", sock, "--upgrade-socket", sock, *workers)
                await wait_for(lambda new=new: serving in new.output(), 20, f"upgrade {i}")
                procs.append(new)
                before = load.ok
                await wait_for(lambda before=before: load.ok > before + 50, 20, "load moved on")
            # The first process still carries what it had in flight.
            assert procs[0].proc.poll() is None
            await ws.send_str("after ten upgrades")
            assert (await ws.receive_str(timeout=5)) == "echo after ten upgrades"
            release.set()
            answer = await asyncio.wait_for(slow, 10)
            assert answer.status == 200 and await answer.text() == "slow"
            await ws.close()
            load.stop.set()
            await asyncio.gather(*tasks)
            for old in procs[:-1]:  # each drained and left on its own
                assert old.proc.wait(20) == 0, old.output()
            assert load.failed == [] and load.refused == 0
            assert load.ok > UPGRADES * 50 and load.reconnects >= CONNECTIONS
            async with http.get(f"http://127.0.0.1:{admin}/healthz") as r:
                assert r.status == 200  # the admin port moved along
        finally:
            load.stop.set()
            for task in tasks:
                task.cancel()
            for p in procs:
                p.stop()


async def test_an_upgrade_that_fails_changes_nothing(tmp_path: Path) -> None:
    """A successor whose config cannot serve (its admin port is taken) gives up before it
    says ready: the running lb keeps its sockets and keeps serving upgrades."""
    release = asyncio.Event()
    release.set()
    port, admin = free_port(), free_port()
    sock = str(tmp_path / "lb.sock")
    async with app_backend(release) as backend, aiohttp.ClientSession() as http:
        good = tmp_path / "lb.yaml"
        good.write_text(lb_yaml([backend], port=port, admin_port=admin))
        first = LbProcess(good, "--upgrade-socket", sock)
        try:
            await wait_for(lambda: "serving upgrades" in first.output(), 20, "first lb")
            # a second listener on a port someone else holds: the successor cannot start
            taken = socket.socket()
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            bad = tmp_path / "bad.yaml"
            line = f'    bind: "127.0.0.1:{port}"\n'
            other = f'  - name: other\n    bind: "127.0.0.1:{taken.getsockname()[1]}"\n'
            bad.write_text(good.read_text().replace(line, line + other))
            refused = LbProcess(bad, "--upgrade-from", sock)
            assert refused.proc.wait(20) != 0
            assert "took 2 listening sockets over" in refused.output()
            taken.close()
            nobody = LbProcess(good, "--upgrade-from", str(tmp_path / "nobody.sock"))
            assert nobody.proc.wait(20) == 1
            assert "no lb to upgrade from" in nobody.output()
            async with http.get(f"http://127.0.0.1:{port}/") as r:
                assert r.status == 200
            assert first.proc.poll() is None
            again = tmp_path / "again.yaml"
            again.write_text(good.read_text())
            second = LbProcess(again, "--upgrade-from", sock, "--upgrade-socket", sock)
            try:
                await wait_for(lambda: "serving upgrades" in second.output(), 20, "upgrade")
                assert first.proc.wait(20) == 0
            finally:
                second.stop()
        finally:
            first.stop()
