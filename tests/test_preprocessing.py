"""Preprocessing and augmentation layers: identity at inference, seeded randomness, exact
transforms (against scipy.ndimage as an independent resampler), exact input gradients (the
adjoint identity), Normalization.adapt, save/load and checkpoint resume."""
import numpy as np
import pytest

import cconv
from conftest import assert_resume_is_exact
from cconv import data, preprocessing
from cconv.layers import (Conv2D, Dense, Flatten, Normalization, RandomContrast, RandomCrop, RandomFlip,
                          RandomRotation, RandomTranslation, RandomZoom, Rescaling)

ndimage = pytest.importorskip("scipy.ndimage")

RNG = np.random.default_rng(0)
X = RNG.random((6, 9, 8, 3))


def augmenters(seed=1):
    return [RandomFlip(seed=seed), RandomCrop(7, 5, seed=seed), RandomTranslation(0.2, 0.3, seed=seed),
            RandomRotation(0.05, seed=seed), RandomZoom(0.3, seed=seed),
            RandomContrast(0.4, value_range=(0, 1), seed=seed)]


def ids(layers):
    return [type(l).__name__ for l in layers]


@pytest.mark.parametrize("layer", augmenters(), ids=ids(augmenters()))
def test_identity_at_inference_random_in_training(layer):
    x = X.astype(np.float32)
    y = layer.forward(x, training=False)
    if isinstance(layer, RandomCrop):
        np.testing.assert_array_equal(y, x[:, 1:8, 1:6])           # the central window
        assert not layer.inference_identity
    else:
        np.testing.assert_array_equal(y, x)
        assert layer.inference_identity
    a = layer.forward(x, training=True)
    b = layer.forward(x, training=True)
    assert a.shape == y.shape and a.dtype == x.dtype
    assert not np.array_equal(a, b)                                # a new draw every batch


@pytest.mark.parametrize("make", [lambda s: RandomFlip(seed=s), lambda s: RandomCrop(6, 6, seed=s),
                                  lambda s: RandomTranslation(0.2, 0.2, seed=s),
                                  lambda s: RandomRotation(0.1, seed=s), lambda s: RandomZoom(0.2, seed=s),
                                  lambda s: RandomContrast(0.5, (0, 1), seed=s)])
def test_seeded(make):
    x = X.astype(np.float32)
    np.testing.assert_array_equal(make(3).forward(x, training=True), make(3).forward(x, training=True))
    assert not np.array_equal(make(3).forward(x, training=True), make(4).forward(x, training=True))


def test_model_seed_makes_augmentation_reproducible():
    def model(seed):
        return cconv.Sequential([RandomFlip(), RandomTranslation(0.2, 0.2), RandomZoom(0.2), Flatten()],
                                input_shape=(9, 8, 3), seed=seed)

    x = X.astype(np.float32)
    a, b, c = model(5), model(5), model(6)
    assert np.array_equal(a.forward(x, training=True), b.forward(x, training=True))
    assert not np.array_equal(a.forward(x, training=True), c.forward(x, training=True))


# --------------------------------------------------------------------------- exact transforms
def test_flip_axes():
    x = X
    for mode, flips in (("horizontal", [(2,)]), ("vertical", [(1,)]),
                        ("horizontal_and_vertical", [(2,), (1,), (1, 2)])):
        layer = RandomFlip(mode, seed=0)
        seen = set()
        for _ in range(10):
            y = layer.forward(x, training=True)
            for i in range(len(x)):
                matches = [axes for axes in [()] + flips if np.array_equal(y[i], np.flip(x[i], [a - 1 for a in axes]))]
                assert matches, (mode, i)
                seen.add(matches[0])
        assert seen == {()} | set(flips), (mode, seen)


