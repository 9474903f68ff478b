"""Mirroring wired into the running proxy: every compiled route table (the config's, and each
reload's, through `Runtime.compile_hooks`) gets a `MirrorPolicy` on each route with `mirror`,
None on the others, which then pay one None check per forwarded request. A policy is kept
across reloads while its settings are the same, with its sampling sum and in-flight count;
copies under way finish whatever the reload changed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..routing.table import RouteTable
from .policy import MirrorPolicy

if TYPE_CHECKING:
    from ..runtime import Runtime
    from ..server import Server


class Mirroring:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.policies: dict[str, MirrorPolicy] = {}  # by route name

    def compile(self, table: RouteTable) -> None:
        policies: dict[str, MirrorPolicy] = {}
        for route in table.routes:
            cfg = route.config.mirror
            if cfg is None:
                route.mirror = None
                continue
            old = self.policies.get(route.name)
            policy = old if old is not None and old.cfg == cfg else None
            if policy is None:
                policy = MirrorPolicy(cfg, route.name, self.runtime, self.runtime.counters)
            route.mirror = policies[route.name] = policy
        self.policies = policies


def install(server: Server) -> Mirroring:
    runtime = server.runtime
    mirroring = Mirroring(runtime)
    runtime.compile_hooks.append(mirroring.compile)
    mirroring.compile(runtime.table)
    return mirroring
