"""fit's extras: sample and class weights, initial_epoch, validation_freq, (N, 1) labels, and
the metrics (top-k accuracy, macro precision / recall / F1, confusion matrix) against
scikit-learn."""
import numpy as np
import pytest

import cconv
from cconv import callbacks, losses, metrics, training
from cconv.layers import Conv2D, Dense, Flatten


def blobs(n=48, seed=0, classes=3):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.normal(size=(n, 6, 6, 2)).astype(np.float32)
    x[np.arange(n), y, y, 0] += 3.0
    return x, y


def model(seed=0, classes=3, dtype="float32"):
    m = cconv.Sequential([Conv2D(4, 3, activation="relu"), Flatten(), Dense(classes, activation="softmax")],
                         input_shape=(6, 6, 2), seed=seed, dtype=dtype)
    m.compile(cconv.optim.SGD(lr=0.05), "categorical_crossentropy")
    return m


def gradients(m, x, y, sample_weight=None):
    plan = training.LossPlan(m)
    xs = [np.ascontiguousarray(x, dtype=m.dtype)]
    ys = training.target_arrays(m, y, len(x), plan_losses=plan.losses)
    logs, _, _ = training.loss_and_gradients(m, xs, ys, plan, sample_weight=sample_weight)
    return logs["loss"], [g.copy() for _, _, g in m.parameters()]


# --------------------------------------------------------------------------- sample weights
def test_zero_weights_on_a_class_remove_its_gradient():
    x, y = blobs(n=12)
    m = model(dtype="float64")
    w = np.where(y == 1, 0.0, 1.0)
    loss_w, g_w = gradients(m, x, y, w)
    keep = y != 1
    loss_k, g_k = gradients(m, x[keep], y[keep])
    # sum over kept samples / N: the kept samples' mean scaled by (kept / N)
    scale = keep.sum() / len(y)
    assert loss_w == pytest.approx(loss_k * scale, rel=1e-12)
    for a, b in zip(g_w, g_k):
        np.testing.assert_allclose(a, b * scale, rtol=1e-10, atol=1e-14)
    # whatever the class-1 samples hold, they do not count
    x2 = x.copy()
    x2[y == 1] = np.random.default_rng(5).normal(scale=10, size=x2[y == 1].shape)
    loss_2, g_2 = gradients(m, x2, y, w)
    assert loss_2 == loss_w
    for a, b in zip(g_w, g_2):
        np.testing.assert_array_equal(a, b)


def test_sample_weights_follow_their_samples_through_shuffling(restore_threads):
    cconv.set_num_threads(1)
    x, y = blobs(n=40)
    w = np.where(y == 2, 0.0, 1.0)
    x2 = x.copy()
    x2[y == 2] = 5.0                 # garbage in the zero-weighted samples changes nothing
    runs = []
    for xx in (x, x2):
        m = model()
        h = m.fit(xx, y, sample_weight=w, batch_size=8, epochs=3, shuffle=True, verbose=0)
        runs.append((h.history["loss"], m.get_weights()))
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_array_equal(a, b)


def test_weighted_losses_by_hand():
    rng = np.random.default_rng(0)
    w = rng.uniform(0, 2, 5)
    p = rng.dirichlet(np.ones(4), 5)
    y = rng.integers(0, 4, 5)
    ce = losses.SoftmaxCrossEntropy()
    value = ce(p, y, sample_weight=w)
    assert value == pytest.approx(np.sum(-np.log(p[np.arange(5), y]) * w) / 5, rel=1e-12)
    g = ce.backward()
    unweighted = losses.SoftmaxCrossEntropy()
    unweighted(p, y)
    np.testing.assert_allclose(g, unweighted.backward() * w[:, None], rtol=1e-12)
    pred, t = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    mse = losses.MeanSquaredError()
    assert mse(pred, t, sample_weight=w) == pytest.approx(np.sum(0.5 * ((pred - t) ** 2).sum(1) * w) / 5)
    np.testing.assert_allclose(mse.backward(), (pred - t) * w[:, None] / 5)
    q, b = rng.uniform(0.05, 0.95, (5, 2)), rng.integers(0, 2, (5, 2)).astype(float)
    bce = losses.BinaryCrossEntropy()
    per = -(b * np.log(q) + (1 - b) * np.log(1 - q)).mean(axis=1)
    assert bce(q, b, sample_weight=w) == pytest.approx(np.sum(per * w) / 5)
    with pytest.raises(ValueError, match="one weight per sample"):
        ce(p, y, sample_weight=w[:4])
    with pytest.raises(ValueError, match=">= 0"):
        ce(p, y, sample_weight=-w)