def test_crop_windows():
    layer = RandomCrop(4, 3, seed=2)
    x = np.arange(2 * 9 * 8).reshape(2, 9, 8, 1).astype(np.float64)
    tops = set()
    for _ in range(20):
        y = layer.forward(x, training=True)
        for i in range(2):
            t, l = divmod(int(y[i, 0, 0, 0] - x[i, 0, 0, 0]), 8)
            np.testing.assert_array_equal(y[i], x[i, t:t + 4, l:l + 3])
            tops.add(t)
    assert tops == set(range(6))
    assert layer.inference_box((9, 8)) == (2, 2, 4, 3)
    with pytest.raises(ValueError, match="cannot crop 10x3"):
        cconv.Sequential([RandomCrop(10, 3)], input_shape=(9, 8, 1))


_SCIPY_MODE = {"reflect": "reflect", "mirror": "mirror", "wrap": "grid-wrap", "nearest": "nearest",
               "constant": "grid-constant"}


def scipy_resample(x, src_y, src_x, mode, order, cval):
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        for c in range(x.shape[3]):
            out[i, :, :, c] = ndimage.map_coordinates(x[i, :, :, c], [src_y[i], src_x[i]], order=order,
                                                      mode=_SCIPY_MODE[mode], cval=cval, prefilter=False)
    return out


@pytest.mark.parametrize("mode", preprocessing._FILL_MODES)
@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
def test_translation_zoom_rotation_match_scipy(mode, interpolation):
    """Each layer with a pinned parameter (a range of one value) against scipy's resampler
    on the map the layer documents."""
    x = X
    H, W = x.shape[1:3]
    order = 1 if interpolation == "bilinear" else 0
    yy, xx = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    yy, xx = np.broadcast_to(yy, x.shape[:3]), np.broadcast_to(xx, x.shape[:3])
    kw = dict(fill_mode=mode, interpolation=interpolation, fill_value=0.25, seed=0)
    cy, cx = (H - 1) / 2, (W - 1) / 2
    # translation by 0.37 of the height down and 0.29 of the width left
    t = RandomTranslation((0.37, 0.37), (-0.29, -0.29), **kw)
    ref = scipy_resample(x, yy - 0.37 * H, xx + 0.29 * W, mode, order, 0.25)
    np.testing.assert_allclose(t.forward(x, training=True), ref, atol=1e-12)
    # zoom: out by 1.3 vertically, in by 0.8 horizontally, about the centre
    z = RandomZoom((0.3, 0.3), (-0.2, -0.2), **kw)
    ref = scipy_resample(x, 1.3 * (yy - cy) + cy, 0.8 * (xx - cx) + cx, mode, order, 0.25)
    np.testing.assert_allclose(z.forward(x, training=True), ref, atol=1e-12)
    # rotation by 0.03 of a turn: input = R (output - centre) + centre
    th = 0.03 * 2 * np.pi
    r = RandomRotation((0.03, 0.03), **kw)
    src_x = np.cos(th) * (xx - cx) - np.sin(th) * (yy - cy) + cx
    src_y = np.sin(th) * (xx - cx) + np.cos(th) * (yy - cy) + cy
    ref = scipy_resample(x, src_y, src_x, mode, order, 0.25)
    np.testing.assert_allclose(r.forward(x, training=True), ref, atol=1e-12)


def test_conventions_shift_down_right_rotate_counter_clockwise():
    x = RNG.random((2, 8, 8, 1))
    down = RandomTranslation((0.25, 0.25), (0.0, 0.0), fill_mode="constant").forward(x, training=True)
    np.testing.assert_allclose(down[:, 2:], x[:, :-2], atol=1e-12)
    np.testing.assert_allclose(down[:, :2], 0, atol=1e-12)
    right = RandomTranslation((0.0, 0.0), (0.125, 0.125), fill_mode="reflect").forward(x, training=True)
    np.testing.assert_allclose(right[:, :, 1:], x[:, :, :-1], atol=1e-12)
    np.testing.assert_allclose(right[:, :, 0], x[:, :, 0], atol=1e-12)     # d c b a | a b c d
    quarter = RandomRotation((0.25, 0.25)).forward(x, training=True)
    np.testing.assert_allclose(quarter, np.rot90(x, axes=(1, 2)), atol=1e-9)
    np.testing.assert_array_equal(RandomZoom(0.0).forward(x, training=True), x)


