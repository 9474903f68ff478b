import pytest

from lb.balancer.service import panic
from lb.traffic.outlier import OutlierDetector


def detector(n: int, **kwargs: float) -> OutlierDetector:
    d = OutlierDetector(**kwargs)  # type: ignore[arg-type]
    d.set_backends(f"b{i}" for i in range(n))
    return d


def fail(d: OutlierDetector, key: str, times: int, now: float) -> list[bool]:
    return [d.record(key, False, now) for _ in range(times)]


def test_consecutive_errors_eject_once() -> None:
    d = detector(10)
    assert fail(d, "b0", 5, 0.0) == [False, False, False, False, True]
    assert d.ejected_until("b0") == pytest.approx(30.0)
    assert "b0" in d.ejected
    assert d.times_ejected["b0"] == 1
    assert d.ejections_total == 1
    assert fail(d, "b0", 10, 1.0) == [False] * 10  # late failures while ejected


def test_a_success_resets_the_count() -> None:
    d = detector(10)
    fail(d, "b0", 4, 0.0)
    assert not d.record("b0", True, 0.0)
    assert fail(d, "b0", 4, 0.0) == [False] * 4
    assert d.ejected_until("b0") is None


def test_ejection_time_grows_with_times_ejected_and_is_capped() -> None:
    d = detector(10, base_ejection=30.0, max_ejection=100.0)
    now = 0.0
    durations = []
    for _ in range(5):
        assert fail(d, "b0", 5, now)[-1]
        until = d.ejected_until("b0")
        assert until is not None
        durations.append(until - now)
        now = until
        assert d.tick(now) == ["b0"]
    assert durations == [30.0, 60.0, 90.0, 100.0, 100.0]


def test_tick_returns_backends_when_their_time_is_up() -> None:
    d = detector(20)
    fail(d, "b0", 5, 0.0)
    fail(d, "b1", 5, 10.0)
    assert d.tick(29.9) == []
    assert d.tick(30.0) == ["b0"]
    assert d.tick(40.0) == ["b1"]
    assert d.ejected == {}
    # back with a clean error count
    assert fail(d, "b0", 4, 41.0) == [False] * 4


def test_multiplier_decays_while_the_backend_stays_in() -> None:
    d = detector(10, interval=10.0)
    fail(d, "b0", 5, 0.0)
    d.tick(30.0)
    fail(d, "b0", 5, 30.0)  # second ejection: 60 s
    assert d.times_ejected["b0"] == 2
    d.tick(90.0)
    d.tick(99.0)
    assert d.times_ejected["b0"] == 2
    d.tick(100.0)
    assert d.times_ejected["b0"] == 1
    d.tick(125.0)
    assert "b0" not in d.times_ejected
    fail(d, "b0", 5, 125.0)
    assert d.ejected_until("b0") == pytest.approx(155.0)  # forgiven: base time again


def test_max_ejection_percent_caps_concurrent_ejections() -> None:
    d = detector(20, max_ejection_percent=10)
    assert fail(d, "b0", 5, 0.0)[-1]
    assert fail(d, "b1", 5, 0.0)[-1]
    assert not fail(d, "b2", 5, 0.0)[-1]  # a third would be 15%
    assert d.overflows == 1
    d.tick(30.0)
    assert d.record("b2", False, 31.0)  # room again: ejected on its next error


def test_small_service_may_always_eject_one() -> None:
    d = detector(3, max_ejection_percent=10)
    assert fail(d, "b0", 5, 0.0)[-1]
    assert not fail(d, "b1", 5, 0.0)[-1]
    strict = detector(3, max_ejection_percent=10, always_eject_one=False)
    assert not fail(strict, "b0", 5, 0.0)[-1]


def test_lone_backend_is_not_ejected_unless_percent_allows_all() -> None:
    assert not fail(detector(1), "b0", 5, 0.0)[-1]
    assert fail(detector(1, max_ejection_percent=100), "b0", 5, 0.0)[-1]


def test_zero_percent_disables_ejection() -> None:
    d = detector(10, max_ejection_percent=0)
    assert not any(fail(d, "b0", 50, 0.0))


def test_set_backends_forgets_removed_ones() -> None:
    d = detector(10)
    fail(d, "b0", 5, 0.0)
    fail(d, "b1", 3, 0.0)
    d.set_backends(["b2", "b3"])
    assert d.ejected == {}
    assert "b0" not in d.times_ejected
    assert fail(d, "b1", 4, 1.0) == [False] * 4


def test_undeclared_backends_still_count() -> None:
    d = OutlierDetector(max_ejection_percent=50)
    assert not fail(d, "x", 5, 0.0)[-1]  # alone: ejecting it would leave nothing
    fail(d, "y", 1, 0.0)
    assert fail(d, "x", 1, 0.0) == [False]  # y is only counted once it reaches the threshold
    assert fail(d, "y", 4, 0.0)[-1]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"consecutive_errors": 0},
        {"base_ejection": 0},
        {"max_ejection_percent": 101},
        {"interval": 0},
    ],
)
def test_invalid_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        OutlierDetector(**kwargs)  # type: ignore[arg-type]


def test_panic_threshold() -> None:
    assert not panic(5, 10, 50)
    assert panic(4, 10, 50)
    assert panic(0, 3, 50)
    assert not panic(0, 0, 50)
    assert not panic(0, 10, threshold_percent=0)
    assert panic(99, 100, threshold_percent=100)
