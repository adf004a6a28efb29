"""cconv.viz: every figure through both backends (matplotlib and the Pillow fallback),
feature visualization by optimization and saliency maps."""
import sys

import numpy as np
import pytest

import cconv
from cconv import datasets, layers, models, optim, viz

Image = pytest.importorskip("PIL.Image")

BACKENDS = ["pillow"]
try:
    import matplotlib  # noqa: F401
    BACKENDS.insert(0, "matplotlib")
except ImportError:
    pass


@pytest.fixture(params=BACKENDS)
def backend(request):
    viz.set_backend(request.param)
    yield request.param
    viz.set_backend(None)


def _small_model(seed=0, final_activation="softmax", dtype="float32"):
    return cconv.Sequential([
        layers.Conv2D(4, 3, activation="relu", name="conv1"),
        layers.MaxPool2D(2, name="pool1"),
        layers.Conv2D(6, 3, padding="same", activation="relu", name="conv2"),
        layers.AvgPool2D(2, name="pool2"),
        layers.Flatten(name="flatten"),
        layers.Dense(3, activation=final_activation, name="out"),
    ], input_shape=(14, 14, 3), seed=seed, dtype=dtype)


@pytest.fixture(scope="module")
def digits_model():
    """The digits CNN after a few quick epochs (about a second)."""
    pytest.importorskip("sklearn")
    x, y = datasets.load_digits()
    x_tr, x_te, y_tr, y_te = datasets.train_test_split(x, y, seed=0)
    model = models.digits_cnn(seed=0)
    model.compile(optim.Adam(lr=3e-3), "categorical_crossentropy")
    model.fit(x_tr, y_tr, epochs=4, batch_size=32, verbose=0)
    return model, x_te, y_te


