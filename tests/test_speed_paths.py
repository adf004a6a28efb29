"""The paths of issue 19: the inference path of a model (no training bookkeeping, convolution
+ ReLU + max pool reordered, the Winograd filter transform kept between calls while the
weights are unchanged), the compiled ReLU and the fused Adam step, and what a training step
keeps: a convolution with a fused ReLU followed by a max pool keeps no output of its own
(the pool's output is the ReLU's mask: Conv2D.training_fusion), a gradient the model owns
is overwritten by the ReLU before it (Layer.dy_writable), and what a step's forward kept
goes once its backward is done.

Each must give the bits of the path it replaces (numpy's maximum, optim.adam_update
parameter by parameter, the training-mode forward, separate ReLU layers), on one thread and
on two (the work floor lowered so that two threads really split the work), and leave the
arrays a user holds alone.
"""
import numpy as np
import pytest

import cconv
from cconv import functional as F
from cconv import optim
from cconv.layers import Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU

DTYPES = [np.float32, np.float64]


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.view(np.uint8),
                                                                       b.view(np.uint8))


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request, restore_threads, monkeypatch):
    cconv.set_num_threads(request.param)
    if request.param > 1:
        monkeypatch.setattr(F, "MIN_WORK_PER_THREAD", 64)     # small inputs split too
        monkeypatch.setattr(cconv.model, "INFERENCE_SERIAL_MAX", 0)
    return request.param


