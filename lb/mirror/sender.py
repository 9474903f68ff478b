"""Sending one copy to the shadow service, off the primary's path: a task of its own with a
connection of its own (`Connection: close`), to a backend the shadow service's picker
chooses, the answer read to its end (so the shadow sees a normal client) and dropped. The
whole exchange with the shadow has `timeout`; whatever goes wrong is counted "failed" and
touches nothing else. The copy holds its policy's in-flight slot, and the backend's picker
slot, until it is over.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import httptools

if TYPE_CHECKING:
    from .policy import MirrorPolicy

log = logging.getLogger("lb.mirror")
READ = 64 * 1024


class _Answer:
    """httptools callbacks: only whether the shadow answered, and when the answer ended."""

    __slots__ = ("done", "head")

    def __init__(self) -> None:
        self.head = False
        self.done = False

    def on_headers_complete(self) -> None:
        self.head = True

    def on_message_complete(self) -> None:
        self.done = True


async def deliver(policy: MirrorPolicy, request: bytes) -> None:
    runtime = policy.runtime
    svc = runtime.services.get(policy.cfg.service)
    backend = None if svc is None else svc.pick(runtime.loop.time())
    writer: asyncio.StreamWriter | None = None
    result = "failed"
    try:
        if svc is None or backend is None:
            return
        async with asyncio.timeout(policy.cfg.timeout):
            tls = runtime.upstream_tls(svc, False)
            reader, writer = await asyncio.open_connection(
                backend.host,
                backend.port,
                ssl=tls,
                server_hostname=((svc.config.tls.sni or backend.host) if tls else None),
            )
            writer.write(request)
            answer = _Answer()
            parser = httptools.HttpResponseParser(answer)
            while not answer.done:
                data = await reader.read(READ)
                if not data:
                    break  # the end of a close-delimited answer, or of one cut short
                parser.feed_data(data)
            if answer.head:
                result = "sent"
    except (OSError, TimeoutError, httptools.HttpParserError):
        pass
    except Exception:
        log.exception("mirroring a request failed")
    finally:
        policy.in_flight -= 1
        policy.count(result)
        if backend is not None and svc is not None:
            svc.release(backend)
        if writer is not None:
            writer.transport.abort()
