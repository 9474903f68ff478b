"""Cost of one consistent-hash lookup, compiled table vs pure-Python twin.

    python bench/hashring_bench.py [--out bench/results/hashring.json] [--repeats 7]

Each size gets a table of equal-weight backends, every one eligible: a ring with 160 virtual
nodes each (1.6M points at 10,000 backends), a Maglev table of 65,537 entries, or of 1,000,003
at 10,000 backends (Envoy's advice: about 100 entries per backend). A lookup is
`table.pick(key)` from Python, the key's XXH64 included, over 4,096 distinct 12-byte keys
in turn. The bounded rows carry in-flight counts in the table's picker (two per backend, one
backend at its bound) and a bound of 1.25, so the walk compares loads; the compiled table reads
a compiled picker, the twin a twin one. "service" is the whole pick a request makes
(`Balance.pick`: key read from the headers, lookup, Picker.take, Service.admit, and the
release afterwards). Reported: median over the repeats of the mean ns per lookup.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SIZES = (10, 100, 10_000)
TARGET_S = 0.05
KEYS = [f"user-{i:07d}".encode() for i in range(4096)]


def build(cls: Any, picker_cls: Any, kind: int, size: int, bounded: bool) -> Any:
    picker = picker_cls()
    slots = [picker.add(1, 0.0) for _ in range(size)]
    table = cls(kind, 1.25 if bounded else 0.0, picker)
    members = [(i, 1, f"10.{i // 65536}.{i // 256 % 256}.{i % 256}:8080".encode()) for i in slots]
    table.rebuild(members, 160 if kind == 0 else (1_000_003 if size > 655 else 65_537))
    for slot in slots:
        table.set_eligible(slot, True)
        if bounded:
            picker.take(slot)
            picker.take(slot)
    if bounded:
        hot = table.pick(KEYS[0])
        while table.pick(KEYS[0]) == hot:  # fill the first key's backend to its bound
            picker.take(hot)
    return table


def run_table(table: Any, iterations: int) -> float:
    pick, keys, mask = table.pick, KEYS, len(KEYS) - 1
    start = time.perf_counter_ns()
    for i in range(iterations):
        pick(keys[i & mask])
    return (time.perf_counter_ns() - start) / iterations


def service_pick(size: int, mode: str) -> tuple[Any, list[Any]]:
    from lb.balancer.balance import Balance
    from lb.balancer.hash_key import HeaderKey
    from lb.balancer.service import Service
    from lb.config import model
    from lb.config.balance_model import Balance as BalanceConfig
    from lb.config.balance_model import HashOn
    from lb.observe.metrics import Counters

    cfg = model.Service(
        balance=BalanceConfig(
            mode=mode,
            hash_on=HashOn(header="x-user"),
            table_size=1_000_003 if size > 655 else 65_537,
        )
    )
    svc = Service("bench", cfg)
    svc.update([(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 8080, 1) for i in range(size)])
    svc.balance = Balance(svc, HeaderKey("x-user"), None, Counters())
    headers = [(b"host", b"example.com"), (b"accept", b"*/*")]
    exchanges = [
        SimpleNamespace(info=SimpleNamespace(forward=[*headers, (b"x-user", k)]), query="")
        for k in KEYS
    ]
    return svc, exchanges


def run_service(svc_exchanges: tuple[Any, list[Any]], iterations: int) -> float:
    svc, exchanges = svc_exchanges
    pick, release, mask = svc.balance.pick, svc.release, len(exchanges) - 1
    start = time.perf_counter_ns()
    for i in range(iterations):
        release(pick(exchanges[i & mask], 0.0, None))
    return (time.perf_counter_ns() - start) / iterations


def measure(run: Any, subject: Any, repeats: int) -> float:
    iterations = 1000
    while True:  # calibrate, which also warms up
        start = time.perf_counter()
        run(subject, iterations)
        if time.perf_counter() - start >= TARGET_S / 4:
            break
        iterations *= 4
    return statistics.median(run(subject, iterations) for _ in range(repeats))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "hashring.json")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))  # run as a script, sys.path starts at bench/
    from lb.balancer import hashring_py, picker_py

    implementations: dict[str, Any] = {"python": (hashring_py.HashTable, picker_py.Picker)}
    try:
        from lb import _hashring, _picker
    except ImportError:
        print("lb._hashring is not built: measuring the twin only", file=sys.stderr)
    else:
        implementations = {"cython": (_hashring.HashTable, _picker.Picker), **implementations}

    rows = [("ring_hash", 0, False), ("ring_hash bounded", 0, True)]
    rows += [("maglev", 1, False), ("maglev bounded", 1, True)]
    results: dict[str, dict[str, dict[str, float]]] = {}
    for label, kind, bounded in rows:
        for impl, (cls, picker_cls) in implementations.items():
            for size in SIZES:
                table = build(cls, picker_cls, kind, size, bounded)
                ns = measure(run_table, table, args.repeats)
                results.setdefault(label, {}).setdefault(impl, {})[str(size)] = round(ns, 1)
    from lb.balancer.hashring import IMPLEMENTATION as impl  # what the service path loads

    for mode in ("ring_hash", "maglev"):
        for size in SIZES:
            ns = measure(run_service, service_pick(size, mode), args.repeats)
            results.setdefault(f"{mode} service", {}).setdefault(impl, {})[str(size)] = round(ns, 1)

    print(f"{'mode':<20} {'impl':<7}" + "".join(f"{s:>10,}" for s in SIZES) + "  (ns/lookup)")
    for label, by_impl in results.items():
        for impl_name, by_size in by_impl.items():
            cells = "".join(f"{by_size[str(s)]:>10.0f}" for s in SIZES)
            print(f"{label:<20} {impl_name:<7}{cells}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
