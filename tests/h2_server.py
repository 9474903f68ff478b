"""A small HTTP/2 backend for tests (h2c, the `h2` library on asyncio streams).

    srv = await H2Backend(handler).start()    # handler(req) -> Reply | coroutine of one
    srv.connections, srv.requests             # what it saw

A handler answers with a `Reply` (status, headers, body, trailers), or `Reply(refuse=True)`
for RST_STREAM REFUSED_STREAM, or `Reply(kill=True)` to send the head and part of the body,
then drop the connection. Without a handler, it echoes the request body.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events as ev
import h2.exceptions
import h2.settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Request:
    stream_id: int
    headers: dict[bytes, bytes]
    body: bytes = b""
    trailers: dict[bytes, bytes] | None = None

    @property
    def method(self) -> bytes:
        return self.headers[b":method"]

    @property
    def path(self) -> bytes:
        return self.headers[b":path"]


@dataclass
class Reply:
    status: int = 200
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    trailers: list[tuple[bytes, bytes]] | None = None
    refuse: bool = False
    kill: bool = False


class _Conn:
    def __init__(self, srv: H2Backend, reader: Any, writer: Any) -> None:
        self.srv = srv
        self.r, self.w = reader, writer
        cfg = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.c = h2.connection.H2Connection(config=cfg)
        settings = {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: srv.max_streams}
        self.c.local_settings = h2.settings.Settings(client=False, initial_values=settings)
        self.c.initiate_connection()
        self.reqs: dict[int, Request] = {}
        self.window = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()

    def send(self) -> None:
        data = self.c.data_to_send()
        if data:
            self.w.write(data)

    async def run(self) -> None:
        self.send()
        with contextlib.suppress(ConnectionError, h2.exceptions.ProtocolError):
            while data := await self.r.read(65536):
                for e in self.c.receive_data(data):
                    self.event(e)
                self.send()
        for t in self.tasks:
            t.cancel()

    def event(self, e: Any) -> None:
        if isinstance(e, ev.RequestReceived):
            self.reqs[e.stream_id] = Request(e.stream_id, dict(e.headers))
            if e.stream_ended is not None:
                self.ended(e.stream_id)
        elif isinstance(e, ev.DataReceived):
            self.reqs[e.stream_id].body += e.data
            self.c.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
        elif isinstance(e, ev.TrailersReceived):
            self.reqs[e.stream_id].trailers = dict(e.headers)
        elif isinstance(e, ev.StreamEnded):
            self.ended(e.stream_id)
        elif isinstance(e, ev.WindowUpdated):
            self.window.set()
        elif isinstance(e, ev.StreamReset):
            self.srv.resets.append(e.stream_id)

    def ended(self, sid: int) -> None:
        req = self.reqs.get(sid)
        if req is None:
            return
        self.srv.requests.append(req)
        t = asyncio.get_running_loop().create_task(self.answer(req))
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    async def answer(self, req: Request) -> None:
        out = self.srv.handler(req)
        if asyncio.iscoroutine(out):
            out = await out
        reply: Reply = out
        sid = req.stream_id
        try:
            if reply.refuse:
                self.c.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
                self.send()
                return
            head = [(b":status", str(reply.status).encode()), *reply.headers]
            only_head = not reply.body and reply.trailers is None
            self.c.send_headers(sid, head, end_stream=only_head)
            self.send()
            if only_head:
                return
            if reply.kill:
                self.c.send_data(sid, reply.body[:100])
                self.send()
                await self.w.drain()
                self.w.transport.abort()
                return
            await self.send_body(sid, reply.body)
            if reply.trailers is not None:
                self.c.send_headers(sid, reply.trailers, end_stream=True)
            else:
                self.c.end_stream(sid)
            self.send()
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, ConnectionError):
            pass

    async def send_body(self, sid: int, body: bytes) -> None:
        while body:
            n = min(self.c.local_flow_control_window(sid), self.c.max_outbound_frame_size)
            if n <= 0:
                self.window.clear()
                await asyncio.wait_for(self.window.wait(), 5)
                continue
            self.c.send_data(sid, body[:n])
            body = body[n:]
            self.send()
            await self.w.drain()


def echo(req: Request) -> Reply:
    headers = [(b"x-method", req.method), (b"x-path", req.path)]
    if req.trailers:
        headers.append((b"x-trailers", b";".join(k + b"=" + v for k, v in req.trailers.items())))
    return Reply(200, headers, req.body)


class H2Backend:
    def __init__(self, handler: Any = None, max_streams: int = 100) -> None:
        self.handler = handler or echo
        self.max_streams = max_streams
        self.port = free_port()
        self.connections = 0
        self.requests: list[Request] = []
        self.resets: list[int] = []
        self.conns: list[_Conn] = []
        self.server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> H2Backend:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", self.port)
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for c in self.conns:
                c.w.transport.abort()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)

    async def _conn(self, reader: Any, writer: Any) -> None:
        self.connections += 1
        conn = _Conn(self, reader, writer)
        self.conns.append(conn)
        try:
            await conn.run()
        finally:
            with contextlib.suppress(Exception):
                writer.close()
