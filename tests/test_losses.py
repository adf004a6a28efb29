"""Losses and accuracy: values from the definitions, gradients by finite differences."""
import json

import numpy as np
import pytest

from cconv import losses

from reference import numerical_grad


def check_loss_grad(loss, pred, y, rtol=1e-6, atol=1e-9):
    value = loss(pred, y)
    g = loss.backward()
    assert g.shape == pred.shape and g.dtype == pred.dtype
    num = numerical_grad(lambda: loss(pred, y), pred)
    np.testing.assert_allclose(g, num, rtol=rtol, atol=atol)
    return value, g


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def onehot(y, k):
    return np.eye(k)[y]


RNG = np.random.default_rng(0)
Z = RNG.standard_normal((6, 5)) * 2
Y = np.array([0, 4, 2, 2, 1, 3])


# ---------------------------------------------------------------------------------
# Softmax cross-entropy
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("ls", [0.0, 0.1])
@pytest.mark.parametrize("labels", ["int", "onehot", "soft"])
def test_softmax_cross_entropy_value_and_gradient(ls, labels):
    k = Z.shape[1]
    if labels == "int":
        y = Y
    elif labels == "onehot":
        y = onehot(Y, k)
    else:
        y = softmax(np.random.default_rng(1).standard_normal(Z.shape))
    t = (onehot(Y, k) if labels == "int" else y) * (1 - ls) + ls / k
    expected = np.mean(-np.sum(t * np.log(softmax(Z)), axis=1))
    loss = losses.SoftmaxCrossEntropy(label_smoothing=ls, from_logits=True)
    value, g = check_loss_grad(loss, Z.copy(), y)
    assert value == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(g, (softmax(Z) - t) / len(Z), atol=1e-15)


def test_softmax_cross_entropy_int_and_onehot_agree():
    loss = losses.SoftmaxCrossEntropy(from_logits=True)
    a = loss(Z, Y)
    ga = loss.backward()
    b = loss(Z, onehot(Y, 5))
    np.testing.assert_allclose(loss.backward(), ga, atol=1e-15)
    assert a == pytest.approx(b, rel=1e-13)
    assert loss(Z, Y[:, None]) == pytest.approx(a, rel=1e-13)        # (N, 1) labels


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    z = np.array([[1e4, 0.0, -1e4], [-5e3, 5e3, 0.0]])
    loss = losses.SoftmaxCrossEntropy(from_logits=True)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        v = loss(z, np.array([1, 1]))
        g = loss.backward()
    assert v == pytest.approx(1e4 / 2)        # sample 0 costs 1e4, sample 1 costs 0
    np.testing.assert_allclose(g, [[0.5, -0.5, 0], [0, 0, 0]], atol=1e-300)
    z32 = np.array([[80.0, -80.0, 0.0]], np.float32)
    assert np.isfinite(loss(z32, np.array([1])))


def test_softmax_cross_entropy_from_probabilities():
    p = softmax(Z)
    a = losses.SoftmaxCrossEntropy(from_logits=True)(Z, Y)
    loss = losses.SoftmaxCrossEntropy()                      # probabilities: the default
    b, g = check_loss_grad(loss, p.copy(), Y, rtol=1e-5)
    assert a == pytest.approx(b, rel=1e-10)
    np.testing.assert_allclose(g, -onehot(Y, 5) / p / len(Y), rtol=1e-10)


def test_softmax_cross_entropy_labels_out_of_range():
    loss = losses.SoftmaxCrossEntropy(from_logits=True)
    with pytest.raises(ValueError, match=r"\[0, 5\).*\[5\]"):
        loss(Z, np.array([0, 1, 2, 3, 4, 5]))
    with pytest.raises(ValueError, match=r"-1"):
        loss(Z, np.array([0, 1, 2, 3, 4, -1]))
    with pytest.raises(ValueError, match="whole numbers"):
        loss(Z, np.array([0, 1, 2, 3, 4, 1.5]))
    with pytest.raises(ValueError, match="lengths"):
        loss(Z, Y[:4])
    with pytest.raises(ValueError, match=r"\(6, 5\).*\(6, 4\)"):
        loss(Z, np.zeros((6, 4)))
    with pytest.raises(ValueError, match="2-D"):
        loss(Z[0], 1)
    with pytest.raises(TypeError):
        loss(Z, np.array(["a"] * 6))


