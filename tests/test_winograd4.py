"""The backward pass of 3x3 stride-1 convolutions on Winograd F(4x4, 3x3) (_winograd4.h).

cconv takes it for the backward pass of a convolution on the Winograd route with at least
``F.WINOGRAD4_MIN_CHANNELS`` input channels where its 4x4-output tiles need fewer
multiplications than F(2x2, 3x3)'s; ``forced(conv="winograd4")`` takes it wherever the
Winograd route applies. These tests check it against the float64 reference, finite
differences and the F(2x2, 3x3) route; with partial last tiles, padding, 1-3 threads (the
team checked), several slot counts and blocks; its filter transforms against their matrices;
where the plan takes it; and its float32 error on the benchmark's layers.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from cconv import functional as F
from cconv._testing import forced, kernels_run

import reference as R
from reference import numerical_grad
from test_functional import DTYPES, assert_close, rand
from test_winograd import FILTER_SIZES, check_backward_overwrites, check_filter_transforms

# (N, H, W, C_in, C_out, padding)
CASES = [
    (1, 3, 3, 2, 3, 0),                       # one output: one 4x4 tile, 15 outputs padding
    (2, 6, 6, 3, 4, 0),                       # 4x4 outputs: one whole tile
    (3, 9, 11, 5, 7, 0),                      # 7x9: partial last tile row and column
    (2, 8, 8, 4, 6, 1),                       # 8x8 "same": two whole tiles a side
    (1, 7, 5, 3, 2, "same"),                  # 7x5
    (2, 10, 13, 17, 9, ((0, 2), (1, 0))),     # asymmetric
    (2, 4, 5, 1, 3, ((2, 2), (2, 2))),        # padding wider than the kernel's reach
    (1, 31, 31, 8, 16, 0),                    # the benchmark's conv2 geometry (29x29)
]


def case_id(case):
    return "-".join(str(v) for v in case).replace(" ", "")


def make(case, dtype, seed=0):
    n, h, w, c, co, p = case
    rng = np.random.default_rng(seed)
    x, wt = rand(rng, (n, h, w, c), dtype), rand(rng, (3, 3, c, co), dtype)
    dy = rand(rng, R.conv2d(x, wt, None, padding=p).shape, dtype)
    return x, wt, dy, p


def backward(route, dy, x, w, p, threads=1, need_dx=True, **kw):
    """conv2d_backward on a forced route, and the backward kernels that ran (with teams)."""
    with forced(threads=threads, conv=route, **kw):
        out = F.conv2d_backward(dy, x, w, padding=p, need_dx=need_dx)
        ran = {k: v.team for k, v in kernels_run().items() if "backward" in k}
    return out, ran


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_reference_and_the_f2_route(case, dtype, threads):
    x, w, dy, p = make(case, dtype)
    ref = R.conv2d_backward(dy, x, w, padding=p)
    (dx, dw, db), ran = backward("winograd4", dy, x, w, p, threads)
    assert ran == {"winograd4_backward": min(threads, case[0])}, ran
    for got, want in zip((dx, dw, db), ref):
        assert_close(got, want, dtype)
    f2, ran2 = backward("winograd", dy, x, w, p, threads)
    assert ran2 == {"winograd_backward": min(threads, case[0])}, ran2
    for got, other in zip((dx, dw, db), f2):
        assert_close(got, other, dtype)
    (none, dw1, db1), _ = backward("winograd4", dy, x, w, p, threads, need_dx=False)
    assert none is None
    assert np.array_equal(dw1, dw) and np.array_equal(db1, db)   # dx changes no sum


@pytest.mark.parametrize("case", [CASES[2], CASES[5], CASES[6]], ids=case_id)
def test_finite_differences(case):
    x, w, _, p = make(case, np.float64, seed=3)
    b = rand(np.random.default_rng(5), (w.shape[3],), np.float64)
    g = np.random.default_rng(4).standard_normal(F.conv2d(x, w, b, padding=p).shape)

    def loss():
        return float(np.sum(F.conv2d(x, w, b, padding=p) * g))

    (dx, dw, db), _ = backward("winograd4", g, x, w, p)
    np.testing.assert_allclose(dx, numerical_grad(loss, x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dw, numerical_grad(loss, w), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(db, numerical_grad(loss, b), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("slots_per_thread", [1, 2, 4])
def test_slots_blocks_and_threads(slots_per_thread, dtype):
    """Runs of whole images on 2 and 3 threads (2-12 slots, the last ones of one image),
    blocks of 8 tiles (several per image, a partial last one): every slot count gives the
    reference, each the same bits on every call and whatever thread ran which run."""
    rng = np.random.default_rng(11)
    x, w = rand(rng, (7, 13, 15, 8), dtype), rand(rng, (3, 3, 8, 12), dtype)
    dy = rand(rng, (7, 13, 15, 12), dtype)
    ref = R.conv2d_backward(dy, x, w, padding=1)
    for threads in (2, 3):
        first, ran = backward("winograd4", dy, x, w, 1, threads, block_bytes=1,
                              slots_per_thread=slots_per_thread)
        assert ran == {"winograd4_backward": threads}, ran
        for got, want in zip(first, ref):
            assert_close(got, want, dtype)
        for _ in range(3):
            again, _ = backward("winograd4", dy, x, w, 1, threads, block_bytes=1,
                                slots_per_thread=slots_per_thread)
            for a, b in zip(first, again):
                assert np.array_equal(a, b)


def _g4():
    """F(4x4, 3x3)'s G (6x3), from its interpolation points 0, 1, -1, 2, -2, infinity."""
    return np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                     [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C, cout, nt", FILTER_SIZES)
def test_filter_transform_and_its_adjoint(dtype, C, cout, nt):
    check_filter_transforms(_g4(), dtype, C, cout, nt)


def test_transforms_compute_the_f43_product():
    """Y = A^T [(G g G^T) . (B^T d B)] A is the 4x4 valid cross-correlation of a 6x6 block
    with a 3x3 filter, for the matrices the header states (the G the kernels use, above)."""
    BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                   [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], float)
    AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                   [0, 1, -1, 8, -8, 1]], float)
    rng = np.random.default_rng(2)
    d, g = rng.standard_normal((6, 6)), rng.standard_normal((3, 3))
    y = AT @ ((_g4() @ g @ _g4().T) * (BT @ d @ BT.T)) @ AT.T
    want = np.array([[np.sum(d[i:i + 3, j:j + 3] * g) for j in range(4)] for i in range(4)])
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)


