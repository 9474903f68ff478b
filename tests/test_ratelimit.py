import math

import pytest

from lb.traffic.ratelimit import Decision, LocalLimiter, PolicyHeaders


def test_idle_client_gets_rate_plus_burst_back_to_back() -> None:
    lim = LocalLimiter(10, 1.0, 5)
    assert lim.limit == 15
    results = [lim.check("a", 100.0) for _ in range(16)]
    assert [d.allowed for d in results] == [True] * 15 + [False]
    assert [d.remaining for d in results[:15]] == list(range(14, -1, -1))
    assert results[14].reset_after == pytest.approx(1.5)
    assert results[15].retry_after == pytest.approx(0.1)


def test_retry_after_is_exact() -> None:
    lim = LocalLimiter(10, 1.0, 0)
    for _ in range(10):
        assert lim.check("a", 0.0).allowed
    rejected = lim.check("a", 0.05)
    assert not rejected.allowed
    assert rejected.retry_after == pytest.approx(0.05)
    assert not lim.check("a", 0.099).allowed
    assert lim.check("a", 0.05 + rejected.retry_after).allowed
    assert not lim.check("a", 0.1).allowed


def test_rejections_do_not_consume() -> None:
    lim = LocalLimiter(10, 1.0, 0)
    for _ in range(10):
        lim.check("a", 0.0)
    for _ in range(1000):
        assert not lim.check("a", 0.01).allowed
    assert lim.check("a", 0.1).allowed


def test_steady_rate_over_a_long_run() -> None:
    lim = LocalLimiter(100, 1.0, 20)
    admitted = sum(lim.check("a", i / 1000).allowed for i in range(100_000))
    # the idle allowance once, then exactly 100 per second for 100 s
    assert admitted == pytest.approx(120 + 100 * 100, abs=1)


def test_full_recovery_after_reset_after() -> None:
    lim = LocalLimiter(5, 10.0, 0)
    last = [lim.check("a", 0.0) for _ in range(5)][-1]
    assert last.remaining == 0
    assert last.reset_after == pytest.approx(10.0)
    later = lim.check("a", last.reset_after)
    assert later.allowed
    assert later.remaining == 4


def test_keys_are_independent() -> None:
    lim = LocalLimiter(1, 1.0, 0)
    assert lim.check("a", 0.0).allowed
    assert not lim.check("a", 0.0).allowed
    assert lim.check("b", 0.0).allowed
    assert lim.check(("route", "10.0.0.1"), 0.0).allowed


def test_cost_consumes_several_units_and_zero_peeks() -> None:
    lim = LocalLimiter(10, 1.0, 0)
    d = lim.check("a", 0.0, cost=4)
    assert d.allowed
    assert d.remaining == 6
    peek = lim.check("a", 0.0, cost=0)
    assert peek.allowed
    assert peek.remaining == 6
    assert not lim.check("a", 0.0, cost=7).allowed
    assert lim.check("a", 0.0, cost=6).allowed
    with pytest.raises(ValueError, match="exceeds the limit"):
        lim.check("b", 0.0, cost=11)


def test_fractional_rate_still_admits_one() -> None:
    lim = LocalLimiter(0.5, 1.0, 0)  # one request every two seconds
    assert lim.limit == 1
    assert lim.check("a", 0.0).allowed
    d = lim.check("a", 1.0)
    assert not d.allowed
    assert d.retry_after == pytest.approx(1.0)
    assert lim.check("a", 2.0).allowed


def test_large_clock_values_do_not_break_the_burst() -> None:
    lim = LocalLimiter(1000, 1.0, 0)
    now = 1.7e9  # wall-clock magnitudes, where float spacing is ~2e-7 s
    assert sum(lim.check("a", now).allowed for _ in range(1001)) == 1000


@pytest.mark.parametrize(
    ("rate", "period", "burst", "max_keys"),
    [(0, 1.0, 0, 10), (1, 0, 0, 10), (1, 1.0, -1, 10), (1, 1.0, 0, 0)],
)
def test_invalid_settings(rate: float, period: float, burst: int, max_keys: int) -> None:
    with pytest.raises(ValueError):
        LocalLimiter(rate, period, burst, max_keys=max_keys)


# Bounded memory


def test_recovered_entries_are_dropped_lazily() -> None:
    lim = LocalLimiter(10, 1.0, 0, max_keys=1000)
    for i in range(500):
        lim.check(i, 0.0)
    assert len(lim) == 500
    # every entry recovered by t=1: each newcomer sweeps two, so the table drains
    for i in range(500, 800):
        lim.check(i, 10.0)
    assert len(lim) < 500


def test_full_table_reuses_recovered_slots_for_newcomers() -> None:
    lim = LocalLimiter(10, 1.0, 0, max_keys=100)
    for i in range(100):
        lim.check(i, 0.0)
    assert len(lim) == 100
    d = lim.check("new", 5.0)
    assert d.allowed
    assert lim.overflowed == 0
    assert len(lim) <= 100
    assert "new" in lim._tats


