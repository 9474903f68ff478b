"""lb registering itself in Consul (`consul.register`), with an HTTP check on the admin /healthz.

lb registers once its listeners and the admin server are up (so the check can pass at once),
retries with backoff while Consul cannot be reached, and deregisters on shutdown before
draining: Consul then stops announcing an lb that is about to go away while it finishes the
requests it already has. A deregistration that fails is logged and left to Consul, which drops
the instance once its check has failed for `deregister_after`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..config import model
from .consul import ConsulClient, ConsulError

log = logging.getLogger(__name__)

WILDCARDS = frozenset({"0.0.0.0", "::", ""})
DEREGISTER_TIMEOUT = 3.0  # shutdown must not wait on a Consul that does not answer
RETRY_FIRST = 0.5
RETRY_CAP = 30.0


META_ADMIN = "lb_admin"  # the admin address, in the Meta beside fleet.py's keys


@dataclass(frozen=True)
class RegistrationSpec:
    name: str
    service_id: str | None
    address: str
    port: int
    check_url: str
    check_interval: float
    meta: tuple[tuple[str, str], ...] = ()

    @property
    def default_id(self) -> str:
        """The ID Consul knows this lb by (ConsulClient.register_self's default)."""
        return self.service_id or f"{self.name}-{self.address}-{self.port}"

    def same_instance(self, other: RegistrationSpec) -> bool:
        """Only the meta differs: registering again updates the instance in place."""
        return dataclasses.replace(self, meta=other.meta) == other


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def registration_spec(
    config: model.Config, meta: Mapping[str, str] | None = None
) -> RegistrationSpec | None:
    """What to register: the first listener's port at `register.address`, else the listener's
    bind address, else (bound to all interfaces) this host's name; `meta` and the admin address
    as the service's Meta, which the fleet view reads (fleet.py)."""
    reg = config.consul.register if config.consul is not None else None
    if reg is None or not config.listeners:
        return None
    host, port = config.listeners[0].bind
    address = reg.address or (host if host not in WILDCARDS else socket.gethostname())
    admin_host, admin_port = config.admin.bind
    check_host = admin_host if admin_host not in WILDCARDS else address
    admin_url = f"http://{_url_host(check_host)}:{admin_port}"
    meta = {**(meta or {}), META_ADMIN: admin_url}
    return RegistrationSpec(
        name=reg.name,
        service_id=reg.id,
        address=address,
        port=port,
        check_url=f"{admin_url}/healthz",
        check_interval=reg.check_interval,
        meta=tuple(sorted(meta.items())),
    )


class SelfRegistration:
    """Keeps lb registered while `spec` says so; `on_error` counts each failed attempt."""

    def __init__(self, on_error: Callable[[], None]) -> None:
        self._on_error = on_error
        self._client: ConsulClient | None = None
        self._spec: RegistrationSpec | None = None
        self._task: asyncio.Task[None] | None = None
        self.service_id: str | None = None  # set while registered
        self.last_error: str | None = None

    @property
    def spec(self) -> RegistrationSpec | None:
        return self._spec

    async def configure(self, client: ConsulClient | None, spec: RegistrationSpec | None) -> None:
        if client is self._client and spec == self._spec:
            return
        old = self._spec
        in_place = client is not None and client is self._client
        if in_place and spec is not None and old is not None and spec.same_instance(old):
            # A new config hash: registering again updates the Meta in place, while a
            # deregistration first would drop lb from the catalog for a moment.
            await self._cancel()
            self._spec = spec
        else:
            await self.withdraw()
            self._client, self._spec = client, spec
        if client is not None and spec is not None:
            self._task = asyncio.get_running_loop().create_task(self._register(client, spec))

    async def _cancel(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _register(self, client: ConsulClient, spec: RegistrationSpec) -> None:
        failures = 0
        while True:
            try:
                self.service_id = await client.register_self(
                    name=spec.name,
                    service_id=spec.service_id,
                    address=spec.address,
                    port=spec.port,
                    check_url=spec.check_url,
                    check_interval=spec.check_interval,
                    meta=dict(spec.meta),
                )
            except ConsulError as exc:
                failures += 1
                self.last_error = str(exc)
                self._on_error()
                if failures == 1:
                    log.warning("registering lb in Consul failed: %s; retrying", exc)
                ceiling = min(RETRY_CAP, RETRY_FIRST * 2 ** (failures - 1))
                await asyncio.sleep(random.uniform(ceiling / 2, ceiling))
                continue
            self.last_error = None
            log.info(
                "registered in Consul as %s (%s:%d, check %s)",
                self.service_id,
                spec.address,
                spec.port,
                spec.check_url,
            )
            return

    async def withdraw(self) -> None:
        """Stop registering and deregister; safe to call at any time."""
        await self._cancel()
        client, service_id = self._client, self.service_id
        self._client = self._spec = None
        self.service_id = None
        if client is None or service_id is None:
            return
        try:
            await asyncio.wait_for(client.deregister_self(service_id), DEREGISTER_TIMEOUT)
        except (ConsulError, TimeoutError) as exc:
            self._on_error()
            log.warning(
                "deregistering %s from Consul failed: %s; its check fails once lb is gone",
                service_id,
                exc or "timed out",
            )
            return
        log.info("deregistered %s from Consul", service_id)
