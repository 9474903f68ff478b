"""Retries through the proxy: connect failures to another backend, resets, statuses for
idempotent methods only, the retry budget, per-try timeouts, and never a body lb let go of."""

import asyncio
from pathlib import Path
from typing import Any

from conftest import Response
from faulty import Faulty, backend_of, faulty, get, lb_for


def retrying(retries: str) -> str:
    return (
        "routes:\n  - name: all\n    match: {path: {prefix: /}}\n    service: app\n"
        f"    retries: {{{retries}, backoff: 1ms}}\n"
    )


async def until_hits(lb: Any, target: Faulty, method: str = "GET", **kw: Any) -> Response:
    """Send requests until one reaches `target`; its response."""
    for _ in range(10):
        seen = target.requests
        r = await get(lb, method=method, **kw)
        if target.requests > seen:
            return r
    raise AssertionError(f"no request reached {target.name}")


async def test_connect_failure_is_retried_on_another_backend(tmp_path: Path) -> None:
    async with faulty("a", "b") as (a, b):
        await a.refuse()
        routes = retrying("on: [connect-failure]")
        async with lb_for(tmp_path, [a, b], routes=routes) as lb:
            for method in ("GET", "POST", "GET", "POST"):
                r = await get(lb, method=method, body=b"x")
                assert (r.status, r.body) == (200, b"b")  # even POST: a never saw it
            assert backend_of(lb, a).failures >= 2
            assert b.requests == 4


async def test_reset_is_retried_for_idempotent_methods_only(tmp_path: Path) -> None:
    async with (
        faulty("a", "b") as (a, b),
        lb_for(tmp_path, [a, b], routes=retrying("on: [reset]")) as lb,
    ):
        a.mode = "reset"
        for _ in range(3):
            r = await until_hits(lb, a)
            assert (r.status, r.body) == (200, b"b")
        r = await until_hits(lb, a, "POST", body=b"order")
        assert r.status == 502  # a may have acted on it: never sent twice


async def test_status_is_retried_for_get_not_post(tmp_path: Path) -> None:
    routes = retrying("on: [retriable-status], statuses: [503]")
    async with faulty("a", "b") as (a, b), lb_for(tmp_path, [a, b], routes=routes) as lb:
        a.mode = "503"
        r = await until_hits(lb, a)
        assert (r.status, r.body) == (200, b"b")
        r = await until_hits(lb, a, "POST", body=b"x")
        assert (r.status, r.body) == (503, b"a")
        a.mode = "500"  # not in the list
        r = await until_hits(lb, a)
        assert r.status == 500


async def test_retry_budget_bounds_a_retry_storm(tmp_path: Path) -> None:
    """Most of the traffic failing: the budget allows one backend's share of the active
    requests and refuses the rest, each refusal a 502 counted as exhausted."""
    async with faulty("a", "b", "c") as (a, b, c):
        a.mode = b.mode = "reset"
        c.mode, c.delay = "slow", 0.3
        routes = retrying("on: [reset], budget_percent: 0, min_retry_concurrency: 0")
        async with lb_for(tmp_path, [a, b, c], routes=routes) as lb:
            statuses = [r.status for r in await asyncio.gather(*(get(lb) for _ in range(24)))]
            retry = lb.server.runtime.table.by_name["all"].retry
            assert statuses.count(502) >= retry.budget.exhausted >= 1
            assert lb.server.runtime.counters["retry_budget_exhausted"][("all",)] >= 1
            assert retry.budget.active == 0  # every retry gave its slot back
        b.mode = "ok"
        routes = retrying("on: [reset], budget_percent: 0, min_retry_concurrency: 1")
        async with lb_for(tmp_path, [a, b], routes=routes) as lb:
            assert [(await get(lb)).status for _ in range(4)] == [200] * 4
            retry = lb.server.runtime.table.by_name["all"].retry
            assert retry.budget.exhausted == 0
            assert retry.budget.active == 0


async def test_connect_failures_are_retried_outside_the_budget(tmp_path: Path) -> None:
    """A refused connection never reached a backend: its retry adds no load, so even a budget
    of nothing lets it through, at once (no backoff)."""
    async with faulty("a", "b") as (a, b):
        await a.refuse()
        routes = retrying("on: [connect-failure], budget_percent: 0, min_retry_concurrency: 0")
        async with lb_for(tmp_path, [a, b], routes=routes) as lb:
            statuses = [r.status for r in await asyncio.gather(*(get(lb) for _ in range(8)))]
            assert statuses == [200] * 8
            assert backend_of(lb, a).failures >= 1
            assert lb.server.runtime.table.by_name["all"].retry.budget.exhausted == 0


async def test_per_try_timeout_moves_on_to_the_next_backend(tmp_path: Path) -> None:
    routes = retrying("on: [gateway-error], per_try_timeout: 200ms")
    async with faulty("a", "b") as (a, b), lb_for(tmp_path, [a, b], routes=routes) as lb:
        a.mode = "hang"
        loop = lb.server.loop
        started = loop.time()
        r = await until_hits(lb, a)
        assert (r.status, r.body) == (200, b"b")
        assert loop.time() - started < 1.5  # not the 30 s response-head timeout


async def test_no_retry_once_the_body_went_beyond_what_lb_keeps(tmp_path: Path) -> None:
    async with (
        faulty("a", "b") as (a, b),
        lb_for(tmp_path, [a, b], routes=retrying("on: [reset]")) as lb,
    ):
        a.mode = "reset"
        small = await until_hits(lb, a, "PUT", body=b"s" * 1000)
        assert (small.status, small.body) == (200, b"b")
        large = await until_hits(lb, a, "PUT", body=b"L" * 100_000)
        assert large.status == 502
