"""Config from Consul KV in a running lb (`config_source: {consul: ...}`).

The local files (`lb run -c`) name the source; the documents under its prefix merge after them
(lb/config/kv.py). At boot they are read once; Consul unreachable, lb starts from the cache
(the last documents it applied), and without one it refuses to start (`SourceUnavailable`, exit
2). Running, a `KvWatch` follows the prefix with blocking queries, and each change is loaded
and applied by `Server.reload()` as a file edit is: validated off the loop, refused as a whole
with errors naming the key and line (the running config stays), applied atomically otherwise.
A reload for any other reason (a local file edited, SIGHUP, the admin API) merges the newest
documents Consul gave. After every good apply the cache is rewritten.

Consul unreachable: the watch backs off and retries, nothing changes, and the staleness shows
in `/api/status` (`config_source.consul`) and in `lb_config_source_stale_seconds`.

`config_source` is read once: a reload whose files change it (or add or remove it) is refused
with the reason, since the documents in hand belong to the old source; restart lb to move.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..config.errors import ConfigError, Mark, Problem
from ..config.kv import KvSnapshot, load_with_kv, read_cache, source_of, write_cache
from ..config.load import Document, Loaded, load_documents, read_files
from ..config.schema import marks
from ..config.source_model import ConsulSource, kv_folder
from .consul import ConsulClient, ConsulError
from .kvwatch import KvWatch, read_prefix, settings_of

log = logging.getLogger(__name__)


class SourceUnavailable(Exception):
    """Consul cannot be read at boot and there is no usable cache: lb cannot start."""


async def load_from_source(path: str) -> Loaded:
    """The config lb starts with: the local files, and the KV documents their config_source
    names, from Consul or else from the cache. Raises ConfigError or SourceUnavailable."""
    local = read_files(path)
    source = source_of(local)
    if source is None:
        return load_documents(local)
    return await _with_kv(local, source.consul)


def load_at_boot(path: str) -> Loaded:
    """load_from_source for `lb run`, before its event loop starts (a loop of its own only
    when there is Consul to read)."""
    local = read_files(path)
    source = source_of(local)
    if source is None:
        return load_documents(local)
    return asyncio.run(_with_kv(local, source.consul))


async def _with_kv(local: list[Document], src: ConsulSource) -> Loaded:
    try:
        kv = await _read(src)
    except ConsulError as exc:
        kv = _from_cache(src, str(exc))
    return load_with_kv(local, kv)


def load_for_check(
    path: str | None, address: str | None, prefix: str | None, token: str | None
) -> Loaded:
    """What `lb check` validates: the files, merged with what Consul stores under the prefix
    given (else under the one their config_source names); no cache: it checks Consul."""
    local = read_files(path) if path is not None else []
    found = source_of(local)
    src = found.consul if found is not None else None
    if address is not None and prefix is not None:
        base = src or ConsulSource(prefix)
        src = dataclasses.replace(
            base, address=address, prefix=kv_folder(prefix), token=token or base.token
        )
    if src is None:
        return load_documents(local)
    try:
        kv = asyncio.run(_read(src))
    except (ConsulError, ValueError) as exc:
        raise SourceUnavailable(str(exc)) from exc
    return load_with_kv(local, kv)


async def _read(src: ConsulSource) -> KvSnapshot:
    async with ConsulClient(settings_of(src)) as client:
        return await read_prefix(client, src.prefix)


def _from_cache(src: ConsulSource, why: str) -> KvSnapshot:
    if src.cache is None:
        raise SourceUnavailable(f"{why}, and config_source.consul has no cache to start from")
    try:
        kv = read_cache(src.cache, src.prefix)
    except ConfigError as exc:
        raise SourceUnavailable(f"{why}, and {exc}") from exc
    age = max(0.0, time.time() - kv.read_at)
    log.warning(
        "%s: starting from the cached config at %s (index %d, read %.0f s ago)",
        why,
        src.cache,
        kv.index,
        age,
    )
    return kv


class KvConfig:
    """The Server extension following the config source; `load` is what Server.reload reads."""

    def __init__(self, server: Any, loaded: Loaded) -> None:
        self.server = server
        cs = loaded.config.config_source
        self.source: ConsulSource | None = cs.consul if cs is not None else None
        if self.source is not None and loaded.kv is None:
            raise ValueError("a config with config_source is loaded by load_from_source()")
        self.latest = loaded.kv  # the newest documents Consul gave (or the cache, at boot)
        self.booted_from_cache = loaded.kv is not None and loaded.kv.from_cache
        self.client: ConsulClient | None = None
        self.watch: KvWatch | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._changed = asyncio.Event()
        self._cached: str | None = None  # digest of the documents the cache file holds
        self.cache_error: str | None = None

    def load(self) -> Loaded:
        """The local files merged with the newest KV documents (in an executor thread)."""
        local = read_files(self.server.config_path)
        found = source_of(local)
        now = found.consul if found is not None else None
        if now != self.source:
            mark = marks(found)[""] if found is not None else Mark(local[0][0], 1, 1)
            why = "changed since lb started: restart lb to follow it"
            raise ConfigError([Problem(mark, "config_source", why)])
        if self.latest is None:
            return load_documents(local)
        return load_with_kv(local, self.latest)

    # -- the Server extension interface ---------------------------------------------------------
    async def start(self) -> None:
        if self.source is None:
            return
        assert self.latest is not None
        self.client = ConsulClient(settings_of(self.source))
        self.watch = KvWatch(self.client, self.source.prefix, on_update=self._on_update)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self.watch.run()), loop.create_task(self._follow())]
        observe = getattr(self.server.admin, "observe", None)
        if observe is not None:
            observe.registry.register(self)
        if not self.latest.from_cache:
            await self._write_cache(self.latest)

    async def reconfigure(self) -> None:
        kv = self.server.runtime.loaded.kv
        if kv is not None and kv.digest != self._cached:
            await self._write_cache(kv)

    async def stop(self) -> None:
        """Before the drain: no reload is worth starting any more."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.client is not None:
            await self.client.close()
            self.client = None

    # -- following Consul -----------------------------------------------------------------------
    def _on_update(self, kv: KvSnapshot) -> None:
        changed = not kv.same_documents(self.latest)
        self.latest = kv
        if changed:
            self._changed.set()

    async def _follow(self) -> None:
        """One reload at a time; documents that arrive during one are read by the next."""
        while True:
            await self._changed.wait()
            self._changed.clear()
            # A shutdown stops following, but never cuts an apply in half.
            await asyncio.shield(self.server.reload())

    async def _write_cache(self, kv: KvSnapshot) -> None:
        assert self.source is not None
        if self.source.cache is None:
            return
        address = self.client.address if self.client is not None else self.source.address
        try:
            await asyncio.get_running_loop().run_in_executor(
                None, write_cache, self.source.cache, address, kv
            )
        except OSError as exc:
            self.cache_error = f"cannot write {self.source.cache}: {exc.strerror or exc}"
            log.error("KV cache: %s", self.cache_error)
            return
        self._cached = kv.digest
        self.cache_error = None

    # -- state for the admin API and metrics ----------------------------------------------------
    def stale_seconds(self, now: float) -> float:
        """0 while Consul answers; else how old the documents in hand are."""
        w = self.watch
        if w is None or self.latest is None:
            return 0.0
        if not w.stale and (w.synced or not self.booted_from_cache):
            return 0.0
        return max(0.0, now - (w.last_success or self.latest.read_at))

    def report(self) -> dict[str, Any] | None:
        src, w, kv = self.source, self.watch, self.server.runtime.loaded.kv
        if src is None or kv is None:
            return None
        last = w.last_success if w is not None else None
        if last is None and not kv.from_cache:
            last = kv.read_at  # the boot's own read
        return {
            "consul": {
                "address": self.client.address if self.client is not None else src.address,
                "prefix": src.prefix,
                "index": w.index if w is not None and w.index else kv.index,
                "keys": [name for name, _ in kv.documents],
                "digest": kv.digest,
                "booted_from_cache": self.booted_from_cache,
                "last_success": last,
                "stale_seconds": self.stale_seconds(time.time()),
                "error": w.last_error if w is not None and w.stale else None,
                "errors": w.errors if w is not None else 0,
                "cache": src.cache,
                "cache_error": self.cache_error,
            }
        }

    def collect(self) -> Iterator[Any]:
        """The prometheus-client collector protocol: lb_config_source_* per scrape."""
        w = self.watch
        if w is None:
            return
        yield GaugeMetricFamily(
            "lb_config_source_stale_seconds",
            "0 while Consul answers the config source's reads; else the age of the config in use.",
            value=self.stale_seconds(time.time()),
        )
        yield CounterMetricFamily(
            "lb_config_source_errors", "Failed reads of the config source.", value=w.errors
        )
        if w.last_success is not None:
            yield GaugeMetricFamily(
                "lb_config_source_last_success_timestamp_seconds",
                "Unix time of the last successful read of the config source.",
                value=w.last_success,
            )