# ----------------------------------------------------------------------------- ReLU
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 7, 65536, 3 * 65536 + 5])
def test_relu_is_numpys_maximum(threads, dtype, n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal(n).astype(dtype)
    x[::97] = -0.0
    x[5::101] = np.nan
    x[7::103] = -np.inf
    ref = np.maximum(x, 0)
    assert same_bits(F.relu(x), ref)
    out = np.full_like(x, 7.0)
    assert F.relu(x.reshape(-1, 1), out=out.reshape(-1, 1)) is not None and same_bits(out, ref)
    y = x.copy()
    assert F.relu(y, out=y) is y and same_bits(y, ref)          # in place
    assert same_bits(x, x.copy())


def test_relu_checks_its_arguments():
    with pytest.raises(TypeError, match="x must have dtype"):
        F.relu(np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="out"):
        F.relu(np.zeros(3, np.float32), out=np.zeros(4, np.float32))


# ----------------------------------------------------------------------------- Adam
SHAPES = [(3, 3, 3, 32), (32,), (300, 257), (1,), (3 * 32768 + 11,)]


def adam_operands(dtype, seed=0):
    rng = np.random.default_rng(seed)
    ps = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    gs = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    ms = [0.1 * rng.standard_normal(s).astype(dtype) for s in SHAPES]
    vs = [np.abs(0.1 * rng.standard_normal(s)).astype(dtype) for s in SHAPES]
    return ps, gs, ms, vs


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weight_decay,decoupled", [(0.0, False), (0.05, False), (0.05, True)])
def test_fused_adam_is_the_per_parameter_update(threads, dtype, weight_decay, decoupled):
    ps, gs, ms, vs = adam_operands(dtype)
    ref = [(p.copy(), m.copy(), v.copy()) for p, m, v in zip(ps, ms, vs)]
    grads_before = [g.copy() for g in gs]
    for step in (1, 2, 7):
        for (p, m, v), g in zip(ref, gs):
            optim.adam_update(p, g, m, v, step, 3e-3, 0.8, 0.99, 1e-6, weight_decay, decoupled,
                              scratch=np.empty_like(p), grad_scratch=np.empty_like(p))
        F.adam_update(ps, gs, ms, vs, step, 3e-3, 0.8, 0.99, 1e-6, weight_decay, decoupled)
        for (rp, rm, rv), p, m, v in zip(ref, ps, ms, vs):
            assert same_bits(p, rp) and same_bits(m, rm) and same_bits(v, rv)
    assert all(same_bits(g, g0) for g, g0 in zip(gs, grads_before))


def test_fused_adam_refuses_bad_operands():
    ps, gs, ms, vs = adam_operands(np.float32)
    with pytest.raises(TypeError, match="grads\\[1\\]"):
        F.adam_update(ps, gs[:1] + [gs[1].astype(np.float64)] + gs[2:], ms, vs, 1, 1e-3)
    with pytest.raises(ValueError, match="C-contiguous"):
        F.adam_update(ps[:3], gs[:2] + [gs[2].T], ms[:3], vs[:3], 1, 1e-3)
    with pytest.raises(ValueError, match="differ in size"):
        F.adam_update(ps[:1], gs[1:2], ms[:1], vs[:1], 1, 1e-3)
    with pytest.raises(ValueError, match="overlap"):
        F.adam_update(ps[:1], gs[:1], ps[:1], vs[:1], 1, 1e-3)
    with pytest.raises(ValueError, match="4 params, 5 grads"):
        F.adam_update(ps[:4], gs, ms, vs, 1, 1e-3)


def test_adam_optimizer_steps_as_the_per_parameter_rule(threads):
    """Adam.step (fused) against AdamW with the same settings run through the per-parameter
    rule: equal bits after several steps."""
    rng = np.random.default_rng(1)
    params = [rng.standard_normal(s).astype(np.float32) for s in SHAPES[:3]]
    grads = [np.zeros_like(p) for p in params]
    fused = optim.Adam(lr=1e-2, weight_decay=0.1)
    fused.attach([(f"p{i}", p, g) for i, (p, g) in enumerate(zip(params, grads))])
    ref = [p.copy() for p in params]
    m = [np.zeros_like(p) for p in ref]
    v = [np.zeros_like(p) for p in ref]
    for step in range(1, 4):
        for g in grads:
            g[...] = rng.standard_normal(g.shape)
        fused.step()
        for p, g, mm, vv in zip(ref, grads, m, v):
            optim.adam_update(p, g, mm, vv, step, 1e-2, weight_decay=0.1, scratch=np.empty_like(p),
                              grad_scratch=np.empty_like(p))
    assert all(same_bits(a, b) for a, b in zip(params, ref))


# ----------------------------------------------------------------------------- inference
def paper_like(dtype, seed=0):
    model = cconv.Sequential([
        Conv2D(8, 3, activation="relu"), MaxPool2D(2),
        Conv2D(16, 3, activation="relu", padding="same"), MaxPool2D(2),
        Conv2D(16, 3, activation="relu"), MaxPool2D(2, padding=1),
        Flatten(), Dense(12, activation="relu"), Dropout(0.5), Dense(5, activation="softmax"),
    ], input_shape=(22, 22, 3), seed=seed, dtype=dtype)
    model.compile(optim.Adam(lr=1e-2), "categorical_crossentropy")
    return model


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 3])
def test_inference_path_gives_the_training_paths_bits(threads, dtype, n):
    model = paper_like(dtype)
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 22, 22, 3)).astype(dtype)
    x[0, :4, :4, :] = -1.0          # a whole pool window negative after the first conv
    for _ in range(2):              # the second call: kept filters, reused workspaces
        ref = model.forward(x, cache=True)          # the training path (the ReLU before the pool)
        model.backward(np.zeros_like(ref))          # (releases what forward kept)
        assert same_bits(model.predict(x, batch_size=n), ref)
        assert same_bits(model.forward(x), ref)
    # weights changed in place (an optimizer step): the next prediction uses them
    model.train_on_batch(x, rng.integers(0, 5, n))
    ref = model.forward(x, cache=True)
    model.backward(np.zeros_like(ref))
    assert same_bits(model.predict(x, batch_size=n), ref)
    for layer in model.layers:
        for w in layer.params.values():
            w[...] = -w                             # written in place by the user
    ref = model.forward(x, cache=True)
    model.backward(np.zeros_like(ref))
    assert same_bits(model.predict(x, batch_size=n), ref)


