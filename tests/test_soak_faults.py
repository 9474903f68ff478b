"""Faults under keep-alive load: backends SIGKILLed and restarted, a slow reader of a large
response, Consul and Redis stopped and started again. Each reports requests, failures and the
time to recover, and asserts no client-visible failure where lb promises none.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from conftest import RawBackend, Response, backends, free_port, lb_yaml, read_request, running_lb
from consul_server import ConsulTestServer
from procs import wait_port
from redis_server import RedisServer, redis_server_fixture  # noqa: F401
from soak import (
    SCALE,
    Load,
    listener_timeouts,
    load,
    report,
    service_timeouts,
    start_lb_process,
    until,
)

pytestmark = pytest.mark.soak

BACKEND_SCRIPT = Path(__file__).with_name("soak_backend.py")
OUTAGE = SCALE.outage
SLACK = SCALE.slack


def port_tag(r: Response) -> str:
    """The backend that answered: soak_backend says "ok PORT PID", RawBackend "ok PORT"."""
    parts = r.body.split()
    return parts[1].decode() if len(parts) > 1 else "?"


class BackendProcess:
    """tests/soak_backend.py as a process on a fixed port: kill() is a SIGKILL."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(BACKEND_SCRIPT), str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await asyncio.to_thread(wait_port, self.port, 30.0)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


@contextlib.asynccontextmanager
async def three_backends_under_load(
    tmp_path: Path,
) -> AsyncIterator[tuple[list[BackendProcess], Load]]:
    """Three backend processes behind lb with the default config (no `retries:` key), and 16
    keep-alive clients that have reached every one of them."""
    procs = [BackendProcess(free_port()) for _ in range(3)]
    try:
        for p in procs:
            await p.start()
        text = lb_yaml([p.address for p in procs], port=free_port(), admin_port=free_port())
        async with running_lb(tmp_path, text) as lb, load(lb.port, clients=16, tag=port_tag) as g:
            ports = {str(p.port) for p in procs}
            assert await until(lambda: ports <= set(g.tags), SLACK) is not None, g.tags
            await asyncio.sleep(min(1.0, OUTAGE / 3))
            yield procs, g
    finally:
        for p in procs:
            p.kill()


# -- backends SIGKILLed under load ---------------------------------------------------------------
async def test_backend_sigkill_and_restart_under_load_fails_no_get(tmp_path: Path) -> None:
    async with three_backends_under_load(tmp_path) as (procs, g):
        victim = procs[0]
        victim.kill()
        killed_at = time.monotonic()
        await asyncio.sleep(0.5)  # answers it sent before dying may still be on their way
        before = g.tags[str(victim.port)]
        await asyncio.sleep(max(0.5, OUTAGE - 0.5))
        after_kill = g.tags[str(victim.port)] - before
        g.mark()  # the dead process answers nothing: what answers from now on is the new one
        await victim.start()
        listening_at = time.monotonic()
        await until(lambda: str(victim.port) in g.first_seen, 15)
        seen = g.first_seen.get(str(victim.port))
        returned_s = None if seen is None else max(0.0, seen - listening_at)
        await g.wait_successes(500, SLACK)
        await g.stop()
    report(
        "backend_kill",
        requests=g.requests,
        failures=len(g.failures),
        failures_after_kill=len(g.failures_since(killed_at)),
        recover_s=g.recover_s(killed_at),
        last_failure_s=g.last_failure_s(killed_at),
        restarted_back_s=returned_s,
        killed_served=after_kill,
    )
    assert g.failures == [], f"{len(g.failures)} failed GETs: {g.failure_summary()}"
    assert after_kill == 0  # nothing answers from a dead process
    assert returned_s is not None, "the restarted backend got no traffic again"
    assert g.requests > 1000


async def test_two_of_three_backends_killed_then_restarted_recovers(tmp_path: Path) -> None:
    async with three_backends_under_load(tmp_path) as (procs, g):
        survivor = str(procs[2].port)
        for p in procs[:2]:
            p.kill()
        killed_at = time.monotonic()
        served_before = g.tags[survivor]
        await asyncio.sleep(OUTAGE)
        survivor_served = g.tags[survivor] - served_before
        restarted_at = g.mark()
        for p in procs[:2]:
            await p.start()
        killed = {str(p.port) for p in procs[:2]}
        back = await until(lambda: killed <= set(g.first_seen), 15)
        await asyncio.sleep(0.5)  # retries of attempts refused just before (backoff)
        clean_from = time.monotonic()
        await g.wait_successes(500, SLACK)
        await asyncio.sleep(min(2.0, OUTAGE / 2))
        await g.stop()
    outage_failures = g.failures_between(killed_at, restarted_at)
    half = killed_at + (restarted_at - killed_at) / 2
    report(
        "backends_2_of_3_killed",
        requests=g.requests,
        failures=len(g.failures),
        failures_during_outage=outage_failures,
        # Whether lb learns: no health checks are configured, so the dead stay in rotation.
        outage_first_half=g.failures_between(killed_at, half),
        outage_second_half=g.failures_between(half, restarted_at),
        failures_after_restart=len(g.failures_since(restarted_at)),
        survivor_served=survivor_served,
        recover_s=g.recover_s(restarted_at),
        restarted_back_s=back,
        kinds=g.failure_summary(3).replace(" ", "_") or None,
    )
    assert survivor_served > 100, "the remaining backend must keep answering"
    assert back is not None, "the restarted backends got no traffic again"
    late = g.failures_since(clean_from)
    assert late == [], f"failures after both came back: {late[:5]}"


