"""cconv.Sequential: training, reproducibility, fused softmax, checkpoints and resume, bad input, gradcheck."""
import io
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import cconv
from cconv import _testing, callbacks, losses, optim
from cconv import functional as F
from cconv.layers import (BatchNorm2D, Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU, Softmax)
from cconv.model import NonFiniteLossError


def digits_cnn(seed=0):
    return cconv.Sequential([
        Conv2D(16, 3, padding="same", activation="relu"), MaxPool2D(2),
        Conv2D(32, 3, padding="same", activation="relu"), MaxPool2D(2),
        Flatten(), Dense(64, activation="relu"), Dense(10, activation="softmax"),
    ], input_shape=(8, 8, 1), seed=seed)


def tiny(seed=0, dropout=0.25, bn=True):
    layers = [Conv2D(4, 3, padding="same", activation="relu")]
    if bn:
        layers.append(BatchNorm2D())
    layers += [MaxPool2D(2), Flatten()]
    if dropout:
        layers.append(Dropout(dropout))
    layers.append(Dense(3, activation="softmax"))
    return cconv.Sequential(layers, input_shape=(6, 6, 2), seed=seed)


def blobs(n=96, seed=0, classes=3):
    """A learnable toy problem: the class sets the mean of one channel in one quadrant."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(0, 0.5, (n, 6, 6, 2)).astype(np.float32)
    for c in range(classes):
        r, q = divmod(c, 2)
        x[y == c, 3 * r:3 * r + 3, 3 * q:3 * q + 3, c % 2] += 1.5
    return x, y


def weights(model):
    return [a.copy() for l in model.layers for a in list(l.params.values()) + list(l.state.values())]


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert len(wa) == len(wb)
    for u, v in zip(wa, wb):
        np.testing.assert_array_equal(u, v)


# --------------------------------------------------------------------------- real training
def test_digits_cnn_reaches_95_percent():
    datasets = pytest.importorskip("cconv.datasets")
    pytest.importorskip("sklearn")
    x, y = datasets.load_digits()
    x_train, x_test, y_train, y_test = datasets.train_test_split(x, y, test_size=0.25, seed=0, stratify=True)
    model = digits_cnn(seed=0)
    model.compile(optim.Adam(lr=3e-3), "categorical_crossentropy")
    history = model.fit(x_train, y_train, epochs=10, batch_size=32, verbose=0,
                        callbacks=[callbacks.LearningRateScheduler(optim.CosineAnnealingLR(10))])
    result = model.evaluate(x_test, y_test)
    assert result["accuracy"] >= 0.95, result
    assert history.history["loss"][-1] < history.history["loss"][0] / 5
    proba = model.predict(x_test)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert np.mean(proba.argmax(axis=1) == y_test) == pytest.approx(result["accuracy"])


def test_fit_history_and_evaluate_keys():
    x, y = blobs()
    model = tiny()
    model.compile("adam", "categorical_crossentropy")
    h = model.fit(x, y, epochs=3, batch_size=16, validation_split=0.25, verbose=0)
    assert isinstance(h, cconv.History) and model.history is h
    assert set(h.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 3 for v in h.history.values()) and h.epoch == [0, 1, 2]
    assert h.params["samples"] == 72 and h.params["steps"] == 5
    # validation_split holds out the *last* 25% (before shuffling): val_loss is evaluate() on them
    res = model.evaluate(x[72:], y[72:], batch_size=7)
    assert res["loss"] == pytest.approx(h.history["val_loss"][-1], rel=1e-6)
    assert res["accuracy"] == pytest.approx(h.history["val_accuracy"][-1])
    assert set(res) == {"loss", "accuracy"}


def test_reproducible_same_seed_same_weights():
    x, y = blobs()
    runs = []
    for _ in range(2):
        model = tiny(seed=3)
        model.compile(optim.Adam(lr=1e-2), "categorical_crossentropy")
        model.fit(x, y, epochs=2, batch_size=16, verbose=0)
        runs.append(model)
    assert_same_weights(runs[0], runs[1])
    other = tiny(seed=4)
    other.compile(optim.Adam(lr=1e-2), "categorical_crossentropy")
    other.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert not np.array_equal(other.layers[0].params["kernel"], runs[0].layers[0].params["kernel"])


@pytest.mark.parametrize("threads", [1, 2])
def test_reproducible_with_threads(threads):
    """Same seed and thread count -> identical weights, with convolutions big enough to be threaded."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 12, 12, 8)).astype(np.float32)
    y = rng.integers(0, 4, 256)
    saved = cconv.get_num_threads()
    cconv.set_num_threads(threads)
    _testing.reset()
    try:
        runs = []
        for _ in range(2):
            m = cconv.Sequential([Conv2D(32, 3, padding="same", activation="relu"), MaxPool2D(2),
                                  Conv2D(32, 3, padding="same", activation="relu"), Flatten(),
                                  Dense(4, activation="softmax")], input_shape=(12, 12, 8), seed=1)
            m.compile(optim.Adam(lr=1e-3), "categorical_crossentropy")
            m.fit(x, y, epochs=3, batch_size=32, verbose=0)
            runs.append(m)
    finally:
        cconv.set_num_threads(saved)
    assert_same_weights(runs[0], runs[1])
    ran = _testing.kernels_run()             # the convolutions really ran on that many threads
    for kernel in ("conv2d_forward", "conv2d_backward_weights", "winograd_forward",
                   "winograd_backward"):
        assert ran[kernel].team == threads, (kernel, ran[kernel])


