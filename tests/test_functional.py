"""cconv.functional against the slow direct references of tests/reference.py.

Covers issue 2's correctness list: many shapes (batch 1 and odd batches, odd H/W, C = 1 and 3,
kernels from 1x1 up to the full padded input, strides 1-3, every padding form, dilation 1-3,
groups 1, 2 and depthwise) in float32 and float64, finite-difference gradient checks in
float64, im2col/col2im adjointness, the pooling conventions, need_dx=False, non-contiguous and
read-only inputs, inputs never modified, dtypes, NaN/inf, the worked examples of the theory,
correlate2d/convolve2d against scipy.signal, and thread-count independence.
"""
import contextlib

import numpy as np
import pytest

from cconv import _testing
from cconv import functional as F
from cconv._testing import Run, forced, kernels_run

import reference as R
from route_spy import depthwise_spy
from reference import numerical_grad

DTYPES = [np.float32, np.float64]


def tol(dtype, scale=1.0):
    """Per-dtype tolerances; ``scale`` is the magnitude of the expected values."""
    scale = max(1.0, float(scale))
    if np.dtype(dtype) == np.float32:
        return dict(rtol=1e-4, atol=2e-5 * scale)
    return dict(rtol=1e-10, atol=1e-12 * scale)


def assert_close(actual, expected, dtype):
    assert actual.dtype == np.dtype(dtype), (actual.dtype, dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    finite = np.abs(expected[np.isfinite(expected)])
    scale = finite.max() if finite.size else 1.0
    np.testing.assert_allclose(actual, expected, **tol(dtype, scale))


def rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


# (N, H, W, C, KH, KW, C_out, stride, padding, dilation, groups)
CONV_CASES = [
    (1, 5, 5, 1, 3, 3, 1, 1, 0, 1, 1),
    (3, 7, 5, 3, 3, 3, 4, 1, 1, 1, 1),
    (2, 6, 7, 3, 1, 1, 5, 1, 0, 1, 1),                     # 1x1, stride 1: no im2col path
    (3, 6, 7, 3, 1, 1, 2, 2, 0, 1, 1),                     # 1x1 strided
    (2, 5, 6, 1, 1, 1, 3, 1, 1, 1, 1),                     # 1x1 padded
    (1, 5, 4, 3, 5, 4, 2, 1, 0, 1, 1),                     # kernel == input
    (3, 3, 4, 1, 5, 6, 2, 1, ((1, 1), (1, 1)), 1, 1),      # kernel == padded input
    (1, 2, 3, 3, 4, 3, 2, 2, (1, 0), 1, 1),                # kernel == padded input, stride 2
    (2, 9, 8, 3, 3, 2, 4, 2, 0, 1, 1),
    (1, 11, 10, 3, 3, 3, 2, 3, 1, 1, 1),
    (2, 8, 9, 2, 3, 3, 3, (2, 3), (1, 2), 1, 1),
    (3, 7, 9, 3, 3, 3, 2, 2, "same", 1, 1),                # TF-style same, stride 2
    (1, 8, 8, 1, 4, 4, 1, 3, "same", 1, 1),                # even kernel, stride 3
    (2, 6, 5, 3, 2, 2, 3, 1, "same", 1, 1),                # even kernel, stride 1
    (1, 7, 4, 3, 3, 3, 2, (3, 2), "same", 1, 1),
    (2, 7, 7, 3, 3, 3, 2, 1, "valid", 1, 1),
    (1, 9, 8, 2, 3, 2, 2, 1, ((0, 2), (1, 0)), 1, 1),      # asymmetric
    (3, 6, 7, 1, 2, 3, 2, 2, ((2, 1), (0, 3)), 1, 1),
    (2, 9, 9, 3, 3, 3, 2, 1, 0, 2, 1),                     # dilation 2
    (1, 11, 10, 1, 3, 3, 2, 2, 2, 3, 1),                   # dilation 3, stride 2
    (3, 10, 9, 3, 2, 3, 3, 1, "same", (2, 3), 1),
    (1, 7, 8, 3, 3, 2, 2, 1, 0, (3, 1), 1),
    (2, 7, 6, 4, 3, 3, 6, 1, 1, 1, 2),                     # groups 2
    (3, 6, 7, 6, 3, 2, 4, 2, "same", 1, 2),
    (1, 5, 5, 2, 2, 2, 2, 1, 0, 2, 2),
    (2, 7, 7, 3, 3, 3, 3, 1, 1, 1, 3),                     # depthwise
    (1, 8, 9, 4, 3, 3, 8, 2, 1, 2, 4),                     # depthwise, multiplier 2
    (5, 5, 5, 3, 3, 3, 6, 3, "same", 2, 3),
    # depthwise with 8+ channels (every depthwise case also runs on the depthwise route)
    (2, 7, 6, 8, 3, 3, 8, 1, 1, 1, 8),
    (2, 9, 8, 8, 3, 3, 16, 2, 1, 2, 8),                    # multiplier 2, stride 2, dilation 2
    (3, 6, 7, 9, 2, 3, 27, (2, 1), ((2, 0), (1, 3)), (1, 2), 9),   # multiplier 3
    (1, 5, 4, 16, 3, 3, 32, 3, "same", 1, 16),
    (2, 3, 4, 8, 5, 5, 8, 1, 2, 1, 8),                     # kernel wider than the image
    (1, 1, 1, 3, 1, 1, 2, 1, 0, 1, 1),                     # 1x1 image
    (1, 1, 1, 1, 3, 3, 2, 1, 1, 1, 1),                     # 1x1 image, kernel == padded
    # 3x3 stride 1 (also on both Winograd routes): partial last 4x4 and 2x2 tiles
    (3, 9, 11, 5, 3, 3, 7, 1, "same", 1, 1),
    (1, 6, 6, 8, 3, 3, 8, 1, 0, 1, 1),                     # one 4x4 tile
    (2, 8, 13, 16, 3, 3, 24, 1, ((0, 2), (1, 0)), 1, 1),   # asymmetric, 16 channels
    (2, 4, 5, 3, 3, 3, 2, 1, ((2, 2), (2, 2)), 1, 1),      # padding wider than the kernel's reach
]


def conv_id(case):
    n, h, w, c, kh, kw, co, s, p, d, g = case
    return f"x{n}x{h}x{w}x{c}-k{kh}x{kw}x{co}-s{s}-p{p}-d{d}-g{g}".replace(" ", "")


def make_conv(case, dtype, seed=0):
    n, h, w, c, kh, kw, co, s, p, d, g = case
    rng = np.random.default_rng(seed)
    x = rand(rng, (n, h, w, c), dtype)
    wt = rand(rng, (kh, kw, c // g, co), dtype)
    b = rand(rng, (co,), dtype)
    return x, wt, b, dict(stride=s, padding=p, dilation=d, groups=g)


def conv_routes(case):
    """The routes a case runs on: cconv's choice; the depthwise route for groups == C_in
    (which cconv chooses for large depthwise layers only, DEPTHWISE_MIN_OUTPUTS); both
    Winograd routes (the backward pass on F(2x2, 3x3) and on F(4x4, 3x3)) for 3x3 stride-1
    undilated ungrouped convolutions, whatever their channel counts."""
    n, h, w, c, kh, kw, co, s, p, d, g = case
    routes = ["auto", "depthwise"] if c == g else ["auto"]
    if (kh, kw, s, d, g) == (3, 3, 1, 1, 1):
        routes += ["winograd", "winograd4"]
    return routes


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES, ids=conv_id)
def test_conv2d_forward_matches_reference(case, dtype):
    x, w, b, kw = make_conv(case, dtype)
    for route in conv_routes(case):
        with forced(conv=route, block_bytes=1 if route == "depthwise" else None):
            assert_close(F.conv2d(x, w, b, **kw), R.conv2d(x, w, b, **kw), dtype)
            assert_close(F.conv2d(x, w, None, **kw), R.conv2d(x, w, None, **kw), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES, ids=conv_id)
def test_conv2d_backward_matches_reference(case, dtype):
    x, w, b, kw = make_conv(case, dtype)
    y = R.conv2d(x, w, b, **kw)
    dy = rand(np.random.default_rng(1), y.shape, dtype)
    rx, rw, rb = R.conv2d_backward(dy, x, w, **kw)
    for route in conv_routes(case):
        with forced(conv=route, block_bytes=1 if route == "depthwise" else None):
            dx, dw, db = F.conv2d_backward(dy, x, w, **kw)
        assert_close(dx, rx, dtype)
        assert_close(dw, rw, dtype)
        assert_close(db, rb, dtype)


@pytest.mark.parametrize("case", CONV_CASES[::3], ids=conv_id)
def test_conv2d_need_dx_false(case):
    x, w, _, kw = make_conv(case, np.float64)
    y = F.conv2d(x, w, **kw)
    dy = np.random.default_rng(2).standard_normal(y.shape)
    for route in conv_routes(case):
        with forced(conv=route):
            dx, dw, db = F.conv2d_backward(dy, x, w, **kw)
            none, dw2, db2 = F.conv2d_backward(dy, x, w, need_dx=False, **kw)
        assert dx is not None and none is None
        np.testing.assert_allclose(dw2, dw, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(db2, db, rtol=1e-13, atol=1e-13)


# ---------------------------------------------------------------------------- finite differences

GRADCHECK_CASES = [
    (2, 5, 4, 2, 3, 3, 3, 1, 1, 1, 1),
    (1, 6, 5, 2, 2, 3, 2, 2, "same", 1, 1),
    (2, 7, 6, 2, 3, 2, 2, (1, 2), ((2, 0), (1, 1)), 2, 1),
    (1, 5, 5, 4, 3, 3, 4, 2, 1, 1, 2),
    (3, 4, 5, 3, 2, 2, 3, 1, 0, 1, 3),
    (1, 3, 3, 1, 5, 5, 1, 1, 1, 1, 1),
    (2, 5, 6, 8, 3, 2, 16, (2, 1), ((1, 2), (0, 1)), (1, 2), 8),   # depthwise route
]


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=conv_id)
def test_conv2d_backward_finite_differences(case):
    x, w, b, kw = make_conv(case, np.float64, seed=3)
    g = np.random.default_rng(4).standard_normal(F.conv2d(x, w, b, **kw).shape)

    def loss():
        return float(np.sum(F.conv2d(x, w, b, **kw) * g))

    for route in conv_routes(case):
        with forced(conv=route):
            dx, dw, db = F.conv2d_backward(g, x, w, **kw)
            np.testing.assert_allclose(dx, numerical_grad(loss, x), rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(dw, numerical_grad(loss, w), rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(db, numerical_grad(loss, b), rtol=1e-6, atol=1e-7)


def distinct_values(rng, shape):
    """Values whose gaps (>= 0.1) dwarf the finite-difference step: no ties, no near-ties."""
    return (rng.permutation(int(np.prod(shape))).reshape(shape) * 0.1
            + rng.uniform(0, 0.01, shape))


POOL_GRAD_CASES = [
    (2, 5, 4, 2, 2, None, 0),
    (1, 6, 7, 2, 3, 2, 1),
    (2, 5, 5, 1, (2, 3), (1, 2), ((1, 0), (0, 2))),
    (1, 7, 5, 2, 3, None, "same"),
]


@pytest.mark.parametrize("case", POOL_GRAD_CASES, ids=str)
def test_max_pool_backward_finite_differences(case):
    n, h, w, c, k, s, p = case
    rng = np.random.default_rng(5)
    x = distinct_values(rng, (n, h, w, c))
    y, arg = F.max_pool2d(x, k, s, p)
    g = rng.standard_normal(y.shape)

    def loss():
        return float(np.sum(F.max_pool2d(x, k, s, p)[0] * g))

    dx = F.max_pool2d_backward(g, arg, x.shape)
    np.testing.assert_allclose(dx, numerical_grad(loss, x), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("case", POOL_GRAD_CASES, ids=str)
def test_avg_pool_backward_finite_differences(case):
    n, h, w, c, k, s, p = case
    rng = np.random.default_rng(6)
    x = rng.standard_normal((n, h, w, c))
    g = rng.standard_normal(F.avg_pool2d(x, k, s, p).shape)

    def loss():
        return float(np.sum(F.avg_pool2d(x, k, s, p) * g))

    dx = F.avg_pool2d_backward(g, x.shape, k, s, p)
    np.testing.assert_allclose(dx, numerical_grad(loss, x), rtol=1e-6, atol=1e-7)


def test_col2im_is_gradient_of_im2col_finite_differences():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 5, 4, 2))
    geo = dict(kernel_size=(2, 3), stride=(2, 1), padding=((1, 0), (2, 1)), dilation=(1, 2))
    g = rng.standard_normal(F.im2col(x, **geo).shape)

    def loss():
        return float(np.sum(F.im2col(x, **geo) * g))

    np.testing.assert_allclose(F.col2im(g, x.shape, **geo), numerical_grad(loss, x),
                               rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------- im2col / col2im

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES, ids=conv_id)
def test_im2col_col2im_match_reference(case, dtype):
    n, h, w, c, kh, kw, _, s, p, d, _ = case
    rng = np.random.default_rng(8)
    x = rand(rng, (n, h, w, c), dtype)
    geo = dict(kernel_size=(kh, kw), stride=s, padding=p, dilation=d)
    cols = F.im2col(x, **geo)
    expected = R.im2col(x, **geo)
    assert cols.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(cols, expected)   # a copy: exact
    c_in = rand(rng, cols.shape, dtype)
    assert_close(F.col2im(c_in, x.shape, **geo), R.col2im(c_in, x.shape, **geo), dtype)


@pytest.mark.parametrize("case", CONV_CASES, ids=conv_id)
def test_im2col_col2im_adjoint(case):
    n, h, w, c, kh, kw, _, s, p, d, _ = case
    rng = np.random.default_rng(9)
    x = rng.standard_normal((n, h, w, c))
    geo = dict(kernel_size=(kh, kw), stride=s, padding=p, dilation=d)
    cols = F.im2col(x, **geo)
    cvec = rng.standard_normal(cols.shape)
    lhs = np.vdot(cols, cvec)
    rhs = np.vdot(x, F.col2im(cvec, x.shape, **geo))
    assert abs(lhs - rhs) <= 1e-10 * max(1.0, abs(lhs), np.abs(cols).sum())


def test_im2col_patch_order_is_kh_kw_c():
    x = np.arange(1 * 3 * 3 * 2, dtype=np.float64).reshape(1, 3, 3, 2)
    cols = F.im2col(x, 2)
    # first patch: pixels (0,0), (0,1), (1,0), (1,1), each with its 2 channels
    np.testing.assert_array_equal(cols[0], [0, 1, 2, 3, 6, 7, 8, 9])
    assert cols.shape == (4, 8)
    # output pixel (1, 1) is row 3
    np.testing.assert_array_equal(cols[3], [8, 9, 10, 11, 14, 15, 16, 17])


# ---------------------------------------------------------------------------- pooling

# (N, H, W, C, pool_size, stride, padding)
POOL_CASES = [
    (1, 4, 4, 1, 2, None, 0),
    (3, 7, 5, 3, 2, None, 0),                       # odd H/W: floor
    (2, 6, 7, 3, 3, 2, 1),
    (1, 5, 5, 2, 3, 1, 1),
    (2, 7, 8, 3, (2, 3), (1, 2), ((1, 0), (0, 2))),
    (2, 7, 9, 3, 3, None, "same"),
    (1, 5, 6, 1, 2, 2, "same"),
    (3, 5, 5, 2, 5, None, 0),                       # window == input
    (1, 1, 1, 3, 1, None, 0),                       # 1x1
    (2, 6, 6, 3, 2, 3, "valid"),
    (2, 5, 7, 2, 3, 3, 2),                          # pad = pool - 1
    (1, 9, 8, 3, 3, (3, 1), (0, 1)),
    (2, 7, 9, 8, 2, None, 0),                       # tiled, odd H/W: the AVX2 kernel (8 lanes)
    (1, 6, 11, 48, 2, None, 0),                     # AVX-512: 3 vectors (AVX2: 6)
    (3, 9, 7, 24, (3, 2), None, 0),                 # AVX2: 3 vectors
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_max_pool_matches_reference(case, dtype):
    n, h, w, c, k, s, p = case
    rng = np.random.default_rng(10)
    x = rand(rng, (n, h, w, c), dtype)
    y, arg = F.max_pool2d(x, k, s, p)
    ry, rarg = R.max_pool2d(x, k, s, p)
    assert y.dtype == np.dtype(dtype) and arg.dtype == np.int32
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(arg, rarg)
    dy = rand(rng, y.shape, dtype)
    dx = F.max_pool2d_backward(dy, arg, x.shape)
    assert_close(dx, R.max_pool2d_backward_from_x(dy, x, k, s, p), dtype)
    # PyTorch-style int64 indices (and other integer dtypes) route the same way.
    for other in (np.int64, np.uint16):
        np.testing.assert_array_equal(F.max_pool2d_backward(dy, arg.astype(other), x.shape), dx)


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool_int64_index_kernels(dtype):
    """The int64 specialisation (planes of 2**31 units or more) computes what int32 does."""
    rng = np.random.default_rng(21)
    x = rand(rng, (3, 9, 10, 5), dtype)
    y, arg = F.max_pool2d(x, 3, 2, 1)
    y64, arg64 = np.empty_like(y), np.empty(arg.shape, np.int64)
    F._core.max_pool2d_forward(x, y64, arg64, 3, 3, 2, 2, 1, 1, 2)
    np.testing.assert_array_equal(y64, y)
    np.testing.assert_array_equal(arg64, arg)
    assert F._argmax_dtype((1, 46341, 46341, 1)) == np.int64        # H*W >= 2**31
    assert F._argmax_dtype((1, 46340, 46340, 1)) == np.int32


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_avg_pool_matches_reference(case, dtype):
    n, h, w, c, k, s, p = case
    rng = np.random.default_rng(11)
    x = rand(rng, (n, h, w, c), dtype)
    y = F.avg_pool2d(x, k, s, p)
    assert_close(y, R.avg_pool2d(x, k, s, p), dtype)
    dy = rand(rng, y.shape, dtype)
    assert_close(F.avg_pool2d_backward(dy, x.shape, k, s, p),
                 R.avg_pool2d_backward(dy, x.shape, k, s, p), dtype)


def test_max_pool_ties_go_to_first_in_row_major_order():
    x = np.zeros((1, 4, 4, 1))
    y, arg = F.max_pool2d(x, 2)
    # every window is all zeros: the winner is its top-left pixel
    np.testing.assert_array_equal(arg[0, :, :, 0], [[0, 2], [8, 10]])
    x = np.zeros((1, 2, 3, 2))
    x[0, 0, 1, 0] = x[0, 1, 0, 0] = 5.0         # channel 0: tie between (0,1) and (1,0)
    x[0, 1, 0, 1] = x[0, 1, 1, 1] = 5.0         # channel 1: tie between (1,0) and (1,1)
    y, arg = F.max_pool2d(x, (2, 3))
    np.testing.assert_array_equal(y[0, 0, 0], [5.0, 5.0])
    np.testing.assert_array_equal(arg[0, 0, 0], [1, 3])
    dx = F.max_pool2d_backward(np.array([[[[1.0, 2.0]]]]), arg, x.shape)
    expected = np.zeros_like(x)
    expected[0, 0, 1, 0] = 1.0
    expected[0, 1, 0, 1] = 2.0
    np.testing.assert_array_equal(dx, expected)


def test_max_pool_padding_never_wins():
    x = np.full((1, 3, 3, 1), -5.0)
    y, arg = F.max_pool2d(x, 3, stride=1, padding=1)
    np.testing.assert_array_equal(y, np.full((1, 3, 3, 1), -5.0))
    # the first in-bounds pixel of each window wins the all-equal tie
    np.testing.assert_array_equal(arg[0, :, :, 0], [[0, 0, 1], [0, 0, 1], [3, 3, 4]])


def test_max_pool_all_minus_inf_picks_an_in_bounds_unit():
    x = np.full((2, 3, 3, 2), -np.inf, dtype=np.float32)
    y, arg = F.max_pool2d(x, 2, stride=2, padding=1)
    assert np.all(y == -np.inf)
    assert arg.min() >= 0 and arg.max() < 9
    np.testing.assert_array_equal(arg[0, :, :, 0], [[0, 1], [3, 4]])
    dx = F.max_pool2d_backward(np.ones_like(y), arg, x.shape)
    assert dx.sum() == y.size


def test_avg_pool_divisor_counts_padded_zeros():
    x = np.ones((1, 3, 3, 1))
    y = F.avg_pool2d(x, 3, stride=1, padding=1)
    expected = np.array([[4, 6, 4], [6, 9, 6], [4, 6, 4]]) / 9.0
    np.testing.assert_allclose(y[0, :, :, 0], expected, rtol=1e-15)
    dx = F.avg_pool2d_backward(np.ones_like(y), x.shape, 3, stride=1, padding=1)
    # each pixel is in as many windows as the window has in-bounds pixels around it
    np.testing.assert_allclose(dx[0, :, :, 0], expected, rtol=1e-15)


def test_pool_stride_defaults_to_pool_size():
    x = np.random.default_rng(12).standard_normal((1, 6, 9, 2))
    y, arg = F.max_pool2d(x, 3)
    y2, arg2 = F.max_pool2d(x, 3, stride=3)
    assert y.shape == (1, 2, 3, 2)
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(arg, arg2)
    np.testing.assert_array_equal(F.avg_pool2d(x, (2, 3)), F.avg_pool2d(x, (2, 3), (2, 3)))
    dy = np.ones((1, 3, 3, 2))
    np.testing.assert_array_equal(F.avg_pool2d_backward(dy, x.shape, (2, 3)),
                                  F.avg_pool2d_backward(dy, x.shape, (2, 3), (2, 3)))


# ---------------------------------------------------------------------------- layouts, flags, dtypes

#: The routes the layout, flag and NaN checks run on: (forced() arguments, x shape, w shape,
#: conv keywords, need_dx, max-pool (size, stride, padding), instruction-set level needed,
#: dtypes). Each shape is one the route takes, and the tests check that it did.
ROUTES = {
    "im2col": (dict(conv="im2col"), (3, 7, 6, 4), (3, 2, 2, 6),
               dict(stride=(2, 1), padding=((1, 0), (0, 1)), dilation=(1, 2), groups=2), True,
               (3, 2, 1), 0, DTYPES),
    "winograd": (dict(conv="winograd"), (3, 7, 6, 4), (3, 3, 4, 6), dict(padding=(1, 0)), True,
                 (3, 2, 1), 0, DTYPES),
    "winograd4": (dict(conv="winograd4"), (3, 7, 6, 4), (3, 3, 4, 6), dict(padding=(1, 0)), True,
                  (3, 2, 1), 0, DTYPES),
    "depthwise": (dict(conv="depthwise", block_bytes=1), (3, 7, 6, 4), (3, 2, 1, 8),
                  dict(stride=(2, 1), padding=((1, 0), (0, 1)), dilation=(1, 2), groups=4), True,
                  (3, 2, 1), 0, DTYPES),
    "direct": (dict(conv="direct"), (3, 7, 6, 3), (3, 3, 3, 16),
               dict(stride=(1, 2), padding=((1, 0), (0, 1))), False, (3, 2, 1), 2, [np.float32]),
    "generic": (dict(pool="generic"), (3, 7, 9, 8), (2, 2, 8, 4), {}, True, (2, None, 0), 0,
                DTYPES),
    "avx2": (dict(pool="avx2"), (3, 7, 9, 8), (2, 2, 8, 4), {}, True, (2, None, 0), 1,
             [np.float32]),
    "avx512": (dict(pool="avx512"), (3, 7, 9, 16), (2, 2, 16, 4), {}, True, (2, None, 0), 2,
               [np.float32]),
}


def route_params(dtypes=DTYPES, skip=()):
    """(route, dtype) pairs for pytest: every route (but those in ``skip``) with each dtype
    it applies to."""
    return [pytest.param(route, dtype, id=f"{route}-{np.dtype(dtype).name}",
                         marks=pytest.mark.skipif(_testing.simd_max() < spec[6],
                                                  reason="not on this CPU"))
            for route, spec in ROUTES.items() for dtype in dtypes if dtype in spec[7]
            if route not in skip]


@contextlib.contextmanager
def on_route(route):
    """Run the block on 2 threads and `route`; afterwards check that the route ran (the
    numpy depthwise route: that its forward and backward functions were called)."""
    with forced(threads=2, **ROUTES[route][0]), depthwise_spy() as spy:
        yield
        ran = kernels_run()
    if route == "depthwise":
        assert spy.called == [True, True], spy.called
    for kernel in _testing.ROUTE_KERNELS.get(route, ()):
        assert kernel in ran, (route, kernel, sorted(ran))


def _all_calls(dtype, seed=13, route="im2col"):
    """(name, fn, args) for every public function, with small valid arguments (the shapes of
    the route's entry in ROUTES)."""
    _, xshape, wshape, conv, need_dx, pool, _, _ = ROUTES[route]
    rng = np.random.default_rng(seed)
    x = rand(rng, xshape, dtype)
    w = rand(rng, wshape, dtype)
    b = rand(rng, wshape[3:], dtype)
    y = F.conv2d(x, w, b, **conv)
    dy = rand(rng, y.shape, dtype)
    geo = dict(kernel_size=(2, 3), stride=1, padding=1, dilation=(2, 1))
    cols = rand(rng, F.im2col(x, **geo).shape, dtype)
    py, arg = F.max_pool2d(x, *pool)
    pdy = rand(rng, py.shape, dtype)
    img = rand(rng, (6, 5), dtype)
    ker = rand(rng, (3, 2), dtype)
    return [
        ("conv2d", F.conv2d, (x, w, b), conv),
        ("conv2d_backward", F.conv2d_backward, (dy, x, w), dict(conv, need_dx=need_dx)),
        ("conv2d_backward", F.conv2d_backward, (dy, x, w), dict(conv, need_dx=not need_dx)),
        ("im2col", F.im2col, (x,), geo),
        ("col2im", F.col2im, (cols, x.shape), geo),
        ("max_pool2d", F.max_pool2d, (x, *pool), {}),
        ("max_pool2d_backward", F.max_pool2d_backward, (pdy, arg, x.shape), {}),
        ("avg_pool2d", F.avg_pool2d, (x, 3, 2, 1), {}),
        ("avg_pool2d_backward", F.avg_pool2d_backward, (rand(rng, F.avg_pool2d(x, 3, 2, 1).shape, dtype),
                                                        x.shape, 3, 2, 1), {}),
        ("correlate2d", F.correlate2d, (img, ker, "same"), {}),
        ("convolve2d", F.convolve2d, (img, ker, "full"), {}),
    ]


def _flat(result):
    if isinstance(result, tuple):
        return [r for r in result if r is not None]
    return [result]


def _noncontiguous(a, how):
    """The same values as ``a`` in a non-contiguous (or differently ordered) layout."""
    if not isinstance(a, np.ndarray) or a.ndim == 0:
        return a
    if how == "fortran":
        return np.asfortranarray(a)
    if how == "strided":
        big = np.zeros(tuple(2 * s for s in a.shape), a.dtype)
        view = big[tuple(slice(None, None, 2) for _ in a.shape)]
        view[...] = a
        return view
    if how == "reversed":
        rev = np.ascontiguousarray(a[..., ::-1])
        return rev[..., ::-1]
    if how == "transposed":
        t = np.ascontiguousarray(a.T)
        return t.T
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["fortran", "strided", "reversed", "transposed", "readonly"])
@pytest.mark.parametrize("route, dtype", route_params())
def test_noncontiguous_and_readonly_inputs_give_identical_results(how, route, dtype):
    with on_route(route):
        _check_layouts(how, dtype, route)


def _check_layouts(how, dtype, route):
    for name, fn, args, kwargs in _all_calls(dtype, route=route):
        expected = _flat(fn(*args, **kwargs))
        if how == "readonly":
            new_args = []
            for a in args:
                if isinstance(a, np.ndarray):
                    a = a.copy()
                    a.setflags(write=False)
                new_args.append(a)
        else:
            new_args = [_noncontiguous(a, how) for a in args]
            assert any(isinstance(a, np.ndarray) and a.ndim > 1 and not a.flags.c_contiguous
                       for a in new_args), name
        got = _flat(fn(*new_args, **kwargs))
        assert len(got) == len(expected), name
        for g, e in zip(got, expected):
            np.testing.assert_array_equal(g, e, err_msg=f"{name} with {how} inputs")


@pytest.mark.parametrize("route, dtype", route_params())
def test_inputs_are_never_modified(route, dtype):
    with on_route(route):
        for name, fn, args, kwargs in _all_calls(dtype, route=route):
            before = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
            fn(*args, **kwargs)
            fn(*args, **kwargs)
            for a, b in zip(args, before):
                if isinstance(a, np.ndarray):
                    np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize("route, dtype", route_params())
def test_output_dtype_is_input_dtype(route, dtype):
    with on_route(route):
        _check_output_dtypes(dtype, route)


def _check_output_dtypes(dtype, route):
    for name, fn, args, kwargs in _all_calls(dtype, route=route):
        result = fn(*args, **kwargs)
        outs = _flat(result)
        if name == "max_pool2d":
            assert outs[0].dtype == np.dtype(dtype) and outs[1].dtype == np.int32
            continue
        for o in outs:
            assert o.dtype == np.dtype(dtype), (name, o.dtype)
        assert all(o.flags.c_contiguous for o in outs), name


@pytest.mark.parametrize("route, dtype", route_params(skip=("depthwise",)))   # ungrouped
def test_nan_and_inf_pass_through(route, dtype):
    with on_route(route):
        _check_nan_and_inf(dtype, route)


def _with_route(fn, *args, **kwargs):
    """fn(...) and whether the Winograd route has run (in this forced() block)."""
    out = fn(*args, **kwargs)
    return out, any(k in ("winograd_forward", "winograd_backward") for k in kernels_run())


def _assert_close_nonfinite(got, ref, dtype, winograd):
    """Close to the reference, with NaN and inf where it has them. On the Winograd route an
    infinite input gives NaN instead of +-inf in the outputs that see it (its transforms
    subtract, and inf - inf is NaN): there the finite entries and the NaNs must agree."""
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(ref))
    assert np.isnan(got[np.isnan(ref)]).all()
    if winograd:
        finite = np.isfinite(ref)
        assert_close(got[finite], ref[finite], dtype)
    else:
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
        assert_close(got, ref, dtype)


def _check_nan_and_inf(dtype, route):
    rng = np.random.default_rng(14)
    c, cout = ROUTES[route][1][3], ROUTES[route][2][3]
    x = rand(rng, (2, 6, 6, c), dtype)
    x[0, 1, 2, 0] = np.nan
    x[1, 4, 4, 2] = np.inf
    w = rand(rng, (3, 3, c, cout), dtype)
    b = rand(rng, (cout,), dtype)
    y, wino = _with_route(F.conv2d, x, w, b, padding=1)
    ry = R.conv2d(x, w, b, padding=1)
    _assert_close_nonfinite(y, ry, dtype, wino)
    assert np.isnan(y[0, 0:3, 1:4]).all() and np.isfinite(y[0, 4:, :]).all()
    assert np.isinf(y[1, 3:6, 3:6]).all() or np.isnan(y[1, 3:6, 3:6]).any()
    dy = rand(rng, y.shape, dtype)
    for need_dx in (True, False):
        got_all, wino = _with_route(F.conv2d_backward, dy, x, w, padding=1, need_dx=need_dx)
        for got, ref in zip(got_all, R.conv2d_backward(dy, x, w, padding=1)):
            if got is None:
                continue
            _assert_close_nonfinite(got, ref, dtype, wino)
        dw = got_all[1]
        assert np.isnan(dw[:, :, 0, :]).all()               # every tap saw the NaN of channel 0
        assert not np.isnan(dw[:, :, 1, :]).any()

    p, arg = F.max_pool2d(x, 2)
    assert np.isnan(p[0, 0, 1, 0]) and arg[0, 0, 1, 0] == 1 * 6 + 2   # the NaN wins
    assert p[1, 2, 2, 2] == np.inf and arg[1, 2, 2, 2] == 4 * 6 + 4
    ry, rarg = R.max_pool2d(x, 2)
    np.testing.assert_array_equal(p, ry)
    a = F.avg_pool2d(x, 2)
    assert np.isnan(a[0, 0, 1, 0]) and a[1, 2, 2, 2] == np.inf
    assert np.isfinite(np.delete(a.reshape(-1), [np.ravel_multi_index(i, a.shape) for i in
                                                 [(0, 0, 1, 0), (1, 2, 2, 2)]])).all()
    dy = np.full_like(a, np.nan)
    assert np.isnan(F.avg_pool2d_backward(dy, x.shape, 2)).all()
    assert np.isnan(F.max_pool2d_backward(dy, arg, x.shape)).sum() == dy.size


# ---------------------------------------------------------------------------- worked examples

def test_worked_example_correlation():
    x = np.array([[1, 7, 2], [11, 1, 23], [2, 2, 2]], dtype=np.float64)
    f = np.array([[1, 1], [0, 1]], dtype=np.float64)
    np.testing.assert_array_equal(F.correlate2d(x, f), [[9, 32], [14, 26]])
    np.testing.assert_array_equal(F.correlate2d(x.astype(np.float32), f.astype(np.float32)),
                                  [[9, 32], [14, 26]])
    # the same through conv2d with N = C_in = C_out = 1
    y = F.conv2d(x[None, :, :, None], f[:, :, None, None])
    np.testing.assert_array_equal(y[0, :, :, 0], [[9, 32], [14, 26]])
    # convolution = correlation with the kernel flipped both ways
    np.testing.assert_array_equal(F.convolve2d(x, f[::-1, ::-1]), [[9, 32], [14, 26]])


def test_worked_example_backpropagation_3x3_2x2():
    X = np.array([[1, 7, 2], [11, 1, 23], [2, 2, 2]], dtype=np.float64)
    Fk = np.array([[1, 1], [0, 1]], dtype=np.float64) + np.array([[0.5, -2], [3, 0.25]])
    dO = np.array([[0.5, -1.5], [2.0, 3.0]])
    dx, dw, db = F.conv2d_backward(dO[None, :, :, None], X[None, :, :, None],
                                   Fk[:, :, None, None])
    dX, dF = dx[0, :, :, 0], dw[:, :, 0, 0]

    # dL/dF = valid correlation of X with dL/dO
    np.testing.assert_allclose(dF, F.correlate2d(X, dO, "valid"), rtol=1e-14)
    for m in range(2):
        for n in range(2):
            expected = sum(X[i + m, j + n] * dO[i, j] for i in range(2) for j in range(2))
            assert dF[m, n] == pytest.approx(expected, rel=1e-14)
    assert db[0] == pytest.approx(dO.sum())

    # dL/dX = full convolution of dL/dO with F rotated by 180 degrees ...
    np.testing.assert_allclose(dX, F.convolve2d(dO, Fk, "full"), rtol=1e-14)
    np.testing.assert_allclose(dX, F.correlate2d(dO, np.rot90(Fk, 2), "full"), rtol=1e-14)
    # ... all nine entries written out (1-based names as in the theory)
    d11, d12, d21, d22 = dO.ravel()
    f11, f12, f21, f22 = Fk.ravel()
    expected = np.array([
        [d11 * f11, d11 * f12 + d12 * f11, d12 * f12],
        [d11 * f21 + d21 * f11, d11 * f22 + d12 * f21 + d21 * f12 + d22 * f11,
         d12 * f22 + d22 * f12],
        [d21 * f21, d21 * f22 + d22 * f21, d22 * f22],
    ])
    np.testing.assert_allclose(dX, expected, rtol=1e-14)


# ---------------------------------------------------------------------------- scipy.signal

SIGNAL_SHAPES = [((5, 6), (1, 1)), ((5, 6), (2, 2)), ((5, 6), (3, 3)), ((7, 5), (2, 3)),
                 ((6, 6), (4, 3)), ((4, 7), (3, 5)), ((1, 1), (1, 1)), ((3, 3), (3, 3))]


@pytest.mark.parametrize("mode", ["valid", "same", "full"])
@pytest.mark.parametrize("shapes", SIGNAL_SHAPES, ids=str)
def test_correlate_convolve_match_scipy(shapes, mode):
    signal = pytest.importorskip("scipy.signal")
    rng = np.random.default_rng(15)
    img = rng.standard_normal(shapes[0])
    ker = rng.standard_normal(shapes[1])
    for fast, slow, ref in [(F.correlate2d, signal.correlate2d, R.correlate2d),
                            (F.convolve2d, signal.convolve2d, R.convolve2d)]:
        expected = slow(img, ker, mode)
        np.testing.assert_allclose(ref(img, ker, mode), expected, rtol=1e-12, atol=1e-12)
        got = fast(img, ker, mode)
        assert got.shape == expected.shape, (fast.__name__, got.shape, expected.shape)
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12,
                                   err_msg=f"{fast.__name__} mode={mode}")
        got32 = fast(img.astype(np.float32), ker.astype(np.float32), mode)
        assert got32.dtype == np.float32
        np.testing.assert_allclose(got32, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["same", "full"])
def test_correlate_convolve_kernel_larger_than_image(mode):
    signal = pytest.importorskip("scipy.signal")
    rng = np.random.default_rng(16)
    img = rng.standard_normal((3, 2))
    ker = rng.standard_normal((4, 5))
    np.testing.assert_allclose(F.correlate2d(img, ker, mode), signal.correlate2d(img, ker, mode),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(F.convolve2d(img, ker, mode), signal.convolve2d(img, ker, mode),
                               rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------- threads

@pytest.mark.parametrize("dtype", DTYPES)
def test_results_do_not_depend_on_thread_count(dtype):
    # forced(threads=n) also drops the per-thread work floor: every kernel below really
    # runs on n threads (checked), not on one as the inputs' size alone would decide.
    rng = np.random.default_rng(17)
    x = rand(rng, (9, 21, 19, 6), dtype)        # odd batch, several tiles
    w = rand(rng, (3, 3, 3, 8), dtype)
    b = rand(rng, (8,), dtype)
    conv = dict(stride=(1, 2), padding="same", dilation=1, groups=2)
    results = []
    for n in (1, 2, 3):
        with forced(threads=n):
            results.append(_thread_count_run(x, w, b, conv, dtype))
            ran = kernels_run()
        assert {k: v.team for k, v in ran.items()} == dict.fromkeys(
            ["conv2d_forward", "conv2d_backward", "conv2d_backward_weights", "max_pool2d_forward",
             "max_pool2d_backward", "avg_pool2d_forward", "avg_pool2d_backward", "im2col",
             "col2im"], n), ran
    for other in results[1:]:
        _assert_same_up_to_rounding(results[0], other, dtype)


def _thread_count_run(x, w, b, conv, dtype):
    y = F.conv2d(x, w, b, **conv)
    dy = np.ones_like(y) * 0.5 + rand(np.random.default_rng(18), y.shape, dtype)
    grads = F.conv2d_backward(dy, x, w, **conv)
    grads1 = F.conv2d_backward(dy, x, w, need_dx=False, **conv)
    p, arg = F.max_pool2d(x, 3, 2, 1)
    pb = F.max_pool2d_backward(p, arg, x.shape)
    a = F.avg_pool2d(x, 2, 1, "same")
    ab = F.avg_pool2d_backward(a, x.shape, 2, 1, "same")
    cols = F.im2col(x, 3, 2, 1)
    back = F.col2im(cols, x.shape, 3, 2, 1)
    return dict(y=y, dx=grads[0], dw=grads[1], db=grads[2], dw1=grads1[1],
                p=p, arg=arg, pb=pb, a=a, ab=ab, cols=cols, back=back)


def _assert_same_up_to_rounding(one, two, dtype):
    # Pools, im2col and col2im do the same arithmetic in the same order: bit-identical.
    for k in ("p", "arg", "pb", "a", "ab", "cols", "back"):
        np.testing.assert_array_equal(one[k], two[k], err_msg=k)
    # The convolution sums per-thread partial weight gradients and may tile the GEMMs
    # differently, so the last bits may differ; anything more is a bug.
    rtol = 1e-5 if np.dtype(dtype) == np.float32 else 1e-12
    for k in ("y", "dx", "dw", "db", "dw1"):
        np.testing.assert_allclose(one[k], two[k], rtol=rtol,
                                   atol=rtol * np.abs(one[k]).max(), err_msg=k)


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_same_padding_tensorflow_rule(stride, k):
    """padding="same": output ceil(H / stride); the odd pixel of padding goes bottom/right."""
    rng = np.random.default_rng(19)
    w = rng.standard_normal((k, k, 1, 1))
    for h in range(1, 9):
        x = rng.standard_normal((1, h, h + 1, 1))
        y = F.conv2d(x, w, stride=stride, padding="same")
        oh, ow = -(-h // stride), -(-(h + 1) // stride)
        assert y.shape == (1, oh, ow, 1)
        total_h = max((oh - 1) * stride + k - h, 0)
        total_w = max((ow - 1) * stride + k - (h + 1), 0)
        explicit = ((total_h // 2, total_h - total_h // 2), (total_w // 2, total_w - total_w // 2))
        np.testing.assert_array_equal(y, F.conv2d(x, w, stride=stride, padding=explicit))
        np.testing.assert_allclose(y, R.conv2d(x, w, stride=stride, padding=explicit),
                                   rtol=1e-12, atol=1e-12)
        yp = F.max_pool2d(x, k, stride, "same")[0]
        assert yp.shape == (1, oh, ow, 1)


# ---------------------------------------------------------------------------- relu_backward

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (7,), (3, 5), (2, 5, 4, 3), (1, 1, 1, 1), (0, 3)], ids=str)
def test_relu_backward_matches_reference(shape, dtype):
    rng = np.random.default_rng(20)
    dy = rand(rng, shape, dtype)
    y = np.maximum(rand(rng, shape, dtype), 0)
    got = F.relu_backward(dy, y)
    assert got.dtype == np.dtype(dtype) and got.shape == dy.shape
    np.testing.assert_array_equal(got, R.relu_backward(dy, y))
    if dy.ndim == 0:
        return
    # non-contiguous and read-only inputs, inputs untouched
    dy_nc, y_nc = _noncontiguous(dy, "strided"), _noncontiguous(y, "fortran")
    y_nc.setflags(write=False)
    before = dy.copy(), y.copy()
    np.testing.assert_array_equal(F.relu_backward(dy_nc, y_nc), got)
    np.testing.assert_array_equal(dy, before[0])
    np.testing.assert_array_equal(y, before[1])


def test_relu_backward_nan_and_inf():
    dy = np.array([1.0, np.nan, np.inf, 2.0, np.nan, -np.inf])
    y = np.array([0.0, 1.0, 2.0, np.nan, 0.0, 3.0])
    got = F.relu_backward(dy, y)
    np.testing.assert_array_equal(got, [0.0, np.nan, np.inf, 0.0, 0.0, -np.inf])


@pytest.mark.parametrize("case", ["relu_backward_fd"])
def test_relu_backward_finite_differences(case):
    rng = np.random.default_rng(21)
    x = rng.standard_normal((2, 3, 4, 2))
    x[np.abs(x) < 1e-3] = 0.5            # keep away from the kink at 0
    g = rng.standard_normal(x.shape)

    def loss():
        return float(np.sum(np.maximum(x, 0) * g))

    dx = F.relu_backward(g, np.maximum(x, 0))
    np.testing.assert_allclose(dx, numerical_grad(loss, x), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------- dense GEMM

@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [301, 2, 1])
def test_dense_matmul_matches_numpy(m, dtype, trans_a, trans_b, threads):
    """The dense layers' GEMM: every transpose combination, rows split over threads
    (really: each thread of the team takes its block of rows); a single row (m = 1, a
    batch-1 predict) is cut into blocks of 16 rows of op(b) instead (67 rows: 5 blocks,
    each thread's sum added in), or with trans_b of 16 columns (45 columns: 3 blocks). A
    block of one row (m = 2 on 2 or 3 threads, where op(a)'s row is a strided column of a
    with trans_a) is a matrix-vector product (BLAS gemv), which must neither read an ``out``
    it overwrites (NaN there) nor lose the old values it adds to."""
    rng = np.random.default_rng(19)
    k, n = 67, 45                            # odd sizes: uneven row blocks
    a = rand(rng, (k, m) if trans_a else (m, k), dtype)
    b = rand(rng, (n, k) if trans_b else (k, n), dtype)
    expected = (a.T if trans_a else a) @ (b.T if trans_b else b)
    team = min(threads, m if m > 1 else -(-(n if trans_b else k) // 16))
    with forced(threads=threads):
        got = F.matmul(a, b, trans_a, trans_b)
        assert kernels_run() == {"matmul": Run(team, team)}
        out = rand(rng, (m, n), dtype)
        before = out.copy()
        assert F.matmul(a, b, trans_a, trans_b, out=out, beta=1.0) is out
        fresh = np.full((m, n), np.nan, dtype)
        F.matmul(a, b, trans_a, trans_b, out=fresh)
    assert_close(got, expected, dtype)
    assert_close(out, expected + before, dtype)
    assert_close(fresh, expected, dtype)


def test_dense_matmul_falls_back_for_unusual_operands():
    rng = np.random.default_rng(20)
    a, b = rng.standard_normal((5, 3)), rng.standard_normal((3, 4)).astype(np.float32)
    with pytest.raises(TypeError, match="one dtype"):                 # mixed dtypes
        F.matmul(a, b)
    with pytest.raises(ValueError, match=r"inner dimensions.*\(5, 3\).*\(4, 3\)"):
        F.matmul(a, b.T.astype(np.float64))
    with pytest.raises(ValueError, match="out must be"):
        F.matmul(a, b.astype(np.float64), out=np.zeros((4, 5)))
    empty = F.matmul(np.zeros((5, 0)), np.zeros((0, 4)))              # inner dimension 0
    assert empty.shape == (5, 4) and not empty.any()
    out = np.ones((5, 4), order="F")                                  # not C-contiguous
    F.matmul(a, b.astype(np.float64), out=out, beta=2.0)
    np.testing.assert_allclose(out, 2.0 + a @ b, rtol=1e-12)
