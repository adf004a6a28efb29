"""Layers and initializers: gradients by finite differences, shapes, configs, bad input."""
import json

import numpy as np
import pytest

from cconv import initializers, layers as L

from reference import numerical_grad


def sample_indices(size, rng, max_entries=48):
    """Every index of a small array, a random subset of a larger one."""
    if size <= max_entries:
        return np.arange(size)
    return np.sort(rng.choice(size, max_entries, replace=False))


def check_layer_grads(layer, x, training=True, seed=0, rtol=1e-6, atol=1e-8):
    """Compare backward's dx and every parameter gradient with finite differences of
    ``sum(forward(x) * r)`` for a fixed random ``r`` (at up to 48 entries per array)."""
    rng = np.random.default_rng(seed)
    y = layer.forward(x, training=training, cache=True)
    r = rng.standard_normal(y.shape)
    dx = layer.backward(r)
    grads = {k: v.copy() for k, v in layer.grads.items()}

    def f():
        return float(np.sum(layer.forward(x, training=training) * r))

    if layer.state:          # batch norm: training forwards move the running statistics
        saved = {k: v.copy() for k, v in layer.state.items()}
    idx = sample_indices(x.size, rng)
    np.testing.assert_allclose(dx.reshape(-1)[idx], numerical_grad(f, x, idx), rtol=rtol,
                               atol=atol, err_msg="dx")
    for k, p in layer.params.items():
        idx = sample_indices(p.size, rng)
        np.testing.assert_allclose(grads[k].reshape(-1)[idx], numerical_grad(f, p, idx),
                                   rtol=rtol, atol=atol, err_msg=f"grad of {k}")
    if layer.state:
        for k, v in saved.items():
            layer.state[k][...] = v
    return dx


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# ---------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------
GRAD_CASES = [
    ("conv valid", lambda: L.Conv2D(4, 3), (2, 6, 5, 3)),
    ("conv same stride2 tanh", lambda: L.Conv2D(3, 3, stride=2, padding="same", activation="tanh"),
     (2, 7, 6, 2)),
    ("conv dilation2 pad1 sigmoid", lambda: L.Conv2D(2, (2, 3), dilation=2, padding=1,
                                                   activation="sigmoid"), (1, 6, 7, 3)),
    ("conv groups2 nobias", lambda: L.Conv2D(4, 3, groups=2, use_bias=False, padding=(1, 0)),
     (2, 5, 5, 4)),
    ("conv depthwise relu", lambda: L.Conv2D(3, 2, groups=3, activation="relu"), (2, 4, 4, 3)),
    ("conv 1x1 leaky", lambda: L.Conv2D(5, 1, activation=L.LeakyReLU(0.2)), (2, 3, 3, 3)),
    ("conv softmax act", lambda: L.Conv2D(3, 2, activation="softmax"), (2, 4, 4, 2)),
    ("dense", lambda: L.Dense(5), (3, 7)),
    ("dense sigmoid nobias", lambda: L.Dense(4, activation="sigmoid", use_bias=False), (3, 6)),
    ("dense softmax", lambda: L.Dense(4, activation="softmax"), (3, 5)),
    ("maxpool", lambda: L.MaxPool2D(2), (2, 6, 6, 3)),
    ("maxpool 3 stride2 pad1", lambda: L.MaxPool2D(3, stride=2, padding=1), (2, 7, 6, 2)),
    ("avgpool", lambda: L.AvgPool2D(2), (2, 6, 4, 3)),
    ("avgpool 3 stride1 pad1", lambda: L.AvgPool2D(3, stride=1, padding=1), (2, 5, 5, 2)),
    ("global avg", lambda: L.GlobalAvgPool2D(), (2, 3, 4, 5)),
    ("flatten", lambda: L.Flatten(), (2, 3, 4, 2)),
    ("batchnorm 4d", lambda: L.BatchNorm2D(), (3, 4, 3, 2)),
    ("batchnorm 2d", lambda: L.BatchNorm2D(), (6, 4)),
    ("relu", lambda: L.ReLU(), (3, 4, 5)),
    ("leaky relu", lambda: L.LeakyReLU(0.1), (3, 4, 5)),
    ("sigmoid", lambda: L.Sigmoid(), (3, 6)),
    ("tanh", lambda: L.Tanh(), (3, 6)),
    ("softmax", lambda: L.Softmax(), (3, 6)),
    ("softmax axis1", lambda: L.Softmax(axis=1), (2, 4, 3)),
    ("dropout eval", lambda: L.Dropout(0.5), (3, 4)),
]


