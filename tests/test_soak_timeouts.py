"""Long-lived connections past every timeout: with all of lb's timeouts small (T), WebSockets,
streamed responses and slow uploads held for several T stay up as long as bytes flow; an idle
WebSocket outlives every timeout but the tunnel's own idle; slow heads, keep-alive and drain
end where their own timeout says, and only there.

T is SCALE.timeout: 1 s in the short form, 5 s in the long one; holds are SCALE.hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from conftest import (
    LB,
    Client,
    RawBackend,
    Response,
    Seen,
    free_port,
    lb_yaml,
    ok_response,
    read_response,
    running_lb,
)
from soak import (
    RESPONSE_HEAD,
    SCALE,
    SERVICE_IDLE,
    WS_CLOSED,
    WsStats,
    listener_timeouts,
    ms,
    read_chunked_stream,
    report,
    serve_paths,
    service_timeouts,
    start_lb_process,
    stream_response,
    until,
    ws_chat,
    ws_echo_backend,
)

pytestmark = pytest.mark.soak

T = SCALE.timeout
HOLD = SCALE.hold
TICK = SCALE.tick
SLACK = SCALE.slack
SLOW_ROUTE_HEAD = 3 * T  # route /slow's response_head override
TUNNEL_IDLE = HOLD + 1.5 * T  # route /idle/'s idle override: above every other timeout
EARLY = 0.25  # how much sooner than its timeout lb may close (timer granularity)


def config(port: int, admin_port: int, app: str, ws: str) -> str:
    routes = (
        "routes:\n"
        "  - name: ws-idle\n"
        "    match: {path: {prefix: /idle/}}\n"
        "    service: ws\n"
        f"    timeouts: {{idle: {ms(TUNNEL_IDLE)}}}\n"
        "  - name: ws\n"
        "    match: {path: {prefix: /ws}}\n"
        "    service: ws\n"
        "  - name: slow\n"
        "    match: {path: {prefix: /slow}}\n"
        "    service: app\n"
        f"    timeouts: {{response_head: {ms(SLOW_ROUTE_HEAD)}}}\n"
        "  - name: all\n"
        "    match: {path: {prefix: /}}\n"
        "    service: app\n"
    )
    ws_service = f'  ws:\n    backends: ["{ws}"]\n' + service_timeouts()
    return lb_yaml(
        [app],
        port=port,
        admin_port=admin_port,
        extra_listener=listener_timeouts(drain=T),
        extra_service=service_timeouts() + ws_service,
        routes=routes,
    )


def delay_of(path: str) -> float | None:
    """The `s` query parameter: how long the backend waits before its response head."""
    values = parse_qs(urlsplit(path).query).get("s")
    return float(values[0]) if values else None


async def app_paths(path: str, writer: asyncio.StreamWriter) -> bool:
    """/stream: a chunk every TICK for HOLD; /stream-gap: two chunks, then silence well past
    the service idle, then more; ?s=N: the head after N seconds; anything else: 200 "ok"."""
    if path.startswith("/stream-gap"):
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for i in range(2):
            writer.write(b"8\r\nchunk %d\n\r\n" % i)
        await writer.drain()
        await asyncio.sleep(SERVICE_IDLE + SLACK + 1)
        await stream_response(writer, 2, 0.01, b"late")
        return True
    if path.startswith("/stream"):
        await stream_response(writer, int(HOLD / TICK), TICK)
        return True
    delay = delay_of(path)
    if delay is not None:
        await asyncio.sleep(delay)
        writer.write(ok_response(b"late ok\n"))
        await writer.drain()
        return True
    return False


@dataclass
class Setup:
    lb: LB
    app: RawBackend
    ws: WsStats

    @property
    def listener(self) -> Any:
        return next(iter(self.lb.server.runtime.listeners.values()))


@contextlib.asynccontextmanager
async def timeouts_lb(tmp_path: Path) -> AsyncIterator[Setup]:
    async def handler(_: RawBackend, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await serve_paths(r, w, app_paths)

    app = await RawBackend(handler=handler).start()
    try:
        async with (
            ws_echo_backend() as (ws_addr, stats),
            running_lb(tmp_path, config(free_port(), free_port(), app.address, ws_addr)) as lb,
        ):
            yield Setup(lb, app, stats)
    finally:
        await app.stop()


def ws_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=None))


async def ws_open(s: aiohttp.ClientSession, url: str) -> aiohttp.ClientWebSocketResponse:
    # No pings from the client: only the test's own messages count as traffic.
    return await s.ws_connect(
        url, autoping=False, heartbeat=None, timeout=aiohttp.ClientWSTimeout()
    )


# -- WebSocket -----------------------------------------------------------------------------------
async def test_websocket_with_traffic_outlives_every_timeout(tmp_path: Path) -> None:
    async with timeouts_lb(tmp_path) as setup, ws_session() as s:
        ws = await ws_open(s, f"{setup.lb.url}/ws")
        start = time.monotonic()
        try:
            messages = await ws_chat(ws, TICK, HOLD)
        except AssertionError as exc:
            held = time.monotonic() - start
            pytest.fail(f"the WebSocket broke after {held:.2f} s of traffic (T={T}): {exc}")
        held = time.monotonic() - start
        assert not ws.closed
        assert len(setup.listener.tunnels) == 1
        await ws.close()
        report("ws_traffic", messages=messages, held_s=held)
        assert messages >= HOLD / TICK / 2  # it really was held with traffic, every TICK
        assert setup.ws.opened == 1


async def test_idle_websocket_outlives_head_timeouts_then_closes_at_tunnel_idle(
    tmp_path: Path,
) -> None:
    async with timeouts_lb(tmp_path) as setup, ws_session() as s:
        ws = await ws_open(s, f"{setup.lb.url}/idle/ws")
        await ws.send_str("hello")
        assert await ws.receive_str(timeout=SLACK) == "echo hello"
        # Idle past client_head, keepalive_idle, client_body_idle and response_head (all <= 2T)
        # but within the route's tunnel idle.
        await asyncio.sleep(HOLD)
        try:
            await ws.send_str("still here")
            echo = await ws.receive(timeout=SLACK)
        except Exception as exc:
            pytest.fail(
                f"the WebSocket idle for {HOLD} s (< tunnel idle {TUNNEL_IDLE} s) was closed: "
                f"{type(exc).__name__}: {exc}"
            )
        assert echo.type == aiohttp.WSMsgType.TEXT, (
            f"the WebSocket idle for {HOLD} s (< tunnel idle {TUNNEL_IDLE} s) was closed: "
            f"{echo.type} {echo.data!r}"
        )
        assert echo.data == "echo still here"
        last = time.monotonic()
        # Now idle past the tunnel idle: lb closes it then, not much later.
        try:
            msg = await ws.receive(timeout=TUNNEL_IDLE + SLACK)
        except TimeoutError:
            pytest.fail(f"still open {TUNNEL_IDLE + SLACK:.1f} s after the last message")
        closed_after = time.monotonic() - last
        report("ws_idle", idle_survived_s=HOLD, closed_after_s=closed_after, expected=TUNNEL_IDLE)
        assert msg.type in WS_CLOSED, (msg.type, msg.data)
        assert TUNNEL_IDLE - EARLY <= closed_after <= TUNNEL_IDLE + SLACK
        assert await until(lambda: not setup.listener.tunnels, SLACK) is not None
        assert await until(lambda: setup.ws.closed == 1, SLACK) is not None


# -- streamed response and slow upload -----------------------------------------------------------
async def test_streamed_response_outlives_every_timeout(tmp_path: Path) -> None:
    async with timeouts_lb(tmp_path) as setup:
        c = await Client.connect(setup.lb.port)
        start = time.monotonic()
        c.writer.write(b"GET /stream HTTP/1.1\r\nhost: soak\r\n\r\n")
        head = await asyncio.wait_for(c.reader.readuntil(b"\r\n\r\n"), SLACK)
        assert head.startswith(b"HTTP/1.1 200"), head
        chunks, ended = await read_chunked_stream(c.reader, TICK + SLACK)
        held = time.monotonic() - start
        count = int(HOLD / TICK)
        report("stream", chunks=len(chunks), expected=count, ended=ended, held_s=held)
        assert b"".join(chunks) == b"".join(b"chunk %d\n" % i for i in range(count))
        assert ended, f"the stream was cut after {held:.2f} s"
        assert (await c.request()).status == 200  # and the connection is still good
        c.close()


async def test_stream_silent_past_idle_is_cut_near_idle(tmp_path: Path) -> None:
    async with timeouts_lb(tmp_path) as setup:
        c = await Client.connect(setup.lb.port)
        c.writer.write(b"GET /stream-gap HTTP/1.1\r\nhost: soak\r\n\r\n")
        head = await asyncio.wait_for(c.reader.readuntil(b"\r\n\r\n"), SLACK)
        assert head.startswith(b"HTTP/1.1 200"), head
        chunks = []
        for _ in range(2):
            got, _ = await read_first_chunk(c.reader)
            chunks.append(got)
        last = time.monotonic()
        rest, ended = await read_chunked_stream(c.reader, SERVICE_IDLE + SLACK + 2)
        cut_after = time.monotonic() - last
        c.close()
        report("stream_gap", cut_after_s=cut_after, expected=SERVICE_IDLE)
        assert chunks == [b"chunk 0\n", b"chunk 1\n"]
        assert not ended and rest == [], "a stream silent past the idle timeout must be cut"
        assert SERVICE_IDLE - EARLY <= cut_after <= SERVICE_IDLE + SLACK


async def read_first_chunk(reader: asyncio.StreamReader) -> tuple[bytes, bool]:
    size = int((await asyncio.wait_for(reader.readuntil(b"\r\n"), SLACK)).split(b";")[0], 16)
    data = await reader.readexactly(size + 2)
    return data[:-2], size > 0


async def test_slow_upload_outlives_every_timeout(tmp_path: Path) -> None:
    async with timeouts_lb(tmp_path) as setup:
        c = await Client.connect(setup.lb.port)
        start = time.monotonic()
        c.writer.write(b"POST /upload HTTP/1.1\r\nhost: soak\r\ntransfer-encoding: chunked\r\n\r\n")
        answer = asyncio.create_task(read_response(c.reader))
        sent = 0
        for i in range(int(HOLD / TICK)):
            if answer.done():
                break  # lb must not answer mid-upload
            piece = b"part %05d;" % i
            c.writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
            await c.writer.drain()
            sent += len(piece)
            await asyncio.sleep(TICK)
        held = time.monotonic() - start
        if answer.done():
            c.close()
            pytest.fail(f"lb answered after {held:.2f} s of a slow upload: {answer_text(answer)}")
        c.writer.write(b"0\r\n\r\n")
        r = await asyncio.wait_for(answer, SLACK)
        report("slow_upload", bytes=sent, held_s=held, status=r.status)
        assert (r.status, r.body) == (200, b"ok %d\n" % sent)
        c.close()


def answer_text(task: asyncio.Task[Response]) -> str:
    if task.exception() is not None:
        return repr(task.exception())
    r = task.result()
    return f"{r.status} {r.body[:100]!r}"


async def test_upload_silent_past_body_idle_gets_408(tmp_path: Path) -> None:
    async with timeouts_lb(tmp_path) as setup:
        c = await Client.connect(setup.lb.port)
        c.writer.write(
            b"POST /upload HTTP/1.1\r\nhost: soak\r\ntransfer-encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n"
        )
        await c.writer.drain()
        last = time.monotonic()
        r = await asyncio.wait_for(read_response(c.reader), T + SLACK + 2)
        after = time.monotonic() - last
        c.close()
        report("upload_gap", status=r.status, answered_after_s=after, expected=T)
        assert r.status == 408
        assert T - EARLY <= after <= T + SLACK


# -- response heads ------------------------------------------------------------------------------
async def test_slow_head_between_client_head_and_response_head_gets_200(tmp_path: Path) -> None:
    async with timeouts_lb(tmp_path) as setup:
        c = await Client.connect(setup.lb.port)
        delay = 2 * T  # > client_head (T), < the route's response_head (3T)
        start = time.monotonic()
        r = await c.request(path=f"/slow?s={delay}", timeout=SLOW_ROUTE_HEAD + SLACK)
        took = time.monotonic() - start
        report("slow_head", status=r.status, took_s=took)
        assert (r.status, r.body) == (200, b"late ok\n")
        assert (await c.request()).status == 200  # still keep-alive
        c.close()


async def test_head_slower_than_response_head_gets_504_near_it(tmp_path: Path) -> None:
    async with timeouts_lb(tmp_path) as setup:
        c = await Client.connect(setup.lb.port)
        start = time.monotonic()
        r = await c.request(path=f"/?s={RESPONSE_HEAD + SLACK + 2}", timeout=RESPONSE_HEAD + SLACK)
        took = time.monotonic() - start
        c.close()
        report("head_timeout", status=r.status, took_s=took, expected=RESPONSE_HEAD)
        assert r.status == 504
        assert RESPONSE_HEAD - EARLY <= took <= RESPONSE_HEAD + SLACK


# -- keep-alive ----------------------------------------------------------------------------------
async def test_keepalive_reused_below_idle_and_closed_past_it(tmp_path: Path) -> None:
    async with timeouts_lb(tmp_path) as setup:
        accepted = setup.listener.accepted
        c = await Client.connect(setup.lb.port)
        assert (await c.request()).status == 200
        await asyncio.sleep(T / 2)
        assert (await c.request()).status == 200  # the same connection, reused
        assert setup.listener.accepted == accepted + 1
        last = time.monotonic()
        try:
            data = await asyncio.wait_for(c.reader.read(1), T + SLACK + 2)
        except ConnectionError as exc:
            pytest.fail(f"lb reset an idle keep-alive connection instead of closing it: {exc}")
        except TimeoutError:
            pytest.fail(f"an idle keep-alive connection was still open after {T + SLACK + 2} s")
        closed_after = time.monotonic() - last
        c.close()
        report("keepalive_idle", closed_after_s=closed_after, expected=T)
        assert data == b"", f"lb wrote {data!r} to an idle connection instead of closing it"
        assert T - EARLY <= closed_after <= T + SLACK


# -- drain (lb as a process) ---------------------------------------------------------------------
async def test_drain_finishes_short_requests_and_exits_in_time(tmp_path: Path) -> None:
    drain = 3 * T
    short, long = 1.5 * T, drain + 5 * T  # shorter than the drain; longer than it

    async def respond(req: Seen) -> bytes:
        await asyncio.sleep(delay_of(req.path) or 0)
        return ok_response(b"done\n")

    backend = await RawBackend(respond=respond).start()
    port = free_port()
    path = tmp_path / "drain.yaml"
    path.write_text(
        lb_yaml(
            [backend.address],
            port=port,
            admin_port=free_port(),
            extra_listener=listener_timeouts(drain),
            extra_service=service_timeouts(response_head=long + 5 * T),
        )
    )
    try:
        proc = await start_lb_process(path, port)
    except BaseException:
        await backend.stop()
        raise
    try:
        idle = await Client.connect(port)
        assert (await idle.request()).status == 200
        fast, slow = await Client.connect(port), await Client.connect(port)
        fast_task = asyncio.create_task(fast.request(path=f"/?s={short}", timeout=drain + SLACK))
        slow_task = asyncio.create_task(slow.request(path=f"/?s={long}", timeout=long + SLACK))
        assert await until(lambda: len(backend.seen) == 3, SLACK) is not None
        proc.signal(signal.SIGTERM)
        sigterm = time.monotonic()

        async def refused() -> bool:
            try:
                c = await Client.connect(port)
            except OSError:
                return True
            c.close()
            return False

        try:
            idle_closed = await asyncio.wait_for(idle.reader.read(1), SLACK) == b""
        except (ConnectionError, TimeoutError):
            idle_closed = False
        idle_s = time.monotonic() - sigterm
        r = await fast_task
        fast_s = time.monotonic() - sigterm
        stops_accepting = False
        for _ in range(int(SLACK / 0.05)):
            if await refused():
                stops_accepting = True
                break
            await asyncio.sleep(0.05)
        try:
            code = await asyncio.to_thread(proc.proc.wait, drain + SLACK + 5)
        except subprocess.TimeoutExpired:
            pytest.fail(f"lb still running {drain + SLACK + 5:.1f} s after SIGTERM (drain {drain})")
        exit_s = time.monotonic() - sigterm
        slow_outcome = "pending"
        try:
            got = await asyncio.wait_for(slow_task, SLACK)
            slow_outcome = f"status {got.status}"
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError) as exc:
            slow_outcome = type(exc).__name__
        report(
            "drain",
            fast_status=r.status,
            fast_s=fast_s,
            idle_closed_s=idle_s,
            exit_code=code,
            exit_s=exit_s,
            drain=drain,
            slow=slow_outcome,
        )
        assert (r.status, r.body) == (200, b"done\n"), "an in-flight request within the drain"
        assert idle_closed and idle_s <= SLACK, "an idle keep-alive connection is closed at once"
        assert stops_accepting, "lb kept accepting connections after SIGTERM"
        assert code == 0, proc.output()
        # The request longer than the drain holds lb until the drain ends, and no longer.
        assert drain - EARLY <= exit_s <= drain + SLACK, proc.output()
        assert not slow_outcome.startswith("status 200")
        for c in (idle, fast, slow):
            c.close()
    finally:
        proc.stop()
        await backend.stop()
