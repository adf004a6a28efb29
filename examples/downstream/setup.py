"""Build the two extensions of the example: one in Cython, one in C, both against the
installed cconv (its .pxd files are found on the import path, its headers in
cconv.get_include())."""
import sys

import cconv
from Cython.Build import cythonize
from setuptools import Extension, setup

if sys.platform == "win32":
    openmp = (["/openmp"], [])
elif sys.platform == "darwin":
    openmp = (["-Xpreprocessor", "-fopenmp"], ["-lomp"])
else:
    openmp = (["-fopenmp"], ["-fopenmp"])

extensions = [
    # cimports cconv's kernels and calls them without the GIL, from its own prange.
    Extension("cconv_downstream._kernels", ["src/cconv_downstream/_kernels.pyx"],
              include_dirs=[cconv.get_include()],
              extra_compile_args=openmp[0], extra_link_args=openmp[1]),
    # calls them through cconv's C API (import_cconv()).
    Extension("cconv_downstream._capi", ["src/cconv_downstream/_capi.c"],
              include_dirs=[cconv.get_include()]),
]

setup(ext_modules=cythonize(extensions, compiler_directives={
    "language_level": 3, "boundscheck": False, "wraparound": False}))
