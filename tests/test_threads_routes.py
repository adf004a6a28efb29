"""Every threaded kernel path on 1, 2 and 3 threads, and every route, checked three ways.

``cconv._testing.forced`` fixes the thread count, drops the per-thread work floor (so that
small inputs are split as a large batch would be) and chooses the convolution route and the
max-pool instruction set; ``kernels_run()`` then says which kernel paths ran, with how many
threads in the team and how many of them took work. For each case and thread count:

* the kernel path that was meant to run ran, with a team of that many threads, and (for
  kernels with a static schedule, where the split is fixed) every thread took work;
* the result matches the slow reference of tests/reference.py (or numpy for the GEMM);
* a second call gives the same bits, and so does every thread count for the kernels whose
  arithmetic does not depend on the split (pools, im2col/col2im, relu); the others agree
  to rounding.

The depthwise route is numpy code on Python threads (one block of images after another
per thread), which kernels_run() does not see: its own test watches the threads that ran.

Kernels that hand work out dynamically (direct and Winograd) may leave a thread idle when
another one is faster (or when the machine runs something else on the other core): on the
small inputs here only their team is checked, and a separate test calls them on larger
inputs until every thread (up to the number of CPUs) has taken work.
"""
from __future__ import annotations

import dataclasses
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest

from cconv import _testing
from cconv import functional as F
from cconv._testing import forced, kernels_run

import reference as R
from test_functional import assert_close, rand

THREADS = (1, 2, 3)
CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
#: Kernel paths whose work is handed out dynamically.
DYNAMIC = {"direct_forward", "direct_backward_weights", "winograd_forward", "winograd_backward",
           "direct_forward_pool", "winograd_forward_pool", "winograd4_backward",
           "direct_backward_weights_pool", "winograd_backward_pool",
           "direct_forward_pool_registers"}


@dataclass
class Case:
    id: str
    run: Callable[[], tuple]          # the cconv calls, returning their outputs
    reference: Callable[[], tuple]    # the same from the definition
    paths: tuple                      # the kernel paths that must run (all threaded)
    dtype: type = np.float64
    exact: bool = False               # bit-identical whatever the thread count
    conv: str = "auto"
    pool: str = "auto"
    slots_per_thread: int | None = None
    block_bytes: int | None = None    # 1: many im2col tiles / Winograd blocks per thread
    idle_ok: tuple = ()               # paths with fewer work items than 3 (single-chunk)
    split_paths: tuple = ()           # paths that must run on 2 and 3 threads (not on 1)
    marks: list = field(default_factory=list)


def _avx(level):
    return [pytest.mark.skipif(_testing.simd_max() < level, reason="not on this CPU")]


def _prepared_pool(x, w, b, **kw):
    """conv2d_max_pool2d through the function prepare_conv2d_max_pool2d returns."""
    return F.prepare_conv2d_max_pool2d(x.shape, w, b, **kw)(x, w, b)


