"""A Consul HTTP API test server, faithful to shared/consul-api.md (the Consul facts lb depends on).

No package registry carries a Consul agent, so lb's discovery code is tested against this.
It follows the documented behaviours lb relies on (blocking queries with index/wait/jitter,
headers, ACL tokens, datacenters, consistency flags, the `passing` and `tag` filters of
/v1/health/service, the catalog, agent registration, checks, maintenance and KV) and keeps
Consul's quirks that clients get wrong: a blocking call may return an unchanged body, the index
never reads 0, an unknown service is `200 []`, a KV miss is a 404 that still carries an index,
and the index can go backwards when Consul is restarted or a snapshot is restored.

Indexes follow Consul's state store: one raft index bumped on every write; a service's health
reads carry that service's own index (moved by its instances, their checks and their nodes'
checks), an unknown service the last "extinction" index, the catalog the services table index,
KV the key's ModifyIndex. `index_scope="global"` makes every catalog read carry the raft index
instead, the worst case where unrelated writes wake and return every watcher.

Not emulated: bexpr `filter`, `near` sorting, sessions/locks, namespaces and partitions,
script/gRPC checks, and reaping by DeregisterCriticalServiceAfter (the value is kept).
HTTP and TCP checks are probed at their Interval (floored at 1 s like Consul), the first probe
at once rather than after Consul's random stagger, so tests do not wait for it.

Standalone: `python tests/consul_server.py --port 8500 [--acl-token T ...]`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import random
import re
import signal
import ssl
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

PASSING, WARNING, CRITICAL = "passing", "warning", "critical"
STATUSES = (PASSING, WARNING, CRITICAL)

DEFAULT_WAIT = 300.0
MAX_WAIT = 600.0
JITTER_FRACTION = 16
KV_MAX_VALUE_SIZE = 512 * 1024
MIN_CHECK_INTERVAL = 1.0
SERF_CHECK_ID = "serfHealth"
NODE_MAINT_CHECK_ID = "_node_maintenance"
SERVICE_MAINT_PREFIX = "_service_maintenance:"
# Newer Consul refuses KV keys that look like files a browser could render (consul-api.md).
REJECTED_KEY_SUFFIXES = (
    ".json",
    ".yaml",
    ".yml",
    ".txt",
    ".xml",
    ".html",
    ".htm",
    ".js",
    ".css",
    ".php",
    ".exe",
    ".pdf",
    ".sh",
)

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def parse_duration(text: str) -> float:
    """Go's time.ParseDuration ("10s", "1m30s", "500ms", "0"), in seconds."""
    s = text
    sign = 1.0
    if s[:1] in ("+", "-"):
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f"invalid duration {text!r}")
    total, pos = 0.0, 0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None:
            raise ValueError(f"invalid duration {text!r}")
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    return sign * total


def parse_bool(text: str) -> bool:
    """Go's strconv.ParseBool, which Consul uses for boolean query parameters."""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(text)


def blocking_duration(
    wait: float, jitter: Callable[[float, float], float] = random.uniform
) -> float:
    """How long a blocking query may hold: `wait` (0 or less means the 5 minute default, capped
    at 10 minutes) plus up to wait/16 of random jitter, as Consul's blockingQuery does."""
    wait = DEFAULT_WAIT if wait <= 0 else min(wait, MAX_WAIT)
    return wait + jitter(0, wait / JITTER_FRACTION)


