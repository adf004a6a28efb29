"""The ONNX extra is optional: the core never imports onnx, and export and import without it
raise an ImportError that names the extra (run whether or not onnx is installed)."""
import subprocess
import sys


def test_onnx_is_optional(tmp_path):
    """import cconv, training and saving never import onnx; export and import without it
    raise ImportError naming the extra."""
    code = f"""
import sys, numpy as np
import cconv
m = cconv.models.digits_cnn(seed=0)
m.compile("adam", "categorical_crossentropy")
m.fit(np.zeros((4, 8, 8, 1)), np.eye(10)[:4], epochs=1, verbose=0)
m.save({str(tmp_path / 'm.npz')!r}); m.save_weights({str(tmp_path / 'w.safetensors')!r})
cconv.load_model({str(tmp_path / 'm.npz')!r})
assert "onnx" not in sys.modules and "onnxruntime" not in sys.modules, sorted(sys.modules)
sys.modules["onnx"] = None            # as if not installed
for f in (lambda: m.export({str(tmp_path / 'x.onnx')!r}), lambda: cconv.load_model("x.onnx")):
    try:
        f()
    except ImportError as e:
        assert "cconv[onnx]" in str(e), e
    else:
        raise AssertionError("no ImportError")
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
