"""Active health checks with rise/fall thresholds (HAProxy's model and defaults).

An HTTP probe (`type: http`, the default) opens a fresh connection (TLS if a context is
given), sends one `GET` with `Connection: close` and reads only the status line: the verdict
needs nothing more, and not reading the body keeps a probe cheap whatever the endpoint
returns. Connect, send and read together are bounded by `timeout`. A TCP probe (`type: tcp`,
for the services of tcp listeners, HAProxy's plain `check`) passes when a connection opens
within `timeout`, and closes it at once. A gRPC probe (`type: grpc`, for `protocol: h2`
services) calls grpc.health.v1.Health/Check over HTTP/2 on a fresh connection (lb._h2) for
`grpc_service` ("" asks about the server as a whole) and passes on SERVING.

State: a backend goes down after `fall` consecutive failed probes and comes back after `rise`
consecutive passes (Traefik marks a server down on one failed probe, which flaps). A new
checker starts with the backend up, as HAProxy does by default (`init-state fully-up`): a
backend that discovery just announced takes traffic at once and is taken out after `fall`
failures, rather than waiting `rise` intervals during which a fresh service would get nothing.
`reason` reads "unknown" until the first probe completes.

Probes are spaced `interval` apart, each wait randomised by +/- `jitter` x interval, and the
first probe comes after a random fraction of that jitter, so checkers started together (at
boot, on reload) do not probe every backend in lockstep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Callable, Collection
from dataclasses import dataclass

log = logging.getLogger(__name__)

PASSED = "active-check-passed: "
FAILED = "active-check-failed: "


@dataclass(frozen=True)
class HealthCheckSettings:
    path: str = "/healthz"
    type: str = "http"  # "http" | "tcp"
    expected: Collection[int] = range(200, 400)  # a range, or explicit statuses
    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3
    jitter: float = 0.1  # fraction of interval
    host: str | None = None  # Host header and TLS server name; default: the backend address
    grpc_service: str = ""  # type grpc: the service asked about ("" for the whole server)

    def __post_init__(self) -> None:
        if not self.path.startswith("/") or any(c in self.path for c in " \r\n"):
            raise ValueError(f"health check path must start with /, without spaces: {self.path!r}")
        if self.interval <= 0 or self.timeout <= 0:
            raise ValueError("interval and timeout must be positive")
        if self.rise < 1 or self.fall < 1:
            raise ValueError("rise and fall must be at least 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be within [0, 1)")
        if self.type not in ("http", "tcp", "grpc"):
            raise ValueError(f"health check type must be http, tcp or grpc: {self.type!r}")
        if self.host is not None and any(c in self.host for c in " \r\n"):
            raise ValueError(f"invalid health check host: {self.host!r}")
        if not isinstance(self.expected, range | frozenset):
            object.__setattr__(self, "expected", frozenset(self.expected))


def parse_status_line(line: bytes) -> int | None:
    """The status code of an HTTP/1.x status line, or None if it is not one."""
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        return None
    code = parts[1]
    if len(code) != 3 or not code.isdigit():
        return None
    return int(code)


def _server_name(host_header: str | None, host: str) -> str:
    """The TLS server name: the configured Host without its port, else the backend host."""
    if host_header is None:
        return host
    if host_header.startswith("["):
        return host_header[1 : host_header.index("]")]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


class ActiveChecker:
    """Probes one backend periodically; calls `on_change(healthy, reason)` on each transition."""

    def __init__(
        self,
        host: str,
        port: int,
        settings: HealthCheckSettings,
        on_change: Callable[[bool, str], None],
        *,
        tls_context: ssl.SSLContext | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.on_change = on_change
        self.tls_context = tls_context
        self._rng = rng or random.Random()
        self.healthy = True
        self.reason = "unknown"
        self.checks = 0
        self.failures = 0
        self._passes = 0  # consecutive
        self._fails = 0  # consecutive
        self._task: asyncio.Task[None] | None = None
        self.update(settings)

    def update(self, settings: HealthCheckSettings) -> None:
        """Apply new settings from a reload without losing the backend's state or counters
        (Traefik restarts its checkers on every reload); the next wait uses the new interval."""
        self.settings = settings
        address = f"[{self.host}]" if ":" in self.host else self.host
        host_header = settings.host or f"{address}:{self.port}"
        self._server_name = _server_name(settings.host, self.host)
        self._authority = host_header.encode("ascii", "replace")
        self._request = (
            f"GET {settings.path} HTTP/1.1\r\n"
            f"Host: {host_header}\r\n"
            "User-Agent: lb-health-check\r\n"
            "Accept: */*\r\n"
            "Connection: close\r\n\r\n"
        ).encode("ascii")

    async def start(self) -> None:
        self.spawn()

    def spawn(self) -> None:
        """`start` for callers outside a coroutine (config reloads, discovery callbacks)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"health {self.host}:{self.port}")

    async def stop(self) -> None:
        task = self.cancel()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def cancel(self) -> asyncio.Task[None] | None:
        """Stop probing without waiting (a backend leaving its service); the cancelled task."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        return task

    async def _run(self) -> None:
        s = self.settings
        await asyncio.sleep(self._rng.uniform(0, s.jitter * s.interval))
        while True:
            ok, detail = await self.probe()
            self.observe(ok, detail)
            s = self.settings
            await asyncio.sleep(s.interval * (1 + s.jitter * self._rng.uniform(-1, 1)))

    async def probe(self) -> tuple[bool, str]:
        """One check: (passed, detail), detail like "status 200", "connected", "timeout"."""
        writer: asyncio.StreamWriter | None = None
        tcp = self.settings.type == "tcp"
        try:
            async with asyncio.timeout(self.settings.timeout):
                if tcp:
                    _, writer = await asyncio.open_connection(self.host, self.port)
                    return True, "connected"
                if self.settings.type == "grpc":
                    reader, writer = await asyncio.open_connection(
                        self.host,
                        self.port,
                        ssl=self.tls_context,
                        server_hostname=self._server_name if self.tls_context else None,
                    )
                    return await self._grpc_check(reader, writer)
                reader, writer = await asyncio.open_connection(
                    self.host,
                    self.port,
                    ssl=self.tls_context,
                    server_hostname=self._server_name if self.tls_context else None,
                )
                writer.write(self._request)
                line = await reader.readline()
        except TimeoutError:
            return False, "timeout"
        except ConnectionRefusedError:
            return False, "connection refused"
        except ConnectionResetError:
            return False, "connection reset"
        except ssl.SSLError as exc:
            return False, f"tls error: {exc.reason or exc}"
        except OSError as exc:
            return False, exc.strerror or str(exc) or type(exc).__name__
        except ValueError:  # a first line longer than the stream limit
            return False, "bad status line"
        except Exception as exc:  # lb._h2.H2Error: the backend broke HTTP/2
            if type(exc).__name__ != "H2Error":
                raise
            return False, f"http/2 error: {exc}"
        finally:
            if writer is not None:
                writer.close()
        if not line:
            return False, "empty response"
        status = parse_status_line(line)
        if status is None:
            return False, "bad status line"
        return status in self.settings.expected, f"status {status}"

    async def _grpc_check(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[bool, str]:
        from lb import _h2

        call = _GrpcCall()
        session = _h2.Session(call, server=False)
        call.session = session
        service = self.settings.grpc_service.encode()
        msg = b"\x0a" + _varint(len(service)) + service if service else b""
        sid = session.submit_request(
            [
                (b":method", b"POST"),
                (b":scheme", b"https" if self.tls_context else b"http"),
                (b":authority", self._authority),
                (b":path", b"/grpc.health.v1.Health/Check"),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
                (b"user-agent", b"lb-health-check"),
            ]
        )
        session.send_data(sid, b"\x00" + len(msg).to_bytes(4, "big") + msg, True)
        writer.write(session.output())
        while not call.done:
            data = await reader.read(65536)
            if not data:
                return False, "connection closed"
            session.receive(data)
            out = session.output()
            if out:
                writer.write(out)
        if call.grpc_status is None:
            return False, f"status {call.status}, no grpc-status"
        if call.grpc_status != b"0":
            return False, f"grpc-status {call.grpc_status.decode('latin-1')}"
        status = _serving_status(bytes(call.body))
        if status == 1:
            return True, "SERVING"
        return False, _SERVING.get(status, f"serving status {status}")

    def observe(self, ok: bool, detail: str) -> None:
        """Feed one probe result to the rise/fall counters; notify on a transition."""
        self.checks += 1
        self.reason = (PASSED if ok else FAILED) + detail
        if ok:
            self._fails = 0
            self._passes += 1
            if not self.healthy and self._passes >= self.settings.rise:
                self._transition(True)
        else:
            self.failures += 1
            self._passes = 0
            self._fails += 1
            if self.healthy and self._fails >= self.settings.fall:
                self._transition(False)

    def _transition(self, healthy: bool) -> None:
        self.healthy = healthy
        try:
            self.on_change(healthy, self.reason)
        except Exception:
            # The owner's bug must not stop the checks of this backend.
            log.exception("health check on_change callback failed for %s:%s", self.host, self.port)


_SERVING = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _serving_status(body: bytes) -> int | None:
    """HealthCheckResponse.status (field 1, a varint) from one length-prefixed message."""
    if len(body) < 5 or body[0] != 0:
        return None
    msg = body[5 : 5 + int.from_bytes(body[1:5], "big")]
    if not msg:
        return 0  # every field at its default: UNKNOWN
    i = 0
    while i < len(msg):
        tag = msg[i]
        i += 1
        value = shift = 0
        while i < len(msg):
            b = msg[i]
            i += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        if tag == 0x08:
            return value
        if tag & 7 != 0:
            return None  # only varint fields are expected here
    return 0


class _GrpcCall:
    """The delegate of a gRPC health probe's Session: one stream's response."""

    def __init__(self) -> None:
        self.session = None
        self.status = 0
        self.grpc_status: bytes | None = None
        self.body = bytearray()
        self.done = False

    def _fields(self, headers: list[tuple[bytes, bytes]]) -> None:
        for name, value in headers:
            if name == b":status":
                self.status = int(value)
            elif name == b"grpc-status":
                self.grpc_status = value

    def on_headers(self, sid: int, headers: list[tuple[bytes, bytes]], end: bool) -> None:
        self._fields(headers)

    def on_trailers(self, sid: int, headers: list[tuple[bytes, bytes]]) -> None:
        self._fields(headers)

    def on_data(self, sid: int, data: bytes) -> None:
        if len(self.body) < 65536:
            self.body += data
        self.session.consume(sid, len(data))

    def on_end_stream(self, sid: int) -> None:
        self.done = True

    def on_stream_close(self, sid: int, code: int) -> None:
        self.done = True

    def on_goaway(self, code: int, last: int) -> None:
        pass

    def on_drained(self, sid: int) -> None:
        pass