class ConsulHTTPError(Exception):
    """An error answer: Consul writes the reason as plain text."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class Node:
    name: str
    address: str
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    meta: dict[str, str] = field(default_factory=dict)
    create_index: int = 0
    modify_index: int = 0


@dataclass
class ServiceInstance:
    node: str
    id: str
    name: str
    tags: list[str]
    address: str
    port: int
    meta: dict[str, str]
    weights: dict[str, int]
    enable_tag_override: bool = False
    tagged_addresses: dict[str, Any] = field(default_factory=dict)
    builtin: bool = False
    create_index: int = 0
    modify_index: int = 0


@dataclass
class Check:
    node: str
    check_id: str
    name: str
    status: str = CRITICAL
    output: str = ""
    notes: str = ""
    service_id: str = ""
    service_name: str = ""
    type: str = ""  # "ttl", "http", "tcp", "maintenance", "serf", or "" for test-driven checks
    ttl: float = 0.0
    target: str = ""  # the HTTP URL or the TCP host:port
    method: str = "GET"
    header: dict[str, list[str]] = field(default_factory=dict)
    interval: float = 0.0
    timeout: float = 10.0
    deregister_after: float = 0.0
    create_index: int = 0
    modify_index: int = 0


@dataclass
class KVEntry:
    key: str
    value: bytes | None
    flags: int
    create_index: int
    modify_index: int


@dataclass
class _ReadOptions:
    min_index: int
    wait: float
    consistency: str
    cached: bool


def _norm(d: Mapping[str, Any]) -> dict[str, Any]:
    """Consul decodes bodies case-insensitively and accepts snake_case: fold both away.

    Only structural keys go through this; user maps (Meta, Header) keep their keys.
    """
    return {str(k).replace("_", "").lower(): v for k, v in d.items()}


def _duration_field(value: Any, what: str) -> float:
    """A duration in a JSON body: Consul takes a Go duration string or nanoseconds."""
    if value is None or value == "":
        return 0.0
    if isinstance(value, bool):
        raise ConsulHTTPError(400, f"Request decode failed: invalid {what}")
    if isinstance(value, int | float):
        return float(value) / 1e9
    try:
        return parse_duration(str(value))
    except ValueError:
        raise ConsulHTTPError(400, f"Request decode failed: invalid {what} {value!r}") from None


class ConsulState:
    """Catalog, checks, KV and indexes of one agent's view of a one-datacenter cluster.

    Every mutator runs on the event loop thread, bumps the raft index and wakes the blocking
    readers, which re-evaluate their own index and return only if it moved past theirs.
    """

    def __init__(
        self,
        *,
        datacenter: str = "dc1",
        node: str = "consul-test",
        node_address: str = "127.0.0.1",
        acl_tokens: Iterable[str] | None = None,
        index_scope: str = "service",
    ) -> None:
        if index_scope not in ("service", "global"):
            raise ValueError("index_scope must be 'service' or 'global'")
        self.datacenter = datacenter
        self.node = node
        self.index_scope = index_scope
        # None = ACLs disabled; a set = only these tokens may do anything (default policy deny).
        self.acl_tokens: set[str] | None = set(acl_tokens) if acl_tokens is not None else None
        self.nodes: dict[str, Node] = {}
        self.instances: dict[tuple[str, str], ServiceInstance] = {}
        self.checks: dict[tuple[str, str], Check] = {}
        self.kv: dict[str, KVEntry] = {}
        self._index = 0
        self._service_index: dict[str, int] = {}
        self._extinction_index = 0
        self._catalog_index = 0
        self._services_table_index = 0
        self._kv_table_index = 0
        self._kv_tombstones: dict[str, int] = {}
        self._wakeup = asyncio.Event()
        # Bumped by reset_index(): like a snapshot restore, it makes blocking readers return.
        self._epoch = 0
        self._add_node(node, node_address)
        consul = ServiceInstance(
            node=node,
            id="consul",
            name="consul",
            tags=[],
            address="",
            port=8300,
            meta={},
            weights={"Passing": 1, "Warning": 1},
            builtin=True,
        )
        self._put_instance(consul, self._write())

    # ----- indexes -----

    @property
    def index(self) -> int:
        """The raft index of the last write."""
        return self._index

    def _write(self) -> int:
        self._index += 1
        return self._index

    def _notify(self) -> None:
        self._wakeup.set()
        self._wakeup = asyncio.Event()

    def set_index_floor(self, n: int) -> None:
        """Make the next write land above n: a long-lived cluster with large indexes."""
        self._index = max(self._index, n)

    def reset_index(self, n: int) -> None:
        """Drop the raft index to n, as a Consul restarted without its data or restored from an
        older snapshot would: every stored index is clamped to n and blocking readers return."""
        if n < 1:
            raise ValueError("the index cannot go below 1")
        self._index = n

        def clamp(v: int) -> int:
            return min(v, n)

        for nd in self.nodes.values():
            nd.create_index, nd.modify_index = clamp(nd.create_index), clamp(nd.modify_index)
        for inst in self.instances.values():
            inst.create_index, inst.modify_index = (
                clamp(inst.create_index),
                clamp(inst.modify_index),
            )
        for chk in self.checks.values():
            chk.create_index, chk.modify_index = clamp(chk.create_index), clamp(chk.modify_index)
        for ent in self.kv.values():
            ent.create_index, ent.modify_index = clamp(ent.create_index), clamp(ent.modify_index)
        self._service_index = {k: clamp(v) for k, v in self._service_index.items()}
        self._kv_tombstones = {k: clamp(v) for k, v in self._kv_tombstones.items()}
        self._extinction_index = clamp(self._extinction_index)
        self._catalog_index = clamp(self._catalog_index)
        self._services_table_index = clamp(self._services_table_index)
        self._kv_table_index = clamp(self._kv_table_index)
        self._epoch += 1
        self._notify()

    def health_index(self, service: str) -> int:
        if self.index_scope == "global":
            return self._index
        if any(i.name == service for i in self.instances.values()):
            return self._service_index.get(service, self._catalog_index)
        return self._extinction_index or self._catalog_index

    def catalog_services_index(self) -> int:
        return self._index if self.index_scope == "global" else self._services_table_index

    def kv_index(self, key: str, *, prefix: bool) -> int:
        if not prefix:
            ent = self.kv.get(key)
            return ent.modify_index if ent else self._kv_table_index
        if key == "":
            return self._kv_table_index
        under = [e.modify_index for k, e in self.kv.items() if k.startswith(key)]
        under += [i for k, i in self._kv_tombstones.items() if k.startswith(key)]
        return max(under, default=0) or self._kv_table_index

    def _touch_services(self, names: Iterable[str], idx: int) -> None:
        for name in names:
            self._service_index[name] = idx
        self._catalog_index = idx

    def _services_on_node(self, node: str) -> set[str]:
        return {i.name for (n, _), i in self.instances.items() if n == node}

    # ----- nodes, instances, checks -----

    def _add_node(self, name: str, address: str) -> Node:
        idx = self._write()
        nd = Node(name=name, address=address, create_index=idx, modify_index=idx)
        self.nodes[name] = nd
        serf = Check(
            node=name,
            check_id=SERF_CHECK_ID,
            name="Serf Health Status",
            status=PASSING,
            output="Agent alive and reachable",
            type="serf",
            create_index=idx,
            modify_index=idx,
        )
        self.checks[(name, SERF_CHECK_ID)] = serf
        self._catalog_index = idx
        return nd

    def _ensure_node(self, name: str | None, address: str | None) -> str:
        name = name or self.node
        if name not in self.nodes:
            self._add_node(name, address or "127.0.0.1")
        return name

    def _put_instance(self, inst: ServiceInstance, idx: int) -> None:
        key = (inst.node, inst.id)
        old = self.instances.get(key)
        inst.create_index = old.create_index if old else idx
        inst.modify_index = idx
        self.instances[key] = inst
        self._services_table_index = idx
        names = {inst.name} | ({old.name} if old else set())
        self._touch_services(names, idx)
        if old and old.name != inst.name:
            self._maybe_extinct(old.name, idx)

    def _maybe_extinct(self, name: str, idx: int) -> None:
        if not any(i.name == name for i in self.instances.values()):
            self._service_index.pop(name, None)
            self._extinction_index = idx

    def _put_check(self, chk: Check, idx: int) -> None:
        key = (chk.node, chk.check_id)
        old = self.checks.get(key)
        chk.create_index = old.create_index if old else idx
        chk.modify_index = idx
        self.checks[key] = chk
        self._touch_services(self._check_services(chk), idx)

    def _check_services(self, chk: Check) -> set[str]:
        if chk.service_id:
            inst = self.instances.get((chk.node, chk.service_id))
            return {inst.name} if inst else set()
        return self._services_on_node(chk.node)

    def _remove_check(self, node: str, check_id: str, idx: int) -> None:
        chk = self.checks.pop((node, check_id), None)
        if chk is not None:
            self._touch_services(self._check_services(chk), idx)
            self._check_removed(chk)

    def _check_removed(self, chk: Check) -> None:
        """Hook for the server, which runs probes and TTL timers."""

    def _check_added(self, chk: Check) -> None:
        """Hook for the server, which runs probes and TTL timers."""

    def _remove_instance(self, inst: ServiceInstance, idx: int) -> None:
        owned = [
            k for k, c in self.checks.items() if c.node == inst.node and c.service_id == inst.id
        ]
        for node, check_id in owned:
            self._remove_check(node, check_id, idx)
        del self.instances[(inst.node, inst.id)]
        self._services_table_index = idx
        self._touch_services([inst.name], idx)
        self._maybe_extinct(inst.name, idx)

    def update_check(
        self, node: str, check_id: str, status: str, output: str | None = None
    ) -> bool:
        """Set a check's status; like Consul, an unchanged status and output is no write."""
        if status not in STATUSES:
            raise ValueError(f"invalid check status {status!r}")
        chk = self.checks.get((node, check_id))
        if chk is None:
            raise KeyError(check_id)
        new_output = chk.output if output is None else output
        if chk.status == status and chk.output == new_output:
            return False
        chk.status, chk.output = status, new_output
        self._put_check(chk, self._write())
        self._notify()
        return True

    # ----- test API -----

    def register(
        self,
        name: str,
        *,
        id: str | None = None,
        address: str = "",
        port: int = 0,
        tags: Iterable[str] = (),
        meta: Mapping[str, str] | None = None,
        weights: Mapping[str, int] | None = None,
        node: str | None = None,
        node_address: str | None = None,
        status: str | None = PASSING,
    ) -> str:
        """Register an instance; `status` is that of its one check ("service:<id>"), or None
        for an instance without a check of its own (healthy while its node is)."""
        node = self._ensure_node(node, node_address)
        sid = id or name
        w = {"Passing": 1, "Warning": 1} | dict(weights or {})
        inst = ServiceInstance(
            node=node,
            id=sid,
            name=name,
            tags=list(tags),
            address=address,
            port=port,
            meta=dict(meta or {}),
            weights=w,
        )
        idx = self._write()
        self._put_instance(inst, idx)
        if status is not None:
            if status not in STATUSES:
                raise ValueError(f"invalid check status {status!r}")
            chk = Check(
                node=node,
                check_id=f"service:{sid}",
                name=f"Service '{name}' check",
                status=status,
                service_id=sid,
                service_name=name,
            )
            self._put_check(chk, idx)
        self._notify()
        return sid

    def deregister(self, service_id: str, *, node: str | None = None) -> bool:
        """Remove an instance and its checks; an unknown id is not an error (Consul's agent
        does not know the built-in "consul" service either, so it stays)."""
        inst = self.instances.get((node or self.node, service_id))
        if inst is None or inst.builtin:
            return False
        self._remove_instance(inst, self._write())
        self._notify()
        return True

    def set_check(
        self, check_id: str, status: str, *, output: str | None = None, node: str | None = None
    ) -> bool:
        """Set any check's status (the HTTP API only updates TTL checks)."""
        return self.update_check(node or self.node, check_id, status, output)

    def set_service_health(self, service_id: str, status: str, *, node: str | None = None) -> None:
        """Set every non-maintenance check of one instance."""
        node = node or self.node
        for chk in list(self.checks.values()):
            if (
                chk.node == node
                and chk.service_id == service_id
                and not chk.check_id.startswith(SERVICE_MAINT_PREFIX)
            ):
                self.update_check(node, chk.check_id, status)

    def set_node_health(self, node: str, status: str) -> bool:
        """The node's serfHealth check: a failed node takes all its instances out of `passing`."""
        return self.update_check(node, SERF_CHECK_ID, status)

    def set_maintenance(
        self, service_id: str, enable: bool, *, reason: str = "", node: str | None = None
    ) -> None:
        node = node or self.node
        inst = self.instances.get((node, service_id))
        if inst is None:
            raise ConsulHTTPError(404, f"No service registered with ID {service_id!r}")
        check_id = SERVICE_MAINT_PREFIX + service_id
        if enable:
            if (node, check_id) in self.checks:
                return
            note = reason or (
                "Maintenance mode is enabled for this service, but no reason was provided. "
                "This is a default message."
            )
            chk = Check(
                node=node,
                check_id=check_id,
                name="Service Maintenance Mode",
                status=CRITICAL,
                notes=note,
                service_id=service_id,
                service_name=inst.name,
                type="maintenance",
            )
            self._put_check(chk, self._write())
        elif (node, check_id) in self.checks:
            self._remove_check(node, check_id, self._write())
        else:
            return
        self._notify()

    def set_node_maintenance(
        self, enable: bool, *, reason: str = "", node: str | None = None
    ) -> None:
        node = node or self.node
        if enable:
            if (node, NODE_MAINT_CHECK_ID) in self.checks:
                return
            note = reason or (
                "Maintenance mode is enabled for this node, but no reason was provided. "
                "This is a default message."
            )
            chk = Check(
                node=node,
                check_id=NODE_MAINT_CHECK_ID,
                name="Node Maintenance Mode",
                status=CRITICAL,
                notes=note,
                type="maintenance",
            )
            self._put_check(chk, self._write())
        elif (node, NODE_MAINT_CHECK_ID) in self.checks:
            self._remove_check(node, NODE_MAINT_CHECK_ID, self._write())
        else:
            return
        self._notify()

    def touch_service(self, name: str) -> int:
        """Move a service's index without changing what a reader sees, as check output churn or
        anti-entropy syncs do in a real cluster."""
        idx = self._write()
        self._touch_services([name], idx)
        self._notify()
        return idx

    def kv_put(self, key: str, value: bytes | str | None, *, flags: int = 0) -> int:
        if isinstance(value, str):
            value = value.encode()
        idx = self._write()
        old = self.kv.get(key)
        self.kv[key] = KVEntry(
            key=key,
            value=value or None,
            flags=flags,
            create_index=old.create_index if old else idx,
            modify_index=idx,
        )
        self._kv_tombstones.pop(key, None)
        self._kv_table_index = idx
        self._notify()
        return idx

    def kv_delete(self, key: str, *, recurse: bool = False) -> None:
        keys = [k for k in self.kv if k.startswith(key)] if recurse else [key]
        idx = self._write()
        for k in keys:
            if self.kv.pop(k, None) is not None:
                self._kv_tombstones[k] = idx
        self._kv_table_index = idx
        self._notify()

    # ----- read models -----

    def _check_json(self, chk: Check) -> dict[str, Any]:
        inst = self.instances.get((chk.node, chk.service_id)) if chk.service_id else None
        return {
            "Node": chk.node,
            "CheckID": chk.check_id,
            "Name": chk.name,
            "Status": chk.status,
            "Notes": chk.notes,
            "Output": chk.output,
            "ServiceID": chk.service_id,
            "ServiceName": chk.service_name,
            "ServiceTags": list(inst.tags) if inst else [],
            "Type": chk.type if chk.type in ("ttl", "http", "tcp") else "",
            "Interval": f"{chk.interval:g}s" if chk.interval else "",
            "Timeout": f"{chk.timeout:g}s" if chk.type in ("http", "tcp") else "",
            "ExposedPort": 0,
            "Definition": {},
            "CreateIndex": chk.create_index,
            "ModifyIndex": chk.modify_index,
        }

    def _node_json(self, nd: Node) -> dict[str, Any]:
        return {
            "ID": nd.id,
            "Node": nd.name,
            "Address": nd.address,
            "Datacenter": self.datacenter,
            "TaggedAddresses": {"lan": nd.address, "wan": nd.address},
            "Meta": dict(nd.meta),
            "CreateIndex": nd.create_index,
            "ModifyIndex": nd.modify_index,
        }

    def _service_json(self, inst: ServiceInstance) -> dict[str, Any]:
        return {
            "ID": inst.id,
            "Service": inst.name,
            "Tags": list(inst.tags),
            "Address": inst.address,
            "TaggedAddresses": dict(inst.tagged_addresses),
            "Meta": dict(inst.meta),
            "Port": inst.port,
            "Weights": dict(inst.weights),
            "EnableTagOverride": inst.enable_tag_override,
            "Proxy": {},
            "Connect": {},
            "PeerName": "",
            "CreateIndex": inst.create_index,
            "ModifyIndex": inst.modify_index,
        }

    def health_service(self, service: str, *, passing: bool, tags: list[str]) -> list[dict]:
        wanted = [t.lower() for t in tags]
        out = []
        for (node, _), inst in sorted(self.instances.items()):
            if inst.name != service:
                continue
            own = {t.lower() for t in inst.tags}
            if any(t not in own for t in wanted):
                continue
            checks = [
                c
                for (n, _), c in sorted(self.checks.items())
                if n == node and (c.service_id == "" or c.service_id == inst.id)
            ]
            out.append(
                {
                    "Node": self._node_json(self.nodes[node]),
                    "Service": self._service_json(inst),
                    "Checks": [self._check_json(c) for c in checks],
                }
            )
        if passing:
            # Consul's filterNonPassing swaps a dropped entry with the last one, so the order of
            # a filtered answer is not the catalog order: clients must not rely on it.
            n = len(out)
            i = 0
            while i < n:
                if any(c["Status"] != PASSING for c in out[i]["Checks"]):
                    out[i], out[n - 1] = out[n - 1], out[i]
                    n -= 1
                else:
                    i += 1
            out = out[:n]
        return out

    def catalog_services(self) -> dict[str, list[str]]:
        tags: dict[str, set[str]] = {}
        for inst in self.instances.values():
            tags.setdefault(inst.name, set()).update(inst.tags)
        return {name: sorted(t) for name, t in sorted(tags.items())}

    def _kv_json(self, ent: KVEntry) -> dict[str, Any]:
        return {
            "LockIndex": 0,
            "Key": ent.key,
            "Flags": ent.flags,
            "Value": base64.b64encode(ent.value).decode() if ent.value is not None else None,
            "CreateIndex": ent.create_index,
            "ModifyIndex": ent.modify_index,
        }


