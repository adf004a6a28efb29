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


# (N, H, W, C_in, C_out, kernel, stride, dilation, padding): pooled widths 3-8
REGISTER_POOL_CASES = [
    (2, 8, 8, 3, 32, 3, 1, 1, 0),       # PW = 3: one AVX-512 block of 3 pooled pixels
    (3, 9, 16, 3, 64, 3, 1, 1, 0),      # PW = 7: the last block starts at 4; two blocks of 32
    (2, 11, 19, 1, 96, (2, 3), (1, 2), (2, 1), 0),   # strides, dilations, PW = 4, 3 blocks
    (1, 12, 12, 1, 32, 5, 1, 1, 0),     # K = 25, PW = 4
    (2, 7, 9, 3, 48, 3, 1, 1, 0),       # C_out = 48: AVX2 only (the AVX-512 pool needs 32s)
    (2, 9, 9, 3, 32, 3, 1, 1, ((0, 0), (0, 2))),  # the last pooled column reads the padding
    (2, 8, 12, 3, 32, 3, 1, 1, ((0, 2), (0, 0))),  # the last pooled row reads the padding
]


@pytest.mark.parametrize("case", REGISTER_POOL_CASES, ids=case_id)
@pytest.mark.parametrize("threads", [1, 2])
def test_inference_pool_in_registers_is_the_unfused_chain(case, threads, level, monkeypatch,
                                                          restore_threads):
    """conv2d_max_pool2d without the argmax, every pooled window inside the image, C_out a
    multiple of 32 (AVX-512) or 16 (AVX2): pooled in the registers
    (direct_forward_pool_registers), bit for bit the unfused conv2d -> (relu) -> max_pool2d,
    NaN and ties included, with and without bias; with the argmax (training), or a pooled
    window over the padding, the row-buffer path runs and gives the same."""
    n, h, w, c, co, k, s, d, p = case
    k = R.pair(k)
    regs = co % (32 if level == 2 else 16) == 0 and p == 0
    rng = np.random.default_rng(12)
    monkeypatch.setattr(F, "MIN_WORK_PER_THREAD", 1)
    cconv.set_num_threads(threads)
    for ties in (False, True):
        x = (rng.integers(-2, 3, (n, h, w, c)) if ties else rng.standard_normal((n, h, w, c)))
        x = x.astype(np.float32)
        x[0, 1, 2, 0] = np.nan                      # a NaN in some windows
        wt = rand(rng, (*k, c, co), np.float32)
        if ties:
            wt = np.round(wt * 2).astype(np.float32)
        for b in (rand(rng, (co,), np.float32), None):
            with _testing.forced(conv="direct"):
                z = F.conv2d(x, wt, b, s, p, d)
            for relu in (False, True):
                want = F.max_pool2d(F.relu(z) if relu else z, 2)[0]
                with _testing.forced(conv="direct"):
                    got = F.conv2d_max_pool2d(x, wt, b, s, p, d, relu=relu)
                    ran = _testing.kernels_run()
                    _testing.reset()
                    got_arg, arg = F.conv2d_max_pool2d(x, wt, b, s, p, d, relu=relu,
                                                       return_argmax=True)
                    ran_arg = _testing.kernels_run()
                assert ("direct_forward_pool_registers" in ran) == regs, sorted(ran)
                if regs:       # (work handed out dynamically: the team, not the workers)
                    assert ran["direct_forward_pool_registers"].team == threads, ran
                assert "direct_forward_pool_registers" not in ran_arg, sorted(ran_arg)
                np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
                np.testing.assert_array_equal(got_arg.view(np.uint32), want.view(np.uint32))
                np.testing.assert_array_equal(arg, F.max_pool2d(z, 2)[1])
