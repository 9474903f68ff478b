"""Build the optional Cython picker; fall back to the pure-Python twin when it cannot be built.

`cythonize()` drops `Extension(optional=True)`, so the failure is caught here instead.
Set LB_NO_EXT=1 to skip the extension on purpose.
"""

import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler, no headers, no Cython
            self._warn(exc)

    def build_extension(self, ext) -> None:  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._warn(exc)

    @staticmethod
    def _warn(exc: Exception) -> None:
        print(
            f"WARNING: the Cython extension could not be built ({exc}); "
            "lb will use its pure-Python picker.",
            file=sys.stderr,
        )


def extensions() -> list:
    if os.environ.get("LB_NO_EXT"):
        print("LB_NO_EXT set: skipping the Cython extension", file=sys.stderr)
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("WARNING: Cython missing; lb will use its pure-Python picker.", file=sys.stderr)
        return []
    from setuptools import Extension

    exts = [
        Extension("lb._picker", ["ext/picker.pyx"], extra_compile_args=["-O3"]),
    ]
    try:
        return cythonize(exts, language_level=3, quiet=True)
    except Exception as exc:
        print(f"WARNING: cythonize failed ({exc}); using the pure-Python picker.", file=sys.stderr)
        return []


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
