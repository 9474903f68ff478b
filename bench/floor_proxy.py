"""The floor of lb's architecture: the least an HTTP/1.1 proxy on uvloop + httptools can do.

It parses each request head with httptools, writes it to a pooled keep-alive backend
connection with one header added, parses the response the same way and writes it back: no
routing, no timers, no metrics, no limits, no error handling beyond closing. Run in lb's
place by bench/run.py (`--lb-cmd "python bench/floor_proxy.py"`; it reads the same config),
its CPU per request is what Python spends before any of lb's features: a target below it
cannot be met by lb's design, only by another parser or event loop.

    python bench/run.py --only haproxy,lb --lb-cmd ".venv/bin/python bench/floor_proxy.py"
"""

import asyncio
import sys
from itertools import cycle

import httptools
import uvloop
import yaml

Headers = list[tuple[bytes, bytes]]


class Backend(asyncio.Protocol):
    def __init__(self, pool: "Pool") -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.client: Client | None = None
        self.headers: Headers = []
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        head = b"".join(n + b": " + v + b"\r\n" for n, v in self.headers)
        client, self.client = self.client, None
        self.headers, body, self.body = [], self.body, []
        self.pool.idle.append(self)
        if client is not None and client.transport is not None:
            client.transport.write(b"HTTP/1.1 %d OK\r\n%s\r\n%s" % (status, head, b"".join(body)))

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.pool.idle:
            self.pool.idle.remove(self)
        if self.client is not None and self.client.transport is not None:
            self.client.transport.close()


class Pool:
    def __init__(self, loop: asyncio.AbstractEventLoop, backends: list[tuple[str, int]]) -> None:
        self.loop = loop
        self.next = cycle(backends)
        self.idle: list[Backend] = []

    def send(self, client: "Client", request: bytes) -> None:
        if self.idle:
            self._send(self.idle.pop(), client, request)
        else:
            self.loop.create_task(self._connect(client, request))

    async def _connect(self, client: "Client", request: bytes) -> None:
        host, port = next(self.next)
        _, conn = await self.loop.create_connection(lambda: Backend(self), host, port)
        self._send(conn, client, request)

    @staticmethod
    def _send(conn: Backend, client: "Client", request: bytes) -> None:
        conn.client = client
        assert conn.transport is not None
        conn.transport.write(request)


class Client(asyncio.Protocol):
    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: Headers = []
        self.peer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = transport.get_extra_info("peername")[0].encode()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.headers.append((b"x-forwarded-for", self.peer))
        head = b"".join(n + b": " + v + b"\r\n" for n, v in self.headers)
        request = self.parser.get_method() + b" " + self.url + b" HTTP/1.1\r\n" + head + b"\r\n"
        self.headers = []
        self.pool.send(self, request)


def main() -> None:
    args = sys.argv[1:]
    with open(args[args.index("-c") + 1]) as f:
        conf = yaml.safe_load(f)
    host, port = conf["listeners"][0]["bind"].rsplit(":", 1)
    backends = []
    for b in conf["services"]["app"]["backends"]:
        address = b["address"] if isinstance(b, dict) else b
        bhost, bport = address.rsplit(":", 1)
        backends.append((bhost, int(bport)))
    loop = uvloop.new_event_loop()
    pool = Pool(loop, backends)
    server = loop.run_until_complete(
        loop.create_server(lambda: Client(pool), host, int(port), backlog=4096)
    )
    try:
        loop.run_forever()
    finally:
        server.close()


if __name__ == "__main__":
    main()