def test_shuffle_changes_batches_and_seed_none_is_recorded():
    x, y = blobs()
    a, b = tiny(seed=1, dropout=0, bn=False), tiny(seed=1, dropout=0, bn=False)
    for m in (a, b):
        m.compile(optim.SGD(lr=0.1), "categorical_crossentropy")
    a.fit(x, y, epochs=1, batch_size=16, shuffle=True, verbose=0)
    b.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0)
    assert not np.array_equal(a.layers[0].params["kernel"], b.layers[0].params["kernel"])
    m = cconv.Sequential([Flatten(), Dense(2)], input_shape=(3,))
    assert isinstance(m.seed, int) and m.get_config()["seed"] == m.seed


def test_train_on_batch_updates_and_custom_loop_matches():
    """train_on_batch == forward + loss + backward + optimizer.step written by hand."""
    x, y = blobs(n=16)
    a, b = tiny(seed=2, dropout=0), tiny(seed=2, dropout=0)
    a.compile(optim.SGD(lr=0.1, momentum=0.9), "categorical_crossentropy")
    b.compile(optim.SGD(lr=0.1, momentum=0.9), "categorical_crossentropy")
    before = weights(a)
    logs = a.train_on_batch(x, y)
    assert set(logs) == {"loss", "accuracy"}
    assert not np.array_equal(before[0], a.layers[0].params["kernel"])

    # the hand-written loop goes through the Softmax layer's own backward (not fused)
    probs = b.forward(x, training=True)
    n = len(y)
    onehot = np.eye(3, dtype=np.float32)[y]
    dprobs = -onehot / probs / n                       # d(mean CE)/d(probs)
    b.backward(dprobs)
    b.optimizer.step()
    assert logs["loss"] == pytest.approx(float(-np.log(probs[np.arange(n), y]).mean()), rel=1e-5)
    for u, v in zip(weights(a), weights(b)):
        np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-6)


def test_fused_softmax_equivalent_to_logits_model():
    """Softmax as activation, as a layer, or absent (logits): identical training with CE."""
    x, y = blobs(n=32)

    def make(kind):
        last = {"activation": [Dense(3, activation="softmax")],
                "layer": [Dense(3), Softmax()],
                "logits": [Dense(3)]}[kind]
        m = cconv.Sequential([Conv2D(4, 3, activation="relu"), Flatten()] + last, input_shape=(6, 6, 2),
                             seed=5, dtype="float64")
        m.compile(optim.SGD(lr=0.5), losses.SoftmaxCrossEntropy(from_logits=kind == "logits"))
        return m

    models = {k: make(k) for k in ("activation", "layer", "logits")}
    assert models["activation"].final_activation() == "softmax"
    assert models["layer"].final_activation() == "softmax"
    assert models["logits"].final_activation() is None
    for _ in range(3):
        losses_ = {k: m.train_on_batch(x, y)["loss"] for k, m in models.items()}
        assert losses_["activation"] == pytest.approx(losses_["logits"], rel=1e-12)
        assert losses_["layer"] == pytest.approx(losses_["logits"], rel=1e-12)
    ref = models["logits"].layers[-1].params["kernel"]
    np.testing.assert_allclose(models["activation"].layers[-1].params["kernel"], ref, rtol=1e-12)
    np.testing.assert_allclose(models["layer"].layers[2].params["kernel"], ref, rtol=1e-12)
    # predict applies the softmax; on the logits model it returns logits
    p = models["activation"].predict(x)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    z = models["logits"].predict(x)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    np.testing.assert_allclose(p, e / e.sum(axis=1, keepdims=True), rtol=1e-10)


