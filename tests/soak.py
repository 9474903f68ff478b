"""Soak and fault harness (no tests here): the scale, a keep-alive load generator that records
every failure with its time and can say how long a fault took to recover from, a WebSocket echo
backend, a streaming backend, and `report()`, which prints one `SOAK name: ...` line.

`LB_SOAK=short` (the default, what `make test` runs) keeps every scenario to seconds;
`LB_SOAK=long` (`make soak`) holds connections for tens of seconds and faults for longer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from array import array
from bisect import bisect_right
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web
from conftest import Client, Response, free_port, read_request
from procs import LbProcess


@dataclass(frozen=True)
class Scale:
    name: str
    timeout: float  # T: the small timeouts every soak config is built from
    hold: float  # how long a long-lived connection is held: a multiple of T
    outage: float  # how long a killed backend, Consul or Redis stays down
    big_body: int  # the slow reader's response size
    storm_rounds: int  # rounds of the reload storm (each: every bad kind twice, one good)

    @property
    def slack(self) -> float:
        """Generous tolerance around an expected close time on a loaded 2-core machine."""
        return max(3.0, self.timeout)

    @property
    def tick(self) -> float:
        """How often traffic flows on a connection that must stay open: a fraction of T."""
        return self.timeout / 4


SHORT = Scale("short", timeout=1.0, hold=3.5, outage=3.0, big_body=64 << 20, storm_rounds=3)
LONG = Scale("long", timeout=5.0, hold=40.0, outage=30.0, big_body=512 << 20, storm_rounds=20)
SCALE = LONG if os.environ.get("LB_SOAK", "short").strip().lower() == "long" else SHORT


def ms(seconds: float) -> str:
    """A duration as lb's config takes it."""
    return f"{round(seconds * 1000)}ms"


RESPONSE_HEAD = 2 * SCALE.timeout  # services' default here: above client_head (T)
SERVICE_IDLE = 1.5 * SCALE.timeout  # services' streaming idle: above client_body_idle (T)


def listener_timeouts(drain: float | None = None) -> str:
    """A listener's timeouts, each T (drain too unless given)."""
    T = SCALE.timeout
    drain = T if drain is None else drain
    return (
        f"    timeouts: {{client_head: {ms(T)}, keepalive_idle: {ms(T)}, "
        f"client_body_idle: {ms(T)}, drain: {ms(drain)}}}\n"
    )


def service_timeouts(response_head: float | None = None) -> str:
    """A service's timeouts: connect T, response_head 2T, idle 1.5T."""
    T = SCALE.timeout
    response_head = RESPONSE_HEAD if response_head is None else response_head
    return (
        f"    timeouts: {{connect: {ms(T)}, response_head: {ms(response_head)}, "
        f"idle: {ms(SERVICE_IDLE)}}}\n"
    )


def report(name: str, **figures: object) -> None:
    """One line per scenario; `make soak` runs pytest with -s, so it shows."""
    parts = []
    for key, value in figures.items():
        if isinstance(value, float):
            value = f"{value:.3f}"
        elif value is None:
            value = "-"
        parts.append(f"{key}={value}")
    print(f"SOAK {name}: {' '.join(parts)} scale={SCALE.name}", flush=True)


