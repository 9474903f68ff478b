"""One request/response exchange: route action, backend choice, forwarding, outcome.

Events arrive as messages from the client side (request body, end, client gone) and the
backend side (response head, body, end, errors, timeouts). `phase`: HEAD (read; may wait behind
a pipelined request), ADMITTED, CONNECTING (backend chosen, or a retry waits), SENT (response
head awaited), STREAMING, TUNNEL (protocol switched), DONE, entered once by `_finish`, which
gives the picker slot back.
"""

from __future__ import annotations

import logging
from time import monotonic
from typing import TYPE_CHECKING

from ..balancer.backend import Backend
from ..balancer.service import Service
from ..routing.route import Route
from ..traffic.breaker import CLOSED
from . import failures as F
from . import responses, route_answers
from . import upstream as _upstream  # a module import: compiled, upstream cimports Exchange
from .failures import Failure
from .flow import HOLD_CLIENT, PAUSE_BUFFER, PAUSE_UPSTREAM
from .headers import RequestInfo, ResponseInfo
from .phases import ADMITTED, CONNECTING, DONE, HEAD, SENT, STREAMING, TUNNEL
from .retry_later import retry_later

if TYPE_CHECKING:
    from ..compress.encoder import Encoder
    from ..hooks import Gate, Holder
    from ..mirror.copy import MirrorCopy
    from .side import Downstream, Upstream

REPLAY_LIMIT = 64 * 1024  # request bytes kept for a retry; beyond this, no retry
BUFFER_LIMIT = 256 * 1024  # body bytes held while connecting before the client is paused
log = logging.getLogger("lb.proxy")


