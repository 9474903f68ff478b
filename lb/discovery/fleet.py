"""`GET /api/fleet`: every lb registered under this one's Consul service name, as Consul sees it.

Each lb puts its admin address, version, config hash, when it loaded that config and its start
time in its registration's Meta (`own_meta`; `register.py` updates it in place on every reload
that changes the config). This view reads `/v1/health/service/<name>` (all instances, not only
the passing ones, with their checks) and answers, per instance: its ID, node, the address it
serves on, admin address, version, config hash, uptime, state (`passing`, `warning`,
`critical` or `maintenance`, from its checks and its node's), `self` for this lb,
`same_config` relative to this lb's config, and `old_config` when its config is not the one
loaded most recently in the fleet (`newest_config`).

This lb's own entry always comes from itself (Consul may not have its last registration yet),
with the state Consul gives it, or `unregistered` while Consul does not list it. Without
self-registration the fleet is this lb alone. When Consul does not answer (within
`READ_TIMEOUT`), the last list read is served with `stale: true`, its age and the error.
Reads are shared: dashboards polling at once cost Consul one read per `MIN_READ_INTERVAL`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from .. import __version__
from .consul import ConsulError
from .register import META_ADMIN

META_VERSION = "lb_version"
META_CONFIG = "lb_config_hash"
META_LOADED = "lb_config_loaded_at"
META_STARTED = "lb_started_at"

READ_TIMEOUT = 2.0  # an admin request must not hang on a Consul that does not answer
MIN_READ_INTERVAL = 1.0
MAINTENANCE_CHECKS = ("_service_maintenance:", "_node_maintenance")
_SEVERITY = {"passing": 0, "warning": 1, "critical": 2, "maintenance": 3}


def instance_state(checks: list[Mapping[str, Any]]) -> str:
    """The worst of an instance's checks (its node's serfHealth included)."""
    worst = "passing"
    for c in checks:
        status = str(c.get("Status", "critical"))
        if str(c.get("CheckID", "")).startswith(MAINTENANCE_CHECKS):
            status = "maintenance"
        if _SEVERITY.get(status, 2) > _SEVERITY[worst]:
            worst = status if status in _SEVERITY else "critical"
    return worst


def own_meta(runtime: Any, started_at: float) -> dict[str, str]:
    """What this lb tells the fleet about itself in its registration's Meta."""
    return {
        META_VERSION: __version__,
        META_CONFIG: runtime.loaded.digest,
        META_LOADED: f"{runtime.loaded_at:.3f}",
        META_STARTED: f"{started_at:.3f}",
    }


def _time(meta: Mapping[str, str], key: str) -> float | None:
    try:
        return float(meta[key])
    except (KeyError, ValueError):
        return None


def parse_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    svc, node = entry["Service"], entry["Node"]
    meta = svc.get("Meta") or {}
    return {
        "id": str(svc["ID"]),
        "node": str(node.get("Node", "")),
        "address": f"{svc.get('Address') or node.get('Address')}:{svc.get('Port')}",
        "admin": meta.get(META_ADMIN),
        "version": meta.get(META_VERSION),
        "config_hash": meta.get(META_CONFIG) or None,
        "config_loaded_at": _time(meta, META_LOADED),
        "started_at": _time(meta, META_STARTED),
        "state": instance_state(entry.get("Checks") or []),
    }


class FleetView:
    """Reads the fleet for the admin API; `manager` is the DiscoveryManager (its runtime,
    Consul client and self-registration), `started_at` this lb's start (Unix seconds),
    `on_error` counts a failed read (lb_discovery_source_errors_total{source="consul_fleet"})."""

    def __init__(self, manager: Any, started_at: float, on_error: Callable[[], None]) -> None:
        self.manager = manager
        self.started_at = started_at
        self._on_error = on_error  # counts each failed read
        self._known: list[dict[str, Any]] = []
        self._read_at = 0.0  # monotonic
        self._last_success: float | None = None  # wall clock
        self._error: str | None = None
        self._lock = asyncio.Lock()

    def _me(self, spec: Any) -> dict[str, Any]:
        runtime = self.manager.runtime
        admin_host, admin_port = runtime.config.admin.bind
        meta = dict(spec.meta) if spec is not None else {}
        listener = runtime.config.listeners[0].bind if runtime.config.listeners else None
        return {
            "id": spec.default_id if spec is not None else None,
            "node": None,
            "address": f"{spec.address}:{spec.port}"
            if spec is not None
            else (f"{listener[0]}:{listener[1]}" if listener else None),
            "admin": meta.get(META_ADMIN, f"http://{admin_host}:{admin_port}"),
            "version": __version__,
            "config_hash": runtime.loaded.digest,
            "config_loaded_at": runtime.loaded_at,
            "started_at": self.started_at,
            "state": "unregistered" if spec is not None else "local",
        }

    async def _read(self, client: Any, name: str) -> None:
        try:
            _, entries = await asyncio.wait_for(
                client.health_service(name, passing=False), READ_TIMEOUT
            )
            if not isinstance(entries, list):
                raise ConsulError(f"unexpected answer for service {name!r}: not a list")
            self._known = [parse_entry(e) for e in entries]
        except (ConsulError, TimeoutError, KeyError, TypeError, AttributeError) as exc:
            self._error = str(exc) if isinstance(exc, ConsulError) else f"Consul: {exc!r}"
            if isinstance(exc, TimeoutError):
                self._error = f"Consul did not answer within {READ_TIMEOUT:g} s"
            self._on_error()
        else:
            self._error = None
            self._last_success = time.time()
        self._read_at = time.monotonic()

    async def _refresh(self, client: Any, name: str) -> None:
        async with self._lock:  # a read in progress serves everyone waiting on it
            if time.monotonic() - self._read_at >= MIN_READ_INTERVAL:
                await self._read(client, name)

    async def report(self) -> dict[str, Any]:
        spec = self.manager.registration.spec
        client = self.manager.client
        me = self._me(spec)
        now = time.time()
        if spec is None or client is None:
            return _answer([me], now, consul=None)
        await self._refresh(client, spec.name)
        instances = []
        for inst in self._known:
            if inst["id"] == me["id"]:
                # What this lb is now wins over what Consul last heard from it.
                me = {**me, "node": inst["node"], "state": inst["state"]}
            else:
                instances.append(dict(inst))
        last = self._last_success
        consul = {
            "service": spec.name,
            "stale": self._error is not None,
            "last_success": last,
            "age_seconds": None if last is None else max(0.0, now - last),
            "error": self._error,
        }
        return _answer([me, *instances], now, consul=consul)


def _answer(
    instances: list[dict[str, Any]], now: float, *, consul: dict[str, Any] | None
) -> dict[str, Any]:
    mine = instances[0]["config_hash"]
    # The config loaded last anywhere is the current one; the others are old.
    newest = max(instances, key=lambda i: i["config_loaded_at"] or 0.0)["config_hash"]
    for i, inst in enumerate(instances):
        inst["self"] = i == 0
        inst["same_config"] = inst["config_hash"] == mine
        inst["old_config"] = inst["config_hash"] != newest
        started = inst.get("started_at")
        inst["uptime_seconds"] = None if started is None else max(0.0, now - started)
    return {
        "time": now,
        "newest_config": newest,
        "consul": consul,
        "stale": bool(consul and consul["stale"]),
        "instances": instances,
    }
