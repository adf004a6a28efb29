"""Functional models (cconv.Model): graphs with merges, shared layers, several inputs and
outputs, custom layers and blocks; training, gradients, files, pictures, bad input."""
import io

import numpy as np
import pytest

import cconv
from cconv import callbacks, losses, optim, viz
from cconv.layers import (Add, AvgPool2D, BatchNorm2D, Concatenate, Conv2D, Dense, Dropout, Flatten,
                          GlobalAvgPool2D, Layer, MaxPool2D, Multiply, ReLU, Softmax, Subtract)


def residual(h, filters):
    """conv-bn-relu-conv-bn, added to the input, then relu (functional form)."""
    r = ReLU()(BatchNorm2D()(Conv2D(filters, 3, padding="same", use_bias=False)(h)))
    r = BatchNorm2D()(Conv2D(filters, 3, padding="same", use_bias=False)(r))
    return ReLU()(Add()([h, r]))


def digits_resnet(seed=0):
    inp = cconv.Input(shape=(8, 8, 1), name="digit")
    h = Conv2D(16, 3, padding="same", activation="relu")(inp)
    h = residual(residual(h, 16), 16)
    h = Concatenate()([MaxPool2D(2)(h), AvgPool2D(2)(h)])
    out = Dense(10, activation="softmax")(Dropout(0.3)(Flatten()(h)))
    return cconv.Model(inputs=inp, outputs=out, seed=seed)


class Scale(Layer):
    """A learned per-channel scale (the module docstring's example)."""

    def build(self, input_shape):
        self.add_weight("gamma", (input_shape[-1],), initializer="ones")

    def call(self, x, training=False):
        return x * self.params["gamma"], x

    def backward(self, dy, x):
        self.grads["gamma"] += np.sum(dy * x, axis=tuple(range(dy.ndim - 1)))
        return dy * self.params["gamma"]


class Block(Layer):
    """relu(x + conv2(relu(conv1(x)))) as one layer holding three sublayers."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.conv1 = Conv2D(filters, 3, padding="same", activation="relu")
        self.conv2 = Conv2D(filters, 3, padding="same")
        self.out = ReLU()

    def build(self, input_shape):
        self.conv1.build(input_shape)
        self.conv2.build(self.conv1.compute_output_shape(input_shape))
        self.out.build(input_shape)

    def call(self, x, training=False):
        h, s1 = self.conv1.call(x, training)
        h, s2 = self.conv2.call(h, training)
        y, s3 = self.out.call(h + x, training)
        return y, (s1, s2, s3)

    def backward(self, dy, saved):
        s1, s2, s3 = saved
        dz = self.out.backward(dy, s3)
        return self.conv1.backward(self.conv2.backward(dz, s2), s1) + dz

    def compute_output_shape(self, input_shape):
        if input_shape[-1] != self.filters:
            raise ValueError(f"a Block({self.filters}) needs {self.filters} input channels, got {input_shape}")
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


CUSTOM = {"Scale": Scale, "Block": Block}


def weights(model):
    return model.get_weights()


# --------------------------------------------------------------------------- training
def test_residual_network_on_digits_reaches_97_percent():
    """Two residual blocks and a concatenation, trained on scikit-learn's digits."""
    datasets = pytest.importorskip("cconv.datasets")
    pytest.importorskip("sklearn")
    x, y = datasets.load_digits()
    x_train, x_test, y_train, y_test = datasets.train_test_split(x, y, test_size=0.25, seed=0, stratify=True)
    model = digits_resnet(seed=0)
    assert sum(isinstance(l, Add) for l in model.layers) == 2
    assert sum(isinstance(l, Concatenate) for l in model.layers) == 1
    model.compile(optim.Adam(3e-3), "categorical_crossentropy")
    model.fit(x_train, y_train, epochs=8, batch_size=32, verbose=0,
              callbacks=[callbacks.LearningRateScheduler(optim.CosineAnnealingLR(8))])
    result = model.evaluate(x_test, y_test)
    assert result["accuracy"] >= 0.97, result
    proba = model.predict(x_test)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert np.mean(proba.argmax(axis=1) == y_test) == pytest.approx(result["accuracy"])


