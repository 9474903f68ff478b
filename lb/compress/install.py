"""Compression wired into the running proxy: a `CompressPolicy` on each route with
`compress` (lb/routing/route_policies.py), asked once per response head; the other routes
pay one None check there."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..routing.route_policies import RoutePolicies
from .policy import CompressPolicy

if TYPE_CHECKING:
    from ..server import Server


def install(server: Server) -> RoutePolicies[CompressPolicy]:
    counters = server.runtime.counters
    # A policy kept across reloads keeps its zstd compressors and its negotiation table.
    policies = RoutePolicies("compress", lambda cfg, route: CompressPolicy(cfg, route, counters))
    policies.install(server.runtime)
    return policies