def test_model_outputs_are_not_fused():
    """A convolution whose output is also a model output keeps its ReLU'd full-size output."""
    inp = cconv.Input((8, 8, 2))
    c = Conv2D(4, 3, activation="relu")(inp)
    p = MaxPool2D(2)(c)
    model = cconv.Model(inp, [c, p], seed=0)
    x = np.random.default_rng(0).standard_normal((2, 8, 8, 2)).astype(np.float32)
    yc, yp = model.predict(x)
    assert yc.shape == (2, 6, 6, 4) and (yc >= 0).all()
    assert same_bits(yp, F.max_pool2d(yc, 2)[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_winograd_filter_kept_only_while_the_weights_are_unchanged(dtype):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 10, 10, 16)).astype(dtype)
    w = rng.standard_normal((3, 3, 16, 16)).astype(dtype)
    b = rng.standard_normal(16).astype(dtype)
    route = F._plan(x.shape, (3, 3), 16, (1, 1), ((0, 0), (0, 0)), (1, 1), 1, x.itemsize,
                    False, False)[0]
    assert route == F._WINOGRAD
    first = F.conv2d(x, w, b)
    assert same_bits(F.conv2d(x, w, b), first)
    w[1, 2, 3, 4] += 1.0                               # in place: same array, new values
    changed = F.conv2d(x, w, b)
    assert not np.allclose(changed, first)
    np.testing.assert_allclose(changed, F.conv2d(x, w.copy(), b), rtol=0, atol=0)
    ref = np.einsum("nhwc,co->nhwo", np.lib.stride_tricks.sliding_window_view(
        x, (3, 3), axis=(1, 2)).reshape(1, 8, 8, 16, 9).transpose(0, 1, 2, 4, 3).reshape(
        1, 8, 8, 144), w.reshape(144, 16)) + b
    np.testing.assert_allclose(changed, ref, rtol=1e-4 if dtype == np.float32 else 1e-10,
                               atol=1e-4 if dtype == np.float32 else 1e-10)


def test_small_batches_infer_on_the_calling_thread(restore_threads, monkeypatch):
    """Inference on at most INFERENCE_SERIAL_MAX input elements runs its kernels on one
    thread; a larger batch, training and other Python threads keep the budget."""
    import threading

    seen = []

    class Probe(cconv.layers.Layer):
        def call(self, x, training=False):
            seen.append(cconv.get_num_threads())
            return x, None

        def backward(self, dy, saved):
            return dy

        def compute_output_shape(self, input_shape):
            return tuple(input_shape)

    cconv.set_num_threads(2)
    model = cconv.Sequential([Probe(), Flatten(), Dense(3)], input_shape=(8, 8, 4), seed=0)
    model.compile("sgd", "mse")
    small = np.zeros((2, 8, 8, 4), np.float32)
    big = np.zeros((cconv.model.INFERENCE_SERIAL_MAX // 256 + 1, 8, 8, 4), np.float32)
    model.predict(small)
    model.predict(big, batch_size=len(big))
    model.train_on_batch(small, np.zeros((2, 3), np.float32))
    assert seen == [1, 2, 2]
    assert cconv.get_num_threads() == 2                       # the cap is gone afterwards
    monkeypatch.setattr(cconv.model, "INFERENCE_SERIAL_MAX", 0)
    model.predict(small)
    assert seen[-1] == 2


# ----------------------------------------------------------------------------- training memory
def net(dtype, fused=True, seed=0):
    """Conv + ReLU + max pool three times (a padded pool, overlapping windows), dense
    layers with ReLU, dropout: with the ReLU fused into the convolutions, or as layers of
    their own (``fused=False``; nothing then fuses the pool with the ReLU's mask)."""
    def conv(filters, **kw):
        if fused:
            return [Conv2D(filters, 3, activation="relu", **kw)]
        return [Conv2D(filters, 3, **kw), ReLU()]
    return cconv.Sequential(
        conv(6) + [MaxPool2D(2)] + conv(8, padding="same") + [MaxPool2D(3, stride=2, padding=1)]
        + conv(8) + [MaxPool2D(2, padding=1), Flatten(), Dense(12, activation="relu"), Dropout(0.5),
                     Dense(5, activation="softmax")],
        input_shape=(22, 22, 3), seed=seed, dtype=dtype)


def batch(dtype, n=4, seed=1, zeros=True):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 22, 22, 3)).astype(dtype)
    if zeros:                       # whole pool windows at ReLU's 0 (ties: no finite
        x[0, :6, :6, :] = -3.0      # differences there)
    return x, rng.integers(0, 5, n)


