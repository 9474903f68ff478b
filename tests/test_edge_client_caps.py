"""Per-client caps over real sockets: connections per client address refused at accept (HTTP
and tcp listeners, counted, given back as connections close) and requests in flight per
client key on a route (429/503, released however the request ends: response, client gone,
backend gone), and what a reload keeps."""

import asyncio
from pathlib import Path

from conftest import Client, free_port, read_response, running_lb
from edge_helpers import tcp_listener_config
from faulty import eventually, faulty, lb_for, reload, reset

LISTENER_CAP = "    max_connections_per_client: 2\n"


def cap_route(spec: str, name: str = "api") -> str:
    return (
        "routes:\n"
        f"  - name: {name}\n"
        "    match: {path: {prefix: /}}\n"
        "    service: app\n"
        f"    client_in_flight: {spec}\n"
    )


async def connect_from(port: int, source: str = "127.0.0.1") -> Client:
    r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    return Client(r, w)


async def refused_at_accept(port: int, source: str = "127.0.0.1") -> bool:
    """Whether lb closes a new connection without a byte, even when sent a request."""
    client = await connect_from(port, source)
    try:
        client.writer.write(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
        got = await asyncio.wait_for(client.reader.read(), 5)
    except ConnectionError:
        got = b""
    finally:
        client.close()
    return got == b""


# -- connections per client --------------------------------------------------------------------
async def test_connections_over_the_cap_are_closed_at_accept_and_counted(tmp_path: Path) -> None:
    async with faulty("a") as (a,), lb_for(tmp_path, [a], extra_listener=LISTENER_CAP) as lb:
        first = [await connect_from(lb.port) for _ in range(2)]
        for c in first:
            assert (await c.request()).status == 200  # both accepted and served
        assert await refused_at_accept(lb.port)
        refused = lb.server.runtime.counters["client_connections_refused"]
        assert refused[("web", "max_connections_per_client")] == 1
        # another client address has its own count
        other = await connect_from(lb.port, "127.0.0.2")
        assert (await other.request()).status == 200
        caps = lb.server.runtime.listeners["web"].client_caps
        assert caps.counts == {b"127.0.0.1": 2, b"127.0.0.2": 1}
        # a closed connection gives its place back; counts at 0 are dropped
        first[0].close()
        other.close()
        await eventually(lambda: caps.counts == {b"127.0.0.1": 1})
        again = await connect_from(lb.port)
        assert (await again.request()).status == 200
        again.close()
        first[1].close()
        await eventually(lambda: caps.counts == {})


async def test_failed_tls_handshakes_give_their_place_back(tmp_path: Path) -> None:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("a.example.com")
    c, k = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.cert_chain_pems[0].write_to_path(str(c))
    cert.private_key_pem.write_to_path(str(k))
    tls = f'    tls: {{certificates: [{{cert: "{c}", key: "{k}"}}]}}\n'
    async with faulty("a") as (a,), lb_for(tmp_path, [a], extra_listener=LISTENER_CAP + tls) as lb:
        caps = lb.server.runtime.listeners["web"].client_caps
        for _ in range(4):  # more than the cap: each one's place comes back
            r, w = await asyncio.open_connection("127.0.0.1", lb.port)
            w.write(b"not a client hello\r\n\r\n")
            try:
                await asyncio.wait_for(r.read(), 5)
            except ConnectionError:
                pass
            w.close()
            await eventually(lambda: caps.counts == {})


async def test_tcp_listener_caps_connections_per_client(tmp_path: Path) -> None:
    port = free_port()
    async with faulty("a") as (a,):
        text = tcp_listener_config(port, free_port(), a.address, "max_connections_per_client: 1")
        async with running_lb(tmp_path, text) as lb:
            held = await connect_from(port)
            assert (await held.request()).status == 200
            assert await refused_at_accept(port)
            refused = lb.server.runtime.counters["client_connections_refused"]
            assert refused[("db", "max_connections_per_client")] == 1
            held.close()
            caps = lb.server.runtime.listeners["db"].client_caps
            await eventually(lambda: caps.counts == {})
            again = await connect_from(port)
            assert (await again.request()).status == 200
            again.close()


async def test_a_reload_keeps_the_counts_and_applies_a_new_cap(tmp_path: Path) -> None:
    async with faulty("a") as (a,), lb_for(tmp_path, [a], extra_listener=LISTENER_CAP) as lb:
        held = [await connect_from(lb.port) for _ in range(2)]
        for c in held:
            assert (await c.request()).status == 200
        caps = lb.server.runtime.listeners["web"].client_caps
        await reload(lb, [a], extra_listener="    max_connections_per_client: 3\n")
        assert lb.server.runtime.listeners["web"].client_caps is caps
        third = await connect_from(lb.port)
        assert (await third.request()).status == 200
        assert await refused_at_accept(lb.port)
        await reload(lb, [a])  # no cap: nothing counted any more
        assert lb.server.runtime.listeners["web"].client_caps is None
        more = [await connect_from(lb.port) for _ in range(4)]
        for c in more:
            assert (await c.request()).status == 200
        for c in (*held, third, *more):
            c.close()


# -- requests in flight per client -------------------------------------------------------------
async def send(client: Client, path: str = "/", headers: str = "") -> None:
    client.writer.write(f"GET {path} HTTP/1.1\r\nhost: test\r\n{headers}\r\n".encode())
    await client.writer.drain()


def table(lb, route: str = "api"):  # type: ignore[no-untyped-def]
    return lb.server.runtime.table.by_name[route].guard.default[-1].policy.in_flight


async def test_in_flight_over_the_cap_answers_429_and_frees_when_the_response_ends(
    tmp_path: Path,
) -> None:
    async with (
        faulty("a") as (a,),
        lb_for(tmp_path, [a], routes=cap_route("{max: 1}")) as lb,
    ):
        a.mode, a.delay = "slow", 0.5
        slow = await connect_from(lb.port)
        await send(slow)
        await eventually(lambda: table(lb).in_flight == 1)
        second = await connect_from(lb.port)
        assert (await second.request()).status == 429
        other = await connect_from(lb.port, "127.0.0.2")  # its own key
        assert (await other.request()).status == 200
        assert (await asyncio.wait_for(read_response(slow.reader), 5)).status == 200
        assert table(lb).in_flight == 0 and table(lb).slots == {}
        a.mode = "ok"
        assert (await second.request()).status == 200
        counts = lb.server.runtime.counters["edge_decisions"]
        assert counts[("client_in_flight", "api", "denied")] == 1
        assert counts[("client_in_flight", "api", "allowed")] == 3
        for c in (slow, second, other):
            c.close()


async def test_in_flight_is_released_when_the_client_leaves_mid_request(tmp_path: Path) -> None:
    async with (
        faulty("a") as (a,),
        lb_for(tmp_path, [a], routes=cap_route("{max: 1, status: 503}")) as lb,
    ):
        a.mode = "hang"
        gone = await connect_from(lb.port)
        await send(gone)
        await eventually(lambda: table(lb).in_flight == 1)
        probe = await connect_from(lb.port)
        assert (await probe.request()).status == 503
        reset(gone)
        await eventually(lambda: table(lb).in_flight == 0)
        a.mode = "ok"
        assert (await probe.request()).status == 200
        probe.close()


async def test_in_flight_is_released_when_the_backend_dies(tmp_path: Path) -> None:
    routes = cap_route("{max: 1}") + "    retries: {attempts: 1}\n"
    async with faulty("a") as (a,), lb_for(tmp_path, [a], routes=routes) as lb:
        a.mode = "hang"
        client = await connect_from(lb.port)
        await send(client)
        await eventually(lambda: table(lb).in_flight == 1)
        await a.refuse()  # drops lb's connection mid-request
        assert (await asyncio.wait_for(read_response(client.reader), 5)).status == 502
        assert table(lb).in_flight == 0
        await a.resume()
        a.mode = "ok"
        assert (await client.request()).status == 200
        client.close()


async def test_header_key_overflow_and_a_reload_that_keeps_the_counts(tmp_path: Path) -> None:
    spec = '{max: 1, key: ["header:x-user"], max_keys: 1}'
    async with faulty("a") as (a,), lb_for(tmp_path, [a], routes=cap_route(spec)) as lb:
        a.mode = "hang"
        alice = await connect_from(lb.port)
        await send(alice, headers="x-user: alice\r\n")
        await eventually(lambda: table(lb).in_flight == 1)
        held = table(lb)
        bob = await connect_from(lb.port)
        await send(bob, headers="x-user: bob\r\n")  # no room for a key: the overflow slot
        await eventually(lambda: held.overflow.count == 1)
        carol = await connect_from(lb.port)
        r = await carol.request(headers="x-user: carol\r\n")
        assert r.status == 429  # the overflow slot is at the cap too
        await reload(lb, [a], routes=cap_route('{max: 2, key: ["header:x-user"], max_keys: 1}'))
        assert table(lb) is held and held.max == 2  # same key spec: same counts
        await reload(lb, [a], routes=cap_route("{max: 2}"))
        assert table(lb) is not held  # another key: a fresh table
        reset(alice)
        reset(bob)
        await eventually(lambda: held.in_flight == 0 and held.slots == {})
        carol.close()
