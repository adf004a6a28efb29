"""``out=`` and ``workspace=`` on the functional ops (issue 15).

Every op writes into ``out`` exactly what it returns without it (bit for bit) and returns
``out`` itself; an ``out`` of the wrong type, dtype, shape or layout, read-only, or sharing
memory with an input is refused with a TypeError or ValueError naming it, before anything is
written; with ``out=`` and a :class:`cconv.Workspace` a loop of calls allocates nothing.
"""
import tracemalloc

import numpy as np
import pytest

import cconv
from cconv import functional as F

from cconv._testing import forced

from conftest import spy_calls

DTYPES = [np.float32, np.float64]
SENTINEL = 7.25


def rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def on_depthwise(fn, *args, **kwargs):
    """fn(*args, **kwargs) on the depthwise route, in blocks of one image on 2 threads."""
    with forced(conv="depthwise", threads=2, block_bytes=1):
        return fn(*args, **kwargs)


def cases(dtype):
    """(name, call(out) -> result) for every op with an out= argument; each call returns the
    result and the arrays it was given as inputs."""
    rng = np.random.default_rng(0)
    x = rand(rng, (2, 9, 8, 5), dtype)
    w = rand(rng, (3, 3, 5, 6), dtype)
    b = rand(rng, 6, dtype)
    xw = rand(rng, (2, 8, 8, 16), dtype)             # a Winograd route: 3x3, 16 channels
    ww = rand(rng, (3, 3, 16, 4), dtype)
    y = F.conv2d(x, w, b, padding=1)
    dy = rand(rng, y.shape, dtype)
    p, arg = F.max_pool2d(x, 3, 2, 1)
    dp = rand(rng, p.shape, dtype)
    cols = F.im2col(x, 3, stride=2)
    r = np.maximum(y, 0)
    wt = rand(rng, (3, 3, 4, 5), dtype)                # transposed: (KH, KW, C_out, C_in)
    bt = rand(rng, 4, dtype)
    wg = rand(rng, (3, 3, 3, 4), dtype)                # transposed, groups 2: C_in 4, C_out 6
    xg = x[..., :4].copy()
    t2 = dict(stride=2, padding=1, output_padding=1)   # stride 2; output padding past the taps
    t_op = dict(stride=2, padding=0, output_padding=1)
    dyt = rand(rng, F.conv2d_transpose(x, wt, stride=2, padding=0, output_padding=1).shape,
               dtype)
    img, ker = rand(rng, (9, 7), dtype), rand(rng, (4, 3), dtype)
    xd = rand(rng, (3, 9, 8, 8), dtype)                # the depthwise route: groups == C_in
    wd = rand(rng, (3, 3, 1, 16), dtype)               # channel multiplier 2
    bd = rand(rng, 16, dtype)
    dwise = dict(stride=2, padding=1, groups=8)
    dyd = rand(rng, F.conv2d(xd, wd, **dwise).shape, dtype)
    up = rand(rng, (2, 12, 24, 5), dtype)              # an upsampling of x[:, :4] by (3, 3)
    return {
        "conv2d": ((x, w, b), lambda out: F.conv2d(x, w, b, padding=1, out=out)),
        "conv2d_winograd": ((xw, ww), lambda out: F.conv2d(xw, ww, padding=1, out=out)),
        "conv2d_backward": ((dy, x, w),
                            lambda out: F.conv2d_backward(dy, x, w, padding=1, out=out)),
        "conv2d_backward_no_dx": ((dy, x, w), lambda out: F.conv2d_backward(
            dy, x, w, padding=1, need_dx=False, out=out)),
        "conv2d_depthwise": ((xd, wd, bd), lambda out: on_depthwise(
            F.conv2d, xd, wd, bd, **dwise, out=out)),
        "conv2d_depthwise_backward": ((dyd, xd, wd), lambda out: on_depthwise(
            F.conv2d_backward, dyd, xd, wd, **dwise, out=out)),
        "conv2d_depthwise_backward_no_dx": ((dyd, xd, wd), lambda out: on_depthwise(
            F.conv2d_backward, dyd, xd, wd, **dwise, need_dx=False, out=out)),
        "conv2d_max_pool2d": ((x, w, b), lambda out: F.conv2d_max_pool2d(
            x, w, b, padding=1, relu=True, out=out)),                    # unfused: im2col
        "conv2d_max_pool2d_winograd": ((xw, ww), lambda out: F.conv2d_max_pool2d(
            xw, ww, padding=1, out=out)),
        "conv2d_max_pool2d_overlapping": ((x, w), lambda out: F.conv2d_max_pool2d(
            x, w, pool_size=3, pool_stride=2, pool_padding=1, out=out)),
        "im2col": ((x,), lambda out: F.im2col(x, 3, stride=2, out=out)),
        "col2im": ((cols,), lambda out: F.col2im(cols, x.shape, 3, stride=2, out=out)),
        "max_pool2d": ((x,), lambda out: F.max_pool2d(x, 3, 2, 1, out=out)),
        "max_pool2d_backward": ((dp, arg),
                                lambda out: F.max_pool2d_backward(dp, arg, x.shape, out=out)),
        "avg_pool2d": ((x,), lambda out: F.avg_pool2d(x, 3, 2, 1, out=out)),
        "avg_pool2d_backward": ((dp,), lambda out: F.avg_pool2d_backward(dp, x.shape, 3, 2, 1,
                                                                          out=out)),
        "relu_backward": ((dy, r), lambda out: F.relu_backward(dy, r, out=out)),
        "conv2d_transpose": ((x, wt, bt), lambda out: F.conv2d_transpose(x, wt, bt, **t2,
                                                                         out=out)),
        "conv2d_transpose_unreached_rows": ((x, wt, bt), lambda out: F.conv2d_transpose(
            x, wt, bt, **t_op, out=out)),
        "conv2d_transpose_stride1": ((x, wt), lambda out: F.conv2d_transpose(
            x, wt, padding=1, out=out)),
        "conv2d_transpose_groups": ((xg, wg), lambda out: F.conv2d_transpose(
            xg, wg, stride=2, groups=2, out=out)),
        "conv2d_transpose_backward": ((dyt, x, wt), lambda out: F.conv2d_transpose_backward(
            dyt, x, wt, **t_op, out=out)),
        "conv2d_transpose_backward_no_dx": ((dyt, x, wt), lambda out:
                                            F.conv2d_transpose_backward(
                                                dyt, x, wt, **t_op, need_dx=False, out=out)),
        "correlate2d": ((img, ker), lambda out: F.correlate2d(img, ker, "same", out=out)),
        "convolve2d": ((img, ker), lambda out: F.convolve2d(img, ker, "full", out=out)),
        "zero_pad2d": ((x,), lambda out: F.zero_pad2d(x, ((1, 2), (0, 3)), out=out)),
        "crop2d": ((x,), lambda out: F.crop2d(x, ((1, 2), (0, 3)), out=out)),
        "upsample2d": ((x,), lambda out: F.upsample2d(x, (2, 3), out=out)),
        "upsample2d_bilinear": ((x,), lambda out: F.upsample2d(x, (2, 3), "bilinear",
                                                                out=out)),
        "upsample2d_backward": ((up,), lambda out: F.upsample2d_backward(up, 3, out=out)),
        "upsample2d_backward_bilinear": ((up,), lambda out: F.upsample2d_backward(
            up, 3, "bilinear", out=out)),
    }


