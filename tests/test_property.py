"""Property-based tests (hypothesis): cconv.functional against tests/reference.py.

Random shapes, strides, paddings (every form), dilations, groups, pool sizes and dtypes,
including the degenerate but legal corners: 1x1 images, a kernel as large as the padded
input, a batch of one, a single channel.

Every kernel route is reached: the convolution and max-pool tests run once per route
(``cconv._testing.forced``) with shapes drawn for it (Winograd: 3x3 stride 1 with channel
counts that include multiples of 8 and 16; direct: float32 first-layer shapes, K = KH*KW*C
<= 32 and C_out a multiple of 16; depthwise: groups == C_in, channel multipliers 1-3, any
stride, padding and dilation; tiled max pools on float32 with C a multiple of 8 or 16
for AVX2 and AVX-512, odd heights and widths), and each example checks that the route's
kernels ran. Every example also draws a thread count (1-3) and runs below the per-thread
work floor, so the work is really split.

Example counts come from the hypothesis profiles of tests/conftest.py: "ci" (30 examples
per test, the default) and "long" (1000):

    python -m pytest tests/test_property.py --hypothesis-profile=long
"""
import os

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cconv import _testing
from cconv import functional as F
from cconv._testing import ROUTE_KERNELS, ROUTE_POOL_KERNELS, forced, kernels_run

import reference as R
from route_spy import depthwise_spy

DTYPES = st.sampled_from([np.float32, np.float64])
THREADS = st.integers(1, 3)
#: Channel counts: few (the generic loops, im2col) and multiples of 8 and 16 (the
#: vectorised and Winograd kernels), with an odd one past them.
CHANNELS = st.sampled_from([1, 2, 3, 5, 8, 16, 17, 24, 32])


def _needs(level):
    return pytest.mark.skipif(_testing.simd_max() < level, reason="not on this CPU")


CONV_ROUTES = ["auto", "im2col", "winograd", "winograd4", pytest.param("direct", marks=_needs(2)),
               "depthwise"]
WINOGRAD = ("winograd", "winograd4")     # the forced Winograd routes (the backward on F(2x2) or F(4x4))
POOL_ROUTES = ["auto", "generic", pytest.param("avx2", marks=_needs(1)),
               pytest.param("avx512", marks=_needs(2))]


def _blocks(cfg):
    """forced()'s block_bytes: the smallest im2col tiles and Winograd blocks when the example
    asks for them (many tiles and blocks per thread on small inputs), else the defaults."""
    return 1 if cfg.get("small_blocks") else None


def assert_route(route, which, spy=None):
    """The route's kernel `which` (0 forward, 1 backward) ran, when a route was forced (the
    numpy depthwise route: its function, watched by ``spy``, was called)."""
    if route in ROUTE_KERNELS:
        ran = kernels_run()
        assert ROUTE_KERNELS[route][which] in ran, (route, sorted(ran))
    elif route == "depthwise":
        assert spy.called[which], spy.called


def assert_close(actual, expected, dtype):
    assert actual.dtype == np.dtype(dtype), (actual.dtype, dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    if np.dtype(dtype) == np.float32:
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=3e-5 * scale)
    else:
        np.testing.assert_allclose(actual, expected, rtol=1e-10, atol=1e-12 * scale)


def assert_fused_equal(fused, unfused, ran, oh, ow, kernel="winograd_forward_pool"):
    """conv2d_max_pool2d (or with ``kernel="winograd_backward_pool"``, its backward) against
    the unfused chain: the same bits (NaN included), except on the Winograd route with an
    odd-sized convolution output, whose fused call skips the tiles of the last row/column:
    its BLAS calls then have other sizes, which may round differently (the NaN must be at
    the same places, the values agree to rounding)."""
    assert fused.dtype == unfused.dtype and fused.shape == unfused.shape
    if kernel in ran and (oh % 2 or ow % 2):
        assert_close(fused, unfused, fused.dtype)
        np.testing.assert_array_equal(np.isnan(fused), np.isnan(unfused))
    else:
        np.testing.assert_array_equal(fused.view(np.uint8), unfused.view(np.uint8))


