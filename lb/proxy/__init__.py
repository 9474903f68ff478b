"""The data path. Built with Cython (setup.py), timer, headers, upstream, exchange and
downstream are extension types declared by the .pxd files beside them; the same .py files
run as they are when nothing was built, or when LB_PURE_PYTHON=1 asks for the source."""

import os
import sys

COMPILED_MODULES = ("timer", "headers", "upstream", "exchange", "downstream")


class _SourceFirst:
    """Finds this package's compiled modules as .py files, ahead of their .so twins."""

    @staticmethod
    def find_spec(name, path=None, target=None):  # type: ignore[no-untyped-def]
        prefix, _, leaf = name.rpartition(".")
        if prefix != __name__ or leaf not in COMPILED_MODULES:
            return None
        from importlib.util import spec_from_file_location

        return spec_from_file_location(name, os.path.join(os.path.dirname(__file__), leaf + ".py"))


if os.environ.get("LB_PURE_PYTHON"):
    sys.meta_path.insert(0, _SourceFirst)


def implementation() -> str:
    """'cython' when the data path runs compiled, 'python' otherwise."""
    from importlib.machinery import EXTENSION_SUFFIXES

    from . import downstream, exchange, upstream

    files = (downstream.__file__ or "", exchange.__file__ or "", upstream.__file__ or "")
    return "cython" if all(f.endswith(tuple(EXTENSION_SUFFIXES)) for f in files) else "python"
