"""Rate limits through the proxy: 429 and its headers, dry run, keys, trusted proxies, listener
limits, and limits kept across reloads."""

import asyncio
from pathlib import Path

from conftest import Client, read_response
from faulty import faulty, get, lb_for, reload


def route_limit(limit: str, key: str = "client_ip", name: str = "api") -> str:
    return (
        "routes:\n"
        f"  - name: {name}\n"
        "    match: {path: {prefix: /}}\n"
        "    service: app\n"
        f"    rate_limit: {{{limit}, key: {key}}}\n"
    )


async def get_from(port: int, source: str, headers: str = "") -> int:
    """One request from a given loopback source address; its status."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        writer.write(f"GET / HTTP/1.1\r\nhost: test\r\n{headers}\r\n".encode())
        return (await asyncio.wait_for(read_response(reader), 5)).status
    finally:
        writer.close()


async def statuses(port: int, n: int, headers: str = "", path: str = "/") -> list[int]:
    client = await Client.connect(port)
    try:
        return [(await client.request("GET", path, headers=headers)).status for _ in range(n)]
    finally:
        client.close()


async def test_over_the_limit_answers_429_with_retry_after_and_ratelimit_headers(
    tmp_path: Path,
) -> None:
    async with (
        faulty("a") as (a,),
        lb_for(tmp_path, [a], routes=route_limit('rate: "1/m", burst: 2')) as lb,
    ):
        client = await Client.connect(lb.port)
        ok = [await client.request() for _ in range(3)]
        limited = await client.request()
        head = await client.request("HEAD")
        client.close()
        assert [r.status for r in ok] == [200, 200, 200]
        assert limited.status == 429
        assert limited.body == b"429 Too Many Requests\n"
        assert 1 <= int(limited.header("retry-after") or 0) <= 60
        assert limited.header("ratelimit-policy") == '"api";q=1;w=60'
        assert (limited.header("ratelimit") or "").startswith('"api";r=0;t=')
        assert head.status == 429 and head.body == b""
        assert a.requests == 3  # the backend never saw the limited ones
        limit = lb.server.runtime.table.by_name["api"].limiter
        assert limit.decisions == {
            "allowed": 3,
            "limited": 2,
            "dry_run_limited": 0,
            "redis_failure": 0,
        }
        assert lb.server.runtime.counters["ratelimit"][("route", "api", "limited")] == 2


async def test_dry_run_only_counts(tmp_path: Path) -> None:
    routes = route_limit('rate: "1/m", burst: 1, dry_run: true')
    async with faulty("a") as (a,), lb_for(tmp_path, [a], routes=routes) as lb:
        assert await statuses(lb.port, 5) == [200] * 5
        limit = lb.server.runtime.table.by_name["api"].limiter
        assert limit.decisions["allowed"] == 2
        assert limit.decisions["dry_run_limited"] == 3
        assert lb.server.runtime.counters["ratelimit"][("route", "api", "dry_run")] == 3


async def test_client_ip_key_gives_each_address_its_own_bucket(tmp_path: Path) -> None:
    async with (
        faulty("a") as (a,),
        lb_for(tmp_path, [a], routes=route_limit('rate: "1/m", burst: 0')) as lb,
    ):
        assert [await get_from(lb.port, "127.0.0.1") for _ in range(2)] == [200, 429]
        assert [await get_from(lb.port, "127.0.0.2") for _ in range(2)] == [200, 429]


async def test_header_key_and_route_key(tmp_path: Path) -> None:
    async with faulty("a") as (a,):
        routes = route_limit('rate: "1/m", burst: 0', key="header:X-Api-Key")
        async with lb_for(tmp_path, [a], routes=routes) as lb:
            assert await statuses(lb.port, 2, "x-api-key: one\r\n") == [200, 429]
            assert await statuses(lb.port, 2, "x-api-key: two\r\n") == [200, 429]
            assert await statuses(lb.port, 2) == [200, 429]  # no header: one shared bucket
        routes = route_limit('rate: "1/m", burst: 1', key="route")
        async with lb_for(tmp_path, [a], routes=routes) as lb:
            # One bucket for the whole route, whoever asks.
            assert await get_from(lb.port, "127.0.0.1") == 200
            assert await get_from(lb.port, "127.0.0.2") == 200
            assert await get_from(lb.port, "127.0.0.3") == 429


async def test_combined_key_needs_every_part_to_match(tmp_path: Path) -> None:
    routes = route_limit('rate: "1/m", burst: 0', key="[client_ip, 'header:x-user']")
    async with faulty("a") as (a,), lb_for(tmp_path, [a], routes=routes) as lb:
        user = "x-user: u1\r\n"
        assert await get_from(lb.port, "127.0.0.1", user) == 200
        assert await get_from(lb.port, "127.0.0.1", user) == 429
        assert await get_from(lb.port, "127.0.0.2", user) == 200
        assert await get_from(lb.port, "127.0.0.1", "x-user: u2\r\n") == 200


async def test_forwarded_for_counts_only_behind_trusted_proxies(tmp_path: Path) -> None:
    routes = route_limit('rate: "1/m", burst: 0')
    async with faulty("a") as (a,):
        trusted = '    trusted_proxies: ["127.0.0.0/8"]\n'
        async with lb_for(tmp_path, [a], routes=routes, extra_listener=trusted) as lb:
            xff = "x-forwarded-for: 203.0.113.9\r\n"
            assert await statuses(lb.port, 2, xff) == [200, 429]
            assert await statuses(lb.port, 1, "x-forwarded-for: 203.0.113.10\r\n") == [200]
            # The right-most address outside the trusted set is the client; what the client
            # wrote further left is ignored, and trusted hops on the right are skipped.
            spoofed = "x-forwarded-for: 198.51.100.1, 203.0.113.9, 127.0.0.7\r\n"
            assert await statuses(lb.port, 1, spoofed) == [429]
            # Without the header the peer itself is the client.
            assert await statuses(lb.port, 2) == [200, 429]
        untrusted = '    trusted_proxies: ["10.0.0.0/8"]\n'
        async with lb_for(tmp_path, [a], routes=routes, extra_listener=untrusted) as lb:
            assert await statuses(lb.port, 1, "x-forwarded-for: 203.0.113.1\r\n") == [200]
            assert await statuses(lb.port, 1, "x-forwarded-for: 203.0.113.2\r\n") == [429]


async def test_listener_limit_covers_every_route(tmp_path: Path) -> None:
    routes = (
        "routes:\n"
        "  - name: one\n"
        "    match: {path: {prefix: /one}}\n"
        "    service: app\n"
        "  - name: two\n"
        "    match: {path: {prefix: /two}}\n"
        "    service: app\n"
        "    rate_limit: {rate: 100/s, burst: 100}\n"
    )
    listener = '    rate_limit: {rate: "1/m", burst: 1}\n'
    async with (
        faulty("a") as (a,),
        lb_for(tmp_path, [a], routes=routes, extra_listener=listener) as lb,
    ):
        assert await statuses(lb.port, 1, path="/one") == [200]
        assert await statuses(lb.port, 1, path="/two") == [200]
        r = await get(lb, "/one")
        assert r.status == 429
        assert r.header("ratelimit-policy") == '"web";q=1;w=60'
        assert (await get(lb, "/two")).status == 429
        counts = lb.server.runtime.counters["ratelimit"]
        assert counts[("listener", "web", "limited")] == 2
        assert counts[("route", "two", "allowed")] == 1


async def test_limit_state_survives_a_reload(tmp_path: Path) -> None:
    limited = route_limit('rate: "1/m", burst: 1')
    async with faulty("a") as (a,), lb_for(tmp_path, [a], routes=limited) as lb:
        assert await statuses(lb.port, 3) == [200, 200, 429]
        before = lb.server.runtime.table.by_name["api"].limiter
        # Another route changes; this one's limit does not: no fresh burst.
        await reload(
            lb,
            [a],
            routes=limited + "  - name: other\n    match: {path: {exact: /x}}\n    service: app\n",
        )
        after = lb.server.runtime.table.by_name["api"].limiter
        assert after is before
        assert await statuses(lb.port, 1) == [429]
        # A changed limit starts afresh.
        await reload(lb, [a], routes=route_limit('rate: "1/m", burst: 2'))
        assert await statuses(lb.port, 4) == [200, 200, 200, 429]
        # No limit at all: nothing on the request path.
        await reload(lb, [a])
        assert lb.server.runtime.table.by_name["all"].limiter is None
        assert await statuses(lb.port, 2) == [200, 200]
