#!/usr/bin/env python3
"""The standard proxy benchmark: lb against HAProxy and NGINX on the same pinned cores.

Method: /work/shared/perf-method.md. Two NGINX backends and wrk share one core, the proxy
under test gets another, rounds are interleaved (A B C A B C ...), each round on freshly
started proxies, and every figure that matters is a ratio against HAProxy measured in the same
round, because these machines are shared and noisy. CPU microseconds per request of the proxy
process tree (from /proc/PID/stat) is the steadier figure.

Usage:
    .venv/bin/python bench/run.py [--rounds 3] [--duration 10] [--connections 64,1000]
        [--only lb,haproxy,...] [--with-multicore] [--scaling] [--memory]
        [--out bench/results/latest.json]

Stdlib only, so that it runs before (and regardless of) the project's own dependencies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import edge_fixture  # bench/, beside this script
import tracing_fixture

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "bench" / "results" / "latest.json"
# Debian puts haproxy and nginx in /usr/sbin, which a non-login or non-root PATH often lacks.
SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")
APT_PACKAGES = {"wrk": "wrk", "haproxy": "haproxy", "nginx": "nginx", "taskset": "util-linux"}
CLK_TCK = os.sysconf("SC_CLK_TCK")
READY_TIMEOUT_S = 10.0
BASELINE = "haproxy"
# Typographic characters for the tables, spelled as escapes to keep the source ASCII-plain.
TIMES, DASH = "\u00d7", "\u2013"

# py_floor: bench/floor_proxy.py, the least a uvloop + httptools proxy does (lb's floor).
STANDARD_PROXIES = (
    "haproxy",
    "nginx",
    "lb",
    "lb_metrics_off",
    "lb_policies",
    "lb_edge",
    "lb_tracing",
    "py_floor",
)
MULTICORE_PROXIES = ("haproxy_2threads", "lb_2workers")
SCALING_LEVELS = (1, 2, 4, 8)

# (name, numerator proxy, denominator proxy, metric, comparison, target); values are the median
# of per-round ratios, so each one compares two runs that saw the same machine noise.
CHECKS: tuple[tuple[str, str, str, str, str, float], ...] = (
    ("lb_vs_haproxy_rps", "lb", "haproxy", "rps", ">=", 0.85),
    ("lb_vs_haproxy_cpu_per_req", "lb", "haproxy", "cpu_us_per_req", "<=", 1.25),
    ("lb_vs_haproxy_p99", "lb", "haproxy", "p99_ms", "<=", 1.5),
    ("lb_vs_lb_metrics_off_rps", "lb", "lb_metrics_off", "rps", ">=", 0.95),
    ("lb_policies_vs_lb_rps", "lb_policies", "lb", "rps", ">=", 0.95),
    ("lb_edge_vs_lb_rps", "lb_edge", "lb", "rps", ">=", 0.9),
    ("lb_tracing_vs_lb_rps", "lb_tracing", "lb", "rps", ">=", 0.95),
    # Not targets: how far lb is from its architecture's floor, and the floor from HAProxy.
    ("lb_vs_py_floor_rps", "lb", "py_floor", "rps", "info", 0.0),
    ("py_floor_vs_haproxy_rps", "py_floor", "haproxy", "rps", "info", 0.0),
    ("py_floor_vs_haproxy_cpu_per_req", "py_floor", "haproxy", "cpu_us_per_req", "info", 0.0),
    # Two cores each; the same bar as one core: workers must scale as HAProxy's threads do.
    ("lb_2workers_vs_haproxy_2threads_rps", "lb_2workers", "haproxy_2threads", "rps", ">=", 0.6),
)


# --------------------------------------------------------------------------------------------
# Tools


@dataclass(frozen=True)
class Tools:
    wrk: str
    haproxy: str
    nginx: str
    taskset: str
    nginx_version: tuple[int, ...]
    lb: list[str]


def which(name: str) -> str | None:
    path = os.pathsep.join([os.environ.get("PATH", ""), *SBIN_DIRS])
    return shutil.which(name, path=path)


def apt_install(packages: list[str]) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"installing with apt-get: {' '.join(packages)}", flush=True)
    subprocess.run(["apt-get", "update"], check=True, env=env)
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    subprocess.run(cmd, check=True, env=env)


def ensure_tools(lb_cmd: str) -> Tools:
    missing = [name for name in APT_PACKAGES if which(name) is None]
    if missing:
        packages = sorted({APT_PACKAGES[name] for name in missing})
        if os.geteuid() != 0 or which("apt-get") is None:
            sys.exit(
                f"bench: missing {', '.join(missing)}; install them first, e.g. "
                f"`sudo apt-get install -y {' '.join(packages)}` (apt-get needs root)"
            )
        apt_install(packages)
    paths = {name: which(name) for name in APT_PACKAGES}
    still_missing = [name for name, path in paths.items() if path is None]
    if still_missing:
        sys.exit(f"bench: still missing after apt-get install: {', '.join(still_missing)}")
    return Tools(
        wrk=str(paths["wrk"]),
        haproxy=str(paths["haproxy"]),
        nginx=str(paths["nginx"]),
        taskset=str(paths["taskset"]),
        nginx_version=nginx_version(str(paths["nginx"])),
        lb=shlex.split(lb_cmd) if lb_cmd else lb_command(),
    )


def lb_command() -> list[str]:
    # Prefer the console script of the interpreter running us (the project venv), then the
    # repo's venv, then `python -m lb` for a checkout that has not been pip-installed.
    for candidate in (Path(sys.executable).parent / "lb", REPO / ".venv" / "bin" / "lb"):
        if candidate.exists():
            return [str(candidate)]
    venv_python = REPO / ".venv" / "bin" / "python"
    return [str(venv_python if venv_python.exists() else sys.executable), "-m", "lb"]


def nginx_version(nginx: str) -> tuple[int, ...]:
    out = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr
    match = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(part) for part in match.groups()) if match else (0, 0, 0)


def tool_versions(tools: Tools) -> dict[str, str]:
    def first_line(cmd: list[str]) -> str:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        text = (proc.stdout or proc.stderr).strip()
        return text.splitlines()[0] if text else ""

    return {
        "haproxy": first_line([tools.haproxy, "-v"]),
        "nginx": first_line([tools.nginx, "-v"]),
        "wrk": first_line([tools.wrk, "--version"]),
    }


def raise_nofile(want: int = 1 << 17) -> int:
    """Raise RLIMIT_NOFILE (children inherit it); returns the soft limit now in force."""
    # 1000 wrk connections, the proxies' upstream sockets and --memory's 10,000 idle client
    # connections all need descriptors.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard >= want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    else:
        try:  # root may raise the hard limit too
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
        except (ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --------------------------------------------------------------------------------------------
# Processes


def read_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (index 0 is field 3, the state)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses; it ends at the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def process_tree(root: int) -> dict[int, str]:
    """PID -> start time for root and all its descendants (start time guards against reuse)."""
    children: dict[int, list[int]] = {}
    starts: dict[int, str] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = read_stat(int(entry.name))
        if fields is None:
            continue
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)
        starts[pid] = fields[19]
    tree: dict[int, str] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in starts:
            tree[pid] = starts[pid]
            todo.extend(children.get(pid, []))
    return tree


@dataclass(frozen=True)
class CpuTicks:
    user: int
    system: int


def tree_cpu(root: int) -> CpuTicks:
    # utime/stime of every live process in the tree plus cutime/cstime (reaped children), so a
    # worker that exits between two samples moves its time to its parent instead of losing it.
    user = system = 0
    for pid in process_tree(root):
        fields = read_stat(pid)
        if fields is not None:
            user += int(fields[11]) + int(fields[13])
            system += int(fields[12]) + int(fields[14])
    return CpuTicks(user, system)


def tree_rss_kb(root: int) -> int:
    total = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def cpu_list(cpus: Iterable[int]) -> str:
    return ",".join(str(cpu) for cpu in cpus)


class ProcessSet:
    """Every child the harness starts, each in its own process group, so one finally-block
    can stop them all (Ctrl-C reaches only our group, and we stop the rest ourselves)."""

    def __init__(self, taskset: str) -> None:
        self._taskset = taskset
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        cmd: list[str],
        cpus: list[int] | None,
        log: Path | None = None,
        cwd: Path | None = None,
        capture: bool = False,
    ) -> subprocess.Popen[bytes]:
        argv = ([self._taskset, "-c", cpu_list(cpus)] if cpus else []) + cmd
        out: Any = subprocess.PIPE if capture else subprocess.DEVNULL
        if log is not None:
            out = log.open("ab")
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                start_new_session=True,
            )
        finally:
            if log is not None:
                out.close()  # the child holds its own descriptor
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
        tree = process_tree(proc.pid) if proc.poll() is None else {}
        self._signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self._signal_group(proc, signal.SIGKILL)
            proc.wait()
        # Sweep workers that outlived their parent or left its process group.
        self._signal_group(proc, signal.SIGKILL)
        for pid, start in tree.items():
            fields = read_stat(pid)
            if pid != proc.pid and fields is not None and fields[19] == start:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        if proc.stdout is not None:
            proc.stdout.close()
        with contextlib.suppress(ValueError):
            self._procs.remove(proc)

    def stop_all(self) -> None:
        with signals_ignored():
            for proc in reversed(list(self._procs)):
                self.stop(proc, grace_s=3.0)

    @staticmethod
    def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """A second Ctrl-C (or a SIGTERM) while stopping children must not leave some behind."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in sigs}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def install_signal_handlers() -> None:
    # Turn SIGTERM/SIGHUP into SystemExit so that the finally-blocks stop every child.
    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


