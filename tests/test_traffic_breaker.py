"""Circuit breaking through the proxy: caps, backend breakers (consecutive failures, ratio with a
minimum volume, half-open probes, growing open time) and the service breaker with fallback."""

import asyncio
from pathlib import Path

import pytest
from conftest import Client, Response
from faulty import backend_of, eventually, faulty, get, lb_for, reset

OVERLOADED = "x-lb-overloaded"


def breaker(**settings: object) -> str:
    lines = "".join(f"      {k}: {v}\n" for k, v in settings.items())
    return f"    circuit_breaker:\n{lines}"


async def in_background(lb_port: int, path: str = "/") -> tuple[Client, asyncio.Task[Response]]:
    client = await Client.connect(lb_port)
    return client, asyncio.create_task(client.request("GET", path))


async def test_max_requests_overflow_is_503_overloaded(tmp_path: Path) -> None:
    async with (
        faulty("a") as (a,),
        lb_for(tmp_path, [a], extra_service=breaker(max_requests=1)) as lb,
    ):
        a.mode = "slow"
        client, slow = await in_background(lb.port)
        svc = lb.server.runtime.services["app"]
        await eventually(lambda: svc.caps.requests == 1)
        r = await get(lb)
        assert r.status == 503
        assert r.header(OVERLOADED) == "true"
        assert svc.caps.overflows["requests"] == 1
        assert (await slow).status == 200
        client.close()
        assert svc.caps.requests == 0  # left exactly once
        a.mode = "ok"
        assert (await get(lb)).status == 200


async def test_max_connections_overflow(tmp_path: Path) -> None:
    async with (
        faulty("a") as (a,),
        lb_for(tmp_path, [a], extra_service=breaker(max_connections=1)) as lb,
    ):
        a.mode = "hang"
        client, hung = await in_background(lb.port)
        b = backend_of(lb, a)
        await eventually(lambda: b.open_conns == 1)
        r = await get(lb)
        assert r.status == 503 and r.header(OVERLOADED) == "true"
        caps = lb.server.runtime.services["app"].caps
        assert caps.overflows["connections"] == 1
        assert caps.connections == 1
        hung.cancel()
        reset(client)  # lb drops the request and its connection
        await eventually(lambda: b.open_conns == 0)
        a.mode = "ok"
        assert (await get(lb)).status == 200


async def test_max_pending_counts_requests_waiting_for_a_connection(tmp_path: Path) -> None:
    # A backend that accepts TCP but never finishes the TLS handshake: requests wait for a
    # connection, which is exactly what "pending" means.
    held: list[asyncio.StreamWriter] = []
    stalled = await asyncio.start_server(lambda r, w: held.append(w), "127.0.0.1", 0)
    address = f"127.0.0.1:{stalled.sockets[0].getsockname()[1]}"
    service = breaker(max_pending=1) + "    tls: {verify: false}\n    timeouts: {connect: 2s}\n"
    try:
        async with lb_for(tmp_path, [address], extra_service=service) as lb:
            client, waiting = await in_background(lb.port)
            caps = lb.server.runtime.services["app"].caps
            await eventually(lambda: caps.requests == 1)
            r = await get(lb)
            assert r.status == 503 and r.header(OVERLOADED) == "true"
            assert caps.overflows["pending"] == 1
            assert caps.pending == 1
            waiting.cancel()
            reset(client)
            await eventually(lambda: caps.requests == 0)
            for w in held:
                w.close()  # lb's handshake fails and its connection attempt ends
            await asyncio.sleep(0.05)
    finally:
        stalled.close()


async def test_max_retries_cap(tmp_path: Path) -> None:
    routes = (
        "routes:\n  - name: all\n    match: {path: {prefix: /}}\n    service: app\n"
        "    retries: {attempts: 3, on: [connect-failure], backoff: 1ms}\n"
    )
    async with faulty("a", "b") as (a, b):
        await a.refuse()
        service = breaker(max_retries=0, consecutive_failures=100, min_requests=100)
        async with lb_for(tmp_path, [a, b], extra_service=service, routes=routes) as lb:
            results = [(await get(lb)).status for _ in range(4)]
            caps = lb.server.runtime.services["app"].caps
            assert 502 in results  # the refused backend's requests could not be retried
            assert caps.overflows["retries"] == results.count(502)


