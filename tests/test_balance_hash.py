"""Consistent hashing (ring_hash, maglev) and cookie affinity, through real sockets.

Every backend answers "ok <port>", so each response says which backend served it. Keys are
spread and must stick; removing one of N backends must move about 1/N of them; a hot key
under `bounded_load` must spill; the affinity cookie must stick, and move (rewritten) when
its backend is drained or down. Table-level properties (movement over many keys, weights,
the same table in every worker, slow start) are measured on the tables directly.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections import Counter
from types import SimpleNamespace

import aiohttp
import pytest
from conftest import Client, RawBackend, backends, free_port, lb_yaml, ok_response, running_lb

from lb.balancer.balance import Balance
from lb.balancer.hash_key import HeaderKey
from lb.balancer.hashring import MAGLEV, RING, HashTable
from lb.balancer.picker import Picker
from lb.balancer.service import Service
from lb.config import model
from lb.config.balance_model import Balance as BalanceConfig
from lb.config.balance_model import HashOn
from lb.config.errors import ConfigError
from lb.config.load import load
from lb.observe.metrics import Counters

RING_YAML = "    balance: {mode: ring_hash, hash_on: {header: X-User}}\n"
MAGLEV_YAML = "    balance: {mode: maglev, hash_on: {header: X-User}, table_size: 1009}\n"


def served_by(body: bytes) -> int:
    return int(body.split()[1])


async def ask(client: Client, headers: str = "", path: str = "/") -> tuple[int, str | None]:
    r = await client.request(path=path, headers=headers)
    assert r.status == 200, r
    return served_by(r.body), r.header("set-cookie")


async def scrape(admin: str) -> str:
    async with aiohttp.ClientSession() as s, s.get(f"{admin}/metrics") as r:
        return await r.text()


def metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{"):
            got = ",".join(sorted(line[line.index("{") + 1 : line.index("}")].split(",")))
            if got == want:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def config(bes: list[RawBackend], snippet: str, **kw: object) -> str:
    """The tests' usual config, `snippet` added to the service `app`."""
    yaml = lb_yaml([b.address for b in bes], port=free_port(), admin_port=free_port(), **kw)
    return yaml.replace("  app:\n", "  app:\n" + snippet)


async def key_map(client: Client, keys: list[str]) -> dict[str, int]:
    return {k: (await ask(client, f"x-user: {k}\r\n"))[0] for k in keys}


# -- keys through the proxy ----------------------------------------------------------------------
@pytest.mark.parametrize("balance", [RING_YAML, MAGLEV_YAML], ids=["ring_hash", "maglev"])
async def test_keys_stick_and_spread(tmp_path, balance):
    async with backends(4) as bes, running_lb(tmp_path, config(bes, balance)) as lb:
        client = await Client.connect(lb.port)
        keys = [f"user-{i}" for i in range(120)]
        first = await key_map(client, keys)
        assert await key_map(client, keys) == first  # every key twice, to the same backend
        spread = Counter(first.values())
        assert set(spread) == {b.port for b in bes}
        assert min(spread.values()) >= 10, spread
        client.close()


@pytest.mark.parametrize(
    ("hash_on", "ask_for"),
    [
        ("{query: user}", lambda k: ("", f"/?a=1&user={k}")),
        ("{cookie: sid}", lambda k: (f"cookie: theme=dark; sid={k}\r\n", "/")),
    ],
    ids=["query", "cookie"],
)
async def test_query_and_cookie_keys(tmp_path, hash_on, ask_for):
    async with backends(3) as bes:
        svc = f"    balance: {{mode: maglev, hash_on: {hash_on}, table_size: 1009}}\n"
        async with running_lb(tmp_path, config(bes, svc)) as lb:
            client = await Client.connect(lb.port)
            seen: dict[str, int] = {}
            for i in range(60):
                headers, path = ask_for(f"k{i}")
                seen[f"k{i}"] = (await ask(client, headers, path))[0]
                assert (await ask(client, headers, path))[0] == seen[f"k{i}"]
            assert len(set(seen.values())) == 3
            client.close()


