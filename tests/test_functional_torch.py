"""cconv.functional against PyTorch (CPU), forward and backward, float32 and float64.

PyTorch is only a test reference: the file is skipped when it is not installed. Layouts are
converted here: activations NHWC <-> NCHW, weights HWIO <-> OIHW. Asymmetric and "same"
paddings are applied to the torch input with ``torch.nn.functional.pad``, computed by the
tests' own reference (tests/reference.py), not by cconv.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as TF  # noqa: E402

from cconv import functional as F  # noqa: E402
from cconv._testing import forced  # noqa: E402

import reference as R  # noqa: E402

DTYPES = [np.float32, np.float64]


def assert_close(actual, expected, dtype):
    assert actual.dtype == np.dtype(dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    if np.dtype(dtype) == np.float32:
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=3e-5 * scale)
    else:
        np.testing.assert_allclose(actual, expected, rtol=1e-10, atol=1e-12 * scale)


def nchw(a):
    return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))


def nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


def torch_conv(x, w, b, stride, padding, dilation, groups, dy):
    """(y, dx, dw, db) from torch, in cconv's layouts."""
    (pt, pb), (pl, pr) = R.pads(padding, w.shape[:2], R.pair(dilation), R.pair(stride),
                                x.shape[1:3])
    xt = nchw(x).requires_grad_(True)
    wt = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1))).requires_grad_(True)
    bt = torch.from_numpy(b).requires_grad_(True)
    y = TF.conv2d(TF.pad(xt, (pl, pr, pt, pb)), wt, bt, stride=R.pair(stride),
                  dilation=R.pair(dilation), groups=groups)
    y.backward(nchw(dy))
    return (nhwc(y), nhwc(xt.grad), wt.grad.numpy().transpose(2, 3, 1, 0), bt.grad.numpy())


# (N, H, W, C, KH, KW, C_out, stride, padding, dilation, groups)
CASES = [
    (2, 8, 7, 3, 3, 3, 4, 1, 0, 1, 1),
    (3, 9, 9, 3, 3, 3, 5, 2, 1, 1, 1),
    (1, 10, 8, 1, 2, 4, 3, (3, 2), ((2, 0), (1, 3)), 1, 1),
    (2, 11, 9, 3, 3, 3, 2, 2, "same", 1, 1),
    (2, 8, 8, 2, 4, 4, 2, 3, "same", 1, 1),
    (1, 12, 10, 3, 3, 3, 4, 1, 2, 3, 1),
    (3, 9, 11, 2, 3, 2, 3, (1, 2), "same", (2, 1), 1),
    (2, 7, 7, 4, 3, 3, 6, 1, 1, 1, 2),
    (3, 8, 9, 6, 3, 3, 6, 2, 1, 2, 6),            # depthwise (few channels: im2col)
    # depthwise with 8+ channels (every depthwise case also runs on the depthwise route)
    (2, 9, 8, 8, 3, 3, 16, 2, 1, 2, 8),           # multiplier 2, stride 2, dilation 2
    (3, 12, 10, 16, 3, 3, 16, 1, "same", 1, 16),
    (2, 9, 11, 12, 5, 3, 36, (2, 1), ((2, 1), (0, 2)), (1, 2), 12),   # multiplier 3
    (4, 32, 32, 64, 3, 3, 64, 1, "same", 1, 64),  # the benchmark's layer, batch 4
    (1, 6, 6, 4, 1, 1, 8, 1, 0, 1, 4),            # grouped 1x1
    (2, 6, 5, 3, 1, 1, 7, 1, 0, 1, 1),            # 1x1 (GEMM only)
    (2, 4, 5, 3, 6, 5, 2, 1, ((1, 1), (0, 0)), 1, 1),   # kernel == padded input
    # larger ones: several im2col tiles per call and per image
    (8, 32, 32, 16, 3, 3, 16, 1, 0, 1, 1),
    (3, 66, 66, 16, 3, 3, 8, 1, 1, 1, 1),
    (4, 30, 28, 8, 5, 5, 12, 2, "same", 1, 2),
    # 3x3 stride 1 on every route: odd sizes (partial last tiles), the benchmark's conv2/conv3
    (3, 9, 11, 5, 3, 3, 7, 1, "same", 1, 1),
    (2, 7, 10, 16, 3, 3, 8, 1, ((0, 2), (1, 0)), 1, 1),
    (2, 31, 31, 32, 3, 3, 64, 1, 0, 1, 1),
    (2, 14, 14, 64, 3, 3, 128, 1, 0, 1, 1),
]