async def test_backend_breaker_opens_on_consecutive_failures_and_closes_after_a_probe(
    tmp_path: Path,
) -> None:
    service = breaker(consecutive_failures=3, min_requests=100, open_for=0.3, failure_on="[5xx]")
    async with faulty("a", "b") as (a, b), lb_for(tmp_path, [a, b], extra_service=service) as lb:
        a.mode = "500"
        for _ in range(6):
            await get(lb)
        ba = backend_of(lb, a)
        assert a.requests == 3
        assert ba.breaker.state == "open"
        assert ba.state(lb.server.loop.time()) == ("down", "circuit-open")
        for _ in range(4):
            assert (await get(lb)).status == 200  # all on b
        assert a.requests == 3
        a.mode = "ok"
        await eventually(lambda: ba.breaker.state == "half_open")
        for _ in range(4):
            assert (await get(lb)).status == 200
        assert a.requests >= 4  # the probe went through, and more after it closed
        assert ba.breaker.state == "closed"
        assert ba.breaker.transitions == {
            ("closed", "open"): 1,
            ("open", "half_open"): 1,
            ("half_open", "closed"): 1,
        }


async def test_ratio_needs_the_minimum_volume(tmp_path: Path) -> None:
    # Three backends, so that the service as a whole stays below the ratio.
    service = breaker(consecutive_failures=100, failure_ratio=0.75, min_requests=4, open_for=30)
    async with (
        faulty("a", "b", "c") as (a, b, c),
        lb_for(tmp_path, [a, b, c], extra_service=service) as lb,
    ):
        a.mode = "503"
        ba = backend_of(lb, a)
        while a.requests < 3:
            await get(lb)
        assert ba.breaker.state == "closed"  # 3 failures out of 3, but below min_requests
        while a.requests < 4:
            await get(lb)
        assert ba.breaker.state == "open"
        assert ba.breaker.window_counts == (4, 4)
        assert lb.server.runtime.services["app"].breaker.state == "closed"


async def test_half_open_lets_only_the_probe_through_and_reopens_for_longer(
    tmp_path: Path,
) -> None:
    service = breaker(consecutive_failures=1, min_requests=100, open_for=0.3, max_open_for=10)
    # Retries hide a's failures from the service's own breaker, which would trip on the first.
    routes = (
        "routes:\n  - name: all\n    match: {path: {prefix: /}}\n    service: app\n"
        "    retries: {on: [5xx], backoff: 1ms}\n"
    )
    async with (
        faulty("a", "b") as (a, b),
        lb_for(tmp_path, [a, b], extra_service=service, routes=routes) as lb,
    ):
        a.mode = "500"
        while a.requests < 1:
            await get(lb)
        br = backend_of(lb, a).breaker
        assert br.state == "open"
        # Half-open with a slow probe in flight: every other request goes to b meanwhile.
        a.mode = "slow"
        a.delay = 0.3
        await eventually(lambda: br.state == "half_open")
        pending = [await in_background(lb.port) for _ in range(6)]
        results = await asyncio.gather(*(task for _, task in pending))
        for client, _ in pending:
            client.close()
        assert [r.status for r in results] == [200] * 6
        assert sorted(r.body for r in results) == [b"a"] + [b"b"] * 5
        assert br.state == "closed"
        # A failed probe reopens, each time for twice as long.
        a.mode = "500"
        while br.state != "open":
            await get(lb)
        loop = lb.server.loop
        assert br.open_until - loop.time() == pytest.approx(0.3, abs=0.1)
        await eventually(lambda: br.state == "half_open")
        while br.state != "open":
            await get(lb)
        assert br.open_until - loop.time() == pytest.approx(0.6, abs=0.1)
        assert br.opened_times == 3
        assert br.transitions[("half_open", "open")] == 1


async def test_service_breaker_answers_503_fast(tmp_path: Path) -> None:
    service = breaker(consecutive_failures=2, min_requests=100, open_for=30)
    async with faulty("a") as (a,), lb_for(tmp_path, [a], extra_service=service) as lb:
        a.mode = "500"
        assert [(await get(lb)).status for _ in range(2)] == [500, 500]
        r = await get(lb)
        assert r.status == 503
        assert r.header("x-lb-circuit-open") == "true"
        assert a.requests == 2
        svc = lb.server.runtime.services["app"]
        assert svc.breaker.state == "open"
        assert svc.gate.rejected == 1


async def test_open_service_breaker_forwards_to_the_fallback(tmp_path: Path) -> None:
    async with faulty("a", "spare") as (a, spare):
        service = breaker(consecutive_failures=2, min_requests=100, open_for=30) + (
            f'    fallback: spare\n  spare:\n    backends: ["{spare.address}"]\n'
        )
        async with lb_for(tmp_path, [a], extra_service=service) as lb:
            a.mode = "500"
            assert [(await get(lb)).status for _ in range(2)] == [500, 500]
            r = await get(lb)
            assert (r.status, r.body) == (200, b"spare")
            gate = lb.server.runtime.services["app"].gate
            assert gate.fallbacks == 1
            assert gate.caps.requests == 0
