"""Routes declared by Consul tags (`consul.auto: true`), planned next to the config's routes.

`plan_tag_routes` turns the catalog (service -> tags) into config objects built in code: one
`model.Route` and one consul-discovered `model.Service` per service tagged `lb.enable=true`
(the tag grammar is in `lb.discovery.consul`). The config always wins, and a clash is reported
rather than resolved by a guess:

- a tagged service whose name is a config service: not routed from tags (the config owns it);
- a tag route with the host and path prefix of a config route (a config route without a path
  counts as prefix "/"), or whose route name a config route already uses: not installed;
- two tagged services declaring the same host and path prefix: neither is installed, since
  nothing says which one the operator meant;
- `lb.canary` naming a service that is neither in the catalog nor in the config: the route is
  installed without the split (a typo must not cost the main service its route), and the
  problem is reported.

A route is only installed once its service has had a first answer from Consul (`synced`), so
a new tag route never sends requests to an empty backend set in the instant before Consul
answers; likewise its canary split waits for the canary service's first answer.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from ..config import model
from .tags import Canary, TagRoute, parse_tags

ROUTE_PREFIX = "consul:"  # tag routes are named "consul:<service>"


@dataclass(frozen=True)
class Conflict:
    """A tag route that was not installed, and why."""

    service: str
    host: str | None
    path: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.host or '*'}{self.path}"
        return f"Consul service {self.service!r}: tag route {where} not installed: {self.reason}"


@dataclass
class TagPlan:
    routes: list[model.Route] = field(default_factory=list)
    # Consul-discovered services to run: routed ones (pending included) and canary targets.
    services: dict[str, model.Service] = field(default_factory=dict)
    conflicts: list[Conflict] = field(default_factory=list)
    problems: dict[str, list[str]] = field(default_factory=dict)  # per Consul service
    pending: list[str] = field(default_factory=list)  # routed once their first sync arrives


def consul_service(name: str) -> model.Service:
    """A service with default settings whose backends are Consul's passing instances of `name`."""
    return model.Service(discovery="consul", consul=model.ConsulService(service=name))


def _config_keys(routes: Sequence[model.Route]) -> dict[tuple[str | None, str], str]:
    """(host or None for any host, path prefix) -> the config route that owns it."""
    keys: dict[tuple[str | None, str], str] = {}
    for r in routes:
        path = r.match.path
        if path is None:
            prefix = "/"
        elif path.prefix is not None:
            prefix = path.prefix
        else:
            continue  # exact and regex paths never match the same requests as a whole prefix
        for host in [h.lower() for h in r.match.host] or [None]:
            keys.setdefault((host, prefix), r.name)
    return keys


def build_route(name: str, tags: TagRoute, canary: Canary | None) -> model.Route:
    match = model.Match(
        host=[tags.host] if tags.host else [], path=model.PathMatch(prefix=tags.path_prefix)
    )
    # Priority 0 is the grammar's default: it must rank like a config route without priority,
    # not ahead of all of them as an explicit `priority: 0` would.
    route = model.Route(name=ROUTE_PREFIX + name, match=match, priority=tags.priority or None)
    if canary is not None and canary.percent > 0:
        route.split = [
            model.SplitTarget(name, 100 - canary.percent),
            model.SplitTarget(canary.service, canary.percent),
        ]
    else:
        route.service = name
    if tags.strip_prefix and tags.path_prefix != "/":
        route.rewrite = model.Rewrite(strip_prefix=tags.path_prefix)
    return route


def plan_tag_routes(
    catalog: Mapping[str, Sequence[str]], config: model.Config, synced: Collection[str]
) -> TagPlan:
    plan = TagPlan()
    declared: dict[str, TagRoute] = {}
    for name in sorted(catalog):
        errors: list[str] = []
        tags = parse_tags(catalog[name], errors)
        if errors:
            plan.problems[name] = errors
        if tags is not None:
            declared[name] = tags

    owned = _config_keys(config.routes)
    route_names = {r.name for r in config.routes}
    by_key: dict[tuple[str | None, str], list[str]] = {}
    for name, tags in declared.items():
        key = (tags.host, tags.path_prefix)
        reason = None
        if name in config.services:
            reason = f'service "{name}" is defined in the config'
        elif key in owned:
            reason = f'config route "{owned[key]}" matches the same host and path'
        elif ROUTE_PREFIX + name in route_names:
            reason = f'a config route is named "{ROUTE_PREFIX}{name}"'
        if reason is not None:
            plan.conflicts.append(Conflict(name, tags.host, tags.path_prefix, reason))
        else:
            by_key.setdefault(key, []).append(name)

    for (host, path), names in by_key.items():
        if len(names) > 1:
            for name in names:
                others = ", ".join(repr(n) for n in names if n != name)
                reason = f"Consul services {others} declare the same host and path"
                plan.conflicts.append(Conflict(name, host, path, reason))
            continue
        name = names[0]
        plan.services[name] = consul_service(name)
        canary = _canary(name, declared[name].canary, catalog, config, plan)
        if name not in synced:
            plan.pending.append(name)
            continue
        if canary is not None and canary.service not in config.services:
            canary = canary if canary.service in synced else None
        plan.routes.append(build_route(name, declared[name], canary))
    return plan


def _canary(
    name: str,
    canary: Canary | None,
    catalog: Mapping[str, Sequence[str]],
    config: model.Config,
    plan: TagPlan,
) -> Canary | None:
    """The canary split to keep, adding its target to the plan's services when Consul feeds it."""
    if canary is None:
        return None
    target = canary.service
    if target == name:
        plan.problems.setdefault(name, []).append("lb.canary names the service itself: no split")
        return None
    if target in config.services:
        return canary
    if target not in catalog:
        plan.problems.setdefault(name, []).append(
            f"canary service {target!r} is neither in Consul's catalog nor in the config: no split"
        )
        return None
    plan.services.setdefault(target, consul_service(target))
    return canary
