"""Outlier ejection through the proxy: consecutive 5xx eject for base x times ejected, never
more than max_ejection_percent, and below the panic threshold lb balances over all backends."""

from pathlib import Path

import pytest
from faulty import backend_of, eventually, faulty, get, lb_for


def outlier(**settings: object) -> str:
    lines = "".join(f"      {k}: {v}\n" for k, v in settings.items())
    return f"    outlier_detection:\n{lines}"


async def test_consecutive_5xx_eject_for_base_times_ejections(tmp_path: Path) -> None:
    service = outlier(consecutive_errors=3, base_ejection=0.3, max_ejection_percent=50)
    async with faulty("a", "b") as (a, b), lb_for(tmp_path, [a, b], extra_service=service) as lb:
        loop = lb.server.loop
        svc = lb.server.runtime.services["app"]
        ba = backend_of(lb, a)
        a.mode = "502"
        while a.requests < 3:
            await get(lb)
        assert ba.state(loop.time()) == ("down", "ejected")
        assert ba.ejected_until - loop.time() == pytest.approx(0.3, abs=0.1)
        assert svc.outlier.ejections_total == 1
        for _ in range(4):
            assert (await get(lb)).body == b"b"
        assert a.requests == 3
        # Back after the ejection time, and out for twice as long on the next run of errors.
        await eventually(lambda: ba.state(loop.time()) == ("up", ""))
        while a.requests < 6:
            await get(lb)
        assert ba.state(loop.time()) == ("down", "ejected")
        assert ba.ejected_until - loop.time() == pytest.approx(0.6, abs=0.1)
        assert svc.outlier.times_ejected[ba] == 2
        # Errors that are not consecutive never eject.
        await eventually(lambda: ba.state(loop.time())[0] == "up", timeout=2)
        for mode in ("502", "502", "ok", "502", "502", "ok"):
            a.mode = mode
            seen = a.requests
            while a.requests == seen:
                await get(lb)
        assert svc.outlier.ejections_total == 2
        assert ba.state(loop.time()) == ("up", "")


async def test_no_more_than_max_ejection_percent(tmp_path: Path) -> None:
    service = outlier(consecutive_errors=2, base_ejection=30, max_ejection_percent=34)
    async with (
        faulty("a", "b", "c") as (a, b, c),
        lb_for(tmp_path, [a, b, c], extra_service=service) as lb,
    ):
        a.mode = b.mode = "500"
        for _ in range(12):
            await get(lb)
        det = lb.server.runtime.services["app"].outlier
        assert len(det.ejected) == 1  # one of three is 33%; two would be 67%
        assert det.overflows >= 1
        now = lb.server.loop.time()
        states = sorted(backend_of(lb, x).state(now)[1] for x in (a, b))
        assert states == ["", "ejected"]


async def test_below_the_panic_threshold_all_backends_take_traffic(tmp_path: Path) -> None:
    service = outlier(consecutive_errors=1, base_ejection=30, max_ejection_percent=100)
    async with faulty("a", "b") as (a, b), lb_for(tmp_path, [a, b], extra_service=service) as lb:
        svc = lb.server.runtime.services["app"]
        a.mode = b.mode = "500"
        while len(svc.outlier.ejected) < 2:
            await get(lb)
        assert svc.panic  # 0 of 2 healthy, under the default 50%
        # Both ejected for 30 s, yet both recovered backends serve: no 503 while in panic.
        a.mode = b.mode = "ok"
        bodies = {(await get(lb)).body for _ in range(4)}
        assert bodies == {b"a", b"b"}


async def test_panic_threshold_zero_turns_panic_off(tmp_path: Path) -> None:
    service = outlier(consecutive_errors=1, base_ejection=30, max_ejection_percent=100)
    service += "    panic_threshold: 0\n"
    async with faulty("a", "b") as (a, b), lb_for(tmp_path, [a, b], extra_service=service) as lb:
        svc = lb.server.runtime.services["app"]
        a.mode = b.mode = "500"
        while len(svc.outlier.ejected) < 2:
            await get(lb)
        assert not svc.panic
        assert (await get(lb)).status == 503