@pytest.mark.parametrize("name,make,shape", GRAD_CASES, ids=[c[0] for c in GRAD_CASES])
def test_backward_matches_finite_differences(name, make, shape):
    layer = make()
    layer.build(shape[1:], np.random.default_rng(1), np.float64)
    for k, p in layer.params.items():       # move batch-norm's gamma/beta off 1/0
        p[...] = np.random.default_rng(2).standard_normal(p.shape)
    x = rand(*shape, seed=3)
    training = name != "dropout eval"
    dx = check_layer_grads(layer, x, training=training)
    assert dx.shape == x.shape and dx.dtype == np.float64


@pytest.mark.parametrize("momentum", [0.9, 0.5])
def test_batchnorm_inference_mode_gradient(momentum):
    bn = L.BatchNorm2D(momentum=momentum)
    bn.build((3, 3, 4), np.random.default_rng(0), np.float64)
    rng = np.random.default_rng(1)
    bn.params["gamma"][...] = rng.standard_normal(4)
    bn.params["beta"][...] = rng.standard_normal(4)
    bn.state["running_mean"][...] = rng.standard_normal(4)
    bn.state["running_var"][...] = rng.uniform(0.5, 2.0, 4)
    check_layer_grads(bn, rand(2, 3, 3, 4, seed=4), training=False)


def test_relu_gradient_is_zero_for_negative_inputs():
    x = np.array([[-2.0, -0.5, 0.0, 0.5, 3.0]])
    relu = L.ReLU()
    y = relu.forward(x, training=True)
    np.testing.assert_array_equal(y, [[0, 0, 0, 0.5, 3.0]])
    np.testing.assert_array_equal(relu.backward(np.ones_like(x)), [[0, 0, 0, 1, 1]])


def test_fused_activation_is_the_same_as_a_separate_layer():
    x = rand(2, 5, 5, 3)
    conv = L.Conv2D(4, 3, activation="relu")
    conv.build(x.shape[1:], np.random.default_rng(0), np.float64)
    plain = L.Conv2D(4, 3)
    plain.build(x.shape[1:], np.random.default_rng(0), np.float64)
    relu = L.ReLU()
    y1 = conv.forward(x, training=True)
    y2 = relu.forward(plain.forward(x, training=True), training=True)
    np.testing.assert_array_equal(y1, y2)
    dy = rand(*y1.shape, seed=1)
    np.testing.assert_allclose(conv.backward(dy), plain.backward(relu.backward(dy)))
    np.testing.assert_allclose(conv.grads["kernel"], plain.grads["kernel"])


def test_apply_activation_false_gives_pre_activation_and_skips_it_in_backward():
    x = rand(3, 6)
    d = L.Dense(4, activation="softmax")
    d.build((6,), np.random.default_rng(0), np.float64)
    z = d.forward(x, training=True, apply_activation=False)
    np.testing.assert_allclose(z, x @ d.params["kernel"] + d.params["bias"])
    dz = rand(3, 4, seed=1)
    np.testing.assert_allclose(d.backward(dz), dz @ d.params["kernel"].T)
    np.testing.assert_allclose(d.grads["kernel"], x.T @ dz)
    probs = d.forward(x)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)


def test_need_input_grad_false_returns_none_but_fills_grads():
    for layer in (L.Conv2D(2, 3), L.Dense(3), L.BatchNorm2D(), L.MaxPool2D(), L.ReLU()):
        shape = (2, 3) if isinstance(layer, L.Dense) else (2, 4, 4, 3)
        layer.need_input_grad = False
        y = layer.forward(rand(*shape), training=True)
        before = {k: v.copy() for k, v in layer.grads.items()}
        assert layer.backward(np.ones_like(y)) is None
        for k in layer.grads:
            assert not np.array_equal(layer.grads[k], before[k])