def test_two_input_model_trains_on_a_task_that_needs_both_inputs():
    rng = np.random.default_rng(0)
    n = 256
    img = rng.normal(0, 1, (n, 6, 6, 1)).astype(np.float32)
    vec = rng.normal(0, 1, (n, 3)).astype(np.float32)
    y = (img.mean(axis=(1, 2, 3)) > 0).astype(int) * 2 + (vec[:, 0] > 0).astype(int)
    a = cconv.Input((6, 6, 1), name="image")
    b = cconv.Input((3,), name="vector")
    h = Flatten()(Conv2D(4, 3, activation="relu")(a))
    out = Dense(4, activation="softmax")(Concatenate()([Dense(16, activation="relu")(h),
                                                         Dense(16, activation="relu")(b)]))
    model = cconv.Model([a, b], out, seed=1)
    model.compile(optim.Adam(1e-2), "categorical_crossentropy")
    h = model.fit([img, vec], y, epochs=30, batch_size=32, verbose=0)
    assert h.history["loss"][-1] < h.history["loss"][0] / 3
    assert model.evaluate([img, vec], y)["accuracy"] > 0.9
    p = model.predict([img, vec])
    np.testing.assert_array_equal(model.predict({"vector": vec, "image": img}), p)     # by input name
    np.testing.assert_array_equal(model.predict([img, vec], batch_size=7), p)
    assert model.input_names == ["image", "vector"] and model.input_shape == [(6, 6, 1), (3,)]


def test_two_outputs_with_loss_weights_train_and_log_per_output():
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, (96, 4)).astype(np.float32)
    label = (x[:, 0] > 0).astype(int)
    target = (x[:, 1:2] * 2).astype(np.float32)
    inp = cconv.Input((4,))
    h = Dense(8, activation="tanh")(inp)
    cls = Dense(2, activation="softmax", name="cls")(h)
    reg = Dense(1, name="reg")(h)
    model = cconv.Model(inp, [cls, reg], seed=0)
    model.compile(optim.Adam(1e-2), {"cls": "categorical_crossentropy", "reg": "mse"}, loss_weights=[1.0, 0.5])
    hist = model.fit(x, {"cls": label, "reg": target}, epochs=20, batch_size=16, verbose=0)
    assert {"loss", "cls_loss", "reg_loss", "cls_accuracy"} <= set(hist.history)
    for t, c, r in zip(hist.history["loss"], hist.history["cls_loss"], hist.history["reg_loss"]):
        assert t == pytest.approx(c + 0.5 * r, rel=1e-9)
    assert hist.history["cls_loss"][-1] < hist.history["cls_loss"][0] / 2
    assert hist.history["reg_loss"][-1] < hist.history["reg_loss"][0] / 2
    res = model.evaluate(x, [label, target])
    assert res["loss"] == pytest.approx(res["cls_loss"] + 0.5 * res["reg_loss"], rel=1e-9)
    p_cls, p_reg = model.predict(x)
    assert p_cls.shape == (96, 2) and p_reg.shape == (96, 1)
    assert res["cls_accuracy"] == pytest.approx(np.mean(p_cls.argmax(axis=1) == label))
    # the weight scales the regression output's gradient: with weight 0 it does not learn
    frozen = cconv.Model.from_config(model.get_config())
    before = frozen.get_layer("reg").params["kernel"].copy()
    frozen.compile(optim.SGD(lr=0.1), ["categorical_crossentropy", "mse"], loss_weights=[1.0, 0.0])
    frozen.train_on_batch(x, [label, target])
    np.testing.assert_array_equal(frozen.get_layer("reg").params["kernel"], before)


