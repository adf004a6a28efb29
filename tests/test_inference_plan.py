"""Prepared ops (functional.prepare_conv2d_max_pool2d, prepare_matmul) and the models'
inference plans built from them.

A prepared op checks and plans once for a shape and then goes straight to its kernel: it
must give the bits of the op itself on every route and thread count, hand anything other
than the prepared operands to the op (its conversions and messages), and refuse at
preparation what the op refuses. A model's predict (and forward without a cache) runs a
plan of such functions per input shape and route state: it must give the bits of the
per-call path (forward with pre_activation given as a list still takes it), follow
weights changed in place or set, thread budgets, route knobs and graph changes.
"""
import numpy as np
import pytest

import cconv
from cconv import _testing
from cconv import functional as F
from cconv._testing import forced, kernels_run
from cconv.layers import Add, Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU

import reference as R
from test_functional import assert_close, rand

DTYPES = [np.float32, np.float64]
_AVX2 = pytest.mark.skipif(_testing.simd_max() < 1, reason="the direct route needs AVX2")

# route, x shape, w shape, kwargs: the fused kernels (odd sizes drop the last row/column)
# and a pool they do not take (3x3 stride 2: conv2d then max_pool2d)
CONV_POOLS = [
    ("winograd", (2, 11, 13, 16), (3, 3, 16, 12), dict(padding=1)),
    ("winograd", (1, 10, 9, 16), (3, 3, 16, 8), dict()),
    pytest.param("direct", (3, 12, 17, 3), (3, 3, 3, 32), dict(padding=1), marks=_AVX2),
    pytest.param("direct", (1, 9, 8, 2), (3, 3, 2, 20), dict(), marks=_AVX2),
    ("im2col", (2, 9, 9, 5), (3, 3, 5, 6), dict(padding=1, pool_size=3, pool_stride=2)),
    ("auto", (2, 8, 8, 4), (2, 2, 2, 6), dict(groups=2, stride=2, pool_size=1)),
]


def _same_bits(a, b, what=""):
    assert a.shape == b.shape and a.dtype == b.dtype, (what, a.shape, b.shape, a.dtype, b.dtype)
    np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8), err_msg=what)


@pytest.mark.parametrize("route,xshape,wshape,kw", CONV_POOLS)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_prepared_conv_pool_is_the_op(route, xshape, wshape, kw, threads):
    """The bits of conv2d_max_pool2d on its route, with and without bias and ReLU, each
    dtype the route takes, the fused kernel's team checked; the reference's values."""
    rng = np.random.default_rng(len(xshape) + threads)
    dtypes = [np.float32] if route == "direct" else DTYPES
    for dtype in dtypes:
        x, w, b = rand(rng, xshape, dtype), rand(rng, wshape, dtype), rand(rng, wshape[3:], dtype)
        for bias in (b, None):
            for relu in (False, True):
                what = f"{route} {np.dtype(dtype).name} bias {bias is not None} relu {relu}"
                with forced(threads=threads, conv=route):
                    f = F.prepare_conv2d_max_pool2d(xshape, w, bias, relu=relu, **kw)
                    _testing.reset()
                    got = f(x, w, bias)
                    ran = kernels_run()
                    want = F.conv2d_max_pool2d(x, w, bias, relu=relu, **kw)
                    again = f(x, w, bias, F.Workspace())
                _same_bits(got, want, what)
                _same_bits(again, want, what)
                if route in ("winograd", "direct"):
                    assert ran[f"{route}_forward_pool"].team == threads, (what, ran)
                assert_close(got, R.conv2d_max_pool2d(x, w, bias, relu=relu, **kw), dtype)


def test_prepared_conv_pool_follows_the_weights_it_is_given():
    """Values are read at each call: new weights (and weights changed in place, past the
    Winograd filter cache) give the op's result for them."""
    rng = np.random.default_rng(5)
    x, w, b = rand(rng, (1, 12, 12, 16), np.float32), rand(rng, (3, 3, 16, 16), np.float32), \
        rand(rng, (16,), np.float32)
    f = F.prepare_conv2d_max_pool2d(x.shape, w, b, relu=True)
    first = f(x, w, b)
    w2 = w * -1.5
    _same_bits(f(x, w2, b), F.conv2d_max_pool2d(x, w2, b, relu=True))
    w[0, 0, 0, :] += 1.0
    b[3] -= 2.0
    changed = f(x, w, b)
    assert not np.array_equal(changed, first)
    assert_close(changed, R.conv2d_max_pool2d(x, w, b, relu=True), np.float32)