def test_sigmoid_with_binary_crossentropy_is_fused():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 5))
    y = (x[:, 0] > 0).astype(np.float64)
    models = []
    for act in ("sigmoid", None):
        m = cconv.Sequential([Dense(4, activation="tanh"), Dense(1, activation=act)], input_shape=(5,), seed=3,
                             dtype="float64")
        m.compile(optim.SGD(lr=0.5), losses.BinaryCrossEntropy(from_logits=act is None))
        models.append(m)
    assert models[0].final_activation() == "sigmoid" and models[1].final_activation() is None
    for _ in range(3):
        la, lb = (m.train_on_batch(x, y) for m in models)
        assert la["loss"] == pytest.approx(lb["loss"], rel=1e-12)
        assert la["accuracy"] == lb["accuracy"]
    p = models[0].predict(x)
    z = models[1].predict(x)
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-z)), rtol=1e-12)
    # accuracy from logits uses threshold 0: it equals the accuracy of the probabilities at 0.5
    assert models[0].evaluate(x, y)["accuracy"] == pytest.approx(np.mean((p[:, 0] > 0.5) == (y > 0.5)))


def test_non_classification_outputs_train_without_accuracy():
    """An image-shaped output (autoencoder-like) with MSE: no accuracy, no error."""
    x = np.random.default_rng(0).random((8, 4, 4, 1)).astype(np.float32)
    m = cconv.Sequential([Conv2D(3, 3, padding="same", activation="relu"), Conv2D(1, 3, padding="same")],
                         input_shape=(4, 4, 1), seed=0)
    m.compile("adam", "mse")
    h = m.fit(x, x, epochs=2, batch_size=4, verbose=0)
    assert set(h.history) == {"loss"} and h.history["loss"][1] < h.history["loss"][0]
    assert set(m.evaluate(x, x)) == {"loss"}


def test_fused_softmax_is_stable_with_huge_logits():
    """Saturated softmax: the fused loss stays finite and the gradient is (p - onehot) / N."""
    m = cconv.Sequential([Dense(2, activation="softmax", use_bias=False)], input_shape=(1,), seed=0,
                         dtype="float64")
    m.layers[0].params["kernel"][...] = [[1000.0, -1000.0]]
    m.compile(optim.SGD(lr=1e-3), "categorical_crossentropy")
    logs = m.train_on_batch(np.array([[1.0]]), np.array([1]))
    assert np.isfinite(logs["loss"]) and logs["loss"] == pytest.approx(2000.0)
    # gradient (p - onehot) = (1, -1) for x = 1: one SGD step moves the kernel by -lr * (1, -1)
    np.testing.assert_allclose(m.layers[0].params["kernel"], [[1000.0 - 1e-3, -1000.0 + 1e-3]])


def test_names_unique_and_first_layer_skips_its_input_gradient(monkeypatch):
    m = cconv.Sequential([Conv2D(2, 3), Conv2D(2, 3), MaxPool2D(2), ReLU(), Flatten(), Dense(2),
                          Dense(2, name="head")], input_shape=(10, 10, 1))
    names = [l.name for l in m.layers]
    assert names == ["conv2d", "conv2d_1", "max_pool2d", "relu", "flatten", "dense", "head"]
    from cconv import functional as F
    need_dx = []
    real = F.conv2d_backward

    def spy(*args, **kwargs):
        need_dx.append(kwargs.get("need_dx", True))
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "conv2d_backward", spy)
    m.compile("sgd", "mse")
    m.train_on_batch(np.ones((2, 10, 10, 1), np.float32), np.zeros((2, 2), np.float32))
    assert need_dx == [True, False]                    # backward order: conv2d_1, then conv2d
    assert all(l.need_input_grad for l in m.layers)    # the flag is set per call, then restored
    assert [n for n, _, _ in m.parameters()] == ["conv2d/kernel", "conv2d/bias", "conv2d_1/kernel",
                                                  "conv2d_1/bias", "dense/kernel", "dense/bias",
                                                  "head/kernel", "head/bias"]
    with pytest.raises(ValueError, match="duplicate layer name 'head'"):
        m.add(Dense(3, name="head"))
    m.add(Dense(3))
    assert m.layers[-1].name == "dense_1" and m.output_shape == (3,)
    assert m.get_layer("head") is m.layers[6]