def test_float32_gradient_stays_float32():
    z = Z.astype(np.float32)
    for loss, y in ((losses.SoftmaxCrossEntropy(0.1, from_logits=True), Y), (losses.MeanSquaredError(), z * 0),
                    (losses.BinaryCrossEntropy(from_logits=True), (z > 0).astype(np.float32))):
        v = loss(z, y)
        assert isinstance(v, float)
        assert loss.backward().dtype == np.float32


# ---------------------------------------------------------------------------------
# Mean squared error
# ---------------------------------------------------------------------------------
def test_mse_half_sum_convention_and_relation_to_mean():
    rng = np.random.default_rng(2)
    p, t = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    loss = losses.MeanSquaredError()
    v, g = check_loss_grad(loss, p.copy(), t)
    assert v == pytest.approx(np.mean(0.5 * np.sum((t - p) ** 2, axis=1)), rel=1e-13)
    assert v == pytest.approx(3 / 2 * np.mean((t - p) ** 2), rel=1e-13)   # E = (D/2) MSE
    np.testing.assert_allclose(g, (p - t) / 4, rtol=1e-13)


def test_mse_target_forms():
    loss = losses.MeanSquaredError()
    p = np.array([[1.0], [2.0], [4.0]])
    assert loss(p, np.array([1.0, 1.0, 1.0])) == pytest.approx((0 + 1 + 9) / 2 / 3)
    q = np.array([[0.9, 0.1], [0.2, 0.8]])
    assert loss(q, np.array([0, 1])) == pytest.approx(loss(q, np.eye(2)))  # labels one-hot
    with pytest.raises(ValueError, match=r"\(2, 2\).*\(2, 3\)"):
        loss(q, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="lengths"):
        loss(q, np.zeros((3, 2)))


# ---------------------------------------------------------------------------------
# Binary cross-entropy
# ---------------------------------------------------------------------------------
def test_bce_from_logits_value_gradient_and_stability():
    rng = np.random.default_rng(3)
    z = rng.standard_normal((5, 2)) * 3
    t = rng.uniform(0, 1, (5, 2))
    s = 1 / (1 + np.exp(-z))
    loss = losses.BinaryCrossEntropy(from_logits=True)
    v, g = check_loss_grad(loss, z.copy(), t)
    assert v == pytest.approx(np.mean(-(t * np.log(s) + (1 - t) * np.log(1 - s))), rel=1e-12)
    np.testing.assert_allclose(g, (s - t) / z.size, rtol=1e-12)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        big = loss(np.array([[1e4], [-1e4]]), np.array([0.0, 1.0]))
    assert big == pytest.approx(1e4)


def test_bce_from_probabilities_and_bad_targets():
    rng = np.random.default_rng(4)
    p = rng.uniform(0.1, 0.9, (4, 1))
    t = (rng.uniform(size=(4, 1)) > 0.5).astype(float)
    loss = losses.BinaryCrossEntropy(from_logits=False)
    v, _ = check_loss_grad(loss, p.copy(), t, rtol=1e-5)
    assert v == pytest.approx(np.mean(-(t * np.log(p) + (1 - t) * np.log(1 - p))))
    assert loss(p, t[:, 0]) == pytest.approx(v)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        loss(p, t + 1)
    with pytest.raises(ValueError, match="lengths"):
        loss(p, t[:2])


# ---------------------------------------------------------------------------------
# Probabilities or logits, and arguments in Keras's order: loud mistakes
# ---------------------------------------------------------------------------------
def test_cross_entropies_take_probabilities_by_default_and_refuse_logits():
    assert losses.SoftmaxCrossEntropy().from_logits is False
    assert losses.BinaryCrossEntropy().from_logits is False
    assert losses.get("categorical_crossentropy").from_logits is False
    with pytest.raises(ValueError, match=r"takes probabilities.*from_logits=True.*'softmax'"):
        losses.SoftmaxCrossEntropy()(Z, Y)                 # logits given as probabilities
    with pytest.raises(ValueError, match=r"takes probabilities.*'sigmoid'"):
        losses.BinaryCrossEntropy()(Z, (Z > 0).astype(float))


