"""gRPC-shaped answers of lb's own: a gRPC client reads the status from trailers, not HTTP.

An error lb answers itself (no route, no backend, rate limit, timeout) to a request whose
content-type starts with application/grpc goes out as HTTP 200 with a trailers-only response
carrying grpc-status and grpc-message, as gRPC proxies (Envoy) do.
"""

import difflib

from . import responses

# HTTP status of lb's own answer -> gRPC status code (grpc/doc/statuscodes.md).
UNKNOWN = 2
_CODES = {
    503: 14,  # UNAVAILABLE
    502: 14,  # UNAVAILABLE (no connection, or the backend broke the call)
    429: 8,  # RESOURCE_EXHAUSTED
    413: 8,  # RESOURCE_EXHAUSTED
    504: 4,  # DEADLINE_EXCEEDED
    408: 4,  # DEADLINE_EXCEEDED
    404: 12,  # UNIMPLEMENTED
    400: 13,  # INTERNAL
}


# gRPC status codes by number (grpc/doc/statuscodes.md): the names metrics label them with.
NAMES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
)  # fmt: skip
# grpc-status as sent ("14") -> its name; anything else is labelled "other".
LABELS = {str(code): name for code, name in enumerate(NAMES)}
# The config's spelling, Envoy's (`retry_on: unavailable,resource-exhausted`) -> the code.
CONFIG_NAMES = {name.lower().replace("_", "-"): code for code, name in enumerate(NAMES)}


def parse_code(text: str) -> int:
    """A gRPC error status in the config: a name as Envoy spells it ("unavailable",
    "resource-exhausted") or its number, 1 to 16 (OK is no error)."""
    word = text.strip().lower().replace("_", "-")
    code = int(word) if word.isdigit() else CONFIG_NAMES.get(word, -1)
    if not 1 <= code <= 16:
        names = [n for n in CONFIG_NAMES if n != "ok"]
        hint = difflib.get_close_matches(word, names, n=1)
        extra = f' (did you mean "{hint[0]}"?)' if hint else ""
        raise ValueError(
            f'a gRPC status ({", ".join(names)}) or its code 1 to 16, found "{text}"{extra}'
        )
    return code


def status_code(headers: list[tuple[bytes, bytes]]) -> int:
    """The grpc-status in a header block (lower-case names, as HTTP/2 has them); -1: none."""
    for name, value in headers:
        if name == b"grpc-status":
            return int(value) if value.isdigit() and len(value) < 4 else -1
    return -1


def is_grpc(content_type: bytes | None) -> bool:
    return content_type is not None and content_type[:16].lower() == b"application/grpc"


def code_for(status: int) -> int:
    return _CODES.get(status, UNKNOWN)


def error_headers(status: int) -> list[tuple[bytes, bytes]]:
    """The header block of a trailers-only gRPC response for lb's HTTP `status`."""
    return [
        (b"content-type", b"application/grpc"),
        (b"grpc-status", str(code_for(status)).encode()),
        (b"grpc-message", f"{status} {responses.reason(status)}".encode()),
    ]
