"""A reload follows a changed `config_source`: moving to another prefix, adding one to a
file-only config, removing it, and a new source that cannot be read (the Consul test server,
lb in-process and as `lb run --workers 2`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time

import aiohttp
import pytest
from conftest import LB, RawBackend, backends, free_port
from consul_server import ConsulTestServer
from test_config_consul import (
    FOLLOW,
    PREFIX,
    ROUTES,
    admin_json,
    answered_by,
    backend_ports,
    kv_lb,
    local_yaml,
    metrics,
    put,
    services_doc,
    until,
)

from lb.config.kv import KvSnapshot, kv_documents, write_cache
from lb.discovery import kvconfig
from lb.discovery.kvconfig import load_from_source
from lb.server import Server
from lb.workers.admin import RELOAD_CONFIRM_S

NEXT = "lb/next/"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)
    monkeypatch.delenv("CONSUL_HTTP_ADDR", raising=False)


def put_next(consul: ConsulTestServer, name: str, text: str) -> None:
    consul.kv_put(NEXT + name, text.encode())


def next_snapshot(be: RawBackend, read_at: float) -> KvSnapshot:
    docs = [
        (NEXT + "10-services", services_doc(be).encode()),
        (NEXT + "20-routes", ROUTES.encode()),
    ]
    return KvSnapshot(NEXT, 9, kv_documents(docs), read_at)


async def post_reload(admin: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s, s.post(admin + "/api/reload") as r:
        return r.status, await r.json()


async def source_status(lb: LB) -> dict | None:
    return (await admin_json(lb, "/api/status"))["config_source"]


async def test_a_reload_moves_to_another_prefix(tmp_path, consul):
    async with backends(3) as (a, b, c):
        put(consul, "10-services", services_doc(a))
        put(consul, "20-routes", ROUTES)
        put_next(consul, "10-services", services_doc(b))
        put_next(consul, "20-routes", ROUTES.replace("service: app", "service: nope"))
        async with kv_lb(tmp_path, consul.address) as lb:
            old = lb.server.source.watch
            await until(lambda: old.synced)
            lb.config_path.write_text(lb.config_path.read_text().replace(PREFIX, NEXT))
            # The new prefix's documents are validated like any reload: refused, nothing moves.
            code, body = await post_reload(lb.admin)
            assert code == 400
            assert body["errors"][0].startswith("consul:lb/next/20-routes:4:14: routes[0].service")
            assert lb.server.source.watch is old and await answered_by(lb) == a.port

            put_next(consul, "20-routes", ROUTES)
            code, body = await post_reload(lb.admin)
            assert code == 200, body
            assert await answered_by(lb) == b.port
            new = lb.server.source.watch
            assert new is not old and new.prefix == NEXT
            await until(lambda: new.synced)
            status = (await source_status(lb))["consul"]
            assert status["prefix"] == NEXT and status["stale_seconds"] == 0
            assert status["keys"] == ["consul:lb/next/10-services", "consul:lb/next/20-routes"]
            assert status["booted_from_cache"] is False and status["error"] is None
            cache = tmp_path / "lb-kv-cache.json"
            assert json.loads(cache.read_text())["prefix"] == NEXT

            # An edit under the new prefix applies; one under the old prefix no longer does.
            put_next(consul, "10-services", services_doc(c))
            await until(lambda: backend_ports(lb) == {c.port}, FOLLOW)
            digest = lb.server.runtime.loaded.digest
            put(consul, "10-services", services_doc(a))
            await asyncio.sleep(0.5)
            assert lb.server.runtime.loaded.digest == digest
            assert await answered_by(lb) == c.port
            assert "lb_config_source_stale_seconds 0.0" in await metrics(lb)


async def test_config_source_added_to_a_file_only_config_then_removed(tmp_path, consul):
    async with backends(3) as (a, b, c):
        put(consul, "10-services", services_doc(b))
        put(consul, "20-routes", ROUTES)
        port, admin_port = free_port(), free_port()
        path = tmp_path / "lb.yaml"
        listener = f'listeners:\n  - name: web\n    bind: "127.0.0.1:{port}"\n'
        file_only = f'{listener}admin:\n  bind: "127.0.0.1:{admin_port}"\n' + services_doc(a)
        file_only += ROUTES
        path.write_text(file_only)
        server = Server(str(path), await load_from_source(str(path)))
        await server.start()
        lb = LB(server, path, port, admin_port)
        try:
            assert await answered_by(lb) == a.port
            assert server.source.watch is None and await source_status(lb) is None
            assert "lb_config_source" not in await metrics(lb)

            # Added (SIGHUP): the routing config now comes from the prefix, and is followed.
            path.write_text(local_yaml(consul.address, None, port=port, admin_port=admin_port))
            reloads = server.reloads["success"]
            os.kill(os.getpid(), signal.SIGHUP)
            await until(lambda: server.reloads["success"] > reloads)
            assert await answered_by(lb) == b.port
            watch = server.source.watch
            assert watch is not None and watch.prefix == PREFIX
            await until(lambda: watch.synced)
            assert (await source_status(lb))["consul"]["prefix"] == PREFIX
            assert "lb_config_source_stale_seconds 0.0" in await metrics(lb)
            put(consul, "10-services", services_doc(c))
            await until(lambda: backend_ports(lb) == {c.port}, FOLLOW)

            # Removed: the config is the local files alone, and Consul is not followed.
            path.write_text(file_only)
            ok, errors = await server.reload()
            assert ok, errors
            assert await answered_by(lb) == a.port
            assert server.source.watch is None and server.source.client is None
            assert await source_status(lb) is None
            assert "lb_config_source" not in await metrics(lb)
            digest = server.runtime.loaded.digest
            put(consul, "10-services", services_doc(b))
            await asyncio.sleep(0.5)
            assert server.runtime.loaded.digest == digest
        finally:
            await server.shutdown()


async def test_an_unreadable_new_source_is_refused_and_the_old_one_kept(tmp_path, consul):
    async with backends(3) as (a, b, c):
        put(consul, "10-services", services_doc(a))
        put(consul, "20-routes", ROUTES)
        async with kv_lb(tmp_path, consul.address, cache=False) as lb:
            source = lb.server.source
            old = source.watch
            await until(lambda: old.synced)
            local = lb.config_path.read_text()
            dead = f"http://127.0.0.1:{free_port()}"
            lb.config_path.write_text(local.replace(consul.address, dead))
            ok, errors = await lb.server.reload()
            assert not ok and len(errors) == 1
            assert errors[0].startswith(
                f"{lb.config_path}:7:3: config_source: Consul unreachable at {dead}: "
            )
            assert errors[0].endswith("and config_source.consul has no cache to reload from")
            assert source.watch is old and source.client.address == consul.address
            # A cache of another prefix does not stand in for it.
            other = tmp_path / "other-cache.json"
            docs = kv_documents([("lb/other/x", b"{}\n")])
            write_cache(str(other), dead, KvSnapshot("lb/other/", 7, docs, time.time()))
            lb.config_path.write_text(local.replace(consul.address, dead) + f"    cache: {other}\n")
            ok, errors = await lb.server.reload()
            assert not ok
            assert (
                f'{other}:1:1: KV cache: it holds the prefix "lb/other/", not "lb/config/"'
                in errors[0]
            )
            # The old watch keeps going. While the files name the new source, every reload
            # (an edit under the old prefix too) tries it again and is refused...
            put(consul, "10-services", services_doc(b))
            await until(lambda: b.address.encode() in source.latest.documents[0][1], FOLLOW)
            ok, errors = await lb.server.reload()
            assert not ok and "KV cache: it holds the prefix" in errors[0]
            assert source.watch is old and backend_ports(lb) == {a.port}
            # ... and once they name the old one again, its newest documents apply.
            lb.config_path.write_text(local)
            ok, errors = await lb.server.reload()
            assert ok, errors
            assert source.watch is old and await answered_by(lb) == b.port
            put(consul, "10-services", services_doc(c))
            await until(lambda: backend_ports(lb) == {c.port}, FOLLOW)
            assert lb.server.last_reload_ok


async def test_an_unreachable_new_source_starts_from_its_cache(tmp_path, consul):
    async with backends(2) as (a, b):
        put(consul, "10-services", services_doc(a))
        put(consul, "20-routes", ROUTES)
        async with kv_lb(tmp_path, consul.address, cache=False) as lb:
            await until(lambda: lb.server.source.watch.synced)
            dead = f"http://127.0.0.1:{free_port()}"
            cache = tmp_path / "next-cache.json"
            write_cache(str(cache), dead, next_snapshot(b, time.time() - 60))
            moved = lb.config_path.read_text().replace(consul.address, dead).replace(PREFIX, NEXT)
            lb.config_path.write_text(moved + f"    cache: {cache}\n")
            ok, errors = await lb.server.reload()
            assert ok, errors
            assert await answered_by(lb) == b.port
            watch = lb.server.source.watch
            assert watch.prefix == NEXT and watch.client.address == dead
            await until(lambda: watch.stale, 3)
            status = (await source_status(lb))["consul"]
            assert status["prefix"] == NEXT and status["address"] == dead
            assert status["booted_from_cache"] is True and status["stale_seconds"] >= 60
            assert "unreachable" in status["error"]
            text = await metrics(lb)
            stale = next(ln for ln in text.splitlines() if ln.startswith("lb_config_source_stale"))
            assert float(stale.split()[1]) >= 60


async def test_a_new_source_that_does_not_answer_is_refused_in_bounded_time(
    tmp_path, consul, monkeypatch
):
    monkeypatch.setattr(kvconfig, "RELOAD_READ_TIMEOUT", 0.5)
    async with backends(1) as (a,):
        put(consul, "10-services", services_doc(a))
        put(consul, "20-routes", ROUTES)
        with socket.socket() as silent:  # accepts connections (the backlog), never answers
            silent.bind(("127.0.0.1", 0))
            silent.listen(8)
            mute = f"http://127.0.0.1:{silent.getsockname()[1]}"
            async with kv_lb(tmp_path, consul.address, cache=False) as lb:
                old = lb.server.source.watch
                text = lb.config_path.read_text()
                lb.config_path.write_text(text.replace(consul.address, mute))
                start = time.monotonic()
                ok, errors = await lb.server.reload()
                assert time.monotonic() - start < 3
                assert not ok
                assert errors == [
                    f"{lb.config_path}:7:3: config_source: Consul at {mute} did not answer "
                    "within 0.5 s, and config_source.consul has no cache to reload from"
                ]
                assert lb.server.source.watch is old and await answered_by(lb) == a.port


async def test_workers_follow_a_changed_config_source(tmp_path, consul):
    """`lb run --workers 2`: the supervisor validates the move with the same loader, and each
    worker moves its own watch."""
    async with backends(3) as (a, b, c):
        put(consul, "10-services", services_doc(a))
        put(consul, "20-routes", ROUTES)
        put_next(consul, "10-services", services_doc(b))
        put_next(consul, "20-routes", ROUTES)
        port, admin_port = free_port(), free_port()
        path = tmp_path / "lb.yaml"
        local = local_yaml(consul.address, None, port=port, admin_port=admin_port)
        path.write_text(local)
        lb = LB(None, path, port, admin_port)  # type: ignore[arg-type]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "lb", "run", "-c", str(path), "--workers", "2",
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip

        async def all_answer(port: int) -> bool:
            for _ in range(8):  # fresh connections: the kernel spreads them over the workers
                with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                    if await answered_by(lb) == port:
                        continue
                return False
            return True

        async def until_all_answer(port: int, timeout: float) -> None:
            deadline = time.monotonic() + timeout
            while not await all_answer(port):
                assert time.monotonic() < deadline, f"not every worker answers from {port}"
                await asyncio.sleep(0.05)

        async def ready() -> bool:
            with contextlib.suppress(aiohttp.ClientError):
                async with aiohttp.ClientSession() as s, s.get(lb.admin + "/readyz") as r:
                    return r.status == 200  # every worker runs
            return False

        try:
            deadline = time.monotonic() + 30
            while not await ready():
                assert time.monotonic() < deadline, "the workers did not start"
                await asyncio.sleep(0.1)
            await until_all_answer(a.port, 5)
            path.write_text(local.replace(PREFIX, NEXT))
            code, body = await post_reload(lb.admin)
            assert code == 200, body
            assert len(body["workers"]) == 2 and all(w["ok"] for w in body["workers"])
            assert await all_answer(b.port)
            assert (await source_status(lb))["consul"]["prefix"] == NEXT
            await asyncio.sleep(0.3)  # every worker's new watch is parked on the prefix's index
            put_next(consul, "10-services", services_doc(c))
            await until_all_answer(c.port, 5)
            put(consul, "10-services", services_doc(a))
            await asyncio.sleep(0.5)
            assert await all_answer(c.port)
            # A new source that cannot be read is refused by the supervisor: no worker moves.
            dead = f"http://127.0.0.1:{free_port()}"
            path.write_text(local.replace(PREFIX, NEXT).replace(consul.address, dead))
            code, body = await post_reload(lb.admin)
            assert code == 400
            assert body["errors"][0].startswith(f"{path}:7:3: config_source: Consul unreachable")
            await asyncio.sleep(0.3)
            assert await all_answer(c.port)
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 30)


def test_a_workers_read_fits_in_what_the_supervisor_waits() -> None:
    assert 0 < kvconfig.RELOAD_READ_TIMEOUT < RELOAD_CONFIRM_S
