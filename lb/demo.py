"""`make demo`: two tiny backends and lb in front of them, with a line saying how to try it."""

import asyncio
import os
import signal
import subprocess
import sys

from .config import ConfigError, load

DEMO_BODY = "hello from demo backend {port}: {method} {path}\n"


class _Backend(asyncio.Protocol):
    """A minimal keep-alive HTTP/1.1 server: enough to show routing and balancing."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, _, rest = self.buf.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path = ([*lines[0].split(" "), "", ""])[:2]
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(rest) < length:
                return
            self.buf = rest[length:]
            body = DEMO_BODY.format(port=self.port, method=method, path=path).encode()
            self.transport.write(  # type: ignore[attr-defined]
                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n\r\n%b"
                % (len(body), body)
            )


async def serve_backends(ports: list[int]) -> None:
    loop = asyncio.get_running_loop()
    for port in ports:
        await loop.create_server(lambda p=port: _Backend(p), "127.0.0.1", port)
    await asyncio.Event().wait()


def main() -> int:
    config_path = sys.argv[1] if len(sys.argv) > 1 else "configs/demo.yaml"
    if sys.argv[1:2] == ["--backends"]:
        asyncio.run(serve_backends([int(p) for p in sys.argv[2:]]))
        return 0
    try:
        loaded = load(config_path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    ports = [b.address[1] for s in loaded.config.services.values() for b in s.backends]
    backends = subprocess.Popen([sys.executable, "-m", "lb.demo", "--backends", *map(str, ports)])
    host, port = loaded.config.listeners[0].bind
    ahost, aport = loaded.config.admin.bind
    print(
        f"\nlb demo: backends on {', '.join(map(str, ports))}; lb on {host}:{port}\n"
        f"  try:       curl -s http://{host}:{port}/hello\n"
        f"  dashboard: http://{ahost}:{aport}/   metrics: curl -s http://{ahost}:{aport}/metrics\n"
        f"  stop:      Ctrl-C\n",
        flush=True,
    )
    lb = subprocess.Popen([sys.executable, "-m", "lb", "run", "-c", config_path])
    try:
        return lb.wait()
    except KeyboardInterrupt:
        lb.send_signal(signal.SIGTERM)
        return lb.wait()
    finally:
        backends.terminate()
        if os.environ.get("LB_DEMO_KEEP") is None:
            backends.wait()


if __name__ == "__main__":
    sys.exit(main())
