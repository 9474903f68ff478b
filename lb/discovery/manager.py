"""Consul discovery in a running lb: watches feeding services, tag routes, self-registration.

`install(server)` adds a `DiscoveryManager` as a Server extension, a `/readyz` check, and
`server.discovery` (the manager) for the admin API. The manager follows the config:

- one `ServiceWatch` per service with `discovery: consul` (config services and tag-declared
  ones alike); each answer goes to `Service.update()` in place, with the config's
  `consul.weight`, when set, instead of each instance's own weight. `Service.discovery` is the
  watch, which metrics and the admin API read (`last_success`, `errors`, `last_error`, `stale`);
- `consul.auto: true`: a `CatalogWatch` whose answers become tag routes and services
  (`lb.discovery.tagroutes`), installed with `Runtime.set_dynamic_routes`;
- `consul.register`: lb in Consul's catalog (`lb.discovery.register`).

Last known good: a failed Consul request never reaches `Service.update()` (the watches only
publish good answers), so a service keeps its backends through any Consul outage; the same
holds for tag routes, which only change when the catalog answers. A reload that changes the
Consul settings (address, token, TLS...) restarts the watches, and the backends in force stay
until the new watches answer.

A reload keeps a watch running when its service's Consul query (service, tags, datacenter) and
the Consul settings are unchanged. `/readyz` answers 503 until every Consul service, and with
`auto` the catalog, has had a first answer; once it has, a later error does not take lb out of
rotation: it still serves the last known good set.

Shutdown: `stop()` (before draining) deregisters lb; the watches keep running through the drain
and end in `close()`, after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, replace
from typing import Any

from ..config import model
from .consul import CatalogWatch, ConsulClient, ConsulSettings, Instance, ServiceWatch, settings_for
from .fleet import FleetView, own_meta
from .register import SelfRegistration, registration_spec
from .tagroutes import Conflict, TagPlan, plan_tag_routes

log = logging.getLogger(__name__)

CATALOG_SOURCE = "consul_catalog"
REGISTER_SOURCE = "consul_register"
FLEET_SOURCE = "consul_fleet"

WatchKey = tuple[str, tuple[str, ...], str | None]


def settings_from(config: model.Config) -> ConsulSettings | None:
    """The Consul settings in force, or None when nothing in the config uses Consul."""
    uses = config.consul is not None or any(
        s.discovery == "consul" for s in config.services.values()
    )
    if not uses:
        return None
    c = config.consul or model.Consul()
    return replace(settings_for(c), token=c.token or os.environ.get("CONSUL_HTTP_TOKEN"))


def _key(cs: model.ConsulService) -> WatchKey:
    return (cs.service, tuple(cs.tags), cs.datacenter)


@dataclass
class _Running:
    name: str
    key: WatchKey
    weight: int | None  # the config's override the last update applied
    watch: ServiceWatch
    task: asyncio.Task[None]


class DiscoveryManager:
    def __init__(self, server: Any) -> None:
        self.server = server
        self.runtime = server.runtime
        self.settings: ConsulSettings | None = None
        self.client: ConsulClient | None = None
        self.watches: dict[str, _Running] = {}
        self.catalog: CatalogWatch | None = None
        self._catalog_task: asyncio.Task[None] | None = None
        self._catalog: dict[str, list[str]] | None = None  # the last good catalog
        self._synced: set[str] = set()  # services that have had a first answer
        self.plan = TagPlan()
        self.registration = SelfRegistration(lambda: self._count_error(REGISTER_SOURCE))
        self.fleet = FleetView(  # GET /api/fleet
            self, started_at=time.time(), on_error=lambda: self._count_error(FLEET_SOURCE)
        )
        self._retired: set[asyncio.Task[None]] = set()  # cancelled watches, awaited by close()
        self._started = False
        self._stopping = False
        self.config_error: str | None = None

    # -- the Server extension interface ---------------------------------------------------------
    async def start(self) -> None:
        await self._configure()
        self._started = True

    async def reconfigure(self) -> None:
        await self._configure()

    async def stop(self) -> None:
        """Before draining: leave Consul's catalog, keep following it for the drain."""
        self._stopping = True  # a reload during the drain must not register lb again
        await self.registration.withdraw()

    async def close(self) -> None:
        await self.registration.withdraw()
        await self._stop_watches()
        for task in list(self._retired):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.client is not None:
            await self.client.close()
            self.client = None

    # -- state for the admin API and readiness --------------------------------------------------
    @property
    def conflicts(self) -> list[Conflict]:
        return list(self.plan.conflicts)

    @property
    def problems(self) -> dict[str, list[str]]:
        return {name: list(p) for name, p in self.plan.problems.items()}

    def not_ready(self) -> str | None:
        if self.config_error is not None:
            return self.config_error
        if self.settings is None:
            return None
        if not self._started:
            return "Consul discovery is starting"
        if self.catalog is not None and self._catalog is None:
            return "the Consul catalog has not been read yet" + _because(self.catalog.last_error)
        for name in sorted(self.watches):
            if name not in self._synced:
                error = self.watches[name].watch.last_error
                return f"Consul service {name!r} has not been read yet" + _because(error)
        return None

    def report(self) -> dict[str, Any]:
        """JSON for the admin API: the catalog watch, tag routes and self-registration."""
        cat = self.catalog
        return {
            "address": self.client.address if self.client is not None else None,
            "catalog": None
            if cat is None
            else {
                "stale": cat.stale,
                "last_success": cat.last_success,
                "errors": cat.errors,
                "last_error": cat.last_error,
            },
            "tag_routes": [r.name for r in self.plan.routes],
            "pending": list(self.plan.pending),
            "conflicts": [
                {"service": c.service, "host": c.host, "path": c.path, "reason": c.reason}
                for c in self.plan.conflicts
            ],
            "problems": self.problems,
            "registration": {
                "service_id": self.registration.service_id,
                "last_error": self.registration.last_error,
            },
        }

    # -- following the config -------------------------------------------------------------------
    async def _configure(self) -> None:
        config = self.runtime.config
        try:
            settings = settings_from(config)
        except ValueError as exc:
            # Config validation checks the `consul:` block; this catches a bad
            # CONSUL_HTTP_ADDR used without one. The watches in force stay.
            self.config_error = f"Consul settings: {exc}"
            log.error("%s", self.config_error)
            return
        self.config_error = None
        if settings != self.settings:
            # A new address or token: a new client, and every watch starts over on it. The
            # services keep their backends (and tag routes stay) until the new watches answer.
            await self.registration.withdraw()
            await self._stop_watches()
            if self.client is not None:
                await self.client.close()
            self.settings = settings
            self.client = ConsulClient(settings) if settings is not None else None
        auto = self.client is not None and config.consul is not None and config.consul.auto
        if auto and self.catalog is None:
            self._start_catalog()
        elif not auto:
            await self._stop_catalog()
            self._catalog = None
        self._refresh_tag_routes()
        if not self._stopping:
            spec = registration_spec(config, own_meta(self.runtime, self.fleet.started_at))
            await self.registration.configure(self.client, spec)

    def _start_catalog(self) -> None:
        assert self.client is not None
        self.catalog = CatalogWatch(
            self.client,
            on_update=self._on_catalog,
            on_error=lambda _: self._count_error(CATALOG_SOURCE),
        )
        self._catalog_task = asyncio.get_running_loop().create_task(self.catalog.run())

    async def _stop_catalog(self) -> None:
        task, self._catalog_task, self.catalog = self._catalog_task, None, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _stop_watches(self) -> None:
        await self._stop_catalog()
        running = list(self.watches.values())
        self.watches.clear()
        for r in running:
            r.task.cancel()
        for r in running:
            with contextlib.suppress(asyncio.CancelledError):
                await r.task

    def _count_error(self, source: str) -> None:
        counters = getattr(self.runtime, "counters", None)
        if isinstance(counters, dict):
            bucket = counters.setdefault("discovery_errors", {})
            bucket[(source,)] = bucket.get((source,), 0) + 1

    # -- tag routes -----------------------------------------------------------------------------
    def _on_catalog(self, services: dict[str, list[str]]) -> None:
        self._catalog = services
        self._refresh_tag_routes()

    def _refresh_tag_routes(self) -> None:
        """Re-plan tag routes from the last good catalog, install them, then follow the services
        they need (this runs on every catalog change, reload and first sync of a tag service)."""
        old = self.plan
        if self._catalog is None:
            plan = TagPlan()
        else:
            plan = plan_tag_routes(self._catalog, self.runtime.config, self._synced)
        self.plan = plan
        for c in plan.conflicts:
            if c not in old.conflicts:
                log.warning("%s", c)
        for name, problems in plan.problems.items():
            if problems != old.problems.get(name):
                for p in problems:
                    log.warning("Consul service %r: %s", name, p)
        if plan.routes != old.routes or plan.services != old.services:
            self.runtime.set_dynamic_routes(plan.routes, plan.services)
            added = {r.name for r in plan.routes} - {r.name for r in old.routes}
            removed = {r.name for r in old.routes} - {r.name for r in plan.routes}
            if added or removed:
                log.info(
                    "tag routes: added %s, removed %s",
                    ", ".join(sorted(added)) or "none",
                    ", ".join(sorted(removed)) or "none",
                )
        self._sync_watches()

    # -- service watches ------------------------------------------------------------------------
    def _sync_watches(self) -> None:
        """Start, restart or stop watches so that each Consul service has exactly one."""
        wanted = {
            name: svc.config.consul
            for name, svc in self.runtime.services.items()
            if svc.config.discovery == "consul" and svc.config.consul is not None
        }
        for name, running in list(self.watches.items()):
            cs = wanted.get(name)
            if cs is None or running.key != _key(cs) or self.client is None:
                del self.watches[name]
                running.task.cancel()
                self._retired.add(running.task)
                running.task.add_done_callback(self._retired.discard)
        self._synced.intersection_update(wanted)
        if self.client is not None:
            for name, cs in wanted.items():
                running = self.watches.get(name)
                if running is None:
                    self._start_watch(name, cs)
                elif running.weight != cs.weight and running.watch.synced:
                    self._apply(running, running.watch.instances)
        for name, svc in self.runtime.services.items():
            running = self.watches.get(name)
            svc.discovery = running.watch if running is not None else None

    def _start_watch(self, name: str, cs: model.ConsulService) -> _Running:
        assert self.client is not None
        watch = ServiceWatch(
            self.client,
            cs.service,
            tags=cs.tags,
            datacenter=cs.datacenter,
            on_update=lambda instances: self._apply(running, instances),
        )
        task = asyncio.get_running_loop().create_task(watch.run())
        running = _Running(name, _key(cs), cs.weight, watch, task)
        self.watches[name] = running
        return running

    def _apply(self, running: _Running, instances: list[Instance]) -> None:
        name = running.name
        svc = self.runtime.services.get(name)
        if self.watches.get(name) is not running or svc is None or svc.config.consul is None:
            return  # a watch being stopped
        override = svc.config.consul.weight
        running.weight = override
        specs: dict[tuple[str, int], int] = {}
        for inst in instances:
            # One address:port registered twice (a new service ID, two agents) is one backend.
            specs.setdefault(
                (inst.address, inst.port), inst.weight if override is None else override
            )
        svc.update([(host, port, weight) for (host, port), weight in specs.items()])
        log.info("service %s: %d backend(s) from Consul", name, len(specs))
        log.debug("service %s: %s", name, ", ".join(f"{h}:{p}" for h, p in specs) or "none")
        if name not in self._synced:
            self._synced.add(name)
            if name in self.plan.services:
                # A tag route (or its canary split) waits for this first answer.
                self._refresh_tag_routes()


def _because(error: str | None) -> str:
    return f" ({error})" if error else ""


def install(server: Any) -> DiscoveryManager:
    """Called once by Server.start(), after the admin server is created."""
    manager = DiscoveryManager(server)
    server.extensions.append(manager)
    server.discovery = manager
    server.admin.ready_checks.append(manager.not_ready)
    server.admin.on_stop.append(manager.close)
    return manager
