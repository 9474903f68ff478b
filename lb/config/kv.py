"""Config documents from a Consul KV prefix: naming, merging after the local files, the cache.

Every key under the prefix is one YAML document, named `consul:<key>` in problems
(`consul:lb/config/20-routes:12:3: routes[1].service: unknown service "paymnets"`). The
documents merge after the local files in key order, exactly as a config directory's files do
(lb/config/load.py), and their bytes are in the config hash.

The cache holds the last documents lb applied, as JSON (which is YAML too): written to a
temporary file beside it, fsynced and renamed over, so a crash mid-write leaves the previous
copy whole. It is what lb boots from when Consul cannot be reached.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from .errors import ConfigError, Mark, Problem
from .load import Document, Loaded, compose, load_documents
from .schema import Builder, marks
from .source_model import ConfigSource

NAME_PREFIX = "consul:"
CACHE_FORMAT = 1


@dataclass(frozen=True)
class KvSnapshot:
    """The documents under a prefix as Consul gave them at `index` (or the cache kept them)."""

    prefix: str
    index: int
    documents: tuple[Document, ...]  # ("consul:<key>", value) in key order
    read_at: float  # wall-clock time Consul answered with them
    from_cache: bool = False

    @property
    def digest(self) -> str:
        """What two lb instances compare to know they hold the same KV config."""
        h = hashlib.sha256()
        for name, raw in self.documents:
            h.update(name.encode() + b"\0" + hashlib.sha256(raw).digest())
        return h.hexdigest()

    def same_documents(self, other: KvSnapshot | None) -> bool:
        return other is not None and other.documents == self.documents


def kv_documents(entries: list[tuple[str, bytes]]) -> tuple[Document, ...]:
    """(key, value) pairs as documents in key order; folder placeholders ("a/b/", as the
    Consul UI creates them) hold no document."""
    return tuple((NAME_PREFIX + k, v) for k, v in sorted(entries) if not k.endswith("/"))


def source_of(local: list[Document]) -> ConfigSource | None:
    """The `config_source` block of the local files, read before anything else."""
    for name, raw in local:
        node = compose(name, raw)
        if not isinstance(node, yaml.MappingNode):
            continue
        for knode, vnode in node.value:
            if knode.value == "config_source":
                b = Builder()
                source = b.build(ConfigSource, vnode, "config_source")
                errors = [p for p in b.problems if p.severity == "error"]
                if errors or source is None:
                    raise ConfigError(errors or b.problems)
                return source  # type: ignore[no-any-return]
    return None


def load_with_kv(local: list[Document], kv: KvSnapshot) -> Loaded:
    """The local files, then the KV documents, merged and validated as one config."""
    if not kv.documents:
        raise ConfigError(
            [
                Problem(
                    Mark(NAME_PREFIX + kv.prefix, 1, 1),
                    "",
                    "no keys under the prefix: an empty config source is refused "
                    "(a Consul that lost its data looks like this)",
                )
            ]
        )
    loaded = load_documents([*local, *kv.documents], kv=kv)
    src = loaded.config.config_source
    if src is not None and marks(src)[""].file.startswith(NAME_PREFIX):
        raise ConfigError(
            [Problem(marks(src)[""], "config_source", "set it in the local files (lb run -c)")]
        )
    return loaded


def write_cache(path: str, address: str, kv: KvSnapshot) -> None:
    """Replace the cache atomically: a reader sees the old copy or the new one, never part."""
    data = {
        "format": CACHE_FORMAT,
        "address": address,
        "prefix": kv.prefix,
        "index": kv.index,
        "read_at": kv.read_at,
        "written_at": time.time(),
        "documents": [
            {"key": name[len(NAME_PREFIX) :], "value": raw.decode("utf-8")}
            for name, raw in kv.documents
        ],
    }
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)


def read_cache(path: str, prefix: str) -> KvSnapshot:
    """The cached documents of `prefix`; ConfigError (naming the file) if unusable."""

    def bad(message: str) -> ConfigError:
        return ConfigError([Problem(Mark(path, 1, 1), "", f"KV cache: {message}")])

    try:
        data = json.loads(Path(path).read_bytes())
    except OSError as exc:
        raise bad(f"cannot read: {exc.strerror}") from exc
    except ValueError as exc:
        raise bad(f"not JSON: {exc}") from exc
    try:
        if data["format"] != CACHE_FORMAT:
            raise bad(f"format {data['format']!r}, expected {CACHE_FORMAT}")
        if data["prefix"] != prefix:
            raise bad(f'it holds the prefix "{data["prefix"]}", not "{prefix}"')
        entries = [(str(d["key"]), str(d["value"]).encode("utf-8")) for d in data["documents"]]
        return KvSnapshot(
            prefix, int(data["index"]), kv_documents(entries), float(data["read_at"]), True
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise bad(f"unexpected content ({exc!r})") from exc
