"""Files saved by cconv 0.1.0 (before functional models; tests/data/make_legacy_files.py wrote
them) load, predict, keep training and resume exactly as that version did."""
from pathlib import Path

import numpy as np
import pytest

import cconv
from cconv import optim
from cconv.layers import AvgPool2D, BatchNorm2D, Conv2D, Dense, Dropout, Flatten, MaxPool2D

DATA = Path(__file__).resolve().parent / "data"
COMPILED = ["legacy_sequential", "legacy_softmax_layer_f64", "legacy_logits", "legacy_sigmoid"]


@pytest.fixture(scope="module")
def expected():
    with np.load(DATA / "legacy_expected.npz") as z:
        return {k: z[k] for k in z.files}


def tol(dtype):
    return dict(rtol=1e-12, atol=1e-13) if dtype == np.float64 else dict(rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("name", COMPILED + ["legacy_uncompiled"])
def test_old_file_loads_and_predicts_as_before(name, expected, tmp_path):
    model = cconv.load_model(DATA / f"{name}.npz")
    assert isinstance(model, cconv.Sequential) and model.built
    p = model.predict(expected["x"])
    np.testing.assert_allclose(p, expected[name], **tol(p.dtype))
    assert model.compiled == (name != "legacy_uncompiled")
    # saved again by this version and loaded back: the same model
    model.save(tmp_path / "again.npz")
    again = cconv.load_model(tmp_path / "again.npz")
    np.testing.assert_array_equal(again.predict(expected["x"]), p)


@pytest.mark.parametrize("name", COMPILED)
def test_old_file_keeps_training_as_before(name, expected, restore_threads):
    """The optimizer state and the loss (with its old from-logits convention) come back:
    one more step gives the loss and the weights the old version gave."""
    cconv.set_num_threads(1)
    model = cconv.load_model(DATA / f"{name}.npz")
    x, y = expected["x"], expected["y"]
    if name == "legacy_sigmoid":
        y = (y > 0).astype(np.float32)
    logs = model.train_on_batch(x, y)
    assert logs["loss"] == pytest.approx(float(expected[f"{name}_next_loss"]), rel=1e-5)
    if not np.isnan(expected[f"{name}_next_accuracy"]):
        assert logs["accuracy"] == pytest.approx(float(expected[f"{name}_next_accuracy"]))
    weights = model.get_weights()
    for i, w in enumerate(weights):
        np.testing.assert_allclose(w, expected[f"{name}_next_{i}"], **tol(w.dtype))
    assert not any(f"{name}_next_{len(weights)}" == k for k in expected)


def test_old_checkpoint_resumes_to_the_uninterrupted_result(expected, restore_threads):
    x, y = expected["x"], expected["y"]
    cconv.set_num_threads(1)
    model = cconv.Sequential([
        Conv2D(4, 3, padding="same", activation="relu"), BatchNorm2D(), MaxPool2D(2),
        Conv2D(6, 3, padding="valid", activation="tanh"), AvgPool2D(2), Flatten(),
        Dense(8, activation="relu"), Dropout(0.3), Dense(3, activation="softmax"),
    ], input_shape=(8, 8, 2), seed=7)
    model.compile(optim.Adam(lr=1e-2), "categorical_crossentropy")
    h = model.fit(x, y, epochs=4, batch_size=8, validation_split=0.25, verbose=0,
                  resume=DATA / "legacy_checkpoint.npz")
    assert h.epoch == [0, 1, 2, 3]
    np.testing.assert_allclose(h.history["val_loss"], expected["full_val_loss"], rtol=1e-5)
    for i, w in enumerate(model.get_weights()):
        np.testing.assert_allclose(w, expected[f"full_weight_{i}"], **tol(w.dtype))
