"""The admin HTTP server (aiohttp): health, readiness, metrics, status, config, reload, drain,
and the dashboard.

| method and path                                | answer                                         |
| ---------------------------------------------- | ---------------------------------------------- |
| GET /                                          | the dashboard (a static page polling the API)  |
| GET /healthz, GET /readyz                      | liveness; readiness (503 while draining)       |
| GET /metrics                                   | Prometheus exposition (text or OpenMetrics)    |
| GET /api/status                                | listeners, routes, services, backends, config  |
| GET /api/config                                | the running config as JSON, secrets redacted   |
| POST /api/reload                               | reload the config files; 400 with the errors   |
| POST /api/backends/{service}/{backend}/drain   | stop sending new requests to host:port         |
| POST /api/backends/{service}/{backend}/undrain | take it back                                   |

With `admin.token` set, everything but the health probes and the (data-free) dashboard page
needs `Authorization: Bearer <token>`; the page asks for the token and sends it itself.
Without a token (loopback only, enforced by config validation) two browser attacks are
refused: a cross-site POST (the Origin header names another site) and DNS rebinding (a Host
header that is not a loopback name).
"""

from __future__ import annotations

import dataclasses
import hmac
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from .. import __version__
from ..balancer.picker import IMPLEMENTATION
from ..observe.metrics import service_part
from ..proxy.accept import bind
from .dashboard import PAGE

_OPEN_PATHS = frozenset({"/healthz", "/readyz", "/"})
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def refuse(request: web.Request, admin: Any) -> web.Response | None:
    """Why the admin API turns this request away, or None. Shared by a single lb and the
    supervisor of `--workers`, so both enforce exactly the same rules.

    With a token: everything but the probes and the (data-free) page needs it. Without one
    (loopback only, enforced by config validation), two browser attacks are refused: DNS
    rebinding (a Host that is not a loopback name) and cross-site POSTs (a foreign Origin).
    """
    if admin.token:
        given = request.headers.get("Authorization", "")
        if request.path in _OPEN_PATHS or hmac.compare_digest(
            given.encode(), f"Bearer {admin.token}".encode()
        ):
            return None
        return web.json_response(
            {"error": "unauthorized"}, status=401, headers={"WWW-Authenticate": "Bearer"}
        )
    if request.path in ("/healthz", "/readyz"):
        return None
    # Browsers always send Host; a client without one is no browser, hence no rebinding.
    host_header = request.headers.get("Host")
    host = urlsplit(f"//{host_header}").hostname if host_header is not None else None
    if host is not None and host not in (*_LOOPBACK, admin.bind[0]):
        return web.json_response({"error": "the admin API answers loopback names only"}, status=403)
    origin = request.headers.get("Origin")
    if request.method != "GET" and origin is not None and urlsplit(origin).netloc != host_header:
        return web.json_response({"error": "cross-origin request refused"}, status=403)
    return None


_SECRET_KEYS = frozenset(
    {"token", "password", "secret", "authorization", "proxy-authorization", "cookie"}
)
REDACTED = "<redacted>"


