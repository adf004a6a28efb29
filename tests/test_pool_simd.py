"""The explicitly vectorised max-pool kernels (_pool_simd.h: AVX-512F and AVX2, float32 with
int32 argmax, windows that tile the input) against the definition, on every instruction-set
level this CPU has, with and without non-temporal stores, aligned and misaligned outputs."""
import numpy as np
import pytest

from cconv import _core
from cconv import functional as F

import reference as R

MAX_LEVEL = _core.simd_level()
LEVELS = [pytest.param(lv, marks=pytest.mark.skipif(lv > MAX_LEVEL, reason="not on this CPU"))
          for lv in (0, 1, 2)]


@pytest.fixture
def level(request):
    old = _core.simd_level()
    assert _core.simd_level(request.param) == request.param
    yield request.param
    _core.simd_level(2)
    assert _core.simd_level() == old


def relu_input(rng, shape):
    # Half the values are 0: many ties, which must go to the first unit of the window.
    return np.maximum(rng.standard_normal(shape), 0).astype(np.float32)


# C = 16, 32, 48 take the AVX-512 path, 8 and 24 the AVX2 one (also on an AVX-512 CPU),
# 5 and 12 the generic loops. Odd H/W leave rows/columns outside every window.
CASES = [((62, 62), 2, 32), ((7, 9), 2, 16), ((9, 10), 3, 48), ((6, 6), (2, 3), 24),
         ((5, 4), 2, 8), ((6, 6), 2, 5), ((4, 4), 2, 12), ((1, 1), 1, 16)]


@pytest.mark.parametrize("level", LEVELS, indirect=True)
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("hw,k,c", CASES, ids=str)
def test_forward_and_backward_match_definition(level, stream, hw, k, c, monkeypatch):
    if stream:   # outputs from the buffer cache are 64-byte aligned, as streaming needs
        monkeypatch.setattr(F, "_STREAM_MIN_BYTES", 0)
        monkeypatch.setattr(F, "_CACHED_MIN_BYTES", 0)
    rng = np.random.default_rng(100 * hw[0] + 10 * hw[1] + c)
    x = relu_input(rng, (3, *hw, c))
    y, a = F.max_pool2d(x, k)
    ry, ra = R.max_pool2d(x, k)
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(a, ra)
    assert a.dtype == np.int32
    if stream:
        assert y.ctypes.data % 64 == 0 and a.ctypes.data % 64 == 0
    dy = rng.standard_normal(y.shape).astype(np.float32)
    np.testing.assert_array_equal(F.max_pool2d_backward(dy, a, x.shape),
                                  R.max_pool2d_backward(dy, ra, x.shape))


@pytest.mark.parametrize("level", LEVELS, indirect=True)
@pytest.mark.parametrize("c", [8, 16])
def test_nan_and_inf(level, c):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 4, c)).astype(np.float32)
    x[0, 0, 1, 0] = np.nan            # a NaN beats larger numbers before and after it
    x[0, 1, 0, 0] = 1e30
    x[0, 0, 0, 1] = np.inf
    x[0, 1, 1, 1] = np.nan            # NaN beats +inf
    x[1, 2:, 2:, 2] = -np.inf         # a window of -inf: the first unit wins
    y, a = F.max_pool2d(x, 2)
    assert np.isnan(y[0, 0, 0, 0]) and a[0, 0, 0, 0] == 1
    assert np.isnan(y[0, 0, 0, 1]) and a[0, 0, 0, 1] == 5
    assert y[1, 1, 1, 2] == -np.inf and a[1, 1, 1, 2] == 2 * 4 + 2
    ry, ra = R.max_pool2d(x, 2)           # one NaN per window: the same winner
    np.testing.assert_array_equal(y, ry)   # (NaNs in the same places count as equal)
    np.testing.assert_array_equal(a, ra)


