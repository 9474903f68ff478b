"""Blocking reads of a Consul KV prefix: the documents of `config_source` (lb/config/kv.py).

`KvWatch` follows `GET /v1/kv/<prefix>?recurse` with the same loop, pacing, backoff and index
handling as the service and catalog watches (consul.BlockingWatch): it hands on a new
`KvSnapshot` only when the documents changed, never on an error. `read_prefix` is the one-shot
read of `lb check` and of a boot.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable
from typing import Any

from ..config.kv import KvSnapshot, kv_documents
from .consul import BlockingWatch, ConsulClient, ConsulError


def entries_of(prefix: str, data: Any) -> list[tuple[str, bytes]]:
    """(key, value) pairs of a recurse answer (None: no keys); ConsulError if malformed."""
    if data is None:
        return []
    if not isinstance(data, list):
        raise ConsulError(f"unexpected answer for the KV prefix {prefix!r}: not a list")
    out = []
    for entry in data:
        try:
            key, value = entry["Key"], entry.get("Value")
            out.append((str(key), base64.b64decode(value, validate=True) if value else b""))
        except (KeyError, TypeError, AttributeError, binascii.Error) as exc:
            raise ConsulError(f"unexpected KV entry under {prefix!r}: {exc!r}") from exc
    return out


async def read_prefix(client: ConsulClient, prefix: str) -> KvSnapshot:
    """The documents under `prefix` now (a plain read); ConsulError if Consul fails."""
    index, data = await client.kv_tree(prefix)
    return KvSnapshot(prefix, index, kv_documents(entries_of(prefix, data)), time.time())


class KvWatch(BlockingWatch[tuple[tuple[str, bytes], ...]]):
    """on_update(snapshot) after the first answer, then whenever the documents change (a
    write that leaves every value as it was moves the index only, and is not handed on)."""

    def __init__(
        self,
        client: ConsulClient,
        prefix: str,
        *,
        on_update: Callable[[KvSnapshot], None],
        on_error: Callable[[Exception], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            client, datacenter=None, on_update=on_update, on_error=on_error, clock=clock
        )
        self.prefix = prefix

    @property
    def name(self) -> str:
        return f"consul KV {self.prefix!r}"

    async def _fetch(self, index: int) -> tuple[int, Any]:
        return await self.client.kv_tree(self.prefix, index=index)

    def _convert(self, data: Any) -> tuple[tuple[str, bytes], ...]:
        return kv_documents(entries_of(self.prefix, data))

    def _publish(self, value: tuple[tuple[str, bytes], ...]) -> None:
        self._on_update(KvSnapshot(self.prefix, self.index, value, time.time()))
