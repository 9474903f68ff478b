"""Connecting a tcp listener's client to a backend of its service: caps, breakers, the pick,
the connect timeout, and the retries.

The pick is the HTTP path's: weighted least connections through `Service.pick`, so a backend's
in-flight count is its open TCP connections (and HTTP requests, when a service serves both);
the slot is held for the whole connection. A backend that refuses or times out is reported
through `Runtime.record_failure` with the HTTP path's failure objects (its breaker, the
outlier detector and the metrics count it), and the next try goes to a backend not tried yet,
up to TRIES in all: HAProxy's `retries 3` with `option redispatch`. A connection that opens
is a success for the backend's breaker and the outlier detector, as a response is on the HTTP
path, so a half-open breaker closes on TCP traffic too.

Caps: with a `circuit_breaker`, a service takes at most `max_connections` busy backend
connections (TCP connections being opened or open, and busy HTTP ones); beyond it the client
is closed at once (`overloaded`). An open service breaker closes clients too
(`circuit-open`), or sends them to the `fallback` service, as on the HTTP path.

The backend connection is counted in `Backend.open_conns` from the moment its socket is made
until it closes, so caps and the admin API see it like an HTTP upstream connection.
"""

from __future__ import annotations

import asyncio
import errno
from typing import TYPE_CHECKING

from ...balancer.backend import Backend
from ...balancer.service import Service
from ...traffic.breaker import CLOSED
from ...traffic.passive import BackendBreaker
from .. import failures as F
from ..failures import Failure

if TYPE_CHECKING:
    from .proxy import BackendSide, TcpConnection

TRIES = 3  # connect attempts per client connection, each to another backend
_NO_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE})


def admit(svc: Service, now: float) -> tuple[Service | None, str]:
    """The service to dial (the fallback while the breaker is open), or None and why not."""
    breaker = svc.breaker
    if breaker is not None and breaker.state != CLOSED and not breaker.allow(now):
        fallback = svc.fallback
        if fallback is None or fallback is svc:
            return None, "circuit-open"
        svc = fallback
    caps = svc.caps
    if caps is not None:
        busy = 0
        for b in svc.backends.values():
            busy += b.open_conns - len(b.idle)
        caps.connections = busy
        if busy >= caps.max_connections:
            caps.overflows["connections"] += 1
            return None, "overloaded"
    return svc, ""


async def dial(conn: TcpConnection, svc: Service) -> None:
    """Connect `conn` to a backend of `svc`: `conn.connected(...)` on success, else
    `conn.end(reason)`. Every slot and count taken here is given back here, unless it was
    handed to the connection with `connected`."""
    loop = conn.loop
    # Admission and the count it checks (`open_conns`, taken below) happen before the first
    # await: connections accepted in one burst cannot all pass a cap the first one fills.
    chosen, refusal = admit(svc, loop.time())
    if chosen is None:
        conn.end(refusal)
        return
    svc = conn.service = chosen
    runtime = conn.listener.runtime
    failures = runtime.counters["tcp_connect_failures"]
    timeout = svc.config.timeouts.connect
    tried: list[Backend] = []
    failure: Failure | None = None
    for _ in range(TRIES):
        b = svc.pick(loop.time(), tried)
        if b is None:
            break
        if b in tried:  # nothing else can serve: no point in the same refusal again
            svc.release(b)
            break
        tried.append(b)
        conn.attempts += 1
        side = conn.backend_side()
        b.open_conns += 1
        started = loop.time()
        try:
            opening = loop.create_connection(lambda s=side: s, b.host, b.port)
            await asyncio.wait_for(opening, timeout)
        except TimeoutError:
            failure = F.CONNECT_TIMEOUT
        except OSError as exc:
            if exc.errno in _NO_DESCRIPTORS:  # lb's own shortage: the backend did nothing wrong
                _give_back(svc, b, side)
                conn.end("no-descriptors")
                return
            failure = F.CONNECT_FAILURE
        except asyncio.CancelledError:  # the client left, or lb is stopping
            _give_back(svc, b, side)
            raise
        else:
            _succeeded(svc, b, loop.time())
            conn.connected(svc, b, side, loop.time() - started)
            return
        _give_back(svc, b, side)
        failures[(svc.name,)] += 1
        runtime.record_failure(svc, b, failure)
    _service_verdict(svc, failure, loop.time())
    conn.service = svc
    conn.end(failure.label if failure is not None else "no-backend")


def _give_back(svc: Service, b: Backend, side: BackendSide) -> None:
    b.open_conns -= 1
    svc.release(b)
    t = side.transport
    if t is not None:  # opened just as the wait gave up on it
        t.abort()


def _succeeded(svc: Service, b: Backend, now: float) -> None:
    """A connection that opened is a success for the breakers and the outlier detector (lb's
    traffic control reports a response so; lb/traffic/control.py)."""
    breaker = b.breaker
    if breaker is not None:
        if isinstance(breaker, BackendBreaker) and breaker.state != CLOSED:
            breaker.outcome(True, now)  # moves a half-open backend on
        else:
            breaker.record(True, now)
    if svc.outlier is not None:
        svc.outlier.record(b, True, now)
    if svc.breaker is not None:
        svc.breaker.record(True, now)


def _service_verdict(svc: Service, failure: Failure | None, now: float) -> None:
    """The service breaker judges each client connection once, after its tries."""
    breaker = svc.breaker
    cb = svc.config.circuit_breaker
    if breaker is None or cb is None or failure is None:
        return
    breaker.record(not (failure.breaker & set(cb.failure_on)), now)