# --------------------------------------------------------------------------- gradients
def test_shared_layer_counts_once_and_its_gradient_is_the_sum_of_both_uses():
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (5, 4))
    y = rng.normal(0, 1, (5, 4))
    shared = Dense(4, activation="tanh", name="shared")
    inp = cconv.Input((4,))
    out = shared(shared(inp))                       # the same weights used twice in a row
    model = cconv.Model(inp, out, seed=0, dtype="float64")
    assert model.layers == [shared] and model.count_params() == 4 * 4 + 4
    assert [n for n, _, _ in model.parameters()] == ["shared/kernel", "shared/bias"]
    assert "(shared)" in model.summary(print_fn=lambda s: None)
    model.compile("sgd", "mse")
    report = cconv.gradcheck(model, x, y)
    assert report.ok, str(report)
    # the same gradient as two unshared copies with equal weights, summed
    first, second = Dense(4, activation="tanh"), Dense(4, activation="tanh")
    inp2 = cconv.Input((4,))
    copy = cconv.Model(inp2, second(first(inp2)), seed=0, dtype="float64")
    copy.set_weights(model.get_weights() * 2)
    for m in (model, copy):
        m.forward(x, training=True)
        m.backward(np.ones((5, 4)))
    for key in ("kernel", "bias"):
        np.testing.assert_allclose(shared.grads[key], first.grads[key] + second.grads[key], rtol=1e-12)
        assert not np.allclose(shared.grads[key], first.grads[key])


def test_fan_out_and_merges_have_correct_gradients():
    """A tensor used by three layers (gradients summed), all four merge layers, a shared
    layer on two branches, a skip from the input to the end: finite differences agree."""
    rng = np.random.default_rng(4)
    inp = cconv.Input((5, 5, 2))
    a = Conv2D(3, 3, padding="same", activation="tanh")(inp)
    shared = Conv2D(3, 1)
    b = shared(a)
    c = shared(Conv2D(3, 3, padding="same")(inp))
    d = Multiply()([a, Subtract()([b, c])])
    e = Concatenate()([Add()([a, d, b]), inp])
    out = Dense(3)(GlobalAvgPool2D()(Conv2D(4, 3, activation="tanh")(e)))
    model = cconv.Model(inp, out, seed=5, dtype="float64")
    x = rng.normal(0, 1, (3, 5, 5, 2))
    report = cconv.gradcheck(model, x)
    assert report.ok, str(report)
    assert {r.name for r in report.results} >= {"x", "conv2d/kernel", "conv2d_1/kernel"}
    model.compile("sgd", losses.SoftmaxCrossEntropy(from_logits=True))
    assert cconv.gradcheck(model, x, rng.integers(0, 3, 3)).ok


def test_execution_order_does_not_follow_construction_order():
    """A branch made after the layers that consume it still runs first."""
    inp = cconv.Input((4,))
    late = Dense(4, name="late")
    early = Dense(4, activation="tanh", name="early")
    h = late(inp)                 # built before 'early' but consumed after it
    z = Add()([early(inp), h])
    out = Dense(2)(Multiply()([z, early(h)]))
    model = cconv.Model(inp, out, seed=0, dtype="float64")
    x = np.random.default_rng(5).normal(0, 1, (4, 4))
    manual_h = x @ late.params["kernel"] + late.params["bias"]
    manual_z = np.tanh(x @ early.params["kernel"] + early.params["bias"]) + manual_h
    manual = (manual_z * np.tanh(manual_h @ early.params["kernel"] + early.params["bias"])) @ \
        model.layers[-1].params["kernel"] + model.layers[-1].params["bias"]
    np.testing.assert_allclose(model.predict(x), manual, rtol=1e-12)
    assert cconv.gradcheck(model, x).ok


