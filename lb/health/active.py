"""Active health checks with rise/fall thresholds (HAProxy's model and defaults).

An HTTP probe (`type: http`, the default) opens a fresh connection (TLS if a context is
given), sends one `GET` with `Connection: close` and reads only the status line: the verdict
needs nothing more, and not reading the body keeps a probe cheap whatever the endpoint
returns. Connect, send and read together are bounded by `timeout`. A TCP probe (`type: tcp`,
for the services of tcp listeners, HAProxy's plain `check`) passes when a connection opens
within `timeout`, and closes it at once.

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

    def __post_init__(self) -> None:
        if not self.path.startswith("/") or any(c in self.path for c in " \r\n"):
            raise ValueError(f"health check path must start with /, without spaces: {self.path!r}")
        if self.interval <= 0 or self.timeout <= 0:
            raise ValueError("interval and timeout must be positive")
        if self.rise < 1 or self.fall < 1:
            raise ValueError("rise and fall must be at least 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be within [0, 1)")
        if self.type not in ("http", "tcp"):
            raise ValueError(f"health check type must be http or tcp: {self.type!r}")
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
        finally:
            if writer is not None:
                writer.close()
        if not line:
            return False, "empty response"
        status = parse_status_line(line)
        if status is None:
            return False, "bad status line"
        return status in self.settings.expected, f"status {status}"

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