# -- a slow reader of a large response -----------------------------------------------------------
BLOCK = random.Random(7).randbytes(1 << 20)


def expected_digest(size: int) -> str:
    h = hashlib.sha256()
    for _ in range(size // len(BLOCK)):
        h.update(BLOCK)
    return h.hexdigest()


async def big_body(_: RawBackend, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    for _ in range(1000):
        req = await read_request(reader)
        if req is None:
            return
        size = int(req.path.rsplit("/", 1)[1]) if req.path.startswith("/big/") else 3
        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
        if size == 3:
            w.write(b"ok\n")
        for _ in range(size // len(BLOCK)):
            w.write(BLOCK)
            await w.drain()  # the backend writes only as fast as lb takes it


async def test_slow_reader_of_a_large_response_gets_it_all_in_bounded_memory(
    tmp_path: Path,
) -> None:
    size = SCALE.big_body
    seconds = SCALE.hold + 2 * SCALE.timeout  # longer than every timeout
    rate = size / seconds
    backend = await RawBackend(handler=big_body).start()
    port = free_port()
    path = tmp_path / "big.yaml"
    path.write_text(
        lb_yaml(
            [backend.address],
            port=port,
            admin_port=free_port(),
            extra_listener=listener_timeouts(),
            extra_service=service_timeouts(),
        )
    )
    digest = asyncio.create_task(asyncio.to_thread(expected_digest, size))
    try:
        proc = await start_lb_process(path, port)
    except BaseException:
        await backend.stop()
        digest.cancel()
        raise
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /small HTTP/1.1\r\nhost: soak\r\n\r\n")
        await asyncio.wait_for(reader.readuntil(b"ok\n"), SLACK)
        baseline = peak = proc.rss()
        writer.write(b"GET /big/%d HTTP/1.1\r\nhost: soak\r\n\r\n" % size)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), SLACK)
        assert head.startswith(b"HTTP/1.1 200"), head
        h = hashlib.sha256()
        got = 0
        start = time.monotonic()
        longest_gap = 0.0
        cut = ""
        step = SCALE.timeout / 8  # never more than this between reads
        for i in range(size // 1024 + 10):
            if got >= size:
                break
            try:
                data = await asyncio.wait_for(reader.read(min(64 << 10, size - got)), SLACK)
            except (TimeoutError, ConnectionError) as exc:
                cut = type(exc).__name__
                break
            if not data:
                cut = "EOF"
                break
            h.update(data)
            got += len(data)
            if i % 32 == 0:
                peak = max(peak, proc.rss())
            ahead = got / rate - (time.monotonic() - start)
            if ahead > 0:
                pause = min(ahead, step)
                longest_gap = max(longest_gap, pause)
                await asyncio.sleep(pause)
        took = time.monotonic() - start
        peak = max(peak, proc.rss())
        writer.close()
        growth = (peak - baseline) / (1 << 20)
        report(
            "slow_reader",
            bytes=got,
            expected=size,
            took_s=took,
            rss_growth_mib=growth,
            rss_mib=peak / (1 << 20),
            cut=cut or None,
        )
        assert got == size, f"the body was cut at {got} of {size} bytes ({cut})"
        assert h.hexdigest() == await digest, "the body arrived corrupted"
        assert took > SCALE.timeout * 2  # it really was slow, past the timeouts
        assert growth < 100, f"lb's RSS grew by {growth:.0f} MiB for one slow reader"
    finally:
        code = proc.stop()
        await backend.stop()
        digest.cancel()
    assert code == 0, proc.output()


# -- Consul stopped under load -------------------------------------------------------------------
@pytest.fixture
def _no_consul_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)
    monkeypatch.delenv("CONSUL_HTTP_ADDR", raising=False)


def register(consul: ConsulTestServer, be: RawBackend) -> str:
    return consul.register("web", id=f"web-{be.port}", address="127.0.0.1", port=be.port)


@pytest.mark.usefixtures("_no_consul_env")
async def test_consul_stopped_and_restarted_under_load(
    tmp_path: Path, consul: ConsulTestServer
) -> None:
    text = lb_yaml(
        None,
        port=free_port(),
        admin_port=free_port(),
        extra_service="    discovery: consul\n    consul: {service: web}\n",
        extra=f'consul:\n  address: "{consul.address}"\n  wait: 2s\n',
    )
    consul_port = consul.port
    async with backends(3) as (a, b, c), running_lb(tmp_path, text) as lb:
        register(consul, a)
        register(consul, b)
        svc = lb.server.runtime.services["app"]
        both = {str(a.port), str(b.port)}
        synced = await until(lambda: {str(p) for _, p in svc.backends} == both, SLACK)
        assert synced is not None, "lb did not take the backends from Consul"
        async with load(lb.port, clients=8, tag=port_tag) as g:
            assert await until(lambda: both <= set(g.tags), SLACK) is not None, g.tags
            await consul.stop()
            stopped_at = time.monotonic()
            before = dict(g.tags)
            await asyncio.sleep(OUTAGE)
            during = {p: g.tags[p] - before.get(p, 0) for p in both}
            await consul.start(port=consul_port)
            g.mark()
            register(consul, c)  # lb resyncs: the new instance must get traffic
            back = await until(lambda: str(c.port) in g.first_seen, 30)
            await g.wait_successes(200, SLACK)
            await g.stop()
        report(
            "consul_outage",
            requests=g.requests,
            failures=len(g.failures),
            failures_during_outage=len(g.failures_since(stopped_at)),
            recover_s=back,
            served_during_outage=sum(during.values()),
        )
        assert g.failures == [], g.failure_summary()
        assert all(n > 0 for n in during.values()), f"last known good set not served: {during}"
        assert back is not None, "an instance registered after Consul came back got no traffic"
        assert back <= 30


# -- Redis stopped under load --------------------------------------------------------------------
async def redis_script_calls(port: int) -> int | None:
    """How many EVAL/EVALSHA calls this Redis has served (None: it does not answer)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1)
    except (OSError, TimeoutError):
        return None
    try:
        writer.write(b"INFO commandstats\r\n")
        header = await asyncio.wait_for(reader.readuntil(b"\r\n"), 2)
        if not header.startswith(b"$"):
            return None
        text = (await asyncio.wait_for(reader.readexactly(int(header[1:]) + 2), 2)).decode()
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
        return None
    finally:
        writer.close()
    calls = 0
    for line in text.splitlines():
        if line.startswith(("cmdstat_eval:", "cmdstat_evalsha:")):
            calls += int(line.split("calls=", 1)[1].split(",", 1)[0])
    return calls


async def test_redis_stopped_and_restarted_under_load(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    routes = (
        "routes:\n"
        "  - name: all\n"
        "    match: {path: {prefix: /}}\n"
        "    service: app\n"
        "    rate_limit: {rate: 1000000/s, burst: 100000, key: route, backend: redis, "
        "on_redis_failure: local}\n"
    )
    extra = f'redis:\n  url: "{redis_server.url}"\n  timeout: 1s\n'
    async with backends(2) as bes:
        text = lb_yaml(
            [b.address for b in bes],
            port=free_port(),
            admin_port=free_port(),
            routes=routes,
            extra=extra,
        )
        async with running_lb(tmp_path, text) as lb, load(lb.port, clients=8) as g:
            used = await until_async(lambda: redis_script_calls(redis_server.port), SLACK)
            assert used is not None, "lb never asked Redis"
            await asyncio.to_thread(redis_server.stop)
            stopped_at = time.monotonic()
            await asyncio.sleep(OUTAGE)
            await asyncio.to_thread(redis_server.start)
            restarted_at = time.monotonic()
            back = await until_async(lambda: redis_script_calls(redis_server.port), 15)
            await g.wait_successes(200, SLACK)
            await g.stop()
        report(
            "redis_outage",
            requests=g.requests,
            failures=len(g.failures),
            failures_during_outage=len(g.failures_since(stopped_at)),
            redis_used_again_s=back,
            outage_s=restarted_at - stopped_at,
        )
        assert g.failures == [], g.failure_summary()  # no 429, no 5xx
        assert back is not None, "lb did not use Redis again after it came back"


async def until_async(
    calls: Callable[[], Awaitable[int | None]], timeout: float, step: float = 0.05
) -> float | None:
    """Seconds until `calls()` (a coroutine giving a count) is above 0; None if never."""
    start = time.monotonic()
    for _ in range(int(timeout / step) + 1):
        n = await calls()
        if n:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            return None
        await asyncio.sleep(step)
    return None
