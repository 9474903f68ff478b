"""File descriptors: lb raises its soft limit, keeps a reserve, and at the cap stops accepting
(connections wait in the backlog) instead of dropping them; the admin API stays reachable."""

import asyncio
import errno
import logging
import resource
import socket
import subprocess
import sys
from collections import defaultdict

import aiohttp
import pytest
from conftest import backends, free_port, lb_yaml
from procs import ROOT, wait_port

from lb.proxy.accept import RESERVED_FDS, Acceptor, Descriptors


def start_lb(tmp_path, backend: str, soft: int, hard: int) -> tuple[subprocess.Popen, int, int]:
    port, admin = free_port(), free_port()
    cfg = tmp_path / "lb.yaml"
    cfg.write_text(lb_yaml([backend], port=port, admin_port=admin))
    log = (tmp_path / "lb.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lb", "run", "-c", str(cfg)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)),
    )
    try:
        wait_port(admin)
        wait_port(port)
    except TimeoutError:
        proc.kill()
        raise AssertionError((tmp_path / "lb.log").read_text()) from None
    return proc, port, admin


async def metric(admin: int, name: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{admin}/metrics") as r:
        text = await r.text()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported")


async def get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    await writer.drain()
    return await reader.readuntil(b"\r\n\r\n")


async def test_soft_limit_is_raised_to_the_hard_limit(tmp_path):
    async with backends(1) as bes:
        proc, _, admin = await asyncio.to_thread(start_lb, tmp_path, bes[0].address, 256, 4096)
        try:
            assert await metric(admin, "lb_client_connections_max") == (4096 - RESERVED_FDS) // 2
        finally:
            proc.terminate()
            await asyncio.to_thread(proc.wait, 10)
        assert "soft limit raised from 256 to 4096" in (tmp_path / "lb.log").read_text()


async def test_at_the_cap_connections_wait_and_admin_answers(tmp_path):
    limit = 200
    cap = (limit - RESERVED_FDS) // 2
    async with backends(1) as bes:
        proc, port, admin = await asyncio.to_thread(
            start_lb, tmp_path, bes[0].address, limit, limit
        )
        clients: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        try:
            for _ in range(cap):
                clients.append(await asyncio.open_connection("127.0.0.1", port))
            heads = await asyncio.gather(*(get(r, w) for r, w in clients))
            assert all(h.startswith(b"HTTP/1.1 200") for h in heads)
            # Beyond the cap: the kernel completes the handshake, lb does not accept yet.
            waiting = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
            pending = [asyncio.create_task(get(r, w)) for r, w in waiting]
            await asyncio.sleep(0.5)
            assert not any(t.done() for t in pending)
            # The reserve keeps the admin API reachable at the cap.
            assert await metric(admin, "lb_accept_limited_total") >= 1
            assert await metric(admin, "lb_client_connections") == cap
            for _, w in clients[:20]:
                w.close()
            heads = await asyncio.wait_for(asyncio.gather(*pending), 10)
            assert all(h.startswith(b"HTTP/1.1 200") for h in heads)  # none was dropped
            for _, w in waiting:
                w.close()
        finally:
            for _, w in clients:
                w.close()
            proc.terminate()
            await asyncio.to_thread(proc.wait, 10)
        log = (tmp_path / "lb.log").read_text()
        assert log.count("accepting paused") == 1, log  # once per interval, not per attempt


class _Exhausted(socket.socket):
    """A listening socket whose accept() fails as it does when descriptors run out."""

    calls = 0

    def accept(self):  # type: ignore[override]
        type(self).calls += 1
        raise OSError(errno.EMFILE, "Too many open files")


async def test_emfile_pauses_accepting_counts_and_logs_once(caplog):
    loop = asyncio.get_running_loop()
    sock = _Exhausted()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    peer = socket.create_connection(sock.getsockname())  # keeps the socket readable
    errors: defaultdict[tuple[str, ...], int] = defaultdict(int)
    acceptor = Acceptor([sock], loop, Descriptors(1 << 16), errors)
    with caplog.at_level(logging.ERROR, logger="lb.proxy"):
        acceptor.serve("web", lambda conn: pytest.fail("nothing can be accepted"))
        await asyncio.sleep(0.55)
        acceptor.close()
    peer.close()
    # Paused 100 ms after each failure: a handful of tries, never a spin.
    assert 3 <= _Exhausted.calls <= 8
    assert errors[("web", "EMFILE")] == _Exhausted.calls
    assert sum("accept failed (EMFILE" in r.message for r in caplog.records) == 1
