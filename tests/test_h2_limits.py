"""`listeners[].http2`: the limits lb puts on HTTP/2 clients, against a running lb over real
sockets (h2c by prior knowledge, frames by hand: test_h2_abuse.py's `Raw`): the SETTINGS lb
sends, REFUSED_STREAM over max_concurrent_streams, idle_timeout, PINGs of ping_interval and
ping_timeout, max_requests_per_connection's two-phase GOAWAY, the rapid-reset bucket; and the
config mistakes, each named with its FILE:LINE:COL."""

import asyncio
import importlib.util
import textwrap
import time

import pytest

from lb.config import ConfigError, load

HAVE_LIB = importlib.util.find_spec("lb._h2") is not None  # h2 in protocols needs it
HAVE_H2 = HAVE_LIB and all(importlib.util.find_spec(m) for m in ("hpack", "hyperframe"))
needs_h2 = pytest.mark.skipif(not HAVE_H2, reason="lb._h2, hpack or hyperframe missing")
needs_lib = pytest.mark.skipif(not HAVE_LIB, reason="lb._h2 not built")

if HAVE_H2:
    from conftest import ok_response
    from hyperframe.frame import (
        GoAwayFrame,
        PingFrame,
        RstStreamFrame,
        SettingsFrame,
        WindowUpdateFrame,
    )
    from test_h2_abuse import (
        ENHANCE_YOUR_CALM,
        REFUSED_STREAM,
        Raw,
        h2_lb,
        still_serves_and_nothing_leaks,
    )

H2 = "    protocols: [http1, h2]\n"
ACK = b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"  # SETTINGS with ACK


def http2(block: str) -> str:
    return f"{H2}    http2: {{{block}}}\n"


async def lb_settings(c) -> dict[int, int]:
    f = await c.wait(lambda f: isinstance(f, SettingsFrame) and "ACK" not in f.flags)
    return dict(f.settings)


async def connection_window(c) -> int:
    f = await c.wait(lambda f: isinstance(f, WindowUpdateFrame) and f.stream_id == 0)
    return 65535 + f.window_increment


# -- SETTINGS --------------------------------------------------------------------------------------


@needs_h2
@pytest.mark.parametrize(
    "listener, want, window",
    [
        (H2, (100, 65535, 4096, 65536, 16384), 1 << 20),  # the defaults
        (H2 + "    limits: {max_header_size: 16KiB}\n", (100, 65535, 4096, 16384, 16384), 1 << 20),
        (
            http2(
                "max_concurrent_streams: 7, initial_window_size: 128KiB, header_table_size: 8KiB,"
                " max_header_list_size: 32KiB, max_frame_size: 32KiB, connection_window_size: 4MiB"
            ),
            (7, 128 << 10, 8 << 10, 32 << 10, 32 << 10),
            4 << 20,
        ),
    ],
    ids=["defaults", "from-limits", "configured"],
)
async def test_settings_frame_carries_the_configured_values(tmp_path, listener, want, window):
    async with h2_lb(tmp_path, listener) as (lb, be):
        c = await Raw.connect(lb.port)
        got = await lb_settings(c)
        S = SettingsFrame
        names = (S.MAX_CONCURRENT_STREAMS, S.INITIAL_WINDOW_SIZE, S.HEADER_TABLE_SIZE,
                 S.MAX_HEADER_LIST_SIZE, S.MAX_FRAME_SIZE)  # fmt: skip
        assert tuple(got[n] for n in names) == want, got
        assert await connection_window(c) == window
        if want[4] > 16384:  # a frame as large as announced is taken, once acknowledged
            body = b"b" * want[4]
            head = c.headers(1, [(b"content-length", str(len(body)).encode())], False)
            data = b"".join(
                (len(body).to_bytes(3, "big"), b"\x00\x01", (1).to_bytes(4, "big"), body)
            )
            await c.send(ACK + head + data)
            assert (await c.response(1))[0] == 200
            assert be.seen[-1].body == body
        c.close()
        await still_serves_and_nothing_leaks(lb, be)


