#!/usr/bin/env python3
"""TCP throughput: lb `mode: tcp` against HAProxy `mode tcp`, to the same backend, in one run.

Method (as ../shared/perf-method.md for HTTP): the backend and the load generator share one
core, the proxy under test gets another (`taskset`), rounds alternate the proxies (each round on
freshly started ones), and the figures that matter are ratios measured in the same round. For
each direction, CONNECTIONS parallel streams push 1 MiB writes through the proxy for DURATION
seconds: "upload" client -> proxy -> backend (the backend counts what it read), "download"
backend -> proxy -> client. Reported per proxy and direction: MB/s, and the proxy process's CPU
per MB (user + system, from /proc/PID/stat before and after), which is steadier than MB/s on a
shared machine. On two cores the load generator's core (client and backend, each byte written
and read twice there) saturates before the proxy's does, so MB/s mostly measures the generator;
CPU per MB is the proxy's own figure.

`--only haproxy,haproxy_splice,lb` adds HAProxy tuned for TCP (kernel splice, 64 KiB buffers);
plain `haproxy` runs with its defaults (16 KiB buffers, no splice).

Usage:
    .venv/bin/python bench/tcp_bench.py [--rounds 3] [--duration 5] [--connections 4]
        [--only lb,haproxy] [--no-pin] [--out bench/results/tcp.json]

Stdlib only. The backend is this script itself (`--serve PORT`), a thread per connection.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "bench" / "results" / "tcp.json"
CLK_TCK = os.sysconf("SC_CLK_TCK")
CHUNK = 1 << 20
PROXIES = ("haproxy", "lb")
# HAProxy with kernel splicing and 64 KiB buffers (`option splice-auto`, `tune.bufsize`): not its
# default, but what a TCP-heavy HAProxy is often tuned to; ask for it with --only.
EXTRA = ("haproxy_splice",)
BASELINE = "haproxy"
DIRECTIONS = ("upload", "download")


# -- the backend: a sink for uploads, a source for downloads --------------------------------------
def serve(port: int) -> None:
    """First byte U: read to EOF, answer the count (8 bytes). D: send until the peer leaves."""
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", port))
    lsock.listen(128)
    payload = memoryview(os.urandom(CHUNK))

    def one(conn: socket.socket) -> None:
        with conn:
            kind = conn.recv(1)
            if kind == b"U":
                buf = bytearray(CHUNK)
                total = 0
                while n := conn.recv_into(buf):
                    total += n
                conn.sendall(total.to_bytes(8, "big"))
            elif kind == b"D":
                with contextlib.suppress(OSError):
                    while True:
                        conn.sendall(payload)

    while True:
        conn, _ = lsock.accept()
        threading.Thread(target=one, args=(conn,), daemon=True).start()


# -- the load -------------------------------------------------------------------------------------
def stream(port: int, direction: str, seconds: float, out: list[int]) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    deadline = time.monotonic() + seconds
    moved = 0
    with sock:
        if direction == "upload":
            sock.sendall(b"U")
            data = memoryview(os.urandom(CHUNK))
            while time.monotonic() < deadline:
                sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            while len(answer) < 8 and (part := sock.recv(8 - len(answer))):
                answer += part
            moved = int.from_bytes(answer, "big") if len(answer) == 8 else 0
        else:
            sock.sendall(b"D")
            buf = bytearray(CHUNK)
            while time.monotonic() < deadline:
                n = sock.recv_into(buf)
                if not n:
                    break
                moved += n
    out.append(moved)


def load(port: int, direction: str, seconds: float, connections: int) -> tuple[int, float]:
    """Bytes moved through the proxy and the wall time it took."""
    moved: list[int] = []
    threads = [
        threading.Thread(target=stream, args=(port, direction, seconds, moved))
        for _ in range(connections)
    ]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(moved), time.monotonic() - t0


# -- proxies --------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def which(name: str) -> str | None:
    return shutil.which(name) or next(
        (
            f"{d}/{name}"
            for d in ("/usr/local/sbin", "/usr/sbin", "/sbin")
            if os.path.exists(f"{d}/{name}")
        ),
        None,
    )


def lb_command() -> list[str]:
    for candidate in (Path(sys.executable).parent / "lb", REPO / ".venv" / "bin" / "lb"):
        if candidate.exists():
            return [str(candidate)]
    return [sys.executable, "-m", "lb"]


def haproxy_config(port: int, backend: int, splice: bool = False) -> str:
    tuned = "    tune.bufsize 65536\n" if splice else ""
    option = "    option splice-auto\n" if splice else ""
    return f"""global
    nbthread 1
    maxconn 1000
{tuned}
defaults
    mode tcp
{option}    timeout connect 5s
    timeout client 300s
    timeout server 300s

frontend bench
    bind 127.0.0.1:{port}
    default_backend app

backend app
    balance leastconn
    server b1 127.0.0.1:{backend}
"""


def lb_config(port: int, admin: int, backend: int) -> str:
    return f"""listeners:
  - name: bench
    bind: "127.0.0.1:{port}"
    mode: tcp
    service: app
    timeouts: {{idle: 300s, drain: 0s}}
admin: {{bind: "127.0.0.1:{admin}"}}
services:
  app:
    backends: ["127.0.0.1:{backend}"]
