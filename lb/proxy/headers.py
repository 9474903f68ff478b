"""Request and response head rules: framing checks, hop-by-hop removal, forwarding headers.

One pass over the header list per message; everything that does not depend on the request
(the proxy's own header names, the id prefix) is built at import or connection time.
"""

import os
import re
from itertools import count
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..tracing.context import TraceContext

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
    }
)
# Replaced by lb's own values on the way to the backend.
OVERRIDDEN = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-request-id", b"host"}
)
# Forwarded as they are, and noted on the way for the edge policies (basic auth, JWT), so that
# those do not scan the headers again.
CREDENTIALS = frozenset({b"authorization", b"cookie"})
# Forwarded as they are and noted for tracing (lb/tracing/context.py), which rewrites them
# only when a request carries them.
TRACE_CONTEXT = frozenset({b"traceparent", b"tracestate"})
_SPECIAL = HOP_BY_HOP | OVERRIDDEN | CREDENTIALS | TRACE_CONTEXT | {b"expect"}


def _name_filter(names: frozenset[bytes]) -> bytes:
    """A table that rules out most header names without hashing them: indexed by the name's
    length (under 32) and its first byte's low five bits (so letters of either case agree).
    A zero says the name is none of `names`; a one says it may be, and the set decides."""
    table = bytearray(32 * 32)
    for name in names:
        table[len(name) << 5 | (name[0] & 31)] = 1
    return bytes(table)


_REQUEST_FILTER = _name_filter(_SPECIAL)
_RESPONSE_FILTER = _name_filter(HOP_BY_HOP)
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
# Request ids are process-unique and cheap: a random per-process prefix and a counter.
_ID_PREFIX = os.urandom(6).hex().encode()
_ids = count(1)


_LOWER: dict[bytes, bytes] = {}


def lower_name(name: bytes) -> bytes:
    """Lower-cased header name, cached: the same few spellings arrive on every message."""
    low = _LOWER.get(name)
    if low is None:
        low = name.lower()
        if len(_LOWER) < 4096:  # bounded against clients that invent names
            _LOWER[name] = low
    return low


class VersionSource(Protocol):
    """What is_http10 asks of the parser (httptools' HttpRequestParser)."""

    def get_http_version(self) -> str: ...


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class RequestInfo:
    """What lb needs to know of a request head, found in one pass."""

    __slots__ = (
        "authorization",
        "chunked",
        "connection_tokens",
        "content_length",
        "cookie",
        "expect_continue",
        "forward",
        "host",
        "request_id",
        "trace",
        "trace_headers",
        "upgrade",
        "xff",
    )

    def __init__(self) -> None:
        self.host: bytes | None = None
        self.content_length: int | None = None
        self.chunked = False
        self.upgrade: bytes | None = None
        self.expect_continue = False
        self.connection_tokens = False  # Connection named close or keep-alive
        self.request_id: bytes | None = None
        self.xff: bytes | None = None
        # The first Authorization value and the Cookie values joined (RFC 9113 8.2.3), as
        # forwarded: whoever removes those headers from `forward` clears these too.
        self.authorization: bytes | None = None
        self.cookie: bytes | None = None
        self.forward: list[tuple[bytes, bytes]] = []
        self.trace: TraceContext | None = None  # with tracing on (lb/tracing/context.py)
        self.trace_headers = False  # a traceparent or tracestate is among `forward`


