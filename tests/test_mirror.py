"""Request mirroring (`routes[].mirror`): the shadow gets the sampled share of requests with
its Host suffixed and the body; bodies over max_body are not copied; a shadow that hangs,
resets or is gone changes nothing for clients while the in-flight cap holds; metrics and
config errors."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from conftest import Client, RawBackend, backends, free_port, lb_yaml, read_response, running_lb
from faulty import eventually
from tcp_util import scrape

from lb.config import ConfigError, load


def config(primary: RawBackend, shadow: str, mirror: str) -> str:
    return lb_yaml(
        [primary.address],
        port=free_port(),
        admin_port=free_port(),
        extra_service=f'  shadow:\n    backends: ["{shadow}"]\n',
        routes=(
            "routes:\n  - name: api\n    match: {path: {prefix: /}}\n    service: app\n"
            f"    mirror: {mirror}\n"
        ),
    )


def results(lb) -> dict[str, int]:
    counts = lb.server.runtime.counters["mirror_requests"]
    return {result: n for (route, result), n in counts.items() if route == "api" and n}


def policy(lb):
    return lb.server.runtime.table.routes[0].mirror


async def hang(backend: RawBackend, reader: asyncio.StreamReader, writer) -> None:
    await reader.read()  # accepts, reads, never answers, until lb gives up


async def reset(backend: RawBackend, reader: asyncio.StreamReader, writer) -> None:
    await reader.read(1)
    writer.transport.abort()


async def test_the_shadow_gets_the_sampled_share_with_host_and_body(tmp_path: Path) -> None:
    async with backends(2) as (primary, shadow):
        text = config(primary, shadow.address, "{service: shadow, percent: 20}")
        async with running_lb(tmp_path, text) as lb:
            client = await Client.connect(lb.port)
            try:
                for i in range(50):
                    r = await client.request("POST", f"/p{i}", host="api.test", body=b"b%d" % i)
                    assert r.status == 200
            finally:
                client.close()
            await eventually(lambda: len(shadow.seen) == 10)
            assert len(primary.seen) == 50
            assert [s.path for s in shadow.seen] == [f"/p{i}" for i in range(4, 50, 5)]
            for seen in shadow.seen:
                assert seen.header("host") == "api.test-shadow"
                assert seen.body == b"b" + seen.path[2:].encode()
                assert seen.header("x-forwarded-for") == "127.0.0.1"
                primary_twin = next(p for p in primary.seen if p.path == seen.path)
                assert seen.header("x-request-id") == primary_twin.header("x-request-id")
            assert results(lb) == {"sent": 10}
            metrics = await scrape(lb.admin_port)
            sent = (("result", "sent"), ("route", "api"))
            assert metrics[("lb_mirror_requests_total", sent)] == 10


async def test_host_with_port_and_chunked_bodies(tmp_path: Path) -> None:
    async with backends(2) as (primary, shadow):
        text = config(primary, shadow.address, "{service: shadow, max_body: 1KiB}")
        async with running_lb(tmp_path, text) as lb:
            reader, writer = await asyncio.open_connection("127.0.0.1", lb.port)
            chunks = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            writer.write(
                b"PUT /c HTTP/1.1\r\nhost: api.test:8080\r\ntransfer-encoding: chunked\r\n\r\n"
                + chunks
            )
            await writer.drain()
            assert b" 200 " in await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
            writer.close()
            await eventually(lambda: len(shadow.seen) == 1)
            seen = shadow.seen[0]
            assert seen.header("host") == "api.test-shadow:8080"
            assert seen.body == b"hello world"
            assert seen.header("content-length") == "11"
            assert seen.header("transfer-encoding") is None
            assert primary.seen[0].body == b"hello world"


async def test_bodies_over_max_body_are_not_mirrored(tmp_path: Path) -> None:
    async with backends(2) as (primary, shadow):
        text = config(primary, shadow.address, "{service: shadow, max_body: 100}")
        async with running_lb(tmp_path, text) as lb:
            client = await Client.connect(lb.port)
            try:
                assert (await client.request("POST", "/big", body=b"x" * 101)).status == 200
                big_chunks = b"".join(b"40\r\n" + b"y" * 64 + b"\r\n" for _ in range(3))
                client.writer.write(
                    b"POST /chunked HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n"
                    + big_chunks
                    + b"0\r\n\r\n"
                )
                await client.writer.drain()
                assert (await asyncio.wait_for(read_response(client.reader), 5)).status == 200
                assert (await client.request("POST", "/fits", body=b"z" * 100)).status == 200
            finally:
                client.close()
            await eventually(lambda: len(shadow.seen) == 1)
            assert shadow.seen[0].path == "/fits"
            assert [p.path for p in primary.seen] == ["/big", "/chunked", "/fits"]
            assert primary.seen[1].body == b"y" * 192
            assert results(lb) == {"skipped_body": 2, "sent": 1}


@pytest.mark.parametrize("kind", ["hang", "reset", "gone"])
async def test_a_failing_shadow_changes_nothing_for_clients(tmp_path: Path, kind: str) -> None:
    shadow = await RawBackend(handler=hang if kind == "hang" else reset).start()
    address = shadow.address
    if kind == "gone":
        await shadow.stop()
    mirror = "{service: shadow, max_in_flight: 3, timeout: 1s}"
    try:
        async with (
            backends(1) as (primary,),
            running_lb(tmp_path, config(primary, address, mirror)) as lb,
        ):

            async def one(i: int) -> int:
                client = await Client.connect(lb.port)
                try:
                    r = await client.request("POST", f"/r{i}", body=b"data", timeout=3)
                    assert policy(lb).in_flight <= 3  # the cap holds
                    return r.status
                finally:
                    client.close()

            for _ in range(4):  # waves of concurrent clients, each answered without waiting
                assert (
                    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(10))), 5)
                    == [200] * 10
                )
            assert len(primary.seen) == 40
            await eventually(lambda: policy(lb).in_flight == 0, timeout=5)
            counts = results(lb)
            assert "sent" not in counts
            assert counts["failed"] + counts.get("skipped_busy", 0) == 40
            if kind == "hang":
                assert counts["skipped_busy"] >= 30  # three at a time, each held to its timeout
    finally:
        if kind != "gone":
            await shadow.stop()


@pytest.mark.parametrize(
    ("routes_yaml", "message"),
    [
        (
            "    service: app\n    mirror: {service: nowhere}\n",
            'routes[0].mirror.service: unknown service "nowhere"',
        ),
        ("    service: app\n    mirror: {service: h2}\n", "the shadow service needs protocol"),
        ("    respond: {status: 200}\n    mirror: {service: app}\n", "mirror applies to routes"),
        ("    service: app\n    mirror: {service: app, percent: 101}\n", "a percentage"),
        ("    service: app\n    mirror: {service: app, max_in_flight: 0}\n", "a positive"),
        ("    service: app\n    mirror: {service: app, timeout: 0s}\n", "a positive duration"),
        ("    service: app\n    mirror: {percent: 5}\n", "mirror.service: required field"),
    ],
)
def test_config_errors(tmp_path: Path, routes_yaml: str, message: str) -> None:
    path = tmp_path / "lb.yaml"
    text = lb_yaml(
        ["127.0.0.1:1"],
        port=1,
        admin_port=2,
        extra_service='  h2:\n    protocol: h2\n    backends: ["127.0.0.1:2"]\n',
        routes=f"routes:\n  - name: r\n{routes_yaml}",
    )
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load(str(path))
    assert message in str(err.value), str(err.value)
