"""The Winograd F(2x2, 3x3) route of 3x3 stride-1 convolutions (cconv.functional).

By default it serves convolutions with at least ``F.WINOGRAD_MIN_CHANNELS`` input channels;
these tests force it on small shapes (threshold 1) and check it against the direct
reference, finite differences and the im2col route, and that it is taken when it should be.
Its backward pass, which cconv takes on F(4x4, 3x3) where that needs fewer multiplications
(test_winograd4.py), is kept on F(2x2, 3x3) here.
"""
import numpy as np
import pytest

from cconv import functional as F

import reference as R
from reference import numerical_grad
from cconv._testing import forced, kernels_run
from conftest import spy_calls
from test_functional import DTYPES, assert_close, rand


@pytest.fixture(autouse=True)
def f2_backward(monkeypatch):
    """The backward pass on F(2x2, 3x3) throughout (see test_winograd4.py for F(4x4, 3x3))."""
    monkeypatch.setattr(F, "WINOGRAD4_MIN_CHANNELS", None)


@pytest.fixture
def calls(monkeypatch):
    """Counts of the Winograd kernels' calls (the kernels themselves still run)."""
    return spy_calls(monkeypatch, F._core, ["winograd_forward", "winograd_backward"])


@pytest.fixture
def winograd(monkeypatch, calls):
    """Winograd for every eligible convolution, however few its channels (and never the
    direct route, which float32 layers of few channels would take first)."""
    monkeypatch.setattr(F, "WINOGRAD_MIN_CHANNELS", 1)
    monkeypatch.setattr(F, "DIRECT_MAX_K", None)
    return calls


# (N, H, W, C_in, C_out, padding)
CASES = [
    (1, 3, 3, 1, 1, 0),                       # kernel == input: one partial tile
    (1, 1, 1, 1, 2, 1),                       # 1x1 image, kernel == padded input
    (2, 5, 6, 3, 4, 0),                       # odd output height, even width
    (3, 7, 7, 2, 3, 1),
    (2, 6, 5, 3, 2, "same"),
    (1, 9, 8, 2, 2, ((0, 2), (1, 0))),        # asymmetric
    (2, 4, 5, 1, 3, ((2, 2), (2, 2))),        # padding wider than the kernel's reach
    (3, 8, 9, 17, 5, (1, 2)),
]


def case_id(case):
    return "-".join(str(v) for v in case).replace(" ", "")


def make(case, dtype, seed=0):
    n, h, w, c, co, p = case
    rng = np.random.default_rng(seed)
    return (rand(rng, (n, h, w, c), dtype), rand(rng, (3, 3, c, co), dtype),
            rand(rng, (co,), dtype), p)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_forward_and_backward_match_reference(case, dtype, winograd):
    x, w, b, p = make(case, dtype)
    assert_close(F.conv2d(x, w, b, padding=p), R.conv2d(x, w, b, padding=p), dtype)
    assert_close(F.conv2d(x, w, None, padding=p), R.conv2d(x, w, None, padding=p), dtype)
    dy = rand(np.random.default_rng(1), R.conv2d(x, w, b, padding=p).shape, dtype)
    dx, dw, db = F.conv2d_backward(dy, x, w, padding=p)
    rx, rw, rb = R.conv2d_backward(dy, x, w, padding=p)
    assert_close(dx, rx, dtype)
    assert_close(dw, rw, dtype)
    assert_close(db, rb, dtype)
    none, dw1, db1 = F.conv2d_backward(dy, x, w, padding=p, need_dx=False)
    assert none is None
    assert_close(dw1, rw, dtype)
    assert_close(db1, rb, dtype)
    assert winograd == {"winograd_forward": 2, "winograd_backward": 2}