def as_tuple(result):
    return result if isinstance(result, tuple) else (result,)


def blank_like(result):
    """Buffers of the result's shapes and dtypes, filled with a sentinel (None stays None)."""
    outs = tuple(None if r is None else np.full(r.shape, SENTINEL, r.dtype)
                 for r in as_tuple(result))
    return outs


def pack(outs, result):
    return outs if isinstance(result, tuple) else outs[0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(cases(np.float32)))
def test_out_receives_the_result_bit_for_bit(name, dtype):
    _, call = cases(dtype)[name]
    expected = call(None)
    outs = blank_like(expected)
    got = call(pack(outs, expected))
    for g, o, e in zip(as_tuple(got), outs, as_tuple(expected)):
        if e is None:
            assert g is None
            continue
        assert g is o, "the op must return the out array itself"
        assert g.dtype == e.dtype and g.shape == e.shape
        assert np.array_equal(g.view(np.uint8), e.view(np.uint8))


def bad_outs(good):
    """(description, bad array, expected exception) for a good out array."""
    wrong_dtype = np.full(good.shape, 1, np.float64 if good.dtype != np.float64 else np.float32)
    if good.dtype.kind == "i":
        wrong_dtype = np.full(good.shape, 1, np.float32)
    bigger = np.full((good.shape[0] + 1,) + good.shape[1:], SENTINEL).astype(good.dtype)
    strided = np.full(good.shape[:-1] + (2 * good.shape[-1],), SENTINEL,
                      good.dtype)[..., ::2]
    read_only = np.full(good.shape, SENTINEL, good.dtype)
    read_only.flags.writeable = False
    return [("a list", good.tolist(), TypeError),
            ("the wrong dtype", wrong_dtype, TypeError),
            ("the wrong shape", bigger, ValueError),
            ("a non-contiguous view", strided, ValueError),
            ("a read-only array", read_only, ValueError)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(cases(np.float32)))
