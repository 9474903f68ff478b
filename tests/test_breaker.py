import pytest

from lb.traffic.breaker import Breaker, BreakerSettings, Caps


def record_many(b: Breaker, outcomes: str, now: float) -> None:
    """Record outcomes given as a string: "." success, "x" failure."""
    for c in outcomes:
        b.record(c == ".", now)


def test_closed_allows_and_successes_never_trip() -> None:
    b = Breaker(BreakerSettings())
    record_many(b, "." * 1000, 1.0)
    assert b.state == "closed"
    assert b.allow(1.0)
    assert b.window_counts == (1000, 0)


def test_consecutive_failures_trip() -> None:
    seen: list[tuple[str, str]] = []
    b = Breaker(
        BreakerSettings(consecutive_failures=5), on_transition=lambda o, n: seen.append((o, n))
    )
    record_many(b, "xxxx.xxxx", 1.0)  # a success in between resets the run
    assert b.state == "closed"
    b.record(False, 1.0)
    assert b.state == "open"
    assert seen == [("closed", "open")]
    assert b.opened_times == 1
    assert b.transitions == {("closed", "open"): 1}
    assert b.open_until == pytest.approx(6.0)
    assert not b.allow(1.0)


def test_failure_ratio_needs_min_requests() -> None:
    s = BreakerSettings(failure_ratio=0.5, min_requests=20, consecutive_failures=0)
    b = Breaker(s)
    record_many(b, "x." * 9 + "x", 1.0)  # 10 of 19 failed, below the volume
    assert b.state == "closed"
    b.record(True, 1.0)  # 20 requests, 10 failed: 50%
    assert b.state == "closed"  # a success never trips
    b.record(False, 1.0)
    assert b.state == "open"


def test_ratio_below_threshold_stays_closed() -> None:
    b = Breaker(BreakerSettings(failure_ratio=0.5, min_requests=20, consecutive_failures=0))
    record_many(b, "x.." * 100, 1.0)
    assert b.state == "closed"


def test_old_failures_roll_out_of_the_window() -> None:
    b = Breaker(
        BreakerSettings(failure_ratio=0.5, min_requests=20, window=10.0, consecutive_failures=0)
    )
    record_many(b, "x." * 9 + "x", 0.5)  # 19 outcomes, 10 failures, at t=0.5
    assert b.window_counts == (19, 10)
    record_many(b, "..", 5.5)
    assert b.window_counts == (21, 10)
    # at t=10.5 the bucket of t=0.5 has left the 10 s window
    b.record(False, 10.5)
    assert b.window_counts == (3, 1)
    assert b.state == "closed"


def test_long_idle_gap_empties_the_window() -> None:
    b = Breaker(BreakerSettings(consecutive_failures=0))
    record_many(b, "x" * 15, 1.0)
    b.record(True, 1000.0)
    assert b.window_counts == (1, 0)


def test_open_then_half_open_admits_limited_probes() -> None:
    b = Breaker(BreakerSettings(consecutive_failures=1, open_for=5.0, half_open_requests=2))
    b.record(False, 0.0)
    assert not b.allow(4.999)
    assert b.state == "open"
    assert b.allow(5.0)
    assert b.state == "half_open"
    assert b.allow(5.0)
    assert not b.allow(5.0)  # both probes in flight
    b.record(True, 5.1)
    assert b.state == "half_open"  # needs both probes to succeed
    b.record(True, 5.2)
    assert b.state == "closed"
    assert b.transitions == {
        ("closed", "open"): 1,
        ("open", "half_open"): 1,
        ("half_open", "closed"): 1,
    }


def test_probe_failure_reopens_with_growing_open_time() -> None:
    b = Breaker(BreakerSettings(consecutive_failures=1, open_for=5.0, max_open_for=60.0))
    now = 0.0
    b.record(False, now)
    durations = []
    for _ in range(6):
        durations.append(b.open_until - now)
        now = b.open_until
        assert b.allow(now)
        b.record(False, now)
        assert b.state == "open"
    durations.append(b.open_until - now)
    assert durations == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0, 60.0]
    assert b.opened_times == 7


def test_successful_close_resets_the_growth() -> None:
    b = Breaker(BreakerSettings(consecutive_failures=1, open_for=5.0))
    b.record(False, 0.0)
    assert b.allow(5.0)
    b.record(False, 5.0)  # reopened for 10 s
    assert b.allow(15.0)
    b.record(True, 15.0)
    assert b.state == "closed"
    b.record(False, 20.0)
    assert b.open_until == pytest.approx(25.0)


def test_close_starts_from_a_clean_window() -> None:
    b = Breaker(BreakerSettings(consecutive_failures=3, failure_ratio=0.5, min_requests=4))
    record_many(b, ".xxx", 0.0)
    assert b.state == "open"
    assert b.allow(5.0)
    b.record(True, 5.0)
    assert b.state == "closed"
    assert b.window_counts == (0, 0)
    record_many(b, "xx", 5.0)
    assert b.state == "closed"


def test_outcomes_recorded_while_open_are_ignored() -> None:
    b = Breaker(BreakerSettings(consecutive_failures=1))
    b.record(False, 0.0)
    record_many(b, "..x..", 1.0)  # requests admitted before the opening finishing late
    assert b.state == "open"
    assert b.open_until == pytest.approx(5.0)


def test_lost_probe_does_not_wedge_half_open() -> None:
    b = Breaker(BreakerSettings(consecutive_failures=1, open_for=5.0))
    b.record(False, 0.0)
    assert b.allow(5.0)  # the probe is admitted and never recorded
    assert not b.allow(9.0)
    assert b.state == "half_open"
    assert not b.allow(10.0)  # it is overdue: counted as failed, open again (for 10 s)
    assert b.state == "open"
    assert b.allow(20.0)
    b.record(True, 20.1)
    assert b.state == "closed"


def test_late_outcome_in_half_open_does_not_go_negative() -> None:
    b = Breaker(BreakerSettings(consecutive_failures=1, half_open_requests=2))
    b.record(False, 0.0)
    assert b.allow(5.0)
    b.record(True, 5.0)
    b.record(True, 5.0)  # an extra report: clamped, and counts as a second success
    assert b.state == "closed"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failure_ratio": 0.0},
        {"failure_ratio": 1.5},
        {"min_requests": 0},
        {"consecutive_failures": -1},
        {"window": 0},
        {"open_for": 0},
        {"open_for": 10.0, "max_open_for": 5.0},
        {"half_open_requests": 0},
    ],
)
def test_invalid_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BreakerSettings(**kwargs)  # type: ignore[arg-type]


def test_sub_second_window_uses_one_bucket() -> None:
    b = Breaker(BreakerSettings(window=0.5, consecutive_failures=0, min_requests=2))
    b.record(False, 0.1)
    b.record(True, 0.7)  # the first outcome has rolled out
    assert b.window_counts == (1, 0)


# Caps


def test_caps_defaults_follow_envoy() -> None:
    c = Caps()
    assert (c.max_connections, c.max_pending, c.max_requests) == (1024, 1024, 1024)
    assert c.max_retries == 3


def test_caps_retry_acquire_release_and_overflow() -> None:
    c = Caps(max_retries=2)
    assert c.try_acquire_retry()
    assert c.try_acquire_retry()
    assert not c.try_acquire_retry()
    assert not c.try_acquire_retry()
    assert c.overflows["retries"] == 2
    assert c.retries == 2
    c.release_retry()
    assert c.try_acquire_retry()
    c.release_retry()
    c.release_retry()
    c.release_retry()  # one too many: clamped at zero
    assert c.retries == 0
    assert sum(c.overflows.values()) == 2
