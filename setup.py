"""Build the compiled core of streamcore.

Build-time switches, read from the environment here and nowhere else:
  STREAMCORE_DEBUG=1     bounds checks on, -O0 -g (for gdb and sanitizers)
  STREAMCORE_TRACE=1     line tracing, for coverage and profilers
  STREAMCORE_ANNOTATE=1  write the `cython -a` HTML report beside each .pyx
  STREAMCORE_MODULES=a,b build only these modules (e.g. "_histogram"), for quick iteration
"""

import os
from pathlib import Path

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = Path(__file__).parent
PACKAGE = HERE / "src" / "streamcore"


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0", "false", "no")


debug = _flag("STREAMCORE_DEBUG")
trace = _flag("STREAMCORE_TRACE")
only = {m.strip() for m in os.environ.get("STREAMCORE_MODULES", "").split(",") if m.strip()}

directives = {
    "language_level": 3,
    "boundscheck": debug,
    "wraparound": False,
    "initializedcheck": debug,
    "cdivision": True,
    "embedsignature": True,
    "linetrace": trace,
    "profile": trace,
}
macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
if trace:
    macros.append(("CYTHON_TRACE_NOGIL", "1"))
compile_args = ["-O0", "-g"] if debug else ["-O3"]

extensions = [
    Extension(
        f"streamcore.{pyx.stem}",
        [str(pyx.relative_to(HERE))],
        include_dirs=[np.get_include()],
        define_macros=macros,
        extra_compile_args=compile_args,
    )
    for pyx in sorted(PACKAGE.glob("*.pyx"))
    if not only or pyx.stem in only
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=directives,
        annotate=_flag("STREAMCORE_ANNOTATE"),
        nthreads=0,
    ),
)
