"""Command line: `lb run`, `lb check`, `lb version`."""

import argparse
import asyncio
import gc
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from . import __version__
from .config import ConfigError


def _loop_name() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def cmd_version(_: argparse.Namespace) -> int:
    from .balancer.picker import IMPLEMENTATION

    print(f"lb {__version__}")
    print(f"event loop: {_loop_name()}")
    print(f"picker: {IMPLEMENTATION}")
    from .compiled import implementation

    print(f"data path: {implementation()}")
    from .proxy.http2 import available

    if available():
        from . import _h2

        print(f"HTTP/2: available (libnghttp2 {_h2.NGHTTP2_VERSION})")
    else:
        print("HTTP/2: unavailable (lb._h2 not built: libnghttp2-dev missing)")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from .discovery.kvconfig import SourceUnavailable, load_for_check

    try:
        loaded = load_for_check(args.config, args.consul, args.prefix, args.token)
    except ConfigError as exc:
        for p in exc.problems:
            print(p)
        return 1
    except SourceUnavailable as exc:
        print(f"cannot read the config source: {exc}")
        return 2
    from .routing.table import RouteTable

    for w in (*loaded.warnings, *RouteTable(loaded.config.routes).shadowed()):
        print(w)
    if args.diff:
        from .config.diff import diff_against_running

        return diff_against_running(loaded, args.admin)
    what = args.config
    if loaded.kv is not None:
        kv = loaded.kv
        stored = f"consul:{kv.prefix} ({len(kv.documents)} keys, index {kv.index})"
        what = f"{args.config} + {stored}" if args.config else stored
    print(f"{what}: ok")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from .discovery.kvconfig import SourceUnavailable, load_at_boot

    try:
        loaded = load_at_boot(args.config)
    except ConfigError as exc:
        for p in exc.problems:
            print(p, file=sys.stderr)
        return 1
    except SourceUnavailable as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 2
    multi = args.workers not in (None, "1", 1)
    if args.worker is not None:
        from .workers import run_worker

        return run_worker(args, loaded)
    if multi:
        from .workers import supervise

        return supervise(args, loaded)
    return run_server(args.config, loaded, args.upgrade_from, args.upgrade_socket)


def run_server(
    config_path: str, loaded: object, upgrade_from: str | None, upgrade_socket: str | None
) -> int:
    from .server import Server
    from .upgrade import UpgradeError, complete, notify_systemd, offer_upgrades, take_over

    async def main() -> int:
        try:
            successors, inherited = await take_over([upgrade_from] if upgrade_from else [])
        except (OSError, UpgradeError) as exc:
            logging.getLogger("lb.upgrade").error("cannot upgrade: %s", exc)
            return 1
        server = Server(config_path, loaded, inherited=inherited)  # type: ignore[arg-type]
        await server.start()
        await complete(successors)
        listener = await offer_upgrades(server, upgrade_socket)
        if listener is not None:
            server.extensions.append(listener)
        notify_systemd(f"MAINPID={os.getpid()}\nREADY=1")
        await server.stopping.wait()
        await server.shutdown(server.grace())
        return 0

    return run_loop(main)


def run_loop(main: Callable[[], Coroutine[Any, Any, Any]]) -> int:
    """Run `main()` on uvloop when installed, else asyncio; its result (or 0) is the exit code."""
    quiet_collector()
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(main())
    else:
        result = uvloop.run(main())
    return int(result or 0)


def quiet_collector() -> None:
    """Fewer, shorter cycle collections for a long-running server. Everything loaded so far
    (modules, the config) lives as long as the process: frozen, no collection scans it again.
    A request allocates many container objects that die with it, by reference counting, not
    by the collector: at the default threshold (700) the youngest generation is collected
    every few requests, and each pass promotes connections and pools that the older ones
    then rescan, which shows up as tail latency under load."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lb", description="Layer-7 load balancer")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="serve traffic")
    run.add_argument("-c", "--config", required=True, help="YAML file or directory")
    run.add_argument("--workers", default=None, help="worker processes (N or auto)")
    run.add_argument(
        "--upgrade-from", default=None, metavar="PATH",
        help="take the listening sockets over from the lb serving upgrades at PATH",
    )  # fmt: skip
    run.add_argument(
        "--upgrade-socket", default=None, metavar="PATH",
        help="serve upgrades (hand the listening sockets to a successor) at PATH",
    )  # fmt: skip
    # Set by the supervisor on the command lines of its workers (lb.workers), not by people.
    run.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    run.add_argument("--shm", default=None, help=argparse.SUPPRESS)
    run.add_argument("--control-fd", type=int, default=None, help=argparse.SUPPRESS)
    run.add_argument("--lifeline-fd", type=int, default=None, help=argparse.SUPPRESS)
    # More predecessors of a worker (lb/upgrade.py): an old tree had more workers.
    run.add_argument(
        "--also-upgrade-from", action="append", default=[], metavar="PATH", help=argparse.SUPPRESS
    )
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check", help="validate a config")
    check.add_argument("-c", "--config", default=None, help="YAML file or directory")
    check.add_argument("--consul", default=None, help="Consul address: check what KV stores")
    check.add_argument("--prefix", default=None, help="the KV prefix (with --consul)")
    check.add_argument("--token", default=None, help="Consul ACL token (with --consul)")
    check.add_argument("--diff", action="store_true", help="compare with the running lb")
    check.add_argument("--admin", default=None, help="admin URL (default from the config)")
    check.set_defaults(func=cmd_check)
    version = sub.add_parser("version", help="print version, event loop and picker")
    version.set_defaults(func=cmd_version)
    args = parser.parse_args(argv)
    if args.command == "check" and args.config is None and args.consul is None:
        parser.error("check needs -c FILE|DIR, or --consul ADDR --prefix P, or both")
    if args.command == "check" and (args.consul is None) != (args.prefix is None):
        parser.error("--consul and --prefix go together")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