# --------------------------------------------------------------------------------------------
# Ports and readiness


class Ports:
    def __init__(self) -> None:
        self._used: set[int] = set()

    def free(self) -> int:
        # Bind-to-0 then close: racy in theory, but nothing else on this box grabs ports
        # at this rate, and a collision surfaces as a readiness failure, not a wrong number.
        while True:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            if port not in self._used:
                self._used.add(port)
                return port


def http_status(port: int, timeout_s: float = 1.0, headers: bytes = b"") -> int | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
            sock.sendall(
                b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n" + headers + b"\r\n"
            )
            head = sock.recv(64)
    except OSError:
        return None
    match = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    return int(match.group(1)) if match else None


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def wait_ready(
    proc: subprocess.Popen[bytes], port: int, log: Path, headers: bytes = b""
) -> str | None:
    """None when the port answers GET / (with `headers`, the credentials lb_edge wants) with
    200 within the timeout, else why not."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    last: int | None = None
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            return f"exited with code {code} before becoming ready\n{log_tail(log)}"
        last = http_status(port, headers=headers)
        if last == 200:
            return None
        time.sleep(0.05)
    seen = f"last status {last}" if last is not None else "no HTTP answer"
    return f"not ready after {READY_TIMEOUT_S:.0f} s ({seen})\n{log_tail(log)}"


# --------------------------------------------------------------------------------------------
# Configurations


def nginx_common(prefix: Path, workers: int, nofile: int) -> str:
    # Everything nginx writes goes under the temp prefix, so no root paths are touched. The
    # workers inherit our raised RLIMIT_NOFILE; worker_connections stays within it.
    connections = max(1024, min(16384, nofile - 256))
    return f"""daemon off;
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections {connections}; }}
"""


def nginx_http_common(prefix: Path) -> str:
    temp_paths = "".join(
        f"    {kind}_temp_path {prefix}/{kind}_temp;\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # keepalive_requests defaults to 1000 (nginx >= 1.19.10); lift it so no peer pays for
    # reconnects the others do not.
    return f"""    access_log off;
{temp_paths}    keepalive_timeout 300s;
    keepalive_requests 1000000;