def test_backward_overwrites_grads_instead_of_accumulating():
    d = L.Dense(3)
    x = rand(4, 5)
    for _ in range(2):
        y = d.forward(x, training=True)
        d.backward(np.ones_like(y))
    np.testing.assert_allclose(d.grads["kernel"], x.T @ np.ones((4, 3)))
    np.testing.assert_allclose(d.grads["bias"], np.full(3, 4.0))


def test_backward_needs_a_cached_forward():
    d = L.Dense(3)
    d.forward(rand(2, 4))                 # inference: nothing cached
    with pytest.raises(RuntimeError, match="forward"):
        d.backward(np.ones((2, 3)))
    y = d.forward(rand(2, 4), training=True)
    d.backward(np.ones_like(y))
    with pytest.raises(RuntimeError):     # the cache is released by backward
        d.backward(np.ones_like(y))


def test_backward_rejects_dy_of_the_wrong_shape():
    conv = L.Conv2D(2, 3, name="c1")
    conv.forward(rand(2, 5, 5, 1), training=True)
    with pytest.raises(ValueError, match=r"c1.*\(2, 3, 3, 2\).*\(2, 3, 3, 3\)"):
        conv.backward(np.ones((2, 3, 3, 3)))


# ---------------------------------------------------------------------------------
# Forward semantics
# ---------------------------------------------------------------------------------
def test_dense_and_conv_forward_from_the_definition():
    x = rand(2, 4, 5, 3)
    conv = L.Conv2D(2, (2, 3), stride=(1, 2), padding=1)
    conv.build(x.shape[1:], np.random.default_rng(0), np.float64)
    w, b = conv.params["kernel"], conv.params["bias"]
    b[...] = [0.5, -1.0]
    y = conv.forward(x)
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    ref = np.zeros(y.shape)
    for i in range(y.shape[1]):
        for j in range(y.shape[2]):
            patch = xp[:, i:i + 2, 2 * j:2 * j + 3, :]
            ref[:, i, j, :] = np.tensordot(patch, w, axes=([1, 2, 3], [0, 1, 2])) + b
    np.testing.assert_allclose(y, ref, rtol=1e-12)


def test_flatten_keeps_nhwc_order():
    x = np.arange(2 * 2 * 3 * 4, dtype=np.float64).reshape(2, 2, 3, 4)
    y = L.Flatten().forward(x)
    np.testing.assert_array_equal(y, x.reshape(2, -1))
    assert y[0, 1] == x[0, 0, 0, 1]        # channels vary fastest


def test_global_avg_pool_and_pools_values():
    x = rand(2, 4, 4, 3)
    np.testing.assert_allclose(L.GlobalAvgPool2D().forward(x), x.mean(axis=(1, 2)))
    np.testing.assert_allclose(L.MaxPool2D(2).forward(x),
                               x.reshape(2, 2, 2, 2, 2, 3).max(axis=(2, 4)))
    np.testing.assert_allclose(L.AvgPool2D(2).forward(x),
                               x.reshape(2, 2, 2, 2, 2, 3).mean(axis=(2, 4)))


def test_activation_values():
    x = np.array([[-800.0, -1.0, 0.0, 2.0, 800.0]])
    sig = L.Sigmoid().forward(x)          # no overflow warning, exact limits
    np.testing.assert_allclose(sig, [[0, 1 / (1 + np.e), 0.5, 1 / (1 + np.exp(-2)), 1]],
                               rtol=1e-14, atol=1e-300)
    np.testing.assert_allclose(L.Tanh().forward(x), np.tanh(x))
    np.testing.assert_allclose(L.LeakyReLU(0.1).forward(x), np.where(x > 0, x, 0.1 * x))
    s = L.Softmax().forward(x)            # stable for huge logits
    assert np.all(np.isfinite(s))
    np.testing.assert_allclose(s, [[0, 0, 0, 0, 1]], atol=1e-300)