def test_summary_table():
    m = digits_cnn()
    out = io.StringIO()
    text = m.summary(print_fn=lambda s: out.write(s))
    assert text == out.getvalue()
    assert "conv2d (Conv2D)" in text and "(None, 8, 8, 16)" in text and "(None, 2, 2, 32)" in text
    assert "max_pool2d_1 (MaxPool2D)" in text
    total = sum(p.size for _, p, _ in m.parameters())
    assert f"Total params: {total:,}" in text and f"Trainable params: {total:,}" in text
    assert total == (3 * 3 * 1 * 16 + 16) + (3 * 3 * 16 * 32 + 32) + (128 * 64 + 64) + (64 * 10 + 10)
    bn = tiny()
    text = bn.summary(print_fn=lambda s: None)
    assert "Non-trainable params: 8" in text          # BatchNorm running mean and variance


def test_config_round_trip_and_lazy_build():
    m = tiny(seed=9)
    clone = cconv.Sequential.from_config(m.get_config())
    assert clone.get_config() == m.get_config()
    assert_same_weights(m, clone)                      # same seed: same initial weights
    lazy = cconv.Sequential([Flatten(), Dense(4)])
    assert not lazy.built and "not built" in lazy.summary(print_fn=lambda s: None)
    lazy.compile("sgd", "mse")
    lazy.fit(np.zeros((5, 2, 3), np.float32), np.zeros((5, 4), np.float32), verbose=0)
    assert lazy.built and lazy.input_shape == (2, 3) and lazy.output_shape == (4,)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("bn", [True, False])
def test_activations_and_predict_batching(bn, threads, restore_threads, monkeypatch):
    """predict (the inference path: without bn, conv + ReLU + pool fused) gives the bits of
    the layers' calls; at 2 threads with the work floor lowered, so that the elementwise
    kernels split the small arrays."""
    cconv.set_num_threads(threads)
    monkeypatch.setattr(F, "MIN_WORK_PER_THREAD", 64)
    monkeypatch.setattr(cconv.model, "INFERENCE_SERIAL_MAX", 0)
    m = tiny(seed=1, bn=bn)
    x, _ = blobs(n=10)
    acts = m.activations(x)
    assert list(acts) == [l.name for l in m.layers]
    assert acts["conv2d"].shape == (10, 6, 6, 4) and acts["flatten"].shape == (10, 36)
    assert (acts["conv2d"] >= 0).all()
    np.testing.assert_array_equal(acts[m.layers[-1].name], m.predict(x, batch_size=10))
    np.testing.assert_allclose(m.predict(x, batch_size=3), m.predict(x), rtol=1e-5, atol=1e-7)
    assert m.predict(x).dtype == np.float32


class _Half(cconv.layers.Layer):
    """Returns float64 halves of its input (a layer that ignores the model's dtype)."""

    def call(self, x, training=False, **kwargs):
        return x.astype(np.float64) / 2, None


def test_predict_returns_arrays_of_its_own():
    """predict's outputs are new arrays of the model's dtype, in one batch or several, even
    where the network hands its input straight through (dropout at inference) or a layer
    returns another dtype; an empty input gives empty outputs."""
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    for m in (cconv.Sequential([Dropout(0.5)], input_shape=(3,)),
              cconv.Sequential([Flatten()], input_shape=(3,))):
        for batch_size in (None, 4, 3, 1):
            out = m.predict(x, batch_size=batch_size)
            assert not np.shares_memory(out, x) and out.dtype == np.float32
            np.testing.assert_array_equal(out, x)
            out[...] = -1
            assert x[0, 0] == 0
    half = cconv.Sequential([_Half()], input_shape=(3,))
    for batch_size in (None, 2):
        out = half.predict(x, batch_size=batch_size)
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, x / 2)
    empty = half.predict(x[:0])
    assert empty.shape == (0, 3) and empty.dtype == np.float32


