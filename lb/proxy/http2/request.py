"""An HTTP/2 request head (RFC 9113 8.3), validated and translated into what an exchange takes:
the method, the target, its routing path, and a `RequestInfo` as an HTTP/1.1 head would give
(a `RequestHead`).

Pseudo-headers come first, once each and only the four of a request; field names are lower
case; `:authority` stands for Host (and must agree with one that is given); cookies split over
several fields are joined. A head that breaks RFC 9113 8.1.1 raises `Reset` (the stream is
reset with PROTOCOL_ERROR); one that is well formed but refused raises `BadRequest`.
"""

from .. import grpc
from ..downstream import _normalize
from ..headers import BadRequest, analyze_request

_PSEUDO = (b":method", b":scheme", b":authority", b":path")


class Reset(Exception):
    """A malformed request (RFC 9113 8.1.1): reset the stream with PROTOCOL_ERROR."""


class RequestHead:
    """What a stream's exchange is made of: `method`; `target`, the :path to forward (dot
    segments removed); `path` and `query`, as routing sees them; `info`; `regular`, the fields
    (cookies joined); `grpc`, whether the (first) content-type says gRPC."""

    __slots__ = ("grpc", "info", "method", "path", "query", "regular", "target")


def request_head(headers: list[tuple[bytes, bytes]], end_stream: bool) -> RequestHead:
    method = scheme = authority = path = None
    regular: list[tuple[bytes, bytes]] = []
    cookies: list[bytes] = []
    for item in headers:
        name = item[0]
        if name.startswith(b":"):  # compiled, a slice would make a new object
            if regular or cookies or name not in _PSEUDO:
                raise Reset
            if name == b":method":
                if method is not None:
                    raise Reset
                method = item[1]
            elif name == b":path":
                if path is not None:
                    raise Reset
                path = item[1]
            elif name == b":scheme":
                if scheme is not None:
                    raise Reset
                scheme = item[1]
            else:
                if authority is not None:
                    raise Reset
                authority = item[1]
        elif name == b"cookie":
            cookies.append(item[1])
        elif not name.islower() and name != name.lower():  # islower() first: no new bytes
            raise Reset
        else:
            regular.append(item)
    if method == b"CONNECT":
        raise BadRequest(501, "CONNECT is not supported")
    if method is None or scheme is None or not path:
        raise Reset
    if not path.startswith(b"/") and not (path == b"*" and method == b"OPTIONS"):
        raise Reset
    if cookies:
        regular.append((b"cookie", b"; ".join(cookies)))  # RFC 9113 8.2.3
    try:
        info = analyze_request(regular)
    except ValueError:
        raise Reset from None  # a content-length that is not a number
    if authority is not None:
        if info.host is not None and info.host != authority:
            raise BadRequest(400, ":authority and Host disagree")
        info.host = authority
    elif info.host is None:
        raise BadRequest(400, "request without :authority or Host")
    if info.content_length is None and not end_stream:
        info.chunked = True  # a body of unknown length: chunked toward HTTP/1.1
    head = RequestHead()
    head.method = method
    head.info = info
    head.regular = regular
    head.grpc = _is_grpc(regular)
    _split_target(head, path)
    return head


def _is_grpc(regular: list[tuple[bytes, bytes]]) -> bool:
    for name, value in regular:
        if name == b"content-type":
            return grpc.is_grpc(value)
    return False


def _split_target(head: RequestHead, path: bytes) -> None:
    # Dot segments are removed from the forwarded target too, as for an HTTP/1.1 request.
    spath, _, query = path.decode("latin-1").partition("?")
    if "/." in spath or ("%" in spath and "%2e" in spath.lower()):
        spath = _normalize(spath)
        path = (spath + ("?" + query if query else "")).encode("latin-1")
    head.target = path
    head.path = spath
    head.query = query
