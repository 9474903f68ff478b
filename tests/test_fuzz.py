"""Mutated and random requests thrown at a running lb: no crash, no hang, only valid answers."""

import asyncio
import re
import socket
import threading

from conftest import backends, free_port, lb_yaml, running_lb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SEEDS = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"HEAD / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
]
STATUS_LINE = re.compile(rb"HTTP/1\.1 [1-5][0-9][0-9] [^\r\n]*\r\n")


@st.composite
def requests(draw):
    if draw(st.booleans()):
        return draw(st.binary(min_size=1, max_size=300))
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "dup"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(
                st.sampled_from(
                    [
                        b"\r\n",
                        b"\n",
                        b" ",
                        b":",
                        b"\x00",
                        b"chunked",
                        b"Content-Length: 3\r\n",
                        b"Transfer-Encoding: chunked\r\n",
                        b"ffffffff",
                        b"\t",
                        b"\r",
                    ]
                )
            )
        elif op == "delete" and data:
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "dup":
            data += data[pos:]
    return bytes(data)


def send(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
        return out


class LoopThread:
    """lb on its own loop in a thread, so hypothesis can drive it with plain sockets."""

    def __init__(self, tmp_path) -> None:
        self.tmp_path = tmp_path
        self.ready = threading.Event()
        self.stop: asyncio.Event | None = None
        self.port = free_port()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self.stop = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        async with (
            backends(1) as bes,
            running_lb(
                self.tmp_path,
                lb_yaml(
                    [bes[0].address],
                    port=self.port,
                    admin_port=free_port(),
                    extra_listener="    timeouts: {client_head: 1s, client_body_idle: 1s}\n",
                ),
            ),
        ):
            self.ready.set()
            await self.stop.wait()

    def __enter__(self) -> "LoopThread":
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.stop is not None
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)


def test_fuzz_never_crashes_or_hangs(tmp_path):
    with LoopThread(tmp_path) as lb:

        @settings(
            max_examples=150,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )
        @given(requests())
        def check(data: bytes) -> None:
            out = send(lb.port, data)
            if out:
                assert STATUS_LINE.match(out), out[:200]
            # lb is still healthy after every input.
            ok = send(lb.port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            assert ok.startswith(b"HTTP/1.1 200"), ok[:200]

        check()