def data(seed, shape, dtype, ties=False):
    """Random normal values, or small integers (many ties) when ``ties``."""
    rng = np.random.default_rng(seed)
    if ties:
        return rng.integers(-2, 3, shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


# ----------------------------------------------------------------------------- strategies

def _pads_strategy(max_pad):
    """A padding in one of the explicit forms, with its ((top, bottom), (left, right))."""
    p = st.integers(0, max_pad)
    return st.one_of(
        p.map(lambda v: (v, ((v, v), (v, v)))),
        st.tuples(p, p).map(lambda t: (t, ((t[0], t[0]), (t[1], t[1])))),
        st.tuples(p, p, p, p).map(lambda t: (((t[0], t[1]), (t[2], t[3])),
                                             ((t[0], t[1]), (t[2], t[3])))),
        st.just(("valid", ((0, 0), (0, 0)))),
    )


def _size_for(draw, extent, pads, degenerate, slack=5):
    """An input size >= 1 on which a window of this extent fits after padding; hypothesis
    shrinks the slack towards 0, i.e. towards a window exactly as large as the padded input."""
    lo = max(1, extent - pads[0] - pads[1])
    return lo if degenerate else lo + draw(st.integers(0, slack))


@st.composite
def conv_configs(draw, route="auto"):
    """A convolution for `route`: "auto" and "im2col" draw any geometry (groups, depthwise,
    strides, dilations, channel counts up to 32); "winograd" and "winograd4" a 3x3 stride-1
    ungrouped one;
    "direct" a float32 first layer (K = KH*KW*C <= 32, C_out a multiple of 16); "depthwise"
    groups == C_in > 1 with channel multipliers 1-3 and any geometry."""
    pair = st.tuples(st.integers(1, 3), st.integers(1, 3))
    dtype = np.float32 if route == "direct" else draw(DTYPES)
    if route == "depthwise":
        groups = draw(st.sampled_from([2, 3, 5, 8, 16]))
    else:
        groups = 1 if route in WINOGRAD + ("direct",) else draw(st.sampled_from([1, 1, 2, 3]))
    depthwise = route == "depthwise" or (groups > 1 and draw(st.booleans()))
    if route == "depthwise":
        cg, cout = 1, groups * draw(st.integers(1, 3))
        k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    elif route == "direct":
        cg = draw(st.integers(1, 3))
        k = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
        if k[0] * k[1] * cg > 32:
            k = (k[0], max(1, 32 // (k[0] * cg)))
        cout = draw(st.sampled_from([16, 32, 48]))
    elif route in WINOGRAD:
        cg, cout, k = draw(CHANNELS), draw(CHANNELS), (3, 3)
    else:
        cg = 1 if depthwise else draw(st.one_of(st.integers(1, 3), CHANNELS))
        cout = groups * draw(st.one_of(st.integers(1, 3), st.sampled_from([8, 16])))
        k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    # direct: half the time a first layer as networks have them (stride 1, rows of 6-14
    # pixels, C_out 32 or 64; valid padding, or padding at the bottom or the right only),
    # which its pool in the registers serves where no pooled window reads the padding
    first = route == "direct" and draw(st.booleans())
    if first:
        cout = draw(st.sampled_from([32, 64]))
    # an int or a pair for stride and dilation
    if route in WINOGRAD or first:
        stride = dilation = 1
    else:
        stride = draw(st.one_of(st.integers(1, 3), pair))
        dilation = draw(st.one_of(st.integers(1, 3), pair))
    d = R.pair(dilation)
    n = draw(st.integers(1, 5 if route in WINOGRAD else 3))
    degenerate = draw(st.booleans())
    # Winograd: images of up to 64 2x2 tiles (16 4x4 tiles), so that an image spans several
    # 8-tile blocks
    slack = 12 if route in WINOGRAD else 5
    if first:
        padding = draw(st.sampled_from(["valid", ((0, 1), (0, 0)), ((0, 0), (0, 1)),
                                        ((0, 2), (0, 2))]))
        h = k[0] + draw(st.integers(1, 7))
        w = k[1] - 1 + draw(st.integers(6, 14))
    elif draw(st.integers(0, 4)) == 0:
        padding = "same"
        h, w = draw(st.integers(1, 3 + slack)), draw(st.integers(1, 3 + slack))
    else:
        padding, ((pt, pb), (pl, pr)) = draw(_pads_strategy(3))
        h = _size_for(draw, d[0] * (k[0] - 1) + 1, (pt, pb), degenerate, slack)
        w = _size_for(draw, d[1] * (k[1] - 1) + 1, (pl, pr), degenerate, slack)
    seed = draw(st.integers(0, 2**32 - 1))
    return dict(shape=(n, h, w, groups * cg), wshape=(k[0], k[1], cg, cout), dtype=dtype,
                kw=dict(stride=stride, padding=padding, dilation=dilation, groups=groups),
                seed=seed, threads=draw(THREADS), route=route, small_blocks=draw(st.booleans()))


@st.composite
def pool_configs(draw, route="auto"):
    """A pooling for `route`: "auto" any geometry; "generic", "avx2", "avx512" windows that
    tile the input (stride = pool size, no padding; odd sizes leave rows and columns outside
    every window), float32 for the vectorised kernels with C a multiple of 8 or 16."""
    if route != "auto":
        dtype = np.float32 if route != "generic" else draw(DTYPES)
        k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
        step = {"avx512": 16, "avx2": 8}.get(route, 1)
        c = step * draw(st.integers(1, 3)) if step > 1 else draw(CHANNELS)
        oh, ow = draw(st.integers(1, 4)), draw(st.integers(1, 4))
        h, w = oh * k[0] + draw(st.integers(0, k[0] - 1)), ow * k[1] + draw(st.integers(0, k[1] - 1))
        pool = (k if draw(st.booleans()) or k[0] != k[1] else k[0],
                draw(st.sampled_from([None, k])), draw(st.sampled_from([0, "valid"])))
        return dict(shape=(draw(st.integers(1, 4)), h, w, c), dtype=dtype, pool=pool,
                    seed=draw(st.integers(0, 2**32 - 1)), ties=draw(st.booleans()),
                    threads=draw(THREADS), route=route)
    dtype = draw(DTYPES)
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = draw(st.one_of(st.none(), st.integers(1, 3),
                            st.tuples(st.integers(1, 3), st.integers(1, 3))))
    n, c = draw(st.integers(1, 3)), draw(st.one_of(st.integers(1, 3), CHANNELS))
    degenerate = draw(st.booleans())
    if draw(st.integers(0, 4)) == 0:
        padding = "same"
        h, w = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    else:
        # every pad smaller than the window (a window never lies entirely in the padding)
        pt, pb = draw(st.integers(0, k[0] - 1)), draw(st.integers(0, k[0] - 1))
        pl, pr = draw(st.integers(0, k[1] - 1)), draw(st.integers(0, k[1] - 1))
        padding = draw(st.sampled_from([((pt, pb), (pl, pr)), (pt, pl), min(pt, pl), "valid"]))
        (pt, pb), (pl, pr) = R.pads(padding, k, (1, 1), (1, 1), (1, 1))
        h = _size_for(draw, k[0], (pt, pb), degenerate)
        w = _size_for(draw, k[1], (pl, pr), degenerate)
    pool_size = k if draw(st.booleans()) or k[0] != k[1] else k[0]
    return dict(shape=(n, h, w, c), dtype=dtype, pool=(pool_size, stride, padding),
                seed=draw(st.integers(0, 2**32 - 1)), ties=draw(st.booleans()),
                threads=draw(THREADS))


# ----------------------------------------------------------------------------- convolution

DEGENERATE_CONV = [
    dict(shape=(1, 1, 1, 1), wshape=(1, 1, 1, 1), dtype=np.float64,
         kw=dict(stride=1, padding=0, dilation=1, groups=1), seed=0),          # 1x1 everything
    dict(shape=(1, 1, 1, 3), wshape=(3, 3, 1, 3), dtype=np.float32,
         kw=dict(stride=2, padding=1, dilation=1, groups=3), seed=1),          # 1x1 image, depthwise
    dict(shape=(1, 2, 3, 1), wshape=(4, 5, 1, 2), dtype=np.float64,
         kw=dict(stride=3, padding=1, dilation=1, groups=1), seed=2),          # kernel == padded
    dict(shape=(1, 4, 1, 2), wshape=(2, 1, 2, 1), dtype=np.float32,
         kw=dict(stride=1, padding=((0, 0), (0, 0)), dilation=3, groups=1), seed=3),
    dict(shape=(1, 1, 1, 1), wshape=(2, 2, 1, 1), dtype=np.float64,
         kw=dict(stride=3, padding="same", dilation=2, groups=1), seed=4),
]


#: Shapes that the automatic choice sends to the fast routes (Winograd: 16 input channels;
#: direct: float32 RGB, 32 filters), with odd sizes and 2 or 3 threads.
AUTO_ROUTE_CONV = [
    dict(shape=(3, 7, 9, 16), wshape=(3, 3, 16, 8), dtype=np.float32,
         kw=dict(stride=1, padding=1, dilation=1, groups=1), seed=5, threads=3),
    dict(shape=(2, 9, 7, 3), wshape=(3, 3, 3, 32), dtype=np.float32,
         kw=dict(stride=1, padding=0, dilation=1, groups=1), seed=6, threads=2),
]


@pytest.mark.parametrize("route", CONV_ROUTES)
@given(data_=st.data())
def test_conv2d_matches_reference(route, data_):
    _check_conv_forward(route, data_.draw(conv_configs(route)))


@pytest.mark.parametrize("cfg", DEGENERATE_CONV + AUTO_ROUTE_CONV)
def test_conv2d_examples_match_reference(cfg):
    _check_conv_forward("auto", cfg)
    _check_conv_backward("auto", cfg)


def _check_conv_forward(route, cfg):
    x = data(cfg["seed"], cfg["shape"], cfg["dtype"])
    w = data(cfg["seed"] + 1, cfg["wshape"], cfg["dtype"])
    b = data(cfg["seed"] + 2, cfg["wshape"][3:], cfg["dtype"])
    with forced(threads=cfg.get("threads", 1), conv=route, block_bytes=_blocks(cfg)), \
            depthwise_spy() as spy:
        y = F.conv2d(x, w, b, **cfg["kw"])
        if cfg.get("route") == route:
            assert_route(route, 0, spy)
    want = R.conv2d(x, w, b, **cfg["kw"])
    assert_close(y, want, cfg["dtype"])
    for _ in range(2):     # cconv's own settings: the repeat may take the compiled fast path
        assert_close(F.conv2d(x, w, b, **cfg["kw"]), want, cfg["dtype"])


@pytest.mark.parametrize("route", CONV_ROUTES)
@given(data_=st.data())
def test_conv2d_backward_matches_reference(route, data_):
    _check_conv_backward(route, data_.draw(conv_configs(route)))


def _check_conv_backward(route, cfg):
    x = data(cfg["seed"], cfg["shape"], cfg["dtype"])
    w = data(cfg["seed"] + 1, cfg["wshape"], cfg["dtype"])
    y = R.conv2d(x, w, **cfg["kw"])
    dy = data(cfg["seed"] + 3, y.shape, cfg["dtype"])
    with forced(threads=cfg.get("threads", 1), conv=route, block_bytes=_blocks(cfg)), \
            depthwise_spy() as spy:
        dx, dw, db = F.conv2d_backward(dy, x, w, **cfg["kw"])
        none, dw1, db1 = F.conv2d_backward(dy, x, w, need_dx=False, **cfg["kw"])
        if cfg.get("route") == route:
            assert_route(route, 1, spy)
    rx, rw, rb = R.conv2d_backward(dy, x, w, **cfg["kw"])
    assert_close(dx, rx, cfg["dtype"])
    assert_close(dw, rw, cfg["dtype"])
    assert_close(db, rb, cfg["dtype"])
    assert none is None
    assert_close(dw1, rw, cfg["dtype"])
    assert_close(db1, rb, cfg["dtype"])


@pytest.mark.parametrize("route", CONV_ROUTES)
@given(data_=st.data())
def test_conv2d_max_pool2d_matches_reference(route, data_):
    """The fused convolution -> (ReLU) -> max pool: the unfused cconv chain's bits (NaN in a
    tenth of the examples) and the reference's values; on the Winograd and direct routes with
    a 2x2 stride-2 pool, the fused kernel ran."""
    cfg = data_.draw(conv_configs(route))
    relu, nan = data_.draw(st.booleans()), data_.draw(st.integers(0, 9)) == 0
    x = data(cfg["seed"], cfg["shape"], cfg["dtype"])
    w = data(cfg["seed"] + 1, cfg["wshape"], cfg["dtype"])
    b = data(cfg["seed"] + 2, cfg["wshape"][3:], cfg["dtype"])
    oh, ow = F.conv2d(x, w, b, **cfg["kw"]).shape[1:3]
    # the 2x2 stride-2 pool where it fits (the fused kernels), else a 1x1 one (unfused)
    pool = (dict(pool_size=2) if min(oh, ow) >= 2 and data_.draw(st.integers(0, 4))
            else dict(pool_size=1, pool_stride=data_.draw(st.sampled_from([None, 1]))))
    if nan:
        x.reshape(-1)[data_.draw(st.integers(0, x.size - 1))] = np.nan
    with_arg = data_.draw(st.booleans())
    with forced(threads=cfg["threads"], conv=route, block_bytes=_blocks(cfg)):
        y = F.conv2d_max_pool2d(x, w, b, **cfg["kw"], **pool, relu=relu, return_argmax=with_arg)
        ran = kernels_run()
        z = F.conv2d(x, w, b, **cfg["kw"])
        want, want_arg = F.max_pool2d(F.relu(z) if relu else z, pool["pool_size"],
                                      pool.get("pool_stride"))
        if with_arg:       # the argmax of the pool before the ReLU (max_pool2d's format)
            y, arg = y
            want_arg = F.max_pool2d(z, pool["pool_size"], pool.get("pool_stride"))[1]
    if route in ROUTE_POOL_KERNELS and pool["pool_size"] == 2:
        assert ROUTE_POOL_KERNELS[route][0] in ran, sorted(ran)
    assert_fused_equal(y, want, ran, oh, ow)
    if with_arg and not ("winograd_forward_pool" in ran and (oh % 2 or ow % 2)):
        np.testing.assert_array_equal(arg, want_arg)
    if not nan:
        assert_close(y, R.conv2d_max_pool2d(x, w, b, **cfg["kw"], **pool, relu=relu), cfg["dtype"])


@pytest.mark.parametrize("route", CONV_ROUTES)
@given(data_=st.data())
def test_conv2d_max_pool2d_backward_matches_reference(route, data_):
    """The backward pass of the convolution + max pool from the pooled gradient: the unfused
    cconv chain's bits (max_pool2d_backward then conv2d_backward; NaN in a tenth of the
    examples, ties in a fifth; to rounding where the Winograd kernel skips the tiles of an
    odd-sized output's last row/column, see assert_fused_equal) and the reference's values;
    in half the examples after a ReLU (``relu_output``: relu_backward first); on the direct
    and Winograd routes with a 2x2 stride-2 pool, the fused kernel ran."""
    cfg = data_.draw(conv_configs(route))
    nan, ties = data_.draw(st.integers(0, 9)) == 0, data_.draw(st.integers(0, 4)) == 0
    need_dx = data_.draw(st.booleans()) if route != "direct" else False
    x = data(cfg["seed"], cfg["shape"], cfg["dtype"], ties)
    w = data(cfg["seed"] + 1, cfg["wshape"], cfg["dtype"], ties)
    z = F.conv2d(x, w, **cfg["kw"])
    oh, ow = z.shape[1:3]
    pool = (dict(pool_size=2) if min(oh, ow) >= 2 and data_.draw(st.integers(0, 4))
            else dict(pool_size=1, pool_stride=data_.draw(st.sampled_from([None, 1]))))
    p, arg = F.max_pool2d(z, pool["pool_size"], pool.get("pool_stride"))
    dy = data(cfg["seed"] + 3, p.shape, cfg["dtype"])
    if nan:
        dy.reshape(-1)[data_.draw(st.integers(0, dy.size - 1))] = np.nan
    # after relu=True: the pooled output's ReLU masks dy (a NaN output masks nothing out)
    relu = np.maximum(p, 0) if data_.draw(st.booleans()) else None
    dp = dy if relu is None else F.relu_backward(dy, relu)
    with forced(threads=cfg["threads"], conv=route, block_bytes=_blocks(cfg)):
        got = F.conv2d_max_pool2d_backward(dy, arg, x, w, **cfg["kw"], need_dx=need_dx, **pool,
                                           relu_output=relu)
        ran = kernels_run()
        want = F.conv2d_backward(F.max_pool2d_backward(dp, arg, z.shape), x, w, **cfg["kw"],
                                 need_dx=need_dx)
    if route in ROUTE_POOL_KERNELS and pool["pool_size"] == 2:
        assert ROUTE_POOL_KERNELS[route][1] in ran, sorted(ran)
        # and its result was kept: no fallback to the two functions (which a kernel that
        # miscounts the argmax entries naming their windows would take)
        assert not any(k.startswith("max_pool2d") for k in ran), sorted(ran)
    assert (got[0] is None) == (not need_dx)
    for g, r in zip(got, want):
        if r is not None:
            assert_fused_equal(g, r, ran, oh, ow, "winograd_backward_pool")
    if not nan:
        ref = R.conv2d_max_pool2d_backward(dp, arg, x, w, **cfg["kw"], **pool)
        for g, r in zip(got, ref):
            if g is not None:
                assert_close(g, r, cfg["dtype"])


@given(conv_configs())
@example(DEGENERATE_CONV[2])
def test_im2col_col2im_match_reference_and_are_adjoint(cfg):
    kw = dict(cfg["kw"])
    del kw["groups"]
    kw["kernel_size"] = cfg["wshape"][:2]
    x = data(cfg["seed"], cfg["shape"], cfg["dtype"])
    c = data(cfg["seed"] + 1, R.im2col(x, **kw).shape, cfg["dtype"])
    with forced(threads=cfg.get("threads", 1)):
        cols = F.im2col(x, **kw)
        back = F.col2im(c, x.shape, **kw)
    np.testing.assert_array_equal(cols, R.im2col(x, **kw))
    assert cols.dtype == np.dtype(cfg["dtype"])
    assert_close(back, R.col2im(c, x.shape, **kw), cfg["dtype"])
    x64, c64 = x.astype(np.float64), c.astype(np.float64)
    lhs = np.vdot(F.im2col(x64, **kw), c64)
    rhs = np.vdot(x64, F.col2im(c64, x.shape, **kw))
    assert abs(lhs - rhs) <= 1e-10 * max(1.0, np.abs(cols).sum() * np.abs(c).max())


# ----------------------------------------------------------------------------- pooling

DEGENERATE_POOL = [
    dict(shape=(1, 1, 1, 1), dtype=np.float64, pool=(1, None, 0), seed=0, ties=False),
    dict(shape=(1, 1, 1, 2), dtype=np.float32, pool=(2, 1, "same"), seed=1, ties=False),
    dict(shape=(1, 2, 3, 1), dtype=np.float64, pool=((3, 4), None, (1, 1)), seed=2, ties=True),
    dict(shape=(2, 3, 3, 1), dtype=np.float32, pool=(3, None, 0), seed=3, ties=True),
]


@pytest.mark.parametrize("route", POOL_ROUTES)
@given(data_=st.data())
def test_max_pool_matches_reference(route, data_):
    _check_max_pool(route, data_.draw(pool_configs(route)))


@pytest.mark.parametrize("cfg", DEGENERATE_POOL)
def test_max_pool_examples_match_reference(cfg):
    _check_max_pool("auto", cfg)


def _check_max_pool(route, cfg):
    x = data(cfg["seed"], cfg["shape"], cfg["dtype"], ties=cfg["ties"])
    if cfg["seed"] % 4 == 1:       # NaNs in a tenth of the units: windows with several
        x[np.random.default_rng(cfg["seed"]).random(x.shape) < 0.1] = np.nan
    ry, rarg = R.max_pool2d(x, *cfg["pool"])
    dy = data(cfg["seed"] + 1, ry.shape, cfg["dtype"])
    with forced(threads=cfg.get("threads", 1), pool=route):
        y, arg = F.max_pool2d(x, *cfg["pool"])
        dx = F.max_pool2d_backward(dy, arg, x.shape)
        if cfg.get("route") == route:
            assert_route(route, 0)
            assert_route(route, 1)
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(arg, rarg)     # the first-wins tie rule, the last NaN
    for _ in range(2):     # cconv's own settings: the repeat may take the compiled fast path
        y2, arg2 = F.max_pool2d(x, *cfg["pool"])
        np.testing.assert_array_equal(y2, ry)
        np.testing.assert_array_equal(arg2, rarg)
    assert y.dtype == np.dtype(cfg["dtype"]) and arg.dtype == np.int32
    assert_close(dx, R.max_pool2d_backward_from_x(dy, x, *cfg["pool"]), cfg["dtype"])


@given(pool_configs())
@example(DEGENERATE_POOL[0])
@example(DEGENERATE_POOL[1])
@example(DEGENERATE_POOL[2])
def test_avg_pool_matches_reference(cfg):
    x = data(cfg["seed"], cfg["shape"], cfg["dtype"], ties=cfg["ties"])
    ry = R.avg_pool2d(x, *cfg["pool"])
    dy = data(cfg["seed"] + 1, ry.shape, cfg["dtype"])
    with forced(threads=cfg.get("threads", 1)):
        y = F.avg_pool2d(x, *cfg["pool"])
        dx = F.avg_pool2d_backward(dy, x.shape, *cfg["pool"])
    assert_close(y, ry, cfg["dtype"])
    assert_close(dx, R.avg_pool2d_backward(dy, x.shape, *cfg["pool"]), cfg["dtype"])


# ----------------------------------------------------------------------------- 2-D signals

@given(h=st.integers(1, 7), w=st.integers(1, 7), kh=st.integers(1, 5), kw=st.integers(1, 5),
       mode=st.sampled_from(["valid", "same", "full"]), dtype=DTYPES,
       seed=st.integers(0, 2**32 - 1))
def test_correlate_convolve_match_reference(h, w, kh, kw, mode, dtype, seed):
    if mode == "valid":
        h, w = max(h, kh), max(w, kw)
    img = data(seed, (h, w), dtype)
    ker = data(seed + 1, (kh, kw), dtype)
    assert_close(F.correlate2d(img, ker, mode), R.correlate2d(img, ker, mode).astype(dtype),
                 dtype)
    assert_close(F.convolve2d(img, ker, mode), R.convolve2d(img, ker, mode).astype(dtype), dtype)


def test_profiles_are_registered(request):
    assert settings.get_profile("ci").max_examples == 30
    assert settings.get_profile("long").max_examples == 1000
    chosen = request.config.getoption("hypothesis_profile", None) or os.environ.get(
        "HYPOTHESIS_PROFILE", "ci")
    assert settings.default.max_examples == settings.get_profile(chosen).max_examples