def _conv_cases():
    cases = []
    rng = np.random.default_rng(1)
    for dtype in (np.float32, np.float64):
        tag = np.dtype(dtype).name
        # im2col + GEMM: tiles of output rows (forward, dW-only), chunks of images (with dx)
        x, w, b = rand(rng, (5, 9, 8, 3), dtype), rand(rng, (3, 2, 3, 4), dtype), rand(rng, (4,), dtype)
        kw = dict(stride=(1, 2), padding=((1, 0), (2, 1)), dilation=(2, 1))
        dy = rand(rng, R.conv2d(x, w, b, **kw).shape, dtype)
        cases.append(Case(f"im2col-{tag}",
                          lambda x=x, w=w, b=b, kw=kw, dy=dy: (F.conv2d(x, w, b, **kw),
                                                               *F.conv2d_backward(dy, x, w, **kw),
                                                               *F.conv2d_backward(dy, x, w, need_dx=False, **kw)[1:]),
                          lambda x=x, w=w, b=b, kw=kw, dy=dy: (R.conv2d(x, w, b, **kw),
                                                               *R.conv2d_backward(dy, x, w, **kw),
                                                               *R.conv2d_backward(dy, x, w, **kw)[1:]),
                          ("conv2d_forward", "conv2d_backward", "conv2d_backward_weights"),
                          dtype, conv="im2col"))
        cases.append(dataclasses.replace(cases[-1], id=f"im2col-one-row-tiles-{tag}",
                                         block_bytes=1))
        # groups and the 1x1 stride-1 kernel (a GEMM straight on the input, no im2col)
        for wshape, kw in [((3, 3, 2, 6), dict(padding=1, groups=2)), ((1, 1, 4, 5), {})]:
            x, w = rand(rng, (4, 7, 6, 4), dtype), rand(rng, wshape, dtype)
            dy = rand(rng, R.conv2d(x, w, None, **kw).shape, dtype)
            cases.append(Case(f"im2col-{wshape[0]}x{wshape[1]}-g{kw.get('groups', 1)}-{tag}",
                              lambda x=x, w=w, kw=kw, dy=dy: (F.conv2d(x, w, **kw),
                                                              *F.conv2d_backward(dy, x, w, **kw)),
                              lambda x=x, w=w, kw=kw, dy=dy: (R.conv2d(x, w, **kw),
                                                              *R.conv2d_backward(dy, x, w, **kw)),
                              ("conv2d_forward", "conv2d_backward"), dtype, conv="im2col"))
        # Winograd: forward blocks, backward slots (13 images: 4, 8 and 12 slots on 1-3
        # threads, the last slot with one image), filter transform and adjoint
        x, w, b = rand(rng, (13, 14, 15, 5), dtype), rand(rng, (3, 3, 5, 6), dtype), rand(rng, (6,), dtype)
        dy = rand(rng, (13, 14, 15, 6), dtype)
        cases.append(Case(f"winograd-{tag}",
                          lambda x=x, w=w, b=b, dy=dy: (F.conv2d(x, w, b, padding=1),
                                                        *F.conv2d_backward(dy, x, w, padding=1),
                                                        *F.conv2d_backward(dy, x, w, padding=1,
                                                                           need_dx=False)[1:]),
                          lambda x=x, w=w, b=b, dy=dy: (R.conv2d(x, w, b, padding=1),
                                                        *R.conv2d_backward(dy, x, w, padding=1),
                                                        *R.conv2d_backward(dy, x, w, padding=1)[1:]),
                          ("winograd_forward", "winograd_backward", "winograd_filter",
                           "winograd_filter_grad"),
                          dtype, conv="winograd", idle_ok=("winograd_filter", "winograd_filter_grad")))
        cases.append(dataclasses.replace(cases[-1], id=f"winograd-8-tile-blocks-{tag}",
                                         block_bytes=1))
        # the backward pass on F(4x4, 3x3): 14 x 15 outputs, a partial last tile column
        cases.append(dataclasses.replace(cases[-2], id=f"winograd4-{tag}", conv="winograd4",
                                         paths=("winograd_forward", "winograd4_backward",
                                                "winograd4_filter", "winograd4_filter_grad"),
                                         idle_ok=("winograd4_filter", "winograd4_filter_grad")))
        cases.append(dataclasses.replace(cases[-1], id=f"winograd4-8-tile-blocks-{tag}",
                                         block_bytes=1))
        # one image with few tiles and many channels: one block of all the tiles, its 16
        # GEMMs shared out (9 tiles of 5x5 outputs; the pooled 6x6 output's 9 windows), the
        # same bits as the block per thread of 1 thread
        x1, w1, b1 = rand(rng, (1, 5, 5, 32), dtype), rand(rng, (3, 3, 32, 40), dtype), \
            rand(rng, (40,), dtype)
        x2 = rand(rng, (1, 8, 8, 32), dtype)
        cases.append(Case(f"winograd-gemm-slots-{tag}",
                          lambda x=x1, x2=x2, w=w1, b=b1: (
                              F.conv2d(x, w, b, padding=1), F.conv2d_max_pool2d(x2, w, b),
                              _prepared_pool(x2, w, b, relu=True)),
                          lambda x=x1, x2=x2, w=w1, b=b1: (
                              R.conv2d(x, w, b, padding=1), R.conv2d_max_pool2d(x2, w, b),
                              R.conv2d_max_pool2d(x2, w, b, relu=True)),
                          ("winograd_forward", "winograd_forward_pool"), dtype, conv="winograd",
                          exact=True, split_paths=("winograd_forward_slots",)))
        # the filter transforms in chunks of 1024 channel pairs: 40 * 80 = 3200 pairs, 4 chunks
        x, w = rand(rng, (2, 4, 5, 40), dtype), rand(rng, (3, 3, 40, 80), dtype)
        dy = rand(rng, (2, 2, 3, 80), dtype)
        cases.append(Case(f"winograd-filter-chunks-{tag}",
                          lambda x=x, w=w, dy=dy: (F.conv2d(x, w), *F.conv2d_backward(dy, x, w)),
                          lambda x=x, w=w, dy=dy: (R.conv2d(x, w), *R.conv2d_backward(dy, x, w)),
                          ("winograd_filter", "winograd_filter_grad"), dtype, conv="winograd"))
        cases.append(dataclasses.replace(cases[-1], id=f"winograd4-filter-chunks-{tag}",
                                         paths=("winograd4_filter", "winograd4_filter_grad"),
                                         conv="winograd4"))
    # Direct (float32, AVX-512): forward rows and dW slots (5 images of 12 rows)
    x, w, b = rand(rng, (5, 13, 17, 3), np.float32), rand(rng, (3, 3, 3, 32), np.float32), \
        rand(rng, (32,), np.float32)
    kw = dict(stride=(1, 1), padding=((1, 0), (0, 1)))
    dy = rand(rng, R.conv2d(x, w, b, **kw).shape, np.float32)
    cases.append(Case("direct-float32",
                      lambda: (F.conv2d(x, w, b, **kw),
                               *F.conv2d_backward(dy, x, w, need_dx=False, **kw)[1:]),
                      lambda: (R.conv2d(x, w, b, **kw), *R.conv2d_backward(dy, x, w, **kw)[1:]),
                      ("direct_forward", "direct_backward_weights"), np.float32, conv="direct",
                      marks=_avx(2)))
    # the same on the AVX2 kernels (C_out 20: a partial last vector of 8 lanes)
    w20, b20 = rand(rng, (3, 3, 3, 20), np.float32), rand(rng, (20,), np.float32)
    dy20 = rand(rng, R.conv2d(x, w20, b20, **kw).shape, np.float32)
    cases.append(Case("direct-float32-avx2",
                      lambda: (F.conv2d(x, w20, b20, **kw),
                               *F.conv2d_backward(dy20, x, w20, need_dx=False, **kw)[1:]),
                      lambda: (R.conv2d(x, w20, b20, **kw),
                               *R.conv2d_backward(dy20, x, w20, **kw)[1:]),
                      ("direct_forward", "direct_backward_weights"), np.float32, conv="direct",
                      pool="avx2", marks=_avx(1)))
    # conv2d_max_pool2d: the fused kernels (pooled Winograd tiles, direct row pairs) on odd
    # sizes (the last row/column dropped), with and without ReLU
    for dtype in (np.float32, np.float64):
        tag = np.dtype(dtype).name
        xq, wq, bq = rand(rng, (7, 11, 13, 16), dtype), rand(rng, (3, 3, 16, 12), dtype), \
            rand(rng, (12,), dtype)
        cases.append(Case(f"winograd-pool-{tag}",
                          lambda x=xq, w=wq, b=bq: (F.conv2d_max_pool2d(x, w, b, padding=1),
                                                    F.conv2d_max_pool2d(x, w, b, relu=True),
                                                    _prepared_pool(x, w, b, padding=1),
                                                    _prepared_pool(x, w, b, relu=True)),
                          lambda x=xq, w=wq, b=bq: (R.conv2d_max_pool2d(x, w, b, padding=1),
                                                    R.conv2d_max_pool2d(x, w, b, relu=True),
                                                    R.conv2d_max_pool2d(x, w, b, padding=1),
                                                    R.conv2d_max_pool2d(x, w, b, relu=True)),
                          ("winograd_forward_pool",), dtype, conv="winograd"))
        # its backward pass from the pooled gradient (one pool window per tile; the last
        # tile row/column of the odd-sized output under no window)
        argq = F.max_pool2d(F.conv2d(xq, wq, padding=1), 2)[1]
        dyq = rand(rng, argq.shape, dtype)
        cases.append(Case(f"winograd-pool-backward-{tag}",
                          lambda x=xq, w=wq, a=argq, dy=dyq: (
                              *F.conv2d_max_pool2d_backward(dy, a, x, w, padding=1),
                              *F.conv2d_max_pool2d_backward(dy, a, x, w, padding=1,
                                                            need_dx=False)[1:]),
                          lambda x=xq, w=wq, a=argq, dy=dyq: (
                              *R.conv2d_max_pool2d_backward(dy, a, x, w, padding=1),
                              *R.conv2d_max_pool2d_backward(dy, a, x, w, padding=1)[1:]),
                          ("winograd_backward_pool",), dtype, conv="winograd",
                          idle_ok=("winograd_filter", "winograd_filter_grad")))
    for pool, cout, level in (("auto", 32, 2), ("avx2", 20, 1)):
        wp, bp = rand(rng, (3, 3, 3, cout), np.float32), rand(rng, (cout,), np.float32)
        cases.append(Case(f"direct-pool-float32-{pool}",
                          lambda wp=wp, bp=bp: (F.conv2d_max_pool2d(x, wp, bp, **kw),
                                                F.conv2d_max_pool2d(x, wp, bp, relu=True),
                                                _prepared_pool(x, wp, bp, **kw),
                                                _prepared_pool(x, wp, bp, relu=True)),
                          lambda wp=wp, bp=bp: (R.conv2d_max_pool2d(x, wp, bp, **kw),
                                                R.conv2d_max_pool2d(x, wp, bp, relu=True),
                                                R.conv2d_max_pool2d(x, wp, bp, **kw),
                                                R.conv2d_max_pool2d(x, wp, bp, relu=True)),
                          ("direct_forward_pool",), np.float32, conv="direct", pool=pool,
                          marks=_avx(level)))
        # dW from the pooled gradient: each output row rebuilt in a thread's scratch (12 x 16
        # outputs, pooled 6 x 8)
        argp = F.max_pool2d(F.conv2d(x, wp, **kw), 2)[1]
        dyp = rand(rng, argp.shape, np.float32)
        cases.append(Case(f"direct-pool-backward-float32-{pool}",
                          lambda wp=wp, a=argp, dy=dyp: F.conv2d_max_pool2d_backward(
                              dy, a, x, wp, **kw, need_dx=False)[1:],
                          lambda wp=wp, a=argp, dy=dyp: R.conv2d_max_pool2d_backward(
                              dy, a, x, wp, **kw)[1:],
                          ("direct_backward_weights_pool",), np.float32, conv="direct",
                          pool=pool, marks=_avx(level)))
    # the inference pool in the registers (valid windows): 9 pooled rows, 7 pooled columns
    # (AVX-512: 3 at a time, the last block starting at 4), two vectors of 32 (16 on AVX2);
    # with padding on the right, the last pooled column reads it: the row-buffer path
    xr, right = rand(rng, (3, 9, 16, 3), np.float32), ((0, 0), (0, 2))
    for pool, cout, level in (("auto", 64, 2), ("avx2", 48, 1)):
        wr, br = rand(rng, (3, 3, 3, cout), np.float32), rand(rng, (cout,), np.float32)
        cases.append(Case(f"direct-pool-registers-float32-{pool}",
                          lambda wr=wr, br=br: (F.conv2d_max_pool2d(xr, wr, br),
                                                F.conv2d_max_pool2d(xr, wr, br, relu=True),
                                                _prepared_pool(xr, wr, None, relu=True),
                                                F.conv2d_max_pool2d(xr, wr, br, padding=right)),
                          lambda wr=wr, br=br: (R.conv2d_max_pool2d(xr, wr, br),
                                                R.conv2d_max_pool2d(xr, wr, br, relu=True),
                                                R.conv2d_max_pool2d(xr, wr, None, relu=True),
                                                R.conv2d_max_pool2d(xr, wr, br, padding=right)),
                          ("direct_forward_pool", "direct_forward_pool_registers"),
                          np.float32, exact=True, conv="direct", pool=pool,
                          marks=_avx(level)))
    return cases


