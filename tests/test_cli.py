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


# --------------------------------------------------------------------------- error paths
def _faces(root, people, per_person=6):
    """A tiny LFW-layout folder of 40x40 JPEGs."""
    Image = pytest.importorskip("PIL.Image")
    for p, person in enumerate(people):
        (root / person).mkdir(parents=True)
        for i in range(per_person):
            Image.new("RGB", (40, 40), (40 * p + 5 * i, 90, 160)).save(root / person / f"{person}_{i + 1:04d}.jpg")
    return root


@pytest.fixture
def data(tmp_path):
    """Folders and files for the error cases: {name: path}."""
    two = _faces(tmp_path / "two", ["Ann_Lee", "Bo_Chan"])
    one = _faces(tmp_path / "one", ["Ann_Lee"])
    corrupt = _faces(tmp_path / "corrupt", ["Ann_Lee", "Bo_Chan"])
    (corrupt / "Bo_Chan" / "Bo_Chan_0003.jpg").write_bytes(b"not a jpeg")
    import tarfile
    with tarfile.open(tmp_path / "two.tgz", "w:gz") as tar:
        tar.add(two, arcname="two")
    blob = (tmp_path / "two.tgz").read_bytes()
    (tmp_path / "cut.tgz").write_bytes(blob[:len(blob) // 2])
    (tmp_path / "a_file").write_text("x")
    return {"two": two, "one": one, "corrupt": corrupt, "cut": tmp_path / "cut.tgz",
            "file": tmp_path / "a_file", "missing": tmp_path / "missing", "out": tmp_path / "out"}


_PAPER = ["paper", "--min-faces-per-person", "3", "--epochs", "1", "--am-steps", "0", "--quiet"]

# (argv with {placeholders}, exit status, text of the one stderr line). Before, each of the
# status-1 cases ended in a traceback (15-32 lines); "one" trained and printed 0.0000;
# --lr inf passed argparse and failed in the optimizer with a traceback.
ERROR_CASES = [
    (_PAPER + ["--data-dir", "{missing}", "--out", "{out}"], 1, "does not exist"),
    (_PAPER + ["--data-dir", "{corrupt}", "--out", "{out}"], 1, "Bo_Chan_0003.jpg"),
    (_PAPER + ["--data-dir", "{one}", "--out", "{out}"], 1, "at least 2 people"),
    (_PAPER + ["--data-dir", "{two}", "--out", "{out}", "--min-faces-per-person", "50"], 1,
     "min_faces_per_person=50"),
    (_PAPER + ["--data-dir", "{cut}", "--out", "{out}"], 1, "truncated"),
    (_PAPER + ["--data-dir", "{file}", "--out", "{out}"], 1, "neither a folder nor a tar archive"),
    (_PAPER + ["--data-dir", "{two}", "--out", "{out}", "--size", "100000"], 1, "pixels per image"),
    (_PAPER + ["--data-dir", "{two}", "--out", "{out}", "--crop", "0,0,300,300"], 1, "lies outside"),
    (_PAPER + ["--data-dir", "{two}", "--out", "{out}", "--size", "8"], 1, "cannot take input"),
    (_PAPER + ["--data-dir", "{two}", "--out", "{file}"], 2, "exists and is not a folder"),
    (["demo", "--out", "{file}"], 2, "exists and is not a folder"),
    (["demo", "--lr", "inf"], 2, "expected a positive finite number, got 'inf'"),
    (["demo", "--lr", "nan"], 2, "expected a positive finite number"),
    (_PAPER + ["--data-dir", "{two}", "--lr", "1e999"], 2, "positive finite"),
    (["demo", "--threads", "0"], 2, "expected a positive integer"),
    (["demo", "--bogus"], 2, "unrecognized arguments: --bogus"),
    (["nosuchcommand"], 2, "invalid choice"),
    (_PAPER, 2, "--data-dir"),
]


@pytest.mark.parametrize("argv, status, text", ERROR_CASES,
                         ids=[" ".join(a[len(_PAPER) if a[:len(_PAPER)] == _PAPER else 0:])[:40] for a, _, _ in ERROR_CASES])
def test_every_error_is_one_line_on_stderr(data, capsys, argv, status, text):
    argv = [a.format(**data) for a in argv]
    try:
        got = cli.main(argv)
    except SystemExit as exc:               # argparse
        got = exc.code
    err = capsys.readouterr().err
    assert got == status, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert text in lines[0] and lines[0].startswith("cconv"), lines


def test_interrupt_and_unexpected_errors_are_one_line(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    def bug(args):
        return {}["missing key"]

    monkeypatch.setattr(cli, "run_demo", interrupted)
    assert cli.main(["demo"]) == 130
    assert capsys.readouterr().err.strip() == "cconv demo: interrupted"
    monkeypatch.setattr(cli, "run_demo", bug)
    assert cli.main(["demo"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["cconv demo: error: KeyError: 'missing key' (run with --debug for the traceback)"]
    with pytest.raises(KeyError):
        cli.main(["demo", "--debug"])


def test_console_error_exit_without_traceback(tmp_path):
    """The real process: exit status 1, one line on stderr."""
    proc = subprocess.run([sys.executable, "-m", "cconv", "paper", "--data-dir", str(tmp_path / "no")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"cconv paper: error: LFW path '{tmp_path / 'no'}' does not exist"]
