import pytest

from lb.traffic.retry import RetryBudget, RetryPolicy


def test_defaults() -> None:
    p = RetryPolicy()
    assert p.attempts == 2
    assert p.on == {"connect-failure", "reset", "gateway-error"}
    assert {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"} <= p.idempotent_methods


def test_attempts_bound_the_retries() -> None:
    p = RetryPolicy(attempts=3)
    assert p.should_retry("GET", "connect-failure", None, 1, True)
    assert p.should_retry("GET", "connect-failure", None, 2, True)
    assert not p.should_retry("GET", "connect-failure", None, 3, True)


def test_body_not_replayable_is_never_retried() -> None:
    p = RetryPolicy(on=frozenset({"connect-failure", "5xx"}))
    assert not p.should_retry("GET", "connect-failure", None, 1, False)
    assert not p.should_retry("PUT", "status", 503, 1, False)


@pytest.mark.parametrize("method", ["POST", "PATCH", "CONNECT", b"POST"])
def test_non_idempotent_methods_only_on_connect_failure(method: str | bytes) -> None:
    p = RetryPolicy(on=frozenset({"connect-failure", "reset", "5xx", "gateway-error"}))
    assert p.should_retry(method, "connect-failure", None, 1, True)
    assert not p.should_retry(method, "reset", None, 1, True)
    assert not p.should_retry(method, "timeout", None, 1, True)
    assert not p.should_retry(method, "status", 503, 1, True)


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE", b"GET"])
def test_idempotent_methods_retry_after_the_request_was_sent(method: str | bytes) -> None:
    p = RetryPolicy(on=frozenset({"reset", "5xx"}))
    assert p.should_retry(method, "reset", None, 1, True)
    assert p.should_retry(method, "status", 500, 1, True)


@pytest.mark.parametrize(
    ("on", "kind", "status", "expected"),
    [
        ({"connect-failure"}, "connect-failure", None, True),
        ({"5xx"}, "connect-failure", None, True),
        ({"gateway-error"}, "connect-failure", None, True),
        ({"reset"}, "connect-failure", None, False),
        ({"reset"}, "reset", None, True),
        ({"5xx"}, "reset", None, True),
        ({"gateway-error"}, "reset", None, False),
        ({"5xx"}, "timeout", None, True),
        ({"gateway-error"}, "timeout", None, True),
        ({"reset", "connect-failure"}, "timeout", None, False),
        ({"5xx"}, "status", 500, True),
        ({"5xx"}, "status", 599, True),
        ({"5xx"}, "status", 429, False),
        ({"gateway-error"}, "status", 500, False),
        ({"gateway-error"}, "status", 502, True),
        ({"gateway-error"}, "status", 504, True),
        ({"retriable-status"}, "status", 429, True),
        ({"retriable-status"}, "status", 503, False),
        ({"5xx"}, "status", None, False),
        ({"5xx"}, "something-else", 500, False),
    ],
)
def test_conditions(on: set[str], kind: str, status: int | None, expected: bool) -> None:
    p = RetryPolicy(on=frozenset(on), statuses=frozenset({429}))
    assert p.should_retry("GET", kind, status, 1, True) is expected


def test_grpc_statuses_within_attempts_and_replay() -> None:
    p = RetryPolicy(attempts=3, grpc_statuses=frozenset({14, 8}))
    assert p.should_retry_grpc(14, 1, True) and p.should_retry_grpc(8, 2, True)
    assert not p.should_retry_grpc(14, 3, True)  # attempts used up
    assert not p.should_retry_grpc(14, 1, False)  # the body cannot be sent again
    assert not p.should_retry_grpc(5, 1, True)  # NOT_FOUND is not listed
    assert not RetryPolicy().should_retry_grpc(14, 1, True)  # nothing listed by default


def test_configured_methods_accept_any_case_and_bytes() -> None:
    p = RetryPolicy(on=frozenset({"reset"}), idempotent_methods=frozenset({"get", b"PURGE"}))
    assert p.should_retry(b"GET", "reset", None, 1, True)
    assert p.should_retry("PURGE", "reset", None, 1, True)
    assert not p.should_retry("PUT", "reset", None, 1, True)


def test_backoff_is_jittered_exponential_and_capped() -> None:
    p = RetryPolicy(backoff_base=0.025, backoff_max=0.25)
    assert [p.backoff(n, rand=lambda: 1.0) for n in range(1, 7)] == pytest.approx(
        [0.025, 0.05, 0.1, 0.2, 0.25, 0.25]
    )
    assert p.backoff(3, rand=lambda: 0.5) == pytest.approx(0.05)
    assert p.backoff(10_000, rand=lambda: 1.0) == 0.25
    samples = [p.backoff(3) for _ in range(1000)]
    assert all(0.0 <= s <= 0.1 for s in samples)
    assert len(set(samples)) > 900


@pytest.mark.parametrize(
    "kwargs",
    [
        {"on": frozenset({"5xx", "bogus"})},
        {"attempts": 0},
        {"backoff_base": 0},
        {"backoff_base": 1.0, "backoff_max": 0.5},
        {"per_try_timeout": 0},
    ],
)
def test_invalid_policy(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


# Budget


def test_budget_allows_the_minimum_when_idle() -> None:
    b = RetryBudget(percent=20.0, min_retry_concurrency=3)
    assert [b.try_acquire(0) for _ in range(4)] == [True, True, True, False]
    assert b.exhausted == 1
    b.release()
    assert b.try_acquire(0)


def test_budget_scales_with_active_requests() -> None:
    b = RetryBudget(percent=20.0, min_retry_concurrency=3)
    assert sum(b.try_acquire(100) for _ in range(50)) == 20
    assert b.exhausted == 30
    assert b.active == 20


def test_budget_floor_absorbs_one_backends_share() -> None:
    # 16 in flight over three equal backends: one crash needs 6 retries at once, more than
    # 20% (3.2) or the minimum (3) would allow.
    b = RetryBudget(percent=20.0, min_retry_concurrency=3)
    assert sum(b.try_acquire(16, floor=6) for _ in range(10)) == 6
    assert b.exhausted == 4


def test_budget_release_is_clamped() -> None:
    b = RetryBudget()
    b.release()
    assert b.active == 0
    assert b.try_acquire(0)


def test_invalid_budget() -> None:
    with pytest.raises(ValueError):
        RetryBudget(percent=-1)