"""


def nginx_backend_config(prefix: Path, port: int, workers: int, nofile: int) -> str:
    return f"""{nginx_common(prefix, workers, nofile)}http {{
{nginx_http_common(prefix)}    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""


def nginx_proxy_config(
    prefix: Path, port: int, backends: list[int], workers: int, nofile: int
) -> str:
    servers = "".join(f"        server 127.0.0.1:{b};\n" for b in backends)
    return f"""{nginx_common(prefix, workers, nofile)}http {{
{nginx_http_common(prefix)}    upstream app {{
        least_conn;
{servers}        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def haproxy_config(port: int, backends: list[int], threads: int, maxconn: int) -> str:
    servers = "".join(
        f"    server b{i} 127.0.0.1:{b} maxconn {maxconn}\n" for i, b in enumerate(backends, 1)
    )
    return f"""global
    nbthread {threads}
    maxconn {maxconn}

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    timeout http-request 10s

frontend bench
    bind 127.0.0.1:{port}
    maxconn {maxconn}
    default_backend app

backend app
    balance leastconn
{servers}"""


def lb_config(port: int, admin_port: int, backends: list[int], variant: str, edge: str = "") -> str:
    """The lead's schema, keys exactly as agreed; `variant` is default|metrics_off|policies|
    edge|tracing, `edge` the route's edge policies (bench/edge_fixture.py) for edge (tracing's
    lines, bench/tracing_fixture.py, are appended by the caller)."""
    backend_lines = "".join(f'      - {{address: "127.0.0.1:{b}", weight: 1}}\n' for b in backends)
    breaker = (
        "    circuit_breaker: {max_requests: 100000, max_pending: 100000, "
        "max_connections: 100000, consecutive_failures: 1000, failure_ratio: 0.9, "
        "min_requests: 1000}\n"
        if variant == "policies"
        else ""
    )
    rate_limit = (
        '    rate_limit: {rate: "1000000/s", burst: 1000000, key: client_ip}\n'
        if variant == "policies"
        else ""
    )
    metrics = "false" if variant == "metrics_off" else "true"
    return f"""listeners:
  - name: bench
    bind: "127.0.0.1:{port}"
admin:
  bind: "127.0.0.1:{admin_port}"
metrics:
  enabled: {metrics}
services:
  app:
    backends:
{backend_lines}{breaker}routes:
  - name: all
    match: {{path: {{prefix: "/"}}}}
    service: app
{rate_limit}{edge}"""


# --------------------------------------------------------------------------------------------
# Proxies


@dataclass(frozen=True)
class ProxySpec:
    name: str
    kind: str  # haproxy | nginx | lb
    cpus: list[int]
    threads: int = 1  # haproxy nbthread, nginx worker_processes, lb --workers
    variant: str = "default"  # lb only: default | metrics_off | policies | edge | tracing


@dataclass
class Running:
    spec: ProxySpec
    proc: subprocess.Popen[bytes]
    port: int
    log: Path


@dataclass
class Layout:
    """Which CPUs each role is pinned to (positions in the affinity list, not assumptions)."""

    backend_cpus: list[int]
    wrk_cpus: list[int]
    proxy_cpus: list[int]  # a one-core proxy takes proxy_cpus[0]
    multi_cpus: list[int]  # the 2-thread / 2-worker proxies


def standard_layout(cpus: list[int]) -> Layout:
    if len(cpus) == 1:
        return Layout(cpus[:1], cpus[:1], cpus[:1], cpus[:1])
    # The method: backends and wrk on core 0, the proxy under test alone on core 1. On a
    # 2-core box the two-thread peers can only get both cores, shared with the load.
    multi = cpus[:2] if len(cpus) < 4 else cpus[1:3]
    return Layout(cpus[:1], cpus[:1], cpus[1:2], multi)


def scaling_layout(cpus: list[int]) -> Layout:
    if len(cpus) < 4:
        return standard_layout(cpus)
    # Backends and wrk get their own cores, enough to feed 8 proxy cores, the rest is the
    # proxy's: 8 cores -> 1 backend, 1 wrk, 6 proxy; 12 -> 2, 2, 8; 16 -> 2, 3, 11.
    load = max(2, len(cpus) // 3)
    n_backend = max(1, load // 2)
    return Layout(cpus[:n_backend], cpus[n_backend:load], cpus[load:], cpus[load:])


def standard_specs(layout: Layout, multicore: bool) -> list[ProxySpec]:
    one = layout.proxy_cpus[:1]
    specs = [
        ProxySpec("haproxy", "haproxy", one),
        ProxySpec("nginx", "nginx", one),
        ProxySpec("lb", "lb", one),
        ProxySpec("lb_metrics_off", "lb", one, variant="metrics_off"),
        ProxySpec("lb_policies", "lb", one, variant="policies"),
        ProxySpec("lb_edge", "lb", one, variant="edge"),
        ProxySpec("lb_tracing", "lb", one, variant="tracing"),
        ProxySpec("py_floor", "floor", one),
    ]
    if multicore:
        two = layout.multi_cpus
        specs += [
            ProxySpec("haproxy_2threads", "haproxy", two, threads=2),
            ProxySpec("lb_2workers", "lb", two, threads=2),
        ]
    return specs


def scaling_specs(layout: Layout) -> list[ProxySpec]:
    specs: list[ProxySpec] = []
    for n in scaling_levels(layout):
        cpus = layout.proxy_cpus[:n]
        specs.append(ProxySpec(f"haproxy_t{n}", "haproxy", cpus, threads=n))
        specs.append(ProxySpec(f"lb_w{n}", "lb", cpus, threads=n))
    return specs


def scaling_levels(layout: Layout) -> list[int]:
    return [n for n in SCALING_LEVELS if n <= len(layout.proxy_cpus)]


@dataclass
class Bench:
    args: argparse.Namespace
    tools: Tools
    workdir: Path
    procs: ProcessSet
    ports: Ports = field(default_factory=Ports)
    nofile: int = 1024
    # Sent by wrk to every proxy: the credentials lb_edge's policies admit (edge_fixture.py).
    wrk_headers: list[str] = field(default_factory=list)

    def nginx_cmd(self, prefix: Path, conf: Path) -> list[str]:
        cmd = [self.tools.nginx, "-p", str(prefix), "-c", str(conf)]
        if self.tools.nginx_version >= (1, 19, 5):
            # -e stops nginx from first opening the compiled-in /var/log/nginx/error.log.
            cmd += ["-e", str(prefix / "error.log")]
        return cmd


def start_backends(bench: Bench, layout: Layout, tag: str) -> list[int]:
    """Two NGINX backends; raises RuntimeError when one does not come up (nothing to measure)."""
    ports: list[int] = []
    for i in (1, 2):
        prefix = bench.workdir / f"{tag}backend{i}"
        prefix.mkdir()
        port = bench.ports.free()
        conf = prefix / "nginx.conf"
        workers = max(1, len(layout.backend_cpus))
        conf.write_text(nginx_backend_config(prefix, port, workers, bench.nofile))
        log = prefix / "stdout.log"
        proc = bench.procs.start(bench.nginx_cmd(prefix, conf), layout.backend_cpus, log)
        error = wait_ready(proc, port, prefix / "error.log")
        if error:
            raise RuntimeError(f"backend {i} failed: {error}\n{log_tail(log)}")
        ports.append(port)
    return ports


def proxy_command(
    bench: Bench, spec: ProxySpec, home: Path, port: int, backends: list[int]
) -> list[str]:
    """Write the proxy's configuration under `home`; return its command line."""
    if spec.kind == "haproxy":
        conf = home / "haproxy.cfg"
        # Leave descriptors for both sides of each connection plus slack.
        maxconn = max(256, min(20000, (bench.nofile - 200) // 2))
        conf.write_text(haproxy_config(port, backends, spec.threads, maxconn))
        return [bench.tools.haproxy, "-db", "-f", str(conf)]
    if spec.kind == "nginx":
        conf = home / "nginx.conf"
        conf.write_text(nginx_proxy_config(home, port, backends, spec.threads, bench.nofile))
        return bench.nginx_cmd(home, conf)
    conf = home / "lb.yaml"
    if spec.kind == "floor":  # reads lb's config: the same listener and backends
        conf.write_text(lb_config(port, bench.ports.free(), backends, "default"))
        return [sys.executable, str(REPO / "bench" / "floor_proxy.py"), "run", "-c", str(conf)]
    edge = edge_fixture.write(home)[0] if spec.variant == "edge" else ""
    text = lb_config(port, bench.ports.free(), backends, spec.variant, edge)
    # lb_tracing: 1% sampled, spans to a sink in this process (bench/tracing_fixture.py)
    conf.write_text(text + tracing_fixture.yaml() if spec.variant == "tracing" else text)
    cmd = [*bench.tools.lb, "run", "-c", str(conf)]
    # One worker means the plain single-process mode, so lb_w1 equals lb's standard figure.
    return [*cmd, "--workers", str(spec.threads)] if spec.threads > 1 else cmd


def start_proxy(bench: Bench, spec: ProxySpec, backends: list[int], tag: str) -> Running | str:
    home = bench.workdir / f"{tag}{spec.name}"
    home.mkdir()
    port = bench.ports.free()
    log = home / "stdout.log"
    cmd = proxy_command(bench, spec, home, port, backends)
    try:
        proc = bench.procs.start(cmd, spec.cpus, log, cwd=REPO)
    except OSError as exc:
        return f"could not start {cmd[0]}: {exc}"
    # wrk's -H arguments as header lines
    headers = b"".join(h.encode() + b"\r\n" for h in bench.wrk_headers[1::2])
    error = wait_ready(proc, port, log, headers)
    if error is None:
        return Running(spec, proc, port, log)
    if spec.kind == "nginx":
        error += "\n" + log_tail(home / "error.log")
    bench.procs.stop(proc)
    return f"{error}\ncommand: {' '.join(cmd)}"


# --------------------------------------------------------------------------------------------
# Load and its figures

UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def to_ms(value: str, unit: str) -> float:
    return float(value) * UNIT_MS[unit]


def parse_wrk(text: str) -> dict[str, Any]:
    """Figures from `wrk --latency` output; raises ValueError when the run did not report."""
    requests = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)", text)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if not requests or not rps:
        raise ValueError(f"unexpected wrk output:\n{text.strip()}")
    result: dict[str, Any] = {
        "requests": int(requests.group(1)),
        "seconds": round(to_ms(requests.group(2), requests.group(3)) / 1e3, 3),
        "rps": float(rps.group(1)),
    }
    for pct in (50, 75, 90, 99):
        match = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s|m|h)", text, re.MULTILINE)
        result[f"p{pct}_ms"] = to_ms(*match.groups()) if match else None
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    kinds = ("connect", "read", "write", "timeout")
    counts = [int(n) for n in errors.groups()] if errors else [0, 0, 0, 0]
    result["socket_errors"] = dict(zip(kinds, counts, strict=True))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    result["non_2xx"] = int(non_2xx.group(1)) if non_2xx else 0
    return result


def run_wrk(
    bench: Bench, port: int, conns: int, seconds: float, cpus: list[int], threads: int
) -> str:
    cmd = [
        bench.tools.wrk,
        f"-t{threads}",
        f"-c{conns}",
        f"-d{seconds:g}s",
        "--latency",
        *bench.wrk_headers,
        f"http://127.0.0.1:{port}/",
    ]
    proc = bench.procs.start(cmd, cpus, capture=True)
    try:
        out, _ = proc.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        out = b""
    finally:
        bench.procs.stop(proc)
    return out.decode(errors="replace")


def measure(
    bench: Bench, running: Running, conns: int, layout: Layout, wrk_threads: int
) -> dict[str, Any]:
    """One warmed-up wrk run with the proxy tree's CPU time around it."""
    args = bench.args
    if args.warmup > 0:
        run_wrk(bench, running.port, conns, args.warmup, layout.wrk_cpus, wrk_threads)
    pid = running.proc.pid
    before = tree_cpu(pid)
    text = run_wrk(bench, running.port, conns, args.duration, layout.wrk_cpus, wrk_threads)
    after = tree_cpu(pid)
    result = parse_wrk(text)
    done = max(1, result["requests"])
    user_us = (after.user - before.user) / CLK_TCK * 1e6 / done
    sys_us = (after.system - before.system) / CLK_TCK * 1e6 / done
    result["cpu_user_us_per_req"] = round(user_us, 2)
    result["cpu_sys_us_per_req"] = round(sys_us, 2)
    result["cpu_us_per_req"] = round(user_us + sys_us, 2)
    return result


def run_rounds(
    bench: Bench,
    running: list[Running],
    layout: Layout,
    wrk_threads: int,
    errors: dict[str, str],
    restart: Callable[[Running, int], Running],
) -> dict[int, dict[str, list[dict[str, Any] | None]]]:
    """conns -> proxy -> per-round results (None where that run failed), rounds interleaved.

    Every round after the first runs on freshly started proxies: a process's memory layout
    (allocation addresses, hash seeds) shifts its speed by a few percent for its whole life,
    which would otherwise bias every round alike and decide close ratios such as metrics
    on/off."""
    args = bench.args
    runs: dict[int, dict[str, list[dict[str, Any] | None]]] = {
        c: {r.spec.name: [] for r in running} for c in args.connections
    }
    for rnd in range(1, args.rounds + 1):
        if rnd > 1:
            running = [restart(p, rnd) if p.spec.name not in errors else p for p in running]
        for conns in args.connections:
            for proxy in running:
                name = proxy.spec.name
                result = None
                if name not in errors:
                    label = f"round {rnd}/{args.rounds}  c={conns:<5} {name:<18}"
                    print(label, end=" ", flush=True)
                    result = measure_or_error(bench, proxy, conns, layout, wrk_threads, errors)
                    print(run_line(result, errors.get(name)), flush=True)
                runs[conns][name].append(result)
    return runs


def measure_or_error(
    bench: Bench,
    proxy: Running,
    conns: int,
    layout: Layout,
    wrk_threads: int,
    errors: dict[str, str],
) -> dict[str, Any] | None:
    name = proxy.spec.name
    if proxy.proc.poll() is not None:
        errors[name] = f"exited with code {proxy.proc.returncode} during the run\n" + log_tail(
            proxy.log
        )
        return None
    try:
        result = measure(bench, proxy, conns, layout, wrk_threads)
    except ValueError as exc:
        # A single bad wrk run costs that round, not the proxy.
        print(f"\n  wrk: {exc}", file=sys.stderr)
        return None
    if proxy.proc.poll() is not None:
        errors[name] = f"exited with code {proxy.proc.returncode} under load\n" + log_tail(
            proxy.log
        )
        return None
    return result


def run_line(result: dict[str, Any] | None, error: str | None) -> str:
    if result is None:
        return f"FAILED: {error.splitlines()[0]}" if error else "FAILED"
    errs = sum(result["socket_errors"].values()) + result["non_2xx"]
    return (
        f"{result['rps']:>10,.0f} req/s  p50 {fmt(result['p50_ms'])} ms  "
        f"p99 {fmt(result['p99_ms'])} ms  {result['cpu_us_per_req']:.1f} µs/req"
        + (f"  errors {errs}" if errs else "")
    )


# --------------------------------------------------------------------------------------------
# Summaries


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 4) if values else None


