"""Packaging checks that hold for any install of cconv (editable, wheel, sdist build).

A broken compiled extension and missing optional extras are simulated in a fresh
interpreter, whose imports are steered by a ``sys.meta_path`` finder, so this process
keeps its own modules intact. ``tools/build_wheel.sh`` runs this file (with the whole
suite) against the installed wheel, from outside the source tree.
"""
import ast
import importlib.metadata
import inspect
import io
import os
import subprocess
import sys
import textwrap

import pytest

import cconv

# Prepended to the child's code: makes importing the named modules fail like a broken or
# absent install would. BLOCKED maps a module name to "missing" (ModuleNotFoundError, as
# if not installed) or to a file whose bytes are loaded as the extension (a corrupt or
# foreign shared library: the loader's own error).
_BLOCKER = textwrap.dedent("""
    import importlib.util, sys
    from importlib.machinery import ExtensionFileLoader

    class _Blocker:
        def find_spec(self, name, path=None, target=None):
            top = name.split(".")[0]
            how = BLOCKED.get(name, BLOCKED.get(top))
            if how is None:
                return None
            if how == "missing":
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return importlib.util.spec_from_file_location(
                name, how, loader=ExtensionFileLoader(name, how))

    sys.meta_path.insert(0, _Blocker())
""")


def _run_python(code, blocked, tmp_path):
    """Run ``code`` in a fresh interpreter (cwd tmp_path) with ``blocked`` imports."""
    script = f"BLOCKED = {blocked!r}\n{_BLOCKER}\n{textwrap.dedent(code)}"
    return subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)


def _last_line(stderr):
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _assert_helpful_core_error(proc):
    assert proc.returncode != 0, proc.stdout
    last = _last_line(proc.stderr)
    # The error the user sees last says what is broken and how to repair it.
    assert last.startswith("ImportError: cconv's compiled extension (cconv._core) could not "
                           "be imported"), proc.stderr
    assert "pip install --force-reinstall cconv" in last, last
    assert "pip install ." in last, last
    return last


def test_import_without_compiled_extension_says_how_to_fix(tmp_path):
    proc = _run_python("import cconv", {"cconv._core": "missing"}, tmp_path)
    last = _assert_helpful_core_error(proc)
    assert "No module named 'cconv._core'" in last  # the underlying cause is kept


def test_import_with_corrupt_compiled_extension_says_how_to_fix(tmp_path):
    # A file that is not a loadable library for this platform, like a wheel built for
    # another platform or a truncated download: the OS loader's message is passed on.
    import importlib.machinery

    bogus = tmp_path / ("_core" + importlib.machinery.EXTENSION_SUFFIXES[0])
    bogus.write_bytes(b"this is not a shared library\n" * 64)
    proc = _run_python("import cconv", {"cconv._core": str(bogus)}, tmp_path)
    _assert_helpful_core_error(proc)


def test_direct_functional_import_fails_the_same_way(tmp_path):
    proc = _run_python("from cconv.functional import conv2d", {"cconv._core": "missing"},
                       tmp_path)
    _assert_helpful_core_error(proc)


