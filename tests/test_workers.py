"""`lb run --workers 2` as a real process tree in front of real backends."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import Client, backends, free_port, lb_yaml, ok_response
from procs import ROOT, LbProcess
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from lb.workers import parse_workers

try:
    from lb import _picker, _shm  # noqa: F401
except ImportError:
    pytest.skip("multi-worker mode needs the compiled extensions", allow_module_level=True)


class Tree:
    """The supervisor process and its admin API."""

    def __init__(self, lb: LbProcess, port: int, admin_port: int, config: Path) -> None:
        self.lb = lb
        self.port = port
        self.admin = f"http://127.0.0.1:{admin_port}"
        self.config = config
        self.http = aiohttp.ClientSession()

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.http.get(self.admin + path) as resp:
            body = (
                await resp.json() if resp.content_type == "application/json" else await resp.text()
            )
            return resp.status, body

    async def post(self, path: str) -> tuple[int, Any]:
        async with self.http.post(self.admin + path) as resp:
            return resp.status, await resp.json()

    async def status(self) -> dict[str, Any]:
        code, body = await self.get("/api/status")
        assert code == 200, body
        return body

    async def metrics(self) -> dict[str, float]:
        """Sample name + sorted labels -> value, of the supervisor's merged exposition."""
        _, text = await self.get("/metrics")
        out = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                out[s.name + str(sorted(s.labels.items()))] = s.value
        return out

    async def total(self, sample: str) -> float:
        return sum(v for k, v in (await self.metrics()).items() if k.startswith(sample + "["))

    async def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if (await self.get("/readyz"))[0] == 200:
                    return
            except aiohttp.ClientError:
                pass
            if self.lb.proc.poll() is not None:
                raise AssertionError(f"lb exited {self.lb.proc.returncode}:\n{self.lb.output()}")
            await asyncio.sleep(0.1)
        raise TimeoutError(f"not ready:\n{self.lb.output()}")

    async def worker_pids(self) -> list[int]:
        return [w["pid"] for w in (await self.status())["workers"]]


