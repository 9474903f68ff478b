"""Per-service admission (`service.gate`: caps and the service breaker) and per-route retries
(`route.retry`), as the exchange calls them.

Caps, Envoy's cluster circuit breakers, approximated where lb has no connection queue:
- requests: exchanges inside the gate (entered, not yet finished), exact;
- retries: retries granted and not yet finished, exact;
- pending: Envoy counts requests waiting for a pool connection. lb never queues: a request
  without an idle connection opens one at once. Pending is therefore the requests inside the
  gate that hold no busy connection (still connecting, or waiting out a retry backoff):
  requests - (open - idle connections);
- connections: the service's open backend connections (idle, busy, tunnels). A request is
  refused when every one of them is busy and there are `max_connections` already, since it
  would have to open one more.
Over a cap: 503 with `x-lb-overloaded: true`, counted in `caps.overflows`.

Pending and connections are sums over the service's backends, so they are computed only
where a cap could be reached: pending never exceeds requests, so it is checked only once
requests reach `max_pending`; open connections grow by at most one per admitted request or
retry, so after each count the gate admits `max_connections - open` more before counting
again. `caps.pending` and `caps.connections` hold the figures of the latest count.

Built with Cython (setup.py), `ServiceGate` is an extension type typed by gates.pxd: it is
entered and left once per exchange. `RouteRetry` stays a plain class, asked only on failures.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from ..config import model
from ..proxy.failures import CONNECT, CONNECT_FAILURE, STATUS, Failure
from .breaker import CLOSED, Breaker, BreakerSettings, Caps
from .retry import RetryBudget, RetryPolicy

OVERLOADED = [(b"x-lb-overloaded", b"true")]
REDISPATCHES = 3  # refused connections per request moved on for free (HAProxy's `retries 3`)
CIRCUIT_OPEN = [(b"x-lb-circuit-open", b"true")]


def breaker_settings(cfg: model.CircuitBreaker) -> BreakerSettings:
    return BreakerSettings(
        failure_ratio=cfg.failure_ratio,
        min_requests=cfg.min_requests,
        window=cfg.window,
        consecutive_failures=cfg.consecutive_failures,
        open_for=cfg.open_for,
        max_open_for=cfg.max_open_for,
        half_open_requests=cfg.half_open_requests,
    )


class ServiceGate:
    """`service.gate`: the service breaker first (open: 503 fast, or the fallback service),
    then the caps. `rejected` counts 503s of the open breaker, `fallbacks` the requests it
    sent to the fallback service."""

    __slots__ = ("_headroom", "breaker", "caps", "clock", "fallbacks", "rejected", "service")

    def __init__(self, service: Any, cfg: model.CircuitBreaker, clock: Callable[[], float]):
        self.service = service
        self.clock = clock
        self.caps = Caps()
        self.breaker = Breaker(breaker_settings(cfg))
        self.rejected = 0
        self.fallbacks = 0
        self._headroom = 0  # admissions left before connections must be counted again
        self.configure(cfg)

    def configure(self, cfg: model.CircuitBreaker) -> None:
        """Apply a reload: new limits take effect at once, counts in flight stay; the breaker
        starts afresh only if its own settings changed."""
        caps = self.caps
        caps.max_connections = cfg.max_connections
        caps.max_pending = cfg.max_pending
        caps.max_requests = cfg.max_requests
        caps.max_retries = cfg.max_retries if cfg.max_retries is not None else sys.maxsize
        self._headroom = 0
        settings = breaker_settings(cfg)
        if settings != self.breaker.settings:
            self.breaker = Breaker(settings)

    def enter(self, ex: Any) -> bool:
        breaker = self.breaker
        if breaker.state != CLOSED and not breaker.allow(self.clock()):
            return self._open(ex)
        caps = self.caps
        n = caps.requests
        if n >= caps.max_requests:
            caps.overflows["requests"] += 1
            ex.reply_error(503, OVERLOADED)
            return False
        if (n >= caps.max_pending or self._headroom <= 0) and not self._pool_admits(n):
            ex.reply_error(503, OVERLOADED)
            return False
        self._headroom -= 1
        caps.requests = n + 1
        return True

    def leave(self, ex: Any) -> None:
        caps = self.caps
        if caps.requests > 0:
            caps.requests -= 1
        retries = ex.retries
        if retries:
            # Every retry of an exchange inside a gate took one of its retry slots.
            caps.retries = max(0, caps.retries - retries)

    def take_retry(self) -> bool:
        if not self.caps.try_acquire_retry():
            return False
        self._headroom -= 1
        return True

    def _pool_admits(self, requests: int) -> bool:
        caps = self.caps
        conns = idle = 0
        for b in self.service.backends.values():
            conns += b.open_conns
            idle += len(b.idle)
        busy = conns - idle
        caps.connections = conns
        caps.pending = max(0, requests - busy)
        self._headroom = caps.max_connections - conns
        if caps.pending >= caps.max_pending:
            caps.overflows["pending"] += 1
            return False
        if busy >= caps.max_connections:
            caps.overflows["connections"] += 1
            return False
        return True

    def _open(self, ex: Any) -> bool:
        fallback = self.service.fallback
        if fallback is not None and fallback is not self.service:
            self.fallbacks += 1
            ex.service = fallback
            self.caps.requests += 1  # leave() is called all the same
            return True
        self.rejected += 1
        ex.reply_error(503, CIRCUIT_OPEN)
        return False


class RouteRetry:
    """`route.retry`: the route's policy, its retry budget and the service's retry cap.

    The budget is Envoy's: concurrent retries at most `budget_percent` of the service's active
    requests (in flight on its backends, this one included), but always `min_retry_concurrency`
    and always one backend's share of the active requests, so that losing one backend with
    everything it had in flight is absorbed while most backends failing is still bounded.
    A connect failure is retried outside the budget (HAProxy's redispatch): the backend never
    saw the request, so its retry adds load to no backend; a refused connection does not even
    use up an attempt, `REDISPATCHES` times per request. Every retry goes to a backend the
    request has not tried yet, while one can serve. A budgeted retry holds its slot
    until its exchange finishes (`release`); every retry holds a cap slot likewise.
    """

    def __init__(self, route: str, cfg: model.Retries, registry: dict[str, Any]) -> None:
        self.route = route
        self.cfg = cfg
        self.policy = RetryPolicy(
            attempts=cfg.attempts,
            on=frozenset(cfg.on),
            statuses=frozenset(cfg.statuses),
            grpc_statuses=frozenset(cfg.grpc_status),
            per_try_timeout=cfg.per_try_timeout,
            # The policy needs a positive base; "backoff: 0" means as good as no wait.
            backoff_base=max(cfg.backoff, 0.001),
            backoff_max=max(cfg.max_backoff, cfg.backoff, 0.001),
        )
        self.per_try_timeout = cfg.per_try_timeout
        self.budget = RetryBudget(cfg.budget_percent, cfg.min_retry_concurrency)
        self._exhausted = registry["retry_budget_exhausted"]

    def allows(self, ex: Any, failure: Failure) -> bool:
        k = failure.retry
        if not k:
            return False
        policy = self.policy
        if k == CONNECT:
            if failure is CONNECT_FAILURE and ex.redispatches < REDISPATCHES:
                # A refused connection costs next to nothing and uses up no attempt: move on
                # to a backend not tried yet (HAProxy's retries with redispatch).
                ok = policy.attempts > 1 and policy.should_retry(ex.method, k, None, 1, True)
                if ok:
                    ex.redispatches += 1
            else:
                ok = policy.should_retry(ex.method, k, None, ex.attempts - ex.redispatches, True)
            gate = ex.gate
            return ok and (gate is None or gate.take_retry())
        if not policy.should_retry(ex.method, k, None, ex.attempts - ex.redispatches, True):
            return False
        return self._take(ex)

    def allows_status(self, ex: Any, status: int) -> bool:
        attempt = ex.attempts - ex.redispatches
        return self.policy.should_retry(ex.method, STATUS, status, attempt, True) and (
            self._take(ex)
        )

    def allows_grpc(self, ex: Any, code: int) -> bool:
        """A gRPC call answered trailers-only with `code`: retried like a status, within the
        attempts, the budget and the caps."""
        attempt = ex.attempts - ex.redispatches
        return self.policy.should_retry_grpc(code, attempt, True) and self._take(ex)

    def backoff(self, retries: int) -> float:
        return self.policy.backoff(retries)

    def release(self, slots: int) -> None:
        for _ in range(slots):
            self.budget.release()

    def _take(self, ex: Any) -> bool:
        svc = ex.service
        active = 1
        total_weight = top_weight = 0
        for b in svc.backends.values():
            active += svc.in_flight(b)
            if not b.removed:
                total_weight += b.weight
                top_weight = max(top_weight, b.weight)
        # The picker spreads requests by weight: the heaviest backend's share of the active
        # requests is what one crash can put in need of a retry at once.
        share = -(-active * top_weight // total_weight) if total_weight else active
        if not self.budget.try_acquire(active, share):
            self._exhausted[(self.route,)] += 1
            return False
        gate = ex.gate
        if gate is not None and not gate.take_retry():
            self.budget.release()
            return False
        ex.retry_slots += 1
        return True