def test_softmax_applied_twice_is_refused():
    """from_logits=True handed rows of probabilities: a softmax would be applied twice."""
    with pytest.raises(ValueError, match="applied twice"):
        losses.SoftmaxCrossEntropy(from_logits=True)(softmax(Z), Y)
    # the same values as probabilities are fine, and equal the logits' loss
    a = losses.SoftmaxCrossEntropy()(softmax(Z), Y)
    assert a == pytest.approx(losses.SoftmaxCrossEntropy(from_logits=True)(Z, Y), rel=1e-10)


@pytest.mark.parametrize("loss", [losses.SoftmaxCrossEntropy(), losses.SoftmaxCrossEntropy(from_logits=True),
                                  losses.MeanSquaredError(), losses.BinaryCrossEntropy()])
def test_labels_passed_as_predictions_raise(loss):
    """Keras's loss(y_true, y_pred) order into cconv's loss(pred, y)."""
    p = softmax(Z)
    labels = Y if not isinstance(loss, losses.BinaryCrossEntropy) else (Y > 2).astype(np.int64)[:, None]
    pred = p if not isinstance(loss, losses.BinaryCrossEntropy) else p[:, :1]
    with pytest.raises(TypeError, match=r"looks like labels.*loss\(pred, y\).*y_true, y_pred"):
        loss(labels, pred)


def test_one_hot_rows_passed_as_predictions_raise():
    with pytest.raises(ValueError, match="look swapped"):
        losses.SoftmaxCrossEntropy()(onehot(Y, 5), softmax(Z))


def test_losses_answer_for_themselves():
    """What a model asks a loss: the activation it absorbs, its logits form, target checks,
    accuracy threshold."""
    ce, bce, mse = losses.SoftmaxCrossEntropy(0.1), losses.BinaryCrossEntropy(), losses.MeanSquaredError()
    assert (ce.fuses_with, bce.fuses_with, mse.fuses_with) == ("softmax", "sigmoid", None)
    fused = ce.with_logits()
    assert fused.from_logits and fused.label_smoothing == 0.1 and not ce.from_logits
    with pytest.raises(TypeError, match="logits"):
        mse.with_logits()
    assert ce.check_target(np.array([0, 2, 1.0]), (3,)).dtype == np.int64
    with pytest.raises(ValueError, match=r"3 output classes.*\[3\]"):
        ce.check_target(np.array([0, 3]), (3,))
    assert mse.check_target(np.zeros(4), (1,)).shape == (4, 1)
    z = np.array([[0.3], [-0.2]])
    t = np.array([1, 1])
    assert bce.with_logits().accuracy(z, t) == 0.5          # threshold 0 on logits
    assert bce.accuracy(np.array([[0.7], [0.4]]), t) == 0.5  # 0.5 on probabilities
    assert mse.accuracy(np.zeros((2, 3, 3)), np.zeros((2, 3, 3))) is None


# ---------------------------------------------------------------------------------
# Common API
# ---------------------------------------------------------------------------------
def test_backward_before_call():
    with pytest.raises(RuntimeError, match="loss"):
        losses.MeanSquaredError().backward()


@pytest.mark.parametrize("name,cls", [
    ("categorical_crossentropy", losses.SoftmaxCrossEntropy),
    ("softmax_cross_entropy", losses.SoftmaxCrossEntropy),
    ("mse", losses.MeanSquaredError), ("mean_squared_error", losses.MeanSquaredError),
    ("binary_crossentropy", losses.BinaryCrossEntropy), ("MSE", losses.MeanSquaredError)])
def test_get_by_name(name, cls):
    assert type(losses.get(name)) is cls


def test_get_objects_configs_and_unknown_names():
    obj = losses.SoftmaxCrossEntropy(label_smoothing=0.2)
    assert losses.get(obj) is obj
    assert isinstance(losses.get(losses.MeanSquaredError), losses.MeanSquaredError)
    d = json.loads(json.dumps(losses.serialize(obj)))
    clone = losses.get(d)
    assert clone.get_config() == {"label_smoothing": 0.2, "from_logits": False}
    assert repr(clone) == "SoftmaxCrossEntropy(label_smoothing=0.2)"
    with pytest.raises(ValueError, match="hinge"):
        losses.get("hinge")
    with pytest.raises(ValueError, match="label_smoothing"):
        losses.SoftmaxCrossEntropy(label_smoothing=1.0)


