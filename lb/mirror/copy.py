"""One request's copy for the shadow: its head made as the primary's is (the route's rewrite
and header rules, lb's forwarding headers, the same X-Request-Id), the Host suffixed
`-shadow` as Envoy does (before the port: `api.example.com-shadow:8080`), and its body
gathered as the primary streams it, by reference (the chunks the exchange has anyway), up to
the policy's `max_body`: one byte more and the copy is dropped, counted "skipped_body". The
body goes out with a Content-Length once the request is whole; trailers are not copied.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..proxy.headers import add_lines, content_length_line

if TYPE_CHECKING:
    from ..proxy.exchange import Exchange
    from .policy import MirrorPolicy


def shadow_host(host: bytes) -> bytes:
    colon = host.rfind(b":")
    if colon != -1 and b"]" not in host[colon:]:
        return host[:colon] + b"-shadow" + host[colon:]
    return host + b"-shadow"


def request_head(ex: Exchange) -> list[bytes]:
    """The copy's head up to its framing line (lb/proxy/upstream.py writes the primary's)."""
    route = ex.route
    assert route is not None
    target = ex.target
    if route.rewrite is not None:
        path = route.rewrite(ex.path)
        target = (path + ("?" + ex.query if ex.query else "")).encode("latin-1")
    info = ex.info
    headers = info.forward
    if route.request_rules is not None:
        headers = route.request_rules.apply(headers)
    client = ex.client
    listener = client.listener
    xff = client.peer_ip if info.xff is None else info.xff + b", " + client.peer_ip
    host = info.host or listener.default_host
    parts = [ex.method, b" ", target, b" HTTP/1.1\r\n"]
    add_lines(parts, headers)
    parts += (b"host: ", shadow_host(host), b"\r\n")
    forwarded = [
        (b"x-forwarded-for", xff),
        listener.proto_header,
        (b"x-request-id", info.request_id or b""),
        (b"connection", b"close"),
    ]
    if info.host is not None:
        forwarded.append((b"x-forwarded-host", info.host))
    add_lines(parts, forwarded)
    return parts


class MirrorCopy:
    """`Exchange.mirror` while the request body still streams in."""

    __slots__ = ("chunks", "head", "policy", "size")

    def __init__(self, policy: MirrorPolicy, head: list[bytes], chunks: list[bytes], size: int):
        self.policy = policy
        self.head = head
        self.chunks = chunks
        self.size = size

    def body(self, ex: Exchange, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.policy.max_body:
            ex.mirror = None
            self.policy.skipped_body()
        else:
            self.chunks.append(chunk)

    def end(self, ex: Exchange) -> None:
        ex.mirror = None
        self.send()

    def send(self) -> None:
        head = self.head
        if self.size:  # without one, a request has no body
            head.append(content_length_line(self.size))
        head.append(b"\r\n")
        self.policy.send(b"".join(head) + b"".join(self.chunks))
