"""The backend side over HTTP/2 (`services.NAME.protocol: h2`): the per-backend pool, which
the exchange calls (`dispatch`) for each attempt.

The pool is per backend (`Backend.h2`): a request takes a stream on a connection that has room
under the peer's SETTINGS_MAX_CONCURRENT_STREAMS; a new connection is opened only when all are
full. Until a new connection has the peer's SETTINGS, the requests that chose it wait on it
(`pending`); those beyond its real limit then go through the pool again. A connection that
cannot be opened fails the attempts that waited on it.

The connection itself (the Protocol and its Session) is backend_connection.py; each attempt's
stream, the exchange's `upstream`, is backend_stream.py.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from typing import TYPE_CHECKING, Any

from lb import _h2

from .. import failures as F
from .. import grpc
from ..headers import lower_name
from .backend_connection import H2BackendConnection

if TYPE_CHECKING:
    from ...balancer.backend import Backend
    from ..exchange import Exchange

log = logging.getLogger("lb.proxy")
H2Error = _h2.H2Error
DONE = 6  # exchange.DONE (a module constant there, not importable compiled)
_NO_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE})


class H2Pool:
    """A backend's HTTP/2 connections, the ones still connecting included."""

    __slots__ = ("backend", "conns")

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.conns: list[H2BackendConnection] = []


def dispatch(ex: Exchange, b: Backend) -> None:
    """A stream on `b` for the exchange's attempt: on a connection with room, on one still
    connecting, or on a new one."""
    client = ex.client
    if getattr(client, "protocol", None) is None and _is_grpc(ex.info.forward):
        # gRPC needs HTTP/2 on both sides (trailers, streams): no blame on the backend.
        ex.backend = ex.last_backend = None
        ex.upstream_name = ""
        ex.service.release(b)
        ex.reply(505, b"gRPC needs HTTP/2 from the client\n")
        return
    pool = b.h2
    if pool is None:
        pool = b.h2 = H2Pool(b)
    for conn in pool.conns:
        if conn.ready:
            if conn.has_room():
                conn.start(ex)
                return
        elif not conn.failed and len(conn.pending) < conn.room_guess():
            conn.pending.append(ex)
            return
    svc = ex.service
    conn = H2BackendConnection(pool, client.loop, client.outbox, svc.config.pool.idle_timeout)
    pool.conns.append(conn)
    conn.pending.append(ex)
    task = client.loop.create_task(_open(conn, svc, client.listener.runtime))
    conn.task = task


def _is_grpc(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if len(name) == 12 and lower_name(name) == b"content-type":
            return grpc.is_grpc(value)
    return False


# -- opening a connection ----------------------------------------------------------------------
async def _open(conn: H2BackendConnection, svc: Any, runtime: Any) -> None:
    b = conn.pool.backend
    cfg = svc.config
    tls = runtime.upstream_tls(svc, True)
    failure = None
    try:
        await asyncio.wait_for(_connect(conn, b, cfg, tls), cfg.timeouts.connect)
    except TimeoutError:
        failure = F.CONNECT_TIMEOUT
    except (OSError, asyncio.CancelledError, H2Error, ConnectionError) as exc:
        if isinstance(exc, OSError) and exc.errno in _NO_DESCRIPTORS:
            failure = F.NO_DESCRIPTORS
        else:
            failure = F.CONNECT_FAILURE
    if failure is not None:
        _fail(conn, failure)
        return
    conn.ready = True
    _hand_out(conn)


async def _connect(conn: H2BackendConnection, b: Backend, cfg: Any, tls: Any) -> None:
    server_hostname = None
    if tls is not None:
        conn.scheme = b"https"
        server_hostname = (cfg.tls.sni if cfg.tls else None) or b.host
    await conn.loop.create_connection(
        lambda: conn, b.host, b.port, ssl=tls, server_hostname=server_hostname
    )
    if tls is not None:
        ssl_object = conn.transport.get_extra_info("ssl_object")
        if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
            log.warning("backend %s did not agree to HTTP/2 by ALPN", b.name)
            raise ConnectionError("no ALPN h2")
    await conn.ready_future


def _fail(conn: H2BackendConnection, failure: F.Failure) -> None:
    conn.failed = True
    if not conn.ready_future.done():
        conn.ready_future.cancel()
    conn.leave_pool()
    if conn.transport is not None:
        conn.transport.abort()
    b = conn.pool.backend
    pending, conn.pending = conn.pending, []
    for ex in pending:
        if ex.phase == DONE or ex.backend is not b:
            continue
        if failure is F.NO_DESCRIPTORS:
            ex.out_of_descriptors()
        else:
            ex.attempt_failed(failure)


def _hand_out(conn: H2BackendConnection) -> None:
    """Ready: the requests that waited start here, up to the peer's limit; the rest go
    through the pool again."""
    b = conn.pool.backend
    pending, conn.pending = conn.pending, []
    for ex in pending:
        if ex.phase == DONE or ex.backend is not b:
            continue
        try:
            if conn.has_room():
                conn.start(ex)
            else:
                dispatch(ex, b)
        except Exception:
            ex._internal_error()
    conn.maybe_idle()


def close_all(backend: Backend) -> None:
    """Close a backend's HTTP/2 connections (it left, or lb stops)."""
    pool = backend.h2
    if pool is not None:
        for conn in list(pool.conns):
            conn.close()
