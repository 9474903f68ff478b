"""IP allow and deny lists: the compiled lookup (IPv4, IPv6, mapped, 10,000 CIDRs), through
lb over real sockets from several loopback sources (127.0.0.x, ::1), behind trusted proxies,
on tcp listeners, across reloads, in metrics and the access log, and the config errors."""

import asyncio
import ipaddress
import json
import random
import time
from pathlib import Path

import pytest
from conftest import Client, free_port, read_response, running_lb
from edge_helpers import tcp_listener_config
from faulty import eventually, faulty, lb_for, reload

from lb.config import ConfigError, load
from lb.config.edge_model import IpFilter
from lb.edge.ipfilter import CidrSet, IpRule, parse_address


def filter_route(ip_filter: str, name: str = "api") -> str:
    return (
        "routes:\n"
        f"  - name: {name}\n"
        "    match: {path: {prefix: /}}\n"
        "    service: app\n"
        f"    ip_filter: {ip_filter}\n"
    )


async def get_from(port: int, source: str, headers: str = "", host: str = "127.0.0.1") -> int:
    """One request from a given loopback source address; its status."""
    reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
    try:
        writer.write(f"GET / HTTP/1.1\r\nhost: test\r\n{headers}\r\n".encode())
        return (await asyncio.wait_for(read_response(reader), 5)).status
    finally:
        writer.close()


# -- the compiled lookup ---------------------------------------------------------------------------
def test_cidr_set_matches_ipv4_ipv6_and_mapped_addresses() -> None:
    s = CidrSet(["10.0.0.0/8", "192.168.1.7/32", "2001:db8::/32", "::ffff:172.16.0.0/108"])
    assert parse_address(b"10.200.3.4") in s
    assert parse_address(b"192.168.1.7") in s
    assert parse_address(b"192.168.1.8") not in s
    assert parse_address(b"2001:db8:1::5") in s
    assert parse_address(b"2001:db9::1") not in s
    assert parse_address(b"::ffff:10.1.2.3") in s  # a dual-stack socket's IPv4 peer
    assert parse_address(b"172.16.9.9") in s  # a mapped range judges IPv4 addresses
    assert parse_address(b"fe80::1%eth0") not in s
    assert parse_address(b"not an address") is None
    assert parse_address(b"1.2.3.4:80") is None


def test_ten_thousand_cidrs_agree_with_ipaddress_and_probe_few_tables() -> None:
    rng = random.Random(14)
    cidrs = [
        f"{ipaddress.IPv4Address(rng.getrandbits(32))}/{rng.randint(8, 32)}" for _ in range(9000)
    ]
    cidrs += [
        f"{ipaddress.IPv6Address(rng.getrandbits(128))}/{rng.randint(16, 128)}" for _ in range(1000)
    ]
    s = CidrSet(cidrs)
    assert s.size == 10_000
    assert len(s.v4) <= 33 and len(s.v6) <= 129  # what a lookup probes, whatever the count
    nets = [ipaddress.ip_network(c, strict=False) for c in cidrs]
    # addresses inside listed networks, and random ones (mostly outside)
    samples = [nets[rng.randrange(len(nets))].network_address for _ in range(200)]
    samples += [ipaddress.IPv4Address(rng.getrandbits(32)) for _ in range(200)]
    for addr in samples:
        expected = any(addr.version == n.version and addr in n for n in nets)
        assert (parse_address(str(addr).encode()) in s) is expected, addr
    rule = IpRule(IpFilter(deny=cidrs))
    start = time.perf_counter()
    for _ in range(20_000):
        rule.judge(b"203.0.113.77")
    assert (time.perf_counter() - start) / 20_000 < 50e-6  # bounded: tables, not the list


def test_deny_wins_and_allow_list_refuses_the_rest() -> None:
    rule = IpRule(IpFilter(allow=["10.0.0.0/8"], deny=["10.6.6.0/24"]))
    assert rule.admits(b"10.1.1.1")
    assert not rule.admits(b"10.6.6.6")
    assert not rule.admits(b"11.0.0.1")
    assert not rule.admits(b"garbage")  # not an address: nothing vouches for it
    assert rule.admits(b"10.1.1.1")  # memoised verdicts stay the same