def _misaligned(shape, dtype):
    """A C-contiguous array whose data starts 4 bytes past a 64-byte boundary."""
    n = int(np.prod(shape))
    buf = np.empty(n * np.dtype(dtype).itemsize + 128, np.uint8)
    start = (-buf.ctypes.data) % 64 + 4
    return buf[start:start + n * np.dtype(dtype).itemsize].view(dtype).reshape(shape)


@pytest.mark.parametrize("level", LEVELS, indirect=True)
@pytest.mark.parametrize("c", [8, 16])
def test_streaming_stores_fall_back_on_misaligned_outputs(level, c):
    rng = np.random.default_rng(4)
    x = relu_input(rng, (2, 6, 8, c))
    ry, ra = R.max_pool2d(x, 2)
    y, a = _misaligned(ry.shape, np.float32), _misaligned(ry.shape, np.int32)
    assert y.ctypes.data % 64 == 4
    _core.max_pool2d_forward(x, y, a, 2, 2, 2, 2, 0, 0, 2, True)
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(a, ra)
    dy = rng.standard_normal(ry.shape).astype(np.float32)
    dx = _misaligned(x.shape, np.float32)
    assert _core.max_pool2d_backward_tiled(dy, a, dx, 2, 2, 2, True)
    np.testing.assert_array_equal(dx, R.max_pool2d_backward(dy, ra, x.shape))


@pytest.mark.parametrize("level", LEVELS, indirect=True)
@pytest.mark.parametrize("c", [8, 16])
def test_tiled_backward_reports_an_argmax_outside_its_window(level, c):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 6, 6, c)).astype(np.float32)
    y, a = F.max_pool2d(x, 2)
    a = a.copy()
    a[1, 2, 1, c - 1] = 0                 # in range, but the unit of window (0, 0)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = np.empty_like(x)
    assert not _core.max_pool2d_backward_tiled(dy, a, dx, 2, 2, 2, False)
    np.testing.assert_array_equal(F.max_pool2d_backward(dy, a, x.shape),
                                  R.max_pool2d_backward(dy, a, x.shape))


def test_level_cap_never_exceeds_the_cpu():
    top = _core.simd_level()
    assert top in (0, 1, 2)
    try:
        assert _core.simd_level(0) == 0
        assert _core.simd_level(5) == top
    finally:
        _core.simd_level(2)


# Average pooling (_pool_avg.h): float32 rows through the AVX-512 / AVX2 kernels, any
# channel count (the last partial vector masked), any window, stride and padding.
AVG_CASES = [((7, 9), 2, None, 0, 8), ((6, 11), 3, 2, 1, 13), ((9, 7), (2, 3), 1, "same", 20),
             ((5, 5), 2, 1, 0, 3), ((8, 10), 3, None, "same", 33), ((1, 1), 1, None, 0, 16)]


@pytest.mark.parametrize("level", LEVELS, indirect=True)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("hw,k,s,p,c", AVG_CASES, ids=str)
def test_avg_pool_matches_definition_and_the_generic_bits(level, threads, hw, k, s, p, c,
                                                          monkeypatch, restore_threads):
    """Against the reference, and bit for bit against the generic loops (level 0): the
    kernels add in the same order, with no fused multiply-add. With the per-thread work
    floor at 1 the two-thread calls split rows (forward) and images (backward)."""
    import cconv
    monkeypatch.setattr(F, "MIN_WORK_PER_THREAD", 1)
    cconv.set_num_threads(threads)
    rng = np.random.default_rng(sum(hw) + c)
    x = rng.standard_normal((3, *hw, c)).astype(np.float32)
    y = F.avg_pool2d(x, k, s, p)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = F.avg_pool2d_backward(dy, x.shape, k, s, p)
    np.testing.assert_allclose(y, R.avg_pool2d(x, k, s, p), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, R.avg_pool2d_backward(dy, x.shape, k, s, p), rtol=1e-5,
                               atol=1e-6)
    _core.simd_level(0)
    assert np.array_equal(y, F.avg_pool2d(x, k, s, p))
    assert np.array_equal(dx, F.avg_pool2d_backward(dy, x.shape, k, s, p))
