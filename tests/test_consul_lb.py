"""Consul discovery end to end: the Consul test server, lb in-process, real backends and traffic."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from conftest import LB, Client, RawBackend, backends, free_port, lb_yaml, ok_response, running_lb
from consul_server import CRITICAL, PASSING, ConsulTestServer

from lb.config import load, model
from lb.discovery.consul import PERMISSION_DENIED
from lb.discovery.tagroutes import plan_tag_routes
from lb.server import Server

WAIT = "2s"  # short blocking queries: a test never waits long on one
FOLLOW = 1.0  # the bound for lb to follow a change in Consul
# Consul stopped for a whole minute under load: long enough for the watch's capped backoff
# (10 s) to cycle several times while traffic keeps flowing to the last good set.
OUTAGE = 60.0


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)
    monkeypatch.delenv("CONSUL_HTTP_ADDR", raising=False)


def config(
    address: str,
    *,
    service: str = "web",
    service_extra: str = "",
    consul_extra: str = "",
    routes: str | None = None,
    port: int | None = None,
    admin_port: int | None = None,
) -> str:
    """lb_yaml's service `app`, fed by the Consul service `service`."""
    return lb_yaml(
        None,
        port=port or free_port(),
        admin_port=admin_port or free_port(),
        extra_service=f"    discovery: consul\n    consul: {{service: {service}{service_extra}}}\n",
        routes=routes,
        extra=f'consul:\n  address: "{address}"\n  wait: {WAIT}\n{consul_extra}',
    )


def register(consul: ConsulTestServer, be: RawBackend, name: str = "web", **kw: object) -> str:
    return consul.register(name, id=f"{name}-{be.port}", address="127.0.0.1", port=be.port, **kw)