async def test_client_ip_key_sends_one_client_to_one_backend(tmp_path):
    async with backends(3) as bes:
        svc = "    balance: {mode: ring_hash, hash_on: client_ip}\n"
        async with running_lb(tmp_path, config(bes, svc)) as lb:
            ports = set()
            for _ in range(10):  # new connections: new client ports, the same address
                client = await Client.connect(lb.port)
                ports.add((await ask(client))[0])
                client.close()
            assert len(ports) == 1


@pytest.mark.parametrize("balance", [RING_YAML, MAGLEV_YAML], ids=["ring_hash", "maglev"])
async def test_removing_one_of_five_backends_moves_about_a_fifth(tmp_path, balance):
    async with backends(5) as bes:
        port, admin = free_port(), free_port()

        def config(members: list[RawBackend]) -> str:
            yaml = lb_yaml([b.address for b in members], port=port, admin_port=admin)
            return yaml.replace("  app:\n", "  app:\n" + balance)

        async with running_lb(tmp_path, config(bes)) as lb:
            client = await Client.connect(lb.port)
            keys = [f"user-{i}" for i in range(300)]
            before = await key_map(client, keys)
            gone = bes[4].port
            lb.write_config(config(bes[:4]))
            ok, errors = await lb.server.reload()
            assert ok, errors
            after = await key_map(client, keys)
            client.close()
        moved = [k for k in keys if before[k] != after[k]]
        stayed_on_survivors = [k for k in keys if before[k] != gone and before[k] == after[k]]
        on_gone = sum(1 for k in keys if before[k] == gone)
        assert all(after[k] != gone for k in keys)
        assert 0.1 <= len(moved) / len(keys) <= 0.3, (len(moved), on_gone)
        if balance is RING_YAML:  # a ring moves exactly the removed backend's keys
            assert len(moved) == on_gone
        else:  # Maglev: minimal disruption, not none
            assert len(stayed_on_survivors) >= 0.9 * (len(keys) - on_gone)


async def test_requests_without_the_key_go_by_least_connections(tmp_path):
    async with backends(3) as bes, running_lb(tmp_path, config(bes, RING_YAML)) as lb:
        client = await Client.connect(lb.port)
        ports = Counter([(await ask(client))[0] for _ in range(30)])
        client.close()
        assert len(ports) == 3  # an idle pool's least connections: round robin
        text = await scrape(lb.admin)
        assert metric(text, "lb_balance_fallbacks_total", service="app", reason="no_key") == 30
        assert metric(text, "lb_balance_rebuilds_total", service="app") == 1


async def test_bounded_load_spills_a_hot_key(tmp_path):
    gate = asyncio.Event()

    async def slow(seen):
        await gate.wait()
        return ok_response(b"ok held\n")

    for bound, most in ((None, 12), (1.25, math.ceil(1.25 * 12 / 3))):
        gate.clear()
        async with backends(3) as bes:
            for b in bes:
                b.respond = slow
            extra = "" if bound is None else f", bounded_load: {bound}"
            svc = f"    balance: {{mode: ring_hash, hash_on: {{header: X-User}}{extra}}}\n"
            async with running_lb(tmp_path, config(bes, svc)) as lb:
                clients = [await Client.connect(lb.port) for _ in range(12)]
                pending = [
                    asyncio.create_task(c.request(headers="x-user: hot\r\n")) for c in clients
                ]
                for _ in range(500):  # until all 12 are held by the backends
                    if sum(len(b.seen) for b in bes) == 12:
                        break
                    await asyncio.sleep(0.01)
                held = sorted(len(b.seen) for b in bes)
                gate.set()
                assert all(r.status == 200 for r in await asyncio.gather(*pending))
                for c in clients:
                    c.close()
                assert sum(held) == 12
                assert held[-1] == most, held
                spills = metric(
                    await scrape(lb.admin),
                    "lb_balance_fallbacks_total",
                    service="app",
                    reason="bounded_load",
                )
                assert spills == (0 if bound is None else 12 - most)