class Exchange:
    # Compiled, the fields come from exchange.pxd, grouped there by owner; this list names the
    # same set for the pure-Python twin (tests/test_pxd_sync.py keeps the two equal).
    # fmt: off
    __slots__ = (
        "_paused_upstream", "attempts", "backend", "body_buf", "body_bytes", "body_sent", "client",
        "early", "encoder", "failure", "gate", "guard", "http10", "info", "keep_alive",
        "last_backend", "method", "mirror", "path", "phase", "query", "redispatches", "refused_by",
        "replayable", "req_done",
        "resp_bytes", "response_done", "response_started", "retries", "retry_slots", "route",
        "service", "set_cookie", "status", "t0", "t_upstream", "target", "trailers", "tried",
        "upgrade", "upstream", "upstream_name",
    )
    # fmt: on

    def __init__(
        self,
        client: Downstream,
        method: bytes,
        target: bytes,
        path: str,
        query: str,
        info: RequestInfo,
        http10: bool,
        keep_alive: bool,
        route: Route | None,
        now: float,
    ) -> None:
        self.client = client
        self.method = method
        self.target = target
        self.path = path
        self.query = query
        self.info = info
        self.http10 = http10
        self.keep_alive = keep_alive
        self.route = route
        self.t0 = now
        self.t_upstream = 0.0
        self.service: Service | None = None
        self.backend: Backend | None = None
        self.upstream: Upstream | None = None
        self.upstream_name = ""
        self.body_buf: list[bytes] = []
        self.body_bytes = 0
        self.body_sent = False  # body bytes went to a backend that may have consumed them
        self.replayable = True
        # A request without a body is complete once its head is in.
        self.req_done = not (self.info.chunked or self.info.content_length)  # typed: C fields
        self.phase = HEAD
        self.response_started = False
        self.response_done = False
        self.upgrade = False
        self.early = b""
        self.status = 0
        self.resp_bytes = 0
        self.failure: Failure | None = None
        self.attempts = 0
        self.retries = 0
        self.retry_slots = 0  # retry-budget slots held until the exchange finishes
        self.redispatches = 0  # refused connections moved on without using up an attempt
        self.trailers: list[tuple[bytes, bytes]] | None = None  # once the request is complete
        self.tried: list[Backend] | None = None  # backends that failed it, once one has
        self._paused_upstream = 0  # why the backend is not read: flow.HOLD_* bits
        self.encoder: Encoder | None = None  # compressing the response (Route.compress)
        self.mirror: MirrorCopy | None = None  # copying the request (Route.mirror)
        self.gate: Gate | None = None
        self.guard: Holder | None = None  # an edge policy holding a slot, left in _finish
        self.refused_by: str | None = None  # the edge policy that answered it, if one did
        self.last_backend: Backend | None = None
        self.set_cookie: tuple[bytes, bytes] | None = None  # affinity (lb/balancer/affinity.py)

    # -- starting -------------------------------------------------------------------------------
    def start(self) -> None:
        self.phase = ADMITTED
        route = self.route
        if route is None:
            # A listener's edge policies still run: a 401 rather than a 404, and a listener's
            # jwt may copy claims that a route matches on (lb/edge/chain.py).
            guard = self.client.listener.runtime.unrouted_guard
            if guard is None or guard.admit(self):
                self.reply_error(404)
            return
        guard = route.guard
        if guard is not None and not guard.admit(self):
            return  # an edge policy refused it, or calls admitted() once it has decided
        self.admitted()

    def admitted(self) -> None:
        """Past the edge policies (which guard what lb answers itself too: a listener's jwt
        cannot be skipped by a route that a forged header matched): the route's own answer,
        or the rate limits, then the service."""
        route = self.route
        assert route is not None
        if route.fixed is not None or route.redirect is not None:
            route_answers.answer(self, route)  # `respond` or `redirect`: no backend
            return
        if route.limiter is not None and not route.limiter.admit(self):
            return  # the limiter answered 429, or calls forward() once it has decided
        self.forward()

    def forward(self) -> None:
        """Send the request to the route's service, through the service's gate if any."""
        route = self.route
        assert route is not None
        name = route.service if route.split is None else route.split.choose(self.info.forward)
        service = self.client.listener.runtime.services.get(name)
        if service is None:
            self.reply_error(503)
            return
        self.service = service
        if route.mirror is not None:
            route.mirror.copy(self)  # a copy to the shadow, or not; may set self.mirror
        gate = service.gate
        if gate is not None:
            # Caps and the service breaker: the gate answers 503 itself, or swaps in the
            # fallback service, and is left exactly once in _finish.
            if not gate.enter(self):
                return
            self.gate = gate
        self.dispatch()

    def dispatch(self) -> None:
        service = self.service
        assert service is not None
        now = self.client.loop.time()
        b = None
        tried = self.tried
        if service.balance is not None:  # consistent hashing, affinity (lb/balancer/balance.py)
            b = service.balance.pick(self, now, tried)
        elif tried is None:
            # The common case inline; a breaker not closed: Service.admit's half-open quotas.
            slot = service.picker.pick(now, service.panic)
            if slot >= 0:
                b = service.by_slot[slot]
                if b is not None and (b.breaker is None or b.breaker.state == CLOSED):
                    b.selected += 1
                else:
                    # Picking again instead would skip this backend's round-robin turn for
                    # good: a half-open backend would never get its probe.
                    b = service.admit(slot, now) or service.pick(now)
        else:
            b = service.pick(now, tried)
        if b is None:
            fallback = service.fallback
            if fallback is not None and fallback is not service:
                self.service = fallback
                b = fallback.pick(now)
            if b is None:
                self.reply_error(503)
                return
        self.phase = CONNECTING
        self.backend = b
        self.last_backend = b
        self.attempts += 1
        self.upstream_name = b.name
        info = self.info
        if info.expect_continue:
            # Decided to forward: the client may send its body now (as Envoy does, instead of
            # waiting on a backend that may never answer 100).
            info.expect_continue = False
            if not self.req_done and not self.body_bytes:
                self.client.send_interim(self, 100, [])
        if self.service.h2:  # a stream on a pooled HTTP/2 connection (lb/proxy/http2)
            from .http2.upstream import dispatch as h2_dispatch

            h2_dispatch(self, b)
            return
        conn = _upstream.take_idle(b)
        if conn is not None:
            self._send(conn)
        else:
            self.client.loop.create_task(self._connect(b))

    async def _connect(self, b: Backend) -> None:
        try:
            await _upstream.open_for(self, b)
        except Exception:
            self._internal_error()

    def connected(self, conn: Upstream, b: Backend) -> None:
        """A connection opened for this exchange's attempt on `b`."""
        if self.phase == DONE or self.backend is not b:
            conn.release(self.service.max_idle)  # the client left meanwhile
            return
        self._send(conn)

    def _send(self, conn: Upstream) -> None:
        """The request to a connection: its head as routing rewrote it, the headers lb adds,
        and whatever of the body is here already (all of it again for a retry)."""
        self.phase = SENT
        self.upstream = conn
        info = self.info
        route = self.route
        assert route is not None
        target = self.target
        if route.rewrite is not None:
            path = route.rewrite(self.path)
            target = (path + ("?" + self.query if self.query else "")).encode("latin-1")
        headers = info.forward
        if route.request_rules is not None:
            headers = route.request_rules.apply(headers)
        client = self.client
        listener = client.listener
        xff = client.peer_ip if info.xff is None else info.xff + b", " + client.peer_ip
        forwarded = [
            (b"x-forwarded-for", xff),
            listener.proto_header,
            (b"x-request-id", info.request_id or b""),
        ]
        if info.host is not None:
            forwarded.append((b"x-forwarded-host", info.host))
        if self.req_done:
            self._await_response_head(conn)
        else:
            # The request body still streams: no bytes either way for `idle` ends it, and the
            # wait for the response head starts once the request is complete.
            conn.deadline.set(self.idle_timeout(), "idle")
        self.t_upstream = monotonic()
        authority = info.host or listener.default_host
        conn.send_request(
            self, self.method, target, headers, info, authority, forwarded, self.upgrade
        )
        if self.body_buf:
            for chunk in self.body_buf:
                conn.send_body(chunk)
            self.body_sent = True
            if not self.replayable:
                self.body_buf = []
        if self.req_done and self.trailers is not None:
            conn.send_end(self.trailers)
        if self.early:
            conn.write(self.early)
        client.resume_reading(PAUSE_BUFFER)

    def _await_response_head(self, conn: Upstream) -> None:
        route = self.route
        timeout = self.service.head_timeout
        if route is not None and route.response_head_timeout:
            timeout = route.response_head_timeout
        if route is not None and route.retry is not None and route.retry.per_try_timeout:
            timeout = min(timeout, route.retry.per_try_timeout)  # each attempt its own wait
        conn.deadline.set(timeout, "response-head")

    # -- request body from the client -----------------------------------------------------------
    def request_body(self, chunk: bytes) -> None:
        """A body chunk from the client: to the backend if connected, else buffered (while
        connecting, or while queued behind an earlier pipelined request)."""
        self.body_bytes += len(chunk)
        if self.mirror is not None:
            self.mirror.body(self, chunk)
        if self.phase != HEAD:
            # A queued exchange cannot answer yet; its reading is paused, which bounds it.
            limit = self.client.body_limit(self)
            if limit is not None and self.body_bytes > limit:
                self._body_too_large()
                return
        conn = self.upstream
        if conn is not None and not conn.closed and conn.transport is not None:
            conn.send_body(chunk)
            self.body_sent = True
            if not self.response_started:
                conn.deadline.set(self.idle_timeout(), "idle")
            if self.replayable:
                self._keep_for_replay(chunk)
            return
        self.body_buf.append(chunk)
        if self.replayable and self.body_bytes > REPLAY_LIMIT:
            self.replayable = False
        if sum(map(len, self.body_buf)) > BUFFER_LIMIT:
            self.client.pause_reading(PAUSE_BUFFER)

    def _keep_for_replay(self, chunk: bytes) -> None:
        if self.body_bytes <= REPLAY_LIMIT:
            self.body_buf.append(chunk)
        else:
            self.replayable, self.body_buf = False, []

    def request_complete(self, trailers: list[tuple[bytes, bytes]]) -> None:
        self.req_done = True
        self.trailers = trailers  # kept for a retry, which sends the body again
        if self.mirror is not None:
            self.mirror.end(self)
        conn = self.upstream
        if conn is not None and not conn.closed and conn.transport is not None:
            if not self.response_started:
                self._await_response_head(conn)
            conn.send_end(trailers)

    def _body_too_large(self) -> None:
        if self.response_started:
            self.client.abort()
            return
        self.req_done = False
        self.keep_alive = False
        self._drop_upstream()
        self.reply_error(413)

    # -- response from the backend --------------------------------------------------------------
    def response_interim(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.client.send_interim(self, status, headers)

    def response_head(self, conn: Upstream, status: int, info: ResponseInfo) -> None:
        self.service.answered(self.backend, status, self.t_upstream)  # least_latency's sample
        route = self.route
        if (
            status >= 500
            and route is not None
            and route.retry is not None
            and self.replayable
            and route.retry.allows_status(self, status)
        ):
            # Retry on a status: this answer is dropped unseen, with its connection.
            self._drop_upstream()
            retry_later(self, F.BAD_STATUS)
            return
        self.status = status
        self.response_started = True
        fwd = info.forward
        if route is not None and route.response_rules is not None:
            fwd = route.response_rules.apply(fwd)
        if self.set_cookie is not None:
            fwd = [*fwd, self.set_cookie]
        self.phase = TUNNEL if status == 101 and self.upgrade else STREAMING
        length = info.content_length
        if route is not None and route.compress is not None:
            length = route.compress.begin(self, status, fwd, length)  # may set self.encoder
        self.client.send_head(self, status, fwd, -1 if length is None else length)

    def response_body(self, chunk: bytes) -> None:
        if self.encoder is not None:
            self.encoder.body(chunk)  # counts resp_bytes as sent, compressed
            return
        self.resp_bytes += len(chunk)
        self.client.send_body(chunk)

    def response_end(self, trailers: list[tuple[bytes, bytes]]) -> None:
        if self.phase != TUNNEL:
            if self.encoder is None:
                self.client.send_end(trailers)
            else:
                self.encoder.end(trailers)
            self.response_done = True

    def idle_timeout(self) -> float:
        route, svc = self.route, self.service
        if route is not None and route.idle_timeout:
            return float(route.idle_timeout)
        return svc.idle_timeout if svc is not None else 60.0

    def response_finished(self, conn: Upstream) -> None:
        """The whole response is handed to the client: settle both connections."""
        svc = self.service
        assert svc is not None
        self.upstream = None
        if self._paused_upstream:  # pooled while paused, its next response would never be read
            self._paused_upstream = 0
            conn.resume_reading()
        if self.req_done:
            conn.release(svc.max_idle)
        else:
            conn.close()
        if self.encoder is None or not self.encoder.waiting():
            self.delivered()

    def delivered(self) -> None:
        """The response is all handed to the client side (after its backend's end, when an
        encoder still compressed the last of it off the loop)."""
        self._finish(True)
        self.client.exchange_done(self, not self.req_done)

    # -- tunnel ---------------------------------------------------------------------------------
    def upstream_upgraded(self, conn: Upstream, rest: bytes) -> None:
        if self.phase != TUNNEL:
            conn.abort()
            return
        conn.deadline.clear()
        self.upstream = None
        self._finish(True)
        self.client.start_tunnel(self, conn, rest)

    # -- failures -------------------------------------------------------------------------------
    def upstream_lost(self, conn: Upstream) -> None:
        if self.phase == DONE:
            return
        if self.response_started:
            self.failure = F.RESET_AFTER_HEAD
            self.upstream = None
            self._finish(False)
            self.client.abort()
            return
        self.attempt_failed(F.RESET_BEFORE_HEAD)

    def upstream_failed(self, conn: Upstream) -> None:
        """The backend broke HTTP (garbage, bad framing)."""
        if not self.response_started:
            self.attempt_failed(F.PROTOCOL)
            return
        self.failure = F.PROTOCOL
        self._drop_upstream()
        self._finish(False)
        self.client.abort()

    def upstream_timeout(self, conn: Upstream, kind: str) -> None:
        self._drop_upstream()
        if not self.response_started:
            # No response head in time, or the backend stopped taking the request body.
            self.attempt_failed(
                F.RESPONSE_HEAD_TIMEOUT if kind == "response-head" else F.UPSTREAM_IDLE
            )
            return
        # Idle while streaming: nothing sensible can be sent; cut both sides.
        self.failure = F.UPSTREAM_IDLE
        self._finish(False)
        self.client.abort()

    def attempt_failed(self, failure: Failure) -> None:
        if self.phase == DONE:
            return
        conn = self.upstream
        b = self.backend
        svc = self.service
        assert svc is not None
        reused = conn is not None and conn.reused and not conn.saw_bytes
        self._drop_upstream()
        if b is not None:
            self._give_back(b)
        can_replay = self.replayable and (not self.body_sent or self.req_done)
        if (
            reused
            and failure is F.RESET_BEFORE_HEAD
            and can_replay
            and self.method in F.IDEMPOTENT
            and self.attempts - self.retries == 1
        ):
            # A pooled connection closed as we reused it, before any answer (idle, or the backend
            # died): once, not counted against it, and elsewhere, in case it died.
            self.dispatch()
            return
        if failure is F.REFUSED_STREAM and can_replay and self.redispatches < F.REDISPATCH_REFUSED:
            # The backend did not process it (HTTP/2): elsewhere, whatever the method.
            self.redispatches += 1
            self.dispatch()
            return
        if b is not None:
            self.client.listener.runtime.record_failure(svc, b, failure)
        retry = self.route.retry if self.route is not None else None
        if retry is not None and can_replay and retry.allows(self, failure):
            retry_later(self, failure)
            return
        self.failure = failure
        self.reply_error(failure.status)

    def out_of_descriptors(self) -> None:
        """lb itself could not open a connection: 503, and nothing held against the backend."""
        if self.phase == DONE:
            return
        self.failure = F.NO_DESCRIPTORS
        self.reply_error(503)  # _finish gives the picker slot back

    def _internal_error(self) -> None:
        """A bug in lb where no protocol callback guards (a task, a timer): log, answer."""
        log.exception("internal error forwarding a request")
        if self.phase == DONE:
            return
        self._drop_upstream()
        if self.response_started:
            self._finish(False)
            self.client.abort()
        else:
            self.keep_alive = False
            self.reply_error(500)

    def client_lost(self) -> None:
        """The client went away mid-exchange."""
        if self.phase == DONE:
            return
        self._drop_upstream()
        if self.failure is None:
            self.failure = F.CLIENT_GONE
        self._finish(False)

    def _drop_upstream(self) -> None:
        """Abandon the attempt's connection: nothing more it says is wanted."""
        conn = self.upstream
        if conn is not None:
            self.upstream = None
            conn.abort()

    def _give_back(self, b: Backend) -> None:
        """The attempt on `b` is over: its picker slot back, and `b` off the retries' list."""
        self.backend = None
        self.service.release(b)
        if self.tried is None:
            self.tried = [b]
        else:
            self.tried.append(b)

    # -- flow control ---------------------------------------------------------------------------
    def upstream_paused(self) -> None:
        self.client.pause_reading(PAUSE_UPSTREAM)

    def upstream_resumed(self) -> None:
        self.client.resume_reading(PAUSE_UPSTREAM)

    def client_paused(self) -> None:
        self.hold_upstream(HOLD_CLIENT)

    def client_resumed(self) -> None:
        self.release_upstream(HOLD_CLIENT)

    def hold_upstream(self, reason: int) -> None:
        """Stop reading the backend until every reason (flow.HOLD_*) is released."""
        conn = self.upstream
        if conn is not None:
            if not self._paused_upstream:
                conn.pause_reading()
            self._paused_upstream |= reason

    def release_upstream(self, reason: int) -> None:
        if self._paused_upstream & reason:
            self._paused_upstream &= ~reason
            conn = self.upstream
            if not self._paused_upstream and conn is not None:
                conn.resume_reading()

    # -- endings --------------------------------------------------------------------------------
    def reply(
        self,
        status: int,
        body: bytes | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
        content_type: bytes | None = responses.TEXT,
    ) -> None:
        """lb answers itself (error, redirect, fixed page, rate limit); `body` None: the
        canned page for the status."""
        self.status = status
        self.resp_bytes = self.client.send_reply(self, status, body, headers, content_type)
        self._finish(status < 500)
        self.client.exchange_done(self, False)  # send_reply decided whether to close

    def reply_error(self, status: int, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.reply(status, None, headers)  # the canned page for the status

    def _finish(self, ok: bool) -> None:
        if self.phase == DONE:
            return
        self.phase = DONE
        svc, b = self.service, self.backend
        if b is not None and svc is not None:
            self.backend = None
            svc.release(b)
        if self.gate is not None:
            self.gate.leave(self)
        if self.guard is not None:
            self.guard.leave(self)
        if self.retry_slots:
            self.route.retry.release(self.retry_slots)
        for record in self.client.listener.runtime.recorders:
            record(self, ok)
