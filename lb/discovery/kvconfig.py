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

A reload follows a changed `config_source` as it follows any other setting. Whose files add or
change it reads the new source's documents once, in the executor thread of the reload with a
loop and a client of its own (as the boot does), bounded by RELOAD_READ_TIMEOUT; Consul
unreachable, the new source's cache stands in, and without a usable one the reload is refused
naming the config_source line. The merged config is validated like any reload, and only once
it is applied does the watch move: the old watch and its client stop, a new one follows the new
source (`reconfigure`). Removing config_source stops the watch: the config is the local files
alone. A refused reload changes nothing: the old watch keeps going, and since every reload
reads the files, edits under the old prefix apply again once the files name a source that can
be read (or the old one again).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..config.errors import ConfigError, Problem
from ..config.kv import KvSnapshot, load_with_kv, read_cache, source_of, write_cache
from ..config.load import Document, Loaded, load_documents, read_files
from ..config.schema import marks
from ..config.source_model import ConfigSource, ConsulSource, kv_folder
from .consul import ConsulClient, ConsulError, settings_for
from .kvwatch import KvWatch, read_prefix

log = logging.getLogger(__name__)

# The whole one-shot read of a reload (connection, TLS, answer): a reload holds the reload lock
# while it reads, and the supervisor of `lb run --workers N` waits 10 s for each worker's.
RELOAD_READ_TIMEOUT = 5.0


class SourceUnavailable(Exception):
    """Consul cannot be read at boot and there is no usable cache: lb cannot start."""


async def load_from_source(path: str) -> Loaded:
    """The config lb starts with: the local files, and the KV documents their config_source
    names, from Consul or else from the cache. Raises ConfigError or SourceUnavailable."""
    local = read_files(path)
    source = source_of(local)
    if source is None:
        return load_documents(local)
    return load_with_kv(local, await _snapshot(source.consul, None, "start from"))


def load_at_boot(path: str) -> Loaded:
    """load_from_source for `lb run`, before its event loop starts (a loop of its own only
    when there is Consul to read)."""
    local = read_files(path)
    source = source_of(local)
    if source is None:
        return load_documents(local)
    return load_with_kv(local, asyncio.run(_snapshot(source.consul, None, "start from")))


def load_for_reload(path: str) -> Loaded:
    """What the supervisor of `lb run --workers N` validates a reload with: the files, and the
    documents their config_source holds now (read as a worker reads a new source)."""
    local = read_files(path)
    return _load_reading(local, source_of(local))


def _load_reading(local: list[Document], found: ConfigSource | None) -> Loaded:
    """The files merged with what `found` holds now, read once in a loop of this thread (a
    reload's executor thread: a client belongs to the loop it was made in), else from its
    cache; neither: ConfigError naming the config_source line."""
    if found is None:
        return load_documents(local)
    try:
        kv = asyncio.run(_snapshot(found.consul, RELOAD_READ_TIMEOUT, "reload from"))
    except (SourceUnavailable, ValueError) as exc:
        raise ConfigError([Problem(marks(found)[""], "config_source", str(exc))]) from exc
    return load_with_kv(local, kv)


async def _snapshot(src: ConsulSource, timeout: float | None, purpose: str) -> KvSnapshot:
    """What Consul holds under the prefix, else the cache ("start from" or "reload from")."""
    try:
        return await _read(src, timeout)
    except ConsulError as exc:
        return _from_cache(src, str(exc), purpose)


def load_for_check(
    path: str | None, address: str | None, prefix: str | None, token: str | None
) -> Loaded:
    """What `lb check` validates: the files, merged with what Consul stores under the prefix
    given (else under the one their config_source names); no cache: it checks Consul."""
    local = read_files(path) if path is not None else []
    found = source_of(local)
    src = found.consul if found is not None else None
    if address is not None and prefix is not None:
        base = src or ConsulSource(prefix=prefix)
        src = dataclasses.replace(
            base, address=address, prefix=kv_folder(prefix), token=token or base.token
        )
    if src is None:
        return load_documents(local)
    try:
        kv = asyncio.run(_read(src, None))
    except (ConsulError, ValueError) as exc:
        raise SourceUnavailable(str(exc)) from exc
    return load_with_kv(local, kv)


async def _read(src: ConsulSource, timeout: float | None) -> KvSnapshot:
    """One read of the prefix; timeout: a bound on all of it (None: the client's own)."""
    async with ConsulClient(settings_for(src)) as client:
        try:
            async with asyncio.timeout(timeout):
                return await read_prefix(client, src.prefix)
        except TimeoutError:
            raise ConsulError(
                f"Consul at {client.address} did not answer within {timeout:g} s"
            ) from None