def test_plan_takes_it_where_it_needs_fewer_multiplications(monkeypatch):
    """Never by default; with the opt-in, backward passes only; C_in >= WINOGRAD4_MIN_CHANNELS; outputs whose 4x4 tiles need
    fewer products than the 2x2 ones (36 * tiles4 < 16 * tiles2): not 1x1, 2x2, 5x5, 6x6."""
    def route(shape, cout, backward, pad=0):
        pads = ((pad, pad), (pad, pad))
        return F._plan(shape, (3, 3), cout, (1, 1), pads, (1, 1), 1, 4, backward, True)[0]

    assert F.WINOGRAD4_MIN_CHANNELS is None        # an opt-in: never by default
    assert route((2, 31, 31, 32), 64, True) == F._WINOGRAD
    monkeypatch.setattr(F, "WINOGRAD4_MIN_CHANNELS", 16)        # the CCONV_WINOGRAD4=1 setting
    for hw in (3, 4, 7, 8, 12, 29, 31):          # the benchmark's 29x29 and 12x12 outputs
        assert route((2, hw + 2, hw + 2, 32), 64, True) == F._WINOGRAD4, hw
        assert route((2, hw + 2, hw + 2, 32), 64, False) == F._WINOGRAD, hw
    for hw in (1, 2, 5, 6):
        assert route((2, hw + 2, hw + 2, 32), 64, True) == F._WINOGRAD, hw
    assert route((2, 14, 14, 15), 64, True) == F._GEMM          # below WINOGRAD_MIN_CHANNELS
    monkeypatch.setattr(F, "WINOGRAD_MIN_CHANNELS", 8)
    assert route((2, 14, 14, 15), 64, True) == F._WINOGRAD      # below WINOGRAD4_MIN_CHANNELS
    monkeypatch.setattr(F, "WINOGRAD4_MIN_CHANNELS", None)
    assert route((2, 14, 14, 32), 64, True) == F._WINOGRAD
    monkeypatch.setattr(F, "WINOGRAD4_MIN_CHANNELS", 0)         # wherever Winograd applies
    assert route((2, 3, 3, 8), 1, True) == F._WINOGRAD4
    assert route((2, 7, 7, 32), 64, True) == F._WINOGRAD4      # 5x5 outputs


