"""Python-level cost of one proxied request: the real data-path classes, fake transports.

No sockets and no syscalls: 64 client connections and one pooled upstream connection per
backend are driven directly (request in, response in, write out at the end of the loop
iteration), so what is timed is lb's own work per request: parsing callbacks, routing,
picking, forwarding, accounting.

    python bench/dataplane_bench.py            # compiled (if built) and pure, same run
    python bench/dataplane_bench.py --one      # this process only, as imported
    python bench/dataplane_bench.py --one --prof   # cProfile table (pure Python only)
    python bench/dataplane_bench.py --one --no-metrics   # without the metrics observer
    python bench/dataplane_bench.py --one --edge policies   # lb_edge's (bench/edge_fixture.py)
    python bench/dataplane_bench.py --one --edge request    # its request, no policies
    python bench/dataplane_bench.py --one --tracing         # lb_tracing's trace context

Run from the repository root. The pure-Python figure comes from a child process with
LB_PURE_PYTHON=1, which imports the .py twins of the compiled data-path modules.
"""

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    from lb.runtime import Runtime

CONFIG = """\
listeners: [{name: bench, bind: "127.0.0.1:18090"}]
admin: {bind: "127.0.0.1:19990"}
metrics: {enabled: true}
services:
  app: {backends: ["127.0.0.1:19101", "127.0.0.1:19102"]}
routes: [{name: all, match: {path: {prefix: /}}, service: app}]
"""
# lb_policies of bench/run.py: a rate limit and breakers configured, neither triggered.
POLICIES = """\
listeners: [{name: bench, bind: "127.0.0.1:18090"}]
admin: {bind: "127.0.0.1:19990"}
metrics: {enabled: true}
services:
  app:
    backends: ["127.0.0.1:19101", "127.0.0.1:19102"]
    circuit_breaker: {max_requests: 100000, max_pending: 100000, max_connections: 100000,
                      consecutive_failures: 1000, failure_ratio: 0.9, min_requests: 1000}
routes:
  - name: all
    match: {path: {prefix: /}}
    service: app
    rate_limit: {rate: "1000000/s", burst: 1000000, key: client_ip}
"""
RESP = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 26 Nov 2026 18:45:36 GMT\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 3\r\n"
    b"Connection: keep-alive\r\n\r\nok\n"
)
REQ = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:18090\r\n\r\n"
CONNECTIONS = 64  # client connections, each with one request per loop iteration (wrk -c64)


class FakeTransport:
    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, key: str) -> tuple[str, int]:
        return ("127.0.0.1", 5555)

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


def edge_config(home: Path) -> tuple[str, bytes]:
    """lb_edge's config and request: CONFIG's route with the fixture's policies, and the
    request with the fixture's headers."""
    import edge_fixture

    lines, wrk_headers = edge_fixture.write(home)
    extra = b"".join(h.encode() + b"\r\n" for h in wrk_headers[1::2])
    flow = "routes: [{name: all, match: {path: {prefix: /}}, service: app}]\n"
    block = "routes:\n  - name: all\n    match: {path: {prefix: /}}\n    service: app\n"
    return CONFIG.replace(flow, block) + lines, REQ[:-2] + extra + b"\r\n"


def attach_tracing(rt: "Runtime") -> "deque[object]":
    """lb_tracing's request path (bench/tracing_fixture.py): every request's trace context
    read or started and forwarded, the sampled ones queued as spans. No exporter thread: the
    caller empties the returned queue, as the exporter would."""
    import tracing_fixture

    from lb.tracing.context import Propagator
    from lb.tracing.spans import SpanQueue

    rt.tracer = Propagator(tracing_fixture.SAMPLING)
    queue = SpanQueue(1 << 20, 1 << 20, {("dropped",): 0})
    rt.observe(queue, True)
    return queue.spans