def live(lb: LB, service: str = "app") -> set[int]:
    """Ports of the backends the service sends new requests to."""
    svc = lb.server.runtime.services[service]
    return {port for (_, port), b in svc.backends.items() if not b.removed}


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> float:
    """Seconds until predicate() holds; fails the test after timeout."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            pytest.fail(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


def port_of(body: bytes) -> int:
    return int(body.split()[1])


async def served(c: Client, n: int, host: str = "test", path: str = "/") -> Counter[int]:
    seen: Counter[int] = Counter()
    for _ in range(n):
        r = await c.request(host=host, path=path)
        assert r.status == 200, r
        seen[port_of(r.body)] += 1
    return seen


async def seconds_until_served(c: Client, port: int) -> float:
    """Send requests until one reaches `port`."""
    start = time.monotonic()
    while True:
        r = await c.request()
        if r.status == 200 and port_of(r.body) == port:
            return time.monotonic() - start
        if time.monotonic() - start > 5:
            pytest.fail(f"backend {port} got no traffic")
        await asyncio.sleep(0.005)


async def seconds_until_not_served(c: Client, port: int, window: int = 10) -> float:
    """Send requests until `window` answers in a row came from elsewhere; the time the last
    request to `port` was sent (0 if none was)."""
    start = time.monotonic()
    last_hit, streak = 0.0, 0
    while streak < window:
        sent = time.monotonic() - start
        r = await c.request()
        assert r.status == 200, r
        if port_of(r.body) == port:
            last_hit, streak = sent, 0
        else:
            streak += 1
        if sent > 5:
            pytest.fail(f"backend {port} kept getting traffic")
    return last_hit


async def admin_get(lb: LB, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(lb.admin + path) as r:
        return r.status, await r.text()


async def admin_status(lb: LB) -> dict:
    async with aiohttp.ClientSession() as s, s.get(lb.admin + "/api/status") as r:
        return await r.json()


# -- following Consul ----------------------------------------------------------------------------
async def test_follows_registration_health_deregistration_and_maintenance(tmp_path, consul):
    async with backends(3) as (a, b, c), running_lb(tmp_path, config(consul.address)) as lb:
        register(consul, a)
        register(consul, b)
        await until(lambda: live(lb) == {a.port, b.port})
        client = await Client.connect(lb.port)
        assert await served(client, 4) == {a.port: 2, b.port: 2}
        await asyncio.sleep(0.3)  # the watch is blocking again

        register(consul, c)
        assert await seconds_until_served(client, c.port) < FOLLOW

        consul.set_service_health(f"web-{c.port}", CRITICAL)
        assert await seconds_until_not_served(client, c.port) < FOLLOW
        assert c.port not in await served(client, 20)

        consul.set_service_health(f"web-{c.port}", PASSING)
        assert await seconds_until_served(client, c.port) < FOLLOW

        consul.deregister(f"web-{c.port}")
        assert await seconds_until_not_served(client, c.port) < FOLLOW

        consul.set_maintenance(f"web-{b.port}", True)
        assert await seconds_until_not_served(client, b.port) < FOLLOW
        assert set(await served(client, 10)) == {a.port}
        consul.set_maintenance(f"web-{b.port}", False)
        assert await seconds_until_served(client, b.port) < FOLLOW

        # Nothing passing is a real answer: the service empties and answers 503.
        consul.set_service_health(f"web-{a.port}", CRITICAL)
        consul.set_service_health(f"web-{b.port}", CRITICAL)
        await until(lambda: live(lb) == set(), FOLLOW)
        assert (await client.request()).status == 503
        client.close()


async def test_instance_weights_and_the_config_override(tmp_path, consul):
    async with backends(2) as (a, b), running_lb(tmp_path, config(consul.address)) as lb:
        register(consul, a, weights={"Passing": 3})
        register(consul, b, weights={"Passing": 1})
        await until(lambda: live(lb) == {a.port, b.port})
        client = await Client.connect(lb.port)
        assert await served(client, 40) == {a.port: 30, b.port: 10}

        watch = lb.server.runtime.services["app"].discovery
        lb.write_config(_same_ports(config(consul.address, service_extra=", weight: 5"), lb))
        ok, errors = await lb.server.reload()
        assert ok, errors
        svc = lb.server.runtime.services["app"]
        assert svc.discovery is watch  # same Consul query: the watch goes on
        assert {b.weight for b in svc.backends.values()} == {5}
        assert await served(client, 40) == {a.port: 20, b.port: 20}
        client.close()


def _same_ports(text: str, lb: LB) -> str:
    """Point a freshly built config at the running lb's ports."""
    lines = []
    for line in text.splitlines():
        if line.strip().startswith("bind:"):
            indent = line[: len(line) - len(line.lstrip())]
            port = lb.port if indent == "    " else lb.admin_port
            line = f'{indent}bind: "127.0.0.1:{port}"'
        lines.append(line)
    return "\n".join(lines) + "\n"


async def test_reload_keeps_or_restarts_watches(tmp_path, consul):
    async with backends(2) as (a, b), running_lb(tmp_path, config(consul.address)) as lb:
        register(consul, a, "web")
        register(consul, b, "web-v2")
        await until(lambda: live(lb) == {a.port})
        watch = lb.server.runtime.services["app"].discovery

        lb.write_config(_same_ports(config(consul.address, service="web-v2"), lb))
        ok, errors = await lb.server.reload()
        assert ok, errors
        new = lb.server.runtime.services["app"].discovery
        assert new is not watch and new.service == "web-v2"
        await until(lambda: live(lb) == {b.port})

        static = lb_yaml([a.address], port=lb.port, admin_port=lb.admin_port)
        lb.write_config(static)
        ok, errors = await lb.server.reload()
        assert ok, errors
        assert lb.server.runtime.services["app"].discovery is None
        assert lb.server.discovery.watches == {}
        assert live(lb) == {a.port}


