"""Consul service discovery: blocking watches of healthy instances and of the service catalog.

A `ServiceWatch` follows `GET /v1/health/service/<name>?passing` with Consul's blocking queries
and hands the healthy instances to `on_update`, only when the set changed (and always after the
first answer). A `CatalogWatch` does the same for `GET /v1/catalog/services`, the input of
tag-declared routes. Both follow the client duties of Consul's blocking-query docs:

- the first read and every read after an error is a plain read (index 0); later reads block on
  the last `X-Consul-Index` (never below 1) for `wait`, with an HTTP timeout of
  wait * 17/16 + 5 s to cover Consul's jitter;
- an index lower than the one sent (restart, snapshot restore) resets the watch to index 0;
  so does any error, which makes a Consul that came back with a lower index visible at once
  instead of after a whole `wait`;
- a token bucket (burst 2, one token every 0.25 s) paces the loop, so an index that churns on
  writes that do not change the answer costs at most 4 requests a second per watch;
- errors back off exponentially with jitter: the first retry after 0.125-0.25 s, doubling up
  to 10 s; an error (connection refused, timeout, 4xx, 5xx, an answer that does not parse)
  never calls `on_update`: the last known good set stays, and `errors`, `last_error` and
  `stale` say so.

Each watch holds one connection open while it blocks; Consul limits connections per client IP
(`limits.http_max_conns_per_client`, 200 by default), which bounds how many services one lb can
watch through one agent.
The tags of its instances that declare a route are parsed by `tags.py`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

import aiohttp
import consul
import consul.aio
from consul.callback import CB
from consul.exceptions import (
    ACLDisabled,
    ACLPermissionDenied,
    BadRequest,
    ClientError,
    ConsulException,
    NotFound,
    Timeout,
)

from ..config.consul_model import ConsulConnection
from .tags import tag_weight

log = logging.getLogger(__name__)

CONSISTENCY_MODES = ("default", "stale", "consistent")
MAX_WAIT = 600.0  # Consul caps `wait` at 10 minutes
REQUEST_TIMEOUT = 10.0  # for reads that do not block and for agent writes
BLOCKING_TIMEOUT_MARGIN = 5.0
# One connection per watched service is held open while it blocks.
MAX_CONNECTIONS = 512
PERMISSION_DENIED = "Consul ACL: permission denied (check the token)"


@dataclass(frozen=True)
class ConsulSettings:
    """How to reach Consul.

    `token` wins over CONSUL_HTTP_TOKEN (py-consul alone would let the environment override an
    explicit token); with `token=None` the environment variable is used if set. An address
    without a port gets Consul's 8500 (http) or 8501 (https); without a scheme, http.
    """

    address: str = "http://127.0.0.1:8500"
    token: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    consistency: str = "default"
    wait: float = 300.0

    def __post_init__(self) -> None:
        if self.consistency not in CONSISTENCY_MODES:
            raise ValueError(
                f"consistency must be one of {', '.join(CONSISTENCY_MODES)}, "
                f"not {self.consistency!r}"
            )
        if not 0 < self.wait <= MAX_WAIT:
            raise ValueError(f"wait must be in (0, {MAX_WAIT:g}] seconds, not {self.wait!r}")
        if self.key_file and not self.cert_file:
            raise ValueError("key_file needs cert_file")
        split_address(self.address)


def settings_for(conn: ConsulConnection) -> ConsulSettings:
    """The client settings of a `consul:` or `config_source.consul` block."""
    return ConsulSettings(
        address=conn.address,
        token=conn.token,
        ca_file=conn.ca_file,
        cert_file=conn.cert_file,
        key_file=conn.key_file,
        consistency=conn.consistency,
        wait=conn.wait,
    )


def split_address(address: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a Consul address such as "https://consul:8501" or "consul"."""
    parts = urlsplit(address if "//" in address else "//" + address)
    scheme = parts.scheme or "http"
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"invalid Consul address {address!r}: expected [http[s]://]host[:port]")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"invalid port in Consul address {address!r}") from None
    return scheme, parts.hostname, port or (8501 if scheme == "https" else 8500)


class ConsulError(Exception):
    """A failed Consul request, with a message meant for an operator."""


@dataclass(frozen=True)
class Instance:
    """One healthy instance of a service.

    `id` is Consul's service ID, unique per node only, so `node` completes it.
    `meta` is a sorted tuple of (key, value) pairs so that an Instance is hashable.
    """

    id: str
    address: str
    port: int
    weight: int = 1
    tags: tuple[str, ...] = ()
    meta: tuple[tuple[str, str], ...] = ()
    node: str = ""

    @property
    def meta_dict(self) -> dict[str, str]:
        return dict(self.meta)