def test_accuracy():
    pred = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    assert losses.accuracy(pred, np.array([1, 0, 0, 0])) == 0.75
    assert losses.accuracy(pred, np.eye(2)[[1, 0, 0, 1]]) == 0.5
    single = np.array([[0.7], [0.2], [0.6]])
    assert losses.accuracy(single, np.array([1, 0, 0])) == pytest.approx(2 / 3)
    assert losses.accuracy(np.array([[2.0], [-1.0]]), np.array([1, 1]), threshold=0.0) == 0.5
    with pytest.raises(ValueError, match="lengths"):
        losses.accuracy(pred, np.array([1, 0]))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        losses.accuracy(pred, np.array([1, 0, 2, 0]))


@pytest.mark.parametrize("y, match", [
    (5 * np.eye(4) - 3, r"\[0, 1\]"),                  # before: accepted, the loss went negative
    (np.full((4, 4), 0.5), "sum to 1"),
    (np.eye(4) * 2, r"\[0, 1\]"),
    (np.where(np.eye(4) > 0, np.nan, 0.0), r"\[0, 1\]"),
    (np.zeros((4, 4)), "row 0 sums to 0"),
])
def test_cross_entropy_refuses_targets_that_are_not_distributions(y, match):
    logits = np.random.default_rng(0).standard_normal((4, 4))
    for loss in (losses.SoftmaxCrossEntropy(from_logits=True), losses.SoftmaxCrossEntropy()):
        with pytest.raises(ValueError, match=match):
            loss(logits if loss.from_logits else np.full((4, 4), 0.25), y)


def test_cross_entropy_accepts_soft_targets_that_sum_to_one():
    rng = np.random.default_rng(0)
    soft = rng.random((6, 5)).astype(np.float32)
    soft /= soft.sum(axis=1, keepdims=True)
    loss = losses.SoftmaxCrossEntropy(from_logits=True)
    assert loss(rng.standard_normal((6, 5)).astype(np.float32), soft) > 0
    smoothed = np.eye(5)[[0, 1, 2, 3, 4, 0]] * 0.9 + 0.1 / 5
    assert loss(rng.standard_normal((6, 5)), smoothed) > 0


@pytest.mark.parametrize("classes, activation, loss", [
    (1, "softmax", "categorical_crossentropy"), (3, "softmax", "categorical_crossentropy"),
    (1, "sigmoid", "binary_crossentropy"), (1, "softmax", "binary_crossentropy")])
def test_evaluate_accuracy_agrees_with_predict(classes, activation, loss):
    """The accuracy evaluate and fit report is what predict's outputs give. Before: a one-output
    softmax with categorical cross-entropy (all labels 0) predicted 1.0 everywhere, yet its
    accuracy was 0.375 or 0.625 (the metric thresholded the logits as a binary output);
    Keras's categorical accuracy (argmax) gives 1.0."""
    import cconv
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = rng.integers(0, classes, 64) if classes > 1 else np.zeros(64, int)
    model = cconv.Sequential([cconv.layers.Dense(classes, activation=activation)], input_shape=(4,), seed=0)
    model.compile("sgd", loss)
    pred = model.predict(x)
    if loss == "categorical_crossentropy":
        expected = np.mean(np.argmax(pred, axis=1) == y)
    else:
        expected = np.mean((pred[:, 0] > 0.5) == (y > 0.5))
    assert model.evaluate(x, y)["accuracy"] == pytest.approx(expected)
    assert model.fit(x, y, epochs=1, verbose=0, shuffle=False).history["accuracy"][0] == pytest.approx(expected)
    if (classes, activation) == (1, "softmax") and loss == "categorical_crossentropy":
        assert expected == 1.0


def test_softmax_cross_entropy_accuracy_is_categorical_for_one_column():
    loss = losses.SoftmaxCrossEntropy(from_logits=True)
    z = np.array([[-3.0], [2.0], [0.5]])
    assert loss.accuracy(z, np.zeros(3, int)) == 1.0
    assert losses.accuracy(z, np.zeros(3, int), threshold=0.0) == pytest.approx(1 / 3)   # a binary logit
