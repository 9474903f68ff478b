"""The client side: one Protocol per client connection, parsing requests with httptools.

Requests are answered strictly in order. A pipelined request that arrives while an earlier
one is still being answered is parsed, queued, and started when its turn comes; reading
pauses meanwhile, so what a client can make lb hold is bounded by one read.
"""

import asyncio
import logging
from collections import deque
from time import monotonic
from typing import TYPE_CHECKING, Any

import httptools

from ..edge.mtls import peer_description, with_client_cert
from . import responses
from .exchange import DONE, Exchange
from .flow import PAUSE_BUFFER, PAUSE_QUEUE
from .headers import (
    BadRequest,
    add_lines,
    analyze_request,
    content_length_line,
    http10_rules,
    is_http10,
    join_headers,
)
from .side import Downstream
from .timer import Deadline

if TYPE_CHECKING:
    from .upstream import UpstreamConnection

log = logging.getLogger("lb.proxy")
_STATUS_LINES: dict[int, bytes] = {}


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        reason = responses.reason(status).encode()
        line = _STATUS_LINES[status] = b"HTTP/1.1 %d %b\r\n" % (status, reason)
    return line


# After a response that leaves request bytes unread (413 mid-upload, 429 before the body),
# input is read and dropped this long before closing: closing with unread input makes the
# kernel send a reset, which can destroy the response before the client reads it.
LINGER = 2.0


class _Refuse(Exception):
    """Raised from a parser callback to stop parsing and answer with `status`."""

    def __init__(self, status: int) -> None:
        self.status = status


