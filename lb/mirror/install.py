"""Mirroring wired into the running proxy: a `MirrorPolicy` on each route with `mirror`
(lb/routing/route_policies.py), asked once per forwarded request; the other routes pay one
None check there. A policy kept across reloads keeps its sampling sum and in-flight count;
copies under way finish whatever the reload changed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..routing.route_policies import RoutePolicies
from .policy import MirrorPolicy

if TYPE_CHECKING:
    from ..server import Server


def install(server: Server) -> RoutePolicies[MirrorPolicy]:
    runtime = server.runtime
    policies = RoutePolicies(
        "mirror", lambda cfg, route: MirrorPolicy(cfg, route, runtime, runtime.counters)
    )
    policies.install(runtime)
    return policies