def per_round_ratios(
    num: list[dict[str, Any] | None], den: list[dict[str, Any] | None], metric: str
) -> list[float | None]:
    ratios: list[float | None] = []
    for a, b in zip(num, den, strict=True):
        ok = a is not None and b is not None and a.get(metric) and b.get(metric)
        ratios.append(round(a[metric] / b[metric], 4) if ok else None)  # type: ignore[index]
    return ratios


def ratio_summary(ratios: list[float | None]) -> tuple[float | None, float | None, float | None]:
    present = [r for r in ratios if r is not None]
    if not present:
        return None, None, None
    return median(present), min(present), max(present)


def summarize_proxy(
    runs: list[dict[str, Any] | None], base: list[dict[str, Any] | None] | None
) -> dict[str, Any]:
    ok = [r for r in runs if r is not None]

    def med(key: str) -> float | None:
        return median([r[key] for r in ok if r.get(key) is not None])

    summary: dict[str, Any] = {
        "rps": med("rps"),
        "p50_ms": med("p50_ms"),
        "p99_ms": med("p99_ms"),
        "cpu_us_per_req": med("cpu_us_per_req"),
        "cpu_user_us_per_req": med("cpu_user_us_per_req"),
        "cpu_sys_us_per_req": med("cpu_sys_us_per_req"),
    }
    if base is not None:
        rps_ratios = per_round_ratios(runs, base, "rps")
        cpu_ratios = per_round_ratios(runs, base, "cpu_us_per_req")
        mid, low, high = ratio_summary(rps_ratios)
        summary |= {
            "ratio_vs_haproxy": mid,
            "ratio_vs_haproxy_min": low,
            "ratio_vs_haproxy_max": high,
            "ratio_vs_haproxy_per_round": rps_ratios,
            "cpu_ratio_vs_haproxy": ratio_summary(cpu_ratios)[0],
            "cpu_ratio_vs_haproxy_per_round": cpu_ratios,
        }
    summary["socket_errors"] = {
        kind: sum(r["socket_errors"][kind] for r in ok)
        for kind in ("connect", "read", "write", "timeout")
    }
    summary["non_2xx"] = sum(r["non_2xx"] for r in ok)
    summary["rounds_ok"] = len(ok)
    summary["runs"] = runs
    return summary


