"""Cost of an IP allow/deny decision, for 10, 1,000 and 10,000 CIDRs.

Two figures per list size: `judge` (parse the address and probe the compiled tables, what a
client seen for the first time costs) and `admits` (the memoised verdict, what every later
request of that client costs), plus the compile time at config load. The lists mix IPv4 and
IPv6 networks of random prefix lengths; the probed addresses are outside them (every table is
probed, the worst case) and inside.

    python bench/edge_bench.py
"""

import ipaddress
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lb.config.edge_model import IpFilter
from lb.edge.ipfilter import IpRule

ROUNDS = 200_000


def cidrs(n: int, rng: random.Random) -> list[str]:
    out = []
    for i in range(n):
        if i % 10 == 9:
            out.append(f"{ipaddress.IPv6Address(rng.getrandbits(128))}/{rng.randint(16, 128)}")
        else:
            out.append(f"{ipaddress.IPv4Address(rng.getrandbits(32))}/{rng.randint(8, 32)}")
    return out


def per_call(call: Callable[[bytes], bool], arg: bytes) -> float:
    start = time.perf_counter()
    for _ in range(ROUNDS):
        call(arg)
    return (time.perf_counter() - start) / ROUNDS * 1e9


def main() -> None:
    rng = random.Random(14)
    print(f"{'cidrs':>7} {'compile ms':>11} {'tables':>7} {'judge ns':>9} {'admits ns':>10}")
    for n in (10, 1_000, 10_000):
        listed = cidrs(n, rng)
        start = time.perf_counter()
        rule = IpRule(IpFilter(deny=listed))
        compiled = (time.perf_counter() - start) * 1e3
        inside = str(ipaddress.ip_network(listed[0], strict=False).network_address).encode()
        outside = b"198.51.100.77"
        judge = max(per_call(rule.judge, outside), per_call(rule.judge, inside))
        admits = per_call(rule.admits, outside)
        tables = len(rule.deny.v4) + len(rule.deny.v6)
        print(f"{n:>7} {compiled:>11.1f} {tables:>7} {judge:>9.0f} {admits:>10.0f}")


if __name__ == "__main__":
    main()
