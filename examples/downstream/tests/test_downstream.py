"""The example package's kernels give cconv.functional's results bit for bit.

cconv_downstream calls cconv's kernels from Cython (cimport, without the GIL, from its own
prange as well) and from C (the C API); cconv.functional calls the same kernels from
Python. With the same thread count they make the same plan and must agree in every bit,
for both dtypes, on every convolution route. Also: an invalid argmax gets its error code
back and nothing is written outside dx.
"""
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import cconv
import cconv_downstream as ds
from cconv import functional as F

DTYPES = [np.float32, np.float64]
THREADS = [1, 2]

#: (x shape, w shape, stride, padding ((top, bottom), (left, right)), dilation, groups):
#: the im2col + GEMM route (also grouped, strided, dilated, 1x1), Winograd (3x3, 16
#: channels) and the direct route (float32, 3 channels, C_out 32, on an AVX2 or AVX-512 CPU); the
#: last three are large enough for two threads (cconv gives small work one thread).
CONVS = [
    ((2, 9, 10, 3), (3, 3, 3, 5), (1, 1), ((1, 1), (1, 1)), (1, 1), 1),
    ((2, 9, 10, 4), (3, 3, 2, 6), (2, 1), ((1, 0), (0, 1)), (1, 1), 2),
    ((3, 7, 7, 6), (1, 1, 6, 4), (1, 1), ((0, 0), (0, 0)), (1, 1), 1),
    ((2, 12, 12, 3), (3, 3, 3, 8), (2, 2), ((0, 0), (0, 0)), (2, 2), 1),
    ((2, 11, 9, 16), (3, 3, 16, 8), (1, 1), ((1, 1), (1, 1)), (1, 1), 1),
    ((4, 20, 20, 32), (3, 3, 32, 16), (1, 1), ((0, 0), (0, 0)), (1, 1), 1),
    ((2, 12, 12, 3), (3, 3, 3, 32), (1, 1), ((1, 1), (1, 1)), (1, 1), 1),
    ((4, 32, 32, 8), (3, 3, 8, 16), (1, 1), ((1, 1), (1, 1)), (1, 1), 1),
    ((4, 32, 32, 16), (3, 3, 16, 16), (1, 1), ((1, 1), (1, 1)), (1, 1), 1),
    ((4, 32, 32, 3), (3, 3, 3, 32), (1, 1), ((1, 1), (1, 1)), (1, 1), 1),
]
POOLS = [((2, 8, 8, 16), (2, 2), (2, 2), ((0, 0), (0, 0))),
         ((4, 64, 64, 16), (2, 2), (2, 2), ((0, 0), (0, 0))),           # two threads
         ((2, 9, 7, 5), (3, 3), (2, 2), ((1, 1), (1, 1))),
         ((1, 6, 6, 3), (2, 3), (1, 1), ((1, 0), (1, 1)))]


@pytest.fixture(params=THREADS, ids=lambda n: f"{n}threads")
def threads(request):
    before = cconv.get_num_threads()
    cconv.set_num_threads(request.param)
    with threadpool_limits(1, user_api="blas"):     # as cconv.functional runs its GEMMs
        yield request.param
    cconv.set_num_threads(before)


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.view(np.uint8),
                                                                       b.view(np.uint8))


def rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONVS, ids=str)
def test_convolution_equals_functional(case, dtype, threads):
    xs, wsh, stride, pads, dil, groups = case
    rng = np.random.default_rng(0)
    x, w, b = rand(rng, xs, dtype), rand(rng, wsh, dtype), rand(rng, wsh[3], dtype)
    kw = dict(stride=stride, padding=pads, dilation=dil, groups=groups)
    ref = F.conv2d(x, w, b, **kw)
    y = np.full_like(ref, np.nan)
    assert ds.conv2d(x, w, b, y, stride, pads, dil, groups, threads) == ds.OK
    assert same_bits(y, ref)
    y = np.full_like(ref, np.nan)                     # through the C API
    assert ds.capi_conv2d_forward(x, w, b, y, *stride, *pads[0], *pads[1], *dil, groups,
                                  threads) == ds.OK
    assert same_bits(y, ref)
    dy = rand(rng, ref.shape, dtype)
    for need_dx in (True, False):
        rdx, rdw, rdb = F.conv2d_backward(dy, x, w, need_dx=need_dx, **kw)
        dx = np.full_like(x, np.nan) if need_dx else None
        dw, db = np.full_like(w, np.nan), np.full_like(b, np.nan)
        assert ds.conv2d_backward(dy, x, w, dx, dw, db, stride, pads, dil, groups,
                                  threads) == ds.OK
        assert same_bits(dw, rdw) and same_bits(db, rdb)
        assert (dx is None and rdx is None) or same_bits(dx, rdx)