def go_duration(seconds: float) -> str:
    """Seconds as a Go duration string, the form Consul parses ("300s", "1500ms")."""
    return f"{int(seconds)}s" if seconds == int(seconds) else f"{round(seconds * 1000)}ms"


def describe_error(exc: BaseException, address: str) -> str:
    """A message an operator can act on, for any failure of a Consul request."""
    if isinstance(exc, ACLPermissionDenied):
        return PERMISSION_DENIED
    if isinstance(exc, TimeoutError | Timeout):
        return f"Consul at {address} did not answer in time"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"Consul unreachable at {address}: {exc.os_error or exc}"
    if isinstance(exc, aiohttp.ClientError):
        return f"Consul connection to {address} failed: {exc or type(exc).__name__}"
    if isinstance(exc, BadRequest | ClientError | ACLDisabled):
        return f"Consul rejected the request: {exc}"
    if isinstance(exc, ConsulException):
        return f"Consul error: {exc}"
    return f"{type(exc).__name__}: {exc}"


class ConsulClient:
    """One py-consul async client (one aiohttp session) shared by all watches.

    It is built on first use, inside the running event loop, as py-consul requires.
    """

    def __init__(self, settings: ConsulSettings) -> None:
        self.settings = settings
        self._scheme, self._host, self._port = split_address(settings.address)
        self._api: consul.aio.Consul | None = None

    @property
    def address(self) -> str:
        return f"{self._scheme}://{self._host}:{self._port}"

    def _client(self) -> consul.aio.Consul:
        if self._api is None:
            s = self.settings
            cert = (s.cert_file, s.key_file) if s.cert_file and s.key_file else s.cert_file
            with warnings.catch_warnings():
                # py-consul passes aiohttp's deprecated ssl_context argument; nothing to act on.
                warnings.filterwarnings(
                    "ignore", message="ssl_context is deprecated", category=DeprecationWarning
                )
                api = consul.aio.Consul(
                    host=self._host,
                    port=self._port,
                    scheme=self._scheme,
                    token=s.token,
                    consistency=s.consistency,
                    verify=s.ca_file or True,
                    cert=cert,
                    connections_limit=MAX_CONNECTIONS,
                    connections_timeout=REQUEST_TIMEOUT,
                )
            if s.token is not None:
                api.token = s.token  # py-consul lets CONSUL_HTTP_TOKEN override `token=`
            self._api = api
        return self._api

    async def __aenter__(self) -> ConsulClient:
        self._client()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        api, self._api = self._api, None
        if api is not None:
            await api.close()

    async def _read(
        self, path: str, params: list[tuple[str, str]], index: int, *, found: bool = True
    ) -> tuple[int, Any]:
        """A read, blocking when index > 0. py-consul's own helpers cannot set the consistency
        of health reads nor a per-request timeout, so this goes through its HTTP layer.
        found=False: a 404 (a KV miss, which still carries an index) answers None."""
        api = self._client()
        timeout = REQUEST_TIMEOUT
        if index > 0:
            params = [*params, ("index", str(index)), ("wait", go_duration(self.settings.wait))]
            timeout = self.settings.wait * 17 / 16 + BLOCKING_TIMEOUT_MARGIN
        if self.settings.consistency != "default":
            params.append((self.settings.consistency, "1"))
        try:
            raw_index, data = await api.http.get(
                CB.json(index=True, allow_404=not found),
                path,
                params=params,
                headers=api.prepare_headers(),
                connections_timeout=timeout,
            )
        except NotFound as exc:
            raise ConsulError(
                f"Consul answered 404 for {path}: is {self.address} a Consul agent?"
            ) from exc
        except Exception as exc:
            raise ConsulError(describe_error(exc, self.address)) from exc
        try:
            return int(raw_index), data
        except ValueError:
            raise ConsulError(f"Consul sent an invalid X-Consul-Index {raw_index!r}") from None

    async def health_service(
        self,
        service: str,
        *,
        index: int = 0,
        tags: Iterable[str] = (),
        datacenter: str | None = None,
        passing: bool = True,
    ) -> tuple[int, Any]:
        """(index, entries) of the passing instances of `service` (all of them, with their
        checks, when not `passing`)."""
        params = [("passing", "1")] if passing else []
        params += [("tag", t) for t in tags]
        if datacenter:
            params.append(("dc", datacenter))
        return await self._read(f"/v1/health/service/{service}", params, index)

    async def catalog_services(
        self, *, index: int = 0, datacenter: str | None = None
    ) -> tuple[int, Any]:
        """(index, {service: [tags]}) of the catalog."""
        params = [("dc", datacenter)] if datacenter else []
        return await self._read("/v1/catalog/services", params, index)

    async def kv_tree(self, prefix: str, *, index: int = 0) -> tuple[int, Any]:
        """(index, entries or None) of every key under `prefix`; None: there are none."""
        return await self._read(f"/v1/kv/{prefix}", [("recurse", "1")], index, found=False)

    async def register_self(
        self,
        *,
        address: str,
        port: int,
        check_url: str,
        name: str = "lb",
        service_id: str | None = None,
        tags: Iterable[str] = (),
        meta: Mapping[str, str] | None = None,
        check_interval: float = 10.0,
        check_timeout: float = 2.0,
        deregister_after: float = 600.0,
    ) -> str:
        """Register this lb with the local agent, with an HTTP check on `check_url` (the admin
        /healthz, which must answer without the admin token). Durations are in seconds; Consul
        removes the registration after `deregister_after` of failing checks. Idempotent: checks
        the new definition does not name are dropped.
        Returns the service ID (default "<name>-<address>-<port>", unique on the node)."""
        sid = service_id or f"{name}-{address}-{port}"
        check = consul.Check.http(
            check_url,
            go_duration(check_interval),
            timeout=go_duration(check_timeout),
            deregister=go_duration(deregister_after),
        )
        try:
            await self._client().agent.service.register(
                name,
                service_id=sid,
                address=address,
                port=port,
                tags=list(tags),
                meta=dict(meta or {}),
                check=check,
                replace_existing_checks=True,
            )
        except Exception as exc:
            raise ConsulError(describe_error(exc, self.address)) from exc
        return sid

    async def deregister_self(self, service_id: str) -> None:
        try:
            await self._client().agent.service.deregister(service_id)
        except Exception as exc:
            raise ConsulError(describe_error(exc, self.address)) from exc


