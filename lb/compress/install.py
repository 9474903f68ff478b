"""Compression wired into the running proxy: every compiled route table (the config's, and
each reload's, through `Runtime.compile_hooks`) gets a `CompressPolicy` on each route with
`compress`, and None on the others, which then pay one None check per response head."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..routing.table import RouteTable
from .policy import CompressPolicy

if TYPE_CHECKING:
    from ..runtime import Runtime
    from ..server import Server


class Compression:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        # route name -> the policy, kept while its settings are the same (its zstd
        # compressors and its negotiation table with it)
        self.policies: dict[str, CompressPolicy] = {}

    def compile(self, table: RouteTable) -> None:
        policies: dict[str, CompressPolicy] = {}
        for route in table.routes:
            cfg = route.config.compress
            if cfg is None:
                route.compress = None
                continue
            old = self.policies.get(route.name)
            policy = old if old is not None and old.cfg == cfg else None
            if policy is None:
                policy = CompressPolicy(cfg, route.name, self.runtime.counters)
            route.compress = policies[route.name] = policy
        self.policies = policies


def install(server: Server) -> Compression:
    runtime = server.runtime
    compression = Compression(runtime)
    runtime.compile_hooks.append(compression.compile)
    compression.compile(runtime.table)
    return compression