def _pool_cases():
    cases = []
    rng = np.random.default_rng(2)
    # tiled windows: the vectorised kernels (C a multiple of 16 or 8) and the generic loop;
    # odd widths leave a column outside every window
    for pool, c, hw, k, dtype in [("avx512", 32, (8, 9), 2, np.float32),
                                  ("avx2", 24, (7, 9), 2, np.float32),
                                  ("avx512", 8, (6, 7), (2, 3), np.float32),   # AVX2 path under AVX-512
                                  ("generic", 16, (6, 9), 3, np.float32),
                                  ("auto", 5, (8, 7), 2, np.float64)]:
        x = np.maximum(rand(rng, (5, *hw, c), dtype), 0)     # many ties: the first must win
        y, _ = R.max_pool2d(x, k)
        dy = rand(rng, y.shape, dtype)
        level = {"avx512": 2 if c % 16 == 0 else 1, "avx2": 1}.get(pool, 0)
        suffix = {2: "_avx512", 1: "_avx2", 0: ""}[level if dtype == np.float32 else 0]
        cases.append(Case(f"maxpool-tiled-{pool}-c{c}-{np.dtype(dtype).name}",
                          lambda x=x, k=k, dy=dy: (*F.max_pool2d(x, k),
                                                   F.max_pool2d_backward(dy, F.max_pool2d(x, k)[1], x.shape)),
                          lambda x=x, k=k, dy=dy: (*R.max_pool2d(x, k),
                                                   R.max_pool2d_backward_from_x(dy, x, k)),
                          (f"max_pool2d_forward{suffix}", f"max_pool2d_backward_tiled{suffix}"),
                          dtype, exact=True, pool=pool,
                          marks=_avx({"avx512": 2, "avx2": 1}.get(pool, 0))))
    # overlapping, padded windows: the generic forward and the scatter backward; average pool
    for dtype in (np.float32, np.float64):
        x = rand(rng, (4, 9, 8, 3), dtype)
        y, _ = R.max_pool2d(x, 3, 2, 1)
        dy = rand(rng, y.shape, dtype)
        cases.append(Case(f"maxpool-overlapping-{np.dtype(dtype).name}",
                          lambda x=x, dy=dy: (*F.max_pool2d(x, 3, 2, 1),
                                              F.max_pool2d_backward(dy, F.max_pool2d(x, 3, 2, 1)[1], x.shape)),
                          lambda x=x, dy=dy: (*R.max_pool2d(x, 3, 2, 1),
                                              R.max_pool2d_backward_from_x(dy, x, 3, 2, 1)),
                          ("max_pool2d_forward", "max_pool2d_backward"), dtype, exact=True))
        ady = rand(rng, R.avg_pool2d(x, (2, 3), 1, "same").shape, dtype)
        cases.append(Case(f"avgpool-{np.dtype(dtype).name}",
                          lambda x=x, ady=ady: (F.avg_pool2d(x, (2, 3), 1, "same"),
                                                F.avg_pool2d_backward(ady, x.shape, (2, 3), 1, "same")),
                          lambda x=x, ady=ady: (R.avg_pool2d(x, (2, 3), 1, "same"),
                                                R.avg_pool2d_backward(ady, x.shape, (2, 3), 1, "same")),
                          ("avg_pool2d_forward", "avg_pool2d_backward"), dtype, exact=True))
    return cases


