"""The content types a route compresses: `type/subtype`, `type/*`, and `type/*+suffix`
(`application/*+json` takes application/problem+json, application/ld+json, ...). Compiled
at load into sets; a response's type (parameters dropped, case folded) is judged once per
distinct Content-Type value, in a bounded table.
"""

from __future__ import annotations

_CACHE_SIZE = 512


class MediaTypes:
    __slots__ = ("_exact", "_suffixes", "_verdicts", "_whole")

    def __init__(self, patterns: list[str]) -> None:
        self._exact: set[str] = set()
        self._whole: set[str] = set()  # types listed as "type/*"
        self._suffixes: set[tuple[str, str]] = set()  # (type, "+suffix")
        for pattern in patterns:
            kind, _, sub = pattern.lower().partition("/")
            if sub == "*":
                self._whole.add(kind)
            elif sub.startswith("*+"):
                self._suffixes.add((kind, sub[1:]))
            else:
                self._exact.add(f"{kind}/{sub}")
        self._verdicts: dict[bytes, bool] = {}

    def match(self, content_type: bytes) -> bool:
        verdicts = self._verdicts
        try:
            return verdicts[content_type]
        except KeyError:
            pass
        media = content_type.decode("latin-1").partition(";")[0].strip().lower()
        kind, _, sub = media.partition("/")
        plus = sub.rfind("+")
        ok = (
            media in self._exact
            or kind in self._whole
            or (plus > 0 and (kind, sub[plus:]) in self._suffixes)
        )
        if len(verdicts) >= _CACHE_SIZE:
            verdicts.clear()
        verdicts[content_type] = ok
        return ok
