"""The compiled fast paths of conv2d and max_pool2d (_core.conv2d_fast, max_pool2d_fast).

The general path of a functional op checks its arguments and remembers the normalised
geometry of plain ones; a later call with the same shapes and arguments is then served in C
when it is the common case (C-contiguous float arrays, one thread, small outputs, the
im2col + GEMM route for a convolution). Both paths must give the same bits, the fast path
must decline everything else, and out= errors must still come from the general path.
"""
import numpy as np
import pytest

import cconv
from cconv import functional as F

import reference as R

DTYPES = [np.float32, np.float64]

CONVS = [  # x shape, w shape, kwargs
    ((1, 8, 8, 4), (3, 3, 4, 8), dict(padding=1)),
    ((2, 9, 7, 3), (2, 3, 3, 5), dict(stride=(2, 1), padding=((1, 0), (0, 2)))),
    ((1, 11, 10, 4), (3, 3, 2, 6), dict(dilation=(2, 1), groups=2, padding="same")),
    ((3, 6, 6, 5), (1, 1, 5, 7), dict()),
]
POOLS = [((1, 8, 8, 4), dict(pool_size=2)), ((2, 9, 7, 3), dict(pool_size=3, stride=2, padding=1)),
         ((1, 6, 6, 16), dict(pool_size=(2, 3), stride=1, padding=(1, 1)))]


def rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.view(np.uint8),
                                                                       b.view(np.uint8))


def conv_args(kw):
    return (kw.get("stride", 1), kw.get("padding", 0), kw.get("dilation", 1), kw.get("groups", 1))


def fast_conv(x, w, b, kw, out=None, workspace=None):
    return F._core.conv2d_fast(x, w, b, conv_args(kw), out, workspace, cconv.Workspace,
                               F._GEOMETRIES, F._conv_geometry,
                               F._tuning(F.WINOGRAD_MIN_CHANNELS, F.DIRECT_MAX_K),
                               F._CACHED_MIN_BYTES)


def fast_pool(x, kw, out=None):
    args = (kw.get("pool_size", 2), kw.get("stride"), kw.get("padding", 0))
    return F._core.max_pool2d_fast(x, args, out, F._GEOMETRIES, F._pool_geometry,
                                   F.MIN_WORK_PER_THREAD, F._CACHED_MIN_BYTES,
                                   F._STREAM_MIN_BYTES)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONVS, ids=str)
def test_conv_fast_path_gives_the_general_paths_bits(case, dtype, monkeypatch):
    xs, ws, kw = case
    monkeypatch.setattr(F, "DIRECT_MAX_K", None)   # the fast path serves the im2col route only
    rng = np.random.default_rng(0)
    x, w, b = rand(rng, xs, dtype), rand(rng, ws, dtype), rand(rng, ws[3], dtype)
    F._GEOMETRIES.clear()
    assert fast_conv(x, w, b, kw) is None              # nothing remembered yet: general path
    first = F.conv2d(x, w, b, **kw)                    # the general path remembers the geometry
    fast = fast_conv(x, w, b, kw)
    assert fast is not None and same_bits(fast, first)
    assert same_bits(F.conv2d(x, w, b, **kw), first)
    nobias = F.conv2d(x, w, **kw)
    assert same_bits(fast_conv(x, w, None, kw), nobias)
    y = np.full_like(first, np.nan)
    assert fast_conv(x, w, b, kw, out=y) is y and same_bits(y, first)
    ws_ = cconv.Workspace()
    F.conv2d(x, w, b, workspace=ws_, **kw)             # grows the workspace
    assert same_bits(fast_conv(x, w, b, kw, workspace=ws_), first)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POOLS, ids=str)
def test_pool_fast_path_gives_the_general_paths_bits(case, dtype):
    xs, kw = case
    x = rand(np.random.default_rng(1), xs, dtype)
    F._GEOMETRIES.clear()
    assert fast_pool(x, kw) is None
    y, a = F.max_pool2d(x, **kw)
    fy, fa = fast_pool(x, kw)
    assert same_bits(fy, y) and same_bits(fa, a)
    outs = (np.full_like(y, np.nan), np.full(a.shape, -1, np.int64))
    ry, ra = fast_pool(x, kw, out=outs)
    assert ry is outs[0] and ra is outs[1] and same_bits(ry, y) and np.array_equal(ra, a)


