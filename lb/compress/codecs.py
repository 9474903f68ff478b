"""The three content codings as streams: `step(data)` compresses one upstream chunk and
flushes it (a client sees each chunk as soon as the backend sent it: server-sent events and
other streamed answers are not held back), `finish()` ends the stream.

gzip is zlib (wbits 31: the gzip wrapper); br is Google's `brotli` bindings, zstd is
`zstandard` (python-zstandard). All three release the GIL while they compress, so a stream
may be stepped in a worker thread (encoder.py) while the loop runs on.

A zstd stream needs a `ZstdCompressor`, whose context is 20-35 µs to make and may serve one
stream at a time: `ZstdStreams` keeps the finished ones for the next response.
"""

from __future__ import annotations

import zlib
from typing import Protocol

try:
    import brotli
except ImportError:  # pragma: no cover - a dependency; the config check names it when missing
    brotli = None
try:
    import zstandard
except ImportError:  # pragma: no cover - likewise
    zstandard = None

NAMES = ("zstd", "br", "gzip")
# Brotli's window: 512 KiB, as ngx_brotli's default, instead of the library's 4 MiB, so that
# a streamed response holds a bounded buffer whatever its size.
BROTLI_WINDOW = 19
KEEP_ZSTD = 16  # finished zstd compressors kept per (route, level) for reuse


def missing(codec: str) -> str | None:
    """The package a codec needs and cannot import, if any."""
    if codec == "br" and brotli is None:
        return "brotli"
    if codec == "zstd" and zstandard is None:
        return "zstandard"
    return None


class Stream(Protocol):
    def step(self, data: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


class GzipStream:
    __slots__ = ("_z",)

    def __init__(self, level: int) -> None:
        self._z = zlib.compressobj(level, zlib.DEFLATED, 31)

    def step(self, data: bytes) -> bytes:
        z = self._z
        return z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._z.flush(zlib.Z_FINISH)


class BrotliStream:
    __slots__ = ("_c",)

    def __init__(self, level: int) -> None:
        self._c = brotli.Compressor(quality=level, lgwin=BROTLI_WINDOW)

    def step(self, data: bytes) -> bytes:
        c = self._c
        return c.process(data) + c.flush()

    def finish(self) -> bytes:
        return self._c.finish()


class ZstdStream:
    __slots__ = ("_c", "_owner", "_pool")

    def __init__(self, pool: ZstdStreams, owner: object, size: int) -> None:
        self._pool = pool
        self._owner = owner
        # A known length lets zstd size its window and block to the body; -1: unknown.
        self._c = owner.compressobj(size=size)  # type: ignore[attr-defined]

    def step(self, data: bytes) -> bytes:
        c = self._c
        return c.compress(data) + c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)

    def finish(self) -> bytes:
        out: bytes = self._c.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)
        self._pool.give_back(self._owner)
        return out


class ZstdStreams:
    """Compressors of one level for one route's streams: one each, reused once finished."""

    __slots__ = ("_free", "level")

    def __init__(self, level: int) -> None:
        self.level = level
        self._free: list[object] = []

    def open(self, size: int) -> ZstdStream:
        owner = self._free.pop() if self._free else zstandard.ZstdCompressor(level=self.level)
        return ZstdStream(self, owner, size)

    def give_back(self, owner: object) -> None:
        if len(self._free) < KEEP_ZSTD:
            self._free.append(owner)
