"""The ONNX extra is optional: training and saving never import onnx (run whether or not it
is installed; test_packaging checks that export and import without it name the extra)."""
import subprocess
import sys


def test_onnx_is_optional(tmp_path):
    """Training, saving and loading cconv files (weights in safetensors too) never import
    onnx or onnxruntime."""
    code = f"""
import sys
import numpy as np
import cconv
m = cconv.models.digits_cnn(seed=0)
m.compile("adam", "categorical_crossentropy")
m.fit(np.zeros((4, 8, 8, 1)), np.eye(10)[:4], epochs=1, verbose=0)
m.save({str(tmp_path / 'm.npz')!r}); m.save_weights({str(tmp_path / 'w.safetensors')!r})
cconv.load_model({str(tmp_path / 'm.npz')!r}).load_weights({str(tmp_path / 'w.safetensors')!r})
assert not {{"onnx", "onnxruntime", "safetensors"}} & set(sys.modules), sorted(sys.modules)
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
