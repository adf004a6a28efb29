"""The direct route of float32 convolutions with few input channels (_conv_direct.h): the
forward pass and the weight/bias gradients against the reference written from the
definition, with the kernel of every instruction set this CPU has (AVX-512 at simd_level 2,
AVX2 + FMA at 1, also on an AVX-512 CPU), on every padding form, strides, dilations, pixel
tails and C_out that is no multiple of the vector width (masked lanes), on 1 and 2 threads;
that it is taken exactly where it applies; and that it matches the im2col + GEMM route on
the paper's first layer."""
import numpy as np
import pytest

import cconv
from cconv import _core, _testing
from cconv import functional as F

import reference as R
from conftest import spy_calls
from test_functional import assert_close, rand

TOP = _core.simd_level(2)          # what this CPU (and CCONV_SIMD_LEVEL) allows
pytestmark = pytest.mark.skipif(TOP < 1, reason="needs AVX2 + FMA, AVX-512F or NEON")
LEVELS = [pytest.param(lv, id=f"level{lv}") for lv in (1, 2) if lv <= TOP]


@pytest.fixture(params=LEVELS)
def level(request):
    """Run the test with the direct kernels of instruction-set level 1 (AVX2) or 2."""
    assert _core.simd_level(request.param) == request.param
    yield request.param
    _core.simd_level(2)


@pytest.fixture
def calls(monkeypatch):
    """Counts of the direct kernels' calls (the kernels themselves still run)."""
    return spy_calls(monkeypatch, F._core, ["direct_forward", "direct_backward_weights"])


# (N, H, W, C_in, C_out, kernel, stride, padding, dilation)
CASES = [
    (2, 9, 11, 3, 16, 3, 1, 0, 1),              # OW = 9: one block of 8 pixels and a tail of 1
    (3, 9, 11, 3, 32, 3, 1, 1, 1),              # border windows read from a zero-padded patch
    (1, 5, 5, 3, 16, 3, 1, ((2, 0), (0, 3)), 1),  # asymmetric padding
    (3, 10, 7, 1, 48, 5, 2, 2, 1),              # K = 25, C_out = 48: 32 + 16 outputs
    (2, 12, 13, 2, 16, 3, 2, "same", 2),        # stride and dilation
    (2, 6, 17, 1, 32, (1, 3), (1, 2), 0, (1, 3)),  # non-square everything
    (1, 4, 4, 2, 16, 4, 1, 0, 1),               # K = 32 (the limit), kernel == input
    (5, 3, 3, 3, 64, 1, 1, 1, 1),               # 1x1 kernel on a padded input
    (2, 7, 13, 3, 20, 3, 1, 1, 1),              # C_out = 20: 16 + 4 / 8 + 8 + 4 lanes
    (3, 9, 9, 3, 5, 3, 2, 0, 1),                # C_out = 5: one partial vector only
    (2, 6, 15, 1, 33, 3, 1, "same", 1),         # C_out = 33: 32 + 1 lane, OW = 15
    (1, 5, 9, 2, 1, 2, 1, 0, 2),                # C_out = 1
    (2, 8, 10, 3, 13, (3, 2), 1, ((1, 0), (2, 1)), 1),  # 13 lanes, non-square kernel
]


def case_id(case):
    return "-".join(str(v) for v in case).replace(" ", "")


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_reference(case, level, calls):
    n, h, w, c, co, k, s, p, d = case
    rng = np.random.default_rng(sum(case[:5]))
    kh, kw = (k, k) if isinstance(k, int) else k
    x, wt, b = rand(rng, (n, h, w, c), np.float32), rand(rng, (kh, kw, c, co), np.float32), \
        rand(rng, (co,), np.float32)
    ref = R.conv2d(x, wt, b, s, p, d)
    assert_close(F.conv2d(x, wt, b, s, p, d), ref, np.float32)
    assert_close(F.conv2d(x, wt, None, s, p, d), R.conv2d(x, wt, None, s, p, d), np.float32)
    dy = rand(rng, ref.shape, np.float32)
    none, dw, db = F.conv2d_backward(dy, x, wt, s, p, d, need_dx=False)
    _, rw, rb = R.conv2d_backward(dy, x, wt, s, p, d)
    assert none is None
    assert_close(dw, rw, np.float32)
    assert_close(db, rb, np.float32)
    assert calls == {"direct_forward": 2, "direct_backward_weights": 1}