def test_full_table_of_live_entries_sends_newcomers_to_one_shared_bucket() -> None:
    lim = LocalLimiter(10, 1.0, 0, max_keys=100)
    for i in range(100):
        lim.check(i, 0.0)
    # nobody has recovered: the newcomers share one bucket of 10
    admitted = sum(lim.check(f"new{i}", 0.0).allowed for i in range(50))
    assert admitted == 10
    assert lim.overflowed == 50
    assert len(lim) == 100
    # tracked clients keep their own buckets untouched
    assert lim.check(0, 0.0).remaining == 8


def test_flood_of_a_million_keys_stays_bounded_and_cannot_reset_an_abuser() -> None:
    cap = 10_000
    lim = LocalLimiter(10, 1.0, 0, max_keys=cap)
    abuser_admitted = 0
    peak = 0
    now = 0.0
    for i in range(1_000_000):
        now = i * 1e-6  # one second of flood, a new key every microsecond
        lim.check(i, now)
        if i % 100 == 0:  # meanwhile one client hammers at 10,000 requests per second
            abuser_admitted += lim.check("abuser", now).allowed
        n = len(lim)
        if n > peak:
            peak = n
    assert peak <= cap
    assert lim.overflowed > 0
    # the abuser got its own allowance (10 at once, then 10 per second), never a fresh burst
    assert abuser_admitted <= 10 + 10 + 1
    # still in debt after the flood: a fresh bucket would admit ten in a row
    after = [lim.check("abuser", now).allowed for _ in range(10)]
    assert after.count(True) <= 1


def test_sweep_finds_recovered_entries_behind_live_ones() -> None:
    lim = LocalLimiter(10, 1.0, 0, max_keys=50)
    # live keys at the front of the admission order, recovered ones behind them
    for i in range(10):
        for _ in range(10):
            lim.check(f"heavy{i}", 0.0)
    for i in range(40):
        lim.check(f"light{i}", 0.0)
    assert len(lim) == 50
    # at t=0.5 the light keys (TAT 0.1) have recovered, the heavy ones (TAT 1.0) have not
    for i in range(40):
        assert lim.check(f"new{i}", 0.5).allowed
    assert lim.overflowed == 0
    assert all(f"heavy{i}" in lim._tats for i in range(10))


# Headers


def test_policy_and_ratelimit_headers() -> None:
    lim = LocalLimiter(100, 1.0, 0)
    d = lim.check("a", 0.0)
    assert lim.headers(d, "api") == [
        (b"RateLimit-Policy", b'"api";q=100;w=1'),
        (b"RateLimit", b'"api";r=99;t=1'),
    ]


def test_retry_after_on_rejection_is_ceiled_integer_seconds() -> None:
    lim = LocalLimiter(1, 60.0, 0)
    lim.check("a", 0.0)
    d = lim.check("a", 0.5)
    assert not d.allowed
    assert dict(lim.headers(d, "slow")) == {
        b"RateLimit-Policy": b'"slow";q=1;w=60',
        b"RateLimit": b'"slow";r=0;t=60',
        b"Retry-After": b"60",
    }
    short = Decision(False, 1, 0, 0.001, 0.001)
    assert dict(lim.headers(short, "slow"))[b"Retry-After"] == b"1"


def test_policy_header_is_cached_per_name() -> None:
    lim = LocalLimiter(100, 1.0, 0)
    d = lim.check("a", 0.0)
    first = lim.headers(d, "api")[0]
    assert lim.headers(d, "api")[0] is first
    assert lim.headers(d, "other")[0] is not first


def test_policy_name_is_a_structured_field_string() -> None:
    lim = LocalLimiter(100, 1.0, 0)
    d = lim.check("a", 0.0)
    assert lim.headers(d, 'say "hi" \\')[0][1] == b'"say \\"hi\\" \\\\";q=100;w=1'
    with pytest.raises(ValueError, match="printable ASCII"):
        lim.headers(d, "caf\u00e9")
    with pytest.raises(ValueError, match="printable ASCII"):
        lim.headers(d, "a\r\nInjected: 1")


@pytest.mark.parametrize(
    ("rate", "period", "quota", "window"),
    [
        (100, 1.0, 100, 1),
        (10, 60.0, 10, 60),
        (5, 0.5, 10, 1),
        (0.5, 1.0, 1, 2),
        (1, 3600.0, 1, 3600),
    ],
)
def test_policy_quota_and_window_are_integers(
    rate: float, period: float, quota: int, window: int
) -> None:
    p = PolicyHeaders(rate, period)
    assert (p.quota, p.window) == (quota, window)
    assert math.isclose(p.quota / p.window, rate / period, rel_tol=0.5)


def test_allow_agrees_with_check() -> None:
    by_check = LocalLimiter(10, 1.0, 2, max_keys=4)
    by_allow = LocalLimiter(10, 1.0, 2, max_keys=4)
    now = 0.0
    for i in range(400):
        now += 0.013 * (i % 7)
        key = f"k{i % 6}"
        assert by_allow.allow(key, now) == by_check.check(key, now).allowed
    assert list(by_allow._tats.items()) == list(by_check._tats.items())