def summarize(
    runs: dict[str, list[dict[str, Any] | None]], baseline: str = BASELINE
) -> dict[str, dict[str, Any]]:
    base = runs.get(baseline)
    usable_base = base if base and any(r is not None for r in base) else None
    return {name: summarize_proxy(proxy_runs, usable_base) for name, proxy_runs in runs.items()}


def derive_checks(runs: dict[str, list[dict[str, Any] | None]]) -> dict[str, dict[str, Any]]:
    checks: dict[str, dict[str, Any]] = {}
    for name, num, den, metric, op, target in CHECKS:
        value = None
        if num in runs and den in runs:
            value = ratio_summary(per_round_ratios(runs[num], runs[den], metric))[0]
        if value is None:
            status = "N/A"
        elif op == "info":
            status = "INFO"
        elif (value >= target) if op == ">=" else (value <= target):
            status = "PASS"
        else:
            status = "MISS"
        checks[name] = {
            "value": value,
            "target": "-" if op == "info" else f"{op} {target}",
            "status": status,
            "ratio": f"{num}/{den} {metric}",
        }
    return checks


# --------------------------------------------------------------------------------------------
# Printing


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def fmt_ratio(mid: float | None, low: float | None, high: float | None) -> str:
    if mid is None:
        return "-"
    return f"{mid:.2f} ({low:.2f}{DASH}{high:.2f})"


