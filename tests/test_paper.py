"""``cconv paper``: the whole protocol on a tiny synthetic LFW, and a short smoke run
on the real data when it is present."""
import json
import os
import statistics
from pathlib import Path

import numpy as np
import pytest

import cconv
from cconv import cli, paper

Image = pytest.importorskip("PIL.Image")

LFW = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw-deepfunneled"


def _synthetic_lfw(root, people=("Ann_Lee", "Bo_Chan", "Cy_Diaz"), per_person=8):
    """250x250 JPEGs in the LFW layout; each person a different colour and stripe pattern."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:250, 0:250]
    for p, person in enumerate(people):
        (root / person).mkdir(parents=True)
        base = np.zeros((250, 250, 3))
        base[..., p] = 0.7
        base[..., :] += 0.3 * (((xx if p % 2 else yy) // (10 + 8 * p)) % 2)[..., None]
        for i in range(per_person):
            img = np.clip(base + 0.05 * rng.standard_normal(base.shape), 0, 1)
            Image.fromarray((img * 255).astype(np.uint8)).save(root / person / f"{person}_{i + 1:04d}.jpg")
    return root


def test_paper_command_on_a_synthetic_lfw(tmp_path, capsys):
    data = _synthetic_lfw(tmp_path / "lfw")
    out = tmp_path / "out"
    status = cli.main(["paper", "--data-dir", str(data), "--epochs", "2", "--batch-size", "8",
                       "--seeds", "0,1", "--out", str(out), "--min-faces-per-person", "5",
                       "--am-steps", "2", "--am-channels", "3", "--quiet"])
    assert status == 0
    doc = json.loads((out / "results.json").read_text())
    proto = doc["protocol"]
    assert (proto["n_images"], proto["n_classes"], proto["epochs"], proto["batch_size"]) == (24, 3, 2, 8)
    assert proto["seeds"] == [0, 1] and proto["crop"] == list(cconv.datasets.LFW_DEFAULT_CROP)
    assert doc["class_names"] == ["Ann_Lee", "Bo_Chan", "Cy_Diaz"]
    runs = doc["runs"]
    assert [r["seed"] for r in runs] == [0, 1]
    assert all(r["n_train"] == 18 and r["n_test"] == 6 for r in runs)
    assert all(len(r["history"]["loss"]) == 2 and len(r["history"]["val_accuracy"]) == 2 for r in runs)
    accs = [r["test_accuracy"] for r in runs]
    s = doc["summary"]
    assert s["n_seeds"] == 2
    assert s["mean"] == pytest.approx(statistics.fmean(accs))
    assert s["std"] == pytest.approx(statistics.stdev(accs))
    assert (s["min"], s["max"]) == (min(accs), max(accs))
    assert s["median"] == pytest.approx(statistics.median(accs))
    assert doc["wall_time_s"] > 0 and doc["paper_accuracy"] == 0.8347
    assert doc["cconv_version"] == cconv.__version__
    src = os.path.dirname(os.path.abspath(cconv.__file__))
    if os.path.isdir(os.path.join(src, "..", "..", ".git")) or os.path.isfile(
            os.path.join(src, "..", "..", ".git")):          # a checkout (a worktree: a file)
        assert len(doc["git_commit"]) == 40 and isinstance(doc["git_dirty"], bool)
    else:                                                    # an installed wheel
        assert doc["git_commit"] is None and doc["git_dirty"] is None

    # the saved model reproduces the reported test accuracy on the same split
    model = cconv.load_model(out / "model_seed1.npz")
    x, y, _ = cconv.datasets.load_lfw(data, min_faces_per_person=5)
    _, x_te, _, y_te = cconv.datasets.train_test_split(x, y, seed=1)
    assert model.evaluate(x_te, y_te)["accuracy"] == pytest.approx(accs[1])

    names = ["input.png", "01_conv1.png", "02_pool1.png", "03_conv2.png", "04_pool2.png", "05_conv3.png",
             "06_pool3.png"]
    assert doc["figures"]["feature_maps"] == [f"feature_maps/{n}" for n in names]
    expected = ["history_seed0.png", "history_seed1.png", "filters_conv1.png", "saliency.png", "fgsm.png",
                "kernels.png", "activation_maximization_conv1.png", "activation_maximization_conv2.png",
                "activation_maximization_conv3.png"] + [f"feature_maps/{n}" for n in names]
    for name in expected:
        with Image.open(out / name) as im:
            arr = np.asarray(im.convert("RGB")).astype(int)
        assert arr.std() > 5, name                   # not blank
    assert [row["eps_255"] for row in doc["fgsm"]] == pytest.approx([0, 1, 2, 4, 8])
    text = capsys.readouterr().out
    assert "test accuracy over 2 seed(s)" in text and "eps*255" in text


@pytest.mark.parametrize("argv", [
    ["--crop", "1,2,3"], ["--crop", "10,10,5,20"], ["--seeds", "0,0"], ["--seeds", "a"],
    ["--epochs", "-1"], ["--batch-size", "0"],
])
def test_paper_bad_arguments(argv, tmp_path):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["paper", "--data-dir", str(tmp_path)] + argv)


def test_paper_crop_forms(tmp_path):
    parse = cli.build_parser().parse_args
    assert parse(["paper", "--data-dir", "d"]).crop == cconv.datasets.LFW_DEFAULT_CROP
    assert parse(["paper", "--data-dir", "d", "--crop", "none"]).crop is None
    assert parse(["paper", "--data-dir", "d", "--crop", "0,0,250,250"]).crop == (0, 0, 250, 250)
    args = parse(["paper", "--data-dir", "d"])
    assert (args.epochs, args.batch_size, args.lr, args.seed, args.seeds) == (100, 128, 1e-3, 0, None)
    assert args.func is paper.run


def test_paper_missing_data_dir(tmp_path, capsys):
    argv = ["paper", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]
    assert cli.main(argv) == 1
    assert "nowhere" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="nowhere"):     # --debug: the exception itself
        cli.main(["--debug"] + argv)


@pytest.mark.skipif(not LFW.is_dir(), reason=f"LFW not found at {LFW}")
def test_lfw_smoke(tmp_path):
    """A few epochs of the paper's network on a small subset of the real LFW: the five
    people with >= 100 images, 40 images each, at 32x32 to keep it short."""
    out = tmp_path / "out"
    status = cli.main(["paper", "--data-dir", str(LFW), "--min-faces-per-person", "100",
                       "--limit-per-class", "40", "--size", "32", "--epochs", "30", "--batch-size", "16",
                       "--am-steps", "0", "--out", str(out), "--quiet"])
    assert status == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["class_names"] == ["Colin_Powell", "Donald_Rumsfeld", "George_W_Bush", "Gerhard_Schroeder",
                                  "Tony_Blair"]
    run = doc["runs"][0]
    assert (run["n_train"], run["n_test"]) == (150, 50)
    loss = run["history"]["loss"]
    assert loss[-1] < 0.7 * loss[0]                        # it learns
    assert run["test_accuracy"] >= 0.4                     # chance is 0.2


def test_paper_with_augmentation_records_it(tmp_path):
    data = _synthetic_lfw(tmp_path / "lfw", per_person=6)
    out = tmp_path / "out"
    status = cli.main(["paper", "--data-dir", str(data), "--epochs", "3", "--batch-size", "6",
                       "--seeds", "2", "--out", str(out), "--min-faces-per-person", "5", "--crop", "none",
                       "--size", "32", "--am-steps", "0", "--augment", "--augment-zoom", "0.15", "--quiet"])
    assert status == 0
    doc = json.loads((out / "results.json").read_text())
    aug = doc["protocol"]["augmentation"]
    assert [a["class_name"] for a in aug] == ["RandomFlip", "RandomTranslation", "RandomZoom"]
    assert aug[0]["config"]["mode"] == "horizontal"
    assert aug[1]["config"]["height_factor"] == aug[1]["config"]["width_factor"] == 0.1
    assert aug[2]["config"]["height_factor"] == 0.15
    assert doc["protocol"]["crop"] is None
    run = doc["runs"][0]
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(run["history"])
    assert all(len(v) == 3 for v in run["history"].values())
    # the saved model holds the augmentation layers, which are the identity at inference
    model = cconv.load_model(out / "model_seed2.npz")
    assert [type(l).__name__ for l in model.layers[:3]] == ["RandomFlip", "RandomTranslation", "RandomZoom"]
    x, y, _ = cconv.datasets.load_lfw(data, min_faces_per_person=5, crop=None, size=(32, 32))
    _, x_te, _, y_te = cconv.datasets.train_test_split(x, y, seed=2)
    assert model.evaluate(x_te, y_te)["accuracy"] == pytest.approx(run["test_accuracy"])
    # the same seed again: the same result, augmentation included
    again = tmp_path / "again"
    cli.main(["paper", "--data-dir", str(data), "--epochs", "3", "--batch-size", "6", "--seeds", "2",
              "--out", str(again), "--min-faces-per-person", "5", "--crop", "none", "--size", "32",
              "--am-steps", "0", "--augment", "--augment-zoom", "0.15", "--quiet"])
    assert json.loads((again / "results.json").read_text())["runs"][0]["history"] == run["history"]
    plain = cli.build_parser().parse_args(["paper", "--data-dir", "d"])
    assert plain.augment is False
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["paper", "--data-dir", "d", "--augment-shift", "2"])
