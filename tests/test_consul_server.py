"""The Consul test server behaves as shared/consul-api.md says Consul does, over real HTTP."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import consul
import consul.aio
import pytest
from aiohttp import web
from consul_server import (
    CRITICAL,
    KV_MAX_VALUE_SIZE,
    PASSING,
    WARNING,
    ConsulTestServer,
    blocking_duration,
    parse_bool,
    parse_duration,
)


@pytest.fixture
def server(consul: ConsulTestServer) -> ConsulTestServer:
    return consul


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def pyconsul(
    server: ConsulTestServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[consul.aio.Consul]:
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)
    client = consul.aio.Consul(host="127.0.0.1", port=server.port)
    yield client
    await client.close()


async def get(
    http: aiohttp.ClientSession, server: ConsulTestServer, path: str, **kw: Any
) -> tuple[int, dict[str, str], Any]:
    async with http.get(server.address + path, **kw) as resp:
        text = await resp.text()
        body: Any = text
        if resp.content_type == "application/json":
            body = await resp.json()
        return resp.status, dict(resp.headers), body


async def put(
    http: aiohttp.ClientSession, server: ConsulTestServer, path: str, **kw: Any
) -> tuple[int, str]:
    async with http.put(server.address + path, **kw) as resp:
        return resp.status, await resp.text()


def ids(entries: list[dict]) -> set[str]:
    return {e["Service"]["ID"] for e in entries}


# ----- parsing -----


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10s", 10), ("5m", 300), ("1m30s", 90), ("500ms", 0.5), ("0", 0), ("1.5h", 5400)],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "10x", "s", "1m 30s", "ten"])
def test_bad_go_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_go_bools() -> None:
    assert parse_bool("True") and parse_bool("1") and parse_bool("t")
    assert not parse_bool("FALSE") and not parse_bool("0")
    with pytest.raises(ValueError):
        parse_bool("yes")


def test_blocking_duration_default_cap_and_jitter() -> None:
    top = lambda lo, hi: hi  # noqa: E731 - the largest jitter Consul can add
    assert blocking_duration(0, top) == pytest.approx(300 * 17 / 16)
    assert blocking_duration(-1, top) == pytest.approx(300 * 17 / 16)
    assert blocking_duration(1200, top) == pytest.approx(600 * 17 / 16)
    assert blocking_duration(10, lambda lo, hi: lo) == 10
    for _ in range(100):
        assert 10 <= blocking_duration(10) <= 10 * 17 / 16


# ----- every endpoint -----


async def test_read_headers_and_consul_always_listed(server, http) -> None:
    status, headers, body = await get(http, server, "/v1/catalog/services")
    assert status == 200
    assert int(headers["X-Consul-Index"]) >= 1
    assert headers["X-Consul-KnownLeader"] == "true"
    assert headers["X-Consul-LastContact"] == "0"
    assert body == {"consul": []}


async def test_index_is_never_zero(http) -> None:
    srv = ConsulTestServer()
    srv.reset_index(1)
    await srv.start()
    try:
        for path in ("/v1/health/service/nothing", "/v1/catalog/services", "/v1/kv/missing"):
            _, headers, _ = await get(http, srv, path)
            assert int(headers["X-Consul-Index"]) >= 1, path
    finally:
        await srv.stop()


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("index=5&wait=5x", "Invalid wait time"),
        ("index=5&wait=10", "Invalid wait time"),
        ("index=abc", "Invalid index"),
        ("index=-1", "Invalid index"),
        ("stale&consistent", "Cannot specify ?stale with ?consistent, conflicting semantics."),
        ("passing=maybe", "Invalid value for ?passing"),
    ],
)
async def test_bad_read_parameters_are_400(server, http, query: str, reason: str) -> None:
    status, _, body = await get(http, server, f"/v1/health/service/web?{query}")
    assert (status, body) == (400, reason)


async def test_acl_tokens_from_query_header_and_bearer(http) -> None:
    srv = ConsulTestServer(acl_tokens={"good"})
    await srv.start()
    try:
        path = "/v1/health/service/web"
        assert (await get(http, srv, path))[::2] == (403, "Permission denied")
        assert (await get(http, srv, path + "?token=bad"))[0] == 403
        assert (await get(http, srv, path + "?token=good"))[0] == 200
        assert (await get(http, srv, path, headers={"X-Consul-Token": "good"}))[0] == 200
        bearer = {"Authorization": "Bearer good"}
        assert (await get(http, srv, path, headers=bearer))[0] == 200
        # ?token= comes first, then X-Consul-Token, then Authorization.
        assert (await get(http, srv, path + "?token=bad", headers={"X-Consul-Token": "good"}))[
            0
        ] == 403
        both = {"X-Consul-Token": "bad", "Authorization": "Bearer good"}
        assert (await get(http, srv, path, headers=both))[0] == 403
        status, _ = await put(http, srv, "/v1/agent/service/register", json={"Name": "web"})
        assert status == 403
        assert (await put(http, srv, "/v1/kv/a?token=good", data=b"x"))[0] == 200
        srv.acl_tokens = None
        assert (await get(http, srv, path))[0] == 200
    finally:
        await srv.stop()


async def test_datacenter(server, http) -> None:
    assert (await get(http, server, "/v1/catalog/services?dc=dc1"))[0] == 200
    status, _, body = await get(http, server, "/v1/catalog/services?dc=elsewhere")
    assert (status, body) == (500, "No path to datacenter")
    assert await put(http, server, "/v1/kv/k?dc=elsewhere", data=b"x") == (
        500,
        "No path to datacenter",
    )
    assert (await get(http, server, "/v1/kv/k?dc=elsewhere"))[0] == 500


async def test_consistency_modes_and_cache_headers(server, http) -> None:
    _, headers, _ = await get(http, server, "/v1/catalog/services?stale")
    assert headers["X-Consul-Effective-Consistency"] == "stale"
    _, headers, _ = await get(http, server, "/v1/catalog/services?consistent")
    assert headers["X-Consul-Effective-Consistency"] == "consistent"
    _, first, _ = await get(http, server, "/v1/health/service/web?cached")
    _, second, _ = await get(http, server, "/v1/health/service/web?cached")
    assert (first["X-Cache"], second["X-Cache"]) == ("MISS", "HIT")
    assert "Age" in second
    assert (await get(http, server, "/v1/health/service/web?cached&consistent"))[0] == 400


# ----- blocking queries -----


async def test_blocking_query_returns_when_the_index_moves(server, http) -> None:
    _, headers, body = await get(http, server, "/v1/health/service/web")
    index = int(headers["X-Consul-Index"])
    assert body == []

    async def later() -> None:
        await asyncio.sleep(0.2)
        server.register("web", id="web-1", port=80)

    started = time.monotonic()
    task = asyncio.create_task(later())
    _, headers, body = await get(http, server, f"/v1/health/service/web?index={index}&wait=10s")
    await task
    assert time.monotonic() - started < 2
    assert int(headers["X-Consul-Index"]) > index
    assert ids(body) == {"web-1"}


async def test_blocking_query_times_out_with_an_unchanged_answer(server, http) -> None:
    server.register("web", id="web-1", port=80)
    _, headers, body = await get(http, server, "/v1/health/service/web")
    index = headers["X-Consul-Index"]
    started = time.monotonic()
    status, headers2, body2 = await get(
        http, server, f"/v1/health/service/web?index={index}&wait=500ms"
    )
    elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 0.5 * 17 / 16 + 0.3
    # A return is no proof of change: same index, same body.
    assert (status, headers2["X-Consul-Index"], body2) == (200, index, body)


async def test_index_zero_does_not_block(server, http) -> None:
    started = time.monotonic()
    await get(http, server, "/v1/health/service/web?index=0&wait=60s")
    assert time.monotonic() - started < 10  # far from the minute a blocking call would take


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s.set_check("service:web-1", CRITICAL),
        lambda s: s.set_node_health("consul-test", CRITICAL),
        lambda s: s.set_maintenance("web-1", True),
        lambda s: s.set_node_maintenance(True),
        lambda s: s.deregister("web-1"),
        lambda s: s.register("web", id="web-2", port=81),
        lambda s: s.touch_service("web"),
    ],
    ids=["check", "node", "maintenance", "node-maintenance", "deregister", "register", "touch"],
)
async def test_every_change_of_the_watched_data_wakes_a_waiter(server, http, change) -> None:
    server.register("web", id="web-1", port=80)
    _, headers, _ = await get(http, server, "/v1/health/service/web")
    index = int(headers["X-Consul-Index"])
    loop = asyncio.get_running_loop()
    loop.call_later(0.1, change, server)
    started = time.monotonic()
    _, headers, _ = await get(http, server, f"/v1/health/service/web?index={index}&wait=5s")
    assert time.monotonic() - started < 2
    assert int(headers["X-Consul-Index"]) > index


async def test_unrelated_writes_do_not_return_a_service_watch(server, http) -> None:
    server.register("web", id="web-1", port=80)
    _, headers, _ = await get(http, server, "/v1/health/service/web")
    index = headers["X-Consul-Index"]

    async def churn() -> None:
        for i in range(10):
            server.kv_put(f"k{i}", "v")
            server.register("other", id=f"other-{i}", port=i + 1)
            await asyncio.sleep(0.02)

    task = asyncio.create_task(churn())
    started = time.monotonic()
    _, headers, _ = await get(http, server, f"/v1/health/service/web?index={index}&wait=500ms")
    await task
    assert time.monotonic() - started >= 0.5
    assert headers["X-Consul-Index"] == index


async def test_global_index_scope_moves_every_index(http) -> None:
    srv = ConsulTestServer(index_scope="global")
    await srv.start()
    try:
        _, headers, _ = await get(http, srv, "/v1/health/service/web")
        index = int(headers["X-Consul-Index"])
        asyncio.get_running_loop().call_later(0.1, srv.kv_put, "unrelated", "x")
        _, headers, body = await get(http, srv, f"/v1/health/service/web?index={index}&wait=5s")
        assert int(headers["X-Consul-Index"]) > index
        assert body == []
    finally:
        await srv.stop()


async def test_reset_index_returns_waiters_with_a_lower_index(server, http) -> None:
    server.set_index_floor(1000)
    server.register("web", id="web-1", port=80)
    _, headers, _ = await get(http, server, "/v1/health/service/web")
    index = int(headers["X-Consul-Index"])
    assert index > 1000
    asyncio.get_running_loop().call_later(0.1, server.reset_index, 5)
    started = time.monotonic()
    _, headers, body = await get(http, server, f"/v1/health/service/web?index={index}&wait=5s")
    assert time.monotonic() - started < 2
    assert int(headers["X-Consul-Index"]) <= 5
    assert ids(body) == {"web-1"}
    server.set_check("service:web-1", WARNING)
    _, headers, _ = await get(http, server, "/v1/health/service/web")
    assert int(headers["X-Consul-Index"]) == 6


async def test_catalog_services_blocks_and_lists_tags(server, http) -> None:
    _, headers, _ = await get(http, server, "/v1/catalog/services")
    index = int(headers["X-Consul-Index"])
    loop = asyncio.get_running_loop()
    loop.call_later(0.1, lambda: server.register("web", id="w1", tags=["b", "a"]))
    loop.call_later(0.1, lambda: server.register("web", id="w2", tags=["a", "c"]))
    _, headers, body = await get(http, server, f"/v1/catalog/services?index={index}&wait=5s")
    assert int(headers["X-Consul-Index"]) > index
    assert body["consul"] == []
    # Both writes land in the same loop turn, before the waiter resumes.
    assert body["web"] == ["a", "b", "c"]


# ----- /v1/health/service -----


async def test_passing_parameter_semantics(server, http) -> None:
    server.register("web", id="ok", port=1)
    server.register("web", id="warn", port=2, status=WARNING)
    server.register("web", id="bad", port=3, status=CRITICAL)
    every = {"ok", "warn", "bad"}
    for query, expected in [
        ("", every),
        ("?passing", {"ok"}),
        ("?passing=", {"ok"}),
        ("?passing=true", {"ok"}),
        ("?passing=1", {"ok"}),
        ("?passing=false", every),
        ("?passing=0", every),
    ]:
        status, _, body = await get(http, server, "/v1/health/service/web" + query)
        assert status == 200
        assert ids(body) == expected, query


async def test_node_and_maintenance_checks_drop_instances(server, http) -> None:
    server.register("web", id="a", port=1, node="host-a", node_address="10.0.0.1")
    server.register("web", id="b", port=2, node="host-b", node_address="10.0.0.2")
    server.register("web", id="c", port=3)
    path = "/v1/health/service/web?passing"
    assert ids((await get(http, server, path))[2]) == {"a", "b", "c"}

    server.set_node_health("host-a", CRITICAL)
    assert ids((await get(http, server, path))[2]) == {"b", "c"}
    server.set_node_health("host-a", PASSING)

    status, _ = await put(http, server, "/v1/agent/service/maintenance/c?enable=true&reason=deploy")
    assert status == 200
    _, _, every = await get(http, server, "/v1/health/service/web")
    maint = [ck for e in every for ck in e["Checks"] if ck["CheckID"] == "_service_maintenance:c"]
    assert maint and maint[0]["Status"] == CRITICAL and maint[0]["Notes"] == "deploy"
    assert ids((await get(http, server, path))[2]) == {"a", "b"}
    await put(http, server, "/v1/agent/service/maintenance/c?enable=false")
    assert ids((await get(http, server, path))[2]) == {"a", "b", "c"}

    server.set_node_maintenance(True, node="host-b")
    assert ids((await get(http, server, path))[2]) == {"a", "c"}
    server.set_node_maintenance(False, node="host-b")
    assert ids((await get(http, server, path))[2]) == {"a", "b", "c"}


async def test_tags_are_anded_and_case_insensitive(server, http) -> None:
    server.register("web", id="a", tags=["v1", "blue"])
    server.register("web", id="b", tags=["v1", "green"])
    server.register("web", id="c", tags=["v2", "blue"])

    async def with_tags(*tags: str) -> set[str]:
        query = "&".join(f"tag={t}" for t in tags)
        return ids((await get(http, server, f"/v1/health/service/web?{query}"))[2])

    assert await with_tags("v1") == {"a", "b"}
    assert await with_tags("v1", "blue") == {"a"}
    assert await with_tags("V1", "BLUE") == {"a"}
    assert await with_tags("v3") == set()


async def test_entry_shape(server, http) -> None:
    server.register("bare", id="bare-1", port=9000)  # no tags, no address, no weights
    server.register(
        "web",
        id="web-1",
        address="10.1.10.12",
        port=8000,
        tags=["v1"],
        meta={"version": "1"},
        weights={"Passing": 10},
    )
    _, headers, body = await get(http, server, "/v1/health/service/unknown")
    assert body == [] and int(headers["X-Consul-Index"]) >= 1

    _, _, (bare,) = await get(http, server, "/v1/health/service/bare")
    assert bare["Service"]["Tags"] == []
    assert bare["Service"]["Address"] == ""
    assert bare["Node"]["Address"] == "127.0.0.1"
    assert bare["Service"]["Weights"] == {"Passing": 1, "Warning": 1}
    assert {c["CheckID"] for c in bare["Checks"]} == {"serfHealth", "service:bare-1"}

    _, _, (web,) = await get(http, server, "/v1/health/service/web")
    svc = web["Service"]
    assert (svc["ID"], svc["Service"], svc["Address"], svc["Port"]) == (
        "web-1",
        "web",
        "10.1.10.12",
        8000,
    )
    assert svc["Meta"] == {"version": "1"}
    assert svc["Weights"] == {"Passing": 10, "Warning": 1}
    service_check = next(c for c in web["Checks"] if c["ServiceID"] == "web-1")
    assert service_check["ServiceTags"] == ["v1"]
    for key in ("ID", "Node", "Address", "Datacenter", "TaggedAddresses", "Meta"):
        assert key in web["Node"]


# ----- agent endpoints -----


async def test_register_camel_and_snake_case(server, http) -> None:
    camel = {
        "Name": "web",
        "ID": "web-1",
        "Tags": ["v1"],
        "Address": "10.0.0.1",
        "Port": 80,
        "Meta": {"Some_Key": "x"},
        "Weights": {"Passing": 5, "Warning": 2},
        "Check": {"TTL": "10s", "DeregisterCriticalServiceAfter": "1m"},
    }
    snake = {
        "name": "web",
        "id": "web-2",
        "tags": ["v2"],
        "address": "10.0.0.2",
        "port": 81,
        "enable_tag_override": True,
        "checks": [
            {"ttl": "10s", "deregister_critical_service_after": "1m", "status": "passing"},
            {"check_id": "web-2-http", "http": "http://127.0.0.1:1/", "interval": "10s"},
        ],
    }
    for body in (camel, snake):
        status, text = await put(http, server, "/v1/agent/service/register", json=body)
        assert (status, text) == (200, "")
    status, _ = await put(http, server, "/v1/agent/service/register", json={"name": "solo"})
    assert status == 200

    assert server.instances[("consul-test", "solo")].id == "solo"  # ID defaults to Name
    one = server.instances[("consul-test", "web-1")]
    assert (one.tags, one.address, one.port, one.meta) == (
        ["v1"],
        "10.0.0.1",
        80,
        {"Some_Key": "x"},
    )
    assert one.weights == {"Passing": 5, "Warning": 2}
    chk = server.checks[("consul-test", "service:web-1")]
    assert (chk.type, chk.ttl, chk.status, chk.deregister_after) == ("ttl", 10, CRITICAL, 60)
    two = server.instances[("consul-test", "web-2")]
    assert two.enable_tag_override
    assert server.checks[("consul-test", "service:web-2:1")].status == PASSING
    assert server.checks[("consul-test", "web-2-http")].type == "http"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"ID": "x"}, "Missing service name"),
        (
            {"Name": "w", "Weights": {"Passing": 0}},
            "Invalid Weights: Passing must be greater than 0",
        ),
        ({"Name": "w", "Check": {"HTTP": "http://x/"}}, "Invalid check: Interval must be > 0"),
        ({"Name": "w", "Check": {"Notes": "no kind"}}, "Invalid check: TTL must be > 0"),
        (
            {"Name": "w", "Check": {"TTL": "1s", "Interval": "1s"}},
            "Invalid check: Interval and TTL",
        ),
        ({"Name": "w", "Check": {"Args": ["true"], "Interval": "1s"}}, "Invalid check: Scripts"),
        ({"Name": "w", "Port": "eighty"}, "Request decode failed"),
    ],
)
async def test_register_rejects_bad_definitions(server, http, body: dict, reason: str) -> None:
    status, text = await put(http, server, "/v1/agent/service/register", json=body)
    assert status == 400
    assert text.startswith(reason)


async def test_reregister_replaces_checks_only_when_asked(server, http) -> None:
    base = {"Name": "web", "ID": "web-1", "Checks": [{"TTL": "10s"}, {"TTL": "10s"}]}
    await put(http, server, "/v1/agent/service/register", json=base)
    await put(http, server, "/v1/agent/check/pass/service:web-1:1")
    one = {"Name": "web", "ID": "web-1", "Check": {"CheckID": "service:web-1:1", "TTL": "10s"}}
    await put(http, server, "/v1/agent/service/register", json=one)
    owned = {c.check_id for c in server.checks.values() if c.service_id == "web-1"}
    assert owned == {"service:web-1:1", "service:web-1:2"}
    assert server.checks[("consul-test", "service:web-1:1")].status == PASSING  # kept
    await put(http, server, "/v1/agent/service/register?replace-existing-checks", json=one)
    owned = {c.check_id for c in server.checks.values() if c.service_id == "web-1"}
    assert owned == {"service:web-1:1"}


async def test_deregister(server, http) -> None:
    server.register("web", id="web-1")
    server.set_maintenance("web-1", True)
    status, text = await put(http, server, "/v1/agent/service/deregister/web-1")
    assert (status, text) == (200, "")
    assert not any(c.service_id == "web-1" for c in server.checks.values())
    assert (await get(http, server, "/v1/health/service/web"))[2] == []
    assert (await put(http, server, "/v1/agent/service/deregister/never-was"))[0] == 200
    assert "web" not in (await get(http, server, "/v1/catalog/services"))[2]


async def test_ttl_check_updates_and_expiry(server, http) -> None:
    body = {"Name": "web", "ID": "web-1", "Check": {"TTL": "300ms"}}
    await put(http, server, "/v1/agent/service/register", json=body)
    path = "/v1/health/service/web?passing"
    assert (await get(http, server, path))[2] == []  # a new check starts critical
    for action, status in (("pass", PASSING), ("warn", WARNING), ("fail", CRITICAL)):
        assert (await put(http, server, f"/v1/agent/check/{action}/service:web-1?note=n"))[0] == 200
        chk = server.checks[("consul-test", "service:web-1")]
        assert (chk.status, chk.output) == (status, "n")
    update = {"Status": "passing", "Output": "all good"}
    assert (await put(http, server, "/v1/agent/check/update/service:web-1", json=update))[0] == 200
    assert ids((await get(http, server, path))[2]) == {"web-1"}
    await asyncio.sleep(0.5)
    chk = server.checks[("consul-test", "service:web-1")]
    assert (chk.status, chk.output) == (CRITICAL, "TTL expired")

    status, text = await put(http, server, "/v1/agent/check/pass/nope")
    assert status == 404 and text.startswith("Unknown check ID")
    server.register("plain", id="plain-1")  # its check is not a TTL check
    assert (await put(http, server, "/v1/agent/check/pass/service:plain-1"))[0] == 500
    bad = {"Status": "fine"}
    assert (await put(http, server, "/v1/agent/check/update/service:web-1", json=bad))[0] == 400


async def test_http_and_tcp_checks_are_probed(server, http) -> None:
    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def busy(request: web.Request) -> web.Response:
        return web.Response(status=429)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/busy", busy)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = closed.getsockname()[1]
    try:
        checks = [
            {"CheckID": "up", "HTTP": f"http://127.0.0.1:{port}/healthz", "Interval": "10s"},
            {"CheckID": "busy", "HTTP": f"http://127.0.0.1:{port}/busy", "Interval": "10s"},
            {"CheckID": "down", "HTTP": f"http://127.0.0.1:{dead}/", "Interval": "10s"},
            {"CheckID": "tcp-up", "TCP": f"127.0.0.1:{port}", "Interval": "10s"},
            {"CheckID": "tcp-down", "TCP": f"127.0.0.1:{dead}", "Interval": "10s"},
        ]
        body = {"Name": "web", "Port": port, "Checks": checks}
        await put(http, server, "/v1/agent/service/register", json=body)
        expected = {
            "up": PASSING,
            "busy": WARNING,
            "down": CRITICAL,
            "tcp-up": PASSING,
            "tcp-down": CRITICAL,
        }
        for _ in range(50):
            seen = {k: server.checks[("consul-test", k)].status for k in expected}
            outputs = [server.checks[("consul-test", k)].output for k in expected]
            if seen == expected and all(outputs):
                break
            await asyncio.sleep(0.05)
        assert seen == expected
        assert "200 OK" in server.checks[("consul-test", "up")].output
    finally:
        await runner.cleanup()


async def test_maintenance_endpoint_errors(server, http) -> None:
    server.register("web", id="web-1")
    path = "/v1/agent/service/maintenance"
    assert await put(http, server, f"{path}/web-1") == (400, "Missing value for enable")
    assert (await put(http, server, f"{path}/web-1?enable=maybe"))[0] == 400
    status, text = await put(http, server, f"{path}/ghost?enable=true")
    assert status == 404 and "ghost" in text
    assert (await put(http, server, "/v1/agent/maintenance?enable=1"))[0] == 200
    assert (await get(http, server, "/v1/health/service/web?passing"))[2] == []


# ----- KV -----


async def test_kv_get_put_delete(server, http) -> None:
    status, headers, _ = await get(http, server, "/v1/kv/lb/config")
    assert status == 404 and int(headers["X-Consul-Index"]) >= 1
    assert await put(http, server, "/v1/kv/lb/config?flags=7", data=b"hello") == (200, "true")
    status, headers, (entry,) = await get(http, server, "/v1/kv/lb/config")
    assert status == 200
    assert base64.b64decode(entry["Value"]) == b"hello"
    assert entry["Flags"] == 7 and entry["Key"] == "lb/config"
    assert int(headers["X-Consul-Index"]) == entry["ModifyIndex"]
    async with http.get(server.address + "/v1/kv/lb/config?raw") as resp:
        assert await resp.read() == b"hello"
        assert "X-Consul-Index" in resp.headers
    await put(http, server, "/v1/kv/lb/empty", data=b"")
    assert (await get(http, server, "/v1/kv/lb/empty"))[2][0]["Value"] is None
    async with http.delete(server.address + "/v1/kv/lb/config") as resp:
        assert (resp.status, await resp.text()) == (200, "true")
    assert (await get(http, server, "/v1/kv/lb/config"))[0] == 404


async def test_kv_recurse_keys_and_indexes(server, http) -> None:
    for key in ("app/a", "app/sub/b", "app/sub/c", "other/x"):
        await put(http, server, f"/v1/kv/{key}", data=key.encode())
    _, headers, body = await get(http, server, "/v1/kv/app/?recurse")
    assert [e["Key"] for e in body] == ["app/a", "app/sub/b", "app/sub/c"]
    assert int(headers["X-Consul-Index"]) == max(e["ModifyIndex"] for e in body)
    _, _, keys = await get(http, server, "/v1/kv/app/?keys&separator=/")
    assert keys == ["app/a", "app/sub/"]
    _, _, keys = await get(http, server, "/v1/kv/app/?keys")
    assert keys == ["app/a", "app/sub/b", "app/sub/c"]
    assert (await get(http, server, "/v1/kv/none/?recurse"))[0] == 404
    async with http.delete(server.address + "/v1/kv/app/sub/?recurse") as resp:
        assert await resp.text() == "true"
    _, headers2, body = await get(http, server, "/v1/kv/app/?recurse")
    assert [e["Key"] for e in body] == ["app/a"]
    # The deletion under the prefix moved its index even though app/a did not change.
    assert int(headers2["X-Consul-Index"]) > int(headers["X-Consul-Index"])


async def test_kv_cas(server, http) -> None:
    assert await put(http, server, "/v1/kv/k?cas=0", data=b"1") == (200, "true")
    assert await put(http, server, "/v1/kv/k?cas=0", data=b"2") == (200, "false")
    _, _, (entry,) = await get(http, server, "/v1/kv/k")
    index = entry["ModifyIndex"]
    assert await put(http, server, f"/v1/kv/k?cas={index + 100}", data=b"3") == (200, "false")
    assert await put(http, server, f"/v1/kv/k?cas={index}", data=b"3") == (200, "true")
    async with http.delete(server.address + f"/v1/kv/k?cas={index}") as resp:
        assert await resp.text() == "false"


async def test_kv_limits_and_key_rules(server, http) -> None:
    assert (await put(http, server, "/v1/kv/big", data=b"x" * KV_MAX_VALUE_SIZE))[0] == 200
    status, text = await put(http, server, "/v1/kv/big", data=b"x" * (KV_MAX_VALUE_SIZE + 1))
    assert status == 413 and "too large" in text
    assert (await put(http, server, "/v1/kv/lb/config.json", data=b"{}"))[0] == 400
    assert (await put(http, server, "/v1/kv/", data=b"x"))[0] == 400


async def test_kv_blocking_get(server, http) -> None:
    await put(http, server, "/v1/kv/k", data=b"1")
    _, headers, _ = await get(http, server, "/v1/kv/k")
    index = headers["X-Consul-Index"]
    loop = asyncio.get_running_loop()
    loop.call_later(0.1, server.kv_put, "other", "x")  # does not move k's index
    loop.call_later(0.3, server.kv_put, "k", "2")
    started = time.monotonic()
    _, headers, (entry,) = await get(http, server, f"/v1/kv/k?index={index}&wait=5s")
    assert 0.25 < time.monotonic() - started < 2
    assert base64.b64decode(entry["Value"]) == b"2"


# ----- the py-consul client against the server -----


async def test_pyconsul_register_health_and_ttl(server, pyconsul) -> None:
    ok = await pyconsul.agent.service.register(
        "web",
        service_id="web-1",
        address="10.0.0.1",
        port=80,
        tags=["v1"],
        meta={"k": "v"},
        weights={"Passing": 3, "Warning": 1},
        check=consul.Check.ttl("10s"),
    )
    assert ok is True
    index, nodes = await pyconsul.health.service("web", passing=True)
    assert nodes == []
    await pyconsul.agent.check.ttl_pass("service:web-1")
    index2, nodes = await pyconsul.health.service("web", passing=True)
    assert int(index2) > int(index)
    (entry,) = nodes
    assert entry["Service"]["Weights"] == {"Passing": 3, "Warning": 1}
    assert entry["Service"]["Address"] == "10.0.0.1"

    asyncio.get_running_loop().call_later(0.1, server.set_check, "service:web-1", CRITICAL)
    index3, nodes = await pyconsul.health.service("web", passing=True, index=index2, wait="5s")
    assert int(index3) > int(index2) and nodes == []

    await pyconsul.agent.service.maintenance("web-1", True, reason="deploy")
    _, nodes = await pyconsul.health.service("web")
    assert any(c["CheckID"] == "_service_maintenance:web-1" for c in nodes[0]["Checks"])
    await pyconsul.agent.service.maintenance("web-1", False)
    assert await pyconsul.agent.service.deregister("web-1") is True
    _, services = await pyconsul.catalog.services()
    assert services == {"consul": []}


async def test_pyconsul_http_check_definition(server, pyconsul) -> None:
    check = consul.Check.http("http://127.0.0.1:1/healthz", "10s", timeout="1s", deregister="1m")
    await pyconsul.agent.service.register("lb", service_id="lb-1", port=8080, check=check)
    chk = server.checks[("consul-test", "service:lb-1")]
    assert (chk.type, chk.target, chk.interval, chk.timeout) == (
        "http",
        "http://127.0.0.1:1/healthz",
        10,
        1,
    )


async def test_pyconsul_kv(server, pyconsul) -> None:
    index, missing = await pyconsul.kv.get("lb/config")  # 404 carries the index
    assert missing is None and int(index) >= 1
    assert await pyconsul.kv.put("lb/config", "v1") is True
    _, item = await pyconsul.kv.get("lb/config")
    assert item["Value"] == b"v1"
    assert await pyconsul.kv.put("lb/config", "v2", cas=0) is False
    await pyconsul.kv.put("lb/other", "x")
    _, items = await pyconsul.kv.get("lb/", recurse=True)
    assert [i["Key"] for i in items] == ["lb/config", "lb/other"]
    assert await pyconsul.kv.delete("lb/config") is True
    assert (await pyconsul.kv.get("lb/config"))[1] is None


async def test_pyconsul_sees_403(monkeypatch) -> None:
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)
    srv = ConsulTestServer(acl_tokens={"secret"})
    await srv.start()
    client = consul.aio.Consul(host="127.0.0.1", port=srv.port, token="wrong")
    try:
        with pytest.raises(consul.ACLPermissionDenied):
            await client.health.service("web")
        client.token = "secret"
        assert (await client.health.service("web"))[1] == []
    finally:
        await client.close()
        await srv.stop()


# ----- server lifecycle -----


async def test_requests_are_counted(server, http) -> None:
    for _ in range(3):
        await get(http, server, "/v1/health/service/web?passing")
    await get(http, server, "/v1/health/service/api")
    assert server.requests["GET /v1/health/service/web"] == 3
    assert server.requests["GET /v1/health/service/api"] == 1


async def test_stop_drops_blocking_queries_and_restart_keeps_data(server, http) -> None:
    server.register("web", id="web-1", port=80)
    _, headers, _ = await get(http, server, "/v1/health/service/web")
    pending = asyncio.create_task(
        get(http, server, f"/v1/health/service/web?index={headers['X-Consul-Index']}&wait=30s")
    )
    await asyncio.sleep(0.1)
    port = server.port
    started = time.monotonic()
    await server.stop()
    with pytest.raises(aiohttp.ClientError):
        await pending
    assert time.monotonic() - started < 2
    with pytest.raises(aiohttp.ClientConnectionError):
        await get(http, server, "/v1/health/service/web")
    await server.start(port=port)
    assert ids((await get(http, server, "/v1/health/service/web"))[2]) == {"web-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_standalone(http) -> None:
    port = free_port()
    script = Path(__file__).with_name("consul_server.py")
    proc = subprocess.Popen(
        [sys.executable, str(script), "--port", str(port), "--acl-token", "t"],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        url = f"http://127.0.0.1:{port}/v1/catalog/services?token=t"
        for _ in range(100):
            try:
                async with http.get(url) as resp:
                    assert resp.status == 200
                    assert await resp.json() == {"consul": []}
                    break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
        else:
            pytest.fail("the standalone server did not come up")
    finally:
        proc.terminate()
        proc.wait(5)
    assert proc.returncode == 0