@asynccontextmanager
async def tree(tmp_path: Path, addresses: list[str], **yaml_kw: Any) -> AsyncIterator[Tree]:
    port, admin_port = free_port(), free_port()
    config = tmp_path / "lb.yaml"
    config.write_text(lb_yaml(addresses, port=port, admin_port=admin_port, **yaml_kw))
    t = Tree(LbProcess(config, "--workers", "2"), port, admin_port, config)
    try:
        await t.wait_ready()
        yield t
    finally:
        await t.http.close()
        pids = [int(p) for p in _children(t.lb.proc.pid)]
        t.lb.stop()
        for pid in pids:  # never leave a worker behind, whatever the test did
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _children(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []


async def get_once(port: int) -> bytes:
    """One request on a fresh connection, so that the kernel picks a worker for each."""
    client = await Client.connect(port)
    try:
        resp = await client.request("GET", "/", headers="connection: close\r\n")
        assert resp.status == 200, resp
        return resp.body
    finally:
        client.close()


def holding(release: asyncio.Event) -> Any:
    """A backend answer that waits until the test lets it go."""

    async def respond(seen: Any) -> bytes:
        await release.wait()
        return ok_response(b"released")

    return respond


async def test_both_workers_accept_and_metrics_are_totals(tmp_path):
    async with backends(2) as bes, tree(tmp_path, [b.address for b in bes]) as t:
        sent = 60
        await asyncio.gather(*(get_once(t.port) for _ in range(sent)))
        status = await t.status()
        workers = status["workers"]
        assert [w["status"] for w in workers] == ["running", "running"]
        assert len({w["pid"] for w in workers}) == 2 and status["pid"] == t.lb.proc.pid
        # SO_REUSEPORT spread the connections: both workers took some.
        assert all(w["accepted"] > 0 for w in workers), workers
        assert sum(w["accepted"] for w in workers) == status["listeners"][0]["accepted"]
        assert status["routes"][0]["requests"] == sent
        assert sum(b["requests"] for b in status["services"][0]["backends"]) == sent
        # One scrape, totals across the workers.
        assert await t.total("lb_requests_total") == sent
        assert await t.total("lb_backend_selected_total") == sent
        assert await t.total("lb_request_duration_seconds_count") == sent
        assert await t.total("lb_client_connections_accepted_total") == sent
        assert await t.total("lb_workers") == 2
        m = await t.metrics()
        assert m["lb_workers[('status', 'running')]"] == 2
        assert m["lb_config_last_reload_success[]"] == 1
        assert sum(len(b.seen) for b in bes) == sent
        # OpenMetrics too, for scrapers that ask for it.
        accept = {"Accept": "application/openmetrics-text; version=1.0.0"}
        async with t.http.get(t.admin + "/metrics", headers=accept) as resp:
            assert resp.content_type == "application/openmetrics-text"
            families = {f.name: f for f in openmetrics_families(await resp.text())}
        assert sum(s.value for s in families["lb_requests"].samples) == sent


async def test_least_connections_is_global_across_workers(tmp_path):
    """Requests that stay open arrive one at a time, each on a new connection (so on either
    worker): with one count for both workers the two backends always end up level. Two
    private counts would send each worker's first request to the same backend."""
    release = asyncio.Event()
    async with (
        backends(2, respond=holding(release)) as bes,
        tree(tmp_path, [b.address for b in bes]) as t,
    ):
        clients, pending = [], []
        for i in range(16):
            client = await Client.connect(t.port)
            clients.append(client)
            pending.append(asyncio.create_task(client.request("GET", f"/{i}", timeout=30)))
            deadline = time.monotonic() + 5
            while sum(len(b.seen) for b in bes) < i + 1:  # it reached a backend: counted
                assert time.monotonic() < deadline, "request did not reach a backend"
                await asyncio.sleep(0.005)
            if i % 2:
                assert len(bes[0].seen) == len(bes[1].seen), (i, len(bes[0].seen))
        status = await t.status()
        assert [b["in_flight"] for b in status["services"][0]["backends"]] == [8, 8]
        assert status["services"][0]["in_flight"] == 16
        assert all(w["accepted"] > 0 for w in status["workers"]), status["workers"]
        m = await t.metrics()
        assert sum(v for k, v in m.items() if k.startswith("lb_backend_in_flight[")) == 16
        release.set()
        for task in pending:
            assert (await task).status == 200
        for client in clients:
            client.close()


async def test_a_bounded_hot_key_is_bounded_across_workers(tmp_path):
    """`bounded_load: 1.25` over 4 backends, one hot key, requests held open arriving one at
    a time on new connections (so on either worker). A request goes to a backend only while
    its in-flight count is below 1.25 * (total + 1) / 4, the total and the counts being the
    tree's, so after i requests none holds more than ceil(1.25 * i / 4). Arriving one at a
    time, each is counted before the next is judged: concurrent decisions in N workers could
    each read a count before the others add to it (at most N - 1 over). Per-worker bounds
    let each worker's first request onto the key's own backend: 2 there after 2 requests."""
    release = asyncio.Event()
    svc = "    balance: {mode: ring_hash, hash_on: {header: X-User}, bounded_load: 1.25}\n"
    async with (
        backends(4, respond=holding(release)) as bes,
        tree(tmp_path, [b.address for b in bes], extra_service=svc) as t,
    ):
        clients, pending = [], []
        for i in range(1, 17):
            client = await Client.connect(t.port)
            clients.append(client)
            pending.append(
                asyncio.create_task(
                    client.request("GET", f"/{i}", headers="x-user: hot\r\n", timeout=30)
                )
            )
            deadline = time.monotonic() + 5
            while sum(len(b.seen) for b in bes) < i:  # it reached a backend: counted
                assert time.monotonic() < deadline, "request did not reach a backend"
                await asyncio.sleep(0.005)
            held = [len(b.seen) for b in bes]
            assert max(held) <= math.ceil(1.25 * i / 4), (i, held)
        assert max(held) == 5, held  # ceil(1.25 * 16 / 4): the key's backend is full
        status = await t.status()
        assert all(w["accepted"] > 0 for w in status["workers"]), status["workers"]
        assert status["services"][0]["in_flight"] == 16
        release.set()
        for task in pending:
            assert (await task).status == 200
        for client in clients:
            client.close()


async def test_a_rate_limit_is_one_budget_across_workers(tmp_path):
    routes = (
        "routes:\n"
        "  - name: api\n"
        "    match: {path: {prefix: /}}\n"
        "    service: app\n"
        "    rate_limit: {rate: 1/m, burst: 9, key: client_ip}\n"
    )
    async with backends(1) as bes, tree(tmp_path, [bes[0].address], routes=routes) as t:

        async def status_once() -> int:
            client = await Client.connect(t.port)
            try:
                return (await client.request("GET", "/", headers="connection: close\r\n")).status
            finally:
                client.close()

        codes = await asyncio.gather(*(status_once() for _ in range(40)))
        assert sorted(codes) == [200] * 10 + [429] * 30
        workers = (await t.status())["workers"]
        assert all(w["accepted"] > 0 for w in workers), workers
        m = await t.metrics()
        limited = "lb_ratelimit_decisions_total[('decision', 'limited'), ('name', 'api'), "
        assert m[limited + "('scope', 'route')]"] == 30


async def test_sighup_and_api_reload_reach_every_worker(tmp_path):
    async with backends(2) as bes, tree(tmp_path, [bes[0].address]) as t:
        before = (await t.status())["config"]["hash"]
        t.config.write_text(t.config.read_text().replace(bes[0].address, bes[1].address))
        t.lb.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while (await t.status())["config"]["hash"] == before:
            assert time.monotonic() < deadline, t.lb.output()
            await asyncio.sleep(0.05)
        # Worker 0 has it; fresh connections land on both workers and all reach backend 1.
        await asyncio.sleep(0.3)
        bodies = await asyncio.gather(*(get_once(t.port) for _ in range(30)))
        assert set(bodies) == {f"ok {bes[1].port}\n".encode()}
        assert (await t.metrics())["lb_config_reload_total[('result', 'success')]"] >= 1

        # The API: validated by the supervisor, confirmed by every worker.
        t.config.write_text(t.config.read_text().replace(bes[1].address, bes[0].address))
        code, body = await t.post("/api/reload")
        assert code == 200 and body["ok"], body
        assert [w["ok"] for w in body["workers"]] == [True, True]
        bodies = await asyncio.gather(*(get_once(t.port) for _ in range(30)))
        assert set(bodies) == {f"ok {bes[0].port}\n".encode()}

        t.config.write_text("listeners: [")
        code, body = await t.post("/api/reload")
        assert code == 400 and not body["ok"] and body["errors"], body


async def test_drain_reaches_every_worker(tmp_path):
    async with backends(2) as bes, tree(tmp_path, [b.address for b in bes]) as t:
        code, body = await t.post(f"/api/backends/app/{bes[0].address}/drain")
        assert code == 200 and body["workers"] == 2 and body["state"] == "draining", body
        bodies = await asyncio.gather(*(get_once(t.port) for _ in range(30)))
        assert set(bodies) == {f"ok {bes[1].port}\n".encode()}
        code, _ = await t.post("/api/backends/app/10.9.9.9:1/drain")
        assert code == 404


async def test_a_killed_worker_is_restarted(tmp_path):
    async with backends(2) as bes, tree(tmp_path, [b.address for b in bes]) as t:
        await t.post(f"/api/backends/app/{bes[0].address}/drain")
        pids = await t.worker_pids()
        os.kill(pids[1], signal.SIGKILL)
        deadline = time.monotonic() + 15
        while True:
            workers = (await t.status())["workers"]
            if workers[1]["status"] == "running" and workers[1]["pid"] != pids[1]:
                break
            assert time.monotonic() < deadline, (workers, t.lb.output())
            await asyncio.sleep(0.1)
        assert workers[0]["pid"] == pids[0]
        assert workers[1]["restarts"] == 1 and workers[1]["last_exit"] == "signal SIGKILL"
        m = await t.metrics()
        assert m["lb_worker_restarts_total[('worker', '1')]"] == 1
        await t.wait_ready()
        # The new worker got the operator's drain too.
        bodies = await asyncio.gather(*(get_once(t.port) for _ in range(30)))
        assert set(bodies) == {f"ok {bes[1].port}\n".encode()}
        assert "died after" in t.lb.output()


async def test_sigterm_drains_every_worker_then_exits_zero(tmp_path):
    async def slow(seen: Any) -> bytes:
        await asyncio.sleep(0.8)
        return ok_response(b"finished")

    async with backends(1, respond=slow) as bes, tree(tmp_path, [bes[0].address]) as t:
        pids = await t.worker_pids()
        clients = [await Client.connect(t.port) for _ in range(8)]
        pending = [asyncio.create_task(c.request("GET", "/", timeout=10)) for c in clients]
        await asyncio.sleep(0.3)
        t.lb.signal(signal.SIGTERM)
        for task in pending:
            resp = await task
            assert resp.status == 200 and resp.body == b"finished"
        code = await asyncio.to_thread(t.lb.proc.wait, 15)
        assert code == 0, t.lb.output()
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists() or _zombie(pid)
        for c in clients:
            c.close()


async def test_workers_leave_when_the_supervisor_is_killed(tmp_path):
    async with backends(1) as bes, tree(tmp_path, [bes[0].address]) as t:
        pids = await t.worker_pids()
        shm = [a for a in Path(f"/proc/{pids[0]}/cmdline").read_text().split("\0") if "lb-" in a]
        t.lb.proc.kill()
        t.lb.proc.wait()
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{pid}").exists() and not _zombie(pid) for pid in pids):
            assert time.monotonic() < deadline, "workers outlived their supervisor"
            await asyncio.sleep(0.05)
        assert shm and not Path(shm[0]).exists()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except OSError:
        return True


async def test_token_guards_the_supervisor_admin(tmp_path):
    async with backends(1) as bes, tree(tmp_path, [bes[0].address]) as t:
        text = t.config.read_text().replace("admin:\n", "admin:\n  token: s3cret\n")
        t.config.write_text(text)
        t.lb.signal(signal.SIGHUP)
        await asyncio.sleep(1.0)
        code, _ = await t.get("/api/status")
        assert code == 401
        assert (await t.get("/healthz"))[0] == 200
        async with t.http.get(
            t.admin + "/api/status", headers={"Authorization": "Bearer s3cret"}
        ) as resp:
            assert resp.status == 200
            assert len((await resp.json())["workers"]) == 2


def test_workers_refuse_the_python_picker(tmp_path):
    config = tmp_path / "lb.yaml"
    config.write_text(lb_yaml(["127.0.0.1:9"], port=free_port(), admin_port=free_port()))
    proc = subprocess.run(
        [sys.executable, "-m", "lb", "run", "-c", str(config), "--workers", "2"],
        cwd=ROOT,
        env={**os.environ, "LB_PICKER": "python"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "compiled picker" in proc.stderr


def test_a_worker_that_cannot_start_stops_the_tree(tmp_path):
    with socket_taken() as port:
        config = tmp_path / "lb.yaml"
        config.write_text(lb_yaml(["127.0.0.1:9"], port=port, admin_port=free_port()))
        proc = subprocess.run(
            [sys.executable, "-m", "lb", "run", "-c", str(config), "--workers", "2"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 1, proc.stderr
    assert "failed to start" in proc.stderr


@contextmanager
def socket_taken() -> Iterator[int]:
    """A port bound (without SO_REUSEPORT) by someone else."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_worker_counts():
    assert parse_workers("3") == 3
    assert parse_workers("auto") == len(os.sched_getaffinity(0))
    for bad in ("0", "-1", "many"):
        with pytest.raises(ValueError):
            parse_workers(bad)


async def _answered(client: Client) -> bool:
    """Whether a request on a fresh connection is answered (not closed at accept)."""
    try:
        return (await client.request("GET", "/")).status == 200
    except (ConnectionError, asyncio.IncompleteReadError):
        return False


async def test_per_client_caps_count_across_workers(tmp_path):
    """One client's connections and requests in flight land on both workers; the caps hold
    for them together, and a place given back on one worker is free on the other."""
    release = asyncio.Event()
    routes = (
        "routes:\n"
        "  - name: slow\n    match: {path: {prefix: /slow}}\n    service: app\n"
        "    client_in_flight: {max: 3}\n"
        "  - name: all\n    match: {path: {prefix: /}}\n    service: app\n"
    )

    async def respond(seen: Any) -> bytes:
        if seen.path.startswith("/slow"):
            await release.wait()
        return ok_response(b"ok")

    async with (
        backends(1, respond=respond) as bes,
        tree(
            tmp_path, [bes[0].address], routes=routes,
            extra_listener="    max_connections_per_client: 10\n",
        ) as t,
    ):  # fmt: skip
        held = [await Client.connect(t.port) for _ in range(14)]
        answered = [await _answered(c) for c in held]
        assert answered.count(True) == 10, answered
        kept = [c for c, ok in zip(held, answered, strict=True) if ok]
        for c in held:
            if c not in kept:
                c.close()
        # in flight: 7 slow requests on 7 of the kept connections, 3 let in
        slow = [asyncio.create_task(c.request("GET", "/slow", timeout=30)) for c in kept[:7]]
        deadline = time.monotonic() + 10
        while sum(x.done() for x in slow) < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        refused = [x.result().status for x in slow if x.done()]
        assert refused == [429] * 4, refused
        assert len([s for s in bes[0].seen if s.path == "/slow"]) == 3
        release.set()
        assert sorted([(await x).status for x in slow]) == [200] * 3 + [429] * 4
        # a connection closed gives its place back, whichever worker held it
        for c in kept[:5]:
            c.close()
        await asyncio.sleep(0.3)
        again = [await Client.connect(t.port) for _ in range(6)]
        assert [await _answered(c) for c in again].count(True) == 5
        for c in kept[5:] + again:
            c.close()
        workers = (await t.status())["workers"]
        assert all(w["accepted"] > 0 for w in workers), workers


async def test_series_and_fleet_through_the_supervisor(tmp_path):
    async with backends(2) as bes, tree(tmp_path, [b.address for b in bes]) as t:
        sent = 40
        await asyncio.gather(*(get_once(t.port) for _ in range(sent)))
        # Every request counted once, in whichever worker took it: ring slots plus live.
        code, doc = await t.get("/api/series?raw=1")
        assert code == 200
        rows = [r for _, b, r in doc["live"]["series"] if b is None]
        for _, b, slots in doc["series"]:
            if b is None:
                rows += [r for r in slots if r]
        assert sum(r[0] for r in rows) == sent
        assert sum(sum(r[2:]) for r in rows) == sent  # the merged histograms hold them all
        code, body = await t.get("/api/series?window=5m")
        assert code == 200 and body["metrics_enabled"]
        (svc,) = body["services"]
        assert svc["name"] == "app"
        assert len(body["backends"]) == 2
        assert (await t.get("/api/series?window=soon"))[0] == 400
        # The fleet of a lb not registered in Consul: itself, as worker 0 sees it.
        code, fleet = await t.get("/api/fleet")
        assert code == 200 and fleet["consul"] is None
        (me,) = fleet["instances"]
        assert me["self"] and me["config_hash"] == (await t.status())["config"]["hash"]
