"""A standalone keep-alive HTTP/1.1 backend for the fault tests, to be killed with SIGKILL:

    python tests/soak_backend.py PORT

Answers every request with 200 and the body `ok PORT PID\\n`; request bodies (Content-Length
or chunked) are read and dropped. Listens on 127.0.0.1 with SO_REUSEADDR, so a restart may
take the same port at once; runs until killed.
"""

from __future__ import annotations

import asyncio
import os
import sys


async def read_body(reader: asyncio.StreamReader, headers: dict[bytes, bytes]) -> None:
    if b"content-length" in headers:
        await reader.readexactly(int(headers[b"content-length"]))
    elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        for _ in range(10_000_000):
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                return
            await reader.readexactly(size + 2)


def answer(port: int) -> bytes:
    body = b"ok %d %d\n" % (port, os.getpid())
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%b" % (len(body), body)


async def serve(port: int) -> None:
    response = answer(port)

    async def conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                headers: dict[bytes, bytes] = {}
                for line in head.split(b"\r\n")[1:]:
                    name, sep, value = line.partition(b":")
                    if sep:
                        headers[name.strip().lower()] = value.strip()
                await read_body(reader, headers)
                writer.write(response)
                await writer.drain()
                if headers.get(b"connection", b"").lower() == b"close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(conn, "127.0.0.1", port, reuse_address=True, backlog=1024)
    print(f"listening on 127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    port = int(sys.argv[1])
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(serve(port))
    else:
        uvloop.run(serve(port))


if __name__ == "__main__":
    main()