class TokenBucket:
    """Paces a loop: `burst` calls at once, then one per 1/rate seconds."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    async def acquire(self) -> None:
        self._refill()
        if self._tokens < 1:
            await asyncio.sleep((1 - self._tokens) / self.rate)
            self._refill()
        self._tokens -= 1


T = TypeVar("T")


class BlockingWatch(ABC, Generic[T]):
    """The blocking-query loop shared by ServiceWatch, CatalogWatch and KvWatch (kvwatch.py).

    State for metrics and the admin API: `synced` (a first answer arrived), `last_success`
    (wall-clock time of the last good answer), `errors` (failed requests, ever), `last_error`
    (an operator-readable message), `stale` (the last request failed), `index` (the
    X-Consul-Index the next request blocks on; 0 for a plain read). `clock` is the monotonic
    clock of the token bucket.
    """

    RATE = 4.0  # tokens per second
    BURST = 2
    BACKOFF_FIRST = 0.25
    BACKOFF_CAP = 10.0

    def __init__(
        self,
        client: ConsulClient,
        *,
        datacenter: str | None,
        on_update: Callable[[Any], None],
        on_error: Callable[[Exception], None] | None,
        clock: Callable[[], float],
    ) -> None:
        self.client = client
        self.datacenter = datacenter
        self._on_update = on_update
        self._on_error = on_error
        self._bucket = TokenBucket(self.RATE, self.BURST, clock)
        self.index = 0
        self.last_success: float | None = None
        self.errors = 0
        self.last_error: str | None = None
        self.synced = False
        self._failing = False
        self._consecutive_failures = 0
        self._applied: T | None = None

    @property
    def stale(self) -> bool:
        """True when the last request failed: the set in force is the last known good one."""
        return self._failing

    @property
    @abstractmethod
    def name(self) -> str: ...

    @abstractmethod
    async def _fetch(self, index: int) -> tuple[int, Any]: ...

    @abstractmethod
    def _convert(self, data: Any) -> T: ...

    @abstractmethod
    def _publish(self, value: T) -> None: ...

    async def run(self) -> None:
        """Watch until cancelled."""
        while True:
            await self._bucket.acquire()
            sent = self.index
            try:
                index, data = await self._fetch(sent)
                value = self._convert(data)
            except Exception as exc:
                await self._failed(exc)
                continue
            if index < sent:
                log.info(
                    "%s: Consul's index went back from %d to %d; re-reading", self.name, sent, index
                )
                self.index = 0
                continue
            self.index = max(index, 1)
            self._succeeded(value)

    def _succeeded(self, value: T) -> None:
        if self._failing:
            log.info("%s: Consul answers again", self.name)
        self.last_success = time.time()
        self._failing = False
        self._consecutive_failures = 0
        if self.synced and value == self._applied:
            return
        self.synced = True
        try:
            self._publish(value)
        except Exception:
            # Leave _applied as it was, so the next answer offers the set again.
            log.exception("%s: on_update failed", self.name)
            return
        self._applied = value

    async def _failed(self, exc: Exception) -> None:
        message = (
            str(exc) if isinstance(exc, ConsulError) else describe_error(exc, self.client.address)
        )
        self.errors += 1
        self.last_error = message
        self._failing = True
        self._consecutive_failures += 1
        self.index = 0
        if self._consecutive_failures == 1:
            log.warning("%s: %s; keeping the last known good set", self.name, message)
        else:
            log.debug("%s: %s (failure %d)", self.name, message, self._consecutive_failures)
        if self._on_error is not None:
            try:
                self._on_error(exc)
            except Exception:
                log.exception("%s: on_error failed", self.name)
        ceiling = min(self.BACKOFF_CAP, self.BACKOFF_FIRST * 2 ** (self._consecutive_failures - 1))
        await asyncio.sleep(random.uniform(ceiling / 2, ceiling))


class ServiceWatch(BlockingWatch[tuple[Instance, ...]]):
    """Follows the passing instances of one Consul service.

    `on_update(instances)` gets every healthy instance (sorted by node, then ID), after the
    first answer and then whenever the set changes. An empty list from a Consul that answered
    normally is applied: the service really has no healthy instance.
    """

    def __init__(
        self,
        client: ConsulClient,
        service: str,
        *,
        tags: Iterable[str] = (),
        datacenter: str | None = None,
        on_update: Callable[[list[Instance]], None],
        on_error: Callable[[Exception], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            client, datacenter=datacenter, on_update=on_update, on_error=on_error, clock=clock
        )
        self.service = service
        self.tags = tuple(tags)

    @property
    def name(self) -> str:
        return f"consul service {self.service!r}"

    @property
    def instances(self) -> list[Instance]:
        """The set last handed to on_update."""
        return list(self._applied or ())

    async def _fetch(self, index: int) -> tuple[int, Any]:
        return await self.client.health_service(
            self.service, index=index, tags=self.tags, datacenter=self.datacenter
        )

    def _convert(self, data: Any) -> tuple[Instance, ...]:
        if not isinstance(data, list):
            raise ConsulError(f"unexpected answer for service {self.service!r}: not a list")
        found = []
        for entry in data:
            try:
                found.append(_instance(entry))
            except (KeyError, TypeError, ValueError) as exc:
                raise ConsulError(
                    f"unexpected entry for service {self.service!r}: {exc!r}"
                ) from exc
        return tuple(sorted(found, key=lambda i: (i.node, i.id, i.address, i.port)))

    def _publish(self, value: tuple[Instance, ...]) -> None:
        self._on_update(list(value))


def _instance(entry: Mapping[str, Any]) -> Instance:
    svc = entry["Service"]
    node = entry["Node"]
    address = svc.get("Address") or node.get("Address")
    if not address:
        raise ValueError(f"instance {svc.get('ID')!r} has no address")
    tags = tuple(str(t) for t in svc.get("Tags") or ())
    weight = tag_weight(tags)
    if weight is None:
        passing = (svc.get("Weights") or {}).get("Passing", 1)
        weight = passing if isinstance(passing, int) and passing >= 0 else 1
    meta = tuple(sorted((str(k), str(v)) for k, v in (svc.get("Meta") or {}).items()))
    return Instance(
        id=str(svc["ID"]),
        address=str(address),
        port=int(svc["Port"]),
        weight=weight,
        tags=tags,
        meta=meta,
        node=str(node.get("Node", "")),
    )


class CatalogWatch(BlockingWatch[tuple[tuple[str, tuple[str, ...]], ...]]):
    """Follows the service catalog: on_update({service: sorted tags}) on every change."""

    def __init__(
        self,
        client: ConsulClient,
        *,
        datacenter: str | None = None,
        on_update: Callable[[dict[str, list[str]]], None],
        on_error: Callable[[Exception], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            client, datacenter=datacenter, on_update=on_update, on_error=on_error, clock=clock
        )

    @property
    def name(self) -> str:
        return "consul catalog"

    @property
    def services(self) -> dict[str, list[str]]:
        """The catalog last handed to on_update."""
        return {name: list(tags) for name, tags in self._applied or ()}

    async def _fetch(self, index: int) -> tuple[int, Any]:
        return await self.client.catalog_services(index=index, datacenter=self.datacenter)

    def _convert(self, data: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
        if not isinstance(data, dict) or not all(
            isinstance(tags, list | type(None)) for tags in data.values()
        ):
            raise ConsulError("unexpected answer for the catalog: not a map of service to tags")
        return tuple(
            sorted(
                (str(name), tuple(sorted(str(t) for t in tags or ())))
                for name, tags in data.items()
            )
        )

    def _publish(self, value: tuple[tuple[str, tuple[str, ...]], ...]) -> None:
        self._on_update({name: list(tags) for name, tags in value})