class ConsulTestServer(ConsulState):
    """ConsulState served over HTTP by aiohttp.

    `requests` counts requests by "METHOD /path" (e.g. "GET /v1/health/service/web"), so tests
    can prove that a client does not hot-loop.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.requests: Counter[str] = Counter()
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._scheme = "http"
        self._probe_session: aiohttp.ClientSession | None = None
        self._check_tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._ttl_timers: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._cache_fills: dict[str, tuple[int, float]] = {}

    # ----- lifecycle -----

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the server has not been started")
        return self._port

    @property
    def address(self) -> str:
        return f"{self._scheme}://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        """Serve on host:port (0 picks a free port); with ssl_context, HTTPS (Consul's TLS
        listener, where a context that requires client certificates mimics verify_incoming)."""
        if self._runner is not None:
            raise RuntimeError("already started")
        app = web.Application(middlewares=[self._middleware], client_max_size=4 * KV_MAX_VALUE_SIZE)
        self._routes(app)
        # A short shutdown_timeout drops in-flight blocking queries on stop(), as a Consul that
        # goes away does, instead of waiting up to their full `wait`.
        runner = web.AppRunner(app, shutdown_timeout=0.05, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_address=True)
        await site.start()
        self._runner = runner
        self._port = runner.addresses[0][1]
        self._scheme = "https" if ssl_context is not None else "http"
        self._probe_session = aiohttp.ClientSession()
        for chk in list(self.checks.values()):
            self._check_added(chk)

    async def stop(self) -> None:
        """Stop serving; the state is kept, so start() again is a Consul restart with its data."""
        runner, self._runner = self._runner, None
        for task in self._check_tasks.values():
            task.cancel()
        for task in self._check_tasks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._check_tasks.clear()
        for timer in self._ttl_timers.values():
            timer.cancel()
        self._ttl_timers.clear()
        if self._probe_session is not None:
            await self._probe_session.close()
            self._probe_session = None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> ConsulTestServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ----- TTL timers and HTTP/TCP probes -----

    def _check_added(self, chk: Check) -> None:
        if not self.running:
            return
        key = (chk.node, chk.check_id)
        self._check_removed(chk)
        if chk.type == "ttl":
            self._arm_ttl(chk)
        elif chk.type in ("http", "tcp"):
            self._check_tasks[key] = asyncio.get_running_loop().create_task(self._probe_loop(key))

    def _check_removed(self, chk: Check) -> None:
        key = (chk.node, chk.check_id)
        task = self._check_tasks.pop(key, None)
        if task is not None:
            task.cancel()
        timer = self._ttl_timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def _arm_ttl(self, chk: Check) -> None:
        key = (chk.node, chk.check_id)
        old = self._ttl_timers.pop(key, None)
        if old is not None:
            old.cancel()
        if self.running:
            self._ttl_timers[key] = asyncio.get_running_loop().call_later(
                chk.ttl, self._ttl_expired, key
            )

    def _ttl_expired(self, key: tuple[str, str]) -> None:
        self._ttl_timers.pop(key, None)
        if key in self.checks:
            self.update_check(*key, CRITICAL, "TTL expired")

    async def _probe_loop(self, key: tuple[str, str]) -> None:
        while True:
            chk = self.checks.get(key)
            if chk is None:
                return
            status, output = await (
                self._probe_http(chk) if chk.type == "http" else self._probe_tcp(chk)
            )
            if key in self.checks:
                self.update_check(*key, status, output)
            await asyncio.sleep(max(chk.interval, MIN_CHECK_INTERVAL))

    async def _probe_http(self, chk: Check) -> tuple[str, str]:
        assert self._probe_session is not None
        headers = [(k, v) for k, vs in chk.header.items() for v in vs]
        try:
            async with self._probe_session.request(
                chk.method,
                chk.target,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=chk.timeout),
            ) as resp:
                body = (await resp.content.read(4096)).decode(errors="replace")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return CRITICAL, f"{chk.method} {chk.target}: {exc!r}"
        output = f"HTTP {chk.method} {chk.target}: {resp.status} {resp.reason} Output: {body}"
        if 200 <= resp.status < 300:
            return PASSING, output
        return (WARNING if resp.status == 429 else CRITICAL), output

    async def _probe_tcp(self, chk: Check) -> tuple[str, str]:
        host, _, port = chk.target.rpartition(":")
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host.strip("[]"), int(port)), chk.timeout
            )
        except (OSError, TimeoutError, ValueError) as exc:
            return CRITICAL, f"dial tcp {chk.target}: {exc!r}"
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return PASSING, f"TCP connect {chk.target}: Success"

    # ----- HTTP plumbing -----

    def _routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/v1/health/service/{service}", self._h_health_service)
        r.add_get("/v1/catalog/services", self._h_catalog_services)
        r.add_put("/v1/agent/service/register", self._h_register)
        r.add_put("/v1/agent/service/deregister/{id}", self._h_deregister)
        r.add_put("/v1/agent/service/maintenance/{id}", self._h_service_maintenance)
        r.add_put("/v1/agent/maintenance", self._h_node_maintenance)
        r.add_put("/v1/agent/check/update/{id}", self._h_check_update)
        r.add_put("/v1/agent/check/{action:pass|warn|fail}/{id}", self._h_check_ttl)
        r.add_route("*", "/v1/kv/{key:.*}", self._h_kv)
        r.add_get("/v1/status/leader", self._h_leader)

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.requests[f"{request.method} {request.path}"] += 1
        try:
            return await handler(request)
        except ConsulHTTPError as exc:
            return web.Response(status=exc.status, text=exc.reason)

    @staticmethod
    def request_token(request: web.Request) -> str | None:
        """?token=, else X-Consul-Token, else Authorization: Bearer (Consul's order)."""
        if request.query.get("token"):
            return request.query["token"]
        if request.headers.get("X-Consul-Token"):
            return request.headers["X-Consul-Token"]
        scheme, _, value = request.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None

    def _authorize(self, request: web.Request) -> None:
        if self.acl_tokens is None:
            return
        if self.request_token(request) not in self.acl_tokens:
            raise ConsulHTTPError(403, "Permission denied")

    def _check_dc(self, request: web.Request) -> None:
        dc = request.query.get("dc")
        if dc and dc != self.datacenter:
            raise ConsulHTTPError(500, "No path to datacenter")

    @staticmethod
    def _read_options(request: web.Request) -> _ReadOptions:
        q = request.query
        stale = "stale" in q
        consistent = "consistent" in q
        cached = "cached" in q
        if q.get("max_stale"):
            try:
                if parse_duration(q["max_stale"]) > 0:
                    stale = True
            except ValueError:
                raise ConsulHTTPError(400, f"Invalid max_stale value {q['max_stale']!r}") from None
        if stale and consistent:
            raise ConsulHTTPError(
                400, "Cannot specify ?stale with ?consistent, conflicting semantics."
            )
        if cached and consistent:
            raise ConsulHTTPError(
                400, "Cannot specify ?cached with ?consistent, conflicting semantics."
            )
        wait = 0.0
        if q.get("wait"):
            try:
                wait = parse_duration(q["wait"])
            except ValueError:
                raise ConsulHTTPError(400, "Invalid wait time") from None
        min_index = 0
        if q.get("index"):
            if not q["index"].isascii() or not q["index"].isdigit() or int(q["index"]) >= 2**64:
                raise ConsulHTTPError(400, "Invalid index")
            min_index = int(q["index"])
        consistency = "stale" if stale else "consistent" if consistent else "leader"
        return _ReadOptions(min_index=min_index, wait=wait, consistency=consistency, cached=cached)

    async def _blocking_read(
        self,
        request: web.Request,
        index_fn: Callable[[], int],
        answer_fn: Callable[[int], web.Response],
        *,
        cacheable: bool = False,
    ) -> web.Response:
        opts = self._read_options(request)
        self._check_dc(request)
        self._authorize(request)
        if opts.min_index > 0:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + blocking_duration(opts.wait)
            epoch = self._epoch
            while index_fn() <= opts.min_index and self._epoch == epoch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
        index = max(1, index_fn())
        resp = answer_fn(index)
        resp.headers["X-Consul-Index"] = str(index)
        resp.headers["X-Consul-KnownLeader"] = "true"
        resp.headers["X-Consul-LastContact"] = "0"
        resp.headers["X-Consul-Effective-Consistency"] = opts.consistency
        if opts.cached and cacheable:
            self._cache_headers(request, index, resp)
        return resp

    def _cache_headers(self, request: web.Request, index: int, resp: web.Response) -> None:
        key = (
            request.path
            + "?"
            + "&".join(
                f"{k}={v}" for k, v in sorted(request.query.items()) if k not in ("index", "wait")
            )
        )
        now = time.monotonic()
        filled = self._cache_fills.get(key)
        if filled is not None and filled[0] == index:
            resp.headers["X-Cache"] = "HIT"
            resp.headers["Age"] = str(int(now - filled[1]))
        else:
            self._cache_fills[key] = (index, now)
            resp.headers["X-Cache"] = "MISS"
            resp.headers["Age"] = "0"

    @staticmethod
    def _json(data: Any, status: int = 200) -> web.Response:
        return web.Response(status=status, text=json.dumps(data), content_type="application/json")

    # ----- handlers -----

    async def _h_leader(self, request: web.Request) -> web.Response:
        return self._json("127.0.0.1:8300")

    async def _h_health_service(self, request: web.Request) -> web.Response:
        service = request.match_info["service"]
        passing = False
        if "passing" in request.query:
            raw = request.query["passing"]
            try:
                passing = True if raw == "" else parse_bool(raw)
            except ValueError:
                raise ConsulHTTPError(400, "Invalid value for ?passing") from None
        if request.query.get("filter"):
            raise ConsulHTTPError(400, "filter expressions are not supported by the test server")
        tags = request.query.getall("tag", [])
        return await self._blocking_read(
            request,
            lambda: self.health_index(service),
            lambda _: self._json(self.health_service(service, passing=passing, tags=tags)),
            cacheable=True,
        )

    async def _h_catalog_services(self, request: web.Request) -> web.Response:
        return await self._blocking_read(
            request,
            self.catalog_services_index,
            lambda _: self._json(self.catalog_services()),
            cacheable=True,
        )

    async def _decode_body(self, request: web.Request) -> Any:
        try:
            return json.loads(await request.read() or b"null")
        except ValueError as exc:
            raise ConsulHTTPError(400, f"Request decode failed: {exc}") from None

    def _parse_check(self, raw: Any, sid: str, name: str, position: int, total: int) -> Check:
        if not isinstance(raw, dict):
            raise ConsulHTTPError(400, "Request decode failed: a check must be an object")
        c = _norm(raw)
        if c.get("args") or c.get("script"):
            raise ConsulHTTPError(
                400,
                "Invalid check: Scripts are disabled on this agent; to enable, configure "
                "'enable_script_checks' or 'enable_local_script_checks' to true",
            )
        if c.get("grpc") or c.get("h2ping") or c.get("dockercontainerid") or c.get("aliasservice"):
            raise ConsulHTTPError(
                400, "Invalid check: the test server runs TTL, HTTP and TCP checks"
            )
        ttl = _duration_field(c.get("ttl"), "TTL")
        interval = _duration_field(c.get("interval"), "Interval")
        timeout = _duration_field(c.get("timeout"), "Timeout") or 10.0
        kind = "http" if c.get("http") else "tcp" if c.get("tcp") else "ttl"
        if interval > 0 and ttl > 0:
            raise ConsulHTTPError(400, "Invalid check: Interval and TTL cannot both be specified")
        if kind != "ttl" and interval <= 0:
            raise ConsulHTTPError(
                400, "Invalid check: Interval must be > 0 for Script, HTTP, H2PING, or TCP checks"
            )
        if kind == "ttl" and ttl <= 0:
            raise ConsulHTTPError(400, "Invalid check: TTL must be > 0 for TTL checks")
        status = c.get("status") or CRITICAL
        if status not in STATUSES:
            raise ConsulHTTPError(400, f"Invalid check status: {status!r}")
        check_id = c.get("checkid") or c.get("id")
        if not check_id:
            check_id = f"service:{sid}" if total == 1 else f"service:{sid}:{position + 1}"
        return Check(
            node=self.node,
            check_id=str(check_id),
            name=str(c.get("name") or f"Service '{name}' check"),
            status=status,
            notes=str(c.get("notes") or ""),
            service_id=sid,
            service_name=name,
            type=kind,
            ttl=ttl,
            target=str(c.get("http") or c.get("tcp") or ""),
            method=str(c.get("method") or "GET"),
            header={str(k): [str(x) for x in v] for k, v in (c.get("header") or {}).items()},
            interval=interval,
            timeout=timeout,
            deregister_after=_duration_field(
                c.get("deregistercriticalserviceafter"), "DeregisterCriticalServiceAfter"
            ),
        )

    async def _h_register(self, request: web.Request) -> web.Response:
        body = await self._decode_body(request)
        if not isinstance(body, dict):
            raise ConsulHTTPError(400, "Request decode failed: expected a JSON object")
        try:
            inst, checks = self._parse_registration(_norm(body))
        except (TypeError, ValueError, AttributeError) as exc:
            raise ConsulHTTPError(400, f"Request decode failed: {exc}") from None
        self._authorize(request)
        idx = self._write()
        self._put_instance(inst, idx)
        if "replace-existing-checks" in request.query:
            keep = {chk.check_id for chk, _ in checks}
            stale = [
                c.check_id
                for c in self.checks.values()
                if c.node == self.node
                and c.service_id == inst.id
                and c.check_id not in keep
                and c.type != "maintenance"
            ]
            for check_id in stale:
                self._remove_check(self.node, check_id, idx)
        for chk, explicit_status in checks:
            # Re-registering keeps a known check's status, so a redeploy does not flap it.
            old = self.checks.get((self.node, chk.check_id))
            if old is not None and not explicit_status:
                chk.status, chk.output = old.status, old.output
            self._put_check(chk, idx)
            self._check_added(chk)
        self._notify()
        return web.Response()

    def _parse_registration(
        self, b: dict[str, Any]
    ) -> tuple[ServiceInstance, list[tuple[Check, bool]]]:
        name = b.get("name")
        if not name or not isinstance(name, str):
            raise ConsulHTTPError(400, "Missing service name")
        sid = str(b.get("id") or name)
        weights = {"Passing": 1, "Warning": 1}
        if b.get("weights") is not None:
            w = _norm(b["weights"])
            weights = {"Passing": int(w.get("passing") or 0), "Warning": int(w.get("warning") or 0)}
            if weights["Passing"] < 1:
                raise ConsulHTTPError(400, "Invalid Weights: Passing must be greater than 0")
        tags = b.get("tags") or []
        meta = b.get("meta") or {}
        if not isinstance(tags, list) or not isinstance(meta, dict):
            raise ConsulHTTPError(400, "Request decode failed: Tags must be a list, Meta an object")
        raw_checks = list(b.get("checks") or [])
        if b.get("check"):
            raw_checks.insert(0, b["check"])
        checks = [
            (self._parse_check(rc, sid, name, i, len(raw_checks)), "status" in _norm(rc))
            for i, rc in enumerate(raw_checks)
        ]
        inst = ServiceInstance(
            node=self.node,
            id=sid,
            name=name,
            tags=[str(t) for t in tags],
            address=str(b.get("address") or ""),
            port=int(b.get("port") or 0),
            meta={str(k): str(v) for k, v in meta.items()},
            weights=weights,
            enable_tag_override=bool(b.get("enabletagoverride")),
            tagged_addresses=dict(b.get("taggedaddresses") or {}),
        )
        return inst, checks

    async def _h_deregister(self, request: web.Request) -> web.Response:
        self._authorize(request)
        self.deregister(request.match_info["id"])
        return web.Response()

    @staticmethod
    def _enable_param(request: web.Request) -> bool:
        if "enable" not in request.query:
            raise ConsulHTTPError(400, "Missing value for enable")
        raw = request.query["enable"]
        try:
            return parse_bool(raw)
        except ValueError:
            raise ConsulHTTPError(400, f"Invalid value for enable: {raw!r}") from None

    async def _h_service_maintenance(self, request: web.Request) -> web.Response:
        enable = self._enable_param(request)
        self._authorize(request)
        sid = request.match_info["id"]
        self.set_maintenance(sid, enable, reason=request.query.get("reason", ""))
        return web.Response()

    async def _h_node_maintenance(self, request: web.Request) -> web.Response:
        enable = self._enable_param(request)
        self._authorize(request)
        self.set_node_maintenance(enable, reason=request.query.get("reason", ""))
        return web.Response()

    def _ttl_update(self, check_id: str, status: str, output: str) -> None:
        chk = self.checks.get((self.node, check_id))
        if chk is None:
            raise ConsulHTTPError(
                404,
                f"Unknown check ID {check_id!r}. Ensure that the check ID is passed, "
                "not the check name.",
            )
        if chk.type != "ttl":
            raise ConsulHTTPError(500, f"CheckID {check_id!r} does not have associated TTL")
        self.update_check(self.node, check_id, status, output)
        self._arm_ttl(chk)

    async def _h_check_ttl(self, request: web.Request) -> web.Response:
        self._authorize(request)
        status = {"pass": PASSING, "warn": WARNING, "fail": CRITICAL}[request.match_info["action"]]
        self._ttl_update(request.match_info["id"], status, request.query.get("note", ""))
        return web.Response()

    async def _h_check_update(self, request: web.Request) -> web.Response:
        body = await self._decode_body(request)
        self._authorize(request)
        b = _norm(body if isinstance(body, dict) else {})
        status = b.get("status")
        if status not in STATUSES:
            raise ConsulHTTPError(400, f"Invalid check status: {status!r}")
        self._ttl_update(request.match_info["id"], status, str(b.get("output") or ""))
        return web.Response()

    async def _h_kv(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info["key"]
        if key.lower().endswith(REJECTED_KEY_SUFFIXES):
            raise ConsulHTTPError(400, f"Invalid key {key!r}: keys may not end in a file extension")
        if request.method == "GET":
            return await self._kv_get(request, key)
        if request.method in ("PUT", "DELETE"):
            self._check_dc(request)
        if request.method == "PUT":
            return await self._kv_put(request, key)
        if request.method == "DELETE":
            return self._kv_delete(request, key)
        raise ConsulHTTPError(405, f"method {request.method} not allowed")

    async def _kv_get(self, request: web.Request, key: str) -> web.Response:
        q = request.query
        listing = "keys" in q
        recurse = "recurse" in q
        if not key and not (listing or recurse):
            raise ConsulHTTPError(400, "Missing key name")
        prefix = listing or recurse

        def answer(index: int) -> web.Response:
            if listing:
                sep = q.get("separator", "")
                names: set[str] = set()
                for k in self.kv:
                    if not k.startswith(key):
                        continue
                    cut = k.find(sep, len(key)) if sep else -1
                    names.add(k[: cut + len(sep)] if cut >= 0 else k)
                return self._json(sorted(names)) if names else web.Response(status=404)
            if recurse:
                found = [self._kv_json(e) for k, e in sorted(self.kv.items()) if k.startswith(key)]
                return self._json(found) if found else web.Response(status=404)
            ent = self.kv.get(key)
            if ent is None:
                return web.Response(status=404)
            if "raw" in q:
                return web.Response(body=ent.value or b"", content_type="application/octet-stream")
            return self._json([self._kv_json(ent)])

        return await self._blocking_read(request, lambda: self.kv_index(key, prefix=prefix), answer)

    async def _kv_put(self, request: web.Request, key: str) -> web.Response:
        if not key:
            raise ConsulHTTPError(400, "Missing key name")
        q = request.query
        if "acquire" in q or "release" in q:
            raise ConsulHTTPError(400, "sessions are not supported by the test server")
        self._authorize(request)
        flags = 0
        if "flags" in q:
            if not q["flags"].isdigit():
                raise ConsulHTTPError(400, f"Invalid flags: {q['flags']!r}")
            flags = int(q["flags"])
        size = request.content_length
        if size is not None and size > KV_MAX_VALUE_SIZE:
            raise ConsulHTTPError(413, self._too_large(size))
        value = await request.read()
        if len(value) > KV_MAX_VALUE_SIZE:
            raise ConsulHTTPError(413, self._too_large(len(value)))
        if "cas" in q:
            if not q["cas"].isdigit():
                raise ConsulHTTPError(400, f"Invalid cas index: {q['cas']!r}")
            cas = int(q["cas"])
            ent = self.kv.get(key)
            if (ent.modify_index if ent else 0) != cas:
                return self._json(False)
        self.kv_put(key, value, flags=flags)
        return self._json(True)

    @staticmethod
    def _too_large(size: int) -> str:
        return (
            f"Request body({size} bytes) too large, max size: {KV_MAX_VALUE_SIZE} bytes. See "
            "https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size."
        )

    def _kv_delete(self, request: web.Request, key: str) -> web.Response:
        recurse = "recurse" in request.query
        if not key and not recurse:
            raise ConsulHTTPError(400, "Missing key name")
        self._authorize(request)
        if "cas" in request.query:
            if not request.query["cas"].isdigit():
                raise ConsulHTTPError(400, f"Invalid cas index: {request.query['cas']!r}")
            ent = self.kv.get(key)
            if ent is None or ent.modify_index != int(request.query["cas"]):
                return self._json(False)
        self.kv_delete(key, recurse=recurse)
        return self._json(True)


async def _serve(args: argparse.Namespace) -> None:
    server = ConsulTestServer(
        datacenter=args.datacenter,
        acl_tokens=args.acl_token or None,
        index_scope=args.index_scope,
    )
    await server.start(args.host, args.port)
    print(f"Consul test server on http://{args.host}:{server.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8500)
    parser.add_argument("--datacenter", default="dc1")
    parser.add_argument(
        "--acl-token", action="append", help="enable ACLs and accept this token (repeatable)"
    )
    parser.add_argument("--index-scope", choices=("service", "global"), default="service")
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
