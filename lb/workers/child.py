"""One worker process of `lb run --workers N`, started by the supervisor as
`python -m lb run -c FILE --worker I --shm PATH --control-fd FD --lifeline-fd FD`.

It is a whole lb (listeners bound with SO_REUSEPORT, reloads, graceful drain) with two
differences: its backends count in the shared segment (`lb.shm`), and its admin API listens on
an ephemeral loopback port that only the supervisor uses; the supervisor owns the configured
admin port. Once serving, it writes one JSON line to the control pipe: its pid, that port and
its config hash. It drains and exits when the supervisor's lifeline pipe reaches end of file,
i.e. when the supervisor is gone however it ended.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any

from aiohttp import web

from ..admin.app import AdminServer
from ..config import Loaded
from ..shm import Segment, activate
from ..upgrade import complete, offer_upgrades, take_over


class PrivateAdmin(AdminServer):
    """The worker's admin API on 127.0.0.1 and a port the kernel picks."""

    port = 0

    async def start(self) -> None:
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = int(self.runner.addresses[0][1])


class _Lifeline(asyncio.Protocol):
    """End of file on the lifeline: the supervisor is gone (only it holds the write end)."""

    def __init__(self, stop: asyncio.Event, segment: Segment) -> None:
        self.stop = stop
        self.segment = segment

    def eof_received(self) -> bool:
        # A killed supervisor could not remove the segment's file; the mappings outlive it.
        self.segment.unlink()
        self.stop.set()
        return False


def run_worker(args: Any, loaded: Loaded) -> int:
    from ..cli import run_loop

    # The workers share one log: say which one speaks.
    for handler in logging.getLogger().handlers:
        handler.setFormatter(
            logging.Formatter(
                f"%(asctime)s %(levelname)s [worker {args.worker}] %(name)s: %(message)s"
            )
        )
    # Before any Service exists: every backend of this process counts in the segment.
    segment = Segment.open(args.shm)
    activate(segment, args.worker)
    return run_loop(lambda: _serve(args, loaded, segment))


async def _serve(args: Any, loaded: Loaded, segment: Segment) -> None:
    from ..server import Server

    loop = asyncio.get_running_loop()
    # Worker i of a new tree takes over from workers i, i + N, ... of the old one
    # (lb/upgrade.py).
    paths = [args.upgrade_from, *args.also_upgrade_from] if args.upgrade_from else []
    successors, inherited = await take_over(paths)
    server = Server(args.config, loaded, reuse_port=True, inherited=inherited)
    server.admin_factory = PrivateAdmin
    await loop.connect_read_pipe(
        lambda: _Lifeline(server.stopping, segment), os.fdopen(args.lifeline_fd, "rb", buffering=0)
    )
    await server.start()
    await complete(successors)
    listener = await offer_upgrades(server, args.upgrade_socket)
    if listener is not None:
        server.extensions.append(listener)
    hello = {"pid": os.getpid(), "admin_port": server.admin.port, "hash": loaded.digest}
    with os.fdopen(args.control_fd, "wb", buffering=0) as control:
        control.write(json.dumps(hello).encode() + b"\n")
    await server.stopping.wait()
    await server.shutdown(server.grace())