def test_contrast_scales_about_the_channel_means():
    x = RNG.random((5, 6, 7, 3))
    layer = RandomContrast(0.4, value_range=(-10, 10), seed=1)
    y = layer.forward(x, training=True)
    m = x.mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(y.mean(axis=(1, 2), keepdims=True), m, atol=1e-12)
    c = (y - m) / (x - m)
    assert np.allclose(c, c[:, :1, :1, :1]) and np.all((c > 0.6 - 1e-9) & (c < 1.4 + 1e-9))
    assert len(np.unique(np.round(c[:, 0, 0, 0], 9))) == 5                 # one factor per image
    clipped = RandomContrast(1.0, value_range=(0.2, 0.8), seed=1).forward(x, training=True)
    assert clipped.min() >= 0.2 and clipped.max() <= 0.8


# --------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("layer", augmenters(seed=7) + [
    RandomTranslation(0.4, 0.4, fill_mode="constant", fill_value=0.5, seed=3),
    RandomRotation(0.2, fill_mode="wrap", interpolation="nearest", seed=3),
    RandomZoom((-0.4, 0.6), fill_mode="mirror", seed=3),
    RandomContrast(1.0, value_range=(0.3, 0.7), seed=3)], ids=ids(augmenters()) + ["const", "wrap", "mirror", "clip"])
@pytest.mark.parametrize("training", [True, False])
def test_input_gradient_is_the_adjoint(layer, training):
    """<J dx, g> = <dx, J^T g> with J the layer's Jacobian for the transform it drew
    (linear maps: J dx = f(x + dx) - f(x) up to the clip of the contrast)."""
    x = RNG.random((4, 9, 8, 3))
    layer.forward(x)                                   # built: the generator exists
    state = layer.get_rng_state()
    y = layer.forward(x, training=training, cache=True)
    g = RNG.normal(size=y.shape)
    dx = layer.backward(g)
    assert dx.shape == x.shape
    for _ in range(3):
        v = RNG.normal(size=x.shape) * 1e-6
        layer.set_rng_state(state)                     # the same draw on a perturbed input
        jv = layer.forward(x + v, training=training) - y
        np.testing.assert_allclose(np.vdot(jv, g), np.vdot(v, dx), rtol=1e-6, atol=1e-15)


@pytest.mark.parametrize("layer", augmenters(seed=4) + [Rescaling(2.5, -1.0),
                                                        Normalization(mean=[0.5, 1.0, 2.0], variance=[4.0, 0.25, 1.0])],
                         ids=ids(augmenters()) + ["Rescaling", "Normalization"])
def test_gradcheck(layer):
    x = RNG.random((3, 9, 8, 3))
    assert cconv.gradcheck(layer, x).ok


def test_rescaling_and_normalization_values():
    x = RNG.random((3, 4, 5, 2))
    np.testing.assert_allclose(Rescaling(2.5, -1.0).forward(x), x * 2.5 - 1.0)
    norm = Normalization(mean=[0.5, 1.0], variance=[4.0, 0.25])
    y = norm.forward(x, training=True, cache=True)
    np.testing.assert_allclose(y, (x - [0.5, 1.0]) / [2.0, 0.5])
    np.testing.assert_allclose(norm.backward(np.ones_like(y)), np.ones_like(x) / [2.0, 0.5])
    inv = Normalization(mean=[0.5, 1.0], variance=[4.0, 0.25], invert=True)
    np.testing.assert_allclose(inv.forward(y), x)