class AdminServer:
    def __init__(self, server: Any) -> None:
        self.server = server
        self.runner: web.AppRunner | None = None
        self.site: web.BaseSite | None = None
        self.sock: socket.socket | None = None  # the admin port's listening socket
        self.ready_checks: list[Any] = []  # callables: () -> str | None (a reason not ready)
        self.observe: Any = None  # lb.observe.Observability, set by lb.observe.install
        self.on_stop: list[Callable[[], Awaitable[None]]] = []  # run after the listener closes
        self.app = web.Application(middlewares=[self._guard])
        self.app.add_routes(
            [
                web.get("/", self.dashboard),
                web.get("/healthz", self.healthz),
                web.get("/readyz", self.readyz),
                web.get("/metrics", self.metrics),
                web.get("/api/status", self.status),
                web.get("/api/config", self.config),
                web.post("/api/reload", self.reload),
                web.post("/api/backends/{service}/{backend}/drain", self.drain),
                web.post("/api/backends/{service}/{backend}/undrain", self.undrain),
            ]
        )

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        refusal = refuse(request, self.server.runtime.config.admin)
        return refusal if refusal is not None else await handler(request)

    async def start(self) -> None:
        host, port = self.server.runtime.config.admin.bind
        inherited = self.server.inherited
        sock = inherited.admin if inherited is not None else None
        if sock is not None:
            inherited.admin = None
            if sock.getsockname()[:2] != (host, port):  # the new config moved the admin port
                sock.close()
                sock = None
        self.sock = sock or bind((host, port), reuse_port=False)
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self.runner.setup()
        self.site = web.SockSite(self.runner, self.sock)
        await self.site.start()

    def listening_socket(self) -> socket.socket | None:
        """What an upgrade hands to the successor (lb/upgrade.py)."""
        return self.sock

    async def stop_listening(self) -> None:
        """A successor serves the admin port now: stop accepting on it, keep the rest."""
        if self.site is not None:
            await self.site.stop()
            self.site = None

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        for cb in self.on_stop:
            await cb()

    # -- probes ---------------------------------------------------------------------------------
    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.Response:
        if self.server.stopping.is_set():
            return web.Response(status=503, text="draining\n")
        for check in self.ready_checks:
            reason = check()
            if reason:
                return web.Response(status=503, text=f"not ready: {reason}\n")
        return web.Response(text="ready\n")

    # -- metrics and dashboard ---------------------------------------------------------------------
    async def metrics(self, request: web.Request) -> web.Response:
        if self.observe is None:
            return web.json_response({"error": "metrics are not installed"}, status=503)
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        resp = web.Response(
            body=encoder(self.observe.registry), headers={"Content-Type": content_type}
        )
        resp.enable_compression()  # honours Accept-Encoding; large fleets scrape megabytes
        return resp

    async def dashboard(self, request: web.Request) -> web.Response:
        return web.Response(
            text=PAGE,
            content_type="text/html",
            headers={
                "Cache-Control": "no-store",
                "Content-Security-Policy": "default-src 'self'; "
                "style-src 'unsafe-inline'; script-src 'unsafe-inline'",
            },
        )

    # -- the API --------------------------------------------------------------------------------
    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(status_report(self.server, self.observe))

    async def config(self, request: web.Request) -> web.Response:
        return web.json_response(config_report(self.server.runtime.config))

    async def reload(self, request: web.Request) -> web.Response:
        ok, errors = await self.server.reload()
        return web.json_response({"ok": ok, "errors": errors}, status=200 if ok else 400)

    async def drain(self, request: web.Request) -> web.Response:
        return self._set_drained(request, True)

    async def undrain(self, request: web.Request) -> web.Response:
        return self._set_drained(request, False)

    def _set_drained(self, request: web.Request, drained: bool) -> web.Response:
        name, addr = request.match_info["service"], request.match_info["backend"]
        svc = self.server.runtime.services.get(name)
        if svc is None:
            return web.json_response({"error": f"no service {name!r}"}, status=404)
        b = next((b for b in svc.backends.values() if b.name == addr), None)
        if b is None:
            return web.json_response(
                {"error": f"service {name!r} has no backend {addr!r}"}, status=404
            )
        svc.set_drained(b, drained)
        state, reason = b.state(svc.clock())
        return web.json_response(
            {"service": name, "backend": addr, "drained": drained, "state": state, "reason": reason}
        )


# -- reports --------------------------------------------------------------------------------------
def status_report(server: Any, observe: Any) -> dict[str, Any]:
    runtime = server.runtime
    metrics = observe.metrics if observe is not None and observe.metrics_enabled() else None
    now = time.time()
    started = observe.started_at if observe is not None else runtime.loaded_at
    return {
        "version": __version__,
        "picker": IMPLEMENTATION,
        "pid": os.getpid(),
        "time": now,
        "started_at": started,
        "uptime_seconds": now - started,
        "metrics_enabled": metrics is not None,
        "config": {
            "hash": runtime.loaded.digest,
            "files": list(runtime.loaded.files),
            "loaded_at": runtime.loaded_at,
            "last_reload_ok": server.last_reload_ok,
            "last_reload_errors": list(server.last_reload_errors),
            "reloads": dict(server.reloads),
        },
        "config_source": server.source.report(),
        "listeners": [_listener(lr) for lr in runtime.listeners.values()],
        "routes": _routes(runtime, metrics),
        "services": [_service(svc, metrics) for svc in runtime.services.values()],
    }


def _listener(lr: Any) -> dict[str, Any]:
    cfg = lr.cfg
    al = cfg.access_log
    return {
        "name": lr.name,
        "bind": f"{cfg.bind[0]}:{cfg.bind[1]}",
        "mode": cfg.mode,
        "tls": cfg.tls is not None,
        "connections": len(lr.connections),
        "accepted": lr.accepted,
        "access_log": (al.path or "stdout") if al is not None and al.enabled else None,
    }