def test_route_is_taken_only_where_it_applies(level, calls):
    rng = np.random.default_rng(7)
    x = rand(rng, (2, 8, 8, 3), np.float32)
    w = rand(rng, (3, 3, 3, 32), np.float32)
    dy = rand(rng, (2, 6, 6, 32), np.float32)
    F.conv2d(x, w)
    F.conv2d_backward(dy, x, w, need_dx=False)
    F.conv2d(x, w[..., :24])                                     # any C_out
    assert calls == {"direct_forward": 2, "direct_backward_weights": 1}
    F.conv2d_backward(dy, x, w)                                  # dx wanted: im2col route
    F.conv2d(x.astype(np.float64), w.astype(np.float64))        # float64
    F.conv2d(rand(rng, (2, 8, 8, 4), np.float32), rand(rng, (3, 3, 4, 16), np.float32))  # K = 36
    F.conv2d(rand(rng, (2, 8, 8, 4), np.float32), rand(rng, (3, 3, 2, 32), np.float32),
             groups=2)                                           # grouped
    assert calls == {"direct_forward": 2, "direct_backward_weights": 1}
    _core.simd_level(0)                                     # no vector kernels: im2col route
    F.conv2d(x, w)
    assert calls == {"direct_forward": 2, "direct_backward_weights": 1}


@pytest.mark.parametrize("case", [(4, 9, 21, 3, 20, 3, 1, 1, 1), (3, 12, 11, 1, 8, 5, 2, 2, 1)],
                         ids=case_id)
def test_two_threads_split_the_rows_and_match(case, level, monkeypatch, restore_threads):
    """With the per-thread work floor at 1, the plan puts the direct kernels on 2 threads
    (the forward hands out runs of rows, the weight gradient one accumulator per run); the
    results match the reference and the 1-thread results (the forward bit for bit)."""
    n, h, w, c, co, k, s, p, d = case
    rng = np.random.default_rng(11)
    x, wt, b = rand(rng, (n, h, w, c), np.float32), rand(rng, (k, k, c, co), np.float32), \
        rand(rng, (co,), np.float32)
    ref = R.conv2d(x, wt, b, s, p, d)
    dy = rand(rng, ref.shape, np.float32)
    _, rw, rb = R.conv2d_backward(dy, x, wt, s, p, d)
    monkeypatch.setattr(F, "MIN_WORK_PER_THREAD", 1)
    out = {}
    for threads in (1, 2):
        cconv.set_num_threads(threads)
        for backward in (False, True):
            plan = _core.conv_plan(x.shape, k, k, co, s, s, p, p, p, p, d, d, 1, 4, backward,
                                   False, threads, F._tuning(F.WINOGRAD_MIN_CHANNELS, F.DIRECT_MAX_K))
            assert plan[:2] == (2, threads), plan
        y = F.conv2d(x, wt, b, s, p, d)
        _, dw, db = F.conv2d_backward(dy, x, wt, s, p, d, need_dx=False)
        assert_close(y, ref, np.float32)
        assert_close(dw, rw, np.float32)
        assert_close(db, rb, np.float32)
        out[threads] = y
    assert np.array_equal(out[1], out[2])


