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

    # Both include ext/lb_atomic.h: the picker counts in shared memory, lb._shm claims rows.
    common = {
        "extra_compile_args": ["-O3"],
        "include_dirs": ["ext"],
        "depends": ["ext/lb_atomic.h"],
    }
    # No fused multiply-add in the picker: its least-latency doubles must round as the twin's.
    picker = {**common, "extra_compile_args": ["-O3", "-ffp-contract=off"]}
    exts = [
        Extension("lb._picker", ["ext/picker.pyx"], **picker),
        Extension("lb._hashring", ["ext/hashring.pyx"], **common),
        Extension("lb._shm", ["ext/shm.pyx"], **common),
        Extension("lb._traceids", ["ext/traceids.pyx"], extra_compile_args=["-O3"]),
    ]
    regenerate_after("ext/picker.pyx", "lb/_picker.pxd")
    try:
        compiled = cythonize(exts, language_level=3, quiet=True) + data_path(cythonize, Extension)
    except Exception as exc:
        print(f"WARNING: cythonize failed ({exc}); using the pure-Python picker.", file=sys.stderr)
        return []
    return compiled + h2_extension(cythonize, Extension)


def regenerate_after(pyx: str, pxd: str) -> None:
    """Cython regenerates a .pyx's C file when the .pxd beside it, of the same name, changes;
    lb._picker's is named after the module instead (lb/_picker.pxd, where lb._hashring
    cimports it from), so an edit there must drop the stale C file here. Left stale, the
    picker would be built against the old layout that lb._hashring no longer reads."""
    c_file = pyx[: -len(".pyx")] + ".c"
    if os.path.exists(c_file) and os.path.getmtime(pxd) > os.path.getmtime(c_file):
        os.remove(c_file)


NGHTTP2_HEADER = "/usr/include/nghttp2/nghttp2.h"


def h2_extension(cythonize, Extension) -> list:  # type: ignore[no-untyped-def]
    """lb._h2, HTTP/2 over libnghttp2: only where libnghttp2-dev is installed (HTTP/1.1 needs
    none of it), and only a libnghttp2 with the rapid-reset and CONTINUATION-flood limits
    (upstream 1.61, or Debian 12's 1.52 with the CVE-2023-44487/CVE-2024-28182 backports)."""
    if not os.path.exists(NGHTTP2_HEADER):
        print("WARNING: no nghttp2/nghttp2.h: lb._h2 (HTTP/2) not built.", file=sys.stderr)
        return []
    with open(NGHTTP2_HEADER, encoding="utf-8", errors="replace") as f:
        header = f.read()
    needed = ("nghttp2_option_set_stream_reset_rate_limit", "nghttp2_option_set_max_continuations")
    if not all(name in header for name in needed):
        print("WARNING: libnghttp2 lacks the flood limits: lb._h2 not built.", file=sys.stderr)
        return []
    ext = Extension(
        "lb._h2",
        ["ext/h2.pyx"],
        libraries=["nghttp2"],
        extra_compile_args=["-O3"],
        depends=["ext/nghttp2.pxd", "ext/h2_defs.pxi", "ext/h2_callbacks.pxi"],
    )
    try:
        return cythonize([ext], language_level=3, quiet=True)
    except Exception as exc:  # its own call: a failure here must not cost the picker
        print(f"WARNING: lb._h2 not compiled ({exc}).", file=sys.stderr)
        return []


def _compiled_modules() -> tuple[str, ...]:
    """lb.compiled.MODULES, read without importing the package being built."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_lb_compiled", "lb/compiled.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MODULES


def data_path(cythonize, Extension) -> list:  # type: ignore[no-untyped-def]
    """The data path and the metrics recorder: these .py files compile, with the .pxd files
    beside them, into typed extension types; uncompiled, the same files are the twin."""
    exts = [
        Extension(m, [m.replace(".", "/") + ".py"], extra_compile_args=["-O3"])
        for m in _compiled_modules()
    ]
    try:
        return cythonize(
            exts,
            language_level=3,
            quiet=True,
            build_dir="build/cython",  # keep the generated .c out of the package
            compiler_directives={"annotation_typing": False},  # the .pxd files say the types
        )
    except Exception as exc:
        print(f"WARNING: data path not compiled ({exc}); it stays Python.", file=sys.stderr)
        return []


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