def _other_cases():
    cases = []
    rng = np.random.default_rng(3)
    for dtype in (np.float32, np.float64):
        tag = np.dtype(dtype).name
        x = rand(rng, (5, 7, 6, 3), dtype)
        geo = dict(kernel_size=(3, 2), stride=(2, 1), padding=1, dilation=(1, 2))
        cols = rand(rng, R.im2col(x, **geo).shape, dtype)
        cases.append(Case(f"im2col-col2im-{tag}",
                          lambda x=x, geo=geo, cols=cols: (F.im2col(x, **geo), F.col2im(cols, x.shape, **geo)),
                          lambda x=x, geo=geo, cols=cols: (R.im2col(x, **geo), R.col2im(cols, x.shape, **geo)),
                          ("im2col", "col2im"), dtype, exact=True))
        n = 3 * 65536 + 17                  # blocks of 65536: 4 blocks, the last one short
        dy, y = rand(rng, (n,), dtype), np.maximum(rand(rng, (n,), dtype), 0)
        cases.append(Case(f"relu-backward-{tag}", lambda dy=dy, y=y: (F.relu_backward(dy, y),),
                          lambda dy=dy, y=y: (R.relu_backward(dy, y),), ("relu_backward",), dtype,
                          exact=True))
        # The dense layers' GEMM: rows cut into one block per thread (31 rows: 10/10/11)
        for ta in (False, True):
            for tb in (False, True):
                m, k, nn = 31, 17, 12
                a = rand(rng, (k, m) if ta else (m, k), dtype)
                bm = rand(rng, (nn, k) if tb else (k, nn), dtype)
                out0 = rand(rng, (m, nn), dtype)
                want = (a.T if ta else a) @ (bm.T if tb else bm)

                def run(a=a, bm=bm, ta=ta, tb=tb, out0=out0):
                    out, out2 = out0.copy(), out0.copy()
                    F.matmul(a, bm, ta, tb, out=out, beta=1.0)
                    prepared = F.prepare_matmul(a.shape, bm, ta, tb)
                    prepared(a, bm, out2, 1.0)
                    return F.matmul(a, bm, ta, tb), out, prepared(a, bm), out2

                cases.append(Case(f"matmul-{'T' if ta else 'N'}{'T' if tb else 'N'}-{tag}", run,
                                  lambda want=want, out0=out0: (want, want + out0) * 2,
                                  ("matmul",), dtype))
                # one row (a batch-1 dense layer): the 67 rows of op(b) cut into blocks
                # of 16 (5 blocks, the last one short) over the threads, or with trans_b
                # its 57 columns (4 blocks)
                k1, n1 = 67, 57
                a1 = rand(rng, (k1, 1) if ta else (1, k1), dtype)
                b1 = rand(rng, (n1, k1) if tb else (k1, n1), dtype)
                o1 = rand(rng, (1, n1), dtype)
                want1 = (a1.T if ta else a1) @ (b1.T if tb else b1)

                def run1(a=a1, bm=b1, ta=ta, tb=tb, out0=o1):
                    out, out2 = out0.copy(), out0.copy()
                    F.matmul(a, bm, ta, tb, out=out, beta=1.0)
                    prepared = F.prepare_matmul(a.shape, bm, ta, tb)
                    prepared(a, bm, out2, 1.0)
                    return F.matmul(a, bm, ta, tb), out, prepared(a, bm), out2

                cases.append(Case(f"matmul-row-{'T' if ta else 'N'}{'T' if tb else 'N'}-{tag}",
                                  run1, lambda want=want1, out0=o1: (want, want + out0) * 2,
                                  ("matmul",), dtype))
        # a model's predict: one model object on every thread count, so that an inference
        # plan kept from another thread budget would show in the teams
        cases.append(_model_case(rng, dtype, tag))
    return cases