def fmt_cpu(s: dict[str, Any]) -> str:
    if s["cpu_us_per_req"] is None:
        return "-"
    user, system = s["cpu_user_us_per_req"], s["cpu_sys_us_per_req"]
    return f"{s['cpu_us_per_req']:.1f} ({user:.1f} + {system:.1f})"


def print_table(title: str, summaries: dict[str, dict[str, Any]], errors: dict[str, str]) -> None:
    header = (
        "proxy",
        "req/s",
        "p50 ms",
        "p99 ms",
        "CPU µs/req (user + sys)",
        f"{TIMES} HAProxy req/s (min{DASH}max)",
        f"{TIMES} HAProxy CPU/req",
        "errors",
    )
    rows = [header]
    for name, s in summaries.items():
        if not s["rounds_ok"]:
            reason = errors.get(name, "no successful run").splitlines()[0][:60]
            rows.append((name, "error", "", "", "", "", "", reason))
            continue
        errs = sum(s["socket_errors"].values()) + s["non_2xx"]
        rows.append(
            (
                name,
                "-" if s["rps"] is None else f"{s['rps']:,.0f}",
                fmt(s["p50_ms"]),
                fmt(s["p99_ms"]),
                fmt_cpu(s),
                fmt_ratio(
                    s.get("ratio_vs_haproxy"),
                    s.get("ratio_vs_haproxy_min"),
                    s.get("ratio_vs_haproxy_max"),
                ),
                fmt(s.get("cpu_ratio_vs_haproxy")),
                str(errs) if errs else "",
            )
        )
    print_rows(title, rows, text_last=True)


def print_rows(title: str, rows: list[tuple[str, ...]], text_last: bool = False) -> None:
    """Left-aligned names (and last column when it is text), right-aligned figures."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print(f"\n{title}")
    for i, row in enumerate(rows):
        cells = [
            cell.ljust(w) if col == 0 or (text_last and col == len(row) - 1) else cell.rjust(w)
            for col, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        print("  " + "  ".join(cells).rstrip())
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))


def print_checks(title: str, checks: dict[str, dict[str, Any]]) -> None:
    print(f"\n{title}")
    for name, check in checks.items():
        print(
            f"  {name:<36} {check['ratio']:<36} {fmt(check['value']):>6}  "
            f"target {check['target']:<7} {check['status']}"
        )


def add_same_level_ratios(
    summaries: dict[str, dict[str, Any]], runs: dict[str, list[Any]], levels: list[int]
) -> None:
    """lb_wN against haproxy_tN, per round, as the one-core table does against haproxy."""
    for n in levels:
        lb, ha = f"lb_w{n}", f"haproxy_t{n}"
        if lb in runs and ha in runs and lb in summaries:
            ratios = per_round_ratios(runs[lb], runs[ha], "rps")
            mid, low, high = ratio_summary(ratios)
            summaries[lb] |= {
                "ratio_vs_haproxy_same_n": mid,
                "ratio_vs_haproxy_same_n_min": low,
                "ratio_vs_haproxy_same_n_max": high,
                "ratio_vs_haproxy_same_n_per_round": ratios,
            }


def print_scaling(conns: int, summaries: dict[str, dict[str, Any]], levels: list[int]) -> None:
    header = (
        "n",
        "lb req/s",
        "haproxy req/s",
        f"lb/haproxy (min{DASH}max)",
        f"lb {TIMES}n=1",
        f"haproxy {TIMES}n=1",
        "lb µs/req",
        "haproxy µs/req",
    )
    rows = [header]
    lb1 = summaries.get("lb_w1", {}).get("rps")
    ha1 = summaries.get("haproxy_t1", {}).get("rps")
    for n in levels:
        lb = summaries.get(f"lb_w{n}", {})
        ha = summaries.get(f"haproxy_t{n}", {})
        lb_rps, ha_rps = lb.get("rps"), ha.get("rps")
        rows.append(
            (
                str(n),
                "error" if lb_rps is None else f"{lb_rps:,.0f}",
                "error" if ha_rps is None else f"{ha_rps:,.0f}",
                fmt_ratio(
                    lb.get("ratio_vs_haproxy_same_n"),
                    lb.get("ratio_vs_haproxy_same_n_min"),
                    lb.get("ratio_vs_haproxy_same_n_max"),
                ),
                fmt(lb_rps / lb1 if lb_rps and lb1 else None),
                fmt(ha_rps / ha1 if ha_rps and ha1 else None),
                fmt(lb.get("cpu_us_per_req"), 1),
                fmt(ha.get("cpu_us_per_req"), 1),
            )
        )
    print_rows(f"scaling, {conns} connections (medians)", rows)


# --------------------------------------------------------------------------------------------
# Phases


@contextlib.contextmanager
def phase(bench: Bench) -> Iterator[None]:
    """Stop every process a phase started, however it ends, before the next phase pins cores."""
    try:
        yield
    finally:
        bench.procs.stop_all()


def run_phase(
    bench: Bench, specs: list[ProxySpec], layout: Layout, wrk_threads: int, tag: str
) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[int, Any], dict[str, str]]:
    """Start backends and proxies, run the interleaved rounds; (shapes, raw runs, errors)."""
    errors: dict[str, str] = {}
    with phase(bench):
        backends = start_backends(bench, layout, tag)
        running: list[Running] = []
        for spec in specs:
            started = start_proxy(bench, spec, backends, tag)
            if isinstance(started, str):
                errors[spec.name] = started
                print(f"{spec.name}: failed to start, skipped\n  {indent(started)}", flush=True)
            else:
                running.append(started)
                print(f"{spec.name}: ready on :{started.port}, cpus {cpu_list(spec.cpus)}")

        def restart(proxy: Running, rnd: int) -> Running:
            """The same proxy as a new process; the old one, marked failed, if it won't start."""
            bench.procs.stop(proxy.proc)
            again = start_proxy(bench, proxy.spec, backends, f"{tag}r{rnd}-")
            if isinstance(again, str):
                errors[proxy.spec.name] = f"failed to restart for round {rnd}\n{again}"
                return proxy
            return again

        runs = run_rounds(bench, running, layout, wrk_threads, errors, restart) if running else {}
    shapes: dict[str, dict[str, dict[str, Any]]] = {}
    for conns in bench.args.connections:
        proxy_runs = runs.get(conns, {})
        summaries = summarize(proxy_runs)
        for name, error in errors.items():
            summaries.setdefault(name, {"error": error})
            summaries[name]["error"] = error
        shapes[f"c{conns}"] = summaries
    return shapes, runs, errors


