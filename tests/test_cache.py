"""The buffer cache behind cconv's large outputs (cconv.set_cache_limit)."""
import os
import subprocess
import sys

import numpy as np
import pytest

import cconv
from cconv import functional as F

import reference as R

BIG = (64, 32, 32, 8)      # 2 MiB of float32: cached


@pytest.fixture
def restore_limit():
    before = cconv.get_cache_limit()
    yield
    cconv.set_cache_limit(before)


def test_freed_buffer_is_handed_to_the_next_output_of_its_size(restore_limit):
    cconv.set_cache_limit(64 << 20)
    cconv.empty_cache()
    x = np.random.default_rng(0).standard_normal(BIG).astype(np.float32)
    y, arg = F.max_pool2d(x)
    dx = F.max_pool2d_backward(y, arg, x.shape)
    address = dx.ctypes.data
    assert F._core.cache_info()[0] == 0
    del dx
    assert F._core.cache_info()[0] >= x.nbytes
    dx2 = F.max_pool2d_backward(y, arg, x.shape)
    assert dx2.ctypes.data == address
    assert F._core.cache_info()[0] == 0
    np.testing.assert_array_equal(dx2, R.max_pool2d_backward(y, arg, x.shape))
    assert dx2.flags.writeable and dx2.flags.c_contiguous and address % 64 == 0


def test_limit_bounds_what_is_kept(restore_limit):
    cconv.set_cache_limit(3 << 20)
    arrays = [F._alloc((1 << 20,), np.uint8) for _ in range(5)]      # 1 MiB each
    del arrays
    held, limit = F._core.cache_info()
    assert limit == 3 << 20 and held == 3 << 20
    cconv.empty_cache()
    assert F._core.cache_info() == (0, 3 << 20)
    cconv.set_cache_limit(0)                                          # off
    a = F._alloc((1 << 20,), np.uint8)
    del a
    assert F._core.cache_info() == (0, 0)


@pytest.mark.parametrize("bad", [-1, 1.5, "1", True])
def test_bad_limit_is_refused(bad, restore_limit):
    with pytest.raises(ValueError, match="nbytes"):
        cconv.set_cache_limit(bad)


def test_limit_from_environment():
    code = "import cconv; print(cconv.get_cache_limit())"
    env = dict(os.environ, CCONV_CACHE_BYTES="12345")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "12345"


@pytest.fixture
def dirty_cache(monkeypatch, restore_limit):
    """Every output comes from the cache, and every block is handed out full of NaN bytes."""
    cconv.set_cache_limit(64 << 20)
    block = F._core.Block

    def poisoned(nbytes):
        b = block(nbytes)
        np.frombuffer(b, np.uint8)[:] = 0xFF
        return b

    monkeypatch.setattr(F._core, "Block", poisoned)
    monkeypatch.setattr(F, "_CACHED_MIN_BYTES", 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernels_write_every_element_of_a_reused_buffer(dtype, dirty_cache):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 9, 8, 16)).astype(dtype)
    w = rng.standard_normal((3, 3, 16, 5)).astype(dtype)
    w5 = rng.standard_normal((5, 2, 4, 8)).astype(dtype)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    for kw, wt in [(dict(padding=1), w), (dict(stride=2, groups=4), w5)]:   # Winograd, im2col
        y = F.conv2d(x, wt, **kw)
        np.testing.assert_allclose(y, R.conv2d(x, wt, **kw), **tol)
        dy = rng.standard_normal(y.shape).astype(dtype)
        for got, ref in zip(F.conv2d_backward(dy, x, wt, **kw), R.conv2d_backward(dy, x, wt, **kw)):
            np.testing.assert_allclose(got, ref, **tol)
    for pool in [dict(pool_size=2), dict(pool_size=3, stride=2, padding=1)]:  # both backwards
        y, arg = F.max_pool2d(x, **pool)
        ry, rarg = R.max_pool2d(x, **pool)
        np.testing.assert_array_equal(y, ry)
        np.testing.assert_array_equal(arg, rarg)
        np.testing.assert_array_equal(F.max_pool2d_backward(y, arg, x.shape),
                                      R.max_pool2d_backward(y, arg, x.shape))
        np.testing.assert_allclose(F.avg_pool2d(x, **pool), R.avg_pool2d(x, **pool), **tol)
        np.testing.assert_allclose(F.avg_pool2d_backward(y, x.shape, **pool),
                                   R.avg_pool2d_backward(y, x.shape, **pool), **tol)
    np.testing.assert_array_equal(F.im2col(x, 3, padding=1), R.im2col(x, 3, padding=1))
    np.testing.assert_array_equal(F.relu_backward(x, np.abs(x) - 0.5),
                                  R.relu_backward(x, np.abs(x) - 0.5))
    a, b = x.reshape(-1, 16), w.reshape(-1, 5)[:16]
    np.testing.assert_allclose(F.matmul(a, b), a @ b, **tol)


def test_best_fit(restore_limit):
    cconv.set_cache_limit(64 << 20)
    cconv.empty_cache()
    a = F._alloc((2 << 20,), np.uint8)
    address = a.ctypes.data
    del a
    assert F._core.cache_info()[0] == 2 << 20
    b = F._alloc((int(1.8 * (1 << 20)),), np.uint8)    # up to 25% smaller: served from the cache
    assert b.ctypes.data == address and F._core.cache_info()[0] == 0
    del b
    assert F._core.cache_info()[0] == 2 << 20            # back under its real size
    c = F._alloc((1 << 20,), np.uint8)                 # too small for it: a miss
    assert F._core.cache_info()[0] == 2 << 20            # which leaves the cached block there
    del c


def test_loop_holding_the_previous_outputs_stops_missing(restore_limit):
    """A layer keeps its last outputs until the next forward has allocated new ones. After
    the first steps every request must be served from the cache (an earlier rule, where a
    miss freed cached blocks, made such a loop miss on every step)."""
    cconv.set_cache_limit(64 << 20)
    cconv.empty_cache()
    x = np.random.default_rng(0).standard_normal((64, 64, 64, 8)).astype(np.float32)
    y = arg = None
    misses = []
    for _ in range(6):
        before = F._core.cache_stats()[1]
        y, arg = F.max_pool2d(x)       # 2 MiB each, allocated while the previous y, arg live
        F.max_pool2d_backward(y, arg, x.shape)                 # 8 MiB, freed at once
        misses.append(F._core.cache_stats()[1] - before)
    assert misses[0] > 0 and misses[2:] == [0, 0, 0, 0], misses