# -- max_concurrent_streams ------------------------------------------------------------------------


@needs_h2
async def test_streams_over_max_concurrent_streams_are_refused(tmp_path):
    release = asyncio.Event()

    async def held(req):
        await asyncio.wait_for(release.wait(), 10)
        return ok_response(b"held")

    async with h2_lb(tmp_path, http2("max_concurrent_streams: 3")) as (lb, be):
        be.respond = held
        c = await Raw.connect(lb.port)
        assert (await lb_settings(c))[SettingsFrame.MAX_CONCURRENT_STREAMS] == 3
        # Before the client ACKs the SETTINGS: the excess is refused, safe to retry.
        await c.send(b"".join(c.headers(sid) for sid in (1, 3, 5, 7, 9)))
        for sid in (7, 9):
            assert (await c.rst(sid)).error_code == REFUSED_STREAM
        for _ in range(300):
            if len(be.seen) >= 3:
                break
            await asyncio.sleep(0.01)
        assert len(be.seen) == 3
        release.set()
        for sid in (1, 3, 5):
            assert await c.response(sid) == (200, b"held")
        be.respond = None
        c.close()
        await still_serves_and_nothing_leaks(lb, be)


# -- idle_timeout ----------------------------------------------------------------------------------


@needs_h2
@pytest.mark.parametrize(
    "listener",
    [
        http2("idle_timeout: 300ms") + "    timeouts: {keepalive_idle: 60s}\n",
        H2 + "    timeouts: {keepalive_idle: 300ms}\n",  # the default: keepalive_idle
    ],
    ids=["idle_timeout", "keepalive_idle"],
)
async def test_idle_timeout_closes_with_goaway_no_error(tmp_path, listener):
    async with h2_lb(tmp_path, listener) as (lb, be):
        c = await Raw.connect(lb.port)
        await c.send(ACK + c.headers(1))
        assert (await c.response(1))[0] == 200
        t0 = time.monotonic()
        g = await c.goaway(3)
        assert g.error_code == 0 and g.last_stream_id == 1
        assert 0.2 < time.monotonic() - t0 < 2.5
        c.close()
        await still_serves_and_nothing_leaks(lb, be)


@needs_h2
async def test_idle_timeout_waits_for_open_streams(tmp_path):
    release = asyncio.Event()

    async def held(req):
        await asyncio.wait_for(release.wait(), 10)
        return ok_response(b"late")

    async with h2_lb(tmp_path, http2("idle_timeout: 200ms")) as (lb, be):
        be.respond = held
        c = await Raw.connect(lb.port)
        await c.send(ACK + c.headers(1))
        await asyncio.sleep(0.6)  # a stream is open: the connection is not idle
        assert not c.eof and not any(isinstance(f, GoAwayFrame) for f in c.frames)
        release.set()
        assert await c.response(1) == (200, b"late")
        g = await c.goaway(3)
        assert g.error_code == 0 and g.last_stream_id == 1
        be.respond = None
        c.close()
        await still_serves_and_nothing_leaks(lb, be)


# -- ping_interval, ping_timeout -------------------------------------------------------------------


async def answer_pings(c) -> None:
    answered = 0
    while not c.eof:
        pings = [f for f in c.frames if isinstance(f, PingFrame) and "ACK" not in f.flags]
        for f in pings[answered:]:
            await c.send(PingFrame(0, opaque_data=f.opaque_data, flags=["ACK"]).serialize())
        answered = len(pings)
        await asyncio.sleep(0.02)