def test_import_needs_no_optional_extra(tmp_path):
    code = """
        import sys
        import cconv, cconv.functional, cconv.layers, cconv.model, cconv.viz, cconv.datasets
        import numpy as np
        y = cconv.functional.conv2d(np.ones((1, 4, 4, 1)), np.ones((3, 3, 1, 1)))
        assert y.shape == (1, 2, 2, 1), y.shape
        for name in ("matplotlib", "PIL", "sklearn", "torch"):
            assert name not in sys.modules, name
        print("ok")
    """
    proc = _run_python(code, {"matplotlib": "missing", "PIL": "missing", "sklearn": "missing",
                              "torch": "missing"}, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_import_cconv_stays_light(tmp_path):
    # What keeps `import cconv` fast (bench/bench_import.py measures it): no optional
    # extra and not scipy.linalg (the BLAS is bound on first use) at import time.
    code = """
        import sys
        import cconv
        heavy = sorted(m for m in ("scipy.linalg", "matplotlib", "PIL", "sklearn", "torch",
                                   "onnx", "onnxruntime", "cconv.layers", "cconv.model",
                                   "cconv.viz", "cconv.datasets") if m in sys.modules)
        print(",".join(heavy))
    """
    proc = _run_python(code, {}, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"imported by `import cconv`: {proc.stdout.strip()}"


_NO_EXTRAS = {"matplotlib": "missing", "PIL": "missing", "sklearn": "missing"}


@pytest.mark.parametrize("call, blocked, extra", [
    ("import cconv.viz as v; v.get_backend()", _NO_EXTRAS, "cconv[viz]"),
    ("import cconv.viz as v; v.set_backend('matplotlib'); v.get_backend()",
     {"matplotlib": "missing"}, "cconv[viz]"),
    ("import cconv.viz as v; v.set_backend('pillow'); v.get_backend()",
     {"PIL": "missing"}, "cconv[viz]"),
    ("import cconv.datasets as d; d.load_digits()", _NO_EXTRAS, "cconv[data]"),
    ("import cconv.datasets as d; d.load_lfw('.')", _NO_EXTRAS, "cconv[data]"),
    ("import cconv; cconv.Sequential([cconv.layers.Flatten()], input_shape=(2, 1)).export('m.onnx')",
     {"onnx": "missing"}, "cconv[onnx]"),
    ("import cconv; cconv.load_model('m.onnx')", {"onnx": "missing"}, "cconv[onnx]"),
    ("import cconv.distributed as d; d.init()", {"mpi4py": "missing"}, "cconv[mpi]"),
])
def test_missing_extra_names_the_extra(call, blocked, extra, tmp_path):
    proc = _run_python(call, blocked, tmp_path)
    assert proc.returncode != 0, proc.stdout
    last = _last_line(proc.stderr)
    assert last.startswith(("ImportError:", "ModuleNotFoundError:")), proc.stderr
    assert f'pip install "{extra}"' in last, last


def test_version_is_the_installed_metadata():
    assert cconv.__version__ == importlib.metadata.version("cconv")
    from cconv._version import __version__

    assert cconv.__version__ == __version__


def test_type_information_is_shipped():
    pkg = os.path.dirname(cconv.__file__)
    assert os.path.isfile(os.path.join(pkg, "py.typed"))
    assert os.path.isfile(os.path.join(pkg, "_core.pyi"))


def test_core_stub_matches_compiled_module():
    """The names and parameters in _core.pyi are those of the compiled functions."""
    from cconv import _core

    with open(os.path.join(os.path.dirname(cconv.__file__), "_core.pyi"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    stub = {node.name: [a.arg for a in node.args.posonlyargs + node.args.args]
            for node in tree.body if isinstance(node, ast.FunctionDef)}
    public = [getattr(_core, name) for name in dir(_core) if not name.startswith("_")]
    compiled = {f.__name__: list(inspect.signature(f).parameters)
                for f in public if callable(f) and not isinstance(f, type)}
    assert sorted(stub) == sorted(compiled)
    for name, params in compiled.items():
        assert stub[name] == params, name
    stub_classes = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    assert stub_classes == {c.__name__ for c in public if isinstance(c, type)}


def test_show_config_reports_the_build():
    out = io.StringIO()
    info = cconv.show_config(file=out)
    assert info["version"] == cconv.__version__
    assert isinstance(info["openmp"], bool)
    assert info["num_threads"] == cconv.get_num_threads()
    text = out.getvalue()
    assert f"cconv {cconv.__version__}" in text
    assert "OpenMP:" in text and "BLAS:" in text and "threads:" in text
    if info["openmp"]:
        # threadpoolctl sees the OpenMP runtime the extension is linked with.
        rt = info["openmp_runtime"]
        assert rt is not None and rt["filepath"], info
        assert os.path.exists(rt["filepath"]) and rt["filepath"] in text
    assert info["blas"], "threadpoolctl is a dependency: the BLAS must be listed"
    assert all(lib["num_threads"] >= 1 for lib in info["blas"])
    assert cconv.show_config(file=False) == info  # file=False: returned, not printed
