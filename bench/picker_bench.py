"""Cost of one pick + release, compiled picker vs pure-Python twin, in each balance mode.

    python bench/picker_bench.py [--out bench/results/picker.json] [--repeats 7]

Each size gets a pool with weights 1, 2, 3, ... repeating and sequential traffic (every request
is released before the next pick). least_connections: that is the exact scan's worst case:
every backend ties at zero in flight, so all of them take part in the round-robin tie break.
Pools above P2C_THRESHOLD use weighted power of two choices instead. least_latency (Peak EWMA):
every slot has a sample, each pick is followed by the RTT sample the proxy would record
(pick + observe + release) and the clock moves 1 µs per request, so both estimates compared
are decayed (two exp() per pick, one more per sample). Reported: median over the repeats of
the mean ns per request, calls made from Python as the proxy makes them. In the JSON,
"cython" and "python" are least_connections, "<implementation>_least_latency" the other mode.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SIZES = (2, 10, 100, 1_000, 10_000)
TARGET_S = 0.05  # per repeat: long enough to swamp timer overhead, short enough for the twin


def build(cls: Any, size: int) -> Any:
    picker = cls(seed=1)
    for i in range(size):
        picker.add(1 + i % 3, 0.0)
    return picker


def build_latency(cls: Any, size: int) -> Any:
    picker = build(cls, size)
    picker.set_latency(10.0, 1.0)
    for slot in range(size):
        picker.observe(slot, 0.001 * (1 + slot % 5), 0.0)
    return picker


def run(picker: Any, iterations: int) -> float:
    pick, release = picker.pick, picker.release
    start = time.perf_counter_ns()
    for _ in range(iterations):
        release(pick(0.0))
    return (time.perf_counter_ns() - start) / iterations


def run_latency(picker: Any, iterations: int) -> float:
    pick, observe, release = picker.pick, picker.observe, picker.release
    now = 0.0
    start = time.perf_counter_ns()
    for _ in range(iterations):
        now += 1e-6
        slot = pick(now)
        observe(slot, 0.001, now)
        release(slot)
    return (time.perf_counter_ns() - start) / iterations


def measure(cls: Any, size: int, repeats: int, latency: bool = False) -> float:
    picker = build_latency(cls, size) if latency else build(cls, size)
    runner = run_latency if latency else run
    iterations = 100
    while True:  # calibrate, which also warms up
        start = time.perf_counter()
        runner(picker, iterations)
        if time.perf_counter() - start >= TARGET_S / 4:
            break
        iterations *= 4
    return statistics.median(runner(picker, iterations) for _ in range(repeats))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "picker.json")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)

    # Run as a script, sys.path starts at bench/, not at the repository.
    sys.path.insert(0, str(ROOT))
    from lb.balancer import picker_py

    implementations: dict[str, Any] = {"python": picker_py.Picker}
    try:
        from lb import _picker
    except ImportError:
        print("lb._picker is not built: measuring the twin only", file=sys.stderr)
    else:
        implementations = {"cython": _picker.Picker, **implementations}

    results: dict[str, dict[str, float]] = {}
    for suffix, latency in (("", False), ("_least_latency", True)):
        for name in ("cython", "python"):
            results[name + suffix] = {}
        for name, cls in implementations.items():
            for size in SIZES:
                ns = measure(cls, size, args.repeats, latency)
                results[name + suffix][str(size)] = round(ns, 1)

    print(f"P2C_THRESHOLD = {picker_py.P2C_THRESHOLD} (larger pools use power of two choices)")
    for suffix, title in (("", "least_connections"), ("_least_latency", "least_latency")):
        print(title)
        print(f"{'backends':>9} {'cython ns':>10} {'python ns':>10} {'speedup':>8}")
        for size in SIZES:
            cy = results["cython" + suffix].get(str(size))
            py = results["python" + suffix][str(size)]
            cy_text = f"{cy:10.0f}" if cy is not None else f"{'-':>10}"
            speedup = f"{py / cy:7.1f}x" if cy else f"{'-':>8}"
            print(f"{size:>9,} {cy_text} {py:10.0f} {speedup}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