@pytest.mark.parametrize("dtype", DTYPES)
def test_own_prange_calling_one_thread_each_equals_functional(dtype, threads):
    """Each image convolved by cconv's kernel on one thread, from the example's prange,
    equals cconv.functional on that image with one thread."""
    rng = np.random.default_rng(1)
    x, w, b = rand(rng, (6, 9, 8, 5), dtype), rand(rng, (3, 3, 5, 7), dtype), rand(rng, 7, dtype)
    y = np.full((6, 9, 8, 7), np.nan, dtype)
    assert ds.conv2d_per_image(x, w, b, y, (1, 1), ((1, 1), (1, 1)), (1, 1), 1, threads) == ds.OK
    cconv.set_num_threads(1)
    for n in range(len(x)):
        assert same_bits(y[n:n + 1], F.conv2d(x[n:n + 1], w, b, padding=1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POOLS, ids=str)
def test_pools_equal_functional(case, dtype, threads):
    xs, size, stride, pads = case
    rng = np.random.default_rng(2)
    x = rand(rng, xs, dtype)
    ry, ra = F.max_pool2d(x, size, stride, pads)
    for index in (np.int32, np.int64):
        y, a = np.full_like(ry, np.nan), np.full(ry.shape, -7, index)
        assert ds.max_pool2d(x, y, a, size, stride, pads, threads) == ds.OK
        assert same_bits(y, ry) and np.array_equal(a, ra)
        y, a = np.full_like(ry, np.nan), np.full(ry.shape, -7, index)
        assert ds.capi_max_pool2d_forward(x, y, a, *size, *stride, *pads[0], *pads[1],
                                          threads) == ds.OK
        assert same_bits(y, ry) and np.array_equal(a, ra)
        dy = rand(rng, ry.shape, dtype)
        dx = np.full_like(x, np.nan)
        assert ds.max_pool2d_backward(dy, a, dx, threads) == ds.OK
        assert same_bits(dx, F.max_pool2d_backward(dy, a, x.shape))
    ref = F.avg_pool2d(x, size, stride, pads)
    y = np.full_like(ref, np.nan)
    assert ds.avg_pool2d(x, y, size, stride, pads, threads) == ds.OK
    assert same_bits(y, ref)
    dy = rand(rng, ref.shape, dtype)
    dx = np.full_like(x, np.nan)
    assert ds.avg_pool2d_backward(dy, dx, size, stride, pads, threads) == ds.OK
    assert same_bits(dx, F.avg_pool2d_backward(dy, x.shape, size, stride, pads))


@pytest.mark.parametrize("dtype", DTYPES)
def test_im2col_col2im_and_relu_equal_functional(dtype, threads):
    rng = np.random.default_rng(3)
    x = rand(rng, (3, 9, 8, 4), dtype)
    ref = F.im2col(x, (3, 2), stride=(2, 1), padding=((1, 0), (0, 1)), dilation=(1, 2))
    cols = np.full_like(ref, np.nan)
    args = ((3, 2), (2, 1), ((1, 0), (0, 1)), (1, 2))
    assert ds.im2col(x, cols, *args, threads) == ds.OK
    assert same_bits(cols, ref)
    back = np.full_like(x, np.nan)
    assert ds.col2im(cols, back, *args, threads) == ds.OK
    assert same_bits(back, F.col2im(cols, x.shape, (3, 2), stride=(2, 1),
                                    padding=((1, 0), (0, 1)), dilation=(1, 2)))
    dy, y = rand(rng, 200_000, dtype), np.maximum(rand(rng, 200_000, dtype), 0)
    out = np.full_like(dy, np.nan)
    assert ds.relu_backward(dy, y, out, threads) == ds.OK
    assert same_bits(out, F.relu_backward(dy, y))


@pytest.mark.parametrize("index", [np.int32, np.int64])
@pytest.mark.parametrize("bad", [-1, 16, 2**31 - 1, -2**31], ids=str)
def test_invalid_argmax_returns_its_code_and_writes_only_dx(bad, index):
    """dx is the middle of a larger buffer: the kernel must leave the guard cells around it
    alone, whatever the indices say, and report the bad index."""
    rng = np.random.default_rng(4)
    x = rand(rng, (2, 4, 4, 3), np.float32)
    y, a = F.max_pool2d(x, 2)
    a = a.astype(index)
    a[1, 0, 1, 2] = bad                                  # outside [0, H*W) = [0, 16)
    dy = rand(rng, y.shape, np.float32)
    guard = np.full((4,) + x.shape, 12345.0, np.float32)
    dx = guard[1]                                        # guard[0] and guard[2:] stay as they are
    assert ds.max_pool2d_backward(dy, a, dx, 1) == ds.ERR_ARGMAX
    assert (guard[0] == 12345.0).all() and (guard[2:] == 12345.0).all()
    # Every valid entry was still routed; the bad one's gradient was dropped.
    a[1, 0, 1, 2], dy[1, 0, 1, 2] = 0, 0
    np.testing.assert_array_equal(dx, F.max_pool2d_backward(dy, a, x.shape))


def test_kernels_refuse_a_bad_workspace_and_geometry():
    rng = np.random.default_rng(5)
    x, w = rand(rng, (1, 5, 5, 2), np.float32), rand(rng, (3, 3, 2, 4), np.float32)
    y = np.empty((1, 3, 3, 4), np.float32)
    with pytest.raises(ValueError, match="geometry"):        # the example's own check
        ds.conv2d(x, w, None, y, (1, 1), ((0, 0), (0, 0)), (9, 9), 1, 1)
    assert ds.capi_conv2d_forward(x, w, None, y, 1, 1, 0, 0, 0, 0, 1, 1, 1, 0) == ds.ERR_VALUE
    assert ds.conv2d_workspace(x.shape, w.shape, (1, 1), ((0, 0), (0, 0)), (1, 1), 1, 4,
                               False, False, 1) >= 0


def test_the_c_api_version_is_the_one_built_against():
    (major, minor), (table_major, table_minor) = ds.api_version()
    assert table_major == major and table_minor >= minor
    assert cconv._core.C_API_VERSION == (table_major, table_minor)