def grads(model):
    return [g.copy() for _, _, g in model.parameters()]


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_training_gives_the_gradients_of_separate_relu_layers(threads, dtype):
    x, y = batch(dtype)
    a, b = net(dtype), net(dtype, fused=False)
    for m in (a, b):
        m.compile("adam", "categorical_crossentropy")
    for step in range(3):           # gradients, then the weights after Adam steps
        for m in (a, b):
            m.train_on_batch(x, y)
        for u, v in zip(grads(a), grads(b)):
            assert same_bits(u, v), step
    dx_a, dx_b = a.input_gradient(x, y), b.input_gradient(x, y)
    assert same_bits(dx_a, dx_b)
    assert np.any(dx_a != 0)


def pooled_net(dtype, fused=True):
    """Conv + ReLU + 2x2 max pool three times: on the direct route (3 input channels,
    float32) and twice on the Winograd route (16 input channels), with odd-sized outputs
    (21x21, 3x3) whose last row and column no pool window covers."""
    def conv(filters, **kw):
        if fused:
            return [Conv2D(filters, 3, activation="relu", **kw)]
        return [Conv2D(filters, 3, **kw), ReLU()]
    return cconv.Sequential(
        conv(16) + [MaxPool2D(2)] + conv(16, padding="same") + [MaxPool2D(2)] + conv(16)
        + [MaxPool2D(2), Flatten(), Dense(5, activation="softmax")],
        input_shape=(23, 23, 3), seed=0, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_backward_from_the_pooled_gradient(threads, dtype):
    """The backward pass of a fused conv + ReLU + 2x2 max pool runs in one call
    (conv2d_max_pool2d_backward: the kernels read the pooled gradient and the argmax, and
    the convolution's output gradient is never built), with the bits of separate layers:
    the weights' gradients, Adam's steps and the input gradient (the first layer then needs
    dx, which the direct route does not give: it takes the unfused path)."""
    from cconv._testing import kernels_run, reset
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 23, 23, 3)).astype(dtype)
    y = rng.integers(0, 5, 6)
    a, b = pooled_net(dtype), pooled_net(dtype, fused=False)
    for m in (a, b):
        m.compile("adam", "categorical_crossentropy")
    for step in range(3):
        reset()
        a.train_on_batch(x, y)
        ran = kernels_run()
        b.train_on_batch(x, y)
        assert "winograd_backward_pool" in ran, sorted(ran)
        if dtype == np.float32 and "direct_forward_pool" in ran:
            assert "direct_backward_weights_pool" in ran, sorted(ran)
            # every pool fused, and the fused results kept (no fallback to the pool's own
            # backward, which a kernel that miscounts the argmax matches would take)
            assert not any(k.startswith("max_pool2d_backward") for k in ran), sorted(ran)
        for u, v in zip(grads(a), grads(b)):
            assert same_bits(u, v), step
    assert same_bits(a.input_gradient(x, y), b.input_gradient(x, y))


def test_fused_training_matches_finite_differences():
    x, y = batch(np.float64, n=3, seed=2, zeros=False)
    m = net(np.float64)
    m.compile("sgd", "categorical_crossentropy")
    report = cconv.gradcheck(m, x, y)
    assert report.ok, str(report)


