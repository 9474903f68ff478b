"""Retry decisions (which failures, which methods, how long to wait) and Envoy's retry budget.

Failure kinds reported by the data path, and the `on` conditions that retry them (Envoy's
vocabulary; lb answers a connect failure with 502/503 and a per-try timeout with 504, so
"gateway-error" covers both):

| failure_kind      | what happened                               | retried by                 |
| ----------------- | ------------------------------------------- | -------------------------- |
| "connect-failure" | no connection: the backend never saw it     | connect-failure, 5xx,      |
|                   |                                             | gateway-error              |
| "reset"           | connection lost after the request was sent  | reset, 5xx                 |
| "timeout"         | per-try timeout, the backend may have acted | 5xx, gateway-error         |
| "status"          | a response with `status`                    | 5xx (500-599),             |
|                   |                                             | gateway-error (502-504),   |
|                   |                                             | retriable-status (statuses)|

Safety rules before any condition: a request whose body cannot be sent again is never retried;
a non-idempotent method (POST, PATCH, ...) is retried only after a connect failure, the one
case where the backend provably did not receive it.

gRPC (`grpc_statuses`, the route's `retries.grpc_status`): a call answered trailers-only (the
error status in the response head, nothing of it sent to the client yet) with one of these
codes is retried whatever the `on` conditions and the method (every gRPC call is a POST): the
codes are the route's statement that the call may be made again, as Envoy's `retry_on` gRPC
conditions are.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..proxy.failures import CONNECT as CONNECT_FAILURE
from ..proxy.failures import IDEMPOTENT, RESET, STATUS, TIMEOUT

RETRY_ON = frozenset({"connect-failure", "reset", "5xx", "gateway-error", "retriable-status"})
GATEWAY_ERRORS = frozenset({502, 503, 504})
IDEMPOTENT_METHODS = frozenset(m.decode("ascii") for m in IDEMPOTENT)


def _with_bytes(methods: Iterable[str | bytes]) -> frozenset[str | bytes]:
    """Method names as str and as bytes: httptools hands the data path bytes."""
    out: set[str | bytes] = set()
    for m in methods:
        name = m.decode("ascii") if isinstance(m, bytes) else m
        out.add(name.upper())
        out.add(name.upper().encode("ascii"))
    return frozenset(out)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 2  # tries in all, the first one included (Envoy's num_retries + 1)
    on: frozenset[str] = frozenset({"connect-failure", "reset", "gateway-error"})
    statuses: frozenset[int] = frozenset()  # for "retriable-status"
    grpc_statuses: frozenset[int] = frozenset()  # gRPC status codes retried (trailers-only)
    per_try_timeout: float | None = None
    backoff_base: float = 0.025  # Envoy's defaults: 25 ms, capped at 10x
    backoff_max: float = 0.25
    idempotent_methods: frozenset[str | bytes] = IDEMPOTENT_METHODS

    def __post_init__(self) -> None:
        unknown = set(self.on) - RETRY_ON
        if unknown:
            raise ValueError(f"unknown retry conditions: {sorted(unknown)}")
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.backoff_base <= 0 or self.backoff_max < self.backoff_base:
            raise ValueError("backoff_base must be positive and backoff_max >= backoff_base")
        if self.per_try_timeout is not None and self.per_try_timeout <= 0:
            raise ValueError("per_try_timeout must be positive")
        # Accept any iterables from configuration; store what the hot path needs.
        object.__setattr__(self, "on", frozenset(self.on))
        object.__setattr__(self, "statuses", frozenset(self.statuses))
        object.__setattr__(self, "grpc_statuses", frozenset(self.grpc_statuses))
        object.__setattr__(self, "idempotent_methods", _with_bytes(self.idempotent_methods))

    def should_retry(
        self,
        method: str | bytes,
        failure_kind: str,
        status: int | None,
        attempt: int,
        body_replayable: bool,
    ) -> bool:
        """May the request be tried again after `attempt` tries ended in this failure?"""
        if attempt >= self.attempts or not body_replayable:
            return False
        on = self.on
        if failure_kind == CONNECT_FAILURE:
            return "connect-failure" in on or "5xx" in on or "gateway-error" in on
        if method not in self.idempotent_methods:
            return False
        if failure_kind == RESET:
            return "reset" in on or "5xx" in on
        if failure_kind == TIMEOUT:
            return "5xx" in on or "gateway-error" in on
        if failure_kind == STATUS and status is not None:
            return (
                ("5xx" in on and 500 <= status <= 599)
                or ("gateway-error" in on and status in GATEWAY_ERRORS)
                or ("retriable-status" in on and status in self.statuses)
            )
        return False

    def should_retry_grpc(self, code: int, attempt: int, body_replayable: bool) -> bool:
        """May a gRPC call answered trailers-only with status `code` be tried again?"""
        return attempt < self.attempts and body_replayable and code in self.grpc_statuses

    def backoff(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before the try after `attempt` tries: full jitter over an
        exponential ceiling, base x 2^(attempt-1) capped at backoff_max. Full jitter spreads
        the retries of many clients failing at once instead of synchronising them."""
        ceiling = min(self.backoff_max, self.backoff_base * 2.0 ** min(attempt - 1, 64))
        return ceiling * rand()


class RetryBudget:
    """Envoy's retry budget: concurrent retries may not exceed `percent` of the active
    requests (active plus pending, as the caller counts them), but are always allowed up to
    `min_retry_concurrency`. It bounds the extra load retries add when a whole service fails,
    which a fixed per-request retry count cannot."""

    def __init__(self, percent: float = 20.0, min_retry_concurrency: int = 3) -> None:
        if percent < 0 or min_retry_concurrency < 0:
            raise ValueError("percent and min_retry_concurrency must not be negative")
        self.percent = percent
        self.min_retry_concurrency = min_retry_concurrency
        self.active = 0
        self.exhausted = 0

    def try_acquire(self, active_requests: int, floor: int = 0) -> bool:
        """Take a slot; `floor` raises what is allowed (one backend's share, say)."""
        allowed = max(self.min_retry_concurrency, active_requests * self.percent / 100.0, floor)
        if self.active < allowed:
            self.active += 1
            return True
        self.exhausted += 1
        return False

    def release(self) -> None:
        if self.active > 0:
            self.active -= 1
