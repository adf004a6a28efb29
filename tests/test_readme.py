"""The README's Python examples run as written."""
import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.skipif(not README.exists(), reason="README.md is not beside the tests")
def test_readme_python_examples_run(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README.md has no Python example"
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the example saves a model file
    try:
        ns: dict = {}
        for block in blocks:
            exec(compile(block, str(README), "exec"), ns)
    finally:
        os.chdir(cwd)
    assert (tmp_path / "model.npz").exists()
    assert set(ns["history"].history) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert ns["p"].shape == (8, 8, 8, 16) and ns["dy"].shape == ns["y"].shape
