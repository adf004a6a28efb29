"""max_pool2d_backward has a one-pass kernel for windows that tile the input and a general
scatter kernel; both must route every gradient exactly like a plain scatter-add."""
import numpy as np
import pytest

from cconv import functional as F


def scatter(dy, argmax, shape):
    dx = np.zeros(shape, dy.dtype)
    n, i, j, c = np.indices(dy.shape).reshape(4, -1)
    idx = argmax.reshape(-1)
    np.add.at(dx, (n, idx // shape[2], idx % shape[2], c), dy.reshape(-1))
    return dx


@pytest.mark.parametrize("hw,k,s", [((62, 62), 2, 2), ((7, 9), 2, 2), ((9, 10), 3, 3),
                                     ((8, 8), 3, 3), ((8, 8), 2, 3), ((6, 6), 3, 1),
                                     ((5, 7), (2, 3), (2, 3))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_matches_scatter(hw, k, s, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, *hw, 5)).astype(dtype)
    y, a = F.max_pool2d(x, k, s)
    dy = rng.standard_normal(y.shape).astype(dtype)
    np.testing.assert_array_equal(F.max_pool2d_backward(dy, a, x.shape), scatter(dy, a, x.shape))


def test_argmax_outside_its_window_is_still_routed():
    # In range but in another window: the tiled kernel notices and the general one routes it.
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 6, 6, 3))
    y, a = F.max_pool2d(x, 2)
    a = a.copy()
    a[0, 0, 0, 0] = 5 * 6 + 5          # bottom-right unit, far from window (0, 0)
    dy = rng.standard_normal(y.shape)
    np.testing.assert_array_equal(F.max_pool2d_backward(dy, a, x.shape), scatter(dy, a, x.shape))
