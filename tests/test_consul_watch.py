"""ServiceWatch, CatalogWatch, ConsulClient and the tag grammar, against the Consul test server."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import trustme
from aiohttp import web
from consul_server import CRITICAL, PASSING, WARNING, ConsulTestServer

from lb.discovery import consul as discovery
from lb.discovery.consul import (
    PERMISSION_DENIED,
    CatalogWatch,
    ConsulClient,
    ConsulError,
    ConsulSettings,
    Instance,
    ServiceWatch,
    split_address,
)
from lb.discovery.tags import Canary, TagRoute, parse_tags

WAIT = 1.0  # short blocking queries keep the tests fast


class Recorder:
    """Collects on_update/on_error calls and lets a test wait for a condition."""

    def __init__(self) -> None:
        self.updates: list[Any] = []
        self.errors: list[Exception] = []
        self.times: list[float] = []

    def on_update(self, value: Any) -> None:
        self.updates.append(value)
        self.times.append(time.monotonic())

    def on_error(self, exc: Exception) -> None:
        self.errors.append(exc)

    @property
    def last(self) -> Any:
        return self.updates[-1]

    async def until(self, predicate: Callable[[], bool], timeout: float = 3.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out; updates={self.updates} errors={self.errors}")
            await asyncio.sleep(0.01)


def ids(instances: list[Instance]) -> set[str]:
    return {i.id for i in instances}


@pytest.fixture(autouse=True)
def _no_env_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)


@pytest.fixture
def server(consul: ConsulTestServer) -> ConsulTestServer:
    return consul


@pytest.fixture
async def client(server: ConsulTestServer) -> AsyncIterator[ConsulClient]:
    async with ConsulClient(ConsulSettings(address=server.address, wait=WAIT)) as c:
        yield c


@contextlib.asynccontextmanager
async def running(watch: ServiceWatch | CatalogWatch) -> AsyncIterator[None]:
    task = asyncio.create_task(watch.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert task.cancelled(), "the watch loop stopped on its own"


def service_watch(
    client: ConsulClient, rec: Recorder, service: str = "web", **kw: Any
) -> ServiceWatch:
    return ServiceWatch(client, service, on_update=rec.on_update, on_error=rec.on_error, **kw)


# ----- ServiceWatch -----


async def test_first_answer_is_published_even_when_empty(server, client) -> None:
    rec = Recorder()
    watch = service_watch(client, rec)
    assert not watch.synced and watch.last_success is None
    async with running(watch):
        await rec.until(lambda: len(rec.updates) == 1)
        assert rec.last == []
        assert watch.synced and not watch.stale and watch.errors == 0
        assert watch.last_success == pytest.approx(time.time(), abs=5)
        await asyncio.sleep(0.3)
    assert len(rec.updates) == 1


async def test_register_is_seen_within_a_second(server, client) -> None:
    rec = Recorder()
    watch = service_watch(client, rec)
    async with running(watch):
        await rec.until(lambda: watch.synced)
        await asyncio.sleep(0.2)  # the watch is now blocking on the server
        changed = time.monotonic()
        server.register("web", id="web-1", address="10.0.0.1", port=8080)
        await rec.until(lambda: ids(rec.last) == {"web-1"})
        assert rec.times[-1] - changed < 1.0
        assert rec.last == [Instance("web-1", "10.0.0.1", 8080, node="consul-test")]


@pytest.mark.parametrize(
    ("remove", "restore"),
    [
        (
            lambda s: s.set_check("service:web-2", CRITICAL, node="host-2"),
            lambda s: s.set_check("service:web-2", PASSING, node="host-2"),
        ),
        (
            lambda s: s.set_check("service:web-2", WARNING, node="host-2"),
            lambda s: s.set_check("service:web-2", PASSING, node="host-2"),
        ),
        (
            lambda s: s.set_maintenance("web-2", True, node="host-2"),
            lambda s: s.set_maintenance("web-2", False, node="host-2"),
        ),
        (
            lambda s: s.set_node_health("host-2", CRITICAL),
            lambda s: s.set_node_health("host-2", PASSING),
        ),
        (
            lambda s: s.set_node_maintenance(True, node="host-2"),
            lambda s: s.set_node_maintenance(False, node="host-2"),
        ),
        (
            lambda s: s.deregister("web-2", node="host-2"),
            lambda s: s.register("web", id="web-2", port=80, node="host-2"),
        ),
    ],
    ids=["critical", "warning", "maintenance", "node-down", "node-maintenance", "deregister"],
)
async def test_unhealthy_instances_leave_and_come_back(server, client, remove, restore) -> None:
    server.register("web", id="web-1", port=80, node="host-1", node_address="10.0.0.1")
    server.register("web", id="web-2", port=80, node="host-2", node_address="10.0.0.2")
    rec = Recorder()
    watch = service_watch(client, rec)
    async with running(watch):
        await rec.until(lambda: rec.updates and ids(rec.last) == {"web-1", "web-2"})
        await asyncio.sleep(0.1)
        remove(server)
        await rec.until(lambda: ids(rec.last) == {"web-1"}, timeout=1.0)
        restore(server)
        await rec.until(lambda: ids(rec.last) == {"web-1", "web-2"}, timeout=1.0)
    assert watch.errors == 0


async def test_an_empty_passing_list_is_applied(server, client) -> None:
    server.register("web", id="web-1", port=80)
    rec = Recorder()
    watch = service_watch(client, rec)
    async with running(watch):
        await rec.until(lambda: rec.updates and ids(rec.last) == {"web-1"})
        server.set_check("service:web-1", CRITICAL)
        await rec.until(lambda: rec.last == [])
        assert watch.instances == [] and not watch.stale


async def test_instance_fields(server, client) -> None:
    server.register(
        "web",
        id="a",
        address="",
        port=81,
        tags=["v1"],
        meta={"zone": "b", "ver": "2"},
        weights={"Passing": 7},
        node="host-a",
        node_address="10.0.0.9",
    )
    server.register("web", id="b", address="10.0.0.2", port=82, tags=["lb.weight=3"])
    server.register("web", id="c", address="10.0.0.3", port=83, tags=["lb.weight=lots"])
    rec = Recorder()
    async with running(service_watch(client, rec)):
        await rec.until(lambda: bool(rec.updates))
    a, b, c = rec.last  # sorted by node, then id: consul-test < host-a
    assert a == Instance("b", "10.0.0.2", 82, 3, ("lb.weight=3",), (), "consul-test")
    assert c == Instance(
        "a", "10.0.0.9", 81, 7, ("v1",), (("ver", "2"), ("zone", "b")), "host-a"
    )  # Service.Address "" falls back to Node.Address; Weights.Passing is the weight
    assert b.id == "c" and b.weight == 1  # an invalid lb.weight leaves Consul's weight
    assert c.meta_dict == {"ver": "2", "zone": "b"}
    hash(a)


async def test_tag_filter(server, client) -> None:
    server.register("web", id="blue", tags=["v1", "blue"])
    server.register("web", id="green", tags=["v1", "green"])
    rec = Recorder()
    async with running(service_watch(client, rec, tags=("v1", "green"))):
        await rec.until(lambda: bool(rec.updates))
    assert ids(rec.last) == {"green"}


async def test_unchanged_answers_are_not_published(server, client) -> None:
    server.register("web", id="web-1", port=80)
    rec = Recorder()
    watch = service_watch(client, rec)
    async with running(watch):
        await rec.until(lambda: bool(rec.updates))
        for _ in range(3):
            server.touch_service("web")  # the index moves, the answer does not
            await asyncio.sleep(0.3)
        server.register("other", id="o", port=1)
        await asyncio.sleep(0.2)
    assert server.requests["GET /v1/health/service/web"] >= 4
    assert len(rec.updates) == 1


async def test_consul_down_keeps_the_last_good_set_then_recovers(server, client) -> None:
    server.register("web", id="web-1", port=80)
    rec = Recorder()
    watch = service_watch(client, rec)
    async with running(watch):
        await rec.until(lambda: rec.updates and ids(rec.last) == {"web-1"})
        good_at = watch.last_success
        port = server.port
        await server.stop()
        await rec.until(lambda: watch.errors >= 2)
        assert watch.stale and watch.synced
        assert "unreachable" in watch.last_error or "failed" in watch.last_error
        assert len(rec.updates) == 1 and watch.instances == rec.last
        assert all(isinstance(e, ConsulError) for e in rec.errors)
        assert watch.last_success == good_at

        server.register("web", id="web-2", port=81)  # changed while Consul was away
        await server.start(port=port)
        await rec.until(lambda: ids(rec.last) == {"web-1", "web-2"}, timeout=4.0)
        assert not watch.stale
        assert watch.last_success > good_at
    assert len(rec.updates) == 2


async def test_backoff_does_not_hammer_a_dead_consul(server, client) -> None:
    rec = Recorder()
    watch = service_watch(client, rec)
    await server.stop()
    async with running(watch):
        await asyncio.sleep(1.5)
    # Retries after about 0.125-0.25, 0.25-0.5, 0.5-1 s: a handful, not hundreds.
    assert 2 <= watch.errors <= 6
    assert rec.updates == [] and not watch.synced and watch.stale


async def test_restart_with_a_lower_index_is_followed(server, client) -> None:
    server.set_index_floor(5000)
    server.register("web", id="web-1", port=80)
    rec = Recorder()
    watch = service_watch(client, rec)
    async with running(watch):
        await rec.until(lambda: bool(rec.updates))
        assert watch.index > 5000
        port = server.port
        await server.stop()
        server.reset_index(10)  # a Consul that lost its raft log
        await rec.until(lambda: watch.errors >= 1)
        await server.start(port=port)
        await rec.until(lambda: not watch.stale and 0 < watch.index <= 10, timeout=4.0)
        changed = time.monotonic()
        server.register("web", id="web-2", port=81)
        await rec.until(lambda: ids(rec.last) == {"web-1", "web-2"}, timeout=1.0)
        assert rec.times[-1] - changed < 1.0


async def test_snapshot_restore_with_a_lower_index_resets_the_watch(server, client) -> None:
    server.set_index_floor(5000)
    server.register("web", id="web-1", port=80)
    rec = Recorder()
    watch = service_watch(client, rec)
    async with running(watch):
        await rec.until(lambda: bool(rec.updates))
        await asyncio.sleep(0.1)
        server.reset_index(10)  # the blocking query returns at once with index <= 10
        await rec.until(lambda: 0 < watch.index <= 10, timeout=1.0)
        server.register("web", id="web-2", port=81)
        await rec.until(lambda: ids(rec.last) == {"web-1", "web-2"}, timeout=1.0)
    assert watch.errors == 0
    assert len(rec.updates) == 2


async def test_index_churn_does_not_hot_loop() -> None:
    srv = ConsulTestServer(index_scope="global")  # every write moves every index
    await srv.start()
    srv.register("web", id="web-1", port=80)
    rec = Recorder()
    stop = asyncio.Event()

    async def churn() -> None:
        i = 0
        while not stop.is_set():
            srv.kv_put("noise", str(i))
            i += 1
            await asyncio.sleep(0.005)

    try:
        async with ConsulClient(ConsulSettings(address=srv.address, wait=WAIT)) as client:
            watch = service_watch(client, rec)
            async with running(watch):
                await rec.until(lambda: bool(rec.updates))
                before = srv.requests["GET /v1/health/service/web"]
                task = asyncio.create_task(churn())
                await asyncio.sleep(2.0)
                stop.set()
                await task
                during = srv.requests["GET /v1/health/service/web"] - before
    finally:
        await srv.stop()
    # Token bucket: burst 2, then 4 a second -> about 10 in 2 s; without it, hundreds.
    assert 3 <= during <= 14
    assert len(rec.updates) == 1


async def test_bad_token_keeps_the_last_good_set() -> None:
    srv = ConsulTestServer(acl_tokens={"good"})
    await srv.start()
    srv.register("web", id="web-1", port=80)
    rec = Recorder()
    try:
        async with ConsulClient(
            ConsulSettings(address=srv.address, token="good", wait=WAIT)
        ) as client:
            watch = service_watch(client, rec)
            async with running(watch):
                await rec.until(lambda: rec.updates and ids(rec.last) == {"web-1"})
                srv.acl_tokens = {"rotated"}  # our token was revoked
                srv.touch_service("web")
                await rec.until(lambda: watch.errors >= 1)
                assert watch.last_error == PERMISSION_DENIED
                assert str(rec.errors[0]) == PERMISSION_DENIED
                assert watch.stale and watch.instances == rec.last and len(rec.updates) == 1
                srv.acl_tokens = {"good"}
                await rec.until(lambda: not watch.stale, timeout=3.0)
            assert len(rec.updates) == 1

        async with ConsulClient(
            ConsulSettings(address=srv.address, token="bad", wait=WAIT)
        ) as client:
            watch = service_watch(client, rec := Recorder())
            async with running(watch):
                await rec.until(lambda: watch.errors >= 1)
            assert rec.updates == [] and not watch.synced
            assert watch.last_error == PERMISSION_DENIED
    finally:
        await srv.stop()


async def test_configured_token_wins_over_the_environment(monkeypatch) -> None:
    srv = ConsulTestServer(acl_tokens={"good"})
    await srv.start()
    try:
        monkeypatch.setenv("CONSUL_HTTP_TOKEN", "from-env")
        async with ConsulClient(ConsulSettings(address=srv.address, token="good")) as client:
            assert (await client.health_service("web"))[1] == []
        monkeypatch.setenv("CONSUL_HTTP_TOKEN", "good")
        async with ConsulClient(ConsulSettings(address=srv.address)) as client:
            assert (await client.health_service("web"))[1] == []  # no token set: env is used
    finally:
        await srv.stop()


async def test_server_errors_are_counted_not_applied(server, client) -> None:
    rec = Recorder()
    watch = service_watch(client, rec, datacenter="elsewhere")
    async with running(watch):
        await rec.until(lambda: watch.errors >= 1)
    assert watch.last_error == "Consul error: 500 No path to datacenter"
    assert rec.updates == []


async def test_a_failing_on_update_is_offered_the_set_again(server, client) -> None:
    server.register("web", id="web-1", port=80)
    calls: list[list[Instance]] = []

    def on_update(instances: list[Instance]) -> None:
        calls.append(instances)
        if len(calls) == 1:
            raise RuntimeError("boom")

    watch = ServiceWatch(client, "web", on_update=on_update)
    async with running(watch):
        await asyncio.sleep(0.2)
        server.touch_service("web")
        deadline = time.monotonic() + 2
        while len(calls) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    assert len(calls) == 2 and calls[0] == calls[1]


async def test_request_parameters_and_timeouts(server, monkeypatch) -> None:
    settings = ConsulSettings(address=server.address, wait=90.0, consistency="stale")
    seen: list[tuple[list, float]] = []
    async with ConsulClient(settings) as client:
        api = client._client()
        real_get = api.http.get

        def spy(callback, path, params=None, headers=None, raw=False, connections_timeout=None):
            seen.append((list(params or []), connections_timeout))
            return real_get(callback, path, params=params, headers=headers, connections_timeout=0.5)

        monkeypatch.setattr(api.http, "get", spy)
        index, _ = await client.health_service("web", tags=["a", "b"], datacenter="dc1")
        with contextlib.suppress(ConsulError):
            await client.health_service("web", index=index)
    (plain, plain_timeout), (blocking, blocking_timeout) = seen
    assert ("passing", "1") in plain and ("stale", "1") in plain
    assert ("tag", "a") in plain and ("tag", "b") in plain and ("dc", "dc1") in plain
    assert not any(k in ("index", "wait") for k, _ in plain)
    assert plain_timeout == discovery.REQUEST_TIMEOUT
    assert ("index", str(index)) in blocking and ("wait", "90s") in blocking
    assert blocking_timeout > 90 * 17 / 16


async def test_a_hanging_consul_times_out(monkeypatch) -> None:
    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response()

    app = web.Application()
    app.router.add_get("/v1/health/service/web", hang)
    runner = web.AppRunner(app, shutdown_timeout=0.05)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    monkeypatch.setattr(discovery, "REQUEST_TIMEOUT", 0.2)
    try:
        address = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with ConsulClient(ConsulSettings(address=address)) as client:
            with pytest.raises(ConsulError, match="did not answer in time"):
                await client.health_service("web")
    finally:
        await runner.cleanup()


async def test_tls_with_client_certificates(tmp_path) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    ca.configure_trust(server_ctx)
    server_ctx.verify_mode = ssl.CERT_REQUIRED  # Consul's verify_incoming
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    client_cert = ca.issue_cert("lb")
    cert_file, key_file = tmp_path / "lb.pem", tmp_path / "lb-key.pem"
    client_cert.cert_chain_pems[0].write_to_path(str(cert_file))
    client_cert.private_key_pem.write_to_path(str(key_file))

    srv = ConsulTestServer()
    await srv.start(ssl_context=server_ctx)
    srv.register("web", id="web-1", port=80)
    try:
        assert srv.address.startswith("https://")
        settings = ConsulSettings(
            address=srv.address,
            ca_file=str(ca_file),
            cert_file=str(cert_file),
            key_file=str(key_file),
        )
        async with ConsulClient(settings) as client:
            _, entries = await client.health_service("web")
            assert [e["Service"]["ID"] for e in entries] == ["web-1"]
        no_cert = ConsulSettings(address=srv.address, ca_file=str(ca_file))
        async with ConsulClient(no_cert) as client:
            with pytest.raises(ConsulError):
                await client.health_service("web")
    finally:
        await srv.stop()


async def test_register_self_with_an_http_check(server, client) -> None:
    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    admin_port = runner.addresses[0][1]
    rec = Recorder()
    try:
        register = dict(
            address="127.0.0.1",
            port=8080,
            check_url=f"http://127.0.0.1:{admin_port}/healthz",
            tags=["lb"],
            meta={"version": "0.1.0"},
            check_interval=1.0,
        )
        sid = await client.register_self(**register)
        assert sid == "lb-127.0.0.1-8080"
        assert await client.register_self(**register) == sid  # idempotent
        (check,) = [c for c in server.checks.values() if c.service_id == sid]
        assert check.check_id == f"service:{sid}"
        assert (check.interval, check.timeout, check.deregister_after) == (1, 2, 600)
        watch = service_watch(client, rec, "lb")
        async with running(watch):
            await rec.until(lambda: rec.updates and ids(rec.last) == {sid})
            assert rec.last[0].meta_dict == {"version": "0.1.0"}
            await client.deregister_self(sid)
            await rec.until(lambda: rec.last == [])
    finally:
        await runner.cleanup()


async def test_register_self_reports_errors() -> None:
    srv = ConsulTestServer(acl_tokens={"good"})
    await srv.start()
    try:
        async with ConsulClient(ConsulSettings(address=srv.address, token="bad")) as client:
            with pytest.raises(ConsulError, match="permission denied"):
                await client.register_self(address="127.0.0.1", port=1, check_url="http://x/")
    finally:
        await srv.stop()


# ----- CatalogWatch -----


async def test_catalog_watch(server, client) -> None:
    rec = Recorder()
    watch = CatalogWatch(client, on_update=rec.on_update, on_error=rec.on_error)
    async with running(watch):
        await rec.until(lambda: rec.updates == [{"consul": []}])
        server.register("web", id="w1", tags=["lb.enable=true", "v1"])
        await rec.until(lambda: rec.last.get("web") == ["lb.enable=true", "v1"], timeout=1.0)
        server.set_check("service:w1", CRITICAL)  # health is not the catalog's business
        await asyncio.sleep(0.3)
        assert len(rec.updates) == 2
        server.deregister("w1")
        await rec.until(lambda: rec.last == {"consul": []}, timeout=1.0)
        assert watch.services == {"consul": []}
        port = server.port
        await server.stop()
        await rec.until(lambda: watch.errors >= 1)
        assert watch.stale and rec.last == {"consul": []}
        await server.start(port=port)
        await rec.until(lambda: not watch.stale, timeout=4.0)
    assert len(rec.updates) == 3


# ----- settings and tags -----


def test_settings_validation() -> None:
    with pytest.raises(ValueError, match="consistency"):
        ConsulSettings(consistency="eventual")
    with pytest.raises(ValueError, match="wait"):
        ConsulSettings(wait=0)
    with pytest.raises(ValueError, match="wait"):
        ConsulSettings(wait=601)
    with pytest.raises(ValueError, match="key_file"):
        ConsulSettings(key_file="k.pem")
    with pytest.raises(ValueError, match="address"):
        ConsulSettings(address="ftp://consul")


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("http://127.0.0.1:8500", ("http", "127.0.0.1", 8500)),
        ("https://consul.service:8501", ("https", "consul.service", 8501)),
        ("consul:9500", ("http", "consul", 9500)),
        ("consul", ("http", "consul", 8500)),
        ("https://consul", ("https", "consul", 8501)),
    ],
)
def test_split_address(address: str, expected: tuple[str, str, int]) -> None:
    assert split_address(address) == expected


def test_parse_tags_full_route() -> None:
    errors: list[str] = []
    route = parse_tags(
        [
            "v1",
            "lb.enable=true",
            "lb.host=API.example.com",
            "lb.path=/api",
            "lb.strip_prefix=true",
            "lb.priority=5",
            "lb.canary=web-v2:10",
            "lb.weight=3",
            "lb.weight=5",  # per instance: several values are normal
            "lb.path=/api",  # the same value twice is no conflict
        ],
        errors,
    )
    assert errors == []
    assert route == TagRoute(
        host="api.example.com",
        path_prefix="/api",
        strip_prefix=True,
        priority=5,
        canary=Canary("web-v2", 10),
    )


def test_parse_tags_defaults_and_disabled() -> None:
    assert parse_tags(["lb.enable=true"]) == TagRoute()
    assert parse_tags(["lb.enable=True", "lb.host=*.example.com"]) == TagRoute(host="*.example.com")
    assert parse_tags([]) is None
    assert parse_tags(["lb.host=a.example.com"]) is None
    assert parse_tags(["lb.enable=false", "lb.path=/x"]) is None


@pytest.mark.parametrize(
    ("tag", "fragment"),
    [
        ("lb.enable=yes", "true or false"),
        ("lb.enable", "lb.<key>=<value>"),
        ("lb.host=bad host", "host name"),
        ("lb.host=", "host name"),
        ("lb.path=api", 'starting with "/"'),
        ("lb.path=/a b", 'starting with "/"'),
        ("lb.strip_prefix=1", "true or false"),
        ("lb.priority=high", "integer"),
        ("lb.canary=web-v2", "<service>:<percent>"),
        ("lb.canary=web-v2:101", "0 to 100"),
        ("lb.canary=:5", "<service>:<percent>"),
        ("lb.weight=-1", "0 to 10000"),
        ("lb.weight=heavy", "0 to 10000"),
        ("lb.hots=x.example.com", "unknown key lb.hots"),
    ],
)
def test_parse_tags_errors(tag: str, fragment: str) -> None:
    errors: list[str] = []
    assert parse_tags(["lb.enable=true", tag], errors) is None
    assert len(errors) == 1
    assert tag in errors[0] and fragment in errors[0]


def test_parse_tags_conflicts() -> None:
    errors: list[str] = []
    assert parse_tags(["lb.enable=true", "lb.path=/a", "lb.path=/b"], errors) is None
    assert errors == ["tag 'lb.path=/b': conflicts with another lb.path tag of the service"]
    assert parse_tags(["lb.enable=true", "lb.path=/a", "lb.path=/b"]) is None  # no collector: fine


@pytest.mark.parametrize(
    ("seconds", "text"), [(300, "300s"), (1.0, "1s"), (1.5, "1500ms"), (0.25, "250ms")]
)
def test_go_duration(seconds: float, text: str) -> None:
    assert discovery.go_duration(seconds) == text
