"""An HTTP/2 request head (RFC 9113 8.3), validated and translated into what an exchange takes:
the method, the target, its routing path, and a `RequestInfo` as an HTTP/1.1 head would give.

Pseudo-headers come first, once each and only the four of a request; field names are lower
case; `:authority` stands for Host (and must agree with one that is given); cookies split over
several fields are joined. A head that breaks RFC 9113 8.1.1 raises `Reset` (the stream is
reset with PROTOCOL_ERROR); one that is well formed but refused raises `BadRequest`.
"""

from .. import grpc
from ..downstream import _normalize
from ..headers import BadRequest, RequestInfo, analyze_request

_PSEUDO = (b":method", b":scheme", b":authority", b":path")


class Reset(Exception):
    """A malformed request (RFC 9113 8.1.1): reset the stream with PROTOCOL_ERROR."""


def request_head(
    headers: list[tuple[bytes, bytes]], end_stream: bool
) -> tuple[bytes, bytes, RequestInfo, list[tuple[bytes, bytes]]]:
    """The method, the :path, the request's info and its regular fields (cookies joined)."""
    method = scheme = authority = path = None
    regular: list[tuple[bytes, bytes]] = []
    cookies: list[bytes] = []
    for item in headers:
        name = item[0]
        if name[:1] == b":":
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
        elif name != name.lower():
            raise Reset
        else:
            regular.append(item)
    if method == b"CONNECT":
        raise BadRequest(501, "CONNECT is not supported")
    if method is None or scheme is None or not path:
        raise Reset
    if path[:1] != b"/" and not (path == b"*" and method == b"OPTIONS"):
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
    return method, path, info, regular


def is_grpc_request(regular: list[tuple[bytes, bytes]]) -> bool:
    """Whether the (first) content-type says gRPC."""
    for name, value in regular:
        if name == b"content-type":
            return grpc.is_grpc(value)
    return False


def split_target(path: bytes) -> tuple[bytes, str, str]:
    """The target to forward, and the path and query routing sees: dot segments removed (from
    the forwarded target too), as for an HTTP/1.1 request."""
    target = path
    spath, _, query = target.decode("latin-1").partition("?")
    if "/." in spath or ("%" in spath and "%2e" in spath.lower()):
        spath = _normalize(spath)
        target = (spath + ("?" + query if query else "")).encode("latin-1")
    return target, spath, query