def indent(text: str) -> str:
    return text.replace("\n", "\n  ")


def main_phase(bench: Bench, specs: list[ProxySpec], layout: Layout) -> dict[str, Any]:
    shapes, runs, errors = run_phase(bench, specs, layout, wrk_threads=1, tag="")
    out: dict[str, Any] = dict(shapes)
    args = bench.args
    for conns in args.connections:
        title = (
            f"{conns} connections — medians of {args.rounds} interleaved round(s) {TIMES} "
            f"{args.duration:g} s, one-core proxies on cpu {cpu_list(layout.proxy_cpus[:1])}"
        )
        summaries = shapes[f"c{conns}"]
        # Spec order, with proxies that never produced a figure shown as errors.
        table = {s.name: summaries.get(s.name, {}) for s in specs}
        table = {n: t if "rps" in t else {"rounds_ok": 0} for n, t in table.items()}
        print_table(title, table, errors)
    checks_by_shape = {f"c{c}": derive_checks(runs.get(c, {})) for c in args.connections}
    headline = 64 if 64 in args.connections else args.connections[0]
    out["checks"] = checks_by_shape[f"c{headline}"]
    out["checks_by_connections"] = checks_by_shape
    for conns in args.connections:
        print_checks(
            f"derived checks, {conns} connections (median of per-round ratios)",
            checks_by_shape[f"c{conns}"],
        )
    # The top-level per-proxy figures are the 64-connection medians (the headline shape).
    for name, summary in shapes[f"c{headline}"].items():
        out[name] = {"connections": headline, **summary}
    out["errors"] = errors
    return out


def scaling_phase(bench: Bench, cpus: list[int]) -> dict[str, Any]:
    layout = scaling_layout(cpus)
    levels = scaling_levels(layout)
    if len(cpus) < 8:
        print(f"\nscaling: {len(cpus)} cores (< 8), running only levels {levels}")
    specs = scaling_specs(layout)
    wrk_threads = max(1, len(layout.wrk_cpus))
    print(
        f"\nscaling phase: backends cpus {cpu_list(layout.backend_cpus)}, wrk cpus "
        f"{cpu_list(layout.wrk_cpus)} ({wrk_threads} threads), proxy cpus "
        f"{cpu_list(layout.proxy_cpus)}"
    )
    shapes, runs, errors = run_phase(bench, specs, layout, wrk_threads, tag="scaling-")
    for conns in bench.args.connections:
        add_same_level_ratios(shapes[f"c{conns}"], runs.get(conns, {}), levels)
        print_scaling(conns, shapes[f"c{conns}"], levels)
    return {
        "levels": levels,
        "layout": layout.__dict__,
        "wrk_threads": wrk_threads,
        **shapes,
        "errors": errors,
    }


# --------------------------------------------------------------------------------------------
# Memory: RSS of lb holding idle keep-alive client connections


