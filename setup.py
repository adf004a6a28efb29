"""Build the compiled core of cconv.

OpenMP is switched on when the compiler supports it (``-fopenmp`` for gcc/clang,
``/openmp`` for MSVC, ``-Xpreprocessor -fopenmp -lomp`` for Apple clang with libomp).
When it does not, the extension is built without it and runs serially;
``cconv.show_config()`` then reports OpenMP as off.

Environment variables:
  CCONV_DEBUG=1        turn Cython's bounds/wraparound/initialised checks back on.
  CCONV_NO_OPENMP=1    build without OpenMP even if the compiler has it.
  CCONV_BUNDLED_OPENMP=1
                       the wheel being built will be repaired (auditwheel, delocate,
                       delvewheel), which copies the OpenMP runtime into it: append that
                       runtime's license to the wheel's LICENSE. cibuildwheel builds
                       (CIBUILDWHEEL=1) do this too; set CCONV_BUNDLED_OPENMP=0 to skip it.
"""
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))

TEST_OPENMP = r"""
#include <omp.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    return n > 0 ? 0 : 1;
}
"""


def _openmp_runtime(compiler, flags):
    """Which OpenMP runtime the extension links: "vcomp", "llvm-openmp" or "gomp" (None: no OpenMP)."""
    if flags is None:
        return None
    if compiler.compiler_type == "msvc":
        return "vcomp"
    if "-lomp" in flags[1]:
        return "llvm-openmp"
    cc = " ".join(getattr(compiler, "compiler", None) or [])
    return "llvm-openmp" if "clang" in os.path.basename(cc.split(" ")[0]) else "gomp"


def _openmp_flags(compiler):
    """Return (compile_args, link_args) that enable OpenMP, or None if it does not work."""
    if os.environ.get("CCONV_NO_OPENMP"):
        return None
    ctype = compiler.compiler_type
    if ctype == "msvc":
        return ["/openmp"], []
    candidates = [(["-fopenmp"], ["-fopenmp"])]
    if sys.platform == "darwin":
        prefix = os.environ.get("LIBOMP_PREFIX", "")
        inc = [f"-I{prefix}/include"] if prefix else []
        lib = [f"-L{prefix}/lib"] if prefix else []
        candidates.insert(0, (["-Xpreprocessor", "-fopenmp"] + inc, lib + ["-lomp"]))
    tmp = tempfile.mkdtemp()
    try:
        src = os.path.join(tmp, "test_openmp.c")
        with open(src, "w") as f:
            f.write(TEST_OPENMP)
        for cflags, lflags in candidates:
            try:
                objs = compiler.compile([src], output_dir=tmp, extra_postargs=cflags)
                compiler.link_executable(objs, os.path.join(tmp, "test_openmp"),
                                         extra_postargs=lflags)
                return cflags, lflags
            except Exception:  # the compiler or linker refused the flags
                continue
        return None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_openmp_runtime_used = None  # set by BuildExt, read by BdistWheel


class BuildExt(build_ext):
    def build_extensions(self):
        global _openmp_runtime_used
        flags = _openmp_flags(self.compiler)
        _openmp_runtime_used = _openmp_runtime(self.compiler, flags)
        for ext in self.extensions:
            if self.compiler.compiler_type == "msvc":
                ext.extra_compile_args += ["/O2"]
            else:
                # -fno-math-errno: sqrt and friends vectorise (nothing reads errno)
                ext.extra_compile_args += ["-O3", "-fno-strict-aliasing", "-fno-math-errno"]
            if flags is not None:
                ext.extra_compile_args += flags[0]
                ext.extra_link_args += flags[1]
                ext.define_macros.append(("CCONV_BUILT_WITH_OPENMP", "1"))
            else:
                print("cconv: the compiler has no usable OpenMP; building the serial core",
                      file=sys.stderr)
        super().build_extensions()


class BdistWheel(bdist_wheel):
    """A wheel whose LICENSE also covers the OpenMP runtime that repairing it bundles.

    Appended in ``write_wheelfile``, which runs whether the dist-info was generated here
    or prepared beforehand by the build frontend (pip's ``prepare_metadata_for_build_wheel``).
    """

    def write_wheelfile(self, wheelfile_base, *args, **kwargs):
        super().write_wheelfile(wheelfile_base, *args, **kwargs)
        flag = os.environ.get("CCONV_BUNDLED_OPENMP", os.environ.get("CIBUILDWHEEL", "0"))
        if flag != "1" or _openmp_runtime_used is None:
            return
        notice = os.path.join(HERE, "tools", "wheel_licenses", f"{_openmp_runtime_used}.txt")
        target = os.path.join(wheelfile_base, "licenses", "LICENSE")
        with open(notice, encoding="utf-8") as src, open(target, "a", encoding="utf-8") as dst:
            dst.write(src.read())
        print(f"cconv: appended {os.path.relpath(notice, HERE)} to the wheel's LICENSE",
              file=sys.stderr)


debug = bool(os.environ.get("CCONV_DEBUG"))
directives = {
    "language_level": 3,
    "boundscheck": debug,
    "wraparound": debug,
    "initializedcheck": debug,
    "cdivision": not debug,
    "embedsignature": True,
}

# One extension per concept (each .pyx with its .pxd): cconv._cpu, cconv._probe (the
# tests' record of which kernel paths ran) and cconv._blas at the bottom, the kernels of cconv._im2col, _conv, _pool and _activation, and cconv._core, the
# Python face of them all. The public C headers live in src/cconv/include (see
# cconv.get_include()); the private ones beside the .pyx files.
MODULES = ["_cpu", "_probe", "_blas", "_im2col", "_conv", "_pool", "_activation", "_core"]
extensions = [
    Extension(f"cconv.{name}", [f"src/cconv/{name}.pyx"],
              include_dirs=["src/cconv/include"] + ([numpy.get_include()] if name == "_core" else []),
              define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
                             ("CCONV_INTERNAL", "1")],
              depends=glob.glob("src/cconv/*.h") + glob.glob("src/cconv/include/cconv/*.h")
              + glob.glob("src/cconv/*.pxd"))
    for name in MODULES
]

setup(
    ext_modules=cythonize(extensions, compiler_directives=directives,
                          include_path=["src"]),
    cmdclass={"build_ext": BuildExt, "bdist_wheel": BdistWheel},
)