def test_prepared_ops_hand_other_operands_to_the_op():
    """Non-contiguous, other shapes, dtypes and types, a bias where none was prepared: the
    op's result or the op's error."""
    rng = np.random.default_rng(6)
    x, w, b = rand(rng, (2, 10, 10, 16), np.float32), rand(rng, (3, 3, 16, 8), np.float32), \
        rand(rng, (8,), np.float32)
    f = F.prepare_conv2d_max_pool2d(x.shape, w, None)
    strided = np.asfortranarray(x)
    _same_bits(f(strided, w, None), F.conv2d_max_pool2d(x, w))
    _same_bits(f(x, w, b), F.conv2d_max_pool2d(x, w, b))
    _same_bits(f(x[:1], w, None), F.conv2d_max_pool2d(x[:1], w))
    w64 = w.astype(np.float64)
    _same_bits(f(x.tolist(), w64, None), F.conv2d_max_pool2d(x.tolist(), w64))
    with pytest.raises(TypeError, match="dtype"):
        f(x.astype(np.float64), w, None)
    with pytest.raises(ValueError, match="channel mismatch"):
        f(x[..., :4], w, None)
    with pytest.raises(TypeError, match="workspace"):
        f(x, w, None, "scratch")
    a, m = rand(rng, (1, 40), np.float64), rand(rng, (40, 7), np.float64)
    g = F.prepare_matmul(a.shape, m)
    _same_bits(g(a, m), F.matmul(a, m))
    _same_bits(g(np.asfortranarray(np.vstack([a, a])), m), F.matmul(np.vstack([a, a]), m))
    out = np.ones((1, 7))
    _same_bits(g(a, m, out, 2.0), F.matmul(a, m, out=np.ones((1, 7)), beta=2.0))
    with pytest.raises(ValueError, match="read-only"):
        ro = np.ones((1, 7))
        ro.flags.writeable = False
        g(a, m, ro)
    with pytest.raises(ValueError, match="inner dimensions"):
        g(a, m[:5])