def test_input_gradient_of_a_two_input_model_matches_finite_differences():
    rng = np.random.default_rng(6)
    a, b = cconv.Input((4, 4, 1)), cconv.Input((3,))
    h = Flatten()(Conv2D(2, 3, activation="tanh")(a))
    out = Dense(3, activation="softmax")(Concatenate()([h, Dense(4, activation="tanh")(b)]))
    model = cconv.Model([a, b], out, seed=0, dtype="float64")
    model.compile("adam", "categorical_crossentropy")
    xa, xb, y = rng.normal(0, 1, (3, 4, 4, 1)), rng.normal(0, 1, (3, 3)), np.array([0, 2, 1])
    before = weights(model)
    ga, gb = model.input_gradient([xa, xb], y)
    eps = 1e-6
    for arr, g in ((xa, ga), (xb, gb)):
        for idx in [tuple(rng.integers(0, s) for s in arr.shape) for _ in range(4)]:
            plus, minus = arr.copy(), arr.copy()
            plus[idx] += eps
            minus[idx] -= eps
            args = [plus, xb] if arr is xa else [xa, plus]
            argm = [minus, xb] if arr is xa else [xa, minus]
            num = (model.evaluate(args, y)["loss"] - model.evaluate(argm, y)["loss"]) / (2 * eps)
            assert g[idx] == pytest.approx(num, rel=1e-5, abs=1e-10)
    for u, v in zip(before, weights(model)):
        np.testing.assert_array_equal(u, v)


# --------------------------------------------------------------------------- custom layers
def test_custom_layer_and_block_follow_the_public_contract(tmp_path):
    rng = np.random.default_rng(7)
    x = rng.normal(0, 1, (4, 6, 6, 3))
    assert cconv.gradcheck(Scale(), x).ok
    assert cconv.gradcheck(Block(3), x).ok
    inp = cconv.Input((6, 6, 3))
    out = Dense(2, activation="softmax")(Flatten()(Scale()(Block(3, name="block")(inp))))
    model = cconv.Model(inp, out, seed=0, dtype="float64")
    names = [n for n, _, _ in model.parameters()]
    assert names[:4] == ["block/conv1/kernel", "block/conv1/bias", "block/conv2/kernel", "block/conv2/bias"]
    assert "scale/gamma" in names
    block = model.get_layer("block")
    assert block.count_params() == 2 * (3 * 3 * 3 * 3 + 3)
    model.compile(optim.SGD(lr=0.1), "categorical_crossentropy")
    k1 = block.conv1.params["kernel"].copy()
    model.train_on_batch(x, np.array([0, 1, 1, 0]))
    assert not np.array_equal(block.conv1.params["kernel"], k1)        # the optimizer found it
    assert cconv.gradcheck(model, x, np.array([0, 1, 1, 0])).ok
    model.save(tmp_path / "custom.npz")
    with pytest.raises(ValueError, match="unknown layer class"):
        cconv.load_model(tmp_path / "custom.npz")
    loaded = cconv.load_model(tmp_path / "custom.npz", custom_objects=CUSTOM)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_layer_used_by_hand_keeps_the_forward_backward_api():
    layer = Scale()
    x = np.random.default_rng(8).normal(0, 1, (2, 3))
    y = layer.forward(x, training=True)
    dx = layer.backward(np.ones_like(y))
    np.testing.assert_array_equal(dx, np.ones_like(x))
    np.testing.assert_allclose(layer.grads["gamma"], x.sum(axis=0))
    layer.forward(x, training=True)
    layer.backward(np.ones_like(y))                 # by hand, grads are overwritten, not summed
    np.testing.assert_allclose(layer.grads["gamma"], x.sum(axis=0))
    with pytest.raises(RuntimeError, match="preceding forward"):
        layer.backward(np.ones_like(y))


# --------------------------------------------------------------------------- files
def rich_model(seed=0):
    """Two inputs, two outputs, merges, a shared layer, BN, dropout, a custom layer and block."""
    img, aux = cconv.Input((6, 6, 2), name="img"), cconv.Input((3,), name="aux")
    h = Block(4)(Conv2D(4, 3, padding="same", activation="relu")(img))
    h = BatchNorm2D()(Scale()(h))
    shared = Dense(5, activation="relu")
    f = Flatten()(MaxPool2D(2)(h))
    z = Concatenate()([shared(Dense(5)(f)), shared(Dense(5)(aux))])
    cls = Dense(3, activation="softmax", name="cls")(Dropout(0.25)(z))
    reg = Dense(1, name="reg")(Subtract()([Dense(1)(z), Dense(1)(aux)]))
    return cconv.Model([img, aux], [cls, reg], seed=seed)