@needs_h2
async def test_ping_interval_closes_a_silent_client_and_keeps_one_that_answers(tmp_path):
    listener = http2("ping_interval: 300ms, ping_timeout: 300ms, idle_timeout: 30s")
    async with h2_lb(tmp_path, listener) as (lb, be):
        silent = await Raw.connect(lb.port)
        alive = await Raw.connect(lb.port)
        await silent.send(ACK)
        await alive.send(ACK)
        t0 = time.monotonic()
        answering = asyncio.get_running_loop().create_task(answer_pings(alive))

        ping = await silent.wait(lambda f: isinstance(f, PingFrame) and "ACK" not in f.flags, 3)
        t_ping = time.monotonic()
        assert 0.2 < t_ping - t0 < 1.5
        g = await silent.goaway(3)  # no ACK, no byte at all: closed after ping_timeout
        assert g.error_code == 0
        assert 0.2 < time.monotonic() - t_ping < 1.5
        assert ping.opaque_data

        await asyncio.sleep(max(0.0, 1.6 - (time.monotonic() - t0)))
        pings = [f for f in alive.frames if isinstance(f, PingFrame) and "ACK" not in f.flags]
        assert len(pings) >= 2, alive.frames  # PINGed again and again, and answered each time
        assert not alive.eof and not any(isinstance(f, GoAwayFrame) for f in alive.frames)
        await alive.send(alive.headers(1))
        assert (await alive.response(1))[0] == 200
        answering.cancel()
        silent.close()
        alive.close()
        await still_serves_and_nothing_leaks(lb, be)


@needs_h2
async def test_no_pings_by_default(tmp_path):
    async with h2_lb(tmp_path, H2) as (lb, be):
        c = await Raw.connect(lb.port)
        await c.send(ACK)
        await asyncio.sleep(0.5)
        assert not any(isinstance(f, PingFrame) for f in c.frames)
        c.close()
        await still_serves_and_nothing_leaks(lb, be)


# -- max_requests_per_connection -------------------------------------------------------------------


@needs_h2
async def test_max_requests_per_connection_two_phase_goaway(tmp_path):
    release = asyncio.Event()

    async def respond(req):
        if req.path == "/slow":
            await asyncio.wait_for(release.wait(), 10)
        return ok_response(req.path.encode())

    def goaways(c):
        return [f for f in c.frames if isinstance(f, GoAwayFrame)]

    async with h2_lb(tmp_path, http2("max_requests_per_connection: 3")) as (lb, be):
        be.respond = respond
        c = await Raw.connect(lb.port)
        await c.send(ACK + c.headers(1))
        assert await c.response(1) == (200, b"/")
        await c.send(c.headers(3))
        assert await c.response(3) == (200, b"/")
        assert not goaways(c)
        await c.send(c.headers(5, path=b"/slow"))
        notice = await c.wait(lambda f: isinstance(f, GoAwayFrame))  # after the third stream
        assert notice.error_code == 0 and notice.last_stream_id >= 5
        assert not any(f.stream_id == 5 and "END_STREAM" in f.flags for f in c.frames)
        release.set()
        assert await c.response(5) == (200, b"/slow")  # the third stream finishes
        await c.wait(None, 3)  # and the connection closes
        final = goaways(c)[-1]
        assert final.error_code == 0 and final.last_stream_id == 5
        assert len(be.seen) == 3
        be.respond = None
        c.close()
        await still_serves_and_nothing_leaks(lb, be)


# -- the rapid-reset guard -------------------------------------------------------------------------


@needs_h2
async def test_reset_flood_guard_is_configurable(tmp_path):
    listener = http2("max_resets_per_second: 5, reset_burst: 20")
    async with h2_lb(tmp_path, listener) as (lb, be):
        c = await Raw.connect(lb.port)
        attack = b"".join(
            c.headers(sid) + RstStreamFrame(sid, error_code=8).serialize()
            for sid in range(1, 2 * 200, 2)
        )
        await c.send(attack)
        g = await c.goaway()
        assert g.error_code == ENHANCE_YOUR_CALM
        assert g.last_stream_id < 2 * 40, g  # the burst (20) and a little, not all 200
        c.close()
        await still_serves_and_nothing_leaks(lb, be)


# -- config ----------------------------------------------------------------------------------------

