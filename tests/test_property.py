"""Property-based tests (hypothesis): cconv.functional against tests/reference.py.

Random shapes, strides, paddings (every form), dilations, groups, pool sizes and dtypes,
including the degenerate but legal corners: 1x1 images, a kernel as large as the padded
input, a batch of one, a single channel.

Example counts come from the hypothesis profiles of tests/conftest.py: "ci" (30 examples
per test, the default) and "long" (1000):

    python -m pytest tests/test_property.py --hypothesis-profile=long
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cconv import functional as F

import reference as R

DTYPES = st.sampled_from([np.float32, np.float64])


def assert_close(actual, expected, dtype):
    assert actual.dtype == np.dtype(dtype), (actual.dtype, dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    if np.dtype(dtype) == np.float32:
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=3e-5 * scale)
    else:
        np.testing.assert_allclose(actual, expected, rtol=1e-10, atol=1e-12 * scale)


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


def _size_for(draw, extent, pads, degenerate):
    """An input size >= 1 on which a window of this extent fits after padding; hypothesis
    shrinks the slack towards 0, i.e. towards a window exactly as large as the padded input."""
    lo = max(1, extent - pads[0] - pads[1])
    return lo if degenerate else lo + draw(st.integers(0, 5))


@st.composite
def conv_configs(draw):
    dtype = draw(DTYPES)
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    depthwise = groups > 1 and draw(st.booleans())
    cg = 1 if depthwise else draw(st.integers(1, 3))
    cout = groups * draw(st.integers(1, 3))
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    # an int or a pair for stride and dilation
    stride = draw(st.one_of(st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    dilation = draw(st.one_of(st.integers(1, 3),
                              st.tuples(st.integers(1, 3), st.integers(1, 3))))
    d = R.pair(dilation)
    n = draw(st.integers(1, 3))
    degenerate = draw(st.booleans())
    if draw(st.integers(0, 4)) == 0:
        padding = "same"
        h, w = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    else:
        padding, ((pt, pb), (pl, pr)) = draw(_pads_strategy(3))
        h = _size_for(draw, d[0] * (k[0] - 1) + 1, (pt, pb), degenerate)
        w = _size_for(draw, d[1] * (k[1] - 1) + 1, (pl, pr), degenerate)
    seed = draw(st.integers(0, 2**32 - 1))
    return dict(shape=(n, h, w, groups * cg), wshape=(k[0], k[1], cg, cout), dtype=dtype,
                kw=dict(stride=stride, padding=padding, dilation=dilation, groups=groups),
                seed=seed)


@st.composite
def pool_configs(draw):
    dtype = draw(DTYPES)
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = draw(st.one_of(st.none(), st.integers(1, 3),
                            st.tuples(st.integers(1, 3), st.integers(1, 3))))
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 3))
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
                seed=draw(st.integers(0, 2**32 - 1)), ties=draw(st.booleans()))


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


@given(conv_configs())
@example(DEGENERATE_CONV[0])
@example(DEGENERATE_CONV[1])
@example(DEGENERATE_CONV[2])
@example(DEGENERATE_CONV[3])
@example(DEGENERATE_CONV[4])
def test_conv2d_matches_reference(cfg):
    x = data(cfg["seed"], cfg["shape"], cfg["dtype"])
    w = data(cfg["seed"] + 1, cfg["wshape"], cfg["dtype"])
    b = data(cfg["seed"] + 2, cfg["wshape"][3:], cfg["dtype"])
    assert_close(F.conv2d(x, w, b, **cfg["kw"]), R.conv2d(x, w, b, **cfg["kw"]), cfg["dtype"])


@given(conv_configs())
@example(DEGENERATE_CONV[0])
@example(DEGENERATE_CONV[1])
@example(DEGENERATE_CONV[2])
@example(DEGENERATE_CONV[3])
@example(DEGENERATE_CONV[4])
def test_conv2d_backward_matches_reference(cfg):
    x = data(cfg["seed"], cfg["shape"], cfg["dtype"])
    w = data(cfg["seed"] + 1, cfg["wshape"], cfg["dtype"])
    y = F.conv2d(x, w, **cfg["kw"])
    dy = data(cfg["seed"] + 3, y.shape, cfg["dtype"])
    dx, dw, db = F.conv2d_backward(dy, x, w, **cfg["kw"])
    rx, rw, rb = R.conv2d_backward(dy, x, w, **cfg["kw"])
    assert_close(dx, rx, cfg["dtype"])
    assert_close(dw, rw, cfg["dtype"])
    assert_close(db, rb, cfg["dtype"])
    none, dw1, db1 = F.conv2d_backward(dy, x, w, need_dx=False, **cfg["kw"])
    assert none is None
    assert_close(dw1, rw, cfg["dtype"])
    assert_close(db1, rb, cfg["dtype"])


@given(conv_configs())
@example(DEGENERATE_CONV[2])
def test_im2col_col2im_match_reference_and_are_adjoint(cfg):
    kw = dict(cfg["kw"])
    del kw["groups"]
    kw["kernel_size"] = cfg["wshape"][:2]
    x = data(cfg["seed"], cfg["shape"], cfg["dtype"])
    cols = F.im2col(x, **kw)
    np.testing.assert_array_equal(cols, R.im2col(x, **kw))
    assert cols.dtype == np.dtype(cfg["dtype"])
    c = data(cfg["seed"] + 1, cols.shape, cfg["dtype"])
    back = F.col2im(c, x.shape, **kw)
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


@given(pool_configs())
@example(DEGENERATE_POOL[0])
@example(DEGENERATE_POOL[1])
@example(DEGENERATE_POOL[2])
@example(DEGENERATE_POOL[3])
def test_max_pool_matches_reference(cfg):
    x = data(cfg["seed"], cfg["shape"], cfg["dtype"], ties=cfg["ties"])
    y, arg = F.max_pool2d(x, *cfg["pool"])
    ry, rarg = R.max_pool2d(x, *cfg["pool"])
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(arg, rarg)     # includes the first-wins tie rule
    assert y.dtype == np.dtype(cfg["dtype"]) and arg.dtype == np.int32
    dy = data(cfg["seed"] + 1, y.shape, cfg["dtype"])
    assert_close(F.max_pool2d_backward(dy, arg, x.shape),
                 R.max_pool2d_backward_from_x(dy, x, *cfg["pool"]), cfg["dtype"])


@given(pool_configs())
@example(DEGENERATE_POOL[0])
@example(DEGENERATE_POOL[1])
@example(DEGENERATE_POOL[2])
def test_avg_pool_matches_reference(cfg):
    x = data(cfg["seed"], cfg["shape"], cfg["dtype"], ties=cfg["ties"])
    y = F.avg_pool2d(x, *cfg["pool"])
    assert_close(y, R.avg_pool2d(x, *cfg["pool"]), cfg["dtype"])
    dy = data(cfg["seed"] + 1, y.shape, cfg["dtype"])
    assert_close(F.avg_pool2d_backward(dy, x.shape, *cfg["pool"]),
                 R.avg_pool2d_backward(dy, x.shape, *cfg["pool"]), cfg["dtype"])


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
