"""gRPC-shaped answers of lb's own: a gRPC client reads the status from trailers, not HTTP.

An error lb answers itself (no route, no backend, rate limit, timeout) to a request whose
content-type starts with application/grpc goes out as HTTP 200 with a trailers-only response
carrying grpc-status and grpc-message, as gRPC proxies (Envoy) do.
"""

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