@pytest.mark.parametrize("fused", [True, False])
def test_backward_leaves_the_users_dy_and_outputs_alone(threads, fused):
    """dy given to Model.backward, and what forward returned, are the user's: the ReLU of
    the last layer takes its gradient into a new array."""
    rng = np.random.default_rng(3)
    layers = [Conv2D(4, 3, activation="relu"), MaxPool2D(2)] if fused else [Conv2D(4, 3), ReLU()]
    m = cconv.Sequential(layers + [Conv2D(5, 3, activation="relu")], input_shape=(12, 12, 2), seed=0)
    x = rng.standard_normal((3, 12, 12, 2)).astype(np.float32)
    out = m.forward(x, cache=True)
    out_before = out.copy()
    dy = rng.standard_normal(out.shape).astype(np.float32)
    dy_before = dy.copy()
    m.backward(dy)
    assert same_bits(dy, dy_before) and same_bits(out, out_before)
    assert np.any(out == 0)         # the ReLU masked something: dy would have changed


def test_fan_out_of_a_relu_output_is_not_fused_and_sums_both_gradients():
    """A convolution + ReLU whose output goes to a pool and to a dense layer: nothing fused,
    no gradient overwritten while another reader holds it."""
    inp = cconv.Input((8, 8, 2))
    c = Conv2D(3, 3, activation="relu")(inp)
    p = Flatten()(MaxPool2D(2)(c))
    d = Flatten()(c)
    out = Dense(3)(cconv.layers.Concatenate()([p, Dense(4, activation="relu")(d)]))
    model = cconv.Model(inp, out, seed=1, dtype="float64")
    x = np.random.default_rng(4).standard_normal((3, 8, 8, 2))
    assert cconv.gradcheck(model, x).ok


def test_a_subclass_does_not_inherit_fresh_input_grad():
    """A subclass's backward may hand back an array that something else reads: only the
    classes that say so are trusted."""
    shared = {}

    class Keep(MaxPool2D):
        def backward(self, dy, saved):
            dx = super().backward(dy, saved)
            shared["dx"] = dx
            return dx

    m = cconv.Sequential([Conv2D(3, 3, activation="relu"), Keep(2), Flatten(), Dense(2)],
                         input_shape=(8, 8, 1), seed=0)
    x = np.random.default_rng(5).standard_normal((2, 8, 8, 1)).astype(np.float32)
    out = m.forward(x, cache=True)
    m.backward(np.ones_like(out))
    kept = shared["dx"]
    assert np.count_nonzero(kept) == kept.size // 4     # one winner per 2x2 window, unmasked


def test_a_training_step_transforms_each_winograd_filter_once(monkeypatch):
    """The backward pass of a training step takes the Winograd-transformed filter that its
    forward pass made (functional._FILTERS, checked against the weights' bytes), also when
    the cache was full, and the next step transforms the updated weights afresh."""
    calls = []
    # a cache that other convolutions have filled: its oldest entries make room, not the
    # ones the forward pass just added
    monkeypatch.setattr(F, "_FILTERS", {("other", i): None for i in range(F._FILTERS_MAX - 1)})
    real = F._winograd_filter
    monkeypatch.setattr(F, "_winograd_filter", lambda w, out=None: (calls.append(w.shape),
                                                                    real(w, out))[1])
    model = pooled_net(np.float32)
    model.compile("adam", "categorical_crossentropy")
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((4, 23, 23, 3)).astype(np.float32), rng.integers(0, 5, 4)
    for step in range(3):
        calls.clear()
        before = [w.copy() for _, w, _ in model.parameters()]
        model.train_on_batch(x, y)
        # the two Winograd layers (16 input channels): one transform each, every step
        assert sorted(calls) == [(3, 3, 16, 16), (3, 3, 16, 16)], (step, calls)
        assert any(not np.array_equal(a, w) for a, (_, w, _) in zip(before, model.parameters()))
