"""An exchange's attempt given up for another: at once when it never reached the backend,
else after the route's backoff; and the gRPC answers a route retries before any of them
reaches the client. The decisions (which failures, which codes, the budget) are the
route's `RouteRetry` (lb/traffic/gates.py); this is the exchange's side of acting on them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import failures as F
from .failures import Failure
from .phases import CONNECTING, DONE

if TYPE_CHECKING:
    from .exchange import Exchange


def retry_later(ex: Exchange, failure: Failure) -> None:
    route = ex.route
    assert route is not None and route.retry is not None
    b = ex.backend
    if b is not None:  # a retried status: the backend answered
        ex._give_back(b)
        ex.client.listener.runtime.record_failure(ex.service, b, failure)
    ex.retries += 1
    ex.phase = CONNECTING
    if failure.retry == F.CONNECT:
        ex.dispatch()  # it never reached the backend: no need to wait
        return
    ex.client.loop.call_later(route.retry.backoff(ex.retries), _retry, ex)


def _retry(ex: Exchange) -> None:
    if ex.phase != DONE:
        try:
            ex.dispatch()
        except Exception:
            ex._internal_error()


def retry_grpc(ex: Exchange, code: int) -> bool:
    """A gRPC call answered trailers-only with grpc-status `code` (HTTP/2 backends ask
    before `response_head`, nothing of the answer sent yet): True when the route retries
    that code and the attempt is dropped for another; False: pass it on."""
    route = ex.route
    if (
        route is None
        or route.retry is None
        or not ex.replayable
        or not route.retry.allows_grpc(ex, code)
    ):
        return False
    ex._drop_upstream()
    retry_later(ex, F.GRPC_STATUS)
    return True
