"""Zero-downtime upgrades (lb/upgrade.py): `lb run --upgrade-from` takes the listening sockets
over from the running lb, under load, ten times in a row, as real processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from conftest import Client, free_port, lb_yaml, serve_app
from procs import LbProcess

from lb.upgrade import UpgradeError, take_over

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
    a draining lb sends) makes a client reconnect, as HTTP clients do. A `fresh` client opens
    a new connection for each request."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ok = 0
        self.failed: list[str] = []  # resets included
        self.refused = 0
        self.reconnects = 0
        self.fresh = 0  # connections a fresh client opened and got its answer on
        self.stop = asyncio.Event()

    async def client(self, fresh: bool = False) -> None:
        conn: Client | None = None
        headers = "connection: close\r\n" if fresh else ""
        while not self.stop.is_set():
            if conn is None:
                try:
                    conn = await Client.connect(self.port)
                except ConnectionRefusedError:
                    self.refused += 1
                    await asyncio.sleep(0.01)
                    continue
            try:
                resp = await conn.request("GET", "/", headers=headers)
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                self.failed.append(repr(exc))
                conn.close()
                conn = None
                continue
            if resp.status == 200 and resp.body == b"ok":
                self.ok += 1
            else:
                self.failed.append(f"{resp.status} {resp.body[:40]!r}")
            if fresh:
                self.fresh += 1
            elif resp.header("connection") == "close":
                self.reconnects += 1
            if fresh or resp.header("connection") == "close":
                conn.close()
                conn = None
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
        # The WebSocket and the slow request outlive ten upgrades: a drain, a response-head
        # and an idle timeout long enough.
        drain = "    timeouts: {drain: 180s}\n"
        waits = "    timeouts: {response_head: 180s, idle: 180s}\n"
        config.write_text(
            lb_yaml(
                [backend], port=port, admin_port=admin, extra_listener=drain, extra_service=waits
            )
        )
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
    """A successor whose config cannot serve (a port is taken), or that cannot reach every
    lb it would succeed, gives up before it says ready: the running lb keeps its sockets and
    keeps serving upgrades."""
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
            # A worker succeeding two lbs lets go of the first when the second is not there.
            abandoned = first.output().count("upgrade abandoned, still serving")
            with pytest.raises(UpgradeError, match="no lb to upgrade from"):
                await take_over([sock, str(tmp_path / "nobody.sock")])
            await wait_for(
                lambda: first.output().count("upgrade abandoned, still serving") > abandoned,
                10,
                "the first lb saw the successor go",
            )
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


def listening_sockets(port: int) -> set[str]:
    """The inodes of the sockets listening on `port` (/proc/net/tcp: state 0A)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                found.add(fields[9])
    return found


def sockets_of(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # an fd closed meanwhile
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    return inodes


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except OSError:
        return True


async def test_fewer_workers_then_more_refuse_and_reset_nothing(tmp_path: Path) -> None:
    """`--workers 3` to `--workers 2`: new worker 0 takes old worker 2's listening socket as
    well as old worker 0's, so none closes; back to `--workers 3`: the new worker 2 opens its
    own. Keep-alive clients and fresh connections throughout see nothing refused or reset."""
    release = asyncio.Event()
    release.set()
    port, admin = free_port(), free_port()
    sock = str(tmp_path / "lb.sock")
    config = tmp_path / "lb.yaml"
    async with app_backend(release) as backend, aiohttp.ClientSession() as http:

        async def worker_pids() -> list[int]:
            # A new connection: a kept-alive one would still reach the old supervisor.
            url = f"http://127.0.0.1:{admin}/api/status"
            async with http.get(url, headers={"Connection": "close"}) as r:
                assert r.status == 200
                return [w["pid"] for w in (await r.json())["workers"]]

        config.write_text(lb_yaml([backend], port=port, admin_port=admin))
        procs = [LbProcess(config, "--upgrade-socket", sock, "--workers", "3")]
        load = Load(port)
        tasks: list[asyncio.Task[None]] = []
        try:
            serving = f"serving upgrades at {sock}\n"
            await wait_for(lambda: serving in procs[0].output(), 20, "first tree")
            trees = [await worker_pids()]
            assert len(listening_sockets(port)) == 3  # one per worker
            tasks = [asyncio.create_task(load.client()) for _ in range(CONNECTIONS)]
            tasks += [asyncio.create_task(load.client(fresh=True)) for _ in range(4)]
            await asyncio.sleep(0.3)
            for workers in ("2", "3"):
                log = tmp_path / f"lb-{workers}.yaml"  # LbProcess logs beside its config's name
                log.write_text(config.read_text())
                new = LbProcess(
                    log, "--upgrade-from", sock, "--upgrade-socket", sock, "--workers", workers
                )
                await wait_for(lambda new=new: serving in new.output(), 20, f"to {workers}")
                procs.append(new)
                trees.append(await worker_pids())
                assert len(trees[-1]) == int(workers)
                before, opened = load.ok, load.fresh
                await wait_for(
                    lambda b=before, o=opened: load.ok > b + 200 and load.fresh > o + 20,
                    20,
                    "load moved on",
                )
            for old in procs[:-1]:  # each tree drained and left on its own
                assert await asyncio.to_thread(old.proc.wait, 20) == 0, old.output()
            assert all(gone(pid) for tree in trees[:-1] for pid in tree)
            before = load.ok
            await wait_for(lambda: load.ok > before + 200, 20, "the last tree serves")
            load.stop.set()
            await asyncio.gather(*tasks)
            assert load.failed == [] and load.refused == 0
            assert load.reconnects >= CONNECTIONS and load.fresh > 40
            # The three sockets of the first tree, and the one the last tree's worker 2
            # opened: all held by the last tree, worker 0 holding old worker 2's too.
            listening = listening_sockets(port)
            held = [sockets_of(pid) & listening for pid in trees[-1]]
            assert [len(h) for h in held] == [2, 1, 1]
            assert set().union(*held) == listening
        finally:
            load.stop.set()
            for task in tasks:
                task.cancel()
            for p in procs:
                p.stop()