"""


def pinned(cmd: list[str], cpus: str | None) -> list[str]:
    taskset = which("taskset")
    return [taskset, "-c", cpus, *cmd] if cpus and taskset else cmd


def start_proxy(
    kind: str, port: int, backend: int, tmp: Path, cpus: str | None
) -> subprocess.Popen[bytes]:
    if kind.startswith("haproxy"):
        cfg = tmp / "haproxy.cfg"
        cfg.write_text(haproxy_config(port, backend, splice=kind == "haproxy_splice"))
        haproxy = which("haproxy")
        if haproxy is None:
            raise SystemExit("haproxy not found (Debian: apt-get install haproxy)")
        cmd = [haproxy, "-db", "-f", str(cfg)]
    else:
        cfg = tmp / "lb.yaml"
        cfg.write_text(lb_config(port, free_port(), backend))
        cmd = [*lb_command(), "run", "-c", str(cfg)]
    log = open(tmp / f"{kind}.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(pinned(cmd, cpus), stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{kind} exited: {(tmp / f'{kind}.log').read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return proc
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"{kind} did not listen on {port}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) seconds of a process and its threads (taskset execs in place)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


@dataclass
class Figure:
    proxy: str
    direction: str
    round: int
    mb_per_s: float
    cpu_ms_per_mb: float
    user_ms_per_mb: float
    sys_ms_per_mb: float


def measure(kind: str, rnd: int, args: argparse.Namespace, backend: int, tmp: Path) -> list[Figure]:
    port = free_port()
    proc = start_proxy(kind, port, backend, tmp, args.proxy_cpus)
    out = []
    try:
        load(port, "download", 0.3, 1)  # warm up: first connections, lazy imports
        for direction in DIRECTIONS:
            u0, s0 = cpu_seconds(proc.pid)
            moved, took = load(port, direction, args.duration, args.connections)
            u1, s1 = cpu_seconds(proc.pid)
            mb = moved / 1e6
            if mb <= 0:
                raise SystemExit(f"{kind} {direction}: nothing moved")
            out.append(
                Figure(
                    kind,
                    direction,
                    rnd,
                    round(mb / took, 1),
                    round((u1 - u0 + s1 - s0) * 1000 / mb, 4),
                    round((u1 - u0) * 1000 / mb, 4),
                    round((s1 - s0) * 1000 / mb, 4),
                )
            )
    finally:
        stop(proc)
    return out


def summarise(figures: list[Figure], proxies: list[str]) -> dict[str, dict[str, float]]:
    """Medians per proxy and direction, and per-round ratios against HAProxy."""
    summary: dict[str, dict[str, float]] = {}
    for proxy in proxies:
        for direction in DIRECTIONS:
            mine = [f for f in figures if f.proxy == proxy and f.direction == direction]
            key = f"{proxy}/{direction}"
            summary[key] = {
                "mb_per_s": statistics.median(f.mb_per_s for f in mine),
                "cpu_ms_per_mb": statistics.median(f.cpu_ms_per_mb for f in mine),
            }
            if proxy != BASELINE and BASELINE in proxies:
                base = {
                    f.round: f for f in figures if f.proxy == BASELINE and f.direction == direction
                }
                rates = [f.mb_per_s / base[f.round].mb_per_s for f in mine if f.round in base]
                cpus = [
                    f.cpu_ms_per_mb / base[f.round].cpu_ms_per_mb
                    for f in mine
                    if f.round in base and base[f.round].cpu_ms_per_mb > 0
                ]
                summary[key]["x_haproxy_mb_per_s"] = round(statistics.median(rates), 3)
                if cpus:
                    summary[key]["x_haproxy_cpu_per_mb"] = round(statistics.median(cpus), 3)
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per direction")
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--only", default=",".join(PROXIES))
    ap.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the backend process
    args = ap.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    proxies = [p for p in (*PROXIES, *EXTRA) if p in args.only.split(",")]
    two_cores = (os.cpu_count() or 1) >= 2 and not args.no_pin
    load_cpus = "0" if two_cores else None
    args.proxy_cpus = "1" if two_cores else None
    if load_cpus and which("taskset"):
        os.sched_setaffinity(0, {0})  # this process drives the load; the backend inherits it
    backend_port = free_port()
    backend = subprocess.Popen([sys.executable, __file__, "--serve", str(backend_port)])
    figures: list[Figure] = []
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", backend_port), 0.2),
            ):
                break
            time.sleep(0.05)
        with tempfile.TemporaryDirectory(prefix="lb-tcp-bench-") as tmp:
            for rnd in range(args.rounds):
                for proxy in proxies:
                    got = measure(proxy, rnd, args, backend_port, Path(tmp))
                    figures += got
                    for f in got:
                        print(
                            f"round {rnd + 1} {f.proxy:14} {f.direction:8} {f.mb_per_s:9.1f} MB/s "
                            f"{f.cpu_ms_per_mb:7.3f} ms CPU/MB (user {f.user_ms_per_mb:.3f}"
                            f" + sys {f.sys_ms_per_mb:.3f})",
                            flush=True,
                        )
    finally:
        backend.terminate()
        backend.wait(5)
    summary = summarise(figures, proxies)
    head = ("proxy/direction", "MB/s", "ms CPU/MB", "x HAProxy MB/s", "x HAProxy CPU/MB")
    print("\n{:24} {:>9} {:>10} {:>15} {:>17}".format(*head))
    for key, s in summary.items():
        print(
            f"{key:24} {s['mb_per_s']:9.1f} {s['cpu_ms_per_mb']:10.3f} "
            f"{s.get('x_haproxy_mb_per_s', 1.0):15.3f} {s.get('x_haproxy_cpu_per_mb', 1.0):17.3f}"
        )
    result = {
        "when": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "method": {
            "rounds": args.rounds,
            "duration_s": args.duration,
            "connections": args.connections,
            "pinned": bool(args.proxy_cpus),
            "chunk_bytes": CHUNK,
        },
        "summary": summary,
        "rounds": [asdict(f) for f in figures],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