def analyze_request(headers: list[tuple[bytes, bytes]]) -> RequestInfo:
    """Classify headers and apply the framing rules that block request smuggling.

    httptools (llhttp, strict mode) already refuses CL+TE, duplicate or malformed
    Content-Length, a Transfer-Encoding whose final coding is not chunked, obs-fold,
    whitespace before a colon and CR/LF/NUL in values; this adds what it lets through.
    """
    info = RequestInfo()
    forward = info.forward
    named: set[bytes] | None = None
    for item in headers:
        name = item[0]
        n = len(name)
        if n > 31 or not _REQUEST_FILTER[n << 5 | (name[0] & 31)]:
            forward.append(item)
            continue
        lname = _LOWER.get(name) or lower_name(name)
        if lname not in _SPECIAL:
            forward.append(item)
            continue
        value = item[1]
        if lname == b"host":
            if info.host is not None:
                raise BadRequest(400, "more than one Host header")
            info.host = value
        elif lname == b"content-length":
            info.content_length = int(value)
        elif lname == b"transfer-encoding":
            codings = value.lower().split(b",")
            if codings[-1].strip() != b"chunked":
                raise BadRequest(400, "Transfer-Encoding must end with chunked")
            if len(codings) > 1:
                # Valid HTTP, but a coding under chunked is not something lb decodes.
                raise BadRequest(501, "unsupported Transfer-Encoding")
            info.chunked = True
        elif lname == b"connection":
            for token in value.lower().split(b","):
                token = token.strip()
                # close / keep-alive are read by the parser (should_keep_alive); any other
                # token names a hop-by-hop header to drop.
                if token == b"close" or token == b"keep-alive":
                    info.connection_tokens = True
                elif token and token != b"upgrade":
                    named = named or set()
                    named.add(token)
        elif lname == b"upgrade":
            info.upgrade = value
        elif lname == b"expect":
            if value.lower() != b"100-continue":
                raise BadRequest(417, "unsupported Expect")
            # lb answers 100 itself once it forwards (the exchange).
            info.expect_continue = True
        elif lname == b"x-request-id":
            if _REQUEST_ID.fullmatch(value):
                info.request_id = value
        elif lname == b"x-forwarded-for":
            info.xff = value if info.xff is None else info.xff + b", " + value
        elif lname == b"authorization":
            if info.authorization is None:
                info.authorization = value
            forward.append(item)
        elif lname == b"cookie":
            info.cookie = value if info.cookie is None else info.cookie + b"; " + value
            forward.append(item)
        elif lname == b"traceparent" or lname == b"tracestate":
            info.trace_headers = True
            forward.append(item)
        # te, trailer, keep-alive, proxy-connection, x-forwarded-proto/host: dropped
    if named:
        info.forward = [h for h in forward if h[0].lower() not in named]
        if b"authorization" in named:
            info.authorization = None
        if b"cookie" in named:
            info.cookie = None
        if info.trace_headers and not named.isdisjoint(TRACE_CONTEXT):
            info.trace_headers = False
            for item in info.forward:
                if item[0].lower() in TRACE_CONTEXT:
                    info.trace_headers = True
    if info.request_id is None:
        info.request_id = b"%b-%x" % (_ID_PREFIX, next(_ids))
    return info


def is_http10(info: RequestInfo, keep_alive: bool, parser: VersionSource) -> bool:
    """Whether the request is HTTP/1.0, mostly without asking the parser, whose answer is a
    formatted string: llhttp keeps an HTTP/1.1 connection alive unless it says close, and an
    HTTP/1.0 one only if it says keep-alive, so without those tokens the parser's keep-alive
    verdict tells the version. The parser itself is passed: a bound method would be made
    for every request."""
    if not info.connection_tokens:
        return not keep_alive
    return parser.get_http_version() < "1.1"


def http10_rules(info: RequestInfo) -> None:
    """What an HTTP/1.0 request may not do: chunked bodies; and it knows no 1xx."""
    if info.chunked:
        raise BadRequest(400, "Transfer-Encoding in an HTTP/1.0 request")
    info.expect_continue = False


class ResponseInfo:
    __slots__ = ("chunked", "content_length", "forward")

    def __init__(self) -> None:
        self.content_length: int | None = None
        self.chunked = False
        self.forward: list[tuple[bytes, bytes]] = []


def analyze_response(headers: list[tuple[bytes, bytes]]) -> ResponseInfo:
    info = ResponseInfo()
    forward = info.forward
    named: set[bytes] | None = None
    for item in headers:
        name = item[0]
        n = len(name)
        if n > 31 or not _RESPONSE_FILTER[n << 5 | (name[0] & 31)]:
            forward.append(item)
            continue
        lname = _LOWER.get(name) or lower_name(name)
        if lname not in HOP_BY_HOP:
            forward.append(item)
            continue
        value = item[1]
        if lname == b"content-length":
            info.content_length = int(value)
        elif lname == b"transfer-encoding":
            info.chunked = value.strip().lower().endswith(b"chunked")
        elif lname == b"connection":
            for token in value.lower().split(b","):
                token = token.strip()
                if token not in (b"close", b"keep-alive", b"upgrade", b""):
                    named = named or set()
                    named.add(token)
    if named:
        info.forward = [h for h in forward if h[0].lower() not in named]
    return info


def add_lines(parts: list[bytes], headers: list[tuple[bytes, bytes]]) -> None:
    """Append header lines to the pieces of a head that is joined once at the end."""
    for item in headers:
        parts.append(item[0])
        parts.append(b": ")
        parts.append(item[1])
        parts.append(b"\r\n")


_LENGTH_LINES = [b"content-length: %d\r\n" % n for n in range(4096)]


def content_length_line(n: int) -> bytes:
    """The Content-Length header line; small lengths, the common ones, are made once."""
    return _LENGTH_LINES[n] if n < 4096 else b"content-length: %d\r\n" % n


def join_headers(headers: list[tuple[bytes, bytes]]) -> bytes:
    parts: list[bytes] = []
    add_lines(parts, headers)
    return b"".join(parts)