# --------------------------------------------------------------------------- Normalization
def test_normalization_adapt_from_arrays_and_datasets():
    x = RNG.normal(loc=[1.0, -2.0, 5.0], scale=[0.5, 2.0, 3.0], size=(50, 4, 4, 3))
    norm = Normalization().adapt(x, batch_size=7)
    y = norm.forward(x)
    np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 1, 2)), 1, rtol=1e-10)
    np.testing.assert_allclose(norm.state["mean"], x.mean(axis=(0, 1, 2)))
    assert float(norm.state["count"][0]) == 50 * 16
    ds = data.Dataset.from_arrays(x.astype(np.float32), np.zeros(50)).shuffle(1).batch(9)
    streamed = Normalization().adapt(ds)
    streamed.build((4, 4, 3), dtype="float64")
    np.testing.assert_allclose(streamed.state["mean"], x.mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(streamed.state["variance"], x.var(axis=(0, 1, 2)), rtol=1e-6)
    whole = Normalization(axis=None).adapt(x)
    np.testing.assert_allclose(whole.forward(x), (x - x.mean()) / x.std(), rtol=1e-10)
    rows = Normalization(axis=1)
    rows.build((4, 4, 3), dtype="float64")                      # adapting a built layer
    rows.adapt(x)
    np.testing.assert_allclose(rows.state["mean"], x.mean(axis=(0, 2, 3)))
    with pytest.raises(ValueError, match="built for"):
        rows.adapt(x[:, :2])
    with pytest.raises(RuntimeError, match="adapt"):
        Normalization().forward(x)
    with pytest.raises(ValueError, match="no samples"):
        Normalization().adapt(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="both"):
        Normalization(mean=1.0)
    with pytest.raises(ValueError, match="batch axis"):
        Normalization(axis=0)


# --------------------------------------------------------------------------- in models
def augmented_model(seed=0):
    norm = Normalization().adapt(np.random.default_rng(9).random((20, 10, 10, 3)) * 255)
    return cconv.Sequential([
        Rescaling(1 / 255.0, name="rescale"), norm, RandomFlip("horizontal"), RandomCrop(8, 8),
        RandomTranslation(0.1, 0.1), RandomRotation(0.02), RandomZoom(0.1), RandomContrast(0.2, (0, 1)),
        Conv2D(4, 3, activation="relu"), Flatten(), Dense(3, activation="softmax")],
        input_shape=(10, 10, 3), seed=seed)


def test_saved_with_the_model(tmp_path):
    m = augmented_model()
    m.compile("adam", "categorical_crossentropy")
    x = (RNG.random((12, 10, 10, 3)) * 255).astype(np.float32)
    y = np.arange(12) % 3
    m.fit(x, y, epochs=2, batch_size=4, verbose=0)
    m.save(tmp_path / "m.npz")
    again = cconv.load_model(tmp_path / "m.npz")
    assert again.get_config() == m.get_config()
    np.testing.assert_array_equal(again.predict(x), m.predict(x))
    for a, b in zip(again.layers, m.layers):
        assert type(a) is type(b)
    np.testing.assert_array_equal(again.layers[1].state["mean"], m.layers[1].state["mean"])
    # the training-mode draws continue identically once the generators are copied over
    again.set_rng_state(m.get_rng_state())
    np.testing.assert_array_equal(again.forward(x, training=True), m.forward(x, training=True))


def test_checkpoint_resume_with_augmentation_is_exact(tmp_path, restore_threads):
    cconv.set_num_threads(1)
    x = (RNG.random((16, 10, 10, 3)) * 255).astype(np.float32)
    y = np.arange(16) % 3

    def run(epochs, **kw):
        m = augmented_model(seed=3)
        m.compile("adam", "categorical_crossentropy")
        m.fit(x, y, epochs=epochs, batch_size=5, verbose=0, **kw)
        return m

    assert_resume_is_exact(run, tmp_path)


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        RandomFlip("diagonal")
    with pytest.raises(ValueError, match="height_factor"):
        RandomTranslation(1.5, 0.1)
    with pytest.raises(ValueError, match="fill_mode"):
        RandomZoom(0.1, fill_mode="bounce")
    with pytest.raises(ValueError, match="interpolation"):
        RandomRotation(0.1, interpolation="cubic")
    with pytest.raises(ValueError, match="factor"):
        RandomContrast(1.5)
    with pytest.raises(ValueError, match="value_range"):
        RandomContrast(0.1, value_range=(1, 0))
    with pytest.raises(ValueError, match="seed"):
        RandomFlip(seed=-1)
    with pytest.raises(TypeError, match="scale"):
        Rescaling("half")
    with pytest.raises(ValueError, match="4-D"):
        cconv.Sequential([RandomFlip()], input_shape=(5,))