def test_fast_paths_decline_what_they_do_not_handle(restore_threads):
    rng = np.random.default_rng(2)
    x, w = rand(rng, (1, 8, 8, 4), np.float32), rand(rng, (3, 3, 4, 8), np.float32)
    F._GEOMETRIES.clear()
    F.conv2d(x, w, padding=1)
    F.max_pool2d(x, 2)
    assert fast_conv(x, w, None, dict(padding=1)) is not None
    assert fast_conv(x, w, None, dict(padding=1.0)) is None          # not a plain argument
    assert fast_conv(x, w, None, dict(padding=[1, 1])) is None
    assert fast_conv(x[:, ::-1], w, None, dict(padding=1)) is None   # not C-contiguous
    assert fast_conv(x, w.astype(np.float64), None, dict(padding=1)) is None   # mixed dtypes
    assert fast_conv(x.tolist(), w, None, dict(padding=1)) is None   # not an ndarray
    assert fast_conv(x, w, None, dict(padding=1), out=np.empty((1, 8, 8, 7), np.float32)) is None
    assert fast_conv(x, w, None, dict(padding=1), out=x) is None     # overlaps an input
    assert fast_conv(x, w, None, dict(padding=1), workspace=cconv.Workspace()) is None  # empty
    assert fast_conv(x, w, None, dict(padding=1), workspace=np.empty(10 ** 6, np.uint8)) is None
    assert fast_pool(x, dict(pool_size=2.0)) is None
    assert fast_pool(x, dict(pool_size=2), out=(np.empty((1, 4, 4, 4), np.float32),)) is None
    # Work for two threads: the general path asks for the thread budget.
    big = rand(rng, (4, 64, 64, 8), np.float32)
    cconv.set_num_threads(2)
    F.max_pool2d(big, 2)
    assert fast_pool(big, dict(pool_size=2)) is None
    # Another route than im2col + GEMM (Winograd here): the general path calls it.
    xw, ww = rand(rng, (1, 8, 8, 16), np.float32), rand(rng, (3, 3, 16, 8), np.float32)
    F.conv2d(xw, ww, padding=1)
    assert fast_conv(xw, ww, None, dict(padding=1)) is None


def test_bad_out_still_gets_its_message_after_the_geometry_is_known():
    rng = np.random.default_rng(3)
    x, w = rand(rng, (1, 8, 8, 4), np.float32), rand(rng, (3, 3, 4, 8), np.float32)
    F.conv2d(x, w, padding=1)
    F.max_pool2d(x, 2)
    with pytest.raises(ValueError, match="out must have shape"):
        F.conv2d(x, w, padding=1, out=np.empty((1, 8, 8, 7), np.float32))
    with pytest.raises(TypeError, match=r"out\[1\] must have dtype"):
        F.max_pool2d(x, 2, out=(np.empty((1, 4, 4, 4), np.float32),
                                np.empty((1, 4, 4, 4), np.float32)))
    with pytest.raises(TypeError, match="workspace"):
        F.conv2d(x, w, padding=1, workspace=np.empty(10 ** 6, np.uint8))


def test_forced_routes_and_threads_reach_calls_the_fast_paths_would_serve():
    """cconv._testing.forced reaches every call: a small plain call that the fast paths serve
    by default (one thread, im2col + GEMM, generic or vectorised pool) runs on the forced
    route with a team of the forced size. The fast paths take the forced knobs (the tuning
    and work floor that functional passes them) and decline what they would not run so,
    leaving it to the general path and the compiled plan; what they do serve under forcing
    (one thread, im2col, the forced pool instruction set) they serve as forced."""
    from cconv._testing import forced, kernels_run, simd_max

    rng = np.random.default_rng(4)
    x, w = rand(rng, (2, 8, 8, 16), np.float32), rand(rng, (3, 3, 16, 16), np.float32)
    xs = rand(rng, (1, 8, 8, 16), np.float32)
    kw = dict(padding=1)
    want = F.conv2d(x, w, **kw)
    F._GEOMETRIES.clear()
    with forced(conv="im2col"):                      # the fast path's own route
        F.conv2d(x, w, **kw)
        F.max_pool2d(xs, 2)
        assert fast_conv(x, w, None, kw) is not None
        assert fast_pool(xs, dict(pool_size=2)) is not None
        assert kernels_run()["conv2d_forward"].team == 1

    with forced(threads=2, conv="im2col"):           # two threads: the plan, not the fast path
        assert fast_conv(x, w, None, kw) is None
        assert same_bits(F.conv2d(x, w, **kw), F.conv2d(x, w, **kw))
        assert kernels_run()["conv2d_forward"] == (2, 2)
        np.testing.assert_allclose(F.conv2d(x, w, **kw), want, rtol=1e-5, atol=1e-5)

    with forced(threads=1, conv="winograd"):         # another route: the plan's
        assert fast_conv(x, w, None, kw) is None
        np.testing.assert_allclose(F.conv2d(x, w, **kw), want, rtol=1e-4, atol=1e-4)
        assert set(kernels_run()) == {"winograd_filter", "winograd_forward"}

    for threads in (1, 2):                           # max pool: instruction set and team
        for pool in ("generic", "avx2", "avx512"):
            if pool != "generic" and simd_max() < ("avx2", "avx512").index(pool) + 1:
                continue
            with forced(threads=threads, pool=pool):
                y, a = F.max_pool2d(x, 2)
                run = kernels_run()
            name = "max_pool2d_forward" + ("" if pool == "generic" else "_" + pool)
            assert set(run) == {name}, (threads, pool, run)
            assert run[name].team == threads, (threads, pool, run)
            ry, ra = R.max_pool2d(x, 2)
            np.testing.assert_array_equal(y, ry)
            np.testing.assert_array_equal(a, ra)
    with forced(pool="generic"):                     # served by the fast path, as forced
        F.max_pool2d(xs, 2)
        assert fast_pool(xs, dict(pool_size=2)) is not None
        assert set(kernels_run()) == {"max_pool2d_forward"}
    with forced(threads=2, pool="generic"):          # two threads: the general path
        assert fast_pool(xs, dict(pool_size=2)) is None
