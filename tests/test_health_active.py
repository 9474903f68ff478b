import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable

import pytest

from lb.health.active import ActiveChecker, HealthCheckSettings, parse_status_line


class Backend:
    """A tiny HTTP server whose health answer is switched by setting `mode`:
    a status code ("200", "503", ...), "hang", "garbage", "close"; `stop()` makes it refuse."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.mode = "200"
        self.requests: list[bytes] = []
        self.port = 0
        self._ssl = ssl_context
        self._server: asyncio.Server | None = None
        self._hung: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, ssl=self._ssl, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for w in self._hung:
            w.close()
        self._hung.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            self.requests.append(await reader.readuntil(b"\r\n\r\n"))
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        if self.mode == "hang":
            self._hung.append(writer)
            return
        if self.mode == "garbage":
            writer.write(b"SSH-2.0-OpenSSH\r\n")
        elif self.mode.isdigit():
            writer.write(
                b"HTTP/1.1 %s X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                % self.mode.encode()
            )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    b = Backend()
    await b.start()
    yield b
    await b.stop()


FAST = HealthCheckSettings(interval=0.02, timeout=0.2, rise=2, fall=2, jitter=0.0)


def checker(
    b: Backend,
    settings: HealthCheckSettings = FAST,
    tls_context: ssl.SSLContext | None = None,
) -> tuple[ActiveChecker, list[tuple[bool, str]]]:
    changes: list[tuple[bool, str]] = []
    c = ActiveChecker(
        "127.0.0.1",
        b.port,
        settings,
        lambda up, why: changes.append((up, why)),
        tls_context=tls_context,
    )
    return c, changes


async def wait_for(predicate: Callable[[], object], timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


# One probe


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("200", (True, "status 200")),
        ("204", (True, "status 204")),
        ("302", (True, "status 302")),
        ("404", (False, "status 404")),
        ("503", (False, "status 503")),
        ("garbage", (False, "bad status line")),
        ("close", (False, "empty response")),
    ],
)
async def test_probe_verdicts(backend: Backend, mode: str, expected: tuple[bool, str]) -> None:
    backend.mode = mode
    c, _ = checker(backend)
    assert await c.probe() == expected


async def test_probe_times_out(backend: Backend) -> None:
    backend.mode = "hang"
    c, _ = checker(backend, HealthCheckSettings(timeout=0.05))
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await c.probe() == (False, "timeout")
    assert loop.time() - started < 0.5


async def test_probe_connection_refused(backend: Backend) -> None:
    await backend.stop()
    c, _ = checker(backend)
    assert await c.probe() == (False, "connection refused")


async def test_explicit_expected_statuses(backend: Backend) -> None:
    backend.mode = "302"
    c, _ = checker(backend, HealthCheckSettings(expected=[200, 204]))
    assert await c.probe() == (False, "status 302")
    assert c.settings.expected == frozenset({200, 204})


async def test_request_is_a_minimal_get_with_connection_close(backend: Backend) -> None:
    c, _ = checker(backend, HealthCheckSettings(path="/ready?deep=1", host="api.internal"))
    await c.probe()
    head = backend.requests[-1]
    assert head.startswith(b"GET /ready?deep=1 HTTP/1.1\r\n")
    assert b"\r\nHost: api.internal\r\n" in head
    assert b"\r\nConnection: close\r\n" in head


async def test_default_host_header_is_the_backend_address(backend: Backend) -> None:
    c, _ = checker(backend)
    await c.probe()
    assert b"\r\nHost: 127.0.0.1:%d\r\n" % backend.port in backend.requests[-1]


async def test_probe_over_tls() -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("backend.test").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    b = Backend(server_ctx)
    await b.start()
    try:
        good, _ = checker(b, HealthCheckSettings(host="backend.test"), tls_context=client_ctx)
        assert await good.probe() == (True, "status 200")
        wrong, _ = checker(b, HealthCheckSettings(host="other.test"), tls_context=client_ctx)
        ok, detail = await wrong.probe()
        assert not ok
        assert detail.startswith("tls error")
    finally:
        await b.stop()


# Rise and fall


def test_starts_up_and_goes_down_after_fall_failures() -> None:
    changes: list[tuple[bool, str]] = []
    c = ActiveChecker(
        "127.0.0.1",
        1,
        HealthCheckSettings(rise=2, fall=3),
        lambda up, why: changes.append((up, why)),
    )
    assert c.healthy
    assert c.reason == "unknown"
    c.observe(False, "status 503")
    c.observe(False, "status 503")
    c.observe(True, "status 200")  # a pass breaks the run of failures
    c.observe(False, "timeout")
    c.observe(False, "timeout")
    assert c.healthy
    assert changes == []
    c.observe(False, "connection refused")
    assert not c.healthy
    assert changes == [(False, "active-check-failed: connection refused")]
    c.observe(True, "status 200")
    c.observe(False, "timeout")
    c.observe(True, "status 200")
    assert not c.healthy
    c.observe(True, "status 200")
    assert c.healthy
    assert changes[-1] == (True, "active-check-passed: status 200")
    assert len(changes) == 2
    assert c.checks == 10
    assert c.failures == 6


def test_a_failing_callback_does_not_break_the_checker(caplog: pytest.LogCaptureFixture) -> None:
    def boom(up: bool, why: str) -> None:
        raise RuntimeError("owner bug")

    c = ActiveChecker("127.0.0.1", 1, HealthCheckSettings(fall=1), boom)
    c.observe(False, "timeout")
    assert not c.healthy
    assert "owner bug" in caplog.text


@pytest.mark.parametrize(
    "kwargs",
    [
        {"path": "healthz"},
        {"path": "/a b"},
        {"interval": 0},
        {"timeout": -1},
        {"rise": 0},
        {"fall": 0},
        {"jitter": 1.0},
        {"host": "a\r\nX: y"},
    ],
)
def test_invalid_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        HealthCheckSettings(**kwargs)  # type: ignore[arg-type]


def test_haproxy_defaults() -> None:
    s = HealthCheckSettings()
    assert (s.interval, s.rise, s.fall, s.timeout) == (2.0, 2, 3, 1.0)
    assert 200 in s.expected and 399 in s.expected and 400 not in s.expected


@pytest.mark.parametrize(
    ("line", "status"),
    [
        (b"HTTP/1.1 200 OK\r\n", 200),
        (b"HTTP/1.0 503\r\n", 503),
        (b"HTTP/2 200 OK\r\n", None),
        (b"HTTP/1.1 20 OK\r\n", None),
        (b"HTTP/1.1 abc OK\r\n", None),
        (b"\r\n", None),
    ],
)
def test_parse_status_line(line: bytes, status: int | None) -> None:
    assert parse_status_line(line) == status


# The running checker against a backend that changes


async def test_running_checker_follows_the_backend(backend: Backend) -> None:
    c, changes = checker(backend)
    await c.start()
    try:
        await wait_for(lambda: c.checks >= 2)
        assert changes == []
        assert c.reason == "active-check-passed: status 200"

        backend.mode = "503"
        await wait_for(lambda: changes)
        assert changes == [(False, "active-check-failed: status 503")]

        backend.mode = "200"
        await wait_for(lambda: len(changes) == 2)
        assert changes[1] == (True, "active-check-passed: status 200")

        await backend.stop()
        await wait_for(lambda: len(changes) == 3)
        assert changes[2] == (False, "active-check-failed: connection refused")

        await backend.start()  # same port
        await wait_for(lambda: len(changes) == 4)
        assert changes[3][0] is True

        backend.mode = "hang"
        await wait_for(lambda: len(changes) == 5)
        assert changes[4] == (False, "active-check-failed: timeout")
    finally:
        await c.stop()
    checks = c.checks
    await asyncio.sleep(0.06)
    assert c.checks == checks  # stopped for good


async def test_stop_is_idempotent_and_start_twice_runs_one_task(backend: Backend) -> None:
    c, _ = checker(backend)
    await c.start()
    await c.start()
    await wait_for(lambda: c.checks >= 3)
    await c.stop()
    await c.stop()


async def test_update_keeps_state_and_changes_the_probe(backend: Backend) -> None:
    c, changes = checker(backend, HealthCheckSettings(fall=1))
    backend.mode = "503"
    c.observe(*await c.probe())
    assert not c.healthy
    c.update(HealthCheckSettings(path="/live", rise=1, fall=1))
    assert not c.healthy  # a reload does not reset what is known about the backend
    backend.mode = "200"
    c.observe(*await c.probe())
    assert backend.requests[-1].startswith(b"GET /live ")
    assert changes == [
        (False, "active-check-failed: status 503"),
        (True, "active-check-passed: status 200"),
    ]
