"""The README's Python examples run as written (and the residual network learns the digits)."""
import importlib
import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _installed(*modules):
    for m in modules:
        try:
            importlib.import_module(m.strip())
        except ImportError:
            return False
    return True


@pytest.mark.skipif(not README.exists(), reason="README.md is not beside the tests")
def test_readme_python_examples_run(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README.md has no Python example"
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the example saves a model file
    try:
        ns: dict = {}
        for block in blocks:
            # a block that starts "# needs: a, b" runs only where those packages import
            needs = re.match(r"# needs: (.*)\n", block)
            if needs and not _installed(*needs.group(1).split(",")):
                continue
            exec(compile(block, str(README), "exec"), ns)
    finally:
        os.chdir(cwd)
    assert (tmp_path / "model.npz").exists() and (tmp_path / "resnet.npz").exists()
    # the ONNX and PyTorch examples ran wherever their packages are installed
    if _installed("onnx", "onnxruntime"):
        assert (tmp_path / "model.onnx").exists() and "probs" in ns
    if _installed("torch", "onnx", "onnxscript"):
        assert (tmp_path / "weights.safetensors").exists() and "imported" in ns
    # the residual network example: two custom blocks and a concatenation, trained on digits
    resnet, again = ns["resnet"], ns["again"]
    blocks = [l for l in resnet.layers if type(l).__name__ == "ResidualBlock"]
    assert len(blocks) == 2 and any(type(l).__name__ == "Concatenate" for l in resnet.layers)
    assert resnet.evaluate(ns["x_test"], ns["y_test"])["accuracy"] >= 0.97
    assert again.get_config() == resnet.get_config()
    for a, b in zip(resnet.get_weights(), again.get_weights()):
        assert (a == b).all()
    assert set(ns["history"].history) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert ns["p"].shape == (8, 8, 8, 16) and ns["dy"].shape == ns["y"].shape


LFW_TABLES = README.parent / "tools" / "lfw_tables.py"


@pytest.mark.skipif(not LFW_TABLES.exists() or not (README.parent / ".git").exists(),
                    reason="needs the repository's tools/, docs/ and git history")
def test_readme_lfw_tables_come_from_the_results_files():
    """The LFW tables are tools/lfw_tables.py's output from docs/lfw/*.json, and the prose
    around them quotes no accuracy that those files do not hold."""
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, str(LFW_TABLES), "--check"], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
