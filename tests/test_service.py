"""Service.pick with an exclusion (a retry leaving the backend that failed it): never the same
backend while another exists, in panic mode too, and the exclusion leaves no trace."""

from lb.balancer.service import Service
from lb.config import model


def service(n: int) -> Service:
    svc = Service("app", model.Service())
    svc.update([("127.0.0.1", 9000 + i, 1) for i in range(n)])
    return svc


def picks(svc: Service, n: int, exclude=()) -> list[str]:
    out = []
    for _ in range(n):
        b = svc.pick(0.0, exclude)
        assert b is not None
        out.append(b.name)
        svc.release(b)
    return out


def test_exclusion_holds_while_healthy() -> None:
    svc = service(3)
    first = next(iter(svc.backends.values()))
    assert first.name not in picks(svc, 30, exclude=[first])
    assert sorted(set(picks(svc, 30))) == sorted(b.name for b in svc.backends.values())


def test_every_backend_a_request_tried_is_excluded_until_none_is_left() -> None:
    svc = service(3)
    a, b, c = svc.backends.values()
    assert set(picks(svc, 30, exclude=[a, b])) == {c.name}
    # All of them tried: the pick falls back to the whole set rather than to nothing.
    assert len(set(picks(svc, 30, exclude=[a, b, c]))) == 3


def test_exclusion_holds_in_panic_and_leaves_the_weight_as_it_was() -> None:
    svc = service(3)
    for b in svc.backends.values():
        b.check_ok = False
        svc.refresh(b, 0.0)
    assert svc.panic  # no healthy backend: lb balances over all of them
    first = next(iter(svc.backends.values()))
    assert first.name not in picks(svc, 30, exclude=[first])
    # Afterwards every backend takes its equal share again.
    counts = {name: 0 for name in (b.name for b in svc.backends.values())}
    for name in picks(svc, 30):
        counts[name] += 1
    assert set(counts.values()) == {10}


def test_a_drained_backend_stays_drained_after_being_excluded_in_panic() -> None:
    svc = service(3)
    _, second, _ = svc.backends.values()
    svc.set_drained(second, True)
    for b in svc.backends.values():
        b.check_ok = False
        svc.refresh(b, 0.0)
    assert svc.panic
    picks(svc, 5, exclude=[second])
    assert second.name not in picks(svc, 30)
