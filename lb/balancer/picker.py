"""The picker (least connections, or least latency): the compiled ``lb._picker`` when it was
built, else its pure-Python twin ``lb.balancer.picker_py`` (same choices, slower).

``LB_PICKER=python`` forces the twin, e.g. to rule the extension out while debugging.
``IMPLEMENTATION`` says which one was loaded ("cython" or "python").
"""

from __future__ import annotations

import os

if os.environ.get("LB_PICKER") == "python":
    from lb.balancer.picker_py import Picker

    IMPLEMENTATION = "python"
else:
    try:
        from lb._picker import Picker
    except ImportError:
        from lb.balancer.picker_py import Picker

        IMPLEMENTATION = "python"
    else:
        IMPLEMENTATION = "cython"

__all__ = ["IMPLEMENTATION", "Picker"]
