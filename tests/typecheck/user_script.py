"""A user's script written against cconv's public API, type-checked with ``mypy --strict``.

tools/build_wheel.sh runs ``mypy --strict`` on this file in a virtual environment where
only the built wheel provides cconv, which proves that the wheel ships its type
information (``py.typed``, ``_core.pyi`` and the annotated signatures). The script also
runs (``python user_script.py``), so the types it relies on are the ones cconv returns.
It is not a test module: pytest does not collect it.
"""
from __future__ import annotations

import io

import numpy as np
from numpy.typing import NDArray

import cconv
from cconv import functional as F


def conv_pool_step(x: NDArray[np.float32], w: NDArray[np.float32],
                   b: NDArray[np.float32]) -> tuple[float, tuple[int, ...]]:
    """Forward and backward of conv -> max-pool, returning sum(dw) and dx's shape."""
    y = F.conv2d(x, w, b, stride=1, padding="same")
    pooled, argmax = F.max_pool2d(y, pool_size=2)
    argmax_flat: NDArray[np.int64] = argmax.reshape(-1)
    assert argmax_flat.size == pooled.size
    dy = F.max_pool2d_backward(np.ones_like(pooled), argmax, y.shape)
    dx, dw, db = F.conv2d_backward(dy, x, w, padding="same")
    assert dx is not None, "need_dx defaults to True"
    _, dw_only, _ = F.conv2d_backward(dy, x, w, padding="same", need_dx=False)
    assert db.shape == b.shape and dw_only.shape == w.shape
    return float(dw.sum()), dx.shape


def main() -> None:
    version: str = cconv.__version__
    cconv.set_num_threads(2)
    threads: int = cconv.get_num_threads()
    cconv.set_num_threads(None)
    info = cconv.show_config(file=io.StringIO())
    openmp = bool(info["openmp"])

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 8, 3)).astype(np.float32)
    w = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)
    b = np.zeros(4, np.float32)
    dw_sum, dx_shape = conv_pool_step(x, w, b)

    cols = F.im2col(x, (3, 3), stride=1, padding=1)
    back = F.col2im(cols, x.shape, 3, padding=1)
    avg = F.avg_pool2d(x, 2)
    davg = F.avg_pool2d_backward(np.ones_like(avg), x.shape, 2)
    image = rng.standard_normal((16, 16))
    edges = F.correlate2d(image, [[1.0, 0.0, -1.0]] * 3, mode="same")
    blurred = F.convolve2d(image, np.full((3, 3), 1 / 9), mode="valid")
    out_h: int = F.conv_output_size(32, 3, stride=2, pad_before=1, pad_after=1)
    pads: tuple[tuple[int, int], tuple[int, int]] = F.normalize_padding(
        "same", 3, stride=2, input_hw=(32, 32))
    kernel: tuple[int, int] = F.normalize_pair(3, "kernel_size")

    assert back.shape == x.shape and davg.shape == x.shape
    assert edges.shape == image.shape and blurred.shape == (14, 14)
    print(f"cconv {version}: {threads} threads, OpenMP {'on' if openmp else 'off'}; "
          f"sum(dw) = {dw_sum:.3f}, dx {dx_shape}, im2col {cols.shape}, "
          f"output height {out_h}, pads {pads}, kernel {kernel}")


if __name__ == "__main__":
    main()
