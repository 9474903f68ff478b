"""Access log: one JSON object per line, per listener, to stdout or a file, off the loop.

`record` (once per finished exchange) builds a small dict and `json.dumps` it into the sink's
pending list; nothing touches a file descriptor on the event loop. Shortly after the first
pending line (FLUSH_DELAY) the whole batch goes to the sink's own writer thread, which writes it
with one buffered write and a flush. A sink that cannot keep up (a full pipe on stdout, a stalled
disk) holds at most MAX_PENDING lines; beyond that lines are dropped and counted
(`lb_access_log_dropped_total`) rather than growing memory or stalling requests.

File sinks follow logrotate's default move-and-create: at most once a second the writer checks
whether the path still names the file it has open, and reopens it when not.

Fields, in this order (a listener's `access_log.fields` selects and orders a subset):
timestamp (RFC 3339 UTC, millisecond precision, when the request head arrived), listener,
client (peer address), method, host, path (without the query string, which often carries
secrets), protocol, status (0: no response was sent), bytes (response body bytes from the
backend, or the whole answer when lb replied itself), duration_ms, upstream_ms (last attempt:
request sent to response end; null without a backend), route, service, backend, retries,
failure (why the exchange failed, else null), request_id, grpc_status (a gRPC call's
status as it went to the client, from its trailers or trailers-only head; else null),
refused_by (the edge policy that answered the request itself, such as ip_filter or
client_in_flight; else null), trace_id (the W3C trace id the request was forwarded with,
32 hex digits, while `tracing` is configured; else null).

A mode: tcp listener writes one line per connection when it ends (`record_tcp`), with its own
fields (`TCP_FIELDS`): timestamp (when it was accepted), listener, client (address:port, the
PROXY header's when there was one), protocol ("tcp"), sni (passthrough), service, backend,
bytes_in (from the client), bytes_out (to the client), duration_ms, connect_ms (to the
backend, null without one), retries (backends tried after the first), termination (why it
ended: done, client-closed, backend-closed, idle-timeout, connect-failure, ...).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from typing import IO, TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily

if TYPE_CHECKING:
    from ..hooks import ExchangeView
    from ..proxy.tcp.proxy import TcpConnection

log = logging.getLogger(__name__)

FIELDS = (
    "timestamp",
    "listener",
    "client",
    "method",
    "host",
    "path",
    "protocol",
    "status",
    "bytes",
    "duration_ms",
    "upstream_ms",
    "route",
    "service",
    "backend",
    "retries",
    "failure",
    "request_id",
    "grpc_status",
    "refused_by",
    "trace_id",
)
TCP_FIELDS = (
    "timestamp",
    "listener",
    "client",
    "protocol",
    "sni",
    "service",
    "backend",
    "bytes_in",
    "bytes_out",
    "duration_ms",
    "connect_ms",
    "retries",
    "termination",
)
FLUSH_DELAY = 0.05  # seconds: lines written together within this window share one write
MAX_PENDING = 20_000  # lines held for a sink that is not keeping up; beyond: dropped, counted
REOPEN_CHECK = 1.0  # seconds between checks that a file sink's path still names its file
STDOUT = "stdout"
# Built once: json.dumps with arguments builds a new encoder per call, which costs a
# microsecond a line. ASCII-only output keeps client bytes from breaking a line.
_encode = json.JSONEncoder(separators=(",", ":")).encode
_quote = encode_basestring_ascii


class Sink:
    """One destination (a path, or stdout) with its pending lines and writer thread."""

    def __init__(self, path: str | None, loop: asyncio.AbstractEventLoop) -> None:
        self.path = path
        self.label = path or STDOUT
        self.loop = loop
        self.pending: list[str] = []
        self.armed = False  # a flush is scheduled
        self.writing = False  # a batch is with the writer thread
        self.written = 0
        self.dropped = 0
        self.errors = 0
        self._file: IO[bytes] | None = None
        self._checked = 0.0
        self._last_error = ""
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"lb-accesslog-{self.label}")
        self._idle = asyncio.Event()
        self._idle.set()

    def add(self, line: str) -> None:
        if len(self.pending) >= MAX_PENDING:
            self.dropped += 1
            return
        self.pending.append(line)
        if not self.armed:
            self.armed = True
            self.loop.call_later(FLUSH_DELAY, self._flush)

    def _flush(self) -> None:
        self.armed = False
        if self.writing or not self.pending:
            return  # the batch in progress re-flushes when it is done
        batch, self.pending = self.pending, []
        self.writing = True
        self._idle.clear()
        fut = self.loop.run_in_executor(self._executor, self._write, batch)
        fut.add_done_callback(functools.partial(self._written, lines=len(batch)))

    def _written(self, fut: asyncio.Future[None], lines: int) -> None:
        self.writing = False
        exc = fut.exception()
        if exc is None:
            self.written += lines
        else:
            self.errors += 1
            self.dropped += lines
            message = f"access log {self.label}: {exc}"
            if message != self._last_error:  # one line per distinct error, not per batch
                self._last_error = message
                log.error("%s; lines are dropped until it recovers", message)
        if self.pending:
            self._flush()
        else:
            self._idle.set()

    # -- in the writer thread --------------------------------------------------------------------
    def _write(self, batch: list[str]) -> None:
        data = "".join(batch).encode()
        if self.path is None:
            out = sys.stdout.buffer  # looked up per batch: tests and daemons may swap stdout
            out.write(data)
            out.flush()
            return
        f = self._open()
        try:
            f.write(data)
            f.flush()
        except OSError:
            self._close_file()  # reopen on the next batch: the cause may be gone by then
            raise

    def _open(self) -> IO[bytes]:
        assert self.path is not None
        now = time.monotonic()
        if self._file is not None and now - self._checked >= REOPEN_CHECK:
            self._checked = now
            try:
                moved = os.stat(self.path).st_ino != os.fstat(self._file.fileno()).st_ino
            except FileNotFoundError:
                moved = True
            if moved:
                self._close_file()
        if self._file is None:
            self._file = open(self.path, "ab", buffering=64 * 1024)  # noqa: SIM115
            self._checked = now
            self._last_error = ""
        return self._file

    def _close_file(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            try:
                f.close()
            except OSError as exc:
                log.warning("access log %s: close failed: %s", self.label, exc)

    # -- lifecycle --------------------------------------------------------------------------------
    async def close(self) -> None:
        """Write what is pending, then release the file and the thread."""
        self._flush()
        await self._idle.wait()
        await self.loop.run_in_executor(self._executor, self._close_file)
        self._executor.shutdown(wait=False)


Row = tuple[Any, ...]  # one value per entry of FIELDS, in that order
Formatter = Callable[[Row], str]


def format_all(row: Row) -> str:
    """Every field, spelled out: about half the cost of building and encoding a dict, paid on
    every request of every logging listener. `Subset` is the general path; the tests check
    that both write the same JSON."""
    (ts, listener, client, method, host, path, protocol, status, nbytes, duration, upstream,
     route, service, backend, retries, failure, request_id, grpc_status, refused_by, trace_id,
     ) = row  # fmt: skip
    return (
        f'{{"timestamp":"{ts}","listener":{_s(listener)},"client":{_s(client)},'
        f'"method":{_s(method)},"host":{_s(host)},"path":{_s(path)},"protocol":{_s(protocol)},'
        f'"status":{status},"bytes":{nbytes},"duration_ms":{_n(duration)},'
        f'"upstream_ms":{_n(upstream)},"route":{_s(route)},"service":{_s(service)},'
        f'"backend":{_s(backend)},"retries":{retries},"failure":{_s(failure)},'
        f'"request_id":{_s(request_id)},"grpc_status":{_s(grpc_status)},'
        f'"refused_by":{_s(refused_by)},"trace_id":{_s(trace_id)}}}\n'
    )


def _s(value: str | None) -> str:
    return "null" if value is None else _quote(value)


def _n(value: float | None) -> str:
    return "null" if value is None else repr(value)


def format_tcp(row: Row) -> str:
    """Every field of a TCP connection's line (TCP_FIELDS), spelled out like `format_all`."""
    (ts, listener, client, protocol, sni, service, backend, bytes_in, bytes_out, duration,
     connect, retries, termination) = row  # fmt: skip
    return (
        f'{{"timestamp":"{ts}","listener":{_s(listener)},"client":{_s(client)},'
        f'"protocol":{_s(protocol)},"sni":{_s(sni)},"service":{_s(service)},'
        f'"backend":{_s(backend)},"bytes_in":{bytes_in},"bytes_out":{bytes_out},'
        f'"duration_ms":{_n(duration)},"connect_ms":{_n(connect)},"retries":{retries},'
        f'"termination":{_s(termination)}}}\n'
    )


