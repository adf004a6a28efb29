"""ONNX export of the preprocessing and augmentation layers: the inference-mode graph (the
random augmentations the identity, RandomCrop its central window, Rescaling and an adapted
Normalization as affine maps on the right axis) gives ONNX Runtime's predictions within
1e-5 of cconv's ``predict``."""
import numpy as np
import pytest

import cconv
from cconv import layers as L

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx_util import assert_close, ort_run  # noqa: E402

SHAPE = (9, 7, 3)            # H, W, C all different: a statistic on the wrong axis shows


def _adapted(axis=-1, invert=False, seed=3):
    """A Normalization adapted to data whose features have distinct means and scales."""
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((40, *SHAPE)) * rng.uniform(0.5, 4.0, SHAPE) + rng.uniform(-3, 3, SHAPE)
    layer = L.Normalization(axis=axis, invert=invert)
    layer.adapt(data)
    return layer


# (layers factory, description): each class in several settings
CASES = [
    (lambda: [L.RandomFlip(), L.Conv2D(2, 3)], "flip"),
    (lambda: [L.RandomFlip("horizontal", seed=3)], "flip-alone"),
    (lambda: [L.RandomCrop(5, 4)], "crop-odd-margins"),
    (lambda: [L.RandomCrop(6, 6), L.Conv2D(2, 1)], "crop-even-margin"),
    (lambda: [L.RandomCrop(*SHAPE[:2])], "crop-whole"),
    (lambda: [L.RandomTranslation(0.2, 0.1), L.RandomRotation(0.1), L.RandomZoom(0.2)], "affine"),
    (lambda: [L.RandomContrast(0.5, value_range=(-1, 1))], "contrast"),
    (lambda: [L.Rescaling(1 / 127.5, -1.0)], "rescaling-offset"),
    (lambda: [L.Rescaling(0.25)], "rescaling"),
    (lambda: [_adapted(-1)], "normalization-channels"),
    (lambda: [_adapted(1)], "normalization-rows"),
    (lambda: [_adapted(2)], "normalization-columns"),
    (lambda: [_adapted(None)], "normalization-global"),
    (lambda: [_adapted(-1, invert=True)], "normalization-inverted"),
    (lambda: [L.Normalization(mean=[1.0, -2.0, 0.5], variance=[4.0, 0.25, 1.0]), L.Flatten(),
              L.Dense(3)], "normalization-given"),
    (lambda: [L.Rescaling(1 / 255), L.RandomFlip("horizontal"), L.RandomTranslation(0.1, 0.1),
              L.RandomZoom(0.1), L.RandomCrop(7, 6), _adapted(-1), L.Conv2D(4, 3, activation="relu"),
              L.GlobalAvgPool2D(), L.Dense(2, activation="softmax")], "pipeline"),
]


def _x(n=4, seed=1):
    return np.random.default_rng(seed).uniform(0, 255, (n, *SHAPE)).astype(np.float32)


def _model(make, seed=0):
    layers = make()
    model = cconv.Sequential(layers, input_shape=SHAPE, seed=seed)
    for layer in model.layers:          # every weight non-trivial (Normalization's state kept)
        for role, key, a in layer.weights():
            if role != "state":
                a[...] = np.random.default_rng(seed).standard_normal(a.shape) * 0.1
    return model


def test_every_preprocessing_layer_is_exportable_and_has_a_case():
    from cconv import preprocessing
    covered = {type(l).__name__ for make, _ in CASES for l in make()}
    assert set(preprocessing.LAYERS) <= covered
    assert set(preprocessing.LAYERS) <= set(cconv.onnx.exportable_layers())


@pytest.mark.parametrize("make", [c[0] for c in CASES], ids=[c[1] for c in CASES])
@pytest.mark.parametrize("opset", [17, 20])
def test_export_matches_onnx_runtime(tmp_path, make, opset):
    model = _model(make)
    x = _x()
    path = tmp_path / "m.onnx"
    model.export(path, opset_version=opset)
    ours = model.predict(x)
    (theirs,) = ort_run(path, x)
    assert_close(theirs, ours)


def test_augmentations_leave_no_node_and_crop_is_central(tmp_path):
    """The random layers add no node to the graph; RandomCrop is one Slice whose window is
    the central one (the same as cconv at inference, not a random one)."""
    model = cconv.Sequential([L.RandomFlip(name="flip"), L.RandomRotation(0.2, name="rot"),
                              L.RandomContrast(0.3, name="contrast"), L.RandomCrop(5, 4, name="crop")],
                             input_shape=SHAPE, seed=0)
    path = tmp_path / "m.onnx"
    model.export(path)
    proto = onnx.load(str(path))
    names = [n.name for n in proto.graph.node]
    assert not [n for n in names if n.split("/")[0] in ("flip", "rot", "contrast")], names
    assert [n.op_type for n in proto.graph.node if n.name.startswith("crop")
            and n.op_type != "Transpose"] == ["Slice"]           # (the output's NHWC transpose)
    x = _x()
    (theirs,) = ort_run(path, x)
    np.testing.assert_array_equal(theirs, x[:, 2:7, 1:5])          # (9 - 5) // 2, (7 - 4) // 2


def test_training_mode_differs_but_the_export_is_inference(tmp_path):
    """The augmentations really act in training (so the identity in the graph is a choice,
    not an accident of a layer that does nothing)."""
    model = _model(CASES[-1][0])
    x = _x()
    for layer in model.layers[1:5]:                 # flip, translation, zoom, crop
        y, _ = layer.call(x, training=True)
        assert y.shape != x.shape or not np.array_equal(y, x), type(layer).__name__
    model.export(tmp_path / "m.onnx")
    (theirs,) = ort_run(tmp_path / "m.onnx", x)
    assert_close(theirs, model.predict(x))


def test_unadapted_normalization_is_refused(tmp_path):
    model = cconv.Sequential([L.Normalization()], input_shape=SHAPE, seed=0)
    with pytest.raises(RuntimeError, match="adapt"):
        model.export(tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