def test_input_gradient_matches_finite_differences_and_preserves_state():
    m = tiny(seed=2, dropout=0.5)
    m = cconv.Sequential.from_config(dict(m.get_config(), dtype="float64"))
    m.compile("adam", "categorical_crossentropy")
    x, y = blobs(n=4)
    x = x.astype(np.float64)
    m.train_on_batch(x, y)                             # non-trivial BatchNorm statistics, Adam state
    snap = weights(m)
    grads = [g.copy() for _, _, g in m.parameters()]
    gen = m.layers[4].get_rng_state()
    g = m.input_gradient(x, y)
    assert g.shape == x.shape
    # unchanged: weights, layer state, gradients, dropout generator, first-layer flag
    for u, v in zip(snap, weights(m)):
        np.testing.assert_array_equal(u, v)
    for u, (_, _, v) in zip(grads, m.parameters()):
        np.testing.assert_array_equal(u, v)
    assert m.layers[4].get_rng_state() == gen and gen
    # finite differences of the inference-mode loss (dropout off, running statistics)
    eps = 1e-6
    for idx in [(0, 1, 2, 0), (1, 3, 3, 1), (3, 5, 0, 0), (2, 2, 4, 1)]:
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        num = (m.evaluate(xp, y)["loss"] - m.evaluate(xm, y)["loss"]) / (2 * eps)
        assert g[idx] == pytest.approx(num, rel=1e-5, abs=1e-9)
    # a class score: d(sum_n p[n, 1]) / dx
    gs = m.input_gradient(x, output_index=1)
    idx = (0, 1, 2, 0)
    xp, xm = x.copy(), x.copy()
    xp[idx] += eps
    xm[idx] -= eps
    num = (m.predict(xp)[:, 1].sum() - m.predict(xm)[:, 1].sum()) / (2 * eps)
    assert gs[idx] == pytest.approx(num, rel=1e-5, abs=1e-9)
    with pytest.raises(ValueError, match="output_index"):
        m.input_gradient(x, output_index=7)


# --------------------------------------------------------------------------- bad input
def test_bad_input_messages():
    x, y = blobs(n=8)
    m = tiny()
    with pytest.raises(ValueError, match="compile"):
        m.fit(x, y, verbose=0)
    with pytest.raises(ValueError, match="compile"):
        m.evaluate(x, y)
    with pytest.raises(ValueError, match="unknown loss 'cross_entropyy'"):
        m.compile("adam", "cross_entropyy")
    with pytest.raises(ValueError, match="unknown optimizer 'adamm'"):
        m.compile("adamm", "categorical_crossentropy")
    with pytest.raises(ValueError, match="unknown metric"):
        m.compile("adam", "mse", metrics=["f2"])
    with pytest.raises(TypeError, match="optimizer"):
        m.compile(42, "mse")
    with pytest.raises(ValueError, match="unknown activation"):
        Dense(3, activation="relux")
    with pytest.raises(ValueError, match="units"):
        Dense(0)
    with pytest.raises(ValueError, match="rate"):
        Dropout(1.5)
    m.compile("adam", "categorical_crossentropy")
    with pytest.raises(ValueError, match=r"shape \(8, 6, 5, 2\).*\(None, 6, 6, 2\)"):
        m.fit(x[:, :, :5], y, verbose=0)
    with pytest.raises(ValueError, match=r"shape \(8, 6, 6, 2\).*\(None, 6, 6, 2\)|\(None, 6, 6, 2\)"):
        m.predict(x[..., :1].repeat(2, axis=-1)[:, :, :, :, None])
    with pytest.raises(ValueError, match="different numbers of samples: 8 and 7"):
        m.fit(x, y[:7], verbose=0)
    with pytest.raises(ValueError, match=r"out of range.*3 output classes.*\[3, 7\]"):
        m.fit(x, np.array([0, 1, 2, 3, 7, 0, 1, 2]), verbose=0)
    with pytest.raises(ValueError, match="out of range"):
        m.fit(x, np.array([0, 1, 2, -1, 0, 0, 1, 2]), verbose=0)
    with pytest.raises(ValueError, match="non-integer"):
        m.fit(x, np.full(8, 0.5), verbose=0)
    with pytest.raises(ValueError, match="batch_size"):
        m.fit(x, y, batch_size=0, verbose=0)
    with pytest.raises(ValueError, match="epochs"):
        m.fit(x, y, epochs=-1, verbose=0)
    with pytest.raises(ValueError, match="validation_split"):
        m.fit(x, y, validation_split=1.5, verbose=0)
    with pytest.raises(TypeError, match="numpy array"):
        m.predict("not an array")
    with pytest.raises(TypeError, match="callbacks"):
        m.fit(x, y, callbacks=[print], verbose=0)
    with pytest.raises(ValueError, match="one-hot"):
        m.fit(x, np.zeros((8, 4)), verbose=0)
    with pytest.raises(ValueError, match="empty"):
        cconv.Sequential([]).build((3,))