async def until(check: Callable[[], bool], timeout: float, step: float = 0.02) -> float | None:
    """Seconds until check() holds, or None if it did not within timeout."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            return None
        await asyncio.sleep(step)
    return time.monotonic() - start


async def start_lb_process(config: Path, port: int, timeout: float = 30.0) -> LbProcess:
    """lb as a process, once it listens on `port`; fails with its output if it exits first."""
    proc = LbProcess(config)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise AssertionError(f"lb exited with {proc.proc.returncode}:\n{proc.output()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        await asyncio.sleep(0.05)
    proc.stop()
    raise AssertionError(f"lb did not listen on {port} within {timeout} s:\n{proc.output()}")


# -- load ----------------------------------------------------------------------------------------
@dataclass
class Failure:
    at: float  # time.monotonic()
    client: int
    what: str  # "status 502", or the exception


def ok_200(r: Response) -> str | None:
    return None if r.status == 200 else f"status {r.status}"


@dataclass
class Load:
    """`clients` keep-alive HTTP/1.1 connections to 127.0.0.1:`port`, each sending GETs one
    after another (pausing `pause` between them) until stop(), `max_seconds` or `max_requests`.

    A response that `check` objects to, an exception or a timeout is a Failure; the connection
    is then replaced. A `connection: close` answer that passes the check is no failure: the
    client reconnects. `tag(response)` counts answers by, e.g., the backend that sent them.
    """

    port: int
    clients: int = 16
    path: str = "/"
    host: str = "soak"
    headers: str = ""
    pause: float = 0.002
    timeout: float = 10.0  # one request (connect, or head and body)
    max_seconds: float = 600.0
    max_requests: int = 10_000_000  # per client
    check: Callable[[Response], str | None] = ok_200
    tag: Callable[[Response], str] | None = None
    failures: list[Failure] = field(default_factory=list)
    ok_times: array = field(default_factory=lambda: array("d"))  # completion times, in order
    tags: Counter[str] = field(default_factory=Counter)
    first_seen: dict[str, float] = field(default_factory=dict)  # per tag, since mark()
    connects: int = 0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    started_at: float = 0.0

    @property
    def requests(self) -> int:
        return len(self.ok_times) + len(self.failures)

    def start(self) -> Load:
        self.started_at = time.monotonic()
        self._tasks = [asyncio.create_task(self._client(i)) for i in range(self.clients)]
        return self

    async def stop(self) -> None:
        self._stop.set()
        # Every client loop ends within one request timeout of the stop.
        await asyncio.wait_for(asyncio.gather(*self._tasks), self.timeout + 5)

    def mark(self) -> float:
        """Forget which tags were seen: first_seen fills again from now."""
        self.first_seen.clear()
        return time.monotonic()

    def failures_since(self, t: float) -> list[Failure]:
        return [f for f in self.failures if f.at >= t]

    def failures_between(self, start: float, end: float) -> int:
        return sum(1 for f in self.failures if start <= f.at < end)

    def successes_since(self, t: float) -> int:
        return len(self.ok_times) - bisect_right(self.ok_times, t)

    def recover_s(self, fault_at: float, k: int = 20) -> float | None:
        """Seconds from the fault to the K-th success after the last failure since the fault
        (with no failure since, after the fault itself); None if there were not K such yet."""
        later = [f.at for f in self.failures if f.at >= fault_at]
        start = max(later) if later else fault_at
        i = bisect_right(self.ok_times, start)
        if len(self.ok_times) - i < k:
            return None
        return self.ok_times[i + k - 1] - fault_at

    def last_failure_s(self, fault_at: float) -> float | None:
        """Seconds from the fault to the last failure since it (None: none)."""
        later = [f.at for f in self.failures if f.at >= fault_at]
        return max(later) - fault_at if later else None

    def failure_summary(self, limit: int = 8) -> str:
        kinds = Counter(f.what for f in self.failures)
        return ", ".join(f"{n}x {what}" for what, n in kinds.most_common(limit))

    async def wait_successes(self, n: int, timeout: float) -> bool:
        """Until n more requests have succeeded (False if not within timeout)."""
        target = len(self.ok_times) + n
        return await until(lambda: len(self.ok_times) >= target, timeout) is not None

    async def _client(self, i: int) -> None:
        deadline = self.started_at + self.max_seconds
        conn: Client | None = None
        try:
            for _ in range(self.max_requests):
                if self._stop.is_set() or time.monotonic() >= deadline:
                    return
                try:
                    if conn is None:
                        conn = await asyncio.wait_for(Client.connect(self.port), self.timeout)
                        self.connects += 1
                    r = await conn.request(
                        "GET", self.path, host=self.host, headers=self.headers, timeout=self.timeout
                    )
                except Exception as exc:  # any error is the finding; record it and go on
                    self.failures.append(
                        Failure(time.monotonic(), i, f"{type(exc).__name__}: {exc}"[:200])
                    )
                    if conn is not None:
                        conn.close()
                        conn = None
                    await asyncio.sleep(max(self.pause, 0.01))  # no busy loop on a dead port
                    continue
                now = time.monotonic()
                why = self.check(r)
                if why is not None:
                    self.failures.append(Failure(now, i, why))
                else:
                    self.ok_times.append(now)
                    if self.tag is not None:
                        t = self.tag(r)
                        self.tags[t] += 1
                        self.first_seen.setdefault(t, now)
                if why is not None or (r.header("connection") or "").lower() == "close":
                    conn.close()
                    conn = None
                await asyncio.sleep(self.pause)
        finally:
            if conn is not None:
                conn.close()


@contextlib.asynccontextmanager
async def load(port: int, **kw: object) -> AsyncIterator[Load]:
    """A running Load, stopped on exit (also when the test body fails)."""
    gen = Load(port, **kw).start()  # type: ignore[arg-type]
    try:
        yield gen
    finally:
        if not gen._stop.is_set():
            await gen.stop()


# -- backends ------------------------------------------------------------------------------------
@dataclass
class WsStats:
    opened: int = 0
    closed: int = 0
    messages: int = 0


@contextlib.asynccontextmanager
async def ws_echo_backend() -> AsyncIterator[tuple[str, WsStats]]:
    """An aiohttp WebSocket echo server on any path ("echo " + text, binary as is); plain
    requests get "plain". Yields its address and counts of tunnels opened and closed."""
    stats = WsStats()

    async def echo(request: web.Request) -> web.StreamResponse:
        if request.headers.get("upgrade", "").lower() != "websocket":
            return web.Response(text="plain")
        ws = web.WebSocketResponse(autoping=True, heartbeat=None)
        await ws.prepare(request)
        stats.opened += 1
        try:
            async for msg in ws:
                stats.messages += 1
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await ws.send_str("echo " + msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    await ws.send_bytes(msg.data)
        finally:
            stats.closed += 1
        return ws

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", echo)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"127.0.0.1:{port}", stats
    finally:
        await runner.cleanup()


WS_CLOSED = (
    aiohttp.WSMsgType.CLOSE,
    aiohttp.WSMsgType.CLOSED,
    aiohttp.WSMsgType.CLOSING,
    aiohttp.WSMsgType.ERROR,
)


async def ws_chat(
    ws: aiohttp.ClientWebSocketResponse, every: float, seconds: float, name: str = "m"
) -> int:
    """Send a text message every `every` seconds for `seconds` and check each echo; the number
    of messages echoed. Raises AssertionError at the first missing or wrong echo."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    n = 0
    for n in range(1, int(seconds / every) + 10_000):  # bounded in count and in time
        if loop.time() >= end:
            return n - 1
        text = f"{name} {n}"
        try:
            await ws.send_str(text)
            msg = await ws.receive(timeout=every + SCALE.slack)
        except Exception as exc:  # a closed or silent tunnel: the finding
            raise AssertionError(f"{text}: {type(exc).__name__}: {exc}") from exc
        assert msg.type == aiohttp.WSMsgType.TEXT, f"{text}: got {msg.type} {msg.data!r}"
        assert msg.data == "echo " + text
        await asyncio.sleep(every)
    return n


