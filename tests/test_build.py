"""Which build of the data path a test run exercises: `make test` runs the suite on the
compiled build, then the proxy tests again on the pure-Python twin (LB_PURE_PYTHON=1)."""

import os
from pathlib import Path

import lb.compiled


def test_the_run_uses_the_build_it_asked_for() -> None:
    built = all(
        any(Path(lb.compiled.source_path(m)).parent.glob(m.rsplit(".", 1)[1] + ".*.so"))
        for m in lb.compiled.MODULES
    )
    if os.environ.get("LB_PURE_PYTHON"):
        assert lb.compiled.implementation() == "python"
    elif built:
        assert lb.compiled.implementation() == "cython"
