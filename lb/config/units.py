"""Human units in the YAML: durations ("250ms", "1m30s"), sizes ("64KiB"), rates ("100/s")."""

import re

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|h|m|s)")
_DURATION_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|TiB|KB|MB|GB|TB|k|K|M|G)?")
_SIZE_BYTES = {
    None: 1,
    "B": 1,
    "KiB": 1 << 10,
    "MiB": 1 << 20,
    "GiB": 1 << 30,
    "TiB": 1 << 40,
    "k": 1 << 10,
    "K": 1 << 10,
    "M": 1 << 20,
    "G": 1 << 30,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
}
_RATE = re.compile(r"(\d+(?:\.\d+)?)\s*/\s*(\d*(?:\.\d+)?)\s*(ms|s|m|h|second|minute|hour)?")
_RATE_UNIT = {
    None: 1.0,
    "s": 1.0,
    "second": 1.0,
    "ms": 1e-3,
    "m": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
}


def parse_duration(text: str) -> float:
    """Seconds from a Go-style duration; a bare number is seconds."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_SECONDS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f'a duration like "250ms", "30s" or "1m30s", found "{text}"')
    return total


def parse_size(text: str) -> int:
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise ValueError(f'a size like "64KiB" or "10MiB", found "{text}"')
    return int(float(m.group(1)) * _SIZE_BYTES[m.group(2)])


def parse_rate(text: str) -> tuple[float, float]:
    """(count, period seconds) from "100/s", "6000/1m", "10/500ms"."""
    m = _RATE.fullmatch(text.strip())
    if not m or (not m.group(2) and not m.group(3)):
        raise ValueError(f'a rate like "100/s" or "6000/1m", found "{text}"')
    count = float(m.group(1))
    scale = float(m.group(2)) if m.group(2) else 1.0
    period = scale * _RATE_UNIT[m.group(3)]
    if count <= 0 or period <= 0:
        raise ValueError(f'a positive rate, found "{text}"')
    return count, period
