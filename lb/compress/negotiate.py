"""Which coding a client accepts, from its Accept-Encoding (RFC 9110 12.5.3).

Each of the route's codecs gets the q-value the header gives it by name (`x-gzip` counts as
gzip), else the value of `*`, else 0; q=0 excludes it. The highest q wins, the route's order
breaks ties. `identity` listed with a higher q than the best codec keeps the response as it
is; no header, an empty one, or nothing acceptable: as it is too.

Browsers send the same few header values over and over: the verdict is kept per value, in a
bounded table.
"""

from __future__ import annotations

_ALIASES = {"x-gzip": "gzip"}
_CACHE_SIZE = 512


def parse(header: str) -> dict[str, float]:
    """Coding -> q-value; a malformed element is ignored, a malformed q counts as 0."""
    out: dict[str, float] = {}
    for element in header.split(","):
        name, _, params = element.partition(";")
        name = name.strip().lower()
        if not name:
            continue
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = min(max(float(value.strip()), 0.0), 1.0)
                except ValueError:
                    q = 0.0
        name = _ALIASES.get(name, name)
        out[name] = max(q, out.get(name, 0.0))
    return out


def choose(accepted: dict[str, float], codecs: tuple[str, ...]) -> str | None:
    """The codec to use, or None for the response as it is."""
    star = accepted.get("*", 0.0)
    best, best_q = None, 0.0
    for codec in codecs:
        q = accepted.get(codec, star)
        if q > best_q:
            best, best_q = codec, q
    if best is not None and accepted.get("identity", 0.0) > best_q:
        return None
    return best


class Negotiator:
    """`choose` for one route's codecs, remembered per Accept-Encoding value."""

    __slots__ = ("_verdicts", "codecs")

    def __init__(self, codecs: tuple[str, ...]) -> None:
        self.codecs = codecs
        self._verdicts: dict[bytes, str | None] = {}

    def codec_for(self, header: bytes) -> str | None:
        verdicts = self._verdicts
        try:
            return verdicts[header]
        except KeyError:
            pass
        codec = choose(parse(header.decode("latin-1")), self.codecs)
        if len(verdicts) >= _CACHE_SIZE:
            verdicts.clear()  # bounded: a client inventing values cannot grow it
        verdicts[header] = codec
        return codec