def case_id(c):
    return "-".join(str(v) for v in c).replace(" ", "")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_conv_matches_torch(case, dtype):
    n, h, w, c, kh, kw, co, s, p, d, g = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, h, w, c)).astype(dtype)
    wt = rng.standard_normal((kh, kw, c // g, co)).astype(dtype)
    b = rng.standard_normal(co).astype(dtype)
    kw_ = dict(stride=s, padding=p, dilation=d, groups=g)
    y = F.conv2d(x, wt, b, **kw_)
    dy = rng.standard_normal(y.shape).astype(dtype)
    ty, tdx, tdw, tdb = torch_conv(x, wt, b, s, p, d, g, dy)
    # depthwise (groups == C_in): cconv's choice and the depthwise route; 3x3 stride 1: both
    # Winograd routes (the backward pass on F(2x2, 3x3) and on F(4x4, 3x3))
    routes = ["auto", "depthwise"] if g == c else ["auto"]
    if (kh, kw, s, d, g) == (3, 3, 1, 1, 1):
        routes += ["winograd", "winograd4"]
    for route in routes:
        with forced(conv=route):
            y = F.conv2d(x, wt, b, **kw_)
            dx, dw, db = F.conv2d_backward(dy, x, wt, **kw_)
            none, dw1, db1 = F.conv2d_backward(dy, x, wt, need_dx=False, **kw_)
        assert_close(y, ty, dtype)
        assert_close(dx, tdx, dtype)
        assert_close(dw, tdw, dtype)
        assert_close(db, tdb, dtype)
        assert none is None
        assert_close(dw1, tdw, dtype)
        assert_close(db1, tdb, dtype)


# (N, H, W, C, pool_size, stride, symmetric padding (torch requires pad <= pool/2))
POOL_CASES = [
    (2, 8, 8, 3, 2, None, 0),
    (3, 9, 7, 2, 2, None, 0),
    (1, 9, 10, 3, 3, 2, 1),
    (2, 7, 7, 1, 3, 1, 1),
    (2, 10, 9, 3, (2, 3), (1, 2), (1, 1)),
    (1, 5, 5, 4, 5, None, 2),
    (4, 64, 62, 8, 2, None, 0),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POOL_CASES, ids=case_id)
def test_max_pool_matches_torch(case, dtype):
    n, h, w, c, k, s, p = case
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, h, w, c)).astype(dtype)
    y, arg = F.max_pool2d(x, k, s, p)
    xt = nchw(x).requires_grad_(True)
    ty, targ = TF.max_pool2d(xt, k, s if s is not None else k, p, return_indices=True)
    np.testing.assert_array_equal(y, nhwc(ty))
    np.testing.assert_array_equal(arg, nhwc(targ))
    dy = rng.standard_normal(y.shape).astype(dtype)
    ty.backward(nchw(dy))
    assert_close(F.max_pool2d_backward(dy, arg, x.shape), nhwc(xt.grad), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POOL_CASES, ids=case_id)
def test_avg_pool_matches_torch(case, dtype):
    n, h, w, c, k, s, p = case
    rng = np.random.default_rng(2)
    x = rng.standard_normal((n, h, w, c)).astype(dtype)
    y = F.avg_pool2d(x, k, s, p)
    xt = nchw(x).requires_grad_(True)
    ty = TF.avg_pool2d(xt, k, s if s is not None else k, p, count_include_pad=True)
    assert_close(y, nhwc(ty), dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    ty.backward(nchw(dy))
    assert_close(F.avg_pool2d_backward(dy, x.shape, k, s, p), nhwc(xt.grad), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pools_with_asymmetric_padding_match_torch(dtype):
    """Asymmetric / "same" pool padding: torch pads explicitly (-inf for max, 0 for avg)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 7, 8, 3)).astype(dtype)
    for k, s, p in [(3, 2, ((1, 0), (0, 2))), (2, None, "same"), (3, 2, "same")]:
        (pt, pb), (pl, pr) = R.pads(p, R.pair(k), (1, 1), R.pair(s if s else k), x.shape[1:3])
        xt = nchw(x).requires_grad_(True)
        st = s if s is not None else k
        ty = TF.max_pool2d(TF.pad(xt, (pl, pr, pt, pb), value=-np.inf), k, st)
        y, arg = F.max_pool2d(x, k, s, p)
        np.testing.assert_array_equal(y, nhwc(ty))
        dy = rng.standard_normal(y.shape).astype(dtype)
        ty.backward(nchw(dy))
        assert_close(F.max_pool2d_backward(dy, arg, x.shape), nhwc(xt.grad), dtype)

        xt = nchw(x).requires_grad_(True)
        ty = TF.avg_pool2d(TF.pad(xt, (pl, pr, pt, pb)), k, st)
        assert_close(F.avg_pool2d(x, k, s, p), nhwc(ty), dtype)
        ty.backward(nchw(dy))
        assert_close(F.avg_pool2d_backward(dy, x.shape, k, s, p), nhwc(xt.grad), dtype)