class Subset:
    """A listener's own choice and order of fields (of FIELDS, or TCP_FIELDS for tcp)."""

    def __init__(self, fields: Iterable[str], names: tuple[str, ...] = FIELDS) -> None:
        self.picks = tuple((f, names.index(f)) for f in fields)

    def __call__(self, row: Row) -> str:
        return _encode({name: row[i] for name, i in self.picks}) + "\n"


class AccessLog:
    """The observer: formats each exchange for its listener's sink, if the listener logs."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.sinks: dict[str | None, Sink] = {}
        self.by_listener: dict[str, tuple[Sink, Formatter]] = {}
        self._second = -1
        self._prefix = ""

    @property
    def active(self) -> bool:
        return bool(self.by_listener)

    def configure(self, listeners: Iterable[Any]) -> list[Sink]:
        """Point each listener at its sink; returns the sinks no longer used (to close)."""
        by_listener: dict[str, tuple[Sink, Formatter]] = {}
        used: set[str | None] = set()
        for cfg in listeners:
            al = cfg.access_log
            if al is None or not al.enabled:
                continue
            sink = self.sinks.get(al.path)
            if sink is None:
                sink = self.sinks[al.path] = Sink(al.path, self.loop)
            used.add(al.path)
            fmt: Formatter = format_all
            if cfg.mode == "tcp":
                fmt = format_tcp if al.fields is None else Subset(al.fields, TCP_FIELDS)
            elif al.fields is not None:
                fmt = Subset(al.fields)  # names were checked against FIELDS when loading
            by_listener[cfg.name] = (sink, fmt)
        self.by_listener = by_listener
        return [self.sinks.pop(p) for p in list(self.sinks) if p not in used]

    # -- the request path --------------------------------------------------------------------------
    def record(self, ex: ExchangeView, ok: bool) -> None:
        client = ex.client
        entry = self.by_listener.get(client.listener.name)
        if entry is None:
            return
        now = time.monotonic()
        route, svc, info = ex.route, ex.service, ex.info
        trace = info.trace
        row = (
            self._timestamp(time.time() - (now - ex.t0)),
            client.listener.name,
            client.peer_ip.decode("latin-1"),
            ex.method.decode("latin-1"),
            info.host.decode("latin-1") if info.host is not None else None,
            ex.path,
            getattr(client, "protocol", None) or ("HTTP/1.0" if ex.http10 else "HTTP/1.1"),
            ex.status,
            ex.resp_bytes,
            round((now - ex.t0) * 1000, 3),
            round((now - ex.t_upstream) * 1000, 3) if ex.t_upstream else None,
            route.name if route is not None else None,
            svc.name if svc is not None else None,
            ex.upstream_name or None,
            ex.retries,
            ex.failure.label if ex.failure is not None else None,
            info.request_id.decode("latin-1") if info.request_id else None,
            client.grpc_status,
            ex.refused_by,
            trace.trace_id.decode() if trace is not None else None,
        )
        sink, fmt = entry
        sink.add(fmt(row))

    def refusal(self, conn: Any, status: int) -> None:
        """A request refused before it could be parsed or routed (400, 408, 413, 431)."""
        entry = self.by_listener.get(conn.listener.name)
        if entry is None:
            return
        ts = self._timestamp(time.time())
        client = conn.peer_ip.decode("latin-1")
        row = (ts, conn.listener.name, client, None, None, None, None, status, 0, None, None,
               None, None, None, 0, "refused", None, None, None, None)  # fmt: skip
        sink, fmt = entry
        sink.add(fmt(row))

    def record_tcp(self, conn: TcpConnection) -> None:
        """`Runtime.tcp_observers`: a connection of a mode: tcp listener has ended."""
        entry = self.by_listener.get(conn.listener.name)
        if entry is None:
            return
        now = time.monotonic()
        svc, b = conn.service, conn.backend
        host, port = conn.source
        row = (
            self._timestamp(conn.started),
            conn.listener.name,
            f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
            "tcp",
            conn.sni,
            svc.name if svc is not None else None,
            b.name if b is not None else None,
            conn.bytes_in,
            conn.bytes_out,
            round((now - conn.t0) * 1000, 3),
            round(conn.connect_time * 1000, 3) if conn.connect_time is not None else None,
            max(0, conn.attempts - 1),
            conn.reason,
        )
        sink, fmt = entry
        sink.add(fmt(row))

    def _timestamp(self, wall: float) -> str:
        second = int(wall)
        if second != self._second:  # strftime once a second, not once a request
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((wall - second) * 1000):03d}Z"

    # -- scrape time and shutdown ------------------------------------------------------------------
    def families(self) -> Iterator[Any]:
        lines = CounterMetricFamily(
            "lb_access_log_lines", "Access log lines written.", labels=["sink"]
        )
        dropped = CounterMetricFamily(
            "lb_access_log_dropped",
            "Access log lines dropped because the sink did not keep up or failed.",
            labels=["sink"],
        )
        errors = CounterMetricFamily(
            "lb_access_log_write_errors",
            "Failed access log writes (each drops its batch).",
            labels=["sink"],
        )
        for sink in self.sinks.values():
            lines.add_metric([sink.label], sink.written)
            dropped.add_metric([sink.label], sink.dropped)
            errors.add_metric([sink.label], sink.errors)
        yield from (lines, dropped, errors)

    async def close(self) -> None:
        sinks, self.sinks, self.by_listener = list(self.sinks.values()), {}, {}
        for sink in sinks:
            await sink.close()
