"""The `lb_tracing` entry's tracing: W3C trace context on every request (read, started,
forwarded), 1% of the new traces sampled, their spans exported over OTLP/HTTP to a sink.

The sink is a thread of the bench process that answers every export with an empty
ExportTraceServiceResponse (a 200 and no body), so lb pays for building and posting its spans
and not for a collector's work. At 1% of some tens of thousands of requests a second that is a
few hundred spans, one post, a second.
"""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SAMPLING = 0.01


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the bench's output is its tables."""


_sink: ThreadingHTTPServer | None = None


def sink_port() -> int:
    """The sink's port on 127.0.0.1, started on first use and kept for the whole run."""
    global _sink
    if _sink is None:
        _sink = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        _sink.daemon_threads = True
        threading.Thread(target=_sink.serve_forever, name="otlp-sink", daemon=True).start()
    return int(_sink.server_address[1])


def yaml() -> str:
    """The top-level `tracing:` lines for lb_config's YAML."""
    return (
        "tracing:\n"
        f'  otlp: {{endpoint: "http://127.0.0.1:{sink_port()}/v1/traces", timeout: 2s}}\n'
        f"  sampling: {SAMPLING}\n"
    )