def rich_data(n=24, seed=1):
    rng = np.random.default_rng(seed)
    return ([rng.normal(0, 1, (n, 6, 6, 2)).astype(np.float32), rng.normal(0, 1, (n, 3)).astype(np.float32)],
            [rng.integers(0, 3, n), rng.normal(0, 1, (n, 1)).astype(np.float32)])


def test_graph_model_save_load_gives_identical_predictions_and_training(tmp_path):
    model = rich_model()
    model.compile(optim.Adam(1e-2), ["categorical_crossentropy", "mse"], loss_weights=[1.0, 0.3])
    x, y = rich_data()
    for _ in range(2):
        model.train_on_batch(x, y)
    model.save(tmp_path / "rich.npz")
    loaded = cconv.load_model(tmp_path / "rich.npz", custom_objects=CUSTOM)
    assert type(loaded) is cconv.Model and loaded.get_config() == model.get_config()
    for a, b in zip(model.predict(x), loaded.predict(x)):
        np.testing.assert_array_equal(a, b)
    assert loaded.loss_weights == [1.0, 0.3] and loaded.optimizer.iterations == 2
    # the dropout generators are not in a plain model file: compare one step without dropout
    for m in (model, loaded):
        m.get_layer("dropout").rate = 0.0
        m.train_on_batch(x, y)
    for a, b in zip(weights(model), weights(loaded)):
        np.testing.assert_array_equal(a, b)


def test_graph_checkpoint_resume_is_bit_identical(tmp_path):
    x, y = rich_data(n=40)
    kw = dict(batch_size=8, validation_split=0.25, verbose=0)

    def fresh():
        m = rich_model(seed=3)
        m.compile(optim.Adam(1e-2), ["categorical_crossentropy", "mse"])
        return m

    full = fresh()
    hf = full.fit(x, y, epochs=4, **kw)
    ckpt = tmp_path / "ckpt.npz"
    fresh().fit(x, y, epochs=2, checkpoint=ckpt, **kw)
    resumed = fresh()
    hr = resumed.fit(x, y, epochs=4, checkpoint=ckpt, resume=ckpt, **kw)
    for a, b in zip(weights(full), weights(resumed)):
        np.testing.assert_array_equal(a, b)
    assert hr.history == hf.history
    other = rich_model(seed=3)
    other.compile(optim.Adam(1e-2), "mse")
    with pytest.raises(ValueError, match="x_shape"):
        other.fit([x[0][:20], x[1][:20]], [y[0][:20], y[1][:20]], epochs=4, resume=ckpt, **kw)


def test_sequential_and_model_share_one_file_format(tmp_path):
    seq = cconv.Sequential([Conv2D(3, 3, activation="relu"), Flatten(), Dense(2, activation="softmax")],
                           input_shape=(5, 5, 1), seed=0)
    inp = cconv.Input((5, 5, 1), name="input")
    graph = cconv.Model(inp, seq.layers[2](seq.layers[1](seq.layers[0](inp))), seed=0)
    x = np.random.default_rng(9).normal(0, 1, (3, 5, 5, 1)).astype(np.float32)
    np.testing.assert_array_equal(seq.predict(x), graph.predict(x))
    graph.save(tmp_path / "g.npz")
    seq.load_weights(tmp_path / "g.npz")         # the same layers and weights: they fit
    assert isinstance(cconv.load_model(tmp_path / "g.npz"), cconv.Model)


