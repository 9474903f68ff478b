"""least_connections vs least_latency (Peak EWMA) with one backend of three slowed, in one run.

    python bench/latency_pick_bench.py [--seconds 10] [--concurrency 16] [--delay-ms 20]
        [--decay 10s] [--rounds 1] [--out bench/results/latency_pick.json]

Three backends (bench/delay_backend.py, a process each) answer at once; `POST /__delay?ms=N`
to one of them slows every answer of that one by N ms (the command this script sends before
each round). lb runs twice, once per mode, against the same backends, each time behind a
closed-loop client (another process: `--concurrency` keep-alive connections, each sending its
next request when the last answer is in) for a warm-up second and then `--seconds`. Reported
per mode: requests per second, the slow backend's share of the requests, and p50 / p90 / p99 /
p99.9 of the client's latencies. Nothing is pinned: on a 2-core machine, pinning the client
and the backends to one core makes them the bottleneck. The machine is shared and noisy, so
the modes alternate for `--rounds` rounds, each on a fresh lb, and are compared within a run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODES = ("least_connections", "least_latency")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


def command(port: int, path: str) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n".encode())
        if not s.recv(1024).startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"{path} refused by :{port}")


def lb_config(port: int, admin_port: int, backends: list[int], mode: str, decay: str) -> str:
    lines = "".join(f'      - "127.0.0.1:{b}"\n' for b in backends)
    if mode == "least_latency":
        mode += f", decay: {decay}"
    return (
        f'listeners:\n  - name: web\n    bind: "127.0.0.1:{port}"\n'
        f'admin:\n  bind: "127.0.0.1:{admin_port}"\n'
        f"services:\n  app:\n    balance: {{mode: {mode}}}\n    backends:\n{lines}"
        "routes:\n  - name: all\n    match: {path: {prefix: /}}\n    service: app\n"
    )


# -- the client (run in its own process: `--client PORT SECONDS CONCURRENCY`) ----------------
async def client(port: int, warmup: float, seconds: float, concurrency: int) -> dict[str, Any]:
    request = b"GET / HTTP/1.1\r\nhost: bench\r\n\r\n"
    latencies: list[float] = []
    answered_by: dict[str, int] = {}
    errors = 0
    loop = asyncio.get_running_loop()
    start = loop.time()
    measure_from, stop_at = start + warmup, start + warmup + seconds

    async def one() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while True:
                if loop.time() >= stop_at:
                    return
                t0 = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length)
                took = time.perf_counter() - t0
                if loop.time() < measure_from:
                    continue
                if not head.startswith(b"HTTP/1.1 200"):
                    errors += 1
                    continue
                latencies.append(took)
                name = body.decode().strip()
                answered_by[name] = answered_by.get(name, 0) + 1
        finally:
            writer.close()

    await asyncio.gather(*(one() for _ in range(concurrency)))
    latencies.sort()
    n = len(latencies)

    def pct(q: float) -> float:
        return round(latencies[min(n - 1, int(q * n))] * 1000, 2) if n else 0.0

    return {
        "requests": n,
        "errors": errors,
        "rps": round(n / seconds),
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "p999_ms": pct(0.999),
        "answered_by": answered_by,
    }


def run_client(port: int, warmup: float, seconds: float, concurrency: int) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--client",
            *map(str, (port, warmup, seconds, concurrency)),
        ],
        capture_output=True,
        text=True,
        timeout=warmup + seconds + 60,
        check=True,
    )
    return json.loads(out.stdout)


def client_main(argv: list[str]) -> int:
    port, warmup, seconds, concurrency = int(argv[0]), float(argv[1]), float(argv[2]), int(argv[3])
    try:
        import uvloop

        run: Any = uvloop.run
    except ImportError:
        run = asyncio.run
    print(json.dumps(run(client(port, warmup, seconds, concurrency))))
    return 0


# -- the rounds ------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--client"]:
        return client_main(args[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--delay-ms", type=int, default=20)
    parser.add_argument("--decay", default="10s", help="least_latency's decay")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "latency_pick.json"
    )
    opts = parser.parse_args(args)

    ports = [free_port() for _ in range(3)]  # the first is slowed
    procs: list[subprocess.Popen[bytes]] = []
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            # One process per backend: one's hiccup (preempted, collecting) is its own, as
            # it would be on separate machines.
            script = str(ROOT / "bench" / "delay_backend.py")
            procs += [subprocess.Popen([sys.executable, script, str(p)]) for p in ports]
            for p in ports:
                wait_port(p)
            for _ in range(opts.rounds):
                rounds.append({mode: one_round(opts, Path(tmp), ports, mode) for mode in MODES})
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()

    print(
        f"3 backends, one +{opts.delay_ms} ms; {opts.concurrency} connections, "
        f"{opts.seconds:g} s per mode and round; least_latency decay {opts.decay}"
    )
    heads = ("req/s", "slow share", "p50", "p90", "p99", "p99.9")
    print(f"{'round':<6}{'mode':<18} " + " ".join(f"{h:>{len(h) + 3}}" for h in heads))
    for i, results in enumerate(rounds, 1):
        for mode in MODES:
            r = results[mode]
            print(
                f"{i:<6}{mode:<18} {r['rps']:>8} {r['slow_share']:>13.2%} {r['p50_ms']:>6} "
                f"{r['p90_ms']:>6} {r['p99_ms']:>6} {r['p999_ms']:>8}"
            )
    report = {
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "seconds": opts.seconds,
        "concurrency": opts.concurrency,
        "delay_ms": opts.delay_ms,
        "decay": opts.decay,
        "cpus": os.cpu_count(),
        "rounds": rounds,
    }
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {opts.out} (latencies in ms)")
    return 0


def one_round(opts: argparse.Namespace, tmp: Path, ports: list[int], mode: str) -> dict[str, Any]:
    """A fresh lb in `mode`, the first backend slowed on command, the client's figures."""
    slow = ports[0]
    command(slow, "/__delay?ms=0")
    port, admin_port = free_port(), free_port()
    config = tmp / f"{mode}.yaml"
    config.write_text(lb_config(port, admin_port, ports, mode, opts.decay))
    lb = subprocess.Popen(
        [sys.executable, "-m", "lb", "run", "-c", str(config)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, timeout=60)
        command(slow, f"/__delay?ms={opts.delay_ms}")
        r = run_client(port, opts.warmup, opts.seconds, opts.concurrency)
    finally:
        lb.send_signal(signal.SIGTERM)
        try:
            lb.wait(20)
        except subprocess.TimeoutExpired:
            lb.kill()
            lb.wait()
    by = r.pop("answered_by")
    r["slow_share"] = round(by.get(f"ok {slow}", 0) / max(1, r["requests"]), 4)
    return r


if __name__ == "__main__":
    sys.exit(main())
