"""The admin port under `lb run --workers N`, served by the supervisor (aiohttp).

Same paths as a single lb (lb.admin.app) and the same guard (bearer token; without one,
loopback Host names only and no cross-origin POST). Each worker serves its own admin API on
an ephemeral loopback port; this one answers from them:

| path                                  | answer                                                |
| ------------------------------------- | ----------------------------------------------------- |
| GET /healthz                          | the supervisor is alive                               |
| GET /readyz                           | 200 when every worker runs and is ready               |
| GET /metrics                          | one exposition, totals across workers (merge.py)      |
| GET /api/status                       | worker 0's with counters summed; the supervisor's pid |
|                                       | `workers` lists pid, status, restarts, last exit and  |
|                                       | connections accepted of each worker                   |
| GET /api/config, GET /                | worker 0's                                            |
| POST /api/reload                      | validated here; then SIGHUP to every worker, answered |
|                                       | once each has reported its reload                     |
| POST /api/backends/{s}/{b}/(un)drain  | sent to every worker; replayed to a restarted one     |

"Worker 0" is the lowest-index worker that is running.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.process_collector import ProcessCollector

from ..admin.app import refuse
from ..proxy.accept import bind
from .merge import Families, merge_expositions, merge_status

if TYPE_CHECKING:
    from .supervisor import Supervisor, Worker

WORKER_TIMEOUT_S = 5.0
RELOAD_CONFIRM_S = 10.0
_PASSED_HEADERS = ("Content-Type", "Cache-Control", "Content-Security-Policy")
STATUSES = ("starting", "running", "restarting", "stopping", "exited")


class _SupervisorFamilies:
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup

    def collect(self) -> Iterator[Metric]:
        workers = GaugeMetricFamily("lb_workers", "Worker processes by status.", labels=["status"])
        for status in STATUSES:
            workers.add_metric([status], sum(w.status == status for w in self.sup.workers))
        yield workers
        restarts = CounterMetricFamily(
            "lb_worker_restarts", "Worker processes restarted after dying.", labels=["worker"]
        )
        for w in self.sup.workers:
            restarts.add_metric([str(w.index)], w.restarts)
        yield restarts


class SupervisorAdmin:
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.runner: web.AppRunner | None = None
        self.site: web.BaseSite | None = None
        self.sock: socket.socket | None = None
        self.session: aiohttp.ClientSession | None = None
        # The supervisor's own families: worker counts, restarts, its process's CPU and memory.
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_SupervisorFamilies(sup))  # type: ignore[arg-type]
        ProcessCollector(namespace="lb", registry=self.registry)
        self.app = web.Application(middlewares=[self._guard])
        self.app.add_routes(
            [
                web.get("/", self.passthrough),
                web.get("/healthz", self.healthz),
                web.get("/readyz", self.readyz),
                web.get("/metrics", self.metrics),
                web.get("/api/status", self.status),
                web.get("/api/config", self.passthrough),
                web.post("/api/reload", self.reload),
                web.post("/api/backends/{service}/{backend}/drain", self.drain),
                web.post("/api/backends/{service}/{backend}/undrain", self.drain),
            ]
        )

    async def start(self, inherited: socket.socket | None = None) -> None:
        """On the admin port's socket, or on the one a predecessor handed over."""
        host, port = self.sup.loaded.config.admin.bind
        if inherited is not None and inherited.getsockname()[:2] != (host, port):
            inherited.close()  # the new config moved the admin port
            inherited = None
        self.sock = inherited or bind((host, port), reuse_port=False)
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WORKER_TIMEOUT_S))
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self.runner.setup()
        self.site = web.SockSite(self.runner, self.sock)
        await self.site.start()

    async def stop_listening(self) -> None:
        """A successor serves the admin port now."""
        if self.site is not None:
            await self.site.stop()
            self.site = None

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        if self.session is not None:
            await self.session.close()

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        refusal = refuse(request, self.sup.loaded.config.admin)
        return refusal if refusal is not None else await handler(request)

    # -- talking to workers ---------------------------------------------------------------------
    async def _call(self, w: Worker, method: str, path: str) -> tuple[int, bytes, dict[str, str]]:
        """(status, body, headers) of a worker's private admin API; status 0 when unreachable."""
        assert self.session is not None
        headers = {}
        token = self.sup.loaded.config.admin.token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            async with self.session.request(method, w.admin_url + path, headers=headers) as resp:
                return resp.status, await resp.read(), dict(resp.headers)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return 0, str(exc).encode(), {}

    async def _all(self, method: str, path: str) -> list[tuple[Worker, int, bytes, dict[str, str]]]:
        workers = self.sup.running()
        results = await asyncio.gather(*(self._call(w, method, path) for w in workers))
        return [(w, *r) for w, r in zip(workers, results, strict=True)]

    @staticmethod
    def _relay(status: int, body: bytes, headers: dict[str, str]) -> web.Response:
        if status == 0:
            return web.json_response({"error": f"worker unreachable: {body.decode()}"}, status=502)
        return web.Response(
            status=status,
            body=body,
            headers={k: headers[k] for k in _PASSED_HEADERS if k in headers},
        )

    @staticmethod
    def _no_worker() -> web.Response:
        return web.json_response({"error": "no worker is running"}, status=503)

    # -- probes -------------------------------------------------------------------------------
    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.Response:
        if self.sup.stopping.is_set():
            return web.Response(status=503, text="draining\n")
        for w in self.sup.workers:
            if not w.ready.is_set():
                return web.Response(status=503, text=f"not ready: worker {w.index} {w.status}\n")
        for w, status, body, _ in await self._all("GET", "/readyz"):
            if status != 200:
                reason = body.decode(errors="replace").strip()
                return web.Response(status=503, text=f"not ready: worker {w.index}: {reason}\n")
        return web.Response(text="ready\n")

    # -- metrics and status -----------------------------------------------------------------------
    async def metrics(self, request: web.Request) -> web.Response:
        answers = await self._all("GET", "/metrics")
        texts = [body.decode() for _, status, body, _ in answers if status == 200]
        texts.append(generate_latest(self.registry).decode())
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = encoder(Families(merge_expositions(texts)))  # type: ignore[arg-type]
        resp = web.Response(body=body, headers={"Content-Type": content_type})
        resp.enable_compression()
        return resp

    async def status(self, request: web.Request) -> web.Response:
        answers = await self._all("GET", "/api/status")
        reports = [json.loads(body) for _, status, body, _ in answers if status == 200]
        if not reports:
            return self._no_worker()
        accepted = {r["pid"]: sum(lr["accepted"] for lr in r.get("listeners", [])) for r in reports}
        merged = merge_status(reports)
        merged["pid"] = os.getpid()
        merged["time"] = time.time()
        merged["workers"] = [
            {**w.report(), "accepted": accepted.get(w.pid)} for w in self.sup.workers
        ]
        merged["worker_restarts"] = self.sup.restarts_total
        return web.json_response(merged)

    async def passthrough(self, request: web.Request) -> web.Response:
        running = self.sup.running()
        if not running:
            return self._no_worker()
        return self._relay(*await self._call(running[0], "GET", request.path_qs))

    # -- changes ----------------------------------------------------------------------------------
    async def reload(self, request: web.Request) -> web.Response:
        loaded, errors = await self.sup.validate()
        if loaded is None:
            return web.json_response({"ok": False, "errors": errors}, status=400)
        self.sup.loaded = loaded
        before = {w.index: await self._reload_state(w) for w in self.sup.running()}
        self.sup.signal_workers(signal.SIGHUP)
        results = await asyncio.gather(
            *(self._confirm(w, before[w.index]) for w in self.sup.running() if w.index in before)
        )
        ok = all(r["ok"] for r in results)
        errors = next((r["errors"] for r in results if not r["ok"]), [])
        body = {"ok": ok, "errors": errors, "hash": loaded.digest, "workers": results}
        return web.json_response(body, status=200 if ok else 400)

    async def _reload_state(self, w: Worker) -> dict[str, Any] | None:
        status, body, _ = await self._call(w, "GET", "/api/status")
        return json.loads(body)["config"] if status == 200 else None

    async def _confirm(self, w: Worker, before: dict[str, Any] | None) -> dict[str, Any]:
        """Wait until the worker has counted one more reload; its outcome."""
        done = sum(before["reloads"].values()) if before is not None else 0
        deadline = time.monotonic() + RELOAD_CONFIRM_S
        while time.monotonic() < deadline:
            cfg = await self._reload_state(w)
            if cfg is not None and sum(cfg["reloads"].values()) > done:
                ok = bool(cfg["last_reload_ok"])
                errors = list(cfg["last_reload_errors"])
                return {"index": w.index, "pid": w.pid, "ok": ok, "errors": errors}
            await asyncio.sleep(0.05)
        error = f"worker {w.index} did not report the reload within {RELOAD_CONFIRM_S:g} s"
        return {"index": w.index, "pid": w.pid, "ok": False, "errors": [error]}

    async def drain(self, request: web.Request) -> web.Response:
        service, backend = request.match_info["service"], request.match_info["backend"]
        drained = request.path.endswith("/drain")
        answers = await self._all("POST", request.path)
        if not answers:
            return self._no_worker()
        for _, status, body, headers in answers:
            if status != 200:
                return self._relay(status, body, headers)
        if drained:
            self.sup.drained.add((service, backend))
        else:
            self.sup.drained.discard((service, backend))
        body = json.loads(answers[0][2])
        body["workers"] = len(answers)
        return web.json_response(body)

    async def replay_drains(self, w: Worker) -> None:
        """A restarted worker starts with no operator drains: give it the current ones."""
        for service, backend in sorted(self.sup.drained):
            path = f"/api/backends/{quote(service, safe='')}/{quote(backend, safe='')}/drain"
            await self._call(w, "POST", path)