def _model_case(rng, dtype, tag):
    """predict of conv + ReLU + pool (the fused Winograd kernel), flatten, dense: 9 images
    of 10x10x5 (more elements than predict runs on one thread)."""
    import cconv
    from cconv.layers import Conv2D, Dense, Flatten, MaxPool2D
    model = cconv.Sequential([Conv2D(6, 3, padding="same", activation="relu"), MaxPool2D(2),
                              Flatten(), Dense(3)], input_shape=(10, 10, 5), seed=7,
                             dtype=np.dtype(dtype).name)
    x = rand(rng, (9, 10, 10, 5), dtype)
    conv, dense = model.layers[0].params, model.layers[3].params

    def reference():
        h = R.conv2d_max_pool2d(x, conv["kernel"], conv["bias"], padding="same", relu=True)
        return (h.reshape(9, -1) @ dense["kernel"] + dense["bias"],)
    return Case(f"model-predict-{tag}", lambda: (model.predict(x),), reference,
                ("winograd_forward_pool", "matmul"), dtype, conv="winograd")


CASES = _conv_cases() + _pool_cases() + _other_cases()


def _run_checked(case, threads):
    """Outputs of one forced call, and the record of the kernel paths it ran."""
    with forced(threads=threads, conv=case.conv, pool=case.pool,
                slots_per_thread=case.slots_per_thread, block_bytes=case.block_bytes):
        outs = case.run()
        return outs, kernels_run()


