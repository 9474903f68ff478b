"""The answers a route gives itself, without a backend: `respond` (its fixed status, headers
and body, made when the config loaded) and `redirect` (a Location built from the request's
scheme, Host and path). The edge policies have admitted the request by then: a route answered
by lb is guarded like any other."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..routing.route import Route, redirect_location

if TYPE_CHECKING:
    from .exchange import Exchange


def answer(ex: Exchange, route: Route) -> None:
    if route.fixed is not None:
        status, headers, body = route.fixed
        ex.reply(status, body, headers, None)  # the route's headers carry the type
        return
    assert route.redirect is not None
    listener = ex.client.listener
    status, location = redirect_location(
        route.redirect,
        listener.scheme,
        (ex.info.host or listener.default_host).decode("latin-1"),
        ex.path,
        ex.query,
    )
    ex.reply(status, b"", [(b"location", location)])
