"""Config from Consul KV (`config_source`): the Consul test server, lb in-process and as a
process, real backends and traffic."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from conftest import LB, Client, RawBackend, backends, free_port
from consul_server import ConsulTestServer

from lb.config import ConfigError
from lb.config.kv import KvSnapshot, kv_documents, read_cache, write_cache
from lb.discovery.kvconfig import SourceUnavailable, load_from_source
from lb.server import Server

PREFIX = "lb/config/"
WAIT = "2s"  # short blocking queries: a test never waits long on one
FOLLOW = 1.0  # the bound for lb instances to follow (and agree on) a KV change


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)
    monkeypatch.delenv("CONSUL_HTTP_ADDR", raising=False)


def local_yaml(address: str, cache: Path | None, *, port: int, admin_port: int) -> str:
    """What each instance keeps on disk: its listener, its admin port and the source."""
    cache_line = f"\n    cache: {cache}" if cache is not None else ""
    return (
        f'listeners:\n  - name: web\n    bind: "127.0.0.1:{port}"\n'
        f'admin:\n  bind: "127.0.0.1:{admin_port}"\n'
        f"config_source:\n  consul:\n    address: {address}\n    prefix: {PREFIX}\n"
        f"    wait: {WAIT}{cache_line}\n"
    )


def services_doc(*bes: RawBackend) -> str:
    lines = "".join(f'      - "{b.address}"\n' for b in bes)
    return f"services:\n  app:\n    backends:\n{lines}"


ROUTES = "routes:\n  - name: all\n    match: {path: {prefix: /}}\n    service: app\n"


def put(consul: ConsulTestServer, name: str, text: str) -> None:
    consul.kv_put(PREFIX + name, text.encode())


@contextlib.asynccontextmanager
async def kv_lb(
    tmp_path: Path, consul_address: str, *, name: str = "lb", cache: bool = True
) -> AsyncIterator[LB]:
    """An lb whose routing config comes from the Consul KV prefix."""
    path = tmp_path / f"{name}.yaml"
    cache_path = tmp_path / f"{name}-kv-cache.json" if cache else None
    port, admin_port = free_port(), free_port()
    path.write_text(local_yaml(consul_address, cache_path, port=port, admin_port=admin_port))
    server = Server(str(path), await load_from_source(str(path)))
    await server.start()
    try:
        yield LB(server, path, port, admin_port)
    finally:
        await server.shutdown()


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> float:
    """Seconds until predicate() holds; fails the test after timeout."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            pytest.fail(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def answered_by(lb: LB) -> int:
    c = await Client.connect(lb.port)
    try:
        r = await c.request()
    finally:
        c.close()
    assert r.status == 200, r
    return int(r.body.split()[1])


def backend_ports(lb: LB) -> set[int]:
    return {port for (_, port), b in lb.server.runtime.services["app"].backends.items()}


async def admin_json(lb: LB, path: str) -> dict:
    async with aiohttp.ClientSession() as s, s.get(lb.admin + path) as r:
        return await r.json()


async def metrics(lb: LB) -> str:
    async with aiohttp.ClientSession() as s, s.get(lb.admin + "/metrics") as r:
        return await r.text()