def test_class_weight_matches_the_hand_computed_weighted_loss():
    x, y = blobs(n=9)
    cw = {0: 0.5, 1: 3.0}                                  # class 2 not listed: weight 1
    m = model(dtype="float64")
    p = m.predict(x)
    expected = np.mean(-np.log(p[np.arange(9), y]) * np.array([0.5, 3.0, 1.0])[y])
    logs = m.train_on_batch(x, y, class_weight=cw)
    assert logs["loss"] == pytest.approx(expected, rel=1e-10)
    # fit with class_weight = fit with the per-sample weights it stands for
    a, b = model(), model()
    ha = a.fit(x, y, class_weight=cw, batch_size=4, epochs=2, verbose=0)
    hb = b.fit(x, y, sample_weight=np.array([0.5, 3.0, 1.0])[y], batch_size=4, epochs=2, verbose=0)
    assert ha.history == hb.history
    onehot = np.eye(3)[y]
    c = model()
    hc = c.fit(x, onehot, class_weight=cw, batch_size=4, epochs=2, verbose=0)
    assert hc.history["loss"] == pytest.approx(ha.history["loss"], rel=1e-6)
    with pytest.raises(ValueError, match="not both"):
        a.fit(x, y, class_weight=cw, sample_weight=np.ones(9), verbose=0)
    with pytest.raises(TypeError, match="class_weight"):
        a.fit(x, y, class_weight=[1, 2], verbose=0)


def test_weights_from_dataset_batches():
    x, y = blobs(n=12)
    w = np.where(y == 0, 2.0, 0.5)
    ds = cconv.data.Dataset.from_arrays(x, y, w).batch(4)
    a, b = model(), model()
    ha = a.fit(ds, epochs=2, verbose=0)
    hb = b.fit(x, y, sample_weight=w, batch_size=4, shuffle=False, epochs=2, verbose=0)
    assert ha.history == hb.history
    assert a.evaluate(ds) == b.evaluate(x, y, sample_weight=w, batch_size=4)


# --------------------------------------------------------------------------- epochs
def test_initial_epoch_and_validation_freq():
    x, y = blobs()
    seen = []
    sched = callbacks.LearningRateScheduler(lambda e: 0.01 * (e + 1))
    rec = callbacks.LambdaCallback(on_epoch_begin=lambda e, logs=None: seen.append(e))
    m = model()
    h = m.fit(x, y, epochs=5, initial_epoch=2, verbose=0, callbacks=[sched, rec])
    assert h.epoch == [2, 3, 4] and seen == [2, 3, 4] and len(h.history["loss"]) == 3
    assert m.optimizer.lr == pytest.approx(0.05)
    m = model()
    h = m.fit(x, y, epochs=6, validation_data=(x, y), validation_freq=2, verbose=0,
              callbacks=[callbacks.EarlyStopping(patience=5)])
    assert len(h.history["loss"]) == 6 and len(h.history["val_loss"]) == 3
    m = model()
    val_epochs = []
    h = m.fit(x, y, epochs=4, validation_data=(x, y), validation_freq=[1, 4], verbose=0,
              callbacks=[callbacks.LambdaCallback(on_epoch_end=lambda e, logs: val_epochs.append(
                  "val_loss" in logs))])
    assert val_epochs == [True, False, False, True]
    with pytest.raises(ValueError, match="initial_epoch and resume"):
        m.fit(x, y, initial_epoch=1, resume="x.npz", verbose=0)
    with pytest.raises(TypeError, match="validation_freq"):
        m.fit(x, y, validation_freq="often", verbose=0)


def test_labels_of_shape_n_by_1():
    x, y = blobs()
    a, b = model(), model()
    ha = a.fit(x, y[:, None], epochs=2, verbose=0)
    hb = b.fit(x, y, epochs=2, verbose=0)
    assert ha.history == hb.history
    assert a.evaluate(x, y[:, None].astype(np.float32)) == b.evaluate(x, y)


