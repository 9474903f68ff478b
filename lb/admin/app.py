"""The admin HTTP server (aiohttp): health, readiness, status, reload, drain, metrics."""

import hmac
from typing import Any

from aiohttp import web


class AdminServer:
    def __init__(self, server: Any) -> None:
        self.server = server
        self.runner: web.AppRunner | None = None
        self.ready_checks: list[Any] = []  # callables: () -> str | None (a reason not ready)
        self.app = web.Application(middlewares=[self._auth])
        self.app.add_routes(
            [
                web.get("/healthz", self.healthz),
                web.get("/readyz", self.readyz),
                web.post("/api/reload", self.reload),
            ]
        )

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        token = self.server.runtime.config.admin.token
        if token and request.path not in ("/healthz", "/readyz"):
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return web.json_response(
                    {"error": "unauthorized"}, status=401, headers={"WWW-Authenticate": "Bearer"}
                )
        return await handler(request)

    async def start(self) -> None:
        host, port = self.server.runtime.config.admin.bind
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self.runner.setup()
        await web.TCPSite(self.runner, host, port, reuse_address=True).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

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

    async def reload(self, request: web.Request) -> web.Response:
        ok, errors = await self.server.reload()
        return web.json_response({"ok": ok, "errors": errors}, status=200 if ok else 400)