def test_preparation_refuses_what_the_op_refuses():
    w = np.zeros((3, 3, 4, 8), np.float32)
    for shape, err in [((1, 8, 8), ValueError), ((1, 8, 8, "4"), TypeError),
                       ((1, 0, 8, 4), ValueError), (5, TypeError)]:
        with pytest.raises(err, match="x_shape"):
            F.prepare_conv2d_max_pool2d(shape, w)
    with pytest.raises(ValueError, match="channel mismatch"):
        F.prepare_conv2d_max_pool2d((1, 8, 8, 3), w)
    with pytest.raises(ValueError, match="4-D"):
        F.prepare_conv2d_max_pool2d((1, 8, 8, 4), w[0])
    with pytest.raises(ValueError, match=r"b must have shape \(C_out,\) = \(8,\)"):
        F.prepare_conv2d_max_pool2d((1, 8, 8, 4), w, np.zeros(7, np.float32))
    with pytest.raises(TypeError, match="w float32, b float64"):
        F.prepare_conv2d_max_pool2d((1, 8, 8, 4), w, np.zeros(8))
    with pytest.raises(TypeError, match="relu must be a bool"):
        F.prepare_conv2d_max_pool2d((1, 8, 8, 4), w, relu=1)
    with pytest.raises(ValueError, match="max pool"):
        F.prepare_conv2d_max_pool2d((1, 3, 3, 4), w, pool_size=2)
    with pytest.raises(ValueError, match="inner dimensions"):
        F.prepare_matmul((2, 5), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="a_shape"):
        F.prepare_matmul((2, 5, 1), np.zeros((5, 3)))
    with pytest.raises(TypeError, match="a_shape"):
        F.prepare_matmul(None, np.zeros((5, 3)))
    with pytest.raises(TypeError):
        F.prepare_matmul((2, 5), np.zeros((5, 3), np.int32))
    # empty operands: the op's own answer (no kernel)
    _same_bits(F.prepare_matmul((0, 5), np.ones((5, 3)))(np.ones((0, 5)), np.ones((5, 3))),
               np.zeros((0, 3)))
    empty = np.zeros((0, 8, 8, 4), np.float32)
    assert F.prepare_conv2d_max_pool2d(empty.shape, w)(empty, w, None).shape == (0, 3, 3, 8)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_prepared_matmul_is_the_op(threads, dtype):
    """One row (the inner split), several rows, each transposition, out with beta; the
    kernel's team checked."""
    rng = np.random.default_rng(threads)
    for m, k, n in [(1, 67, 57), (5, 33, 9), (1, 5, 70)]:
        for ta in (False, True):
            for tb in (False, True):
                a = rand(rng, (k, m) if ta else (m, k), dtype)
                b = rand(rng, (n, k) if tb else (k, n), dtype)
                out0 = rand(rng, (m, n), dtype)
                with forced(threads=threads):
                    f = F.prepare_matmul(a.shape, b, ta, tb)
                    _testing.reset()
                    got = f(a, b)
                    team = kernels_run()["matmul"].team
                    acc = f(a, b, out0.copy(), 0.5)
                    want = F.matmul(a, b, ta, tb)
                    want_acc = F.matmul(a, b, ta, tb, out=out0.copy(), beta=0.5)
                what = f"{(m, k, n)} ta {ta} tb {tb}"
                _same_bits(got, want, what)
                _same_bits(acc, want_acc, what)
                blocks = -(-(n if tb else k) // 16) if m == 1 else m
                assert team == min(threads, blocks), (what, team)
                ref = (a.T if ta else a) @ (b.T if tb else b)
                assert_close(got, ref, dtype)
                assert_close(acc, ref + 0.5 * out0, dtype)


def test_route_state_names_what_plans_depend_on():
    base = F.route_state()
    assert F.route_state() == base
    with forced(threads=3):
        assert F.route_state() != base
    with forced(conv="im2col"):
        assert F.route_state() != base
    saved = F.FILTER_CACHE_MAX_TILES
    try:
        F.FILTER_CACHE_MAX_TILES = 7
        assert F.route_state() != base
    finally:
        F.FILTER_CACHE_MAX_TILES = saved
    assert F.route_state() == base


# ----------------------------------------------------------------------------- models

def _paper_like(seed=0, dtype="float32"):
    """Conv + ReLU + pool three times (the direct and Winograd fused routes), dense layers,
    dropout and softmax."""
    return cconv.Sequential([
        Conv2D(16, 3, activation="relu"), MaxPool2D(2),
        Conv2D(16, 3, activation="relu"), MaxPool2D(2),
        Conv2D(32, 3, padding="same"), MaxPool2D(2),
        Flatten(), Dense(24, activation="relu"), Dropout(0.5), Dense(5, activation="softmax"),
    ], input_shape=(40, 40, 3), seed=seed, dtype=dtype)


def _per_call(model, x):
    """The per-call inference path (no plan): pre_activation as a list of False."""
    return model.forward(x, pre_activation=[False] * len(model.outputs))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("threads", [1, 2])
def test_predict_runs_the_plan_and_gives_the_per_call_bits(dtype, threads):
    model = _paper_like(dtype=dtype)
    rng = np.random.default_rng(1)
    x = rng.random((7, 40, 40, 3)).astype(dtype)
    with forced(threads=threads):
        for n in (1, 7, 1):
            _testing.reset()
            got = model.predict(x[:n], batch_size=4)
            ran = kernels_run()
            want = np.concatenate([_per_call(model, x[i:i + 4][:n]) for i in range(0, n, 4)])
            _same_bits(got, want, f"batch {n}")
            _same_bits(model.forward(x[:n]), _per_call(model, x[:n]), f"forward, batch {n}")
            route = "direct" if dtype == "float32" and _testing.simd_max() >= 1 else "im2col"
            if route == "direct":
                assert ran["direct_forward_pool"].team == threads, ran
            assert ran["winograd_forward_pool"].team == threads, ran
            assert "matmul" in ran, ran
    # against the definition, layer by layer
    ws = {layer.name: layer.params for layer in model.layers if layer.params}
    h = x[:3].astype(np.float64)
    convs = [p for p in ws.values() if p["kernel"].ndim == 4]
    for i, p in enumerate(convs):
        h = R.conv2d_max_pool2d(h, p["kernel"], p["bias"], padding="same" if i == 2 else 0,
                                relu=i < 2)
    dense = [p for p in ws.values() if p["kernel"].ndim == 2]
    h = np.maximum(h.reshape(3, -1) @ dense[0]["kernel"] + dense[0]["bias"], 0)
    z = h @ dense[1]["kernel"] + dense[1]["bias"]
    e = np.exp(z - z.max(axis=1, keepdims=True))
    assert_close(model.predict(x[:3]), e / e.sum(axis=1, keepdims=True), np.dtype(dtype).type)


def test_the_plan_follows_weights_threads_knobs_and_the_graph():
    model = _paper_like(seed=3)
    x = np.random.default_rng(2).random((2, 40, 40, 3)).astype(np.float32)
    first = model.predict(x)
    # weights changed in place (the Winograd filter cache sees it) and set
    conv2 = model.layers[2]
    conv2.params["kernel"][1, 1] *= -2.0
    _same_bits(model.predict(x), _per_call(model, x))
    assert not np.array_equal(model.predict(x), first)
    model.set_weights([w * 0.5 for w in model.get_weights()])
    _same_bits(model.predict(x), _per_call(model, x))
    conv3 = model.layers[4]         # its last tap (in the second thread's run of the check)
    before = model.predict(x)
    conv3.params["kernel"][-1, -1, :, -1] += 3.0
    after = model.predict(x)
    _same_bits(after, _per_call(model, x))
    assert not np.array_equal(after, before)
    # other thread budgets and routes: each gets its own plan, with its own kernels
    for threads, conv, path in [(2, "im2col", "conv2d_forward"), (1, "winograd", "winograd_forward_pool"),
                                (3, "winograd", "winograd_forward_pool")]:
        with forced(threads=threads, conv=conv):
            _testing.reset()
            got = model.predict(x)
            ran = kernels_run()
            _same_bits(got, _per_call(model, x), f"{threads} threads, {conv}")
        assert path in ran and ran[path].team == threads, (threads, conv, ran)
    # a layer added: the new graph's plan
    before = model.predict(x)
    model.add(Dense(3))
    after = model.predict(x)
    assert after.shape == (2, 3)
    _same_bits(after, _per_call(model, x))
    assert_close(after, before @ model.layers[-1].params["kernel"]
                 + model.layers[-1].params["bias"], np.float32)


def test_graph_models_plans_keep_shared_values_and_outputs():
    """A value read by two layers (no fusion there), a conv whose pooled output is also a
    model output, a shared layer, two inputs: every output the per-call path's bits."""
    a = cconv.Input((10, 10, 16), name="a")
    b = cconv.Input((10, 10, 16), name="b")
    conv = Conv2D(16, 3, padding="same", activation="relu")
    pa = MaxPool2D(2)(conv(a))
    pb = MaxPool2D(2)(conv(b))
    s = Add()([pa, pb])
    c = Conv2D(16, 3, padding="same")(s)
    side = MaxPool2D(2)(c)
    mixed = Add()([ReLU()(c), s])
    head = Dense(4, activation="softmax")(Flatten()(MaxPool2D(5)(mixed)))
    model = cconv.Model([a, b], [head, side, pa], seed=4)
    rng = np.random.default_rng(3)
    xs = [rng.random((3, 10, 10, 16)).astype(np.float32) for _ in range(2)]
    for threads in (1, 2):
        with forced(threads=threads):
            got = model.predict(xs)
            want = model.forward(xs, pre_activation=[False, False, False])
            for g, w_ in zip(got, want):
                _same_bits(g, w_, f"{threads} threads")
            assert_close(got[2], R.conv2d_max_pool2d(xs[0], conv.params["kernel"],
                                                     conv.params["bias"], padding="same",
                                                     relu=True), np.float32)


def test_concurrent_predicts_on_one_model():
    """Two Python threads predicting on one model with different batch sizes (two plans)
    get the per-call bits."""
    import threading
    model = _paper_like(seed=5)
    rng = np.random.default_rng(4)
    xs = [rng.random((n, 40, 40, 3)).astype(np.float32) for n in (1, 3)]
    want = [_per_call(model, x) for x in xs]
    errors = []

    def work(i):
        try:
            for _ in range(30):
                _same_bits(model.predict(xs[i]), want[i])
        except BaseException as e:      # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_copies_and_pickles_make_their_own_plans():
    """A deep copy or an unpickled model after a predict runs on its own weights (the
    plans' functions are bound to the layers they were made from)."""
    import copy
    import pickle
    model = _paper_like(seed=6)
    x = np.random.default_rng(7).random((2, 40, 40, 3)).astype(np.float32)
    first = model.predict(x)
    twin, thawed = copy.deepcopy(model), pickle.loads(pickle.dumps(model))
    for layer in model.layers:
        for w in layer.params.values():
            w *= 1.5
    changed = model.predict(x)
    assert not np.array_equal(changed, first)
    _same_bits(twin.predict(x), first)
    _same_bits(thawed.predict(x), first)
    _same_bits(copy.deepcopy(model).predict(x), changed)