# -- through lb ------------------------------------------------------------------------------------
async def test_route_deny_list_answers_403_counts_and_logs_the_policy(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    listener = f'    access_log: {{path: "{log}"}}\n'
    async with (
        faulty("a") as (a,),
        lb_for(
            tmp_path, [a], routes=filter_route('{deny: ["127.0.0.2/32"]}'), extra_listener=listener
        ) as lb,
    ):
        assert await get_from(lb.port, "127.0.0.1") == 200
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", lb.port, local_addr=("127.0.0.2", 0)
        )
        writer.write(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
        refused = await asyncio.wait_for(read_response(reader), 5)
        writer.close()
        assert refused.status == 403 and b"Forbidden" in refused.body
        assert a.requests == 1  # the refused request never reached the backend
        counts = lb.server.runtime.counters["edge_decisions"]
        assert counts[("ip_filter", "api", "allowed")] == 1
        assert counts[("ip_filter", "api", "denied")] == 1

        def logged() -> list[dict]:
            return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []

        await eventually(lambda: len(logged()) == 2)
        lines = logged()
        assert [x["refused_by"] for x in lines] == [None, "ip_filter"]
        assert lines[1]["status"] == 403
        r, w = await asyncio.open_connection("127.0.0.1", lb.admin_port)
        w.write(b"GET /metrics HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
        text = (await asyncio.wait_for(r.read(), 5)).decode()
        w.close()
        series = [x for x in text.splitlines() if x.startswith("lb_edge_decisions_total{")]
        assert any('policy="ip_filter"' in x and 'result="denied"' in x for x in series), series


async def test_forwarded_for_behind_trusted_proxies_judges_the_rightmost_untrusted_hop(
    tmp_path: Path,
) -> None:
    listener = '    trusted_proxies: ["127.0.0.0/8"]\n'
    routes = filter_route('{deny: ["203.0.113.0/24", "2001:db8::/32"]}')
    async with (
        faulty("a") as (a,),
        lb_for(tmp_path, [a], routes=routes, extra_listener=listener) as lb,
    ):
        # the trusted proxy (127.0.0.1) appended the client it saw last
        assert (
            await get_from(lb.port, "127.0.0.1", "x-forwarded-for: 198.51.100.1, 203.0.113.5\r\n")
            == 403
        )
        # a client writing a denied address to the left changes nothing
        assert (
            await get_from(lb.port, "127.0.0.1", "x-forwarded-for: 203.0.113.5, 198.51.100.1\r\n")
            == 200
        )
        assert await get_from(lb.port, "127.0.0.1", "x-forwarded-for: 2001:db8::7\r\n") == 403
        assert await get_from(lb.port, "127.0.0.1", "x-forwarded-for: 2001:db9::7\r\n") == 200
        assert await get_from(lb.port, "127.0.0.1") == 200  # no header: the peer itself


async def test_listener_allow_list_over_ipv6_then_the_routes_own(tmp_path: Path) -> None:
    port = free_port()
    async with faulty("a") as (a,):
        text = f"""\
listeners:
  - name: v6
    bind: "[::1]:{port}"
    ip_filter: {{allow: ["::1/128", "2001:db8::/32"]}}
admin: {{bind: "127.0.0.1:{free_port()}"}}
services:
  app: {{backends: ["{a.address}"]}}
routes:
  - name: open
    match: {{path: {{prefix: /open}}}}
    service: app
  - name: closed
    match: {{path: {{prefix: /closed}}}}
    service: app
    ip_filter: {{deny: ["::1/128"]}}
"""
        async with running_lb(tmp_path, text) as lb:
            r, w = await asyncio.open_connection("::1", port)
            client = Client(r, w)
            assert (await client.request(path="/open")).status == 200
            assert (await client.request(path="/closed")).status == 403
            client.close()
            counts = lb.server.runtime.counters["edge_decisions"]
            assert counts[("listener_ip_filter", "open", "allowed")] == 1
            assert counts[("listener_ip_filter", "closed", "allowed")] == 1
            assert counts[("ip_filter", "closed", "denied")] == 1


async def test_ten_thousand_cidrs_in_the_config_and_a_reload_that_changes_the_lists(
    tmp_path: Path,
) -> None:
    many = ", ".join(f'"10.{i // 250}.{i % 250}.0/24"' for i in range(9_999))
    deny = f'{{deny: [{many}, "127.0.0.2/32"]}}'
    async with faulty("a") as (a,), lb_for(tmp_path, [a], routes=filter_route(deny)) as lb:
        rule = lb.server.runtime.table.by_name["api"].guard.default[0].policy.rule
        assert rule.deny.size == 10_000
        assert await get_from(lb.port, "127.0.0.2") == 403
        assert await get_from(lb.port, "127.0.0.3") == 200
        # now only 127.0.0.2 may come in
        await reload(lb, [a], routes=filter_route('{allow: ["127.0.0.2/32"]}'))
        assert await get_from(lb.port, "127.0.0.2") == 200
        assert await get_from(lb.port, "127.0.0.3") == 403
        await reload(lb, [a], routes=filter_route('{allow: ["127.0.0.2/32"]}', name="other"))
        assert await get_from(lb.port, "127.0.0.3") == 403


async def test_kept_across_a_reload_that_does_not_change_it(tmp_path: Path) -> None:
    routes = filter_route('{deny: ["127.0.0.2/32"]}')
    async with faulty("a") as (a,), lb_for(tmp_path, [a], routes=routes) as lb:
        before = lb.server.runtime.table.by_name["api"].guard.default[0].policy.rule
        await reload(lb, [a], routes=routes, extra="# a comment changes the digest\n")
        assert lb.server.runtime.table.by_name["api"].guard.default[0].policy.rule is before


async def test_tcp_listener_refuses_at_accept_without_a_byte(tmp_path: Path) -> None:
    port = free_port()
    async with faulty("a") as (a,):
        deny = 'ip_filter: {deny: ["127.0.0.2/32"]}'
        text = tcp_listener_config(port, free_port(), a.address, deny)
        async with running_lb(tmp_path, text) as lb:
            assert await get_from(port, "127.0.0.1") == 200
            r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0))
            w.write(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
            try:
                got = await asyncio.wait_for(r.read(), 5)
            except ConnectionError:
                got = b""
            w.close()
            assert got == b""
            refused = lb.server.runtime.counters["client_connections_refused"]
            assert refused[("db", "ip_filter")] == 1
            assert a.requests == 1


# -- config errors ---------------------------------------------------------------------------------
GOOD = """\
listeners:
  - name: web
    bind: "127.0.0.1:8080"
services:
  app:
    backends: ["127.0.0.1:9001"]
routes:
"""


def problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "lb.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load(str(path))
    return [str(p) for p in info.value.problems]


def test_config_errors_name_file_and_line(tmp_path: Path) -> None:
    out = problems(
        tmp_path,
        GOOD
        + "  - name: a\n    service: app\n    ip_filter: {deny: [10.0.0.0/33]}\n"
        + "  - name: b\n    service: app\n    ip_filter: {}\n",
    )
    f = f"{tmp_path}/lb.yaml"
    assert any(
        p.startswith(f"{f}:10:") and "routes[0].ip_filter.deny[0]" in p and "CIDR" in p for p in out
    ), out
    assert any(
        p.startswith(f"{f}:13:") and "an ip_filter needs allow, deny or both" in p for p in out
    ), out


def test_tcp_listener_accepts_ip_filter_and_refuses_jwt(tmp_path: Path) -> None:
    head = (
        'listeners:\n  - name: db\n    mode: tcp\n    bind: "127.0.0.1:5432"\n    service: app\n'
        '    ip_filter: {allow: ["10.0.0.0/8"]}\n    max_connections_per_client: 4\n'
    )
    tail = 'services:\n  app:\n    backends: ["127.0.0.1:9001"]\n'
    load_path = tmp_path / "ok.yaml"
    load_path.write_text(head + tail)
    assert load(str(load_path)).config.listeners[0].ip_filter is not None
    secret = tmp_path / "secret"
    secret.write_bytes(b"s" * 32)
    jwt = f"    jwt: {{secret_file: {secret}, algorithms: [HS256]}}\n"
    out = problems(tmp_path, head + jwt + tail)
    assert any(":8:" in p and "jwt applies to mode: http listeners" in p for p in out), out