async def test_a_retry_walks_past_the_backend_that_failed(tmp_path):
    async def reset(backend, reader, writer):
        writer.close()

    async with backends(2) as bes:
        bes[0].handler = reset
        routes = (
            "routes:\n  - name: all\n    match: {path: {prefix: /}}\n    service: app\n"
            "    retries: {attempts: 2, on: [connect-failure, reset], backoff: 1ms}\n"
        )
        async with running_lb(tmp_path, config(bes, RING_YAML, routes=routes)) as lb:
            for i in range(20):
                client = await Client.connect(lb.port)
                assert (await ask(client, f"x-user: u{i}\r\n"))[0] == bes[1].port
                client.close()
            assert bes[0].connections > 0  # some keys are the failing backend's


# -- affinity ------------------------------------------------------------------------------------
COOKIE = re.compile(r"lb_aff=([A-Za-z0-9_-]{12}); Path=/; HttpOnly; SameSite=Lax; Max-Age=3600$")


async def test_affinity_cookie_sticks_and_moves_when_drained(tmp_path):
    async with backends(3) as bes:
        svc = "    affinity: {cookie: lb_aff, ttl: 1h}\n"
        async with running_lb(tmp_path, config(bes, svc)) as lb:
            client = await Client.connect(lb.port)
            home, set_cookie = await ask(client)
            assert set_cookie is not None
            m = COOKIE.match(set_cookie)
            assert m, set_cookie
            first_id = m.group(1)
            assert str(home) not in first_id and "127" not in first_id
            jar = f"cookie: other=1; lb_aff={first_id}\r\n"
            for _ in range(6):  # least connections alone would rotate; the cookie holds
                assert await ask(client, jar) == (home, None)

            async with aiohttp.ClientSession() as s:
                url = f"{lb.admin}/api/backends/app/127.0.0.1:{home}/drain"
                async with s.post(url) as r:
                    assert r.status == 200
            moved_to, set_cookie = await ask(client, jar)
            assert moved_to != home
            m = COOKIE.match(set_cookie or "")
            assert m and m.group(1) != first_id
            jar = f"cookie: lb_aff={m.group(1)}\r\n"
            for _ in range(4):
                assert await ask(client, jar) == (moved_to, None)

            assert (await ask(client, "cookie: lb_aff=forged000000\r\n"))[1] is not None
            client.close()
            text = await scrape(lb.admin)
            counts = {
                r: metric(text, "lb_affinity_total", service="app", result=r)
                for r in ("hit", "moved", "new")
            }
            assert counts == {"hit": 10, "moved": 2, "new": 1}


async def test_affinity_moves_when_its_backend_goes_down(tmp_path):
    async with backends(2) as bes:
        svc = (
            "    affinity: {cookie: lb_aff}\n"
            "    health_check: {path: /, interval: 30ms, timeout: 200ms, fall: 1, jitter: 0}\n"
        )
        async with running_lb(tmp_path, config(bes, svc)) as lb:
            client = await Client.connect(lb.port)
            home, set_cookie = await ask(client)
            assert set_cookie is not None and "Max-Age" not in set_cookie  # a session cookie
            jar = "cookie: " + set_cookie.split(";")[0] + "\r\n"
            assert await ask(client, jar) == (home, None)
            down = next(b for b in bes if b.port == home)
            await down.stop()
            svc_rt = lb.server.runtime.services["app"]
            for _ in range(200):
                if not svc_rt.backends[("127.0.0.1", home)].check_ok:
                    break
                await asyncio.sleep(0.01)
            other, set_cookie = await ask(client, jar)
            assert other != home and set_cookie is not None
            client.close()


async def test_affinity_over_ring_hash_keeps_a_client_where_its_cookie_says(tmp_path):
    async with backends(3) as bes:
        svc = RING_YAML + "    affinity: {cookie: lb_aff}\n"
        async with running_lb(tmp_path, config(bes, svc)) as lb:
            client = await Client.connect(lb.port)
            home, set_cookie = await ask(client, "x-user: alice\r\n")
            assert set_cookie is not None
            jar = "cookie: " + set_cookie.split(";")[0] + "\r\n"
            # Another key would hash elsewhere; the cookie wins while its backend serves.
            for i in range(10):
                assert await ask(client, f"x-user: bob{i}\r\n" + jar) == (home, None)
            client.close()