async def measure(
    n: int, rounds: int, prof: bool, metrics: bool, policies: bool, edge: str, tracing: bool
) -> tuple[str, list[float]]:
    import lb.compiled
    from lb.config import load
    from lb.observe.metrics import Metrics
    from lb.proxy.accept import Descriptors
    from lb.proxy.downstream import ClientConnection
    from lb.proxy.listener import ListenerRuntime
    from lb.proxy.upstream import UpstreamConnection
    from lb.runtime import Runtime
    from lb.traffic.control import install as install_traffic_control

    loop = asyncio.get_running_loop()
    home = tempfile.TemporaryDirectory()
    text, req = (POLICIES if policies else CONFIG), REQ
    if edge:
        edge_text, req = edge_config(Path(home.name))
        if edge == "policies":  # else the same request to plain lb: the difference is theirs
            text = edge_text
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(text)
    try:
        loaded = load(f.name)
    finally:
        os.unlink(f.name)
    rt = Runtime(loaded, loop, Descriptors(1 << 20))
    server = SimpleNamespace(runtime=rt, loop=loop, extensions=[])
    if edge == "policies":
        from lb.edge.install import install as install_edge

        install_edge(server)  # type: ignore[arg-type]
    # As `lb run` does: default retries on every route, and the policies when configured.
    install_traffic_control(server)
    if metrics:
        rt.observe(Metrics(rt), True)  # as `lb run` attaches it with metrics on
    spans = attach_tracing(rt) if tracing else deque()
    lr = ListenerRuntime(rt, loaded.config.listeners[0], loop)
    ups = []
    for b in rt.services["app"].backends.values():
        u = UpstreamConnection(b, loop, rt.outbox, 60.0)
        u.connection_made(FakeTransport())
        u.release(64)
        ups.append(u)
    clients = []
    for _ in range(CONNECTIONS):
        client = ClientConnection(lr)
        client.connection_made(FakeTransport())
        clients.append((client, client.transport))

    async def batch() -> None:
        """One request on each client connection, then one loop iteration, in which the
        outbox sends what they wrote, as a loop iteration with that many reads would."""
        for client, _ in clients:
            client.data_received(req)
            for u in ups:
                if u.exchange is not None:
                    u.data_received(RESP)
        await asyncio.sleep(0)
        for _, ct in clients:
            if len(ct.out) != 1:
                raise SystemExit(f"expected one response write, got {ct.out!r}")
            ct.out.clear()
        spans.clear()

    if edge:  # basic auth verifies once, off the loop; the batches measure the cached path
        client, ct = clients[0]
        client.data_received(req)
        for _ in range(200):
            await asyncio.sleep(0.01)
            for u in ups:
                if u.exchange is not None:
                    u.data_received(RESP)
            if ct.out:
                break
        ct.out.clear()
    batches = max(1, n // CONNECTIONS)
    for _ in range(50):
        await batch()
    if prof:
        import cProfile
        import pstats

        pr = cProfile.Profile()
        pr.enable()
        for _ in range(batches):
            await batch()
        pr.disable()
        lines = int(os.environ.get("LB_PROF_LINES", "25"))
        pstats.Stats(pr).sort_stats("tottime").print_stats(lines)
    results = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(batches):
            await batch()
        results.append((time.perf_counter() - t) / (batches * CONNECTIONS) * 1e6)
    home.cleanup()
    return lb.compiled.implementation(), results


def run_one(
    n: int, rounds: int, prof: bool, metrics: bool, policies: bool, edge: str, tracing: bool
) -> None:
    import uvloop

    impl, results = uvloop.run(measure(n, rounds, prof, metrics, policies, edge, tracing))
    print(f"{impl} {min(results):.2f} {statistics.median(results):.2f}")


def child(
    pure: bool,
    n: int,
    rounds: int,
    metrics: bool = True,
    policies: bool = False,
    edge: str = "",
    tracing: bool = False,
) -> tuple[str, float, float]:
    env = dict(os.environ)
    env.pop("LB_PURE_PYTHON", None)
    if pure:
        env["LB_PURE_PYTHON"] = "1"
    cmd = [sys.executable, __file__, "--one", "-n", str(n), "--rounds", str(rounds)]
    if not metrics:
        cmd.append("--no-metrics")
    if policies:
        cmd.append("--policies")
    if edge:
        cmd += ["--edge", edge]
    if tracing:
        cmd.append("--tracing")
    out = subprocess.run(cmd, env=env, cwd=ROOT, check=True, capture_output=True, text=True)
    impl, best, med = out.stdout.split()[-3:]
    return impl, float(best), float(med)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", action="store_true", help="measure this process only")
    ap.add_argument("--prof", action="store_true", help="print a cProfile table first")
    ap.add_argument("-n", type=int, default=50_000, help="requests per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-metrics", action="store_true", help="without the metrics observer")
    ap.add_argument("--policies", action="store_true", help="a rate limit and breakers on")
    ap.add_argument(
        "--edge", choices=("request", "policies"), default="",
        help="lb_edge's request, to plain lb or with lb_edge's policies",
    )  # fmt: skip
    ap.add_argument("--tracing", action="store_true", help="lb_tracing's trace context on")
    args = ap.parse_args()
    if args.one:
        run_one(
            args.n, args.rounds, args.prof, not args.no_metrics, args.policies, args.edge,
            args.tracing,
        )  # fmt: skip
        return
    # Interleaved, so drift on a shared machine hits both sides alike.
    compiled: list[float] = []
    bare: list[float] = []
    pure: list[float] = []
    policed: list[float] = []
    edged: list[float] = []
    edge_base: list[float] = []
    traced: list[float] = []
    impl = "python"
    for _ in range(3):
        impl, best, _ = child(False, args.n, args.rounds)
        compiled.append(best)
        bare.append(child(False, args.n, args.rounds, metrics=False)[1])
        policed.append(child(False, args.n, args.rounds, policies=True)[1])
        edged.append(child(False, args.n, args.rounds, edge="policies")[1])
        edge_base.append(child(False, args.n, args.rounds, edge="request")[1])
        traced.append(child(False, args.n, args.rounds, tracing=True)[1])
        pure.append(child(True, args.n, args.rounds)[1])
    c, m, p, q, e = min(compiled), min(bare), min(pure), min(policed), min(edged)
    print(f"data path as imported ({impl}): {c:.2f} us/request (best of {len(compiled)} runs)")
    print(f"  the same without metrics:      {m:.2f} us/request (metrics cost {c - m:.2f} us)")
    print(f"  with a rate limit and breakers: {q:.2f} us/request (they cost {q - c:.2f} us)")
    b = min(edge_base)
    print(f"  lb_edge's request, no policies: {b:.2f} us/request")
    print(f"  with lb_edge's policies:       {e:.2f} us/request (they cost {e - b:.2f} us)")
    t = min(traced)
    print(f"  with lb_tracing's trace context: {t:.2f} us/request (it costs {t - c:.2f} us)")
    print(f"pure Python (LB_PURE_PYTHON=1):   {p:.2f} us/request")
    print(f"compiled saves {100 * (1 - c / p):.0f}% of the Python-level cost")


if __name__ == "__main__":
    main()
