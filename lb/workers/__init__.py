"""`lb run --workers N`: N worker processes sharing the listeners (SO_REUSEPORT) under a
supervisor that owns the admin port, restarts a crashed worker and fans out reloads and
signals. In-flight counts and rate-limit state live in shared memory (lb.shm), so the workers
pick backends and limit clients as one.

- `supervise(args)`: the supervisor (lb.workers.supervisor, lb.workers.admin);
- `run_worker(args, loaded)`: one worker (lb.workers.child), started by the supervisor.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..config import Loaded
from .child import run_worker

__all__ = ["parse_workers", "run_worker", "supervise"]


def parse_workers(value: str | int) -> int:
    """`N` (1 or more) or `auto` (one per core this process may run on)."""
    if str(value) == "auto":
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            return os.cpu_count() or 1
    try:
        count = int(value)
    except ValueError:
        raise ValueError(f"--workers takes a number or 'auto', not {value!r}") from None
    if count < 1:
        raise ValueError(f"--workers must be at least 1, not {count}")
    return count


def supervise(args: argparse.Namespace, loaded: Loaded) -> int:
    from ..balancer.picker import IMPLEMENTATION
    from ..cli import run_loop

    try:
        count = parse_workers(args.workers)
    except ValueError as exc:
        print(f"lb: {exc}", file=sys.stderr)
        return 2
    try:
        import lb._shm  # noqa: F401  (the atomics of the shared segment)
    except ImportError:
        IMPLEMENTATION = "python"
    if IMPLEMENTATION != "cython":
        print(
            "lb: --workers needs the compiled picker (lb._picker), which counts in-flight "
            "requests in shared memory with atomic instructions; this lb runs the pure-Python "
            "twin (LB_PICKER=python, or the extension was not built: python setup.py "
            "build_ext --inplace). Run without --workers for one process.",
            file=sys.stderr,
        )
        return 2
    from .supervisor import Supervisor

    async def main() -> int:
        sup = Supervisor(args.config, loaded, count, args.upgrade_from, args.upgrade_socket)
        return await sup.run()

    return run_loop(main)
