"""The ``cconv`` command line: ``cconv demo`` end to end, argument errors, subcommand plug-ins."""
import importlib.machinery
import os
import subprocess
import sys
import types

import pytest

import cconv
from cconv import cli


def test_demo_runs_and_writes_its_files(tmp_path):
    pytest.importorskip("sklearn")
    out = tmp_path / "demo-out"
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, "-m", "cconv", "demo", "--epochs", "2", "--out", str(out), "--seed", "1",
         "--threads", "1"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "Total params" in text and "Epoch 1/2" in text and "Epoch 2/2" in text
    assert "test accuracy:" in text
    acc = float(text.split("test accuracy:")[1].split()[0])
    assert 0.5 < acc <= 1.0                                # two epochs already learn a lot

    model_file = out / "digits_cnn.npz"
    assert model_file.is_file()
    model = cconv.load_model(model_file)
    assert model.input_shape == (8, 8, 1) and model.output_shape == (10,)
    # the saved model is the one evaluated: its accuracy on the same split matches the print
    from cconv import datasets
    x, y = datasets.load_digits()
    _, x_test, _, y_test = datasets.train_test_split(x, y, test_size=0.25, seed=1, stratify=True)
    assert model.evaluate(x_test, y_test)["accuracy"] == pytest.approx(acc, abs=6e-5)

    pngs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    if "skipping the PNG figures" in proc.stderr:
        pytest.skip("no matplotlib/Pillow: PNGs not written")
    assert "training_curves.png" in pngs
    conv_pool = [l.name for l in model.layers if type(l).__name__ in ("Conv2D", "MaxPool2D")]
    for name in conv_pool:
        assert any(name in p for p in pngs), (name, pngs)
    for p in pngs:
        assert (out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_console_script_entry_point_is_main():
    from importlib.metadata import entry_points
    eps = [ep for ep in entry_points(group="console_scripts") if ep.name == "cconv"]
    if not eps:
        pytest.skip("cconv is not installed as a distribution")
    assert eps[0].value == "cconv.cli:main"


def test_help_and_argument_errors(capsys):
    assert cli.main([]) == 2
    assert "demo" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        cli.main(["demo", "--epochs", "0"])
    assert e.value.code == 2
    assert "--epochs: expected a positive integer, got '0'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["demo", "--threads", "two"])
    assert "expected a positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and cconv.__version__ in capsys.readouterr().out


def test_optional_subcommand_modules_are_plugged_in(monkeypatch, capsys):
    """A module ``cconv.paper`` with ``add_parser(subparsers)`` adds its subcommand."""
    fake = types.ModuleType("cconv.paper")
    fake.__spec__ = importlib.machinery.ModuleSpec("cconv.paper", None)
    calls = []

    def add_parser(subparsers):
        p = subparsers.add_parser("paper", help="fake")
        p.add_argument("--n", type=int, default=1)
        p.set_defaults(func=lambda args: calls.append(args.n) or 3)

    fake.add_parser = add_parser
    monkeypatch.setitem(sys.modules, "cconv.paper", fake)
    assert cli.main(["paper", "--n", "5"]) == 3 and calls == [5]
    cli.main([])
    assert "paper" in capsys.readouterr().out