# -- last known good -----------------------------------------------------------------------------
async def test_consul_outage_under_load_keeps_serving_the_same_set(tmp_path, consul):
    port = consul.port
    async with backends(2) as (a, b), running_lb(tmp_path, config(consul.address)) as lb:
        register(consul, a)
        register(consul, b)
        await until(lambda: live(lb) == {a.port, b.port})
        watch = lb.server.runtime.services["app"].discovery
        results: Counter[int] = Counter()
        done = asyncio.Event()

        async def load() -> None:
            c = await Client.connect(lb.port)
            while not done.is_set():
                results[(await c.request()).status] += 1
            c.close()

        clients = [asyncio.create_task(load()) for _ in range(4)]
        await consul.stop()
        started = time.monotonic()
        await until(lambda: watch.stale, 3)
        while time.monotonic() - started < OUTAGE:
            assert live(lb) == {a.port, b.port}
            await asyncio.sleep(0.1)
        assert watch.errors >= 3 and watch.stale
        assert "unreachable" in (watch.last_error or "")
        status = await admin_status(lb)
        app = next(s for s in status["services"] if s["name"] == "app")
        assert app["discovery_status"]["stale"] is True
        assert app["discovery_status"]["age_seconds"] >= OUTAGE - 0.5
        _, metrics = await admin_get(lb, "/metrics")
        assert 'lb_discovery_stale{service="app"} 1.0' in metrics
        code, _ = await admin_get(lb, "/readyz")
        assert code == 200  # synced once: lb still serves the last known good set

        await consul.start(port=port)
        await until(lambda: not watch.stale, 15)
        done.set()
        await asyncio.gather(*clients)
        assert live(lb) == {a.port, b.port}
        assert set(results) == {200} and results[200] > 100, results


async def test_consul_restarted_with_a_lower_index(tmp_path, consul, caplog):
    caplog.set_level(logging.INFO, logger="lb.discovery")
    consul.set_index_floor(5000)
    port = consul.port
    async with backends(3) as (a, b, c), running_lb(tmp_path, config(consul.address)) as lb:
        register(consul, a)
        await until(lambda: live(lb) == {a.port})
        watch = lb.server.runtime.services["app"].discovery
        await until(lambda: watch.index > 5000)
        client = await Client.connect(lb.port)

        # A snapshot restore under a running agent: the blocking query returns a lower index.
        consul.reset_index(10)
        await until(lambda: 0 < watch.index <= 10, 2)
        assert "index went back" in caplog.text
        await asyncio.sleep(0.3)
        register(consul, b)
        assert await seconds_until_served(client, b.port) < FOLLOW

        # A restart that lost its data: errors while it is down, then a low index.
        consul.set_index_floor(5000)
        consul.touch_service("web")
        await until(lambda: watch.index > 5000, 2)
        await consul.stop()
        consul.reset_index(20)
        await until(lambda: watch.stale, 3)
        await consul.start(port=port)
        await until(lambda: not watch.stale and 0 < watch.index <= 25, 5)
        await asyncio.sleep(0.3)
        register(consul, c)
        assert await seconds_until_served(client, c.port) < FOLLOW
        assert live(lb) == {a.port, b.port, c.port}
        client.close()