def _from_cache(src: ConsulSource, why: str, purpose: str) -> KvSnapshot:
    if src.cache is None:
        raise SourceUnavailable(f"{why}, and config_source.consul has no cache to {purpose}")
    try:
        kv = read_cache(src.cache, src.prefix)
    except ConfigError as exc:
        raise SourceUnavailable(f"{why}, and {exc}") from exc
    age = max(0.0, time.time() - kv.read_at)
    log.warning(
        "%s: using the cached config at %s to %s (index %d, read %.0f s ago)",
        why,
        src.cache,
        purpose,
        kv.index,
        age,
    )
    return kv


@dataclass
class _Move:
    """A loaded config whose config_source is new, and the watch prepared for it (None: the
    config has none any more); the watch moves when `Server.reload` has applied `loaded`."""

    loaded: Loaded
    source: ConsulSource | None
    client: ConsulClient | None
    watch: KvWatch | None


class KvConfig:
    """The Server extension following the config source; `load` is what Server.reload reads.

    `source`, `client` and `watch` are those of the config in force (None without a source);
    `booted_from_cache` says whether this source's first documents came from the cache (at
    boot, or when a reload moved to it)."""

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
        self._watching: asyncio.Task[None] | None = None
        self._following: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._cached: str | None = None  # digest of the documents the cache file holds
        self.cache_error: str | None = None
        self._move: _Move | None = None  # set by load(), taken by reconfigure()
        self._past_errors = 0  # failed reads of the sources followed before this one
        self._stopped = False

    def load(self) -> Loaded:
        """The local files merged with the newest KV documents (in an executor thread)."""
        self._move = None
        local = read_files(self.server.config_path)
        found = source_of(local)
        now = found.consul if found is not None else None
        if now == self.source:
            if self.latest is None:
                return load_documents(local)
            return load_with_kv(local, self.latest)
        loaded = _load_reading(local, found)
        # Prepared here, where a failure still refuses the reload; started once applied.
        client: ConsulClient | None = None
        watch: KvWatch | None = None
        if now is not None:
            client = ConsulClient(settings_for(now))
            watch = self._watch(client, now.prefix)
        self._move = _Move(loaded, now, client, watch)
        return loaded

    def _watch(self, client: ConsulClient, prefix: str) -> KvWatch:
        def on_update(kv: KvSnapshot) -> None:
            if watch is self.watch:  # an answer to a watch already replaced is not handed on
                self._on_update(kv)

        watch = KvWatch(client, prefix, on_update=on_update)
        return watch

    # -- the Server extension interface ---------------------------------------------------------
    async def start(self) -> None:
        self._following = asyncio.get_running_loop().create_task(self._follow())
        observe = getattr(self.server.admin, "observe", None)
        if observe is not None:
            observe.registry.register(self)  # collects nothing while there is no source
        if self.source is None:
            return
        assert self.latest is not None
        self.client = ConsulClient(settings_for(self.source))
        self.watch = self._watch(self.client, self.source.prefix)
        self._watching = asyncio.get_running_loop().create_task(self.watch.run())
        if not self.latest.from_cache:
            await self._write_cache(self.latest)

    async def reconfigure(self) -> None:
        move, self._move = self._move, None
        loaded = self.server.runtime.loaded
        if move is not None and move.loaded is loaded:
            await self._move_to(move)
        kv = loaded.kv
        if kv is not None and kv.digest != self._cached:
            await self._write_cache(kv)

    async def stop(self) -> None:
        """Before the drain: no reload is worth starting any more."""
        self._stopped = True
        tasks = [t for t in (self._watching, self._following) if t is not None]
        self._watching = self._following = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.client is not None:
            await self.client.close()
            self.client = None

    # -- following Consul -----------------------------------------------------------------------
    async def _move_to(self, move: _Move) -> None:
        """The applied config names another source (or none): follow it from now on."""
        old_task, old_client, old_watch = self._watching, self.client, self.watch
        kv = move.loaded.kv
        self.source, self.client, self.watch = move.source, move.client, move.watch
        self.latest = kv
        self.booted_from_cache = kv is not None and kv.from_cache
        self._cached = kv.digest if kv is not None and kv.from_cache else None
        self.cache_error = None
        self._changed.clear()  # a change the old watch saw is no change of the new source
        if old_watch is not None:
            self._past_errors += old_watch.errors
        self._watching = None
        # A reload already under way when the shutdown began still applies, but starts nothing.
        if self.watch is not None and not self._stopped:
            self._watching = asyncio.get_running_loop().create_task(self.watch.run())
        if old_task is not None:
            old_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await old_task
        if old_client is not None:
            await old_client.close()
        if self.client is None or self.source is None:
            log.info("config_source removed: the config is the local files alone")
        else:
            log.info("config_source: following %r at %s", self.source.prefix, self.client.address)

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
            "lb_config_source_errors",
            "Failed reads of the config source (of every source followed since lb started).",
            value=self._past_errors + w.errors,
        )
        if w.last_success is not None:
            yield GaugeMetricFamily(
                "lb_config_source_last_success_timestamp_seconds",
                "Unix time of the last successful read of the config source.",
                value=w.last_success,
            )
