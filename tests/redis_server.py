"""A throwaway redis-server for tests: 127.0.0.1, a free port, no persistence, restartable.

Use the `redis_server` fixture by importing `redis_server_fixture` into a test module; the
server can be stopped and started again on the same port to simulate a Redis outage.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

# /usr/sbin and /usr/bin are not on every PATH a test runner is given.
REDIS_SERVER = shutil.which("redis-server") or shutil.which("/usr/bin/redis-server")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    def __init__(self, port: int | None = None) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not installed")
        self.executable = REDIS_SERVER
        self.port = port or _free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, wait: float = 5.0) -> None:
        self._proc = subprocess.Popen(
            [
                self.executable,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._proc.returncode}")
            if _answers_ping(self.port):
                return
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"redis-server did not answer PING on port {self.port}")

    def stop(self) -> None:
        """Kill the server (SIGKILL: an outage, not a graceful shutdown)."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None


def start_redis() -> RedisServer:
    """Start a server, retrying on a fresh port if another process took the one picked."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    for _ in range(3):
        server = RedisServer()
        try:
            server.start()
        except RuntimeError:
            continue
        return server
    raise RuntimeError("could not start redis-server")


@pytest.fixture(name="redis_server")
def redis_server_fixture() -> Iterator[RedisServer]:
    server = start_redis()
    try:
        yield server
    finally:
        server.stop()