def test_layers_do_not_modify_their_input():
    cases = [(L.ReLU(), (2, 5)), (L.LeakyReLU(), (2, 5)), (L.Sigmoid(), (2, 5)),
             (L.Tanh(), (2, 5)), (L.Softmax(), (2, 5)), (L.Dropout(0.5), (2, 5)),
             (L.BatchNorm2D(), (4, 5)), (L.Conv2D(2, 1, activation="relu"), (1, 2, 2, 5)),
             (L.Dense(3, activation="tanh"), (2, 5))]
    for layer, shape in cases:
        x = rand(*shape)
        x0 = x.copy()
        y = layer.forward(x, training=True)
        dy = rand(*y.shape, seed=5)
        dy0 = dy.copy()
        layer.backward(dy)
        np.testing.assert_array_equal(x, x0, err_msg=repr(layer))
        np.testing.assert_array_equal(dy, dy0, err_msg=repr(layer))


def test_float32_layers_compute_in_float32_and_cast_other_inputs():
    conv = L.Conv2D(3, 3)
    conv.build((5, 5, 2), np.random.default_rng(0), np.float32)
    assert conv.params["kernel"].dtype == np.float32
    y = conv.forward(rand(2, 5, 5, 2), training=True)      # float64 input
    assert y.dtype == np.float32
    dx = conv.backward(np.ones(y.shape))
    assert dx.dtype == np.float32 and conv.grads["kernel"].dtype == np.float32
    r = L.ReLU().forward(np.ones((2, 3), np.float32))
    assert r.dtype == np.float32
    u = L.MaxPool2D().forward(np.ones((1, 4, 4, 1), np.uint8))
    assert u.dtype == np.float32


def test_unbuilt_layer_builds_from_its_first_input():
    d = L.Dense(4)
    assert not d.built and d.count_params() == 0
    d.forward(np.ones((2, 3)))
    assert d.built and d.input_shape == (3,) and d.count_params() == 16
    assert d.params["kernel"].shape == (3, 4)


# ---------------------------------------------------------------------------------
# Dropout
# ---------------------------------------------------------------------------------
def test_dropout_identity_at_inference():
    x = rand(10, 10)
    d = L.Dropout(0.5, seed=0)
    np.testing.assert_array_equal(d.forward(x), x)
    np.testing.assert_array_equal(d.forward(x, training=False), x)


def test_dropout_training_zeroes_a_rate_fraction_and_scales_survivors():
    x = np.ones((200, 100))
    d = L.Dropout(0.3, seed=1)
    y = d.forward(x, training=True)
    kept = y != 0
    assert abs(kept.mean() - 0.7) < 0.02
    np.testing.assert_allclose(y[kept], 1 / 0.7)
    dy = rand(200, 100)
    np.testing.assert_allclose(d.backward(dy), dy * y)      # the same mask, same scale


def test_dropout_is_reproducible():
    x = np.ones((4, 50))
    a = L.Dropout(0.5, seed=7).forward(x, training=True)
    b = L.Dropout(0.5, seed=7).forward(x, training=True)
    c = L.Dropout(0.5, seed=8).forward(x, training=True)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # without a seed, the generator comes from the rng given to build()
    d1, d2 = L.Dropout(0.5), L.Dropout(0.5)
    d1.build((50,), np.random.default_rng(3))
    d2.build((50,), np.random.default_rng(3))
    np.testing.assert_array_equal(d1.forward(x, training=True), d2.forward(x, training=True))


def test_dropout_rate_zero_is_identity_in_training():
    x = rand(3, 4)
    d = L.Dropout(0.0)
    np.testing.assert_array_equal(d.forward(x, training=True), x)
    np.testing.assert_array_equal(d.backward(np.ones((3, 4))), np.ones((3, 4)))