def _assert_same(a, b, what):
    for i, (p, q) in enumerate(zip(a, b)):
        np.testing.assert_array_equal(p, q, err_msg=f"{what}: output {i}")


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_kernel_on_1_2_3_threads(case):
    expected = case.reference()
    results = {}
    for threads in THREADS:
        outs, record = _run_checked(case, threads)
        for path in case.paths + (case.split_paths if threads > 1 else ()):
            assert path in record, f"{path} did not run on {threads} threads (ran: {sorted(record)})"
            team, workers = record[path]
            assert team == threads, f"{path}: asked for {threads} threads, the team had {team}"
            if path not in DYNAMIC and path not in case.idle_ok:
                assert workers == threads, f"{path}: {workers} of {threads} threads took work"
        for i, (got, want) in enumerate(zip(outs, expected)):
            if got.dtype.kind in "iu":
                np.testing.assert_array_equal(got, want, err_msg=f"{threads} threads, output {i}")
            else:
                assert_close(got, np.asarray(want, got.dtype), case.dtype)
        again, _ = _run_checked(case, threads)
        _assert_same(outs, again, f"{threads} threads, second call")
        results[threads] = outs
    for threads in THREADS[1:]:
        if case.exact:
            _assert_same(results[1], results[threads], f"1 thread vs {threads}")
        else:
            for a, b in zip(results[1], results[threads]):
                assert_close(b, a, case.dtype)


@pytest.mark.parametrize("threads", THREADS[1:])
@pytest.mark.parametrize("route", ["winograd", "winograd4", pytest.param("direct", marks=_avx(2))])
def test_dynamic_kernels_hand_work_to_every_thread(route, threads):
    """The direct and Winograd kernels hand their work out dynamically: a thread that starts
    late (the machine is busy) may find none left in a small call. On calls of some tens of
    milliseconds every thread (up to the number of CPUs) takes work within a few calls; the
    results are the same bits whichever thread ran which run of work."""
    rng = np.random.default_rng(5)
    if route == "direct":
        x, w = rand(rng, (48, 64, 64, 3), np.float32), rand(rng, (3, 3, 3, 32), np.float32)
    else:
        x, w = rand(rng, (24, 30, 30, 32), np.float32), rand(rng, (3, 3, 32, 32), np.float32)
    dy = rand(rng, (x.shape[0], 62, 62, 32) if route == "direct" else x.shape[:3] + (32,),
              np.float32)
    pad = 0 if route == "direct" else 1
    want = min(threads, CPUS)
    fwd, bwd = _testing.ROUTE_KERNELS[route]
    bwd = "direct_backward_weights" if route == "direct" else bwd
    first, seen = None, {fwd: 0, bwd: 0, f"{fwd}_pool": 0}
    if route != "winograd4":      # the backward pass from the pooled gradient
        seen[f"{bwd}_pool"] = 0
        p, arg = F.max_pool2d(F.conv2d(x, w, padding=pad), 2)
        dp = rand(rng, p.shape, np.float32)
    deadline = time.perf_counter() + 20
    while time.perf_counter() < deadline and min(seen.values()) < want:
        with forced(threads=threads, conv=route):
            outs = (F.conv2d(x, w, padding=pad),
                    *F.conv2d_backward(dy, x, w, padding=pad, need_dx=False)[1:],
                    F.conv2d_max_pool2d(x, w, padding=pad, relu=True))
            if route != "winograd4":
                outs += F.conv2d_max_pool2d_backward(dp, arg, x, w, padding=pad,
                                                     need_dx=False)[1:]
            ran = kernels_run()
        for path in seen:
            assert ran[path].team == threads
            seen[path] = max(seen[path], ran[path].workers)
        if first is None:
            first = outs
        _assert_same(first, outs, f"{threads} threads, repeated call")
    assert min(seen.values()) >= want, f"threads that took work (best call): {seen}"