# --------------------------------------------------------------------------- pictures, attacks
def test_viz_and_adversarial_work_on_a_graph_model(tmp_path):
    pytest.importorskip("PIL")
    rng = np.random.default_rng(10)
    inp = cconv.Input((8, 8, 1))
    h = Conv2D(4, 3, padding="same", activation="relu", name="conv")(inp)
    h = Add()([h, Conv2D(4, 3, padding="same", name="conv_b")(h)])
    out = Dense(3, activation="softmax")(Flatten()(MaxPool2D(2, name="pool")(h)))
    model = cconv.Model(inp, out, seed=0)
    model.compile("adam", "categorical_crossentropy")
    x = rng.random((6, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 3, 6)
    before = weights(model)
    sal = viz.saliency_map(model, x[0], class_index=1)
    assert sal.shape == (8, 8) and sal.max() > 0
    written = viz.plot_feature_maps(model, x[0], tmp_path / "maps")
    assert [p.name for p in written] == ["input.png", "01_conv.png", "02_conv_b.png", "03_pool.png"]
    img = viz.activation_maximization(model, "conv_b", 1, steps=3, jitter=1, blur_every=0)
    assert img.shape == (8, 8, 1) and 0 <= img.min() and img.max() <= 1
    adv = cconv.adversarial.fgsm(model, x, y, eps=0.1)
    assert adv.shape == x.shape and np.abs(adv - x).max() <= 0.1 + 1e-6
    rows = cconv.adversarial.robustness_report(model, x, y, eps_values=(0.0, 0.1), verbose=False)
    assert rows[0][1] == pytest.approx(np.mean(model.predict(x).argmax(axis=1) == y))
    for u, v in zip(before, weights(model)):
        np.testing.assert_array_equal(u, v)
    # the saliency is the gradient of the class logit (the softmax left out)
    logits = cconv.Model(inp, model.layer_output(model.layers[-1]), seed=0)
    g = cconv.gradients.gradient_of(model, x[:1], lambda h: (h[0, 1], np.eye(3)[None, 1]), pre_activation="softmax")[1]
    np.testing.assert_allclose(np.abs(g[0]).max(axis=-1), sal, rtol=1e-5)
    assert logits.final_activation() == "softmax"


# --------------------------------------------------------------------------- bad input
def test_add_of_mismatched_shapes_names_both_shapes_and_layers():
    inp = cconv.Input((8, 8, 1))
    a = Conv2D(16, 3, padding="same", name="left")(inp)
    b = Conv2D(32, 3, padding="same", name="right")(inp)
    with pytest.raises(ValueError) as info:
        Add(name="join")([a, b])
    msg = str(info.value)
    for part in ("'join'", "(None, 8, 8, 16)", "'left'", "(None, 8, 8, 32)", "'right'", "same shape"):
        assert part in msg, msg
    with pytest.raises(ValueError, match=r"along axis -1.*\(None, 8, 8, 16\).*\(None, 4, 4, 16\)"):
        Concatenate()([a, MaxPool2D(2)(a)])


def test_an_output_not_computed_from_the_inputs_is_refused():
    a, b = cconv.Input((3,), name="a"), cconv.Input((3,), name="b")
    out = Dense(2)(Add()([a, b]))
    with pytest.raises(ValueError, match=r"depends on .*Input 'b'.*not in inputs"):
        cconv.Model(a, out)
    with pytest.raises(ValueError, match=r"inputs\[1\].*not connected to any output"):
        cconv.Model([a, b], Dense(2)(a))


def test_an_input_that_is_not_an_Input_is_refused():
    a = cconv.Input((3,))
    h = Dense(4, name="hidden")(a)
    with pytest.raises(TypeError, match=r"inputs\[0\] is .*'hidden'.*not a tensor made by cconv.Input"):
        cconv.Model(h, Dense(2)(h))
    with pytest.raises(TypeError, match=r"inputs must be a symbolic tensor.*got ndarray"):
        cconv.Model(np.zeros((1, 3)), Dense(2)(a))
    with pytest.raises(TypeError, match=r"inputs\[1\] is a ndarray"):
        cconv.Model([a, np.zeros((1, 3))], Dense(2)(a))
    with pytest.raises(TypeError, match=r"outputs\[0\] is a ndarray"):
        cconv.Model(a, [np.zeros(3)])
    with pytest.raises(TypeError, match="symbolic tensor"):
        Dense(2)([a, np.zeros((1, 3))])


def test_a_tensor_of_another_model_is_refused():
    first_in = cconv.Input((3,), name="first_input")
    first = cconv.Model(first_in, Dense(2)(first_in))
    mine = cconv.Input((3,), name="mine")
    with pytest.raises(ValueError, match=r"Input 'first_input'.*not in inputs.*another model"):
        cconv.Model(mine, Dense(2)(Add()([mine, Dense(3)(first.outputs[0])])))


def test_wrong_number_of_arrays_is_refused():
    a, b = cconv.Input((3,), name="a"), cconv.Input((2,), name="b")
    out = Dense(2, activation="softmax")(Concatenate()([a, b]))
    model = cconv.Model([a, b], out)
    model.compile("adam", "categorical_crossentropy")
    xa, xb, y = np.zeros((4, 3)), np.zeros((4, 2)), np.zeros(4, int)
    with pytest.raises(ValueError, match=r"2 inputs \['a', 'b'\], but x is a list of 3 arrays"):
        model.fit([xa, xb, xb], y, verbose=0)
    with pytest.raises(ValueError, match=r"has shape \(4, 3\), but the model takes \(None, 2\)"):
        model.fit([xa, xa], y, verbose=0)
    with pytest.raises(ValueError, match=r"x\[1\] has shape"):
        model.predict([xa, xa])
    with pytest.raises(ValueError, match=r"unknown \['c'\], missing \['b'\]"):
        model.predict({"a": xa, "c": xb})
    with pytest.raises(ValueError, match="different numbers of samples"):
        model.fit([xa, xb[:3]], y, verbose=0)
    two = cconv.Model([a, b], [out, Dense(1)(a)])
    two.compile("adam", ["categorical_crossentropy", "mse"])
    with pytest.raises(ValueError, match=r"2 outputs .*list or dict of 2 arrays"):
        two.fit([xa, xb], y, verbose=0)
    single = cconv.Sequential([Dense(2)], input_shape=(3,))
    single.compile("sgd", "mse")
    with pytest.raises(ValueError, match=r"1 input .*list of 2 arrays.*np.stack"):
        single.fit([xa, xa], np.zeros((4, 2)), verbose=0)


def test_a_softmax_applied_twice_is_refused_at_compile():
    inp = cconv.Input((3,))
    model = cconv.Model(inp, Dense(2, activation="softmax")(inp))
    with pytest.raises(ValueError, match=r"ends with a softmax.*from_logits=True.*again"):
        model.compile("adam", losses.SoftmaxCrossEntropy(from_logits=True))
    layer = cconv.Model(inp, Softmax()(Dense(2)(inp)))
    with pytest.raises(ValueError, match="again"):
        layer.compile("adam", losses.SoftmaxCrossEntropy(from_logits=True))
    logits = cconv.Model(inp, Dense(2)(inp))
    logits.compile("adam", "categorical_crossentropy")      # probabilities expected, logits given
    with pytest.raises(ValueError, match="takes probabilities"):
        logits.fit(np.random.default_rng(0).normal(0, 3, (8, 3)), np.zeros(8, int), verbose=0)


def test_custom_loop_on_a_softmax_model_with_the_default_loss_trains_like_fit():
    """The issue's case: forward gives probabilities, the loss takes them; the same step as
    train_on_batch (which uses the fused logits form)."""
    def make():
        inp = cconv.Input((4,))
        m = cconv.Model(inp, Dense(3, activation="softmax")(Dense(5, activation="tanh")(inp)), seed=2,
                        dtype="float64")
        m.compile(optim.SGD(lr=0.5), "categorical_crossentropy")
        return m

    x = np.random.default_rng(11).normal(0, 1, (16, 4))
    y = np.random.default_rng(12).integers(0, 3, 16)
    a, b = make(), make()
    logs = a.train_on_batch(x, y)
    loss = losses.SoftmaxCrossEntropy()
    probs = b.forward(x, training=True)
    value = loss(probs, y)
    b.backward(loss.backward())
    b.optimizer.step()
    assert value == pytest.approx(logs["loss"], rel=1e-10)
    for u, v in zip(weights(a), weights(b)):
        np.testing.assert_allclose(u, v, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------- description
def test_summary_shows_connections_and_activations_every_call():
    inp = cconv.Input((4,), name="x")
    shared = Dense(4, name="shared")
    out = Add(name="sum")([shared(inp), shared(Dense(4, name="pre")(inp))])
    model = cconv.Model(inp, out)
    buf = io.StringIO()
    text = model.summary(print_fn=buf.write)
    assert text == buf.getvalue() and "Connected to" in text
    lines = {line.split()[0]: line for line in text.splitlines() if line and line[0].isalpha()}
    assert lines["sum"].rstrip().endswith("shared[0], shared[1]")
    assert "(shared)" in text and "call 2" in text
    assert f"Total params: {model.count_params():,}" in text
    acts = model.activations(np.ones((2, 4)))
    assert list(acts) == ["shared", "pre", "shared:1", "sum"]
    np.testing.assert_array_equal(acts["sum"], model.predict(np.ones((2, 4))))


def test_a_sublayer_held_twice_counts_once():
    """A block that keeps its sublayers in a list as well as in attributes: one set of
    weights, one update per step."""
    block = Block(3)
    block.all = [block.conv1, block.conv2]
    block.build((4, 4, 3), 0, np.float64)
    assert [n for n, _, _ in block.parameters()] == ["conv1/kernel", "conv1/bias", "conv2/kernel", "conv2/bias"]
    assert block.count_params() == 2 * (3 * 3 * 3 * 3 + 3)
    inp = cconv.Input((4, 4, 3))
    model = cconv.Model(inp, block(inp), seed=0, dtype="float64")
    model.compile(optim.SGD(lr=0.1), "mse")
    x = np.random.default_rng(13).normal(0, 1, (2, 4, 4, 3))
    k = block.conv1.params["kernel"].copy()
    model.train_on_batch(x, np.zeros_like(x))
    np.testing.assert_allclose(block.conv1.params["kernel"], k - 0.1 * block.conv1.grads["kernel"], rtol=1e-12)


def test_a_layer_both_in_the_model_and_in_a_block_is_refused():
    block = Block(3, name="block")
    inp = cconv.Input((4, 4, 3))
    with pytest.raises(ValueError, match=r"held by both .*updated twice"):
        cconv.Model(inp, block.conv1(block(inp)))


def test_every_layer_kind_serialises_in_a_graph_config(tmp_path):
    """The layers added beside this model code (transposed and depthwise convolutions,
    resampling, padding, cropping, reshaping, global max pool, GELU/SiLU/ELU) and the merge
    layers, in one graph: config round trip, identical predictions after save/load, and
    finite differences."""
    from cconv import layers as L
    inp = cconv.Input((6, 6, 2), name="image")
    a = L.Conv2D(4, 3, padding="same", activation="gelu")(inp)
    b = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, activation="silu")(inp)
    h = L.Concatenate()([a, b])                                              # (6, 6, 8)
    up = L.Conv2DTranspose(4, 3, stride=2, padding="same", activation="elu")(L.MaxPool2D(2)(h))
    crop = L.Cropping2D(((1, 1), (0, 2)))(L.ZeroPadding2D(1)(up))            # (6, 6, 4)
    skip = L.UpSampling2D(2, interpolation="bilinear")(L.AvgPool2D(2)(a))   # (6, 6, 4)
    m = L.Multiply()([L.Subtract()([crop, skip]), L.Add()([a, skip])])
    g = L.GlobalMaxPool2D()(m)
    out = L.Dense(3, activation="softmax")(L.Flatten()(L.Reshape((2, 2))(g)))
    model = cconv.Model(inp, out, seed=0, dtype="float64")
    config = model.get_config()
    import json
    clone = cconv.Model.from_config(json.loads(json.dumps(config)))
    assert clone.get_config() == config
    model.compile("adam", "categorical_crossentropy")
    x = np.random.default_rng(14).normal(0, 1, (4, 6, 6, 2))
    y = np.array([0, 1, 2, 1])
    model.fit(x, y, epochs=2, batch_size=2, verbose=0)
    model.save(tmp_path / "all.npz")
    again = cconv.load_model(tmp_path / "all.npz")
    np.testing.assert_array_equal(model.predict(x), again.predict(x))
    assert cconv.gradcheck(model, x[:2], y[:2], max_elements=10).ok