class ClientConnection(Downstream):
    __slots__ = (
        "_head_bytes",
        "_headers",
        "_paused",
        "_req",
        "_trailers",
        "_url",
        "chunked_out",
        "client_cert",
        "close_after",
        "closing",
        "current",
        "deadline",
        "in_headers",
        "lingering",
        "parser",
        "queue",
        "tunnel",
    )

    def __init__(self, listener: Any) -> None:
        Downstream.__init__(self, listener, listener.runtime.outbox)
        self.parser = httptools.HttpRequestParser(self)
        self.current: Exchange | None = None  # the exchange whose response is being written
        self.queue: deque[Exchange] = deque()
        self._req: Exchange | None = None  # the exchange whose request is being read
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._trailers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self.in_headers = False
        self._paused = 0
        self.closing = False
        self.chunked_out = False  # the response being written is chunked
        self.close_after = False  # the connection ends with the response being written
        self.lingering = False
        self.tunnel: Any = None
        self.deadline = Deadline(self.loop, self._on_timeout)
        self.client_cert: bytes | None = None  # mTLS: what the listener forwards about it

    # -- transport events -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer_ip = str(peer[0]).encode()
        if self.listener.client_cert_header is not None:
            self.client_cert = peer_description(transport)
        self.listener.opened(self)
        self.deadline.set(self.listener.timeouts.client_head, "head")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.deadline.cancel()
        self.listener.closed(self)
        if self.tunnel is not None:
            self.tunnel.close()
            self.tunnel = None
        if self.current is not None:
            self.current.client_lost()
            self.current = None
        for ex in self.queue:
            ex.client_lost()
        self.queue.clear()

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return
        if self.tunnel is not None:
            self.tunnel.to_backend(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            ex = self._req
            if ex is not None:
                ex.early = data[upgrade.args[0] :]
        except _Refuse as refusal:
            self._refuse(refusal.status)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Refuse | BadRequest):
                self._refuse(cause.status)
            else:
                # A bug in lb, not the client's fault: say so, and log it loudly.
                log.error("internal error handling a request", exc_info=cause)
                self._refuse(500)
        except httptools.HttpParserError:
            self._refuse(400)

    def eof_received(self) -> bool | None:
        # A half-closed client may still be owed a response: keep writing until it is sent,
        # then close (nothing more can arrive).
        if self.current is None and not self.queue:
            return None
        self.closing = True
        return True

    def pause_writing(self) -> None:
        if self.current is not None:
            self.current.client_paused()
        if self.tunnel is not None:
            self.tunnel.pause_backend()

    def resume_writing(self) -> None:
        if self.current is not None:
            self.current.client_resumed()
        if self.tunnel is not None:
            self.tunnel.resume_backend()

    # -- parser callbacks -----------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._req = None  # until this head completes; an earlier exchange may still answer
        self._url = b""
        self._headers = []
        self._trailers = []
        self._head_bytes = 0
        self.in_headers = True
        self.deadline.set(self.listener.timeouts.client_head, "head")

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > self.listener.max_header_size:
            raise _Refuse(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_headers:
            self._head_bytes += len(name) + len(value) + 4
            if self._head_bytes > self.listener.max_header_size:
                raise _Refuse(431)
            self._headers.append((name, value))
        else:
            self._trailers.append((name, value))

    def on_headers_complete(self) -> None:
        self.in_headers = False
        parser = self.parser
        method = parser.get_method()
        if method == b"CONNECT":
            raise _Refuse(501)
        cert_header = self.listener.client_cert_header
        if cert_header is not None:  # mTLS: routed and forwarded like the client's headers
            self._headers = with_client_cert(self._headers, cert_header, self.client_cert)
        info = analyze_request(self._headers)
        tracer = self.listener.runtime.tracer
        if tracer is not None:  # W3C trace context (lb/tracing): read, started, forwarded
            tracer.begin(info)
        keep_alive = parser.should_keep_alive()
        http10 = is_http10(info, keep_alive, parser)
        if http10:
            http10_rules(info)
        elif info.host is None:
            raise BadRequest(400, "HTTP/1.1 request without Host")
        target = self._url
        if target[:1] != b"/":
            target = self._absolute_form(target, info)
        path, _, query = target.decode("latin-1").partition("?")
        if "/." in path or ("%" in path and "%2e" in path.lower()):
            path = _normalize(path)
            target = (path + ("?" + query if query else "")).encode("latin-1")
        host = _route_host(info.host)
        listener = self.listener
        route = listener.forced_route or listener.runtime.table.lookup(
            host, method, path, query, self._headers
        )
        ex = Exchange(
            self,
            method,
            target,
            path,
            query,
            info,
            http10,
            keep_alive and not self.closing,
            route,
            monotonic(),  # durations: uvloop's loop.time() ticks in whole milliseconds
        )
        if parser.should_upgrade():
            ex.upgrade = True
        self._req = ex
        if ex.req_done:
            self.deadline.clear()  # the head phase is over, and no body phase follows
        else:
            limit = self.body_limit(ex)
            if limit is not None and (info.content_length or 0) > limit:
                raise _Refuse(413)
            self.deadline.set(listener.timeouts.client_body_idle, "body")
        if self.current is None:
            self.current = ex
            ex.start()
        else:
            self.queue.append(ex)
            self.pause_reading(PAUSE_QUEUE)

    def on_body(self, body: bytes) -> None:
        ex = self._req
        if ex is not None:
            if not self._paused:  # the rest of a read lb has paused: not the client's delay
                self.deadline.set(self.listener.timeouts.client_body_idle, "body")
            ex.request_body(body)

    def on_message_complete(self) -> None:
        ex = self._req
        if ex is not None:
            if self.deadline.kind == "body":
                self.deadline.clear()  # the body phase is over
            ex.request_complete(self._trailers)

    # -- the response, from the exchange --------------------------------------------------------
    # The exchange hands over messages; their HTTP/1.1 form (status line, framing, Connection)
    # is decided here, for the response being written (`chunked_out`, `close_after`).
    def send_interim(self, ex: Exchange, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        if not ex.http10:  # 1xx never goes to an HTTP/1.0 client
            self.write(_status_line(status) + join_headers(headers) + b"\r\n")

    def send_head(
        self, ex: Exchange, status: int, headers: list[tuple[bytes, bytes]], length: int
    ) -> None:
        """The response head; `length` is the body's, -1 when unknown until its end."""
        parts = [_status_line(status)]
        add_lines(parts, headers)
        if status == 101:
            parts += (b"connection: upgrade\r\nupgrade: ", ex.info.upgrade or b"", b"\r\n\r\n")
            self.write(b"".join(parts))
            return
        # After an upgrade request answered without 101 the parser is in upgrade mode: close.
        close = ex.upgrade or not ex.keep_alive or self.closing
        chunked = False
        if length >= 0:
            parts.append(content_length_line(length))
        elif ex.method == b"HEAD" or status == 204 or status == 304:
            pass
        elif ex.http10:
            close = True  # an HTTP/1.0 client cannot take chunks: the close ends the body
        else:
            parts.append(b"transfer-encoding: chunked\r\n")
            chunked = True
        self.chunked_out = chunked
        self.close_after = close
        if close:
            parts.append(b"connection: close\r\n\r\n")
        else:
            parts.append(b"connection: keep-alive\r\n\r\n" if ex.http10 else b"\r\n")
        self.write(b"".join(parts))

    def send_body(self, chunk: bytes) -> None:
        self.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if self.chunked_out else chunk)

    def send_end(self, trailers: list[tuple[bytes, bytes]]) -> None:
        if self.chunked_out:
            self.write(b"0\r\n" + join_headers(trailers) + b"\r\n")

    def send_reply(
        self,
        ex: Exchange,
        status: int,
        body: bytes | None,
        headers: list[tuple[bytes, bytes]] | None,
        content_type: bytes | None,
    ) -> int:
        """An answer of lb's own, whole; its length. `body` None: the canned error page."""
        close = not ex.keep_alive or not ex.req_done or ex.upgrade or self.closing
        self.close_after = close
        if body is None and headers is None:
            data = responses.error(status, close)
        else:
            data = responses.build(
                status,
                body if body is not None else responses.error_body(status),
                close=close,
                extra=join_headers(headers) if headers else b"",
                content_type=content_type,
            )
        if ex.method == b"HEAD":
            data = data[: data.index(b"\r\n\r\n") + 4]
        self.write(data)
        return len(data)

    # -- helpers for the exchange ---------------------------------------------------------------
    def body_limit(self, ex: Exchange) -> int | None:
        route = ex.route
        if route is not None and route.max_body_size is not None:
            return route.max_body_size
        return self.listener.max_body_size

    def pause_reading(self, reason: int) -> None:
        if not self._paused:
            if self.transport is not None:
                self.transport.pause_reading()
            if self.deadline.kind == "body":
                # The client cannot send while lb does not read: its body-idle clock stops.
                self.deadline.clear()
        self._paused |= reason

    def resume_reading(self, reason: int) -> None:
        if self._paused & reason:
            self._paused &= ~reason
            if not self._paused and self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()
                req = self._req
                if req is not None and not req.req_done and self.tunnel is None:
                    self.deadline.set(self.listener.timeouts.client_body_idle, "body")

    def exchange_done(self, ex: Exchange, close: bool) -> None:
        if self.current is not ex:
            return
        self.current = None
        if self._req is ex:
            self._req = None
        close = close or self.close_after
        self.close_after = False
        self.chunked_out = False
        if close or self.closing:
            self._close_after_write(not ex.req_done)
            return
        if self.queue:
            nxt = self.queue.popleft()
            self.current = nxt
            if not self.queue:
                self.resume_reading(PAUSE_QUEUE)
            nxt.start()
            return
        self.resume_reading(PAUSE_QUEUE)
        if not self.in_headers:
            self.deadline.set(self.listener.timeouts.keepalive_idle, "idle")

    def start_tunnel(self, ex: Exchange, conn: "UpstreamConnection", rest: bytes) -> None:
        from .tunnel import Tunnel

        self.current = None
        self._req = None
        self.deadline.cancel()  # a tunnel has only its own idle timer
        self.tunnel = Tunnel(self, conn, ex.idle_timeout())
        if rest:
            self.write(rest)
        if ex.early:
            self.tunnel.to_backend(ex.early)
        self.resume_reading(PAUSE_QUEUE | PAUSE_BUFFER)

    def abort(self) -> None:
        self.closing = True
        self.discard_output()
        if self.transport is not None:
            self.transport.abort()

    def close_idle(self) -> bool:
        """Graceful shutdown: close now if between requests; otherwise after this response."""
        self.closing = True
        if self.current is None and not self.in_headers and self.tunnel is None:
            self._close_after_write()
            return True
        return False

    def _close_after_write(self, unread: bool = False) -> None:
        """Close once the output is sent; with `unread` input, half-close and linger."""
        self.closing = True
        self.deadline.cancel()
        self.flush()
        t = self.transport
        if t is None:
            return
        if unread and not self.lingering and t.can_write_eof():
            self.lingering = True
            t.write_eof()
            self._paused = 0
            t.resume_reading()
            self.deadline.set(LINGER, "linger")
            return
        t.close()

    def _refuse(self, status: int) -> None:
        ex = self._req if self._req is not None and not self._req.response_started else None
        if ex is not None and self.current is ex and ex.phase != DONE:
            ex.keep_alive = False
            ex.req_done = False
            conn = ex.upstream
            if conn is not None:
                ex.upstream = None
                conn.exchange = None
                conn.abort()
            ex.reply_error(status)
            return
        if self.current is not None:
            # An earlier exchange is still answering: stop reading and close after it.
            self.closing = True
            for queued in self.queue:
                queued.client_lost()
            self.queue.clear()
            self.pause_reading(PAUSE_QUEUE)
            if ex is not None and ex is not self.current:
                ex.client_lost()
            return
        self.listener.runtime.record_refusal(self, status)
        self.write(responses.error(status, True))
        self._close_after_write(status != 408)

    def _on_timeout(self, kind: str) -> None:
        # Each kind is armed only during its phase (head: connection open or a head being
        # read; body: a body being read while lb reads; idle: between requests) and cleared
        # when the phase ends, so a firing deadline always means that phase overran.
        if kind == "idle" or kind == "linger" or (kind == "head" and not self.in_headers):
            self._close_after_write()  # nothing of a request arrived, or lingered enough
        elif self.current is None or not self.current.response_started:
            self._refuse(408)
        else:
            self.abort()

    @staticmethod
    def _absolute_form(target: bytes, info: Any) -> bytes:
        # "GET http://host/path HTTP/1.1": the target's host wins over the Host header.
        lower = target.lower()
        for scheme in (b"http://", b"https://"):
            if lower.startswith(scheme):
                rest = target[len(scheme) :]
                slash = rest.find(b"/")
                authority, path = (rest, b"/") if slash == -1 else (rest[:slash], rest[slash:])
                if authority:
                    info.host = authority
                return path
        if target == b"*":
            return target
        raise BadRequest(400, "bad request target")


_HOSTS: dict[bytes | None, str] = {}


def _route_host(raw: bytes | None) -> str:
    """The Host header as routing sees it: lower case, no port. Cached: hosts repeat."""
    host = _HOSTS.get(raw)
    if host is None:
        host = (raw or b"").decode("latin-1").lower()
        colon = host.rfind(":")
        if colon != -1 and "]" not in host[colon:]:
            host = host[:colon]
        if len(_HOSTS) >= 4096:
            _HOSTS.clear()  # bounded: a client inventing hosts cannot grow it
        _HOSTS[raw] = host
    return host


def _normalize(path: str) -> str:
    """RFC 3986 dot-segment removal, so "/public/../admin" is routed as "/admin".

    Encoded dots count as dots (or "/public/%2e%2e/admin" would slip past its route's
    prefix); nothing else is decoded, so the forwarded path keeps its encoding.
    """
    decoded = path.replace("%2e", ".").replace("%2E", ".")
    out: list[str] = []
    for seg in decoded.split("/"):
        if seg == "..":
            if len(out) > 1:
                out.pop()
        elif seg != ".":
            out.append(seg)
    result = "/".join(out)
    if decoded.endswith(("/.", "/..")):
        result += "/"
    return result if result.startswith("/") else "/" + result
