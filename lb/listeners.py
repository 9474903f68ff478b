"""The listening side of a config, prepared before anything running changes.

A reload (and the start) first makes everything a set of listeners needs that can fail:
listening sockets for addresses not bound yet, TLS certificates, access-log files. Only
when all of it succeeded does the server switch to them (`Server._serve_listeners`). An
address that stays bound keeps its socket, whichever listener it now belongs to, so a
reload never rebinds and never refuses a connection; a failed preparation closes what it
made and leaves the running listeners exactly as they were.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from .config import model
from .proxy.accept import Acceptor, bind
from .proxy.tls import TlsSwitch
from .upgrade import Inherited

Address = tuple[str, int]


@dataclass
class ListenerPlan:
    configs: list[model.Listener]
    acceptors: dict[Address, Acceptor] = field(default_factory=dict)  # the new set, by address
    bound: set[Address] = field(default_factory=set)  # addresses bound for this plan
    tls: dict[str, TlsSwitch | None] = field(default_factory=dict)  # by listener name

    def discard(self) -> None:
        """Undo the preparation: close the sockets it bound (reused ones are not its own)."""
        for address in self.bound:
            self.acceptors[address].close()
        self.bound.clear()


def _check_log_file(path: str) -> None:
    with open(path, "ab"):
        pass


async def prepare_listeners(
    configs: list[model.Listener],
    running: dict[Address, Acceptor],
    make_acceptor: Callable[[list[socket.socket]], Acceptor],
    reuse_port: bool,
    inherited: Inherited | None = None,
) -> ListenerPlan:
    """Everything `configs` needs, or an exception (OSError, ssl.SSLError, ValueError) whose
    message names the listener; nothing running is touched either way. An address whose
    sockets predecessors handed over (`inherited`, lb/upgrade.py) is served on all of them."""
    plan = ListenerPlan(list(configs))
    loop = asyncio.get_running_loop()
    try:
        for cfg in configs:
            acceptor = running.get(cfg.bind)
            socks = inherited.take(cfg.bind) if acceptor is None and inherited else []
            if socks:
                acceptor = make_acceptor(socks)
                plan.bound.add(cfg.bind)
            if acceptor is None:
                try:
                    sock = bind(cfg.bind, reuse_port)
                except OSError as exc:
                    host, port = cfg.bind
                    raise OSError(
                        exc.errno,
                        f"listener {cfg.name}: cannot listen on {host}:{port}: {exc.strerror}",
                    ) from exc
                acceptor = make_acceptor([sock])
                plan.bound.add(cfg.bind)
            plan.acceptors[cfg.bind] = acceptor
            try:
                plan.tls[cfg.name] = (
                    TlsSwitch(cfg.tls, cfg.protocols) if cfg.tls is not None else None
                )
            except OSError as exc:  # ssl.SSLError included
                raise ValueError(f"listener {cfg.name}: TLS: {exc}") from exc
            log = cfg.access_log
            if log is not None and log.enabled and log.path:
                try:
                    await loop.run_in_executor(None, _check_log_file, log.path)
                except OSError as exc:
                    raise ValueError(
                        f"listener {cfg.name}: access log {log.path}: {exc.strerror}"
                    ) from exc
    except BaseException:
        plan.discard()
        raise
    return plan
