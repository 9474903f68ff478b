"""Trace ids: the compiled ``lb._traceids`` when it was built, else its pure-Python twin
``lb.tracing.ids_py`` (the same ids, slower). ``LB_PURE_PYTHON=1`` forces the twin, as it
does for the data path."""

from __future__ import annotations

import os

if os.environ.get("LB_PURE_PYTHON"):
    from lb.tracing.ids_py import TraceIds
else:
    try:
        from lb._traceids import TraceIds
    except ImportError:
        from lb.tracing.ids_py import TraceIds

__all__ = ["TraceIds"]
