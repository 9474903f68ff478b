"""Active health checks through the proxy: fall takes a backend out, rise brings it back, the
reason shows in its state, and checkers keep running (and counting) across reloads."""

import asyncio
from pathlib import Path

from faulty import backend_of, eventually, faulty, get, lb_for, reload


def checks(**settings: object) -> str:
    base = {"path": "/healthz", "interval": "30ms", "timeout": "500ms", "jitter": 0}
    lines = "".join(f"      {k}: {v}\n" for k, v in {**base, **settings}.items())
    return f"    health_check:\n{lines}"


async def test_fall_takes_a_backend_out_and_rise_brings_it_back(tmp_path: Path) -> None:
    service = checks(rise=2, fall=2)
    async with faulty("a", "b") as (a, b), lb_for(tmp_path, [a, b], extra_service=service) as lb:
        ba = backend_of(lb, a)
        loop = lb.server.loop
        await eventually(lambda: a.health_checks >= 1 and b.health_checks >= 1)
        a.health = 503
        await eventually(lambda: not ba.check_ok)
        assert ba.state(loop.time()) == ("down", "active-check-failed: status 503")
        assert ba.checker.checks >= 2
        served = a.requests
        for _ in range(6):
            assert (await get(lb)).body == b"b"
        assert a.requests == served
        a.health = 200
        await eventually(lambda: ba.check_ok)
        assert ba.state(loop.time()) == ("up", "")
        bodies = {(await get(lb)).body for _ in range(4)}
        assert bodies == {b"a", b"b"}


async def test_a_backend_that_stops_listening_is_taken_out(tmp_path: Path) -> None:
    async with (
        faulty("a", "b") as (a, b),
        lb_for(tmp_path, [a, b], extra_service=checks(fall=1)) as lb,
    ):
        ba = backend_of(lb, a)
        await a.refuse()
        await eventually(lambda: not ba.check_ok)
        assert ba.check_reason.startswith("active-check-failed: connection ")  # refused or reset
        assert [(await get(lb)).body for _ in range(4)] == [b"b"] * 4


async def test_checkers_survive_reloads_and_follow_the_backend_set(tmp_path: Path) -> None:
    async with (
        faulty("a", "b", "c") as (a, b, c),
        lb_for(tmp_path, [a, b], extra_service=checks(fall=1, rise=3)) as lb,
    ):
        ba, bb = backend_of(lb, a), backend_of(lb, b)
        a.health = 500
        await eventually(lambda: not ba.check_ok)
        checker_a, checker_b = ba.checker, bb.checker
        # A reload with new check settings and a new backend: the checkers of a and b go
        # on with their state; c gets its own.
        await reload(lb, [a, b, c], extra_service=checks(fall=1, rise=3, timeout="400ms"))
        assert ba.checker is checker_a and bb.checker is checker_b
        assert checker_a.settings.timeout == 0.4
        assert not ba.check_ok  # no reset to "up" by the reload
        bc = backend_of(lb, c)
        await eventually(lambda: c.health_checks >= 1)
        assert bc.checker is not None
        # Removing b cancels its checker; dropping the section cancels them all and
        # forgets their verdicts.
        await reload(lb, [a, c], extra_service=checks(fall=1, rise=3, timeout="400ms"))
        assert bb.checker is None
        seen = b.health_checks
        await reload(lb, [a, c])
        assert ba.checker is None and bc.checker is None
        assert ba.check_ok
        checks_a = a.health_checks
        assert (await get(lb)).status == 200
        await asyncio.sleep(0.1)  # three intervals
        assert a.health_checks <= checks_a + 1  # a probe in flight may still land
        assert b.health_checks == seen