async def lb_cli(*args: str) -> tuple[int, str]:
    """`lb ...` as a process, while this loop keeps serving the Consul test server."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lb",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


# -- following Consul ----------------------------------------------------------------------------
async def test_edits_apply_and_the_cache_follows(tmp_path, consul):
    async with backends(2) as (a, b):
        put(consul, "10-services", services_doc(a))
        put(consul, "20-routes", ROUTES)
        async with kv_lb(tmp_path, consul.address) as lb:
            assert await answered_by(lb) == a.port
            status = (await admin_json(lb, "/api/status"))["config_source"]["consul"]
            assert status["keys"] == ["consul:lb/config/10-services", "consul:lb/config/20-routes"]
            assert status["stale_seconds"] == 0 and status["error"] is None
            cache = tmp_path / "lb-kv-cache.json"
            assert read_cache(str(cache), PREFIX).documents == lb.server.runtime.loaded.kv.documents

            put(consul, "10-services", services_doc(b))
            await until(lambda: backend_ports(lb) == {b.port}, FOLLOW)
            assert await answered_by(lb) == b.port
            await until(lambda: lb.server.reloads == {"success": 1, "failure": 0})
            await until(lambda: b.address in cache.read_text())
            # A key added under the prefix merges in key order, like a file added to a directory.
            put(
                consul,
                "30-extra",
                "routes:\n  - name: hi\n    match: {path: {exact: /hi}}\n"
                "    respond: {status: 200, body: hi}\n",
            )
            await until(lambda: len(lb.server.runtime.table.routes) == 2, FOLLOW)
            await until(lambda: lb.server.reloads["success"] == 2)
            # A write that leaves every value as it was moves the index only: no reload.
            reloads = dict(lb.server.reloads)
            put(consul, "30-extra", consul.kv[PREFIX + "30-extra"].value.decode())
            await asyncio.sleep(0.3)
            assert lb.server.reloads == reloads
            assert "consul:lb/config/30-extra" in lb.server.runtime.loaded.files


async def test_an_invalid_edit_is_refused_naming_the_key_and_line(tmp_path, consul):
    async with backends(1) as (a,):
        put(consul, "10-services", services_doc(a))
        put(consul, "20-routes", ROUTES)
        async with kv_lb(tmp_path, consul.address) as lb:
            digest = lb.server.runtime.loaded.digest
            put(consul, "20-routes", ROUTES.replace("service: app", "service: paymnets"))
            await until(lambda: lb.server.reloads["failure"] == 1, FOLLOW)
            assert lb.server.runtime.loaded.digest == digest
            assert await answered_by(lb) == a.port
            status = await admin_json(lb, "/api/status")
            errors = status["config"]["last_reload_errors"]
            assert errors == [
                'consul:lb/config/20-routes:4:14: routes[0].service: unknown service "paymnets"'
                " (services: app)"
            ]
            text = await metrics(lb)
            assert 'lb_config_reload_total{result="failure"} 1.0' in text
            assert "lb_config_last_reload_success 0.0" in text
            # Bad YAML is refused the same way, and the cache keeps the last good documents.
            put(consul, "20-routes", "routes: [\n")
            await until(lambda: lb.server.reloads["failure"] == 2, FOLLOW)
            assert lb.server.last_reload_errors[0].startswith("consul:lb/config/20-routes:2:1:")
            cached = read_cache(str(tmp_path / "lb-kv-cache.json"), PREFIX)
            assert dict(cached.documents)["consul:lb/config/20-routes"] == ROUTES.encode()
            # Deleting every key (a Consul that lost its data looks the same) is refused too.
            consul.kv_delete(PREFIX, recurse=True)
            await until(lambda: lb.server.reloads["failure"] == 3, FOLLOW)
            assert "no keys under the prefix" in lb.server.last_reload_errors[0]
            assert await answered_by(lb) == a.port
            # config_source belongs to the local files.
            put(consul, "10-services", services_doc(a))
            put(consul, "20-routes", ROUTES + "config_source: {consul: {prefix: other/}}\n")
            await until(lambda: lb.server.reloads["failure"] == 4, FOLLOW)
            assert "set it in one file only" in lb.server.last_reload_errors[0]
            put(consul, "20-routes", ROUTES)
            await until(lambda: lb.server.last_reload_ok, FOLLOW)
            assert lb.server.runtime.loaded.digest == digest


async def test_a_local_edit_merges_with_the_documents_in_hand(tmp_path, consul):
    async with backends(1) as (a,):
        put(consul, "10-services", services_doc(a))
        put(consul, "20-routes", ROUTES)
        async with kv_lb(tmp_path, consul.address) as lb:
            local = lb.config_path.read_text()
            lb.config_path.write_text(local + "metrics: {enabled: false}\n")
            ok, errors = await lb.server.reload()
            assert ok, errors
            assert lb.server.runtime.config.metrics.enabled is False
            assert len(lb.server.runtime.loaded.kv.documents) == 2
            # A new source is read at once (tests/test_config_consul_reload.py moves to one);
            # this one holds no keys, and a reload that would run on nothing is refused.
            watch = lb.server.source.watch
            lb.config_path.write_text(local.replace(PREFIX, "lb/other/"))
            ok, errors = await lb.server.reload()
            assert not ok
            assert errors == [
                "consul:lb/other/:1:1: no keys under the prefix: an empty config source is "
                "refused (a Consul that lost its data looks like this)"
            ]
            assert lb.server.source.watch is watch and lb.server.source.source.prefix == PREFIX


async def test_consul_down_keeps_the_config_and_shows_staleness(tmp_path, consul):
    port = consul.port
    async with backends(2) as (a, b):
        put(consul, "10-services", services_doc(a))
        put(consul, "20-routes", ROUTES)
        async with kv_lb(tmp_path, consul.address) as lb:
            watch = lb.server.source.watch
            await until(lambda: watch.synced)
            await consul.stop()
            await until(lambda: watch.stale, 3)
            await asyncio.sleep(0.2)
            assert await answered_by(lb) == a.port
            status = (await admin_json(lb, "/api/status"))["config_source"]["consul"]
            assert status["stale_seconds"] > 0
            assert "unreachable" in status["error"]
            text = await metrics(lb)
            stale = next(ln for ln in text.splitlines() if ln.startswith("lb_config_source_stale"))
            assert float(stale.split()[1]) > 0
            assert "lb_config_source_errors_total" in text

            await consul.start(port=port)
            await until(lambda: not watch.stale, 15)
            put(consul, "10-services", services_doc(b))
            await until(lambda: backend_ports(lb) == {b.port}, FOLLOW)
            status = (await admin_json(lb, "/api/status"))["config_source"]["consul"]
            assert status["stale_seconds"] == 0 and status["error"] is None


async def test_consul_restarted_with_a_lower_index(tmp_path, consul):
    consul.set_index_floor(5000)
    port = consul.port
    async with backends(3) as (a, b, c):
        put(consul, "10-services", services_doc(a))
        put(consul, "20-routes", ROUTES)
        async with kv_lb(tmp_path, consul.address) as lb:
            watch = lb.server.source.watch
            await until(lambda: watch.index > 5000)
            # A snapshot restore under a running agent: the blocking query returns a lower index.
            consul.reset_index(10)
            await until(lambda: 0 < watch.index <= 10, 2)
            put(consul, "10-services", services_doc(b))
            await until(lambda: backend_ports(lb) == {b.port}, FOLLOW)
            # A restart from an older snapshot: errors while it is down, then a low index.
            consul.set_index_floor(5000)
            put(consul, "20-routes", ROUTES)
            await until(lambda: watch.index > 5000, 2)
            await consul.stop()
            consul.reset_index(20)
            put(consul, "10-services", services_doc(c))
            await until(lambda: watch.stale, 3)
            await consul.start(port=port)
            await until(lambda: backend_ports(lb) == {c.port}, 5)
            assert 0 < watch.index <= 25
            assert await answered_by(lb) == c.port


async def test_two_instances_converge_within_a_second(tmp_path, consul):
    async with backends(2) as (a, b):
        put(consul, "10-services", services_doc(a))
        put(consul, "20-routes", ROUTES)
        async with (
            kv_lb(tmp_path, consul.address, name="one") as one,
            kv_lb(tmp_path, consul.address, name="two") as two,
        ):
            for lb in (one, two):
                await until(lambda lb=lb: lb.server.source.watch.synced)

            async def digest(lb: LB) -> str:
                return (await admin_json(lb, "/api/status"))["config_source"]["consul"]["digest"]

            assert await digest(one) == await digest(two)
            before = await digest(one)
            put(consul, "10-services", services_doc(b))
            await until(
                lambda: backend_ports(one) == {b.port} and backend_ports(two) == {b.port}, FOLLOW
            )
            assert await answered_by(one) == await answered_by(two) == b.port
            assert await digest(one) == await digest(two) != before


# -- booting -------------------------------------------------------------------------------------
async def test_boot_with_consul_down_starts_from_the_cache(tmp_path, consul):
    port = consul.port
    async with backends(2) as (a, b):
        put(consul, "10-services", services_doc(a))
        put(consul, "20-routes", ROUTES)
        async with kv_lb(tmp_path, consul.address) as lb:
            assert await answered_by(lb) == a.port
        await consul.stop()
        async with kv_lb(tmp_path, consul.address) as lb:
            assert lb.server.runtime.loaded.kv.from_cache
            assert await answered_by(lb) == a.port
            status = (await admin_json(lb, "/api/status"))["config_source"]["consul"]
            assert status["booted_from_cache"] is True and status["last_success"] is None
            await until(lambda: lb.server.source.watch.stale)
            assert (await admin_json(lb, "/api/status"))["config_source"]["consul"][
                "stale_seconds"
            ] > 0
            # Consul back with newer documents: lb follows.
            put(consul, "10-services", services_doc(b))
            await consul.start(port=port)
            await until(lambda: backend_ports(lb) == {b.port}, 15)
            status = (await admin_json(lb, "/api/status"))["config_source"]["consul"]
            assert status["stale_seconds"] == 0


async def test_boot_with_consul_down_and_no_cache_exits_2(tmp_path):
    path = tmp_path / "lb.yaml"
    dead = f"http://127.0.0.1:{free_port()}"
    path.write_text(local_yaml(dead, None, port=free_port(), admin_port=free_port()))
    with pytest.raises(SourceUnavailable, match="no cache to start from"):
        await load_from_source(str(path))
    code, out = await lb_cli("run", "-c", str(path))
    assert code == 2, out
    assert "cannot start: Consul unreachable at" in out and "no cache" in out
    # A cache that is not there, or holds another prefix, is said to be so.
    path.write_text(local_yaml(dead, tmp_path / "nope.json", port=1, admin_port=2))
    with pytest.raises(SourceUnavailable, match="KV cache: cannot read"):
        await load_from_source(str(path))


async def test_lb_run_serves_the_kv_config(tmp_path, consul):
    async with backends(1) as (a,):
        put(consul, "10-services", services_doc(a))
        put(consul, "20-routes", ROUTES)
        port, admin_port = free_port(), free_port()
        path = tmp_path / "lb.yaml"
        path.write_text(local_yaml(consul.address, None, port=port, admin_port=admin_port))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "lb", "run", "-c", str(path), stderr=asyncio.subprocess.PIPE
        )
        try:
            lb = LB(None, path, port, admin_port)  # type: ignore[arg-type]
            for _ in range(200):
                with contextlib.suppress(OSError):
                    if await answered_by(lb) == a.port:
                        break
                await asyncio.sleep(0.05)
            assert await answered_by(lb) == a.port
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 30)


async def test_two_lb_processes_one_with_workers_converge_within_a_second(tmp_path, consul):
    """Two `lb run` processes on the same prefix, one of them a supervisor with two workers
    (each worker follows Consul itself): a KV edit reaches every one of them within FOLLOW."""
    async with backends(2) as (a, b):
        put(consul, "10-services", services_doc(a))
        put(consul, "20-routes", ROUTES)
        lbs, procs = [], []
        try:
            for name, extra in (("one", ()), ("tree", ("--workers", "2"))):
                port, admin_port = free_port(), free_port()
                path = tmp_path / f"{name}.yaml"
                path.write_text(local_yaml(consul.address, None, port=port, admin_port=admin_port))
                procs.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable, "-m", "lb", "run", "-c", str(path), *extra,
                        stderr=asyncio.subprocess.DEVNULL,
                    )
                )  # fmt: skip
                lbs.append(LB(None, path, port, admin_port))  # type: ignore[arg-type]

            async def all_answer(port: int, tries: int = 6) -> bool:
                for lb in lbs:  # fresh connections: the tree's kernel spreads them over workers
                    for _ in range(tries):
                        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                            if await answered_by(lb) == port:
                                continue
                        return False
                return True

            deadline = time.monotonic() + 30
            while not await all_answer(a.port):
                assert time.monotonic() < deadline, "the processes did not start"
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)  # every worker's watch is parked on the prefix's index
            start = time.monotonic()
            put(consul, "10-services", services_doc(b))
            while not await all_answer(b.port):
                assert time.monotonic() - start < 10, "not followed"
                await asyncio.sleep(0.02)
            assert time.monotonic() - start < FOLLOW
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                await asyncio.wait_for(proc.wait(), 30)


# -- lb check ------------------------------------------------------------------------------------
async def test_lb_check_consul(tmp_path, consul):
    async with backends(2) as (a, b):
        listeners = 'listeners:\n  - name: web\n    bind: "127.0.0.1:1"\n'
        put(consul, "00-listeners", listeners)
        put(consul, "10-services", services_doc(a))
        put(consul, "20-routes", ROUTES)
        code, out = await lb_cli("check", "--consul", consul.address, "--prefix", "lb/config")
        assert code == 0, out
        index = consul.kv_index(PREFIX, prefix=True)
        assert out.strip() == f"consul:lb/config/ (3 keys, index {index}): ok"

        put(consul, "20-routes", ROUTES.replace("service:", "servce:"))
        code, out = await lb_cli("check", "--consul", consul.address, "--prefix", PREFIX)
        assert code == 1
        assert (
            "consul:lb/config/20-routes:4:5: routes[0].servce: unknown key "
            '(did you mean "service"?)'
        ) in out

        # -c: the local files and the KV documents, merged as lb merges them.
        consul.kv_delete(PREFIX + "00-listeners")
        put(consul, "20-routes", ROUTES)
        async with kv_lb(tmp_path, consul.address) as lb:
            code, out = await lb_cli("check", "-c", str(lb.config_path), "--diff")
            assert code == 0, out
            assert out.strip() == "no changes against the running lb"
            # A config staged under another prefix, compared with what runs.
            consul.kv_put("lb/next/10-services", services_doc(a, b).encode())
            consul.kv_put("lb/next/20-routes", ROUTES.encode())
            code, out = await lb_cli(
                "check", "-c", str(lb.config_path), "--consul", consul.address,
                "--prefix", "lb/next/", "--diff",
            )  # fmt: skip
            assert code == 0, out
            assert out.strip() == "~ service app: backends"

        dead = f"http://127.0.0.1:{free_port()}"
        code, out = await lb_cli("check", "--consul", dead, "--prefix", PREFIX)
        assert code == 2 and "cannot read the config source: Consul unreachable" in out
        code, out = await lb_cli("check", "--consul", consul.address)
        assert code == 2 and "--consul and --prefix go together" in out


# -- the cache file ------------------------------------------------------------------------------
def test_the_cache_is_replaced_whole(tmp_path):
    path = tmp_path / "cache.json"
    docs = kv_documents([("lb/config/b", b"routes: []\n"), ("lb/config/a", "x: é\n".encode())])
    assert [n for n, _ in docs] == ["consul:lb/config/a", "consul:lb/config/b"]
    kv = KvSnapshot(PREFIX, 42, docs, 1000.0)
    write_cache(str(path), "http://consul:8500", kv)
    write_cache(str(path), "http://consul:8500", kv)
    assert [p.name for p in tmp_path.iterdir()] == ["cache.json"]  # no temporary file left
    back = read_cache(str(path), PREFIX)
    assert back.documents == docs and back.index == 42 and back.from_cache
    assert back.digest == kv.digest
    assert json.loads(path.read_text())["prefix"] == PREFIX
    with pytest.raises(ConfigError, match='holds the prefix "lb/config/", not "other/"'):
        read_cache(str(path), "other/")
    path.write_text('{"format": 1, "prefix": "lb/config/"')
    with pytest.raises(ConfigError, match="KV cache: not JSON"):
        read_cache(str(path), PREFIX)
    # A folder placeholder key (as the Consul UI makes them) holds no document.
    assert kv_documents([("lb/config/", b""), ("lb/config/x", b"")]) == (
        ("consul:lb/config/x", b""),
    )
