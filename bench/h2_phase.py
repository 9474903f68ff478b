"""HTTP/2 side by side: h2load through lb, HAProxy and NGINX to the same HTTP/1.1 backends.

h2c with prior knowledge, `h2load -c16 -m10` (16 connections, 10 concurrent streams each), the
proxies pinned and restarted per round as in the HTTP/1.1 phase (run.py), rounds interleaved.
Reported per proxy: requests/s and CPU microseconds per request of its process tree, and each
round's ratio to HAProxy. Called by run.py with `--h2`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from run import Bench, Layout

CONNECTIONS, STREAMS = 16, 10
PROXIES = ("haproxy", "nginx", "lb")
# HTTP/2 to the backends too (NGINX backends speaking h2c): NGINX cannot proxy to HTTP/2.
UPSTREAM_PROXIES = ("haproxy", "lb")


def haproxy_config(port: int, backends: list[int], h2_backends: bool = False) -> str:
    proto = " proto h2" if h2_backends else ""
    servers = "".join(f"    server b{i} 127.0.0.1:{b}{proto}\n" for i, b in enumerate(backends, 1))
    return f"""global
    nbthread 1
    maxconn 4000

defaults
    mode http
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s

frontend bench
    bind 127.0.0.1:{port} proto h2
    default_backend app

