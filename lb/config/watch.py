"""Reload when the config on disk changes: a cheap stat poll of every config file, and of
every file the running config names for lb to read (certificates, htpasswd, JWKS).

Polling (size, mtime, inode) catches edits, atomic renames (the way editors, Kubernetes
ConfigMaps and certificate renewers replace files) and files added to a config directory, with
nothing beyond the standard library. A burst of writes settles before the reload runs.
"""

import asyncio
import os
from typing import Any

from .load import config_files

Signature = tuple[tuple[str, int, int, int], ...]


def signature(path: str, inputs: tuple[str, ...] = ()) -> Signature:
    out = []
    for name in [*config_files(path), *inputs]:
        try:
            st = os.stat(name)
        except OSError:
            continue
        out.append((name, st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(out)


class ConfigWatcher:
    """Polls the files; a change since the server last read them triggers a reload. The
    server records what it read (`config_signature`) on every reload, whatever triggered it
    and whether it succeeded, so no change is reloaded twice."""

    def __init__(self, server: Any, interval: float = 1.0, settle: float = 0.2) -> None:
        self.server = server
        self.interval = interval
        self.settle = settle
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def reconfigure(self) -> None:
        pass  # nothing of its own to reconfigure: it follows config_signature

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            server = self.server
            now = signature(server.config_path, server.runtime.loaded.inputs)
            if now != server.config_signature:
                await asyncio.sleep(self.settle)  # let a burst of writes finish
                await self.server.reload()