async def open_idle(port: int, sem: asyncio.Semaphore) -> tuple[Any, Any] | None:
    """One client connection that has completed a request and now sits idle in keep-alive."""
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port), timeout=10
            )
            writer.write(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            length = re.search(rb"(?i)content-length:\s*(\d+)", head)
            if length:
                await asyncio.wait_for(reader.readexactly(int(length.group(1))), timeout=10)
            return reader, writer
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            return None


async def hold_connections(pid: int, port: int, count: int) -> dict[str, Any]:
    # A bounded number of connects in flight keeps within the proxy's listen backlog.
    sem = asyncio.Semaphore(256)
    rss_before = tree_rss_kb(pid)
    opened = await asyncio.gather(*(open_idle(port, sem) for _ in range(count)))
    conns = [c for c in opened if c is not None]
    await asyncio.sleep(1.0)  # let the proxy settle and any close it makes reach us
    rss_after = tree_rss_kb(pid)
    still_open = sum(1 for reader, _ in conns if not reader.at_eof())
    for _, writer in conns:
        writer.close()
    await asyncio.sleep(1.0)
    rss_closed = tree_rss_kb(pid)
    per_conn = (rss_after - rss_before) * 1024 / still_open if still_open else None
    return {
        "connections_requested": count,
        "connections_opened": len(conns),
        "connections_open_at_measure": still_open,
        "rss_before_kb": rss_before,
        "rss_after_kb": rss_after,
        "rss_after_close_kb": rss_closed,
        "bytes_per_connection": round(per_conn) if per_conn is not None else None,
    }


def memory_phase(bench: Bench, cpus: list[int]) -> dict[str, Any]:
    """RSS of each proxy holding the same idle keep-alive client connections, one after the
    other on the same backends: the figure is the growth over the proxy's own idle RSS."""
    layout = standard_layout(cpus)
    # The client side of every connection lives in this process: keep within our own limit.
    count = min(bench.args.memory_connections, bench.nofile - 256)
    if count < bench.args.memory_connections:
        print(f"\nmemory: RLIMIT_NOFILE {bench.nofile} allows only {count:,} connections")
    results: dict[str, Any] = {}
    with phase(bench):
        backends = start_backends(bench, layout, "memory-")
        for name in ("haproxy", "nginx", "lb"):
            spec = ProxySpec(name, name, layout.proxy_cpus[:1])
            started = start_proxy(bench, spec, backends, "memory-")
            if isinstance(started, str):
                print(f"\nmemory: {name} failed to start\n  {indent(started)}")
                results[name] = {"error": started}
                continue
            try:
                # A short load first, so lazily built state is in the baseline, not the delta.
                run_wrk(bench, started.port, 16, 1, layout.wrk_cpus, 1)
                time.sleep(1.0)
                result = asyncio.run(hold_connections(started.proc.pid, started.port, count))
            finally:
                bench.procs.stop(started.proc)
            results[name] = result
            per = result["bytes_per_connection"]
            print(
                f"memory: {name:8} RSS {result['rss_before_kb'] / 1024:6.1f} MiB idle -> "
                f"{result['rss_after_kb'] / 1024:6.1f} MiB holding "
                f"{result['connections_open_at_measure']:,} of {count:,} keep-alive connections "
                f"({'-' if per is None else f'{per / 1024:.1f} KiB'} per connection); "
                f"{result['rss_after_close_kb'] / 1024:.1f} MiB after closing them"
            )
    return results


# --------------------------------------------------------------------------------------------
# Entry point


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    known = (*STANDARD_PROXIES, *MULTICORE_PROXIES)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (0: none)")
    parser.add_argument("--duration", type=float, default=10, help="seconds per wrk run")
    parser.add_argument("--warmup", type=float, default=1, help="warm-up seconds per run")
    parser.add_argument(
        "--connections", default="64,1000", help="comma-separated wrk connection counts"
    )
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(known)}")
    parser.add_argument(
        "--with-multicore", action="store_true", help="also haproxy_2threads and lb_2workers"
    )
    parser.add_argument(
        "--scaling", action="store_true", help="1,2,4,8 lb workers vs haproxy threads"
    )
    parser.add_argument("--memory", action="store_true", help="RSS of lb with idle connections")
    parser.add_argument("--memory-connections", type=int, default=10_000)
    parser.add_argument("--h2", action="store_true", help="HTTP/2: h2load through each proxy")
    parser.add_argument("--h2-requests", type=int, default=100_000, help="requests per h2 run")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    parser.add_argument(
        "--lb-cmd",
        default="",
        help="command that starts lb, before `run -c ...` (default: .venv/bin/lb, "
        "else .venv/bin/python -m lb)",
    )
    parser.add_argument("--keep-tmp", action="store_true", help="keep configs and logs")
    args = parser.parse_args(argv)
    try:
        args.connections = [int(c) for c in args.connections.split(",") if c.strip()]
    except ValueError:
        parser.error("--connections takes comma-separated integers")
    if not args.connections or min(args.connections) < 1:
        parser.error("--connections needs at least one positive count")
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(args.only) - set(known))
    if unknown:
        parser.error(f"unknown proxies {unknown}; known: {', '.join(known)}")
    return args


def select_specs(args: argparse.Namespace, layout: Layout, cpus: list[int]) -> list[ProxySpec]:
    # Naming a multi-core proxy in --only asks for it, whatever the core count.
    multicore = (
        args.with_multicore or len(cpus) >= 4 or bool(set(args.only) & set(MULTICORE_PROXIES))
    )
    specs = standard_specs(layout, multicore)
    return [s for s in specs if s.name in args.only] if args.only else specs


def machine_info(tools: Tools, cpus: list[int]) -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cores": len(cpus),
        "cpu_ids": cpus,
        "os_cpu_count": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        **tool_versions(tools),
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)  # never leave a half-written results file behind


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    install_signal_handlers()
    tools = ensure_tools(args.lb_cmd)
    nofile = raise_nofile()
    # Pin to the CPUs we may actually use (a container's affinity set, not the host's count).
    cpus = sorted(os.sched_getaffinity(0))
    layout = standard_layout(cpus)
    specs = select_specs(args, layout, cpus)
    workdir = Path(tempfile.mkdtemp(prefix="lb-bench-"))
    # nginx workers drop to an unprivileged user when we run as root; let them traverse it.
    workdir.chmod(0o755)
    bench = Bench(args, tools, workdir, ProcessSet(tools.taskset), nofile=nofile)
    bench.wrk_headers = edge_fixture.write(workdir)[1]
    result: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(tools, cpus),
        "config": {
            "rounds": args.rounds,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "proxies": [s.name for s in specs],
            "wrk": "wrk -t1 -c<C> -d<D>s --latency",
            "pinning": {
                "backends": cpu_list(layout.backend_cpus),
                "wrk": cpu_list(layout.wrk_cpus),
                **{s.name: cpu_list(s.cpus) for s in specs},
            },
            "lb_command": tools.lb,
            "nofile": nofile,
        },
    }
    print(f"bench: {len(cpus)} cores, work dir {workdir}, results -> {args.out}")
    try:
        if args.rounds > 0 and specs:
            result |= main_phase(bench, specs, layout)
        if args.scaling:
            result["scaling"] = scaling_phase(bench, cpus)
        if args.memory:
            result["memory"] = memory_phase(bench, cpus)
        if args.h2 and args.rounds > 0:
            from h2_phase import h2_phase

            result["h2"] = h2_phase(sys.modules[__name__], bench, cpus)
    except RuntimeError as exc:  # the backends did not come up: nothing can be measured
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        bench.procs.stop_all()
        if args.keep_tmp:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    write_json(args.out, result)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the children are already stopped by main's finally-block
        print("\nbench: interrupted", file=sys.stderr)
        sys.exit(130)