def test_bad_out_is_refused_before_anything_is_written(name, dtype):
    inputs, call = cases(dtype)[name]
    expected = call(None)
    n = len(as_tuple(expected))
    for slot in range(n):
        if as_tuple(expected)[slot] is None:
            continue
        for what, bad, exc in bad_outs(as_tuple(expected)[slot]):
            outs = list(blank_like(expected))
            outs[slot] = bad
            before = [None if o is None else np.array(o, copy=True) for o in outs]
            label = "out" if n == 1 else f"out[{slot}]"
            with pytest.raises(exc, match=rf"\b{label}(\b|\[)" if n == 1 else
                               rf"out\[{slot}\]") as err:
                call(pack(tuple(outs), expected))
            if what == "the wrong shape":          # the message names both shapes
                assert str(bad.shape) in str(err.value)
                assert str(as_tuple(expected)[slot].shape) in str(err.value)
            for o, b in zip(outs, before):      # nothing written, into any of them
                if isinstance(o, np.ndarray):
                    assert np.array_equal(o, b, equal_nan=True), f"{what}: an out was written"


@pytest.mark.parametrize("name", list(cases(np.float32)))
def test_out_sharing_memory_with_an_input_is_refused(name):
    inputs, call = cases(np.float32)[name]
    expected = call(None)
    slot = 0 if as_tuple(expected)[0] is not None else 1     # the first result computed
    first = as_tuple(expected)[slot]
    for inp in inputs:
        if inp.dtype != first.dtype or inp.size < first.size:
            continue
        alias = inp.reshape(-1)[:first.size].reshape(first.shape)   # a view of the input
        before = inp.copy()
        outs = list(blank_like(expected))
        outs[slot] = alias
        with pytest.raises(ValueError, match="shares memory"):
            call(pack(tuple(outs), expected))
        assert np.array_equal(inp, before)


def test_out_tuples_must_have_the_right_length():
    rng = np.random.default_rng(1)
    x = rand(rng, (1, 4, 4, 2), np.float32)
    with pytest.raises(TypeError, match="out"):
        F.max_pool2d(x, 2, out=np.empty((1, 2, 2, 2), np.float32))
    with pytest.raises(TypeError, match="out"):
        F.conv2d_backward(np.ones((1, 2, 2, 3), np.float32), x,
                          np.ones((3, 3, 2, 3), np.float32), out=(None, None))
    dx = np.full(x.shape, SENTINEL, np.float32)
    with pytest.raises(ValueError, match="need_dx"):
        F.conv2d_backward(np.ones((1, 2, 2, 3), np.float32), x, np.ones((3, 3, 2, 3), np.float32),
                          need_dx=False, out=(dx, np.empty((3, 3, 2, 3), np.float32),
                                              np.empty(3, np.float32)))
    assert (dx == SENTINEL).all()


def test_max_pool_writes_int64_indices_when_given_them():
    rng = np.random.default_rng(2)
    x = rand(rng, (2, 6, 6, 3), np.float64)
    y, a = F.max_pool2d(x, 2)
    y64, a64 = np.empty_like(y), np.empty(a.shape, np.int64)
    F.max_pool2d(x, 2, out=(y64, a64))
    np.testing.assert_array_equal(a64, a)
    np.testing.assert_array_equal(y64, y)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("route", ["gemm", "winograd", "direct", "depthwise"])