GOOD = """\
listeners:
  - name: web
    bind: "127.0.0.1:8080"
    protocols: [http1, h2]
    http2:
      max_concurrent_streams: 50
      initial_window_size: 1MiB
      max_frame_size: 64KiB
      ping_interval: 30s
      ping_timeout: 5s
      max_requests_per_connection: 1000
  - name: db
    bind: "127.0.0.1:5433"
    mode: tcp
    service: app
services:
  app:
    backends: ["127.0.0.1:9001"]
routes:
  - name: all
    service: app
"""


def _path(tmp_path, text):
    p = tmp_path / "lb.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def problems(tmp_path, text):
    with pytest.raises(ConfigError) as info:
        load(str(_path(tmp_path, text)), environ={})
    return [str(p) for p in info.value.problems]


@needs_lib
def test_http2_block_and_defaults(tmp_path):
    cfg = load(str(_path(tmp_path, GOOD)), environ={}).config
    h2 = cfg.listeners[0].http2
    assert (h2.max_concurrent_streams, h2.initial_window_size, h2.max_frame_size) == (
        50, 1 << 20, 64 << 10)  # fmt: skip
    assert (h2.ping_interval, h2.ping_timeout, h2.max_requests_per_connection) == (30, 5, 1000)
    assert h2.session_settings(65536)["max_header_list_size"] == 65536
    from lb.config.model import Http2Settings

    d = Http2Settings()
    assert (d.max_concurrent_streams, d.initial_window_size, d.connection_window_size) == (
        100, 65535, 1 << 20)  # fmt: skip
    assert (d.header_table_size, d.max_frame_size, d.max_header_list_size) == (4096, 16384, None)
    assert (d.idle_timeout, d.ping_interval, d.ping_timeout) == (None, None, 20.0)
    assert (d.max_requests_per_connection, d.max_resets_per_second, d.reset_burst) == (
        0, 200, 1000)  # fmt: skip


CASES = {
    "http2 on a tcp listener": (
        ("    service: app\n", "    service: app\n    http2: {max_concurrent_streams: 10}\n"),
        (16, 12, "listeners[1].http2: http2 applies to mode: http listeners, not to mode: tcp"),
    ),
    "http2 without h2": (
        ("    protocols: [http1, h2]\n", "    protocols: [http1]\n"),
        (6, 7, "listeners[0].http2: http2 settings need h2 in protocols"),
    ),
    "max_frame_size too small": (
        ("max_frame_size: 64KiB", "max_frame_size: 1KiB"),
        (
            8,
            23,
            "listeners[0].http2.max_frame_size: expected a size from 16384 to 16777215, "
            'found "1KiB"',
        ),
    ),
    "max_frame_size too large": (
        ("max_frame_size: 64KiB", "max_frame_size: 16MiB"),
        (8, 23, "listeners[0].http2.max_frame_size: expected a size from 16384 to 16777215"),
    ),
    "window too large": (
        ("initial_window_size: 1MiB", "initial_window_size: 2GiB"),
        (7, 28, "listeners[0].http2.initial_window_size: expected a size from 0 to 2147483647"),
    ),
    "ping_timeout without ping_interval": (
        ("      ping_interval: 30s\n", ""),
        (9, 21, "listeners[0].http2.ping_timeout: ping_timeout needs ping_interval"),
    ),
    "unknown key": (
        ("max_concurrent_streams: 50", "max_concurent_streams: 50"),
        (
            6,
            7,
            "listeners[0].http2.max_concurent_streams: unknown key "
            '(did you mean "max_concurrent_streams"?)',
        ),
    ),
}


@needs_lib
@pytest.mark.parametrize("case", list(CASES))
def test_each_mistake_is_named_with_its_place(tmp_path, case):
    (old, new), (line, col, text) = CASES[case]
    assert old in GOOD, case
    out = problems(tmp_path, GOOD.replace(old, new, 1))
    assert len(out) == 1, out
    where = f"{tmp_path / 'lb.yaml'}:{line}:{col}: "
    assert out[0].startswith(where + text), (out[0], where + text)
