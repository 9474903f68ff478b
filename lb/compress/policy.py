"""One route's `compress` settings, compiled: `Route.compress`, asked once per response head.

`begin` decides from the head alone, in one pass over its headers. Not compressed, and not
counted: 1xx, 204, 304 and HEAD (no body). Skipped, and counted by reason: a Content-Encoding
other than identity ("encoded"), 206 or a Content-Range ("range"), `Cache-Control:
no-transform` ("no_transform"), a content type not listed or none ("type"), a known length
below `min_size` ("small"), and a client that accepts none of the route's codecs
("not_accepted"). A body of unknown length is compressed.

A response that would be compressed for some client says `Vary: Accept-Encoding` (added to
the backend's Vary unless it names it or is `*`), whichever client asked. A compressed one
loses its Content-Length (the client side then frames it: chunked on HTTP/1.1) and
Accept-Ranges (its ranges would be of the uncompressed body), gains Content-Encoding, and a
strong ETag becomes weak (`"x"` -> `W/"x"`): the bytes differ from the backend's, the
representation does not (RFC 9110 8.8.1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config.shape_model import Compress
from ..observe.metrics import Counters
from ..proxy.headers import lower_name
from . import metrics
from .codecs import BrotliStream, GzipStream, Stream, ZstdStreams
from .encoder import Encoder
from .media import MediaTypes
from .negotiate import Negotiator

if TYPE_CHECKING:
    from ..proxy.exchange import Exchange

Headers = list[tuple[bytes, bytes]]
_VARY = b"Accept-Encoding"


def _names_accept_encoding(vary: bytes) -> bool:
    for token in vary.split(b","):
        token = token.strip().lower()
        if token == b"accept-encoding" or token == b"*":
            return True
    return False


def _accept_encoding(headers: Headers) -> bytes | None:
    found: bytes | None = None
    for name, value in headers:
        if len(name) == 15 and lower_name(name) == b"accept-encoding":
            found = value if found is None else found + b"," + value
    return found


class CompressPolicy:
    __slots__ = (
        "_bytes", "_compressed", "_keys", "_skipped", "cfg", "levels", "media", "min_size",
        "negotiator", "route", "zstd",
    )  # fmt: skip

    def __init__(self, cfg: Compress, route: str, counters: Counters) -> None:
        self.cfg = cfg
        self.route = route
        self.min_size = cfg.min_size
        self.levels = cfg.levels
        self.media = MediaTypes(cfg.types)
        self.negotiator = Negotiator(tuple(cfg.codecs))
        self.zstd = ZstdStreams(cfg.levels.zstd)
        self._compressed = counters[metrics.RESPONSES]
        self._bytes = counters[metrics.BYTES]
        self._skipped = counters[metrics.SKIPPED]
        # (route, codec) and the in / out keys of its bytes, made once
        self._keys = {
            c: ((route, c), (route, c, "in"), (route, c, "out")) for c in self.negotiator.codecs
        }

    def begin(self, ex: Exchange, status: int, headers: Headers, length: int | None) -> int | None:
        """The response head before it goes out: edited in place when the body is to be
        compressed (then `ex.encoder` is set); the body length to announce (None: unknown)."""
        if status < 200 or status == 204 or status == 304 or ex.method == b"HEAD":
            return length
        ctype: bytes | None = None
        etag = vary = ranges = -1
        for i, (name, value) in enumerate(headers):
            low = lower_name(name)
            if low == b"content-type":
                ctype = value
            elif low == b"content-encoding":
                if value.strip().lower() != b"identity":
                    return self._skip("encoded", length)
            elif low == b"content-range":
                return self._skip("range", length)
            elif low == b"cache-control":
                if b"no-transform" in value.lower():
                    return self._skip("no_transform", length)
            elif low == b"etag":
                etag = i
            elif low == b"vary":
                vary = -2 if vary == -2 or _names_accept_encoding(value) else i
            elif low == b"accept-ranges":
                ranges = i
        if status == 206:
            return self._skip("range", length)
        if ctype is None or not self.media.match(ctype):
            return self._skip("type", length)
        if length is not None and length < self.min_size:
            return self._skip("small", length)
        if vary >= 0:
            headers[vary] = (headers[vary][0], headers[vary][1] + b", " + _VARY)
        elif vary == -1:
            headers.append((b"vary", _VARY))
        accept = _accept_encoding(ex.info.forward)
        codec = None if accept is None else self.negotiator.codec_for(accept)
        if codec is None:
            return self._skip("not_accepted", length)
        if etag >= 0:
            name, value = headers[etag]
            if value.startswith(b'"'):
                headers[etag] = (name, b"W/" + value)
        if ranges >= 0:
            del headers[ranges]
        headers.append((b"content-encoding", codec.encode()))
        key, key_in, key_out = self._keys[codec]
        self._compressed[key] += 1
        ex.encoder = Encoder(ex, self._stream(codec, length), self._bytes, key_in, key_out)
        return None

    def _stream(self, codec: str, length: int | None) -> Stream:
        if codec == "gzip":
            return GzipStream(self.levels.gzip)
        if codec == "br":
            return BrotliStream(self.levels.br)
        return self.zstd.open(-1 if length is None else length)

    def _skip(self, reason: str, length: int | None) -> int | None:
        self._skipped[(self.route, reason)] += 1
        return length