def test_workspace_is_reused_and_gives_the_same_bits(route, threads, restore_threads,
                                                     monkeypatch):
    cconv.set_num_threads(threads)
    rng = np.random.default_rng(3)
    C, cout = {"gemm": (5, 6), "winograd": (16, 8), "direct": (3, 16), "depthwise": (8, 16)}[route]
    if route == "direct" and F._core.simd_level() < 1:
        pytest.skip("the direct route needs AVX2 or AVX-512F")
    groups = C if route == "depthwise" else 1
    monkeypatch.setattr(F, "DEPTHWISE_MIN_OUTPUTS", 0)    # small, but the depthwise route
    x = rand(rng, (4, 12, 11, C), np.float32)
    w = rand(rng, (3, 3, C // groups, cout), np.float32)
    dy = rand(rng, (4, 12, 11, cout), np.float32)
    ws = cconv.Workspace()
    assert ws.nbytes == 0
    conv = dict(padding=1, groups=groups)
    y0 = F.conv2d(x, w, **conv)
    g0 = F.conv2d_backward(dy, x, w, **conv, need_dx=route != "direct")
    y1 = F.conv2d(x, w, **conv, workspace=ws)
    g1 = F.conv2d_backward(dy, x, w, **conv, need_dx=route != "direct", workspace=ws)
    size = ws.nbytes
    assert size > 0
    for _ in range(2):
        y2 = F.conv2d(x, w, **conv, workspace=ws)
        g2 = F.conv2d_backward(dy, x, w, **conv, need_dx=route != "direct", workspace=ws)
    assert ws.nbytes == size                            # grown once, then reused
    for a, b in zip((y0, *g0), (y1, *g1)):
        assert (a is None and b is None) or np.array_equal(a, b)
    for a, b in zip((y0, *g0), (y2, *g2)):
        assert (a is None and b is None) or np.array_equal(a, b)
    with pytest.raises(TypeError, match="workspace"):
        F.conv2d(x, w, **conv, workspace=np.empty(100, np.uint8))
    # conv2d_max_pool2d (fused on the Winograd and direct routes) in the same workspace
    p0 = F.conv2d_max_pool2d(x, w, **conv, relu=True)
    for _ in range(2):
        p1 = F.conv2d_max_pool2d(x, w, **conv, relu=True, workspace=ws)
        assert np.array_equal(p0, p1)
    assert ws.nbytes == size
    with pytest.raises(TypeError, match="workspace"):
        F.conv2d_max_pool2d(x, w, **conv, workspace=np.empty(100, np.uint8))


@pytest.mark.parametrize("depthwise", [False, True])
def test_a_loop_with_out_and_workspace_allocates_nothing(depthwise, monkeypatch):
    """No result or scratch array is allocated; on the depthwise route (numpy code) numpy
    itself takes transient iteration buffers (about 94 KB per ufunc call on a strided view,
    whatever the array sizes; one call at a time per thread), freed at once: nothing stays
    allocated there."""
    rng = np.random.default_rng(4)
    x = rand(rng, (8, 32, 32, 8), np.float32)        # outputs of 256 KiB and more
    w = rand(rng, (3, 3, 8, 8), np.float32)
    wd = rand(rng, (3, 3, 1, 8), np.float32)          # depthwise: its own route
    y, yd = np.empty((8, 32, 32, 8), np.float32), np.empty((8, 32, 32, 8), np.float32)
    dx, dw, db = np.empty_like(x), np.empty_like(w), np.empty(8, np.float32)
    ddx, ddw, ddb = np.empty_like(x), np.empty_like(wd), np.empty(8, np.float32)
    p, a = F.max_pool2d(y, 2)
    dp = np.empty_like(y)
    ws = cconv.Workspace()

    def step():
        F.conv2d(x, w, padding=1, out=y, workspace=ws)
        if depthwise:
            F.conv2d(y, wd, padding=1, groups=8, out=yd, workspace=ws)
        F.max_pool2d(yd if depthwise else y, 2, out=(p, a))
        F.max_pool2d_backward(p, a, y.shape, out=dp)
        if depthwise:
            F.conv2d_backward(dp, y, wd, padding=1, groups=8, out=(ddx, ddw, ddb), workspace=ws)
        F.conv2d_backward(ddx if depthwise else dp, x, w, padding=1, out=(dx, dw, db),
                          workspace=ws)

    with forced(conv="depthwise" if depthwise else "auto", threads=2):
        step()                                        # the workspace grows here
        calls = spy_calls(monkeypatch, F, ["_alloc"])
        tracemalloc.start()
        try:
            base, _ = tracemalloc.get_traced_memory()
            for _ in range(3):
                step()
            now, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert calls == {"_alloc": 0}
    limit = 2 * 150_000 if depthwise else 20_000     # depthwise: numpy's buffers, 2 threads
    assert peak - base < limit, f"a step allocated {peak - base} bytes"
    assert now - base < 20_000, f"{now - base} bytes stayed allocated"


@pytest.mark.parametrize("stride", [1, 2])
def test_transposed_convolution_reuses_the_workspace_and_allocates_no_result(stride,
                                                                            monkeypatch):
    rng = np.random.default_rng(5)
    x = rand(rng, (4, 16, 16, 8), np.float32)
    w = rand(rng, (3, 3, 8, 8), np.float32)
    args = dict(stride=stride, padding=1, output_padding=stride - 1)
    y0 = F.conv2d_transpose(x, w, **args)
    g0 = F.conv2d_transpose_backward(y0, x, w, **args)
    y, g = np.empty_like(y0), tuple(np.empty_like(a) for a in g0)
    ws = cconv.Workspace()

    def step():
        F.conv2d_transpose(x, w, **args, out=y, workspace=ws)
        F.conv2d_transpose_backward(y0, x, w, **args, out=g, workspace=ws)

    step()                                            # the workspace grows here
    size = ws.nbytes
    calls = spy_calls(monkeypatch, F, ["_alloc"])
    step()
    assert ws.nbytes == size
    assert calls["_alloc"] <= 1                       # conv2d_backward's unused db (C_in,)
    assert np.array_equal(y, y0)
    for a, b in zip(g, g0):
        assert np.array_equal(a, b)