def test_nonfinite_loss_stops_with_epoch_and_batch():
    x, y = blobs(n=64)
    x[40] = np.nan                                     # sample 40: batch 3 (of 4) without shuffling
    m = tiny(seed=0, dropout=0, bn=False)
    m.compile(optim.SGD(lr=0.1), "categorical_crossentropy")
    m.fit(x[:32], y[:32], epochs=1, batch_size=16, shuffle=False, verbose=0)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1/2, batch 3/4") as info:
        m.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    assert info.value.epoch == 1 and info.value.batch == 3
    assert isinstance(info.value, FloatingPointError)
    assert all(np.isfinite(p).all() for _, p, _ in m.parameters())   # never updated with NaN


def test_skip_nonfinite_callback():
    x, y = blobs(n=64)
    x[40] = np.inf
    m = tiny(seed=0, dropout=0, bn=False)
    m.compile(optim.SGD(lr=0.1), "categorical_crossentropy")
    skip = callbacks.SkipNonFinite(verbose=0)
    h = m.fit(x, y, epochs=2, batch_size=16, shuffle=False, callbacks=[skip], verbose=0)
    assert skip.skipped and [(e, b) for e, b, _ in skip.skipped] == [(0, 2), (1, 2)]
    assert all(np.isfinite(v) for v in h.history["loss"])
    assert all(np.isfinite(p).all() for _, p, _ in m.parameters())
    limited = callbacks.SkipNonFinite(max_skips=1, verbose=0)
    with pytest.raises(NonFiniteLossError, match="epoch 2/2, batch 3/4"):
        m.fit(x, y, epochs=2, batch_size=16, shuffle=False, callbacks=[limited], verbose=0)


# --------------------------------------------------------------------------- progress output
def test_verbose_output(capsys):
    x, y = blobs(n=32)
    m = tiny()
    m.compile("adam", "categorical_crossentropy")
    m.fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert capsys.readouterr().out == ""
    m.fit(x, y, epochs=2, batch_size=8, validation_split=0.25, verbose=1)
    lines = capsys.readouterr().out.splitlines()      # not a TTY: one line per epoch
    assert len(lines) == 2 and lines[0].startswith("Epoch 1/2") and lines[1].startswith("Epoch 2/2")
    for key in ("3/3", "loss", "accuracy", "val_loss", "val_accuracy", "samples/s"):
        assert key in lines[1]


def test_progress_bar_redraws_in_place_on_a_tty():
    from cconv._progress import ProgressBar
    out = io.StringIO()
    bar = ProgressBar(4, 1, 3, file=out, interactive=True, min_interval=0.0)
    for i in range(4):
        bar.update(i + 1, (i + 1) * 10, {"loss": 1.0 / (i + 1), "accuracy": 0.5})
    bar.finish({"loss": 0.25, "accuracy": 0.5})
    text = out.getvalue()
    assert text.count("\r") == 5 and text.endswith("\n") and text.count("\n") == 1
    assert "ETA" in text and "Epoch 1/3" in text and "4/4 [" in text and "samples/s" in text
    for steps in (1, 3, 43, 1000):                      # the bar keeps its width at every step
        for done in range(steps + 1):
            b = ProgressBar(steps, 1, 1, file=io.StringIO(), interactive=False)
            b.done = done
            line = b._line(final=False)
            assert len(line[line.index("[") + 1:line.index("]")]) == 30, (steps, done, line)