# ---------------------------------------------------------------------------------
# Batch norm
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(8, 3, 3, 4), (16, 4)])
def test_batchnorm_running_statistics(shape):
    bn = L.BatchNorm2D(momentum=0.8)
    bn.build(shape[1:], np.random.default_rng(0), np.float64)
    x = rand(*shape) * 3 + 2
    axes = tuple(range(len(shape) - 1))
    y = bn.forward(x, training=True)
    mean, var = x.mean(axis=axes), x.var(axis=axes)
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-10)
    np.testing.assert_allclose(bn.state["running_mean"], 0.2 * mean)
    np.testing.assert_allclose(bn.state["running_var"], 0.8 * 1 + 0.2 * var)
    bn.forward(x, training=True)
    np.testing.assert_allclose(bn.state["running_mean"], 0.8 * 0.2 * mean + 0.2 * mean)
    # inference uses the running statistics
    rm, rv = bn.state["running_mean"], bn.state["running_var"]
    np.testing.assert_allclose(bn.forward(x), (x - rm) / np.sqrt(rv + 1e-5), rtol=1e-10)
    assert bn.count_params() == 4 * shape[-1]
    assert sorted(bn.state) == ["running_mean", "running_var"]


def test_batchnorm_inference_does_not_move_running_statistics():
    bn = L.BatchNorm2D()
    x = rand(4, 2, 2, 3)
    bn.forward(x, training=False)
    np.testing.assert_array_equal(bn.state["running_mean"], 0)
    np.testing.assert_array_equal(bn.state["running_var"], 1)


# ---------------------------------------------------------------------------------
# Shapes, configs, repr
# ---------------------------------------------------------------------------------
SHAPE_CASES = [
    (lambda: L.Conv2D(8, 3), (9, 7, 3)),
    (lambda: L.Conv2D(8, 3, stride=2, padding="same"), (9, 7, 3)),
    (lambda: L.Conv2D(4, (3, 1), stride=(2, 1), padding=((1, 0), (2, 1)), dilation=(1, 2)),
     (8, 6, 2)),
    (lambda: L.Conv2D(6, 2, groups=3), (5, 5, 3)),
    (lambda: L.MaxPool2D(), (9, 7, 3)),
    (lambda: L.MaxPool2D(3, stride=2, padding=1), (9, 7, 3)),
    (lambda: L.AvgPool2D((2, 3), stride=1), (9, 7, 3)),
    (lambda: L.AvgPool2D(2, padding="same"), (9, 7, 3)),
    (lambda: L.GlobalAvgPool2D(), (9, 7, 3)),
    (lambda: L.Flatten(), (9, 7, 3)),
    (lambda: L.Dense(5), (12,)),
    (lambda: L.BatchNorm2D(), (4, 4, 3)),
    (lambda: L.Dropout(0.2), (4, 4, 3)),
    (lambda: L.Softmax(), (6,)),
]


@pytest.mark.parametrize("make,in_shape", SHAPE_CASES)
def test_output_shape_matches_forward(make, in_shape):
    layer = make()
    y = layer.forward(rand(2, *in_shape), training=True)
    assert y.shape == (2,) + layer.output_shape(in_shape)


@pytest.mark.parametrize("make,in_shape", SHAPE_CASES)
def test_config_round_trip_through_json(make, in_shape):
    layer = make()
    layer.name = "my_layer"
    d = json.loads(json.dumps(L.serialize(layer)))
    clone = L.deserialize(d)
    assert type(clone) is type(layer)
    assert clone.get_config() == layer.get_config()
    assert repr(clone) == repr(layer)
    # same construction + same seed -> same weights and same outputs
    layer.build(in_shape, np.random.default_rng(5), np.float64)
    clone.build(in_shape, np.random.default_rng(5), np.float64)
    for k in layer.params:
        np.testing.assert_array_equal(layer.params[k], clone.params[k])
    x = rand(2, *in_shape)
    np.testing.assert_array_equal(layer.forward(x), clone.forward(x))


def test_config_keeps_custom_activation_and_initializer():
    conv = L.Conv2D(4, 3, activation=L.LeakyReLU(0.2), kernel_initializer="glorot_normal")
    cfg = json.loads(json.dumps(conv.get_config()))
    assert cfg["kernel_initializer"] == "glorot_normal"
    clone = L.Conv2D.from_config(cfg)
    assert isinstance(clone.activation, L.LeakyReLU) and clone.activation.alpha == 0.2
    assert clone.kernel_initializer is initializers.glorot_normal
    assert L.Dense(3, activation="relu").get_config()["activation"] == "relu"


