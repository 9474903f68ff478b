"""The consistent-hash tables: the compiled ``lb._hashring`` when it was built, else its
pure-Python twin ``lb.balancer.hashring_py`` (same choices, slower).

``LB_PICKER=python`` or ``LB_PURE_PYTHON=1`` force the twin, as they do for the picker and the
data path. ``IMPLEMENTATION`` says which one was loaded ("cython" or "python").
"""

from __future__ import annotations

import os

if os.environ.get("LB_PICKER") == "python" or os.environ.get("LB_PURE_PYTHON"):
    from lb.balancer.hashring_py import MAGLEV, MAX_TABLE_SIZE, RING, HashTable, xxh64

    IMPLEMENTATION = "python"
else:
    try:
        from lb._hashring import MAGLEV, MAX_TABLE_SIZE, RING, HashTable, xxh64
    except ImportError:
        from lb.balancer.hashring_py import MAGLEV, MAX_TABLE_SIZE, RING, HashTable, xxh64

        IMPLEMENTATION = "python"
    else:
        IMPLEMENTATION = "cython"

__all__ = ["IMPLEMENTATION", "MAGLEV", "MAX_TABLE_SIZE", "RING", "HashTable", "xxh64"]