def _png(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB")).astype(np.int64)


def _assert_not_constant(arr, min_colors=20):
    assert arr.std() > 10
    assert len(np.unique(arr.reshape(-1, 3), axis=0)) >= min_colors


# ------------------------------------------------------------------------- backends
def test_backend_selection(monkeypatch):
    viz.set_backend("pillow")
    try:
        assert viz.get_backend() == "pillow"
    finally:
        viz.set_backend(None)
    with pytest.raises(ValueError, match="backend"):
        viz.set_backend("svg")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert viz.get_backend() == "pillow"            # the automatic fallback
    viz.set_backend("matplotlib")
    try:
        with pytest.raises(ImportError, match=r'pip install "cconv\[viz\]"'):
            viz.get_backend()
    finally:
        viz.set_backend(None)


def test_fallback_writes_png_without_matplotlib(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    path = viz.plot_history({"loss": [2.0, 1.0, 0.5], "accuracy": [0.3, 0.6, 0.8]}, tmp_path / "h.png")
    arr = _png(path)
    assert arr.shape == (400, 1000, 3)
    _assert_not_constant(arr, min_colors=5)


def test_no_backend_at_all(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r'pip install "cconv\[viz\]"'):
        viz.plot_history({"loss": [1.0, 0.5]}, tmp_path / "h.png")
    assert not (tmp_path / "h.png").exists()


# ------------------------------------------------------------------------- history
def test_plot_history_dict_and_history(backend, tmp_path, digits_model):
    hist = {"loss": [2.0, 1.2, 0.7, 0.5], "accuracy": [0.3, 0.6, 0.8, 0.85],
            "val_loss": [2.1, 1.4, 1.0, 0.9], "val_accuracy": [0.25, 0.5, 0.7, 0.72]}
    arr = _png(viz.plot_history(hist, tmp_path / "a.png"))
    assert arr.shape == (400, 1000, 3)
    _assert_not_constant(arr, min_colors=5)
    # the four series are drawn in two colours (train, validation)
    blue = np.all(np.abs(arr - [31, 119, 180]) < 40, axis=-1)
    orange = np.all(np.abs(arr - [255, 127, 14]) < 40, axis=-1)
    assert blue.sum() > 200 and orange.sum() > 200
    model, x, y = digits_model
    clone = models.digits_cnn(seed=1)
    clone.compile("adam", "categorical_crossentropy")
    history = clone.fit(x[:64], y[:64], epochs=2, batch_size=32, validation_data=(x[64:128], y[64:128]),
                        verbose=0)
    arr = _png(viz.plot_history(history, tmp_path / "b.png", size=(700, 300)))
    assert arr.shape == (300, 700, 3)


def test_plot_history_bad_input(tmp_path):
    with pytest.raises(TypeError, match="History or a dict"):
        viz.plot_history([1, 2, 3], tmp_path / "x.png")
    with pytest.raises(ValueError, match="no 'accuracy' or 'loss'"):
        viz.plot_history({"lr": [0.1]}, tmp_path / "x.png")


# ------------------------------------------------------------------------- feature maps
def test_plot_feature_maps_one_png_per_layer(backend, tmp_path):
    model = _small_model()
    image = np.random.default_rng(0).random((14, 14, 3)).astype(np.float32)
    paths = viz.plot_feature_maps(model, image, tmp_path / "maps")
    assert [p.name for p in paths] == ["input.png", "01_conv1.png", "02_pool1.png", "03_conv2.png",
                                       "04_pool2.png"]
    acts = model.activations(image[None])
    for p, name in zip(paths[1:], ["conv1", "pool1", "conv2", "pool2"]):
        arr = _png(p)
        h, w, c = acts[name].shape[1:]
        factor = -(-64 // max(h, w))              # maps are enlarged to >= 64 px
        cols = {4: 2, 6: 3}[c]
        rows = c // cols
        assert arr.shape[1] >= cols * w * factor and arr.shape[0] >= rows * h * factor + 28
        _assert_not_constant(arr)
    inp = _png(paths[0])
    assert inp.shape[0] >= 14 * 14 and inp.shape[1] >= 14 * 14      # the 14x14 input enlarged
    _assert_not_constant(inp)
    # both backends lay the figure out identically: the same size
    other = "pillow" if backend == "matplotlib" else BACKENDS[0]
    viz.set_backend(other)
    again = viz.plot_feature_maps(model, image, tmp_path / "maps2")
    for p, q in zip(paths, again):
        assert _png(p).shape == _png(q).shape


def test_plot_feature_maps_single_file_and_layer_choice(backend, tmp_path):
    model = _small_model()
    image = np.random.default_rng(1).random((1, 14, 14, 3))
    paths = viz.plot_feature_maps(model, image, tmp_path / "all.png", layers=["conv2", 0])
    assert len(paths) == 1 and paths[0].name == "all.png"
    _assert_not_constant(_png(paths[0]))
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        viz.plot_feature_maps(model, image, tmp_path / "x.png", layers=["nope"])
    with pytest.raises(ValueError, match="feature maps need"):
        viz.plot_feature_maps(model, image, tmp_path / "x.png", layers=["out"])
    with pytest.raises(ValueError, match=r"\(14, 14, 3\)"):
        viz.plot_feature_maps(model, np.zeros((10, 10, 3)), tmp_path / "x.png")


def test_channels_are_normalised_separately():
    a = np.stack([np.arange(16.0).reshape(4, 4), 1000 + 0.001 * np.arange(16.0).reshape(4, 4),
                  np.full((4, 4), 5.0)], axis=-1)
    tiles = viz._channel_tiles(a)
    np.testing.assert_allclose(tiles[0], tiles[1], atol=1e-9)     # same pattern, any scale
    assert tiles[0].min() == 0 and tiles[0].max() == 1
    assert (tiles[2] == 0).all()                                   # a constant channel


# ------------------------------------------------------------------------- filters
def test_plot_filters(backend, tmp_path):
    model = _small_model()
    arr = _png(viz.plot_filters(model.get_layer("conv1"), tmp_path / "f1.png"))
    # 4 RGB 3x3 kernels enlarged to 48 px in a 2x2 grid
    assert arr.shape[1] >= 2 * 48 and arr.shape[0] >= 2 * 48
    _assert_not_constant(arr)
    arr = _png(viz.plot_filters(model.get_layer("conv2"), tmp_path / "f2.png"))
    assert arr.shape[1] >= 4 * 48 and arr.shape[0] >= 6 * 48    # 6 filters x 4 inputs
    arr = _png(viz.plot_filters(np.random.default_rng(0).normal(size=(5, 5, 1, 8)), tmp_path / "f3.png"))
    _assert_not_constant(arr)
    with pytest.raises(ValueError, match="KH, KW, C_in, C_out"):
        viz.plot_filters(np.zeros((3, 3, 3)), tmp_path / "f4.png")
    with pytest.raises(ValueError, match="Conv2D"):
        viz.plot_filters(model.get_layer("pool1"), tmp_path / "f5.png")


# ------------------------------------------------------------------------- activation maximization
def _snapshot(model):
    return ([a.copy() for a in model.get_weights()],
            [g.copy() for l in model.layers for g in l.grads.values()])


def _assert_unchanged(model, snap):
    weights, grads = snap
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))
    assert all(np.array_equal(a, b) for a, b in zip(grads, [g for l in model.layers for g in l.grads.values()]))


# light regularisation: the default jitter (2 px) and blur are meant for larger images
TINY = {"steps": 60, "jitter": 1, "blur_every": 0}


@pytest.mark.parametrize("layer, channel", [("conv2", 3), ("conv2", 28), ("pool2", 5), ("conv1", 2)])
def test_activation_maximization_raises_the_channel(digits_model, layer, channel):
    model, x, _ = digits_model
    snap = _snapshot(model)
    img = viz.activation_maximization(model, layer, channel, seed=0, **TINY)
    _assert_unchanged(model, snap)
    assert img.shape == (8, 8, 1) and img.dtype == np.float32
    assert img.min() >= 0 and img.max() <= 1
    noise = np.random.default_rng(123).random((32, 8, 8, 1)).astype(np.float32)
    on_noise = model.activations(noise)[layer][..., channel].mean(axis=(1, 2))
    on_image = model.activations(img[None])[layer][0, ..., channel].mean()
    assert on_image > 1.5 * on_noise.max()
    again = viz.activation_maximization(model, layer, channel, seed=0, **TINY)
    np.testing.assert_array_equal(img, again)                     # seeded
    if img.min() < 1:                     # (conv1 channel 2 is maximised by a white image)
        other = viz.activation_maximization(model, layer, channel, seed=1, **TINY)
        assert not np.array_equal(img, other)


def test_activation_maximization_wakes_a_silent_channel(digits_model):
    model, _, _ = digits_model
    noise = np.random.default_rng(5).random((64, 8, 8, 1)).astype(np.float32)
    acts = model.activations(noise)["conv2"].max(axis=(0, 1, 2))
    silent = np.flatnonzero(acts == 0)
    if silent.size == 0:
        pytest.skip("no conv2 channel is silent on noise for this model")
    woke = 0
    for ch in silent:
        stuck = viz.activation_maximization(model, "conv2", int(ch), pre_activation=False, **TINY)
        assert model.activations(stuck[None])["conv2"][0, ..., ch].max() == 0   # zero gradient
        img = viz.activation_maximization(model, "conv2", int(ch), **TINY)
        woke += model.activations(img[None])["conv2"][0, ..., ch].mean() > 0.02
    assert woke >= 1


def test_activation_maximization_of_a_class_logit(digits_model):
    model, _, _ = digits_model
    for cls in (0, 4, 7):
        img = viz.activation_maximization(model, "output", cls, **TINY)
        assert model.predict(img[None]).argmax() == cls
        assert model.predict(img[None])[0, cls] > 0.9


def test_activation_maximization_bad_arguments(digits_model):
    model, _, _ = digits_model
    with pytest.raises(ValueError, match="out of range"):
        viz.activation_maximization(model, "conv1", 16, steps=1)
    with pytest.raises(ValueError, match="no layer named"):
        viz.activation_maximization(model, "conv9", 0, steps=1)
    with pytest.raises(ValueError, match="steps"):
        viz.activation_maximization(model, "conv1", 0, steps=-1)
    with pytest.raises(ValueError, match="lr"):
        viz.activation_maximization(model, "conv1", 0, lr=0)


def test_activation_maximization_grid(backend, tmp_path, digits_model):
    model, _, _ = digits_model
    arr = _png(viz.activation_maximization_grid(model, "conv1", 4, tmp_path / "am.png", steps=10))
    assert arr.shape[1] >= 2 * 96 and arr.shape[0] >= 2 * 96     # four 8x8 images enlarged to 96 px
    _assert_not_constant(arr)


# ------------------------------------------------------------------------- saliency
def test_saliency_is_the_logit_gradient():
    """Saliency uses the pre-softmax score: the same as for a twin with linear outputs."""
    soft = _small_model(seed=4, dtype="float64")
    lin = _small_model(seed=4, final_activation=None, dtype="float64")
    lin.set_weights(soft.get_weights())
    x = np.random.default_rng(2).random((14, 14, 3))
    for c in range(3):
        sal = viz.saliency_map(soft, x, c)
        g = lin.input_gradient(x[None], output_index=c)[0]
        np.testing.assert_allclose(sal, np.abs(g).max(axis=-1), rtol=1e-10, atol=1e-14)
        assert sal.shape == (14, 14) and (sal >= 0).all() and sal.max() > 0
    # and it matches central finite differences of the logit
    eps = 1e-6
    for (i, j, ch) in [(3, 4, 0), (7, 7, 2), (10, 2, 1)]:
        xp, xm = x.copy(), x.copy()
        xp[i, j, ch] += eps
        xm[i, j, ch] -= eps
        fd = (lin.predict(xp[None])[0, 1] - lin.predict(xm[None])[0, 1]) / (2 * eps)
        g = lin.input_gradient(x[None], output_index=1)[0, i, j, ch]
        assert fd == pytest.approx(g, rel=1e-5, abs=1e-9)


def test_saliency_default_class_and_state(digits_model):
    model, x, _ = digits_model
    snap = _snapshot(model)
    pred = int(model.predict(x[:1]).argmax())
    np.testing.assert_array_equal(viz.saliency_map(model, x[0]), viz.saliency_map(model, x[0], pred))
    _assert_unchanged(model, snap)
    with pytest.raises(ValueError, match="out of range"):
        viz.saliency_map(model, x[0], 10)


def test_plot_saliency(backend, tmp_path, digits_model):
    model, x, _ = digits_model
    arr = _png(viz.plot_saliency(model, x[0], tmp_path / "s.png", class_names=[str(i) for i in range(10)]))
    assert arr.shape[1] >= 3 * 192 and arr.shape[0] >= 192
    _assert_not_constant(arr)


def test_activation_maximization_batch_matches_single(digits_model):
    model, _, _ = digits_model
    channels = [3, 28, 5]
    batch = viz._activation_maximization_batch(model, 2, channels, 30, 0.05, 1, 0, 0.5, 1e-3, 7, 0.1, "auto")
    for img, ch in zip(batch, channels):
        single = viz.activation_maximization(model, "conv2", ch, steps=30, jitter=1, blur_every=0, seed=7)
        np.testing.assert_allclose(img, single, atol=1e-3)


def test_plot_confusion_matrix(backend, tmp_path):
    from cconv import metrics
    y = np.array([0, 0, 1, 1, 2, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0, 2])
    cm = metrics.confusion_matrix(y, pred)
    path = viz.plot_confusion_matrix(cm, tmp_path / "cm.png", class_names=["cat", "dog", "a very long name"],
                                     title="confusion")
    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB"))
    assert a.shape[0] > 3 * 30 and a.shape[1] > 3 * 30
    # the cells are the heat map: the brightest cell (2 samples) is the colour map's top
    assert (a.reshape(-1, 3) == [253, 231, 37]).all(axis=1).any()
    p2 = viz.plot_confusion_matrix(cm, tmp_path / "n.png", normalize="true")
    assert p2.exists()
    with pytest.raises(ValueError, match="square"):
        viz.plot_confusion_matrix(np.zeros((2, 3)), tmp_path / "x.png")
    with pytest.raises(ValueError, match="class_names"):
        viz.plot_confusion_matrix(cm, tmp_path / "x.png", class_names=["a"])
    with pytest.raises(ValueError, match="normalize"):
        viz.plot_confusion_matrix(cm, tmp_path / "x.png", normalize="rows")