def test_repr_shows_settings_that_differ_from_defaults():
    assert repr(L.Conv2D(8, 3)) == "Conv2D(8, (3, 3))"
    assert repr(L.Conv2D(8, 3, padding="same", activation="relu")) == \
        "Conv2D(8, (3, 3), padding='same', activation='relu')"
    assert repr(L.Dense(10, name="out")) == "Dense(10, name='out')"
    assert repr(L.MaxPool2D()) == "MaxPool2D()"
    assert repr(L.Dropout(0.5)) == "Dropout(0.5)"
    assert repr(L.BatchNorm2D(momentum=0.99)) == "BatchNorm2D(momentum=0.99)"


def test_count_params():
    conv = L.Conv2D(8, 3, groups=2)
    conv.build((5, 5, 4), np.random.default_rng(0))
    assert conv.count_params() == 3 * 3 * 2 * 8 + 8
    assert L.Conv2D(8, 3, use_bias=False).count_params() == 0     # not built yet
    d = L.Dense(10)
    d.build((20,), np.random.default_rng(0))
    assert d.count_params() == 210
    assert set(d.params) == set(d.grads) == {"kernel", "bias"}
    assert all(d.params[k].shape == d.grads[k].shape for k in d.params)


def test_get_activation():
    assert isinstance(L.get_activation("relu"), L.ReLU)
    assert isinstance(L.get_activation("LeakY_ReLU"), L.LeakyReLU)
    assert L.get_activation(None) is None and L.get_activation("linear") is None
    s = L.Softmax()
    assert L.get_activation(s) is s
    with pytest.raises(ValueError, match="mish"):
        L.get_activation("mish")
    with pytest.raises(ValueError, match="mish"):
        L.Dense(3, activation="mish")


def test_deserialize_unknown_class():
    with pytest.raises(ValueError, match="Conv3D"):
        L.deserialize({"class_name": "Conv3D", "config": {}})
    with pytest.raises(ValueError):
        L.deserialize({"config": {}})
    with pytest.raises(ValueError, match="Dense"):
        L.deserialize({"class_name": "Dense", "config": {"units": 3, "bogus": 1}})


# ---------------------------------------------------------------------------------
# Bad hyper-parameters and bad inputs
# ---------------------------------------------------------------------------------
BAD_HYPER = [
    (lambda: L.Conv2D(0, 3), ValueError, "filters.*0"),
    (lambda: L.Conv2D(-4, 3), ValueError, "filters.*-4"),
    (lambda: L.Conv2D(4, 0), ValueError, "kernel_size.*0"),
    (lambda: L.Conv2D(4, 3, stride=(0, 1)), ValueError, r"stride.*\(0, 1\)"),
    (lambda: L.Conv2D(4, 3, dilation=-1), ValueError, "dilation.*-1"),
    (lambda: L.Conv2D(4, 3, padding="full"), ValueError, "full"),
    (lambda: L.Conv2D(4, 3, padding=-1), ValueError, "padding.*-1"),
    (lambda: L.Conv2D(4, 3, groups=3), ValueError, "groups"),
    (lambda: L.Conv2D(4.5, 3), TypeError, "4.5"),
    (lambda: L.Conv2D(4, 3, kernel_initializer="magic"), ValueError, "magic"),
    (lambda: L.Dense(0), ValueError, "units.*0"),
    (lambda: L.Dense("10"), TypeError, "units"),
    (lambda: L.MaxPool2D(0), ValueError, "pool_size.*0"),
    (lambda: L.AvgPool2D(2, stride=0), ValueError, "stride.*0"),
    (lambda: L.Dropout(1.0), ValueError, r"rate.*1\.0"),
    (lambda: L.Dropout(-0.1), ValueError, r"rate.*-0\.1"),
    (lambda: L.Dropout(float("nan")), ValueError, "rate"),
    (lambda: L.Dropout(0.5, seed=-1), ValueError, "seed"),
    (lambda: L.BatchNorm2D(momentum=1.5), ValueError, r"momentum.*1\.5"),
    (lambda: L.BatchNorm2D(eps=0), ValueError, "eps"),
    (lambda: L.LeakyReLU(-0.2), ValueError, r"alpha.*-0\.2"),
    (lambda: L.Dense(3, name=5), TypeError, "name"),
]


