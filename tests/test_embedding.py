"""cconv embedded in other packages (issue 15): its Cython API (.pxd files), its C API
(cconv/cconv.h, import_cconv()) and cconv.get_include().

The example package of the repository, examples/downstream, is built here against the cconv
being tested (the installed wheel, when tools/build_wheel.sh runs this suite outside the
source tree) and its own tests run: its kernels, called from Cython without the GIL (from
its own prange too) and from C, must give cconv.functional's results bit for bit, and an
invalid argmax must come back as an error code with nothing written outside dx. A small C
extension built against an altered copy of cconv.h checks that import_cconv() refuses a
cconv of another major version, or of an older minor one, with a clear message.
"""
import os
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import cconv

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(os.path.dirname(HERE), "examples", "downstream")
PACKAGE = os.path.dirname(cconv.__file__)


def build_ext(src):
    """``python setup.py build_ext --inplace`` in ``src``; the output on failure."""
    proc = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace", "--parallel",
                           "2"], cwd=src, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"building {src} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """The example package, built in a temporary copy against the cconv under test."""
    assert os.path.isdir(EXAMPLE), f"the example package is missing: {EXAMPLE}"
    dst = tmp_path_factory.mktemp("downstream") / "downstream"
    shutil.copytree(EXAMPLE, dst, ignore=shutil.ignore_patterns("build", "*.so", "*.c"))
    shutil.copy(os.path.join(EXAMPLE, "src", "cconv_downstream", "_capi.c"),
                dst / "src" / "cconv_downstream")
    build_ext(dst)
    return dst


def test_headers_and_declarations_are_installed():
    include = cconv.get_include()
    assert include == os.path.join(PACKAGE, "include")
    for name in ("cconv.h", "geometry.h"):
        assert os.path.isfile(os.path.join(include, "cconv", name)), name
    # One .pxd per concept, and the private ones they cimport.
    for name in ("geometry", "conv", "im2col", "pool", "activation", "_conv", "_im2col",
                 "_pool", "_activation"):
        assert os.path.isfile(os.path.join(PACKAGE, name + ".pxd")), name
    assert cconv._core.C_API_VERSION == (1, 0)
    with open(os.path.join(include, "cconv", "cconv.h")) as f:
        text = f.read()
    assert "#define CCONV_API_VERSION_MAJOR 1\n" in text
    assert "#define CCONV_API_VERSION_MINOR 0\n" in text


def test_example_package_equals_functional_bit_for_bit(example):
    """The example's own test file: its results are cconv.functional's, bit for bit."""
    env = dict(os.environ, PYTHONPATH=str(example / "src"))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(example / "tests")], cwd=example, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
    assert re.search(r"\b\d+ passed\b", proc.stdout) and " failed" not in proc.stdout


def test_readme_cython_example_builds_and_runs(tmp_path):
    """The Cython example of the README compiles against cconv and computes, from its own
    prange, what cconv.functional computes."""
    import numpy as np

    from cconv import functional as F

    readme = os.path.join(os.path.dirname(HERE), "README.md")
    if not os.path.exists(readme):
        pytest.skip("README.md is not beside the tests")
    with open(readme, encoding="utf-8") as f:
        blocks = re.findall(r"```cython\n(.*?)```", f.read(), re.S)
    assert len(blocks) == 1
    (tmp_path / "readme_example.pyx").write_text(blocks[0])
    (tmp_path / "setup.py").write_text(textwrap.dedent("""
        import sys
        import cconv
        from Cython.Build import cythonize
        from setuptools import Extension, setup
        flags = [] if sys.platform == "win32" else ["-fopenmp"]
        setup(ext_modules=cythonize([Extension(
            "readme_example", ["readme_example.pyx"], include_dirs=[cconv.get_include()],
            extra_compile_args=flags, extra_link_args=flags)], language_level=3))
    """))
    build_ext(tmp_path)
    sys.path.insert(0, str(tmp_path))
    try:
        import readme_example
    finally:
        sys.path.remove(str(tmp_path))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 8, 8, 4), dtype=np.float32)
    w = rng.standard_normal((3, 3, 4, 8), dtype=np.float32)
    y = np.full((3, 8, 8, 8), np.nan, np.float32)
    readme_example.conv_each(x, w, y)
    for n in range(3):
        assert np.array_equal(y[n:n + 1], F.conv2d(x[n:n + 1], w, padding=1))


_VERSION_PROBE = textwrap.dedent("""
    #define PY_SSIZE_T_CLEAN
    #include <Python.h>
    #include <cconv/cconv.h>

    static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "probe", NULL, -1, NULL};

    PyMODINIT_FUNC PyInit_probe(void) {
        if (import_cconv() < 0)
            return NULL;
        return PyModule_Create(&module);
    }
