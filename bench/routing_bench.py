"""Route lookup cost for 10, 1,000 and 10,000 host+prefix routes (median ns per lookup).

python bench/routing_bench.py [--out bench/results/routing.json]
"""

import argparse
import json
import statistics
import time
from pathlib import Path

from lb.config import model
from lb.routing.table import RouteTable

SIZES = (10, 1000, 10000)


def build(n: int) -> RouteTable:
    # Realistic shape: each host carries a few prefixes, as ingress configs do.
    routes = [
        model.Route(
            name=f"r{i}",
            match=model.Match(
                host=[f"svc{i // 4}.example.com"], path=model.PathMatch(prefix=f"/api/v{i % 4}")
            ),
            service="s",
        )
        for i in range(n)
    ]
    return RouteTable(routes)


def measure(n: int, lookups: int = 200_000, repeats: int = 7) -> float:
    table = build(n)
    picks = [(i * 7919) % n for i in range(1000)]
    probes = [(f"svc{j // 4}.example.com", f"/api/v{j % 4}/items/{j}") for j in picks]
    lookup = table.lookup
    for host, path in probes:
        assert lookup(host, b"GET", path, "", []) is not None
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        for i in range(lookups):
            host, path = probes[i % 1000]
            lookup(host, b"GET", path, "", [])
        samples.append((time.perf_counter_ns() - t0) / lookups)
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/routing.json")
    args = ap.parse_args()
    results = {str(n): round(measure(n), 1) for n in SIZES}
    print("routes   ns/lookup")
    for n, ns in results.items():
        print(f"{int(n):>6}   {ns:>9.1f}")
    target = results["10000"] <= 2000
    print(f"target <= 2000 ns at 10,000 routes: {'PASS' if target else 'MISS'}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