@pytest.mark.parametrize("make,exc,match", BAD_HYPER)
def test_bad_hyper_parameters_raise(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_wrong_rank_or_channels_name_the_layer_and_shapes():
    conv = L.Conv2D(4, 3, name="conv2d_1")
    conv.build((8, 8, 3), np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"conv2d_1.*\(N, 8, 8, 3\).*\(2, 8, 8, 1\)"):
        conv.forward(np.ones((2, 8, 8, 1), np.float32))
    with pytest.raises(ValueError, match=r"conv2d_1.*4-D.*\(8, 8, 3\)"):
        conv.forward(np.ones((8, 8, 3), np.float32))
    dense = L.Dense(3, name="dense_1")
    dense.build((10,), np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"dense_1.*\(N, 10\).*\(4, 12\)"):
        dense.forward(np.ones((4, 12)))
    with pytest.raises(ValueError, match=r"dense_1.*\(4, 2, 5\).*Flatten"):
        dense.forward(np.ones((4, 2, 5)))
    bn = L.BatchNorm2D(name="bn")
    bn.build((4, 4, 3), np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"bn.*\(4, 3\)"):
        bn.forward(np.ones((4, 3)))
    with pytest.raises(ValueError, match="MaxPool2D"):
        L.MaxPool2D().forward(np.ones((4, 4, 3)))


def test_input_too_small_for_the_kernel():
    with pytest.raises(ValueError, match="larger than the padded input"):
        L.Conv2D(2, 5).build((3, 3, 1), np.random.default_rng(0))
    with pytest.raises(ValueError, match="larger than the padded input"):
        L.MaxPool2D(4).output_shape((3, 8, 1))


def test_non_numeric_input_raises_type_error():
    with pytest.raises(TypeError, match="complex"):
        L.Dense(2).forward(np.ones((2, 3), np.complex128))
    with pytest.raises(TypeError):
        L.ReLU().forward(np.array([["a", "b"]]))


# ---------------------------------------------------------------------------------
# Initializers
# ---------------------------------------------------------------------------------
def test_fans_for_dense_and_hwio_kernels():
    assert initializers.compute_fans((20, 30)) == (20, 30)
    assert initializers.compute_fans((3, 5, 4, 8)) == (60, 120)
    assert initializers.compute_fans((7,)) == (7, 7)


@pytest.mark.parametrize("name,std", [
    ("he_normal", np.sqrt(2 / 288)), ("he_uniform", np.sqrt(2 / 288)),
    ("glorot_normal", np.sqrt(2 / (288 + 576))), ("glorot_uniform", np.sqrt(2 / (288 + 576)))])
def test_initializer_statistics(name, std):
    shape = (3, 3, 32, 64)          # fan_in 288, fan_out 576
    w = initializers.get(name)(shape, np.random.default_rng(0), np.float64)
    assert w.shape == shape and w.dtype == np.float64
    assert abs(w.mean()) < 0.05 * std
    assert abs(w.std() - std) < 0.03 * std
    if "uniform" in name:
        limit = np.sqrt(3) * std
        assert w.max() <= limit and w.min() >= -limit and w.max() > 0.99 * limit


def test_initializers_are_reproducible_and_respect_dtype():
    for name in ("he_normal", "he_uniform", "glorot_normal", "glorot_uniform"):
        init = initializers.get(name)
        a = init((4, 5), np.random.default_rng(3), np.float32)
        b = init((4, 5), np.random.default_rng(3), np.float32)
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, init((4, 5), np.random.default_rng(4), np.float32))
    np.testing.assert_array_equal(initializers.zeros((3, 2)), 0)
    with pytest.raises(ValueError, match="lecun"):
        initializers.get("lecun_normal")
    with pytest.raises(TypeError, match="Generator"):
        initializers.he_normal((3, 3), 42)