backend app
    balance leastconn
{servers}"""


def nginx_config(run: Any, prefix: Path, port: int, backends: list[int], nofile: int) -> str:
    servers = "".join(f"        server 127.0.0.1:{b};\n" for b in backends)
    # keepalive_requests bounds requests per HTTP/2 connection too, and h2load does not
    # reconnect: lifted, or NGINX's figure would be of a run cut short.
    return f"""{run.nginx_common(prefix, 1, nofile)}http {{
{run.nginx_http_common(prefix)}    upstream app {{
        least_conn;
{servers}        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port} http2 backlog=4096;
        http2_max_requests 1000000;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def lb_config(port: int, admin_port: int, backends: list[int], h2_backends: bool = False) -> str:
    lines = "".join(f'      - {{address: "127.0.0.1:{b}", weight: 1}}\n' for b in backends)
    if h2_backends:
        lines += "    protocol: h2\n"
    return f"""listeners:
  - name: bench
    bind: "127.0.0.1:{port}"
    protocols: [http1, h2]
admin:
  bind: "127.0.0.1:{admin_port}"
services:
  app:
    backends:
{lines}routes:
  - name: all
    match: {{path: {{prefix: "/"}}}}
    service: app
"""


def start(
    run: Any,
    bench: Bench,
    layout: Layout,
    name: str,
    backends: list[int],
    tag: str,
    h2_backends: bool = False,
) -> tuple[subprocess.Popen[bytes], int] | str:
    home = bench.workdir / f"h2-{tag}{name}"
    home.mkdir()
    port = bench.ports.free()
    if name == "haproxy":
        conf = home / "haproxy.cfg"
        conf.write_text(haproxy_config(port, backends, h2_backends))
        cmd = [bench.tools.haproxy, "-db", "-f", str(conf)]
    elif name == "nginx":
        conf = home / "nginx.conf"
        conf.write_text(nginx_config(run, home, port, backends, bench.nofile))
        cmd = bench.nginx_cmd(home, conf)
    else:
        conf = home / "lb.yaml"
        conf.write_text(lb_config(port, bench.ports.free(), backends, h2_backends))
        cmd = [*bench.tools.lb, "run", "-c", str(conf)]
    log = home / "stdout.log"
    proc = bench.procs.start(cmd, layout.proxy_cpus[:1], log, cwd=run.REPO)
    if not wait_port(port):
        bench.procs.stop(proc)
        return f"{name} did not listen on :{port}\n{run.log_tail(log)}"
    return proc, port


def wait_port(port: int, timeout_s: float = 10.0) -> bool:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False


def h2load(
    h2load_path: str, taskset: str, cpus: list[int], port: int, requests: int
) -> dict[str, Any]:
    cmd = [taskset, "-c", ",".join(map(str, cpus)), h2load_path]
    cmd += ["-c", str(CONNECTIONS), "-m", str(STREAMS), "-n", str(requests)]
    out = subprocess.run(
        [*cmd, f"http://127.0.0.1:{port}/"], capture_output=True, text=True, timeout=300
    ).stdout
    rps = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    done = re.search(
        r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", out
    )
    return {
        "rps": float(rps.group(1)) if rps else None,
        "succeeded": int(done.group(2)) if done else 0,
        "failed": int(done.group(3)) if done else requests,
    }


def start_h2_backends(run: Any, bench: Bench, layout: Layout) -> list[int]:
    """The two NGINX backends of run.py, speaking HTTP/2 (h2c by prior knowledge)."""
    ports: list[int] = []
    for i in (1, 2):
        prefix = bench.workdir / f"h2up-backend{i}"
        prefix.mkdir()
        port = bench.ports.free()
        conf = prefix / "nginx.conf"
        text = run.nginx_backend_config(prefix, port, max(1, len(layout.backend_cpus)), 1024)
        conf.write_text(
            text.replace(
                " backlog=4096;", " http2 backlog=4096;\n        http2_max_requests 1000000;"
            )
        )
        log = prefix / "stdout.log"
        proc = bench.procs.start(bench.nginx_cmd(prefix, conf), layout.backend_cpus, log)
        if proc.poll() is not None or not wait_port(port):  # h2c only: no HTTP/1.1 probe
            raise RuntimeError(f"h2 backend {i} failed\n{run.log_tail(prefix / 'error.log')}")
        ports.append(port)
    return ports


def h2_phase(run: Any, bench: Bench, cpus: list[int]) -> dict[str, Any]:
    """Interleaved rounds of h2load through each proxy to HTTP/1.1 backends, then through
    HAProxy and lb to HTTP/2 backends; medians and per-round ratios."""
    out = scenario(run, bench, cpus, h2_backends=False)
    try:
        out["h2_backends"] = scenario(run, bench, cpus, h2_backends=True)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"\nh2 to h2 backends: {exc}")
        out["h2_backends"] = {"error": str(exc)}
    return out


def scenario(run: Any, bench: Bench, cpus: list[int], h2_backends: bool) -> dict[str, Any]:
    h2load_path = shutil.which("h2load")
    if h2load_path is None:
        print("\nh2: h2load missing (Debian nghttp2-client): phase skipped")
        return {"error": "h2load missing"}
    layout = run.standard_layout(cpus)
    requests = max(20_000, int(bench.args.h2_requests))
    names = UPSTREAM_PROXIES if h2_backends else PROXIES
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    errors: dict[str, str] = {}
    tag = "h2up-" if h2_backends else ""
    with run.phase(bench):
        if h2_backends:
            backends = start_h2_backends(run, bench, layout)
        else:
            backends = run.start_backends(bench, layout, "h2-")
        for rnd in range(1, bench.args.rounds + 1):
            for name in names:
                if name in errors:
                    continue
                started = start(run, bench, layout, name, backends, f"{tag}r{rnd}-", h2_backends)
                if isinstance(started, str):
                    errors[name] = started
                    print(f"h2: {name} failed to start\n  {run.indent(started)}")
                    continue
                proc, port = started
                try:
                    h2load(h2load_path, bench.tools.taskset, layout.wrk_cpus, port, 2000)  # warm
                    before = run.tree_cpu(proc.pid)
                    result = h2load(
                        h2load_path, bench.tools.taskset, layout.wrk_cpus, port, requests
                    )
                    after = run.tree_cpu(proc.pid)
                finally:
                    bench.procs.stop(proc)
                ticks = (after.user - before.user) + (after.system - before.system)
                done = result["succeeded"] or 1
                result["cpu_us_per_req"] = ticks / run.CLK_TCK * 1e6 / done
                rounds[name].append(result)
                rps = result["rps"] or 0.0
                print(
                    f"h2{' to h2' if h2_backends else ''} round {rnd}/{bench.args.rounds}  "
                    f"{name:8} {rps:9,.0f} req/s  "
                    f"{result['cpu_us_per_req']:.1f} µs/req  failed {result['failed']}"
                )
    return summarize(rounds, errors, h2_backends)


def summarize(
    rounds: dict[str, list[dict[str, Any]]], errors: dict[str, str], h2_backends: bool
) -> dict[str, Any]:
    import statistics

    backends = "HTTP/2 (h2c)" if h2_backends else "HTTP/1.1"
    out: dict[str, Any] = {
        "load": f"h2load -c{CONNECTIONS} -m{STREAMS} (h2c prior knowledge)",
        "backends": backends,
        "errors": errors,
    }
    base = rounds.get("haproxy", [])
    print(f"\nHTTP/2, h2c, 16 connections x 10 streams, {backends} backends: medians")
    for name, runs in rounds.items():
        if not runs:
            continue
        rps = [r["rps"] for r in runs if r["rps"]]
        cpu = [r["cpu_us_per_req"] for r in runs]
        ratios = [
            r["rps"] / b["rps"] for r, b in zip(runs, base, strict=False) if r["rps"] and b["rps"]
        ]
        out[name] = {
            "rps": statistics.median(rps) if rps else None,
            "cpu_us_per_req": statistics.median(cpu),
            "failed": sum(r["failed"] for r in runs),
            "vs_haproxy_rps_per_round": ratios,
            "vs_haproxy_rps": statistics.median(ratios) if ratios else None,
        }
        s = out[name]
        print(
            f"  {name:8} {s['rps'] or 0:9,.0f} req/s  {s['cpu_us_per_req']:6.1f} µs/req  "
            f"x HAProxy {s['vs_haproxy_rps'] or 0:.2f}  failed {s['failed']}"
        )
    lb = out.get("lb", {})
    if lb.get("vs_haproxy_rps") is not None and not h2_backends:
        met = "PASS" if lb["vs_haproxy_rps"] >= 0.5 else "MISS"
        print(f"  check: lb/haproxy h2 req/s {lb['vs_haproxy_rps']:.2f}  target >= 0.5  {met}")
    return out
