"""The modules Cython compiles from their own .py files, and the switch back to the source.

Built (setup.py), each module below becomes an extension module whose classes are typed
extension types declared by the .pxd file beside it; uncompiled, the same .py files run as
they are. LB_PURE_PYTHON=1 makes the source win over a built module at import time, which is
how the pure-Python twin is benchmarked and debugged on a machine that has both.
"""

import os
import sys
from importlib.machinery import EXTENSION_SUFFIXES, ModuleSpec
from importlib.util import spec_from_file_location

MODULES = (
    "lb.routing.route",
    "lb.balancer.backend",
    "lb.balancer.service",
    "lb.proxy.timer",
    "lb.proxy.outbox",
    "lb.proxy.headers",
    "lb.proxy.listener",
    "lb.proxy.side",
    "lb.proxy.upstream",
    "lb.proxy.exchange",
    "lb.proxy.downstream",
    "lb.observe.recorder",
    "lb.routing.table",
    "lb.traffic.breaker",
    "lb.traffic.ratelimit",
    "lb.traffic.outlier",
    "lb.traffic.passive",
    "lb.traffic.gates",
    "lb.traffic.admission",
    "lb.traffic.control",
    # the edge policies' request path (lb/edge/chain.py and the policies it runs per request)
    "lb.edge.metrics",
    "lb.edge.ipfilter",
    "lb.edge.client_caps",
    "lb.edge.chain",
    "lb.edge.network",
    "lb.edge.basic_auth",
    "lb.edge.jwt_auth",
    # tracing's request path: the trace context of each request head, the sampled spans' queue
    "lb.tracing.context",
    "lb.tracing.spans",
    # HTTP/2 toward clients; those in NEEDS_H2 import only where lb._h2 is built (the rest
    # never needs them)
    "lb.proxy.http2.request",
    "lb.proxy.http2.session_io",
    "lb.proxy.http2.stream",
    "lb.proxy.http2.downstream",
    # HTTP/2 toward backends (services.NAME.protocol: h2)
    "lb.proxy.http2.backend_stream",
    "lb.proxy.http2.backend_connection",
    "lb.proxy.http2.upstream",
)
NEEDS_H2 = frozenset(
    (
        "lb.proxy.http2.session_io",
        "lb.proxy.http2.stream",
        "lb.proxy.http2.downstream",
        "lb.proxy.http2.backend_stream",
        "lb.proxy.http2.backend_connection",
        "lb.proxy.http2.upstream",
    )
)
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def source_path(module: str) -> str:
    return os.path.join(_ROOT, *module.split(".")) + ".py"


class SourceFirst:
    """A meta-path finder: the compiled modules load from their .py files."""

    @staticmethod
    def find_spec(name: str, path: object = None, target: object = None) -> ModuleSpec | None:
        if name not in MODULES:
            return None
        return spec_from_file_location(name, source_path(name))


def install_source_first() -> None:
    # Before any compiled module is imported: they cimport each other, so all or none.
    if os.environ.get("LB_PURE_PYTHON") and SourceFirst not in sys.meta_path:
        sys.meta_path.insert(0, SourceFirst)


def implementation() -> str:
    """'cython' when every compiled module runs compiled, 'python' otherwise."""
    from importlib import import_module

    from .proxy.http2 import available

    wanted = MODULES if available() else tuple(m for m in MODULES if m not in NEEDS_H2)
    files = [import_module(m).__file__ or "" for m in wanted]
    return "cython" if all(f.endswith(tuple(EXTENSION_SUFFIXES)) for f in files) else "python"