# -- config --------------------------------------------------------------------------------------
BAD = {
    "    balance: {mode: ring_hash}\n": (
        "services.app.balance.hash_on: mode: ring_hash needs hash_on"
    ),
    "    balance: {mode: maglev, hash_on: client_ip, table_size: 65536}\n": (
        "services.app.balance.table_size: expected a prime up to 5000011, found 65536"
    ),
    "    balance: {mode: ring_hash, hash_on: {header: X-U, cookie: s}}\n": (
        "services.app.balance.hash_on: expected exactly one of header, cookie, query, client_ip"
    ),
    "    balance: {mode: ring_hash, hash_on: everything}\n": (
        "services.app.balance.hash_on: expected client_ip, {header: NAME}"
    ),
    "    balance: {mode: ring_hash, hash_on: client_ip, bounded_load: 0.5}\n": (
        "services.app.balance.bounded_load: expected a factor >= 1"
    ),
    "    balance: {bounded_load: 1.5}\n": (
        "services.app.balance.bounded_load: bounded_load applies to mode: ring_hash and maglev"
    ),
    "    balance: {mode: maglev, hash_on: client_ip, virtual_nodes: 10}\n": (
        "services.app.balance.virtual_nodes: virtual_nodes applies to mode: ring_hash"
    ),
    "    affinity: {cookie: 'a b'}\n": 'services.app.affinity.cookie: "a b" is not a cookie name',
    "    affinity: {secret_file: /nonexistent/key}\n": (
        'services.app.affinity.secret_file: file not found: "/nonexistent/key"'
    ),
}


@pytest.mark.parametrize("snippet", list(BAD))
def test_config_errors_name_file_and_line(tmp_path, snippet):
    yaml = lb_yaml(["127.0.0.1:9001"], port=8080, admin_port=9901)
    path = tmp_path / "lb.yaml"
    path.write_text(yaml.replace("  app:\n", "  app:\n" + snippet))
    with pytest.raises(ConfigError) as info:
        load(str(path), environ={})
    problems = [str(p) for p in info.value.problems]
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{path}:8:"), problems  # the snippet's line
    assert BAD[snippet] in problems[0], problems


# -- the tables ----------------------------------------------------------------------------------
def members(n: int, weight=lambda i: 1) -> list[tuple[int, int, bytes]]:
    return [(i, weight(i), f"10.1.{i // 200}.{i % 200}:8080".encode()) for i in range(n)]


def table(
    kind: int, ms: list[tuple[int, int, bytes]], bound: float = 0.0, picker: Picker | None = None
) -> HashTable:
    t = HashTable(kind, bound, picker)
    t.rebuild(ms, 160 if kind == RING else 65537)
    for slot, _, _ in ms:
        t.set_eligible(slot, True)
    return t


@pytest.mark.parametrize("kind", [RING, MAGLEV], ids=["ring_hash", "maglev"])
def test_one_of_ten_moves_a_tenth_of_ten_thousand_keys(kind):
    keys = [f"session-{i}".encode() for i in range(10_000)]
    size = 160 if kind == RING else 65537
    t = table(kind, members(10))
    before = [t.pick(k) for k in keys]
    t.rebuild(members(9), size)  # in place, as Service.update does
    after = [t.pick(k) for k in keys]
    moved = sum(1 for a, b in zip(before, after, strict=True) if a != b)
    on_removed = before.count(9)
    assert 0.07 <= on_removed / len(keys) <= 0.13
    if kind == RING:
        assert moved == on_removed
    else:
        assert moved <= on_removed * 1.15
    # ... and adding it back brings those keys home.
    t.rebuild(members(10), size)
    assert [t.pick(k) for k in keys] == before


@pytest.mark.parametrize("kind", [RING, MAGLEV], ids=["ring_hash", "maglev"])
def test_shares_follow_weights(kind):
    t = table(kind, members(4, weight=lambda i: 1 + i))  # weights 1, 2, 3, 4
    picks = Counter(t.pick(f"k{i}".encode()) for i in range(20_000))
    for slot in range(4):
        share = picks[slot] / 20_000
        assert abs(share - (1 + slot) / 10) < 0.04, picks