async def read_chunked_stream(
    reader: asyncio.StreamReader, timeout: float, max_seconds: float = 900.0
) -> tuple[list[bytes], bool]:
    """Read a chunked body whose head was already read: (chunks, whether it ended properly).
    Stops at EOF, when no chunk comes for `timeout` seconds, or after `max_seconds`."""
    chunks: list[bytes] = []
    end = time.monotonic() + max_seconds
    for _ in range(1_000_000):
        if time.monotonic() > end:
            break
        try:
            line = await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout)
            size = int(line.split(b";")[0], 16)
            if size == 0:
                await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout)
                return chunks, True
            chunks.append(await asyncio.wait_for(reader.readexactly(size), timeout))
            await asyncio.wait_for(reader.readexactly(2), timeout)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, ValueError):
            return chunks, False
    return chunks, False


async def stream_response(
    writer: asyncio.StreamWriter, count: int, every: float, prefix: bytes = b"chunk"
) -> None:
    """A chunked 200 whose body is `count` chunks ("chunk 0\\n", ...), one every `every` s."""
    writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    await writer.drain()
    for i in range(count):
        data = b"%b %d\n" % (prefix, i)
        writer.write(b"%x\r\n%b\r\n" % (len(data), data))
        await writer.drain()
        await asyncio.sleep(every)
    writer.write(b"0\r\n\r\n")
    await writer.drain()


Route = Callable[[str, asyncio.StreamWriter], Awaitable[bool]]


async def serve_paths(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, special: Route | None = None
) -> None:
    """A keep-alive connection loop for RawBackend handlers: `special(path, writer)` answers
    the request itself and returns True, else a 200 "ok" (with the body length received)."""
    for _ in range(1_000_000):
        req = await read_request(reader)
        if req is None:
            return
        if special is not None and await special(req.path, writer):
            continue
        body = b"ok %d\n" % len(req.body)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%b" % (len(body), body))
        await writer.drain()
