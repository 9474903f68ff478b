import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis_server import RedisServer, redis_server_fixture  # noqa: F401

from lb.traffic.ratelimit import LocalLimiter
from lb.traffic.ratelimit_redis import RedisLimiter


@pytest.fixture
async def limiters() -> AsyncIterator[list[RedisLimiter]]:
    made: list[RedisLimiter] = []
    yield made
    for lim in made:
        await lim.close()


def make(made: list[RedisLimiter], url: str, *args: Any, **kwargs: Any) -> RedisLimiter:
    lim = RedisLimiter(url, *args, **kwargs)
    made.append(lim)
    return lim


async def test_burst_then_pacing_with_exact_retry_after(
    redis_server: RedisServer, limiters: list[RedisLimiter]
) -> None:
    lim = make(limiters, redis_server.url, 10, 1.0, 5)
    results = [await lim.check("k", 0.0) for _ in range(16)]
    assert [d.allowed for d in results] == [True] * 15 + [False]
    assert [d.remaining for d in results[:15]] == list(range(14, -1, -1))
    assert all(d.limit == 15 for d in results)
    assert 0 < results[15].retry_after <= 0.1
    assert results[15].reset_after == pytest.approx(1.5, abs=0.1)
    assert lim.failures == 0
    assert not lim.degraded


async def test_keys_expire_when_recovered(
    redis_server: RedisServer, limiters: list[RedisLimiter]
) -> None:
    lim = make(limiters, redis_server.url, 10, 1.0, 0, prefix="t:")
    await lim.check("k", 0.0)
    async with Redis.from_url(redis_server.url) as r:
        ttl = await r.pttl("t:k")
    assert 0 < ttl <= 100


async def test_script_reloaded_after_flush(
    redis_server: RedisServer, limiters: list[RedisLimiter]
) -> None:
    lim = make(limiters, redis_server.url, 10, 1.0, 0)
    assert (await lim.check("k", 0.0)).allowed
    async with Redis.from_url(redis_server.url) as r:
        await r.script_flush()
    d = await lim.check("k", 0.0)
    assert d.allowed
    assert d.remaining == 8
    assert lim.failures == 0


async def test_two_processes_share_one_limit(
    redis_server: RedisServer, limiters: list[RedisLimiter]
) -> None:
    rate = 200
    a = make(limiters, redis_server.url, rate, 1.0, 0)
    b = make(limiters, redis_server.url, rate, 1.0, 0)
    admitted = {"a": 0, "b": 0}
    deadline = time.monotonic() + 2.0

    async def hammer(name: str, lim: RedisLimiter) -> None:
        while time.monotonic() < deadline:
            admitted[name] += (await lim.check("shared", time.monotonic())).allowed

    start = time.monotonic()
    await asyncio.gather(hammer("a", a), hammer("b", b))
    elapsed = time.monotonic() - start
    expected = rate + rate * elapsed  # the idle allowance, then the steady rate
    total = admitted["a"] + admitted["b"]
    assert total == pytest.approx(expected, rel=0.1)
    # both processes were admitted: neither starved the other
    assert admitted["a"] > 0.2 * total
    assert admitted["b"] > 0.2 * total
    assert a.failures == b.failures == 0


@pytest.mark.parametrize("policy", ["allow", "deny", "local"])
async def test_redis_down_applies_the_policy_then_sharing_returns(
    redis_server: RedisServer, limiters: list[RedisLimiter], policy: str
) -> None:
    local = LocalLimiter(3, 1.0, 0)
    lim = make(
        limiters,
        redis_server.url,
        5,
        60.0,
        0,
        failure_policy=policy,
        local=local,
        retry_interval=1.0,
    )
    other = make(limiters, redis_server.url, 5, 60.0, 0)
    assert (await lim.check("k", 0.0)).allowed

    redis_server.stop()
    started = time.monotonic()
    decisions = [await lim.check("k", 0.1) for _ in range(5)]
    assert time.monotonic() - started < 0.5
    assert lim.degraded
    assert lim.failures == 1  # later calls inside retry_interval do not touch Redis
    assert lim.last_error
    if policy == "allow":
        assert all(d.allowed for d in decisions)
    elif policy == "deny":
        assert not any(d.allowed for d in decisions)
        assert all(d.retry_after == 1.0 for d in decisions)
        assert dict(lim.headers(decisions[0], "api"))[b"Retry-After"] == b"1"
    else:
        assert [d.allowed for d in decisions] == [True, True, True, False, False]
        assert decisions[0].limit == 3

    # still down when the retry interval has passed: one more failure, still the policy
    await lim.check("k", 1.2)
    assert lim.failures == 2

    redis_server.start()
    d = await lim.check("k", 2.3)
    assert d.allowed
    assert not lim.degraded
    assert d.limit == 5
    # shared again: the state is in Redis (restarted empty), so the other process sees it
    for _ in range(4):
        assert (await other.check("k", 2.3)).allowed
    assert not (await lim.check("k", 2.3)).allowed
    assert not (await other.check("k", 2.3)).allowed


async def test_hanging_redis_costs_at_most_the_timeout(limiters: list[RedisLimiter]) -> None:
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accept and never answer, like a stalled Redis
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        lim = make(limiters, f"redis://127.0.0.1:{port}/0", 10, 1.0, 0, timeout=0.05)
        started = time.monotonic()
        d = await lim.check("k", 0.0)
        took = time.monotonic() - started
        assert d.allowed  # "local" by default
        assert took < 0.3
        assert lim.degraded
        assert lim.failures == 1
        for _ in range(100):
            await lim.check("k", 0.5)
        assert lim.failures == 1  # within retry_interval Redis is not asked again
        await lim.check("k", 1.0)
        assert lim.failures == 2  # then it is probed again
        decisions = await asyncio.gather(*(lim.check("k", 2.5) for _ in range(20)))
        assert len(decisions) == 20
        assert lim.failures == 3  # concurrent calls: one probe, the rest answered locally
    finally:
        server.close()
        await server.wait_closed()


async def test_unreachable_at_start_never_raises(limiters: list[RedisLimiter]) -> None:
    lim = make(limiters, "redis://127.0.0.1:1/0", 10, 1.0, 0, failure_policy="deny")
    d = await lim.check("k", 0.0)
    assert not d.allowed
    assert d.retry_after == 1.0
    assert lim.degraded


def test_invalid_failure_policy() -> None:
    with pytest.raises(ValueError, match="failure_policy"):
        RedisLimiter("redis://127.0.0.1:1/0", 10, 1.0, 0, failure_policy="open")  # type: ignore[arg-type]