# --------------------------------------------------------------------------- checkpoint / resume
def test_checkpoint_then_resume_equals_uninterrupted(tmp_path):
    x, y = blobs()
    kw = dict(batch_size=16, validation_split=0.2, verbose=0)

    full = tiny(seed=6)
    full.compile(optim.Adam(lr=1e-2), "categorical_crossentropy")
    hf = full.fit(x, y, epochs=4, **kw)

    ckpt = tmp_path / "ckpt.npz"
    first = tiny(seed=6)
    first.compile(optim.Adam(lr=1e-2), "categorical_crossentropy")
    first.fit(x, y, epochs=2, checkpoint=ckpt, **kw)
    second = tiny(seed=6)                               # a fresh process would build this model
    second.compile(optim.Adam(lr=1e-2), "categorical_crossentropy")
    hr = second.fit(x, y, epochs=4, checkpoint=ckpt, resume=ckpt, **kw)
    assert_same_weights(full, second)
    assert hr.history == hf.history and hr.epoch == [0, 1, 2, 3]
    # the checkpoint is also a model file
    loaded = cconv.load_model(ckpt)
    assert_same_weights(full, loaded)


def test_resume_true_and_mismatches(tmp_path):
    x, y = blobs()
    ckpt = tmp_path / "c.npz"
    m = tiny()
    m.compile("adam", "categorical_crossentropy")
    m.fit(x, y, epochs=1, checkpoint=ckpt, resume=True, verbose=0)     # no file yet: fresh start
    assert ckpt.exists()
    h = m.fit(x, y, epochs=1, checkpoint=ckpt, resume=True, verbose=0)  # already done: no epoch
    assert h.epoch == [0] and len(h.history["loss"]) == 1
    h = m.fit(x, y, epochs=1, checkpoint=ckpt, resume=False, verbose=0)  # False: train anew
    assert h.epoch == [0] and len(h.history["loss"]) == 1
    with pytest.raises(ValueError, match="batch_size"):
        m.fit(x, y, epochs=2, batch_size=8, resume=ckpt, verbose=0)
    with pytest.raises(ValueError, match="x_shape"):
        m.fit(x[:50], y[:50], epochs=2, resume=ckpt, verbose=0)
    other = tiny(bn=False)
    other.compile("adam", "categorical_crossentropy")
    with pytest.raises(ValueError, match="different architecture"):
        other.fit(x, y, epochs=2, resume=ckpt, verbose=0)
    sgd = tiny()
    sgd.compile("sgd", "categorical_crossentropy")
    with pytest.raises(ValueError, match="trained with Adam.*compiled with SGD"):
        sgd.fit(x, y, epochs=2, resume=ckpt, verbose=0)
    with pytest.raises(FileNotFoundError, match="checkpoint directory"):
        m.fit(x, y, epochs=1, checkpoint=tmp_path / "missing" / "c.npz", verbose=0)
    plain = tmp_path / "plain.npz"
    m.save(plain)
    with pytest.raises(ValueError, match="not a training checkpoint"):
        m.fit(x, y, epochs=2, resume=plain, verbose=0)


_RESUME_SCRIPT = textwrap.dedent("""
    import sys, time
    import numpy as np
    import cconv
    from cconv import optim, callbacks
    from cconv.layers import BatchNorm2D, Conv2D, Dense, Dropout, Flatten, MaxPool2D

    mode, ckpt, out = sys.argv[1], sys.argv[2], sys.argv[3]
    cconv.set_num_threads(1)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 192)
    x = rng.normal(0, 1, (192, 8, 8, 2)).astype(np.float32)
    x[np.arange(192), 2, 2, 0] += 2.0 * y
    model = cconv.Sequential([
        Conv2D(6, 3, padding="same", activation="relu"), BatchNorm2D(), MaxPool2D(2),
        Flatten(), Dropout(0.3), Dense(3, activation="softmax"),
    ], input_shape=(8, 8, 2), seed=11)
    model.compile(optim.Adam(lr=3e-3), "categorical_crossentropy")

    class Slow(callbacks.Callback):            # gives the parent time to kill us mid-run
        def on_batch_end(self, batch, logs=None):
            time.sleep(0.01)

    kw = dict(epochs=6, batch_size=16, verbose=0)
    if mode == "full":
        model.fit(x, y, **kw)
    elif mode == "killed":
        model.fit(x, y, checkpoint=ckpt, callbacks=[Slow()], **kw)
    else:
        model.fit(x, y, checkpoint=ckpt, resume=ckpt, **kw)
    np.savez(out, *[p for _, p, _ in model.parameters()],
             *[a for l in model.layers for a in l.state.values()])
""")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_resume_after_real_kill(tmp_path):
    """Train in a child, SIGKILL it after its first checkpoint, resume: same weights as no kill."""
    script = tmp_path / "train.py"
    script.write_text(_RESUME_SCRIPT)
    ckpt = tmp_path / "ckpt.npz"
    env = dict(os.environ, PYTHONHASHSEED="0")

    def run(mode, out):
        subprocess.run([sys.executable, str(script), mode, str(ckpt), str(out)], check=True, env=env,
                       timeout=300)
        with np.load(out) as z:
            return [z[k] for k in sorted(z.files, key=lambda k: int(k.split("_")[1]))]

    proc = subprocess.Popen([sys.executable, str(script), "killed", str(ckpt), str(tmp_path / "never.npz")],
                            env=env)
    try:
        deadline = time.monotonic() + 120
        while not ckpt.exists():
            assert proc.poll() is None, "the child finished or failed before its first checkpoint"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(np.random.default_rng().uniform(0.0, 0.2))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "never.npz").exists()
    _, _, state = cconv.checkpoint.load_training_state(ckpt)
    assert 1 <= state["epoch"] < 6                      # really interrupted

    resumed = run("resume", tmp_path / "resumed.npz")
    full = run("full", tmp_path / "full.npz")
    assert len(resumed) == len(full) == 8          # 6 parameters + BatchNorm running statistics
    for a, b in zip(resumed, full):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- gradcheck
