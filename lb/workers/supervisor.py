"""The supervisor of `lb run --workers N`: starts the workers, restarts a crashed one, fans out
reloads and signals, and serves the admin port (lb.workers.admin).

Signals: SIGHUP is passed to every running worker (each reloads as a single lb does) after
the supervisor re-reads the config for its own admin settings; SIGTERM and SIGINT stop it:
every worker drains (the listeners' `timeouts.drain`), then the supervisor exits 0.

Restarts: a worker that exits while the supervisor is not stopping is started again after
0.1 s, doubling (up to 10 s) while it keeps dying within 10 s of its start. Its requests are
first withdrawn from the shared in-flight counts, and operator drains made through the admin
API are replayed to the new process. During the initial start, a worker that exits before it
serves stops the whole lb with exit code 1 (a port taken, a certificate unreadable...).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError, Loaded
from ..discovery.kvconfig import load_for_reload
from ..shm import Layout, Segment
from ..upgrade import (
    Offer,
    UpgradeError,
    UpgradeListener,
    complete,
    notify_systemd,
    offer_upgrades,
    take_over,
)

log = logging.getLogger("lb.workers")

BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 10.0
STABLE_AFTER_S = 10.0  # a worker that lived this long resets the backoff
KILL_AFTER_DRAIN_S = 15.0  # grace beyond the longest drain before SIGKILL
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


@dataclass
class Worker:
    index: int
    proc: asyncio.subprocess.Process | None = None
    pid: int | None = None
    admin_port: int | None = None
    config_hash: str = ""
    status: str = "starting"  # starting | running | restarting | stopping | exited
    restarts: int = 0
    started_at: float = 0.0
    last_exit: str | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def report(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "pid": self.pid,
            "status": self.status,
            "restarts": self.restarts,
            "started_at": self.started_at or None,
            "config_hash": self.config_hash or None,
            "last_exit": self.last_exit,
        }


def describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
        return f"signal {-code}"
    return f"exit code {code}"


class Supervisor:
    def __init__(
        self,
        config_path: str,
        loaded: Loaded,
        count: int,
        upgrade_from: str | None = None,
        upgrade_socket: str | None = None,
    ) -> None:
        self.config_path = config_path
        self.loaded = loaded
        self.count = count
        self.loop = asyncio.get_running_loop()
        self.workers = [Worker(i) for i in range(count)]
        self.stopping = asyncio.Event()
        self.started = False  # all workers served once: from now on a dead one is restarted
        self.start_failed = asyncio.Event()
        self.restarts_total = 0
        self.drained: set[tuple[str, str]] = set()  # (service, backend) drained by an operator
        self.segment: Segment | None = None
        self._lifeline_r = -1
        self._lifeline_w = -1
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        # Upgrades (lb/upgrade.py): where this tree serves them, and the old tree's workers
        # that this tree's take over from as they first start.
        self.upgrade_from = upgrade_from
        self.upgrade_socket = upgrade_socket
        self.predecessors: list[str] = []
        self.reload_lock = asyncio.Lock()
        # Set while a successor takes over: True once it serves, False if it gave up. A
        # worker that leaves meanwhile is not restarted unless the upgrade is abandoned.
        self.upgrading: asyncio.Future[bool] | None = None
        self.taken_over = 0  # workers whose successors serve
        # Workers hash client keys with hash() for shared rate limits: one seed for all.
        self.env = dict(os.environ)
        seed = self.env.get("PYTHONHASHSEED", "random")
        self.env["PYTHONHASHSEED"] = str(secrets.randbelow(2**32)) if seed == "random" else seed
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_PACKAGE_ROOT, self.env.get("PYTHONPATH")) if p
        )
        from .admin import SupervisorAdmin

        self.admin = SupervisorAdmin(self)

    # -- lifecycle ----------------------------------------------------------------------------
    async def run(self) -> int:
        try:
            successors, inherited = await take_over(
                [self.upgrade_from] if self.upgrade_from else []
            )
        except (OSError, UpgradeError) as exc:
            log.error("cannot upgrade: %s", exc)
            return 1
        upgrades: UpgradeListener | None = None
        self.segment = Segment.create(Layout(workers=self.count))
        # Never written: its end of file tells the workers that the supervisor is gone.
        self._lifeline_r, self._lifeline_w = os.pipe()
        try:
            self._install_signals()
            try:
                await self.admin.start(inherited.admin if inherited is not None else None)
            except OSError as exc:
                log.error("admin port %s: %s", self.loaded.config.admin.bind, exc)
                return 1
            self.predecessors = inherited.workers if inherited is not None else []
            log.info("supervisor %d: starting %d workers", os.getpid(), self.count)
            self._tasks = [self.loop.create_task(self._keep(w)) for w in self.workers]
            started = await self._all_started()
            if not started and not self.stopping.is_set():
                log.error("a worker failed to start; stopping")
                await self._stop_workers()
                return 1
            self.started = True
            if started:
                log.info("all %d workers serving", self.count)
            # Each of the old tree's workers has one of this tree's as its successor (_spawn).
            await complete(successors, len(self.predecessors))
            upgrades = await offer_upgrades(self, self.upgrade_socket)
            notify_systemd(f"MAINPID={os.getpid()}\nREADY=1")
            await self.stopping.wait()
            log.info("supervisor: draining %d workers", self.count)
            await self._stop_workers()
            return 0
        finally:
            if upgrades is not None:
                await upgrades.stop()
            for task in self._tasks:
                task.cancel()
            await self.admin.stop()
            os.close(self._lifeline_w)
            os.close(self._lifeline_r)
            self.segment.unlink()
            log.info("supervisor stopped")

    async def _all_started(self) -> bool:
        async def all_ready() -> None:
            for w in self.workers:
                await w.ready.wait()

        waits = [
            self.loop.create_task(all_ready()),
            self.loop.create_task(self.start_failed.wait()),
            self.loop.create_task(self.stopping.wait()),
        ]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in waits:
            task.cancel()
        return all(w.ready.is_set() for w in self.workers) and not self.start_failed.is_set()

    def _install_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.stopping.set)
        self.loop.add_signal_handler(signal.SIGHUP, lambda: self.background(self.reload_all()))

    def background(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` on its own, holding the task (the loop keeps only a weak reference)."""
        task = self.loop.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- one worker, for as long as the supervisor runs ------------------------------------------
    async def _keep(self, w: Worker) -> None:
        fast_failures = 0
        while not self.stopping.is_set():
            proc = await self._spawn(w)
            code = await proc.wait()
            lived = time.time() - w.started_at
            w.last_exit = describe_exit(code)
            w.ready.clear()
            w.admin_port = None
            w.status = "exited"
            if self.stopping.is_set():
                log.info("worker %d (pid %d) stopped: %s", w.index, w.pid, w.last_exit)
                return
            if self.upgrading is not None and await asyncio.shield(self.upgrading):
                log.info("worker %d (pid %d) drained for its successor", w.index, w.pid)
                return
            if not self.started:
                log.error("worker %d (pid %d) exited during start: %s", w.index, w.pid, w.last_exit)
                self.start_failed.set()
                return
            assert self.segment is not None
            withdrawn = self.segment.forget_worker(w.index)
            fast_failures = fast_failures + 1 if lived < STABLE_AFTER_S else 0
            delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** max(0, fast_failures - 1))
            w.restarts += 1
            self.restarts_total += 1
            w.status = "restarting"
            log.warning(
                "worker %d (pid %d) died after %.1f s (%s); %d in-flight requests withdrawn; "
                "restart %d in %.1f s",
                w.index,
                w.pid,
                lived,
                w.last_exit,
                withdrawn,
                w.restarts,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)

    async def _spawn(self, w: Worker) -> asyncio.subprocess.Process:
        assert self.segment is not None
        upgrade: list[str] = []
        if self.upgrade_socket:
            upgrade += ["--upgrade-socket", self._worker_socket(w.index)]
        if not self.started and w.restarts == 0:
            upgrade += self._predecessor_args(w.index)
        control_r, control_w = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "lb",
                "run",
                "-c",
                self.config_path,
                "--worker",
                str(w.index),
                "--shm",
                self.segment.path,
                "--control-fd",
                str(control_w),
                "--lifeline-fd",
                str(self._lifeline_r),
                *upgrade,
                pass_fds=(control_w, self._lifeline_r),
                env=self.env,
            )
        finally:
            os.close(control_w)  # the worker holds its own copy
        w.proc, w.pid, w.status, w.started_at = proc, proc.pid, "starting", time.time()
        self.background(self._await_hello(w, proc, control_r))
        return proc

    async def _await_hello(self, w: Worker, proc: asyncio.subprocess.Process, fd: int) -> None:
        reader = asyncio.StreamReader()
        transport, _ = await self.loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
        )
        try:
            line = await reader.readline()
        finally:
            transport.close()
        if not line or w.proc is not proc or proc.returncode is not None:
            return  # it died before serving; _keep handles that
        hello = json.loads(line)
        w.admin_port, w.config_hash, w.status = hello["admin_port"], hello["hash"], "running"
        log.info("worker %d serving (pid %d)", w.index, w.pid)
        if self.stopping.is_set():
            proc.send_signal(signal.SIGTERM)  # asked to stop while it was starting
            return
        if w.config_hash != self.loaded.digest:
            proc.send_signal(signal.SIGHUP)  # it read the file before the last reload
        await self.admin.replay_drains(w)
        w.ready.set()

    def _worker_socket(self, index: int) -> str:
        return f"{self.upgrade_socket}.w{index}"

    def _predecessor_args(self, index: int) -> list[str]:
        """Worker `index` succeeds the old tree's workers index, index + count, ...: with
        fewer workers than the old tree, the surplus ones' listening sockets pass on too
        instead of closing (lb/upgrade.py). None of them for a worker beyond the old count."""
        paths = self.predecessors[index :: self.count]
        if not paths:
            return []
        return ["--upgrade-from", paths[0]] + [
            arg for path in paths[1:] for arg in ("--also-upgrade-from", path)
        ]

    # -- upgrades (lb/upgrade.py) -------------------------------------------------------------
    def handover_sockets(self) -> Offer:
        """The admin port's socket, and where the workers serve upgrades: each hands its
        listening sockets to its successor itself."""
        self.upgrading = self.loop.create_future()
        workers = [self._worker_socket(w.index) for w in self.workers]
        return [], self.admin.sock, {"workers": workers}

    def handover_abandoned(self) -> None:
        if self.upgrading is not None and not self.upgrading.done():
            self.upgrading.set_result(False)
        self.upgrading = None

    async def handed_over(self, ready: dict[str, object]) -> None:
        await self.admin.stop_listening()
        taken = ready.get("workers")
        self.taken_over = int(taken) if isinstance(taken, int) else self.count
        if self.upgrading is not None and not self.upgrading.done():
            self.upgrading.set_result(True)
        self.stopping.set()

    async def _stop_workers(self) -> None:
        # After an upgrade, the workers with a successor drain by themselves already (a
        # second SIGTERM would find their handlers gone and kill them): only the others.
        for w in self.workers[self.taken_over :]:
            if w.proc is not None and w.proc.returncode is None:
                w.status = "stopping"
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(signal.SIGTERM)
        drain = max((c.timeouts.drain for c in self.loaded.config.listeners), default=0)
        procs = [w.proc for w in self.workers if w.proc is not None]
        waits = asyncio.gather(*(p.wait() for p in procs))
        try:
            await asyncio.wait_for(asyncio.shield(waits), drain + KILL_AFTER_DRAIN_S)
        except TimeoutError:
            for p in procs:
                if p.returncode is None:
                    log.error("worker pid %d did not drain in time: killing it", p.pid)
                    with contextlib.suppress(ProcessLookupError):
                        p.kill()
            await waits
        for w in self.workers:
            w.status = "exited"

    # -- reloads ------------------------------------------------------------------------------
    async def validate(self) -> tuple[Loaded | None, list[str]]:
        """The config as a worker reads it: the files, and the KV documents with a
        config_source, read now as a worker reads a new source (each worker follows Consul
        itself, and moves its watch when config_source changed; this is for the supervisor's
        own settings and for the reload's answer)."""
        try:
            loaded = await self.loop.run_in_executor(None, load_for_reload, self.config_path)
        except ConfigError as exc:
            return None, [str(p) for p in exc.problems]
        return loaded, []

    def running(self) -> list[Worker]:
        return [w for w in self.workers if w.status == "running" and w.proc is not None]

    def signal_workers(self, sig: signal.Signals) -> None:
        for w in self.running():
            with contextlib.suppress(ProcessLookupError):
                w.proc.send_signal(sig)  # type: ignore[union-attr]

    async def reload_all(self) -> None:
        """SIGHUP: every worker reloads (and reports its result) as a single lb would."""
        loaded, errors = await self.validate()
        if loaded is not None:
            self.loaded = loaded
        for line in errors:
            log.error("reload: %s", line)
        self.signal_workers(signal.SIGHUP)