async def test_bad_token_keeps_the_last_good_set_and_says_why(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    consul = ConsulTestServer(acl_tokens={"good"})
    await consul.start()
    good = config(consul.address, consul_extra="  token: good\n")
    try:
        async with backends(3) as (a, b, c), running_lb(tmp_path, good) as lb:
            register(consul, a)
            register(consul, b)
            await until(lambda: live(lb) == {a.port, b.port})
            watch = lb.server.runtime.services["app"].discovery

            consul.acl_tokens = {"rotated"}  # lb's token is revoked
            consul.touch_service("web")  # wake the blocking query, authorized before
            await until(lambda: watch.last_error == PERMISSION_DENIED, 3)
            register(consul, c)  # lb cannot see it any more
            assert "permission denied" in caplog.text
            status = await admin_status(lb)
            app = next(s for s in status["services"] if s["name"] == "app")
            assert app["discovery_status"]["last_error"] == PERMISSION_DENIED
            assert app["discovery_status"]["stale"] is True
            client = await Client.connect(lb.port)
            assert set(await served(client, 10)) == {a.port, b.port}
            assert live(lb) == {a.port, b.port}

            # A reload with a wrong token: a new watch that fails, the set stays, still ready.
            consul.acl_tokens = {"good"}
            bad = _same_ports(config(consul.address, consul_extra="  token: wrong\n"), lb)
            lb.write_config(bad)
            ok, errors = await lb.server.reload()
            assert ok, errors
            watch = lb.server.runtime.services["app"].discovery
            await until(lambda: watch.last_error == PERMISSION_DENIED, 3)
            assert live(lb) == {a.port, b.port}
            assert (await admin_get(lb, "/readyz"))[0] == 200

            lb.write_config(_same_ports(good, lb))
            ok, errors = await lb.server.reload()
            assert ok, errors
            await until(lambda: live(lb) == {a.port, b.port, c.port}, 3)
            client.close()
    finally:
        await consul.stop()


async def test_readyz_waits_for_the_first_sync(tmp_path):
    port = free_port()  # nothing listens here yet
    async with backends(1) as (a,), running_lb(tmp_path, config(f"127.0.0.1:{port}")) as lb:
        code, text = await admin_get(lb, "/readyz")
        assert code == 503
        assert "Consul service 'app' has not been read yet" in text
        client = await Client.connect(lb.port)
        assert (await client.request()).status == 503  # up, but nothing to send requests to
        client.close()
        consul = ConsulTestServer()
        consul.register("web", id="web-1", address="127.0.0.1", port=a.port)
        await consul.start(port=port)
        try:
            await until(lambda: live(lb) == {a.port}, 5)
            code, text = await admin_get(lb, "/readyz")
            assert (code, text) == (200, "ready\n")
        finally:
            await consul.stop()


# -- tag-declared routes -------------------------------------------------------------------------
AUTO_ROUTES = """\
routes:
  - name: yaml
    match: {path: {prefix: /yaml}}
    service: app
"""


async def test_auto_mode_routes_from_tags(tmp_path, consul, caplog):
    caplog.set_level(logging.WARNING, logger="lb.discovery")
    async with backends(6) as (y, api, shop, shop2, clash, late):
        text = lb_yaml(
            [y.address],
            port=free_port(),
            admin_port=free_port(),
            routes=AUTO_ROUTES,
            extra=f'consul: {{address: "{consul.address}", wait: {WAIT}, auto: true}}\n',
        )
        tags = {
            "api": ["lb.enable=true", "lb.host=api.test", "lb.path=/v1", "lb.strip_prefix=true"],
            "shop": ["lb.enable=true", "lb.host=shop.test", "lb.canary=shop-v2:25"],
            "shop-v2": ["v2"],
            "clash": ["lb.enable=true", "lb.path=/yaml"],
            "broken": ["lb.enable=true", "lb.path=no-slash"],
        }
        for name, be in [("api", api), ("shop", shop), ("shop-v2", shop2), ("clash", clash)]:
            register(consul, be, name, tags=tags[name])
        consul.register(
            "broken", id="broken-1", address="127.0.0.1", port=y.port, tags=tags["broken"]
        )
        async with running_lb(tmp_path, text) as lb:
            manager = lb.server.discovery

            def names() -> set[str]:
                return {r.name for r in lb.server.runtime.table.routes}

            await until(lambda: names() == {"yaml", "consul:api", "consul:shop"})
            await until(lambda: lb.server.runtime.table.by_name["consul:shop"].split is not None)
            assert (await admin_get(lb, "/readyz"))[0] == 200
            client = await Client.connect(lb.port)

            r = await client.request(host="api.test", path="/v1/users?x=1")
            assert (r.status, port_of(r.body)) == (200, api.port)
            assert api.seen[-1].path == "/users?x=1"
            assert (await client.request(host="other.test", path="/v1/users")).status == 404

            assert await served(client, 40, host="shop.test") == {shop.port: 30, shop2.port: 10}

            # The config's route wins; the clash is reported, not guessed.
            assert await served(client, 3, path="/yaml/x") == {y.port: 3}
            assert [(c.service, c.path) for c in manager.conflicts] == [("clash", "/yaml")]
            assert "matches the same host and path" in str(manager.conflicts[0])
            assert "'clash'" in caplog.text
            assert "broken" in manager.problems and "broken" in caplog.text
            assert "clash" not in lb.server.runtime.services
            report = manager.report()
            assert report["tag_routes"] == ["consul:api", "consul:shop"]
            assert report["conflicts"][0]["service"] == "clash"
            status = await admin_status(lb)
            assert {"consul:api", "consul:shop"} <= {r["name"] for r in status["routes"]}
            shop_status = next(s for s in status["services"] if s["name"] == "shop")
            assert shop_status["discovery"] == "consul"
            assert shop_status["discovery_status"]["stale"] is False

            # A service tagged later gets its route; one deregistered loses it.
            await asyncio.sleep(0.3)
            changed = time.monotonic()
            register(consul, late, "late", tags=["lb.enable=true", "lb.path=/late"])
            await until(lambda: "consul:late" in names(), 2)
            r = await client.request(path="/late/x")
            assert (r.status, port_of(r.body)) == (200, late.port)
            assert time.monotonic() - changed < FOLLOW
            consul.deregister(f"api-{api.port}")
            await until(lambda: "consul:api" not in names(), FOLLOW)
            assert "api" not in lb.server.runtime.services
            assert (await client.request(host="api.test", path="/v1/users")).status == 404

            # A reload keeps tag routes and their watches; a YAML route taking a tag route's
            # place wins at once.
            shop_watch = lb.server.runtime.services["shop"].discovery
            lb.write_config(_same_ports(text.replace(AUTO_ROUTES, AUTO_ROUTES + _LATE_ROUTE), lb))
            ok, errors = await lb.server.reload()
            assert ok, errors
            assert lb.server.runtime.services["shop"].discovery is shop_watch
            assert "consul:late" not in names() and "consul:shop" in names()
            assert await served(client, 2, path="/late/x") == {y.port: 2}
            assert {c.service for c in manager.conflicts} == {"clash", "late"}
            client.close()


_LATE_ROUTE = """\
  - name: late-yaml
    match: {path: {prefix: /late}}
    service: app
"""


async def test_two_services_declaring_the_same_route_get_neither(tmp_path, consul):
    async with backends(2) as (a, b):
        for name, be in [("one", a), ("two", b)]:
            register(consul, be, name, tags=["lb.enable=true", "lb.host=x.test"])
        text = lb_yaml(
            [a.address],
            port=free_port(),
            admin_port=free_port(),
            routes="routes: []\n",
            extra=f'consul: {{address: "{consul.address}", wait: {WAIT}, auto: true}}\n',
        )
        async with running_lb(tmp_path, text) as lb:
            manager = lb.server.discovery
            await until(lambda: len(manager.conflicts) == 2)
            assert {r.name for r in lb.server.runtime.table.routes} == set()
            assert "declare the same host and path" in manager.conflicts[0].reason


# -- self-registration ---------------------------------------------------------------------------
async def test_registers_itself_and_deregisters_before_draining(tmp_path, consul):
    async def slow(req):
        await asyncio.sleep(1.0)
        return ok_response(b"slow")

    async with backends(1, respond=slow) as (a,):
        consul.register("web", id="web-1", address="127.0.0.1", port=a.port)
        port, admin_port = free_port(), free_port()
        text = config(
            consul.address,
            port=port,
            admin_port=admin_port,
            consul_extra="  register: {name: lb-test, check_interval: 1s}\n",
        )
        path = tmp_path / "lb.yaml"
        path.write_text(text)
        server = Server(str(path), load(str(path)))
        await server.start()
        sid = f"lb-test-127.0.0.1-{port}"
        try:
            await until(lambda: ("consul-test", sid) in consul.instances)
            inst = consul.instances[("consul-test", sid)]
            assert (inst.name, inst.address, inst.port) == ("lb-test", "127.0.0.1", port)
            check = next(c for c in consul.checks.values() if c.service_id == sid)
            assert check.target == f"http://127.0.0.1:{admin_port}/healthz"
            await until(lambda: check.status == PASSING, 5)  # Consul probed the admin port
            await until(lambda: live_ports(server) == {a.port})

            client = await Client.connect(port)
            pending = asyncio.create_task(client.request())
            await asyncio.sleep(0.2)
            server.stopping.set()
            shutdown = asyncio.create_task(server.shutdown())
            await until(lambda: ("consul-test", sid) not in consul.instances, 0.5)
            assert not pending.done()  # deregistered first, then drained
            assert (await pending).status == 200
            await shutdown
            client.close()
        finally:
            if not server.stopping.is_set():
                await server.shutdown()


def live_ports(server: Server) -> set[int]:
    return {p for (_, p), b in server.runtime.services["app"].backends.items() if not b.removed}


async def test_registration_retries_until_consul_answers(tmp_path):
    port = free_port()
    text = config(f"127.0.0.1:{port}", consul_extra="  register: {name: lb-test}\n")
    async with running_lb(tmp_path, text) as lb:
        registration = lb.server.discovery.registration
        await until(lambda: registration.last_error is not None, 3)
        assert "unreachable" in registration.last_error
        _, metrics = await admin_get(lb, "/metrics")
        assert 'lb_discovery_source_errors_total{source="consul_register"}' in metrics
        consul = ConsulTestServer()
        await consul.start(port=port)
        try:
            await until(lambda: registration.service_id is not None, 5)
            assert any(i.name == "lb-test" for i in consul.instances.values())
        finally:
            await lb.server.discovery.registration.withdraw()
            assert not any(i.name == "lb-test" for i in consul.instances.values())
            await consul.stop()


# -- the tag-route plan, without lb ---------------------------------------------------------------
def _config(tmp_path: Path, routes: str = "routes: []\n") -> model.Config:
    path = tmp_path / "lb.yaml"
    path.write_text(lb_yaml(["127.0.0.1:1"], port=1, admin_port=2, routes=routes))
    return load(str(path)).config


def test_plan_waits_for_the_first_sync_and_maps_the_grammar(tmp_path):
    catalog = {
        "api": ["lb.enable=true", "lb.path=/", "lb.strip_prefix=true", "lb.priority=5"],
        "web": ["lb.enable=true", "lb.host=Web.Test", "lb.canary=web-v2:100"],
        "web-v2": [],
        "off": ["lb.path=/off"],
    }
    plan = plan_tag_routes(catalog, _config(tmp_path), synced=set())
    assert plan.routes == [] and plan.pending == ["api", "web"]
    assert set(plan.services) == {"api", "web", "web-v2"}  # watched while pending

    plan = plan_tag_routes(catalog, _config(tmp_path), synced={"api", "web"})
    api, web = plan.routes
    assert (api.name, api.priority, api.rewrite, api.service) == ("consul:api", 5, None, "api")
    assert web.service == "web" and web.split is None  # the canary has not synced yet
    assert web.match.host == ["web.test"]

    plan = plan_tag_routes(catalog, _config(tmp_path), synced={"api", "web", "web-v2"})
    web = plan.routes[1]
    assert [(t.service, t.weight) for t in web.split] == [("web", 0), ("web-v2", 100)]
    assert web.priority is None  # lb.priority absent: ranks like a config route without one


def test_plan_reports_rather_than_guesses(tmp_path):
    catalog = {
        "self": ["lb.enable=true", "lb.path=/self", "lb.canary=self:10"],
        "typo": ["lb.enable=true", "lb.path=/typo", "lb.canary=nowhere:10"],
        "app": ["lb.enable=true", "lb.path=/app"],
        "bad": ["lb.enable=true", "lb.strip_prefix=yes"],
        "named": ["lb.enable=true", "lb.path=/named"],
    }
    routes = "routes:\n  - name: consul:named\n    match: {path: {exact: /x}}\n    service: app\n"
    plan = plan_tag_routes(catalog, _config(tmp_path, routes), synced=set(catalog))
    assert {r.name: r.service for r in plan.routes} == {
        "consul:self": "self",
        "consul:typo": "typo",
    }
    assert "names the service itself" in plan.problems["self"][0]
    assert "'nowhere' is neither in Consul's catalog nor in the config" in plan.problems["typo"][0]
    assert "lb.strip_prefix=yes" in plan.problems["bad"][0]
    reasons = {c.service: c.reason for c in plan.conflicts}
    assert reasons == {
        "app": 'service "app" is defined in the config',
        "named": 'a config route is named "consul:named"',
    }