@pytest.mark.parametrize("threads", [1, 2])
def test_paper_first_layer_matches_im2col(threads, level, monkeypatch, restore_threads):
    """64x64 RGB -> 32 filters (batch 6): the direct route against the im2col route, and
    reproducible from one call to the next (one accumulator per run of rows). Large enough
    for the default per-thread work floor to run it on every thread (checked)."""
    cconv.set_num_threads(threads)
    rng = np.random.default_rng(8)
    x, w, b = rand(rng, (6, 64, 64, 3), np.float32), rand(rng, (3, 3, 3, 32), np.float32), \
        rand(rng, (32,), np.float32)
    _testing.reset()
    ys = [F.conv2d(x, w, b) for _ in range(2)]
    dy = rand(rng, ys[0].shape, np.float32)
    gs = [F.conv2d_backward(dy, x, w, need_dx=False) for _ in range(2)]
    ran = _testing.kernels_run()
    assert ran["direct_forward"].team == threads == ran["direct_backward_weights"].team
    monkeypatch.setattr(F, "DIRECT_MAX_K", None)
    assert_close(ys[0], F.conv2d(x, w, b), np.float32)
    _, rw, rb = F.conv2d_backward(dy, x, w, need_dx=False)
    assert_close(gs[0][1], rw, np.float32)
    assert_close(gs[0][2], rb, np.float32)
    assert np.array_equal(ys[0], ys[1])
    assert np.array_equal(gs[0][1], gs[1][1]) and np.array_equal(gs[0][2], gs[1][2])


def test_kernels_refuse_buffers_of_the_wrong_shape():
    """The compiled entry points check the buffers they write before running."""
    rng = np.random.default_rng(9)
    x, w = rand(rng, (2, 6, 6, 3), np.float32), rand(rng, (3, 3, 3, 16), np.float32)
    y = np.empty((2, 4, 4, 16), np.float32)
    with pytest.raises(ValueError, match="direct_forward"):
        _core.direct_forward(x, w.reshape(27, 16)[:26], None, y, 3, 3, 1, 1, 0, 0, 1, 1, 1)
    with pytest.raises(ValueError, match="direct_forward"):
        _core.direct_forward(x, w.reshape(27, 16), np.zeros(8, np.float32), y,
                             3, 3, 1, 1, 0, 0, 1, 1, 1)
    dy = rand(rng, y.shape, np.float32)
    with pytest.raises(ValueError, match="direct_backward_weights"):   # Kpad is 32, not 27
        _core.direct_backward_weights(dy, x, np.zeros((1, 27, 16), np.float32),
                                      np.zeros((1, 16), np.float32), 3, 3, 1, 1, 0, 0, 1, 1, 1)
    with pytest.raises(ValueError, match="direct_backward_weights"):   # 2 slots against 1
        _core.direct_backward_weights(dy, x, np.zeros((2, 32, 16), np.float32),
                                      np.zeros((1, 16), np.float32), 3, 3, 1, 1, 0, 0, 1, 1, 2)


def test_backward_weights_overwrite_their_slots_whatever_they_held(level):
    """The kernel zeroes each slot's dW/db accumulator itself (the caller does not)."""
    rng = np.random.default_rng(10)
    x, w = rand(rng, (3, 7, 8, 3), np.float32), rand(rng, (3, 3, 3, 16), np.float32)
    dy = rand(rng, (3, 5, 6, 16), np.float32)
    outs = []
    for fill in (0.0, np.nan):
        dw, db = np.full((4, 32, 16), fill, np.float32), np.full((4, 16), fill, np.float32)
        _core.direct_backward_weights(dy, x, dw, db, 3, 3, 1, 1, 0, 0, 1, 1, 2)
        outs.append((dw.sum(axis=0)[:27].reshape(w.shape), db.sum(axis=0)))
    for a, b in zip(*outs):
        assert np.array_equal(a, b)
    _, rw, rb = R.conv2d_backward(dy, x, w)
    assert_close(outs[1][0], rw, np.float32)
    assert_close(outs[1][1], rb, np.float32)