@pytest.mark.parametrize("slots_per_thread", [1, 2, 4])
@pytest.mark.parametrize("route", ["winograd", "winograd4", pytest.param("direct", marks=_avx(2))])
def test_accumulator_slots(route, slots_per_thread):
    """The backward kernels keep one weight-gradient accumulator per run of work
    (SLOTS_PER_THREAD runs per thread, fewer when there are fewer images or rows): every
    slot count on every thread count gives the reference gradients, and each is
    reproducible."""
    rng = np.random.default_rng(4)
    n = 11
    x = rand(rng, (n, 5, 6, 3), np.float32)
    w = rand(rng, (3, 3, 3, 16), np.float32)
    dy = rand(rng, (n, 5, 6, 16), np.float32)
    _, rw, rb = R.conv2d_backward(dy, x, w, padding=1)
    path = "direct_backward_weights" if route == "direct" else _testing.ROUTE_KERNELS[route][1]
    for threads in THREADS:
        with forced(threads=threads, conv=route, slots_per_thread=slots_per_thread):
            first = F.conv2d_backward(dy, x, w, padding=1, need_dx=False)
            assert kernels_run()[path].team == threads
            for _ in range(3):
                again = F.conv2d_backward(dy, x, w, padding=1, need_dx=False)
                _assert_same(first[1:], again[1:], f"{threads} threads")
        assert_close(first[1], rw, np.float32)
        assert_close(first[2], rb, np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("block_bytes", [None, 1])
def test_depthwise_route_on_1_2_3_threads(block_bytes, dtype, monkeypatch):
    """The numpy depthwise route splits its blocks of images over Python threads (numpy
    releases the GIL in its loops): each thread count really runs that many threads, gives
    the reference results, y and dx the same bits on every thread count (each output is
    computed by one thread in a fixed order), dw and db the same to rounding."""
    rng = np.random.default_rng(6)
    x = rand(rng, (7, 9, 8, 8), dtype)
    w = rand(rng, (3, 3, 1, 16), dtype)
    b = rand(rng, (16,), dtype)
    conv = dict(stride=(2, 1), padding=((1, 2), (2, 0)), dilation=(1, 2), groups=8)
    dy = rand(rng, R.conv2d(x, w, b, **conv).shape, dtype)
    expected = (R.conv2d(x, w, b, **conv), *R.conv2d_backward(dy, x, w, **conv))
    on_threads, idents = F._on_threads, []       # per call: the threads that ran blocks

    def watched(nt, blocks, fn, *args):
        idents.append(set())

        def run(t, mine, *a):
            idents[-1].add(threading.current_thread())   # (idents may be reused)
            return fn(t, mine, *a)
        return on_threads(nt, blocks, run, *args)

    monkeypatch.setattr(F, "_on_threads", watched)
    results = {}
    for threads in THREADS:
        with forced(threads=threads, conv="depthwise", block_bytes=block_bytes):
            idents.clear()
            outs = (F.conv2d(x, w, b, **conv), *F.conv2d_backward(dy, x, w, **conv))
        assert [len(i) for i in idents] == [threads, threads], (threads, idents)
        for got, want in zip(outs, expected):
            assert_close(got, want, dtype)
        results[threads] = outs
    for threads in THREADS[1:]:
        _assert_same(results[1][:2], results[threads][:2], f"1 thread vs {threads}")
        for a, c in zip(results[1][2:], results[threads][2:]):
            assert_close(c, a, dtype)


def test_forced_restores_every_knob():
    import cconv
    from cconv import _core
    before = (F.MIN_WORK_PER_THREAD, F.WINOGRAD_MIN_CHANNELS, F.DIRECT_MAX_K,
              F.DEPTHWISE_MIN_CHANNELS, F.SLOTS_PER_THREAD, cconv.get_num_threads(),
              _core.simd_level(), F.WINOGRAD4_MIN_CHANNELS)
    with forced(threads=3, conv="winograd", pool="generic", slots_per_thread=2):
        assert cconv.get_num_threads() == 3 and F.MIN_WORK_PER_THREAD == 1
        assert F.WINOGRAD_MIN_CHANNELS == 1 and F.DIRECT_MAX_K is None
        assert F.DEPTHWISE_MIN_CHANNELS is None
        assert F.SLOTS_PER_THREAD == 2 and _core.simd_level() == 0
    with forced(conv="depthwise"):
        assert F.DEPTHWISE_MIN_CHANNELS == 1
        assert F.WINOGRAD_MIN_CHANNELS is None and F.DIRECT_MAX_K is None
    with forced(conv="winograd4"):
        assert F.WINOGRAD_MIN_CHANNELS == 1 and F.WINOGRAD4_MIN_CHANNELS == 0
    with forced(conv="winograd"):
        assert F.WINOGRAD4_MIN_CHANNELS is None
    assert before == (F.MIN_WORK_PER_THREAD, F.WINOGRAD_MIN_CHANNELS, F.DIRECT_MAX_K,
                      F.DEPTHWISE_MIN_CHANNELS, F.SLOTS_PER_THREAD, cconv.get_num_threads(),
                      _core.simd_level(), F.WINOGRAD4_MIN_CHANNELS)
    with pytest.raises(ValueError, match="conv must be"):
        with forced(conv="fft"):
            pass
    with pytest.raises(ValueError, match="needs AVX2"):
        with forced(conv="direct", pool="generic"):
            pass


def test_probe_counts_the_threads_that_took_work():
    """A team of 3 on one image: the per-image kernel gives work to one thread only.
    (cconv.functional never starts more threads than work items; the kernel is called
    directly.)"""
    x = np.ones((1, 4, 4, 2))
    cols = np.empty((9, 8))
    _testing.reset()
    F._core.im2col(x, cols, 2, 2, 3, 3, 1, 1, 0, 0, 1, 1, 3)
    assert kernels_run() == {"im2col": (3, 1)}
    with forced(threads=3):
        F.max_pool2d(x, 2)                    # two rows of windows: a team of 2
        assert kernels_run() == {"max_pool2d_forward": (2, 2)}
    _testing.reset()
    assert kernels_run() == {}


# ----------------------------------------------------------------------------- fused pool
#: (route, instruction-set cap of forced(pool=...), level it needs, dtypes, C_out values)
FUSED_ROUTES = [
    pytest.param("winograd", "auto", 0, (np.float32, np.float64), (12, 20), id="winograd"),
    pytest.param("winograd", "generic", 0, (np.float32,), (12,), id="winograd-generic"),
    pytest.param("direct", "avx512", 2, (np.float32,), (32, 20, 5), id="direct-avx512",
                 marks=_avx(2)),
    pytest.param("direct", "avx2", 1, (np.float32,), (16, 20, 5), id="direct-avx2",
                 marks=_avx(1)),
]


@pytest.mark.parametrize("route,cap,level,dtypes,couts", FUSED_ROUTES)
def test_conv2d_max_pool2d_is_the_unfused_chain(route, cap, level, dtypes, couts):
    """conv2d_max_pool2d's fused kernels against conv2d -> relu -> max_pool2d run by cconv
    under the same settings: the same bits, NaN included (on the Winograd route with an
    odd-sized output only to rounding: its BLAS calls have other sizes there), and the
    reference's values; odd and even sizes, both paddings, batches 1 and 3, 1 and 2
    threads (the fused kernel's team checked), C_out not a multiple of the vector width,
    the instruction set capped."""
    from test_property import assert_fused_equal
    rng = np.random.default_rng(19)
    cin = 16 if route == "winograd" else 3
    for dtype in dtypes:
        for cout in couts:
            for (h, wd), padding, n, threads, relu in [
                    ((9, 11), "same", 3, 2, True), ((8, 10), "same", 1, 1, False),
                    ((8, 10), "valid", 3, 2, False), ((9, 11), "valid", 1, 2, True),
                    ((10, 8), "same", 3, 1, True), ((7, 7), "valid", 3, 2, False)]:
                x = rand(rng, (n, h, wd, cin), dtype)
                w, b = rand(rng, (3, 3, cin, cout), dtype), rand(rng, (cout,), dtype)
                nan = x.copy()
                nan[0, 3, 4, 1] = np.nan          # NaN under several outputs of one window
                nan[-1, -1, 0, 0] = np.nan
                for xin in (x, nan):
                    with forced(threads=threads, conv=route, pool=cap):
                        y, arg = F.conv2d_max_pool2d(xin, w, b, padding=padding, relu=relu,
                                                     return_argmax=True)
                        ran = kernels_run()
                        y1 = F.conv2d_max_pool2d(xin, w, b, padding=padding, relu=relu)
                        z = F.conv2d(xin, w, b, padding=padding)
                        want, want_arg = F.max_pool2d(z, 2)
                        if relu:
                            want = F.relu(want)
                    np.testing.assert_array_equal(y.view(np.uint8), y1.view(np.uint8))
                    what = f"{route} {np.dtype(dtype).name} C_out {cout} {(n, h, wd)} {padding}"
                    assert f"{route}_forward_pool" in ran, (what, sorted(ran))
                    assert ran[f"{route}_forward_pool"].team == threads, (what, ran)
                    assert_fused_equal(y, want, ran, *z.shape[1:3])
                    if not (route == "winograd" and (z.shape[1] % 2 or z.shape[2] % 2)):
                        np.testing.assert_array_equal(arg, want_arg, err_msg=what)
                    if xin is x:
                        assert_close(y, R.conv2d_max_pool2d(x, w, b, padding=padding, relu=relu),
                                     dtype)
                    else:
                        assert np.isnan(y).any(), what


@pytest.mark.parametrize("threads", THREADS)
def test_same_bytes_sees_a_difference_in_every_run(threads):
    """The Winograd filter cache's check (_core.same_bytes) on 1-3 threads: one flipped bit
    anywhere (each thread's run: its first and last byte, the array's last byte) is a
    difference; the team checked."""
    from cconv import _core
    rng = np.random.default_rng(11)
    a = rand(rng, (3, 3, 37, 41), np.float32)           # 54,612 bytes: runs not 64-aligned
    run = -(-a.nbytes // threads)
    run = -(-run // 64) * 64
    positions = sorted({0, a.nbytes - 1} | {p for t in range(threads)
                                            for p in (t * run, min(a.nbytes, (t + 1) * run) - 1)
                                            if p < a.nbytes})
    _testing.reset()
    assert _core.same_bytes(a, a.copy(), threads)
    assert kernels_run()["same_bytes"].team == threads
    for pos in positions:
        b = a.copy()
        b.view(np.uint8).reshape(-1)[pos] ^= 1
        assert not _core.same_bytes(a, b, threads), pos
    assert not _core.same_bytes(a, a[:2].copy(), threads)
    with pytest.raises(ValueError, match="num_threads"):
        _core.same_bytes(a, a, 0)