def test_gradcheck_small_model_passes():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 6, 6, 2)).astype(np.float32)
    y = rng.integers(0, 3, 3)
    m = tiny(seed=1, dropout=0.3)
    m.compile("adam", "categorical_crossentropy")
    before = weights(m)
    report = cconv.gradcheck(m, x, y)
    assert report.ok, str(report)
    names = [r.name for r in report.results]
    assert names[0] == "x" and "conv2d/kernel" in names and "batch_norm2d/gamma" in names
    assert all(r.checked == int(np.prod(r.shape)) for r in report.results)
    assert report["dense/kernel"].max_rel_error < 1e-4
    for u, v in zip(before, weights(m)):                 # the model itself is untouched
        np.testing.assert_array_equal(u, v)
    # the random-projection objective, inference mode
    assert cconv.gradcheck(m, x, training=False)


def test_gradcheck_detects_a_broken_layer():
    class BrokenDense(Dense):
        """Adds 1.01 times the kernel gradient: a subtle bug."""

        def backward(self, dy, saved):
            before = self.grads["kernel"].copy()
            dx = super().backward(dy, saved)
            self.grads["kernel"] += 0.01 * (self.grads["kernel"] - before)
            return dx

    class BrokenInput(Conv2D):
        """Returns a wrong input gradient (sign flipped)."""

        def backward(self, dy, saved):
            dx = super().backward(dy, saved)
            return None if dx is None else -dx

    rng = np.random.default_rng(1)
    report = cconv.gradcheck(BrokenDense(3), rng.standard_normal((4, 5)))
    assert not report.ok and [r.name for r in report.failures] == ["kernel"]
    assert "FAILED" in str(report) and "kernel" in str(report)
    with pytest.raises(cconv.gradcheck.GradcheckError if hasattr(cconv.gradcheck, "GradcheckError")
                       else AssertionError, match="kernel"):
        cconv.gradcheck(BrokenDense(3), rng.standard_normal((4, 5)), raise_exception=True)
    m = cconv.Sequential([BrokenInput(2, 3), Flatten(), Dense(2)], input_shape=(5, 5, 1), seed=0)
    bad = cconv.gradcheck(m, rng.standard_normal((2, 5, 5, 1)))
    assert [r.name for r in bad.failures] == ["x"]
    good = cconv.gradcheck(Conv2D(2, 3), rng.standard_normal((2, 5, 5, 1)))
    assert good.ok and len(good.results) == 3


def test_gradcheck_rejects_bad_arguments():
    with pytest.raises(TypeError, match="Layer or a Model"):
        cconv.gradcheck(object(), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="eps"):
        cconv.gradcheck(Dense(2), np.zeros((1, 2)), eps=0)
    with pytest.raises(ValueError, match="loss"):
        cconv.gradcheck(Dense(2), np.zeros((1, 2)), y=np.zeros(1, int))