""")


@pytest.mark.parametrize("major, minor, words", [
    (1, 0, None),                                             # this cconv's own version
    (2, 0, ["compiled against cconv C API version 2.0", "provides C API version 1.0",
            "rebuild the module"]),
    (0, 7, ["compiled against cconv C API version 0.7", "provides C API version 1.0",
            "rebuild the module"]),
    (1, 3, ["compiled against cconv C API version 1.3", "provides only C API version 1.0",
            "upgrade cconv"]),
])
def test_import_cconv_checks_the_api_version(major, minor, words, tmp_path):
    """A module built against a header of another major version (or a newer minor one)
    is refused at import with an ImportError that names both versions."""
    include = tmp_path / "include" / "cconv"
    shutil.copytree(os.path.join(cconv.get_include(), "cconv"), include)
    header = include / "cconv.h"
    text = header.read_text()
    text = text.replace("#define CCONV_API_VERSION_MAJOR 1\n",
                        f"#define CCONV_API_VERSION_MAJOR {major}\n")
    text = text.replace("#define CCONV_API_VERSION_MINOR 0\n",
                        f"#define CCONV_API_VERSION_MINOR {minor}\n")
    header.write_text(text)
    (tmp_path / "probe.c").write_text(_VERSION_PROBE)
    (tmp_path / "setup.py").write_text(textwrap.dedent(f"""
        from setuptools import Extension, setup
        setup(ext_modules=[Extension("probe", ["probe.c"], include_dirs=[{str(tmp_path / 'include')!r}])])
    """))
    build_ext(tmp_path)
    proc = subprocess.run([sys.executable, "-c", "import probe"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    if words is None:
        assert proc.returncode == 0, proc.stderr
        return
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: "), proc.stderr
    for w in words:
        assert w in last, last


def test_example_has_cases_that_run_two_threads(restore_threads):
    """The example's large convolutions and pool (its last cases) are planned on two
    threads when two are allowed: its 2-thread comparisons reach the multi-threaded paths
    (per-thread and per-slot sums) and not only the one-thread ones."""
    from cconv import functional as F

    cconv.set_num_threads(2)
    for (xs, ws), routes in [(((4, 32, 32, 8), (3, 3, 8, 16)), (0, 0)),
                             (((4, 32, 32, 16), (3, 3, 16, 16)), (1, 1)),
                             (((4, 32, 32, 3), (3, 3, 3, 32)), (2, 2))]:
        for backward, route in zip((False, True), routes):
            plan = F._plan(xs, ws[:2], ws[3], (1, 1), ((1, 1), (1, 1)), (1, 1), 1, 4, backward,
                           False)
            if route == 2 and F._core.simd_level() < 1:
                route = 0                                  # no AVX2/AVX-512: im2col + GEMM
            assert plan[0] == route and plan[1] == 2, (xs, backward, plan)
    assert F._threads(4 * 32, 4 * 64 * 64 * 16) == 2              # the (4, 64, 64, 16) pool


def test_example_large_cases_run_two_threads_through_both_apis(example):
    """The example's large cases do run on two threads, through the Cython API and the C
    API alike: the probe's record of the route kernel's team (the plan saying so is not
    enough: a kernel may still fall back to one thread)."""
    from cconv._testing import kernels_run, reset, simd_max

    sys.path.insert(0, str(example / "src"))
    try:
        import cconv_downstream as ds
    finally:
        sys.path.remove(str(example / "src"))
    rng = np.random.default_rng(5)
    one = ((1, 1), (1, 1))
    for xs, ws, path in [((4, 32, 32, 8), (3, 3, 8, 16), "conv2d_forward"),
                         ((4, 32, 32, 16), (3, 3, 16, 16), "winograd_forward"),
                         ((4, 32, 32, 3), (3, 3, 3, 32),
                          "direct_forward" if simd_max() >= 2 else "conv2d_forward")]:
        x = rng.standard_normal(xs).astype(np.float32)
        w = rng.standard_normal(ws).astype(np.float32)
        b = np.zeros(ws[3], np.float32)
        y = np.empty(xs[:3] + ws[3:], np.float32)
        reset()
        assert ds.conv2d(x, w, b, y, (1, 1), one, (1, 1), 1, 2) == ds.OK
        assert kernels_run()[path].team == 2, (xs, kernels_run())
        reset()
        assert ds.capi_conv2d_forward(x, w, b, y, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2) == ds.OK
        assert kernels_run()[path].team == 2, (xs, kernels_run())
    x = rng.standard_normal((4, 64, 64, 16)).astype(np.float32)
    y, a = np.empty((4, 32, 32, 16), np.float32), np.empty((4, 32, 32, 16), np.int32)
    reset()
    assert ds.max_pool2d(x, y, a, (2, 2), (2, 2), ((0, 0), (0, 0)), 2) == ds.OK
    run = kernels_run()
    assert [r.team for name, r in run.items() if name.startswith("max_pool2d_forward")] == [2], run
