"""Consistent hashing and affinity wired into the running proxy: `install(server)` sets
`Service.balance` for every service whose config asks for a hash mode or an affinity cookie,
now and at every reload (`Runtime.compile_hooks`, which run once services are updated), and
clears it where the config no longer does.

A service keeps its `Balance` (its table, its ramps) while its balance and affinity
settings and the affinity secret read the same; the `client_ip` key reads the listeners'
`trusted_proxies`, refreshed in place on every compile.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..config import model
from ..config.balance_model import HASH_MODES
from ..routing.table import RouteTable
from ..traffic.admission import TrustedProxies
from .affinity import Affinity
from .balance import Balance
from .hash_key import hash_key
from .hashring import MAX_TABLE_SIZE

if TYPE_CHECKING:
    from ..runtime import Runtime
    from ..server import Server

log = logging.getLogger("lb.balancer")


class Balancing:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.trusted: dict[str, TrustedProxies] = {}  # by listener, refreshed in place
        # service name -> (the settings its Balance was made from, the Balance)
        self.made: dict[str, tuple[Any, Balance]] = {}

    def compile(self, table: RouteTable) -> None:
        """`Runtime.compile_hooks`: runs with `runtime.config` and the services updated."""
        runtime = self.runtime
        self.trusted.clear()
        for lc in runtime.config.listeners:
            if lc.trusted_proxies:
                self.trusted[lc.name] = TrustedProxies(lc.trusted_proxies)
        made: dict[str, tuple[Any, Balance]] = {}
        for name, svc in runtime.services.items():
            cfg: model.Service = svc.config
            hashed = cfg.balance.mode in HASH_MODES  # least_latency is the picker's
            if not hashed and cfg.affinity is None:
                svc.balance = None
                svc.picker.detach_sum()  # counted for a bound it had before a reload
                continue
            secret = self._secret(name, cfg)
            settings = (cfg.balance, cfg.affinity, secret)
            old = self.made.get(name)
            if old is not None and old[0] == settings and old[1].service is svc:
                made[name] = old
                svc.balance = old[1]
                continue
            if hashed and cfg.balance.mode == "maglev":
                _warn_small_table(name, cfg.balance.table_size, len(svc.backends))
            key = hash_key(cfg.balance.hash_on, self.trusted) if hashed else None
            affinity = None if cfg.affinity is None else Affinity(name, cfg.affinity, secret)
            balance = Balance(svc, key, affinity, runtime.counters)
            svc.balance = balance
            made[name] = (settings, balance)
        self.made = made

    def _secret(self, service: str, cfg: model.Service) -> bytes:
        path = cfg.affinity.secret_file if cfg.affinity is not None else None
        if path is None:
            return b""
        try:
            with open(path, "rb") as f:
                return f.read().strip()
        except OSError as exc:
            log.error("service %s: affinity secret_file: %s", service, exc)
            old = self.made.get(service)
            return old[0][2] if old is not None else b""

    # -- the Server extension interface -----------------------------------------------------------
    async def start(self) -> None:
        """Nothing to start: install() compiled the running config."""

    async def reconfigure(self) -> None:
        """Nothing to do: the compile hook ran inside Runtime.apply()."""

    async def stop(self) -> None:
        """Nothing to stop: the tables are plain memory."""


def _warn_small_table(service: str, size: int, backends: int) -> None:
    # Envoy's advice: a Maglev table about 100 times the backends keeps their shares even.
    if backends * 100 > size and size < MAX_TABLE_SIZE:
        log.warning(
            "service %s: a Maglev table of %d entries for %d backends balances unevenly; "
            "set balance.table_size to a prime of at least %d",
            service,
            size,
            backends,
            backends * 100,
        )


def install(server: Server) -> Balancing:
    """Attach consistent hashing and affinity to `server`'s runtime; compile the running config."""
    runtime = server.runtime
    balancing = Balancing(runtime)
    runtime.compile_hooks.append(balancing.compile)
    server.extensions.append(balancing)
    balancing.compile(runtime.table)
    return balancing