def test_kernel_overwrites_its_outputs_and_refuses_mismatched_shapes():
    _, _, _, tb, _, ws, _, _ = F._plan((5, 7, 6, 3), (3, 3), 4, (1, 1), ((1, 1), (1, 1)),
                                       (1, 1), 1, 8, True, True, winograd_min_channels=0,
                                       winograd4_min_channels=0, default=False)
    check_backward_overwrites(36, tb, ws)
    rng = np.random.default_rng(13)
    x, w = rand(rng, (5, 7, 6, 3), np.float64), rand(rng, (3, 3, 3, 4), np.float64)
    dy = rand(rng, (5, 7, 6, 4), np.float64)
    U = F._winograd_filter(w, np.empty((36, 3, 4)))
    work = np.empty((1, ws))
    for du_ in (np.zeros((1, 16, 3, 4)), np.zeros((1, 36, 3, 5))):  # F(2x2) slots, C_out
        with pytest.raises(ValueError, match="winograd_backward"):
            F._core.winograd_backward(dy, x, U, x.copy(), du_, np.zeros((1, 4)), work, 1, 1,
                                      tb, True, 1)
    with pytest.raises(ValueError, match="winograd_backward"):        # the block too small
        F._core.winograd_backward(dy, x, U, x.copy(), np.zeros((1, 36, 3, 4)),
                                  np.zeros((1, 4)), np.empty((1, ws - 1)), 1, 1, tb, True, 1)
    with pytest.raises(ValueError, match="winograd_filter"):
        F._core.winograd_filter(w, np.zeros((25, 3, 4)), 1)


@pytest.mark.parametrize("xshape, cout", [((8, 31, 31, 32), 64), ((8, 14, 14, 64), 128)])
def test_float32_error_on_the_benchmark_layers(xshape, cout):
    """The float32 error of dx and dW against float64, relative to the largest gradient, on
    the paper network's conv2 and conv3 (N(0, 1) data): F(4x4, 3x3) is measured at 2e-6 to
    5e-6 (F(2x2, 3x3) 4e-7, PyTorch 5e-7 to 1.6e-6); a slip in a coefficient or a lost term
    shows as an error of order 1."""
    rng = np.random.default_rng(7)
    x, w = rng.standard_normal(xshape), rng.standard_normal((3, 3, xshape[3], cout))
    dy = rng.standard_normal((xshape[0], xshape[1] - 2, xshape[2] - 2, cout))
    ref = R.conv2d_backward(dy, x, w)[:2]
    (dx, dw, _), ran = backward("winograd4", *(a.astype(np.float32) for a in (dy, x, w)), 0, 2)
    assert "winograd4_backward" in ran
    for got, want in zip((dx, dw), ref):
        assert np.abs(got - want).max() / np.abs(want).max() < 2e-5


def test_the_environment_variable_opts_in():
    """CCONV_WINOGRAD4=1 at import sets WINOGRAD4_MIN_CHANNELS to 16; unset or 0: None."""
    code = "import cconv.functional as F; print(F.WINOGRAD4_MIN_CHANNELS)"
    for value, want in (("1", "16"), ("0", "None"), (None, "None")):
        env = {k: v for k, v in os.environ.items() if k != "CCONV_WINOGRAD4"}
        if value is not None:
            env["CCONV_WINOGRAD4"] = value
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True).stdout.strip()
        assert out == want, (value, out)