# --------------------------------------------------------------------------- metrics
def test_metric_functions_match_scikit_learn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for k_classes, n in ((5, 200), (3, 7), (4, 60)):
        scores = rng.normal(size=(n, k_classes))
        y = rng.integers(0, k_classes, n)
        if k_classes == 4:
            y[y == 3] = 0                                 # a class neither true nor predicted
            scores[:, 3] -= 100
        pred = scores.argmax(1)
        cm = metrics.confusion_matrix(y, scores)
        np.testing.assert_array_equal(cm, sk.confusion_matrix(y, pred, labels=range(k_classes)))
        p, r, f = metrics.precision_recall_f1(cm)
        assert p == pytest.approx(sk.precision_score(y, pred, average="macro", zero_division=0))
        assert r == pytest.approx(sk.recall_score(y, pred, average="macro", zero_division=0))
        assert f == pytest.approx(sk.f1_score(y, pred, average="macro", zero_division=0))
        for k in range(1, k_classes):
            assert metrics.top_k_accuracy(scores, y, k) == pytest.approx(
                sk.top_k_accuracy_score(y, scores, k=k, labels=range(k_classes)))
        assert metrics.top_k_accuracy(scores, np.eye(k_classes)[y], 2) == metrics.top_k_accuracy(scores, y, 2)


def test_compiled_metrics_accumulate_over_batches_like_scikit_learn():
    sk = pytest.importorskip("sklearn.metrics")
    x, y = blobs(n=50, classes=6)
    m = cconv.Sequential([Flatten(), Dense(6, activation="softmax")], input_shape=(6, 6, 2), seed=3)
    m.compile("adam", "categorical_crossentropy",
              metrics=["accuracy", "top_k_accuracy", metrics.TopKAccuracy(2, name="top2"), "precision",
                       "recall", "f1"])
    m.fit(x, y, epochs=2, verbose=0)
    res = m.evaluate(x, y, batch_size=7)                       # 8 batches, the last of 1 sample
    scores = m.predict(x)
    pred = scores.argmax(1)
    assert res["accuracy"] == pytest.approx(sk.accuracy_score(y, pred))
    assert res["top_k_accuracy"] == pytest.approx(sk.top_k_accuracy_score(y, scores, k=5))
    assert res["top2"] == pytest.approx(sk.top_k_accuracy_score(y, scores, k=2))
    assert res["precision"] == pytest.approx(sk.precision_score(y, pred, average="macro", zero_division=0))
    assert res["recall"] == pytest.approx(sk.recall_score(y, pred, average="macro", zero_division=0))
    assert res["f1"] == pytest.approx(sk.f1_score(y, pred, average="macro", zero_division=0))
    h = m.fit(x, y, epochs=1, validation_data=(x, y), verbose=0)
    assert {"f1", "val_f1", "top2", "val_precision"} <= set(h.history)


def test_binary_output_metrics_and_saving(tmp_path):
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)
    m = cconv.Sequential([Dense(1, activation="sigmoid")], input_shape=(3,), seed=0)
    m.compile("adam", "binary_crossentropy", metrics=["accuracy", "precision", "recall", "f1"])
    m.fit(x, y, epochs=3, verbose=0)
    res = m.evaluate(x, y, batch_size=16)
    pred = (m.predict(x)[:, 0] > 0.5).astype(int)
    assert res["f1"] == pytest.approx(sk.f1_score(y, pred, average="macro", zero_division=0))
    assert res["accuracy"] == pytest.approx(sk.accuracy_score(y, pred))
    m.save(tmp_path / "m.npz")
    again = cconv.load_model(tmp_path / "m.npz")
    assert again.evaluate(x, y, batch_size=16) == res


def test_monitoring_a_metric_maximises_it():
    assert callbacks.EarlyStopping(monitor="val_f1").mode == "max"
    assert callbacks.EarlyStopping(monitor="precision").mode == "max"
    assert callbacks.EarlyStopping(monitor="val_loss").mode == "min"
    with pytest.raises(ValueError, match="unknown metric"):
        model().compile("adam", "categorical_crossentropy", metrics=["auc"])
