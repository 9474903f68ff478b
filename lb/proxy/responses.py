"""Responses lb writes itself: errors, redirects, fixed pages. Built once where possible."""

from http import HTTPStatus

TEXT = b"text/plain; charset=utf-8"


def reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def build(
    status: int,
    body: bytes,
    *,
    close: bool,
    extra: bytes = b"",
    content_type: bytes | None = TEXT,
    head_only: bool = False,
) -> bytes:
    """A complete HTTP/1.1 response; `extra` holds ready header lines ("name: value\\r\\n").
    `content_type` None: `extra` carries its own."""
    head = (
        f"HTTP/1.1 {status} {reason(status)}\r\n".encode()
        + extra
        + (b"content-type: " + content_type + b"\r\n" if content_type is not None else b"")
        + b"content-length: "
        + str(len(body)).encode()
        + b"\r\n"
        + (b"connection: close\r\n\r\n" if close else b"\r\n")
    )
    return head if head_only else head + body


_CACHE: dict[tuple[int, bool], bytes] = {}


def error_body(status: int) -> bytes:
    return f"{status} {reason(status)}\n".encode()


def error(status: int, close: bool) -> bytes:
    """The short canned error page for a status; these never vary, so they are cached."""
    key = (status, close)
    cached = _CACHE.get(key)
    if cached is None:
        cached = _CACHE[key] = build(status, error_body(status), close=close)
    return cached
