"""What a forwarding route may do besides forwarding: compress the response
(`routes[].compress`, lb/compress) and copy the request to a shadow service
(`routes[].mirror`, lb/mirror). Both are compiled at load into the route (`Route.compress`,
`Route.mirror`); a route without them pays nothing for them.
"""

import re
from dataclasses import dataclass, field
from typing import Annotated, Literal

from .fieldtypes import Duration, Percent, Positive, Report, Size
from .schema import Check

Codec = Literal["zstd", "br", "gzip"]
# Text-like types; text/event-stream is left out (it is not worth compressing per event),
# though listing it works: every chunk is flushed as it arrives.
DEFAULT_TYPES = (
    "text/html", "text/plain", "text/css", "text/csv", "text/xml", "text/markdown",
    "text/javascript", "application/javascript", "application/json", "application/*+json",
    "application/xml", "application/*+xml", "application/wasm", "image/svg+xml",
)  # fmt: skip
_TOKEN = r"[a-z0-9!#$&^_.+-]+"
_MEDIA_PATTERN = re.compile(rf"{_TOKEN}/(\*|\*\+{_TOKEN}|{_TOKEN})")


@dataclass
class CompressLevels:
    gzip: Annotated[int, Check(lambda v: 1 <= v <= 9, "a gzip level from 1 to 9")] = 6
    br: Annotated[int, Check(lambda v: 0 <= v <= 11, "a brotli quality from 0 to 11")] = 4
    # Above 19 zstd's window may outgrow the 8 MiB that browsers decode (RFC 9659 3)
    zstd: Annotated[int, Check(lambda v: 1 <= v <= 19, "a zstd level from 1 to 19")] = 3


@dataclass
class Compress:
    codecs: list[Codec] = field(default_factory=lambda: ["zstd", "br", "gzip"])  # ties: first
    min_size: Size = 1024  # a known length below this is sent as it is
    types: list[str] = field(default_factory=lambda: list(DEFAULT_TYPES))
    levels: CompressLevels = field(default_factory=CompressLevels)

    def check(self, report: Report) -> None:
        from ..compress.codecs import missing

        if not self.codecs:
            report("codecs", "list at least one of zstd, br, gzip")
        if len(set(self.codecs)) != len(self.codecs):
            report("codecs", "a codec is listed twice")
        for codec in self.codecs:
            package = missing(codec)
            if package is not None:
                report("codecs", f'{codec} needs the "{package}" package, which is not installed')
        if not self.types:
            report("types", "list at least one content type")
        for t in self.types:
            if not _MEDIA_PATTERN.fullmatch(t.lower()):
                expected = '"type/subtype", "type/*" or "type/*+suffix"'
                report("types", f'expected {expected}, found "{t}"')


@dataclass
class Mirror:
    service: str  # the shadow service; its Host is the request's with "-shadow" appended
    percent: Percent = 100.0  # of the route's forwarded requests, spread evenly
    max_body: Size = 64 * 1024  # a larger request body is not mirrored
    max_in_flight: Positive = 64  # copies under way at once; beyond, not mirrored
    timeout: Duration = 5.0  # for a copy's whole exchange with the shadow

    def check(self, report: Report) -> None:
        if self.timeout <= 0:
            report("timeout", "expected a positive duration")
