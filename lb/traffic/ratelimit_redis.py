"""Rate limits shared by many lb processes through Redis.

Each decision is one atomic Lua script running GCRA (see `ratelimit.py`) against Redis's own
clock (`TIME`), so every lb process judges a key by the same state and the same clock; there is
no read-modify-write race and no dependence on the lb hosts' clocks agreeing. The TAT is kept
in integer microseconds (exact in a Lua double) and the key expires when the client has fully
recovered, so Redis holds only keys that still carry information. Needs Redis >= 5 (scripts
replicated by effect, which allows `TIME` before a write).

Failure policy, for when Redis is unreachable, slow or erroring (Traefik answers 500 and Envoy
silently fails open; here it is explicit):
- "local": judge the request with a per-process `LocalLimiter` (default; configure it with this
  process's share of the limit if the shared limit must still hold roughly);
- "allow": admit everything;
- "deny": reject everything with `retry_after` 1 s.
A call never raises into the caller and never waits longer than `timeout` (50 ms by default).
After a failure the limiter is `degraded` and stops asking Redis for `retry_interval` seconds,
so a dead Redis costs one timeout per interval, not one per request; the first call after that
probes Redis again, and success restores sharing.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Literal

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError

from lb.traffic.ratelimit import Decision, GcraLimit, LocalLimiter

FailurePolicy = Literal["local", "allow", "deny"]

# KEYS[1]: the limited key. ARGV: interval (µs per unit), tolerance (µs), cost.
# Returns {allowed, remaining, reset_after µs, retry_after µs}; Lua numbers become integers.
GCRA_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then
  tat = now
end
local new_tat = math.ceil(tat + cost * interval)
local wait = new_tat - tolerance - now
if wait > interval / 1000 then
  local remaining = math.floor((tolerance - (tat - now)) / interval + 0.001)
  return {0, remaining, tat - now, math.ceil(wait)}
end
if new_tat > now then
  redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
end
local remaining = math.floor((tolerance - (new_tat - now)) / interval + 0.001)
return {1, remaining, new_tat - now, 0}
"""
_SCRIPT_SHA = hashlib.sha1(GCRA_SCRIPT.encode()).hexdigest()


def client_for(url: str, timeout: float) -> Redis:
    """A client for limiters: bounded waits and no command retries. redis-py retries failed
    commands with backoff by default; a retry would only stretch the time a request waits on
    a dead Redis, so the failure policy answers instead. Limiters of one process share one
    client (one connection pool) per URL by passing it as `client`."""
    return Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )


class RedisLimiter(GcraLimit):
    """GCRA limiter whose state lives in Redis, with an explicit policy for Redis failures."""

    def __init__(
        self,
        url: str,
        rate: float,
        period: float,
        burst: int,
        *,
        prefix: str = "lb:rl:",
        timeout: float = 0.05,
        failure_policy: FailurePolicy = "local",
        local: LocalLimiter | None = None,
        retry_interval: float = 1.0,
        client: Redis | None = None,
    ) -> None:
        if failure_policy not in ("local", "allow", "deny"):
            raise ValueError(f"failure_policy must be local, allow or deny: {failure_policy!r}")
        super().__init__(rate, period, burst)
        self.prefix = prefix
        self.timeout = timeout
        self.failure_policy: FailurePolicy = failure_policy
        self.local = local if local is not None else LocalLimiter(rate, period, burst)
        self.retry_interval = retry_interval
        self._args = (repr(self.interval * 1e6), repr(self.tolerance * 1e6))
        self._allow = Decision(True, self.limit, self.limit, 0.0, 0.0)
        self._deny = Decision(False, self.limit, 0, 1.0, 1.0)
        self._owns_client = client is None
        self._client = client_for(url, timeout) if client is None else client
        self.failures = 0  # Redis calls that failed (each one answered by the failure policy)
        self.degraded = False
        self.last_error = ""
        self._retry_at = 0.0

    async def check(self, key: str, now: float, cost: int = 1) -> Decision:
        """Decide one request; `now` (the caller's monotonic clock) drives only the fallback."""
        if self.degraded and now < self._retry_at:
            return self._fallback(key, now, cost)
        if self.degraded:
            # One probe at a time: calls arriving while it is in flight keep using the policy.
            self._retry_at = now + self.retry_interval
        try:
            async with asyncio.timeout(self.timeout):
                allowed, remaining, reset_us, retry_us = await self._eval(self.prefix + key, cost)
        except Exception as exc:  # the contract is to never raise into the data path
            self.failures += 1
            self.degraded = True
            self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self._retry_at = now + self.retry_interval
            return self._fallback(key, now, cost)
        self.degraded = False
        return Decision(bool(allowed), self.limit, remaining, reset_us / 1e6, retry_us / 1e6)

    async def _eval(self, key: str, cost: int) -> list[int]:
        try:
            return await self._client.evalsha(_SCRIPT_SHA, 1, key, *self._args, cost)
        except NoScriptError:
            # Redis restarted or SCRIPT FLUSH: EVAL runs the script and caches it again.
            return await self._client.eval(GCRA_SCRIPT, 1, key, *self._args, cost)

    def _fallback(self, key: str, now: float, cost: int) -> Decision:
        if self.failure_policy == "local":
            return self.local.check(key, now, cost)
        return self._allow if self.failure_policy == "allow" else self._deny

    async def close(self) -> None:
        """Close the client, unless it was given (shared clients belong to their owner)."""
        if self._owns_client:
            await self._client.aclose()