@pytest.mark.parametrize("kind", [RING, MAGLEV], ids=["ring_hash", "maglev"])
def test_every_worker_builds_the_same_table_whatever_its_slots(kind):
    ms = members(50, weight=lambda i: 1 + i % 3)
    a = table(kind, ms)
    reordered = [(49 - slot, w, name) for slot, w, name in reversed(ms)]  # other slots, order
    b = table(kind, reordered)
    for i in range(2000):
        key = f"user-{i}".encode()
        assert 49 - a.pick(key) == b.pick(key)


def test_an_ineligible_backend_loses_only_its_own_keys():
    t = table(RING, members(6))
    keys = [f"k{i}".encode() for i in range(3000)]
    before = [t.pick(k) for k in keys]
    t.set_eligible(2, False)
    after = [t.pick(k) for k in keys]
    assert all(a == b for a, b in zip(before, after, strict=True) if a != 2)
    assert 2 not in after
    t.set_eligible(2, True)
    assert [t.pick(k) for k in keys] == before


def test_bounded_load_keeps_every_backend_under_its_share():
    """The table reads the picker's counts: whoever takes a slot (a least-connections pick
    too) fills it for the bound."""
    picker = Picker()
    slots = [picker.add(1, 0.0) for _ in range(6)]  # slot 5: not a member, yet counted
    t = table(MAGLEV, members(5), bound=1.25, picker=picker)
    for n in range(200):  # one hot key, nothing released
        if n % 10 == 9:
            picker.take(5)
        else:
            picker.take(t.pick(b"hot"))
        for s in slots[:5]:
            assert picker.in_flight(s) <= math.ceil(1.25 * (n + 1) / 5)
    assert picker.total_in_flight_sum() == 200


def test_a_bound_needs_the_pickers_counts():
    with pytest.raises(ValueError, match="in-flight counts of a picker"):
        HashTable(RING, 1.25)
    picker = Picker()
    picker.add(1, 0.0)
    with pytest.raises(ValueError, match="slot 1 is not a live slot of the picker"):
        table(RING, members(2), bound=1.25, picker=picker)


def test_a_newcomer_ramps_into_its_keys_over_slow_start():
    now = [0.0]
    spec = [model.BackendSpec((f"10.2.0.{i}", 80)) for i in range(5)]
    cfg = model.Service(
        backends=spec[:4],
        slow_start=10.0,
        balance=BalanceConfig(mode="ring_hash", hash_on=HashOn(header="x-user")),
    )
    svc = Service("app", cfg, clock=lambda: now[0])
    svc.update([(b.address[0], b.address[1], 1) for b in spec[:4]])
    svc.balance = Balance(svc, HeaderKey("x-user"), None, Counters())
    keys = [f"user-{i}".encode() for i in range(4000)]

    def pick_all() -> Counter[str]:
        got: Counter[str] = Counter()
        for k in keys:
            ex = SimpleNamespace(info=SimpleNamespace(forward=[(b"x-user", k)]), query="")
            b = svc.balance.pick(ex, now[0], None)
            got[b.host] += 1
            svc.release(b)
        return got

    cold = pick_all()  # all four ramp together: none is held back
    assert min(cold.values()) > 700
    now[0] = 20.0
    svc.update([(b.address[0], b.address[1], 1) for b in spec])
    natural = HashTable(RING)
    natural.rebuild([(i, 1, f"10.2.0.{i}:80".encode()) for i in range(5)], 160)
    for i in range(5):
        natural.set_eligible(i, True)
    theirs = sum(1 for k in keys if natural.pick(k) == 4)  # the newcomer's keys, ramped up
    shares = []
    for t in (20.0, 25.0, 31.0):
        now[0] = t
        shares.append(pick_all()["10.2.0.4"] / theirs)
    assert shares[0] < 0.2 and 0.35 < shares[1] < 0.65 and shares[2] == 1.0, shares