def _routes(runtime: Any, metrics: Any) -> list[dict[str, Any]]:
    totals = metrics.route_totals() if metrics is not None else {}
    out = []
    for route in runtime.table.routes:
        value = route.path_value
        item: dict[str, Any] = {
            "name": route.name,
            "hosts": list(route.hosts),
            "path": None
            if route.path_kind is None
            else {"kind": route.path_kind, "value": getattr(value, "pattern", value)},
            "methods": list(route.config.match.methods),
        }
        if route.fixed is not None:
            item.update(action="respond", status=route.fixed[0])
        elif route.redirect is not None:
            item.update(action="redirect", status=route.redirect.status)
        elif route.split is not None:
            item.update(
                action="split",
                split=[
                    {"service": s, "weight": w}
                    for s, w in zip(route.split.services, route.split.weights, strict=True)
                ],
            )
        else:
            item.update(action="service", service=route.service)
        requests, errors = totals.get(route.name, (0, 0)) if metrics is not None else (None, None)
        item.update(requests=requests, errors=errors)
        out.append(item)
    return out


def _breaker(obj: Any) -> dict[str, Any] | None:
    if obj is None:
        return None
    return {
        "state": getattr(obj, "state", None),
        "opened_times": getattr(obj, "opened_times", None),
        "transitions": {f"{a}->{b}": n for (a, b), n in getattr(obj, "transitions", {}).items()},
    }


def _discovery(svc: Any, now: float) -> dict[str, Any] | None:
    disc = getattr(svc, "discovery", None)
    if disc is None:
        return None
    last = getattr(disc, "last_success", None)
    return {
        "stale": bool(getattr(disc, "stale", False)),
        "last_success": last,
        "age_seconds": None if last is None else max(0.0, now - last),
        "errors": getattr(disc, "errors", 0),
        "last_error": getattr(disc, "last_error", None),
    }


def _service(svc: Any, metrics: Any) -> dict[str, Any]:
    mono = svc.clock()
    backends = []
    counts = {"up": 0, "draining": 0, "down": 0}
    in_flight = 0
    for b in svc.backends.values():
        state, reason = b.state(mono)
        counts[state] = counts.get(state, 0) + 1
        flight = svc.in_flight(b)
        in_flight += flight
        totals = metrics.backend_totals(svc.name, b.name) if metrics is not None else None
        backends.append(
            {
                "name": b.name,
                "weight": b.weight,
                "state": state,
                "reason": reason,
                "drained": b.drained,
                "in_flight": flight,
                "selected": b.selected,
                "failures": b.failures,
                "requests": totals[0] if totals else (0 if metrics is not None else None),
                "errors": totals[1] if totals else (0 if metrics is not None else None),
                "breaker": getattr(b.breaker, "state", None),
            }
        )
    caps = service_part(svc, "caps")
    outlier = service_part(svc, "outlier")
    return {
        "name": svc.name,
        "discovery": svc.config.discovery,
        "discovery_status": _discovery(svc, time.time()),
        "panic": svc.panic,
        "fallback": svc.config.fallback,
        "in_flight": in_flight,
        "counts": counts,
        "breaker": _breaker(service_part(svc, "breaker")),
        "caps": None if caps is None else {"overflows": dict(getattr(caps, "overflows", {}))},
        "outlier": None
        if outlier is None
        else {
            "ejected": len(getattr(outlier, "ejected", ())),
            "ejections_total": getattr(outlier, "ejections_total", 0),
        },
        "backends": backends,
    }


def config_report(config: Any) -> dict[str, Any]:
    """The running config as plain JSON types. Tokens, passwords and URL credentials read
    "<redacted>": the loopback admin API needs no token, and any local user could read them."""
    return redact(dataclasses.asdict(config))


def redact(value: Any, key: str = "") -> Any:
    """Plain config data with secrets replaced. A comparison with the running config (`lb check
    --diff`) passes its side through it too, so that secrets compare equal and only the
    changes that can be shown are."""
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        if key.lower() in _SECRET_KEYS:
            return REDACTED
        if "://" in value:
            parts = urlsplit(value)
            if parts.password is not None:
                host = parts.netloc.rpartition("@")[2]
                user = parts.username or ""
                return urlunsplit(parts._replace(netloc=f"{user}:{REDACTED}@{host}"))
    return value