@pytest.mark.parametrize("case", [CASES[2], CASES[5], CASES[6]], ids=case_id)
def test_backward_finite_differences(case, winograd):
    x, w, b, p = make(case, np.float64, seed=3)
    g = np.random.default_rng(4).standard_normal(F.conv2d(x, w, b, padding=p).shape)

    def loss():
        return float(np.sum(F.conv2d(x, w, b, padding=p) * g))

    dx, dw, db = F.conv2d_backward(g, x, w, padding=p)
    np.testing.assert_allclose(dx, numerical_grad(loss, x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dw, numerical_grad(loss, w), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(db, numerical_grad(loss, b), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_many_blocks_and_threads_match_im2col(dtype, threads, monkeypatch, calls):
    """Blocks of a few tiles, a partial last block, several per thread, odd batch; the
    threads really split the work (forced below the per-thread floor, team checked)."""
    rng = np.random.default_rng(5)
    x, w, b = rand(rng, (7, 13, 15, 16), dtype), rand(rng, (3, 3, 16, 24), dtype), rand(rng, (24,), dtype)
    with forced(threads=threads):
        y0 = F.conv2d(x, w, b, padding=1)
        dy = rand(rng, y0.shape, dtype)
        monkeypatch.setattr(F, "WINOGRAD_BLOCK_BYTES", 1)      # the smallest blocks (8 tiles)
        ys = [F.conv2d(x, w, b, padding=1) for _ in range(2)]
        gs = [F.conv2d_backward(dy, x, w, padding=1) for _ in range(2)]
        ran = kernels_run()
    assert ran["winograd_forward"].team == threads and ran["winograd_backward"].team == threads
    assert calls == {"winograd_forward": 3, "winograd_backward": 2}
    monkeypatch.setattr(F, "WINOGRAD_MIN_CHANNELS", None)  # the im2col + GEMM route
    ref_y = F.conv2d(x, w, b, padding=1)
    ref_g = F.conv2d_backward(dy, x, w, padding=1)
    assert calls == {"winograd_forward": 3, "winograd_backward": 2}
    assert np.array_equal(ys[0], ys[1])                    # reproducible
    assert np.array_equal(ys[0], y0)                       # block size changes no sum
    for a, b_ in zip(gs[0], gs[1]):
        assert np.array_equal(a, b_)
    assert_close(ys[0], ref_y, dtype)
    for got, ref in zip(gs[0], ref_g):
        assert_close(got, ref, dtype)


def test_route_is_taken_only_where_it_applies(calls):
    rng = np.random.default_rng(6)
    many = rand(rng, (2, 8, 8, F.WINOGRAD_MIN_CHANNELS), np.float32)
    few = rand(rng, (2, 8, 8, 3), np.float32)

    def fwd(x, co=4, k=3, **kw):
        F.conv2d(x, rand(rng, (k, k, x.shape[3] // kw.get("groups", 1), co), np.float32), **kw)

    fwd(many)                                   # the paper's layers 2 and 3 are like this
    assert calls["winograd_forward"] == 1
    fwd(few)                                    # too few channels for the GEMMs to pay off
    fwd(many, stride=2)
    fwd(many, dilation=2)
    fwd(many, k=5)
    fwd(many, groups=2)
    assert calls["winograd_forward"] == 1


@pytest.mark.parametrize("slots_per_thread", [1, 3])
def test_backward_slots_are_reproducible_and_agree(slots_per_thread, monkeypatch, calls):
    """On 2 threads the batch is cut into 2 * SLOTS_PER_THREAD runs of images, handed out
    dynamically, each with its own dU/db accumulator: every call gives the same bits, and
    every slot count the same gradients up to rounding."""
    monkeypatch.setattr(F, "WINOGRAD_BLOCK_BYTES", 1)
    rng = np.random.default_rng(11)
    x, w = rand(rng, (7, 9, 10, 8), np.float64), rand(rng, (3, 3, 8, 12), np.float64)
    dy = rand(rng, (7, 9, 10, 12), np.float64)
    with forced(threads=2, conv="winograd", slots_per_thread=slots_per_thread):
        gs = [F.conv2d_backward(dy, x, w, padding=1) for _ in range(5)]
        assert kernels_run()["winograd_backward"].team == 2
    assert calls == {"winograd_forward": 0, "winograd_backward": 5}
    for g in gs[1:]:
        for a, b in zip(gs[0], g):
            assert np.array_equal(a, b)
    for got, ref in zip(gs[0], R.conv2d_backward(dy, x, w, padding=1)):
        assert_close(got, ref, np.float64)


def test_backward_refuses_outputs_of_the_wrong_shape():
    rng = np.random.default_rng(12)
    x, w = rand(rng, (2, 6, 6, 4), np.float32), rand(rng, (3, 3, 4, 8), np.float32)
    dy = rand(rng, (2, 4, 4, 8), np.float32)
    U = F._winograd_filter(w)
    work = np.zeros((1, 4096), np.float32)
    z = lambda *shape: np.zeros(shape, np.float32)   # noqa: E731
    no_dx, du, db = z(1, 1, 1, 1), z(1, 16, 4, 8), z(1, 8)
    for dx, du_, db_, need_dx in [(no_dx, z(2, 16, 4, 8), db, False),    # slot counts differ
                                  (no_dx, z(1, 16, 4, 7), db, False),    # C_out
                                  (no_dx, z(0, 16, 4, 8), z(0, 8), False),  # no slot
                                  (z(1, 6, 6, 4), du, db, True),         # dx: batch
                                  (z(2, 6, 5, 4), du, db, True)]:        # dx: width
        with pytest.raises(ValueError, match="winograd_backward"):
            F._core.winograd_backward(dy, x, U, dx, du_, db_, work, 0, 0, 8, need_dx, 1)


FILTER_SIZES = [(1, 1, 1), (3, 5, 2), (40, 70, 2)]     # 2800 pairs: 3 chunks


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C, cout, nt", FILTER_SIZES)
def test_filter_transform_and_its_adjoint(dtype, C, cout, nt):
    G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
    check_filter_transforms(G, dtype, C, cout, nt)


def check_filter_transforms(G, dtype, C, cout, nt):
    """winograd_filter (U of len(G)**2 slots) and its adjoint against the matrix G."""
    rng = np.random.default_rng(C)
    k = len(G)
    w = rng.standard_normal((3, 3, C, cout))
    U = np.empty((k * k, C, cout), dtype)
    F._core.winograd_filter(w.astype(dtype), U, nt)
    ref = np.einsum("ia,abcd,jb->ijcd", G, w, G).reshape(k * k, C, cout)
    assert_close(U, ref, dtype)
    # The adjoint sums its slots first: dW = G^T (sum over slots) G.
    du = rng.standard_normal((3, k * k, C, cout))
    dw = np.empty((3, 3, C, cout), dtype)
    F._core.winograd_filter_grad(du.astype(dtype), dw, nt)
    ref = np.einsum("ia,ijcd,jb->abcd", G, du.sum(axis=0).reshape(k, k, C, cout), G)
    assert_close(dw, ref, dtype)
    # <G w G^T, dU> == <w, G^T dU G>
    lhs = np.vdot(np.einsum("ia,abcd,jb->ijcd", G, w, G).reshape(k * k, C, cout), du.sum(axis=0))
    dw64 = np.empty((3, 3, C, cout))
    F._core.winograd_filter_grad(du, dw64, nt)
    assert np.isclose(lhs, np.vdot(w, dw64), rtol=1e-12)


def test_filter_transforms_refuse_wrong_shapes():
    w = np.zeros((3, 3, 2, 4), np.float32)
    with pytest.raises(ValueError, match="winograd_filter"):
        F._core.winograd_filter(w, np.zeros((16, 2, 5), np.float32), 1)
    with pytest.raises(ValueError, match="winograd_filter"):
        F._core.winograd_filter(np.zeros((2, 3, 2, 4), np.float32),
                                np.zeros((16, 2, 4), np.float32), 1)
    for du in (np.zeros((0, 16, 2, 4), np.float32), np.zeros((1, 9, 2, 4), np.float32)):
        with pytest.raises(ValueError, match="winograd_filter_grad"):
            F._core.winograd_filter_grad(du, w.copy(), 1)


def test_backward_overwrites_its_outputs_whatever_they_held():
    """The kernel zeroes dx, the dU slots and the db slots itself (the caller does not)."""
    _, tb, ws, _ = F._winograd_plan(5, 7, 6, 3, 4, 8, True)
    check_backward_overwrites(16, tb, ws)


def check_backward_overwrites(nk, tb, ws):
    """winograd_backward with nk slots per tile (16: F(2x2), 36: F(4x4)), blocks of tb tiles
    and ws elements of scratch per thread, on outputs filled with 0 and with NaN."""
    rng = np.random.default_rng(13)
    x, w = rand(rng, (5, 7, 6, 3), np.float64), rand(rng, (3, 3, 3, 4), np.float64)
    dy = rand(rng, (5, 7, 6, 4), np.float64)
    U = F._winograd_filter(w, np.empty((nk, 3, 4)))
    outs = []
    for fill in (0.0, np.nan):
        dx = np.full(x.shape, fill)
        du, db = np.full((3, nk, 3, 4), fill), np.full((3, 4), fill)
        F._core.winograd_backward(dy, x, U, dx, du, db, np.empty((2, ws)), 1, 1, tb, True, 2)
        outs.append((dx, F._winograd_filter_grad(du), db.sum(axis=0)))
    for a, b in zip(*outs):
        assert np.array_equal(a, b)
    for got, ref in zip(outs[1], R.conv2d_backward(dy, x, w, padding=1)):
        assert_close(got, ref, np.float64)

