#!/usr/bin/env python
"""Inject plausible bugs into cconv's kernels, one at a time, and see which tests catch them.

For every fast route and every threaded path, a mutant: a small edit of the kind that real
bugs take (a sign, kh and kw transposed, an off-by-one, a lost accumulator slot, the last row
lost on 2+ threads, an argmax one pixel off on odd widths). Each mutant is applied to a
fresh copy of the committed tree (``git archive HEAD``), the extensions are rebuilt, and the
test suite (or the files given with ``--tests``) runs against it; the failures are counted
per test file. A mutant that no test outside its route's own file catches is a gap in the
general suites.

    python tools/mutants.py                      # every mutant, whole suite (~4 min each)
    python tools/mutants.py --tests tests/test_property.py tests/test_fuzz.py ...
    python tools/mutants.py --only matmul-last-row wino-lost-slot
    python tools/mutants.py --list

Writes a JSON record and a Markdown table (``--out``, default ./mutants/; file names carry
the date and time of the run, so logs kept under bench/results/ accumulate). Runs the tests
with ``--python`` (default: this interpreter), which must have the test dependencies and
not have cconv installed (the copy is put first on PYTHONPATH; an editable install of
another tree would shadow it).
"""
import argparse
import collections
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (id, path, description, route's own test files, old text, new text)
MUTANTS = [
    ("matmul-last-row", "src/cconv/_core.pyx",
     "dense GEMM (matmul row split): the last output row is not computed on 2+ threads", [],
     """            r1 = (ch + 1) * m // num_threads
            if r1 > r0:""",
     """            r1 = (ch + 1) * m // num_threads - (1 if (num_threads > 1 and ch == num_threads - 1) else 0)
            if r1 > r0:"""),
    ("matmul-row-last-column", "src/cconv/_core.pyx",
     "dense GEMM of one row, trans_b (column split): the last column is not computed on 2+ "
     "threads",
     [],
     """                c1 = min(n, (ch + 1) * cols // num_threads * COLUMN_BLOCK)""",
     """                c1 = min(n, (ch + 1) * cols // num_threads * COLUMN_BLOCK) - (1 if ch == num_threads - 1 else 0)"""),
    ("matmul-row-transposed-offset", "src/cconv/_core.pyx",
     "dense GEMM of one row, trans_b (column split): a column block of op(b) = b^T starts "
     "at column c0 of b instead of its row c0", [],
     """                                bp + c0 * ldb * size, ldb, beta, cp + c0 * size, n)""",
     """                                bp + c0 * size, ldb, beta, cp + c0 * size, n)"""),
    ("matmul-row-inner-last-row", "src/cconv/_core.pyx",
     "dense GEMM of one row (split of the inner dimension): the last row of op(b) is left "
     "out on 2+ threads", [],
     """                c1 = min(k, (ch + 1) * cols // nt * COLUMN_BLOCK)""",
     """                c1 = min(k, (ch + 1) * cols // nt * COLUMN_BLOCK) - (1 if ch == nt - 1 else 0)"""),
    ("matmul-row-inner-a-offset", "src/cconv/_core.pyx",
     "dense GEMM of one row (split of the inner dimension): every block reads op(a) from "
     "its start", [],
     """                            ap + c0 * (lda if trans_a else 1) * size, lda,""",
     """                            ap, lda,"""),
    ("matmul-row-inner-partial-lost", "src/cconv/_core.pyx",
     "dense GEMM of one row (split of the inner dimension): the last thread's partial row "
     "is not added", [],
     """        for ch in range(nt - 1):
            for j in range(n):""",
     """        for ch in range(nt - 2):
            for j in range(n):"""),
    ("wino-bwd-skip-unpooled", "src/cconv/_conv.pyx",
     "Winograd backward: the tiles of an odd-sized output's last row/column are skipped "
     "also when dy is the output's own gradient (not a pool's)", ["test_winograd.py"],
     """    cdef WinoGeom g = wino_geom(geom, tb, dy_argmax != NULL, m)""",
     """    cdef WinoGeom g = wino_geom(geom, tb, 1, m)"""),
    ("direct-unpool-mask-ignored", "src/cconv/_conv_direct.h",
     "direct dW from the pooled gradient after a ReLU: the ReLU's mask is not applied",
     ["test_conv_direct.py"],
     """                float v = !m || mk[o] > 0 ? g[o] : 0.0f;""",
     """                float v = g[o];"""),
    ("wino-dy-pool-mask-at-zero", "src/cconv/_winograd.h",
     "Winograd backward from the pooled gradient after a ReLU: the mask lets the gradient "
     "through where the ReLU's output is 0 (>= instead of >)", ["test_winograd.py"],
     """        T z = (T)0, v = !m || mk[o] > 0 ? g[o] : z;""",
     """        T z = (T)0, v = !m || mk[o] >= 0 ? g[o] : z;"""),
    ("im2col-fwd-last-row", "src/cconv/_conv.pyx",
     "im2col + GEMM forward: the last output row of the batch is lost on 2+ threads", [],
     """            gemm_forward_tile(g, x, w, b, y, buf, t * T, min(t * T + T, M), direct)""",
     """            gemm_forward_tile(g, x, w, b, y, buf, t * T, min(t * T + T, M - (1 if t == ntiles - 1 else 0)), direct)"""),
    ("im2col-bwd-last-row", "src/cconv/_conv.pyx",
     "im2col + GEMM backward (with dx): the last chunk's last output row is lost on 2+ threads",
     [],
     """    cdef Py_ssize_t P = g.OH * g.OW, r0 = n0 * P, r1, rend = n1 * P""",
     """    cdef Py_ssize_t P = g.OH * g.OW, r0 = n0 * P, r1, rend = n1 * P - (1 if (n0 > 0 and n1 == g.N) else 0)"""),
    ("im2col-dilation-transposed", "src/cconv/_im2col.pyx",
     "im2col: the vertical taps use the horizontal dilation (dh and dw transposed)", [],
     """        for kh in range(g.KH):
            ih = ih0 + kh * g.dh
            if ih < 0 or ih >= g.H:
                memset(dst, 0, g.KW * cg * sizeof(floating))""",
     """        for kh in range(g.KH):
            ih = ih0 + kh * g.dw
            if ih < 0 or ih >= g.H:
                memset(dst, 0, g.KW * cg * sizeof(floating))"""),
    ("col2im-last-column", "src/cconv/_im2col.pyx",
     "col2im: off by one, nothing is added to the last image column (partial kernel rows)", [],
     """                if iw >= 0 and iw < g.W:
                    vadd(dst + iw * g.C, src, cg)""",
     """                if iw >= 0 and iw < g.W - 1:
                    vadd(dst + iw * g.C, src, cg)"""),
    ("slot-sum-lost", "src/cconv/functional.py",
     "the per-thread/per-slot accumulator sum drops the last slot (im2col dW/db, direct, "
     "Winograd db)", [],
     """        np.add.reduce(work, axis=0, out=out)""",
     """        np.add.reduce(work[:-1], axis=0, out=out)"""),
    ("direct-khkw-swapped", "src/cconv/_conv_direct.h",
     "direct convolution: kh and kw swapped in the tap offsets", ["test_conv_direct.py"],
     """                off[t] = (kh * g->dh * g->W + kw * g->dw) * g->C + c;""",
     """                off[t] = (kw * g->dh * g->W + kh * g->dw) * g->C + c;"""),
    ("direct-row-inside-left", "src/cconv/_conv_direct.h",
     "direct convolution: the inside run starts a column early with left padding (floor, "
     "not ceiling), so a padded window is read in place", ["test_conv_direct.py"],
     """        lo = (pl + sw - 1) / sw;""",
     """        lo = pl / sw;"""),
    ("direct-row-inside-right", "src/cconv/_conv_direct.h",
     "direct convolution: the inside run ends a column late, past the image's right edge",
     ["test_conv_direct.py"],
     """(W - 1 + pl - span) / sw + 1 : 0;""",
     """(W - 1 + pl - span) / sw + 2 : 0;"""),
    ("direct-dw-last-row", "src/cconv/_conv.pyx",
     "direct dW: the last slot's last row is lost on 2+ slots", ["test_conv_direct.py"],
     """            for row in range(slot * rows // nslots, (slot + 1) * rows // nslots):""",
     """            for row in range(slot * rows // nslots, (slot + 1) * rows // nslots - (1 if (yp == NULL and nslots > 1 and slot == nslots - 1) else 0)):"""),
    ("wino-fwd-last-tile", "src/cconv/_conv.pyx",
     "Winograd forward: the last tile is lost when there are 2+ blocks", ["test_winograd.py"],
     """            t0 = blk * TB
            t1 = min(t0 + TB, ntiles)""",
     """            t0 = blk * TB
            t1 = min(t0 + TB, ntiles - (1 if nblocks > 1 else 0))"""),
    ("wino-fwd-block-count", "src/cconv/_conv.pyx",
     "Winograd forward: blocks counted at the plan's size after they were made equal "
     "(smaller), so the last tiles are lost", ["test_winograd.py"],
     """    g.TB = TB
    nblocks = (ntiles + TB - 1) // TB""",
     """    g.TB = TB
    nblocks = (ntiles + tb - 1) // tb"""),
    ("wino-fwd-block-stale", "src/cconv/_conv.pyx",
     "Winograd forward: the tile geometry keeps the plan's block size after the blocks were "
     "made equal (the transforms and the GEMMs disagree on V's layout)", ["test_winograd.py"],
     """    g.TB = TB
    nblocks""",
     """    nblocks"""),
    ("wino-slots-last-tile", "src/cconv/_conv.pyx",
     "Winograd forward of a few tiles (one block, the GEMMs shared out): the last tile's "
     "output transform is left out", [],
     """        for t in prange(ntiles, schedule="static"):
            wino_output_block(""",
     """        for t in prange(ntiles - 1, schedule="static"):
            wino_output_block("""),
    ("wino-slots-v-stride", "src/cconv/_conv.pyx",
     "Winograd forward of a few tiles: the GEMMs step through V by the output's channel "
     "count (V and M's row lengths swapped)", [],
     """                 V + k * ntiles * C, <int> C,""",
     """                 V + k * ntiles * Cout, <int> C,"""),
    ("wino-slots-block-ld", "src/cconv/_conv.pyx",
     "Winograd forward of a few tiles: the transforms keep the per-thread block's row "
     "stride (TB) for the one block of all the tiles", [],
     """    g.TB = ntiles
    with parallel""",
     """    with parallel"""),
    ("wino-du-overwrites", "src/cconv/_conv.pyx",
     "Winograd dU: each block overwrites its slot's accumulator (beta 0) instead of adding",
     ["test_winograd.py"],
     """                         V + k * TB * C, <int> C, Yh + k * TB * Cout, <int> Cout,
                         <floating> 1, duacc + k * C * Cout, <int> Cout)""",
     """                         V + k * TB * C, <int> C, Yh + k * TB * Cout, <int> Cout,
                         <floating> 0, duacc + k * C * Cout, <int> Cout)"""),
    ("wino-in-fast-row", "src/cconv/_winograd.h",
     "Winograd input transform, blocks inside the image: the block's last row read from its "
     "third", ["test_winograd.py"],
     """const T *r1 = r0 + W * C, *r2 = r1 + W * C, *r3 = r2 + W * C;""",
     """const T *r1 = r0 + W * C, *r2 = r1 + W * C, *r3 = r2;"""),
    ("wino-fast-edge", "src/cconv/_winograd.h",
     "Winograd input and dx transforms: a block one column past the right edge (padding) "
     "counts as inside the image: the input transform reads, and dx adds onto, the next "
     "row's first pixel instead of a zero / the sink", ["test_winograd.py"],
     """(i) + 4 <= (H) && (j) + 4 <= (W))""",
     """(i) + 4 <= (H) && (j) + 3 <= (W))"""),
    ("wino-in-border-rows", "src/cconv/_winograd.h",
     "Winograd input transform, blocks over the padding: the block's middle rows swapped",
     ["test_winograd.py"],
     """p[j][c], p[4 + j][c], p[8 + j][c], p[12 + j][c])""",
     """p[j][c], p[8 + j][c], p[4 + j][c], p[12 + j][c])"""),
    ("wino-dx-fast-row", "src/cconv/_winograd.h",
     "Winograd dx, blocks inside the image: every row of the block added onto its first row",
     ["test_winograd.py"],
     """            s[i] = s[i - 1] + W * C;""",
     """            s[i] = s[i - 1];"""),
    ("wino-dx-sign", "src/cconv/_winograd.h",
     "Winograd dx: a sign error in the input-gradient transform", ["test_winograd.py"],
     """t[2][j] = v1 + v2 - v0; t[3][j] = -v3;""",
     """t[2][j] = v1 + v2 - v0; t[3][j] = v3;"""),
    ("wino-filter-transposed", "src/cconv/_winograd.h",
     "Winograd filter transform: kh and kw transposed", ["test_winograd.py"],
     """            T g0 = w[b * P + p], g1 = w[(3 + b) * P + p], g2 = w[(6 + b) * P + p];""",
     """            T g0 = w[3 * b * P + p], g1 = w[(3 * b + 1) * P + p], g2 = w[(3 * b + 2) * P + p];"""),
    ("wino-lost-slot", "src/cconv/_winograd.h",
     "Winograd backward: the filter-gradient adjoint drops its last accumulator slot",
     ["test_winograd.py"],
     """        for (ptrdiff_t q = 1; q < ns; q++)""",
     """        for (ptrdiff_t q = 1; q < ns - 1; q++)"""),
    ("wino4-bt-coefficient", "src/cconv/_winograd4.h",
     "Winograd F(4x4) backward: a wrong B^T coefficient (-4 for -5) in the input transform (dW)",
     ["test_winograd4.py"],
     """    o3 = c_ + e_; o4 = c_ - e_; o5 = 4 * (i1) - 5 * (i3) + (i5); } while (0)""",
     """    o3 = c_ + e_; o4 = c_ - e_; o5 = 4 * (i1) - 4 * (i3) + (i5); } while (0)"""),
    ("wino4-g-coefficient", "src/cconv/_winograd4.h",
     "Winograd F(4x4) backward: a wrong G coefficient (1/2 for 1/4) in the filter transform (dx)",
     ["test_winograd4.py"],
     """    o0 = (T)0.25 * (i0); o1 = (T)(-1.0 / 6) * (e_ + (i1));""",
     """    o0 = (T)0.5 * (i0); o1 = (T)(-1.0 / 6) * (e_ + (i1));"""),
    ("wino4-gt-coefficient", "src/cconv/_winograd4.h",
     "Winograd F(4x4) backward: a wrong G^T coefficient (1/6 for 1/12) in the filter-gradient adjoint",
     ["test_winograd4.py"],
     """    o1 = (T)(1.0 / 6) * m12_ + (T)(1.0 / 12) * m34_;""",
     """    o1 = (T)(1.0 / 6) * m12_ + (T)(1.0 / 6) * m34_;"""),
    ("wino4-at-sign", "src/cconv/_winograd4.h",
     "Winograd F(4x4) backward: a sign error in the dy transform A dY A^T",
     ["test_winograd4.py"],
     """e2_ = (i0) + 4 * (i2), d2_ = 2 * (i1) + 8 * (i3);""",
     """e2_ = (i0) + 4 * (i2), d2_ = 2 * (i1) - 8 * (i3);"""),
    ("wino4-b-sign", "src/cconv/_winograd4.h",
     "Winograd F(4x4) backward: a sign error in the input-gradient transform B dV B^T",
     ["test_winograd4.py"],
     """o3 = -m12_ - 2 * m34_ - 5 * (i5);""",
     """o3 = -m12_ - 2 * m34_ + 5 * (i5);"""),
    ("wino4-in-offset", "src/cconv/_winograd4.h",
     "Winograd F(4x4) backward: the input tiles read one column to the right",
     ["test_winograd4.py"],
     """            p[6 * i + j] = CCONV_IN_IMAGE(ih0 + i, iw0 + j, H, W)                           \\
                ? x + ((n * H + ih0 + i) * W + iw0 + j) * C : zero;""",
     """            p[6 * i + j] = CCONV_IN_IMAGE(ih0 + i, iw0 + j + 1, H, W)                           \\
                ? x + ((n * H + ih0 + i) * W + iw0 + j + 1) * C : zero;"""),
    ("wino4-lost-column", "src/cconv/_conv.pyx",
     "Winograd tiles (F(4x4), and F(2x2) unpooled): the last partial tile column is lost",
     ["test_winograd4.py"],
     """    w.TW = g.OW // 2 if pool else (g.OW + m - 1) // m""",
     """    w.TW = g.OW // 2 if pool else (g.OW + m - 2) // m"""),
    ("wino4-lost-row", "src/cconv/_conv.pyx",
     "Winograd tiles (F(4x4), and F(2x2) unpooled): the last partial tile row is lost",
     ["test_winograd4.py"],
     """    w.TT = (g.OH // 2 if pool else (g.OH + m - 1) // m) * w.TW""",
     """    w.TT = (g.OH // 2 if pool else (g.OH + m - 2) // m) * w.TW"""),
    ("wino4-slot-twice", "src/cconv/_winograd4.h",
     "Winograd F(4x4) backward: the filter-gradient adjoint adds the first dU slot twice",
     ["test_winograd4.py"],
     """        for (ptrdiff_t q = 1; q < ns; q++)""",
     """        for (ptrdiff_t q = 0; q < ns; q++)"""),
    ("wino4-chunk-skipped", "src/cconv/_conv.pyx",
     "Winograd F(4x4) backward: the last run of images is skipped on 2+ slots",
     ["test_winograd4.py"],
     """            t0 = n0 * g.TT
            tend = n1 * g.TT""",
     """            t0 = n0 * g.TT
            tend = t0 if (m == 4 and nchunks > 1 and ch == nchunks - 1) else n1 * g.TT"""),
    ("pool-avx512-argmax-odd", "src/cconv/_pool_simd_kern.h",
     "AVX-512 max pool: the last column's argmax one pixel off on odd widths",
     ["test_pool_simd.py", "test_pool_paths.py"],
     """VEC(iset1)((int)((oh * KH + kh) * W + ow * KW + kw)),""",
     """VEC(iset1)((int)((oh * KH + kh) * W + ow * KW + kw
                                    + (VLANES == 16 && ow == OW - 1 && (W & 1)))),"""),
    ("pool-avx2-argmax-odd", "src/cconv/_pool_simd_kern.h",
     "AVX2 max pool: the last column's argmax one pixel off on odd widths",
     ["test_pool_simd.py", "test_pool_paths.py"],
     """VEC(iset1)((int)((oh * KH + kh) * W + ow * KW + kw)),""",
     """VEC(iset1)((int)((oh * KH + kh) * W + ow * KW + kw
                                    + (VLANES == 8 && ow == OW - 1 && (W & 1)))),"""),
    ("pool-avx512-bwd-sign", "src/cconv/_simd.h",
     "AVX-512 max-pool backward: the gradient's sign flipped",
     ["test_pool_simd.py", "test_pool_paths.py"],
     """#define CCONV_V16_keep(k, v) _mm512_maskz_mov_ps((k), (v))""",
     """#define CCONV_V16_keep(k, v) _mm512_maskz_mov_ps((k), _mm512_sub_ps(_mm512_setzero_ps(), (v)))"""),
    ("pool-avx2-bwd-mask", "src/cconv/_simd.h",
     "AVX2 max-pool backward: the mask inverted (the gradient goes to the losers)",
     ["test_pool_simd.py", "test_pool_paths.py"],
     """#define CCONV_V8_keep(k, v) _mm256_and_ps((k), (v))""",
     """#define CCONV_V8_keep(k, v) _mm256_andnot_ps((k), (v))"""),
    ("pool-tiled-bwd-right-columns", "src/cconv/_pool.pyx",
     "tiled max-pool backward: off by one, a single column right of the last window is "
     "not zeroed (odd widths)", ["test_pool_simd.py", "test_pool_paths.py"],
     """        if OW * KW < W:   # columns right of the last window""",
     """        if OW * KW < W - 1:   # columns right of the last window"""),
    ("pool-generic-ties", "src/cconv/_pool_rows.h",
     "generic max pool: ties go to the last element of the window (>= instead of >)",
     ["test_pool_paths.py"],
     """                    int take = (v > b) | (v != v);""",
     """                    int take = (v >= b) | (v != v);"""),
    ("avgpool-bwd-last-image", "src/cconv/_pool.pyx",
     "average-pool backward: the last image is skipped on 2+ threads", [],
     """        for n in prange(g.N, schedule="static"):
            avgpool_backward_image(g, dy, dx, level, n)""",
     """        for n in prange(g.N - 1, schedule="static"):
            avgpool_backward_image(g, dy, dx, level, n)"""),
    # The compiled plan and the compiled fast paths of functional (since the core split)
    ("plan-gemm-team-over-budget", "src/cconv/_conv.pyx",
     "the plan gives the im2col + GEMM route one thread more than the budget", [],
     """        p.threads = cconv_threads(budget, N if need_dx else M, work, mw)""",
     """        p.threads = cconv_threads(budget + 1, N if need_dx else M, work, mw)"""),
    ("conv-fast-strides-swapped", "src/cconv/_core.pyx",
     "the compiled fast path of conv2d: vertical and horizontal strides swapped",
     ["test_fast_paths.py"],
     """    if cconv_conv_geom(&g, xshape[0], xshape[1], xshape[2], xshape[3], KH, KW, wshape[3], sh, sw,""",
     """    if cconv_conv_geom(&g, xshape[0], xshape[1], xshape[2], xshape[3], KH, KW, wshape[3], sw, sh,"""),
    ("pool-fast-pads-swapped", "src/cconv/_core.pyx",
     "the compiled fast path of max_pool2d: left and right paddings swapped",
     ["test_fast_paths.py"],
     """    if cconv_pool_geom(&g, xshape[0], xshape[1], xshape[2], xshape[3], KH, KW, sh, sw, pt, pb,
                       pl, pr):""",
     """    if cconv_pool_geom(&g, xshape[0], xshape[1], xshape[2], xshape[3], KH, KW, sh, sw, pt, pb,
                       pr, pl):"""),
    # The depthwise route (numpy code in functional.py: nothing to rebuild)
    ("dwise-tap-offset", "src/cconv/functional.py",
     "depthwise route: the horizontal tap offset one pixel off (kw * dw + 1)",
     [],
     """_tap_range(out_hw[1], xshape[2], s[1], pads[1][0], kw * d[1])""",
     """_tap_range(out_hw[1], xshape[2], s[1], pads[1][0], kw * d[1] + 1)"""),
    ("dwise-tap-range", "src/cconv/functional.py",
     "depthwise route: a tap's last output row/column dropped (its range one short)",
     [],
     """o1 = min(out_size, (in_size - 1 + pad - offset) // stride + 1)""",
     """o1 = min(out_size, (in_size - 1 + pad - offset) // stride)"""),
    ("dwise-dw-axis", "src/cconv/functional.py",
     "depthwise route: dw summed over the channels too (the wrong axes)",
     [],
     """np.add.reduce(p, axis=(0, 1, 2), out=sums[t])""",
     """np.add.reduce(p, axis=(0, 1, 2, 3), out=sums[t, 0]); sums[t] = sums[t, 0]"""),
    ("fused-wino-row-offset", "src/cconv/_conv.pyx",
     "fused conv + max pool, Winograd: a pooled tile's input block starts one row low", [],
     """    oh0[0] = 2 * th
""",
     """    oh0[0] = 2 * th + (g.pool != 0)
"""),
    ("fused-wino-max-of-3", "src/cconv/_winograd.h",
     "fused conv + max pool, Winograd: the max is taken over 3 of the tile's 4 outputs", [],
     """        v = t[1][1] - t[1][2] - t[1][3];""",
     """        v = best;"""),
    ("fused-wino-bias-twice", "src/cconv/_winograd.h",
     "fused conv + max pool, Winograd: the bias is added twice", [],
     """        best = best + (bias ? bias[o] : (T)0);""",
     """        best = best + (bias ? bias[o] + bias[o] : (T)0);"""),
    ("fused-wino-lost-tile-row", "src/cconv/_conv.pyx",
     "fused conv + max pool, Winograd: the batch's last row of pooled tiles is not computed",
     [],
     """    cdef Py_ssize_t ntiles = g.N * g.TT""",
     """    cdef Py_ssize_t ntiles = g.N * g.TT - (g.TW if pool else 0)"""),
    ("fused-wino-last-block", "src/cconv/_conv.pyx",
     "fused conv + max pool, Winograd: the last block of tiles is skipped when there are 2+",
     [],
     """            t1 = min(t0 + TB, ntiles)""",
     """            t1 = t0 if (pool and nblocks > 1 and blk == nblocks - 1) else min(t0 + TB, ntiles)"""),
    ("fused-direct-row-pair", "src/cconv/_conv.pyx",
     "fused conv + max pool, direct: pooled row p pools output rows p, p+1 instead of 2p, 2p+1",
     [],
     """                        cconv_direct_row(g, xp, n, 2 * (row - n * PH) + r, off, off + g.Kpad,""",
     """                        cconv_direct_row(g, xp, n, (row - n * PH) + r, off, off + g.Kpad,"""),
    ("fused-direct-last-run", "src/cconv/_conv.pyx",
     "fused conv + max pool, direct: the last run of pooled rows is skipped on 2+ runs", [],
     """                if pool:
                    n = row // PH""",
     """                if pool and nslots > 1 and slot == nslots - 1:
                    continue
                if pool:
                    n = row // PH"""),
    ("fused-wino-argmax-column", "src/cconv/_winograd.h",
     "fused conv + max pool with argmax (training), Winograd: the 4th output's winner is "
     "recorded one column left", [],
     """            best = take ? v : best; arg = take ? i2 + 1 : arg;""",
     """            best = take ? v : best; arg = take ? i2 : arg;"""),
    ("fused-direct-argmax-row", "src/cconv/_conv_direct.h",
     "fused conv + max pool with argmax (training), direct: the index uses the pooled row "
     "instead of the output row", [],
     """            int *ao = a + pw * cout, i0 = (int)(h0 * OW + 2 * pw), i2 = (int)(i0 + OW);""",
     """            int *ao = a + pw * cout, i0 = (int)(h0 / 2 * OW + 2 * pw), i2 = (int)(i0 + OW);"""),
    ("poolbwd-direct-column-swap", "src/cconv/_conv_direct.h",
     "conv + max pool backward from the pooled gradient, direct: a window's gradient goes to "
     "the other column of its row", [],
     """                r0[o] = i == c0 ? v : 0.0f;
                r1[o] = i == c1 ? v : 0.0f;""",
     """                r0[o] = i == c1 ? v : 0.0f;
                r1[o] = i == c0 ? v : 0.0f;"""),
    ("poolbwd-direct-last-window", "src/cconv/_conv_direct.h",
     "conv + max pool backward, direct: the last pooled column of each row is not unpooled "
     "(its two output columns keep the previous row's values)", [],
     """        for (ptrdiff_t pw = 0; pw < PW; pw++) {
            const float *g = dp + pw * cout, *mk""",
     """        for (ptrdiff_t pw = 0; pw < PW - 1; pw++) {
            const float *g = dp + pw * cout, *mk"""),
    ("poolbwd-direct-odd-rows", "src/cconv/_conv.pyx",
     "conv + max pool backward, direct: the second output row under each pool window gets "
     "no gradient", [],
     """                                                             g.OW, g.cout, oh, oh // 2 < PH)""",
     """                                                             g.OW, g.cout, oh, oh // 2 < PH and oh % 2 == 0)"""),
    ("poolbwd-wino-unit", "src/cconv/_winograd.h",
     "conv + max pool backward, Winograd: a window's top-right unit is matched against the "
     "top-left index", [],
     '        T g00 = i == i0 ? v : z, g01 = i == i0 + 1 ? v : z;                                 \\',
     '        T g00 = i == i0 ? v : z, g01 = i == i0 ? v : z;                                     \\'),
    ("poolbwd-wino-window-row", "src/cconv/_winograd.h",
     "conv + max pool backward, Winograd: a tile reads the pool window one row below its own "
     "(clamped to the last)", [],
     '    ptrdiff_t ph = oh0 / 2, pw = ow0 / 2;                                                   \\',
     '    ptrdiff_t ph = oh0 / 2 + 1 < PH ? oh0 / 2 + 1 : oh0 / 2, pw = ow0 / 2; \\'),
    ("poolbwd-joint-relu-mask", "src/cconv/layers.py",
     "conv + ReLU + max pool, the joint backward of training: the ReLU's mask is not applied "
     "to the pooled gradient", [],
     """                dx, dw, db = self._conv_pool_backward(dy, argmax, x, following, p)""",
     """                dx, dw, db = self._conv_pool_backward(dy, argmax, x, following, None)"""),
    ("dwise-multiplier-order", "src/cconv/functional.py",
     "depthwise route, forward: output channel j*C + c instead of c*m + j (multiplier order)",
     [],
     """    w4 = w.reshape(w.shape[0], w.shape[1], C, m)
    nt, blocks""",
     """    w4 = w.reshape(w.shape[0], w.shape[1], m, C).transpose(0, 1, 3, 2)
    nt, blocks"""),
    ("dwise-dx-stride", "src/cconv/functional.py",
     "depthwise route: dx adds each tap into an unstrided window (stride ignored)",
     [],
     """dxs = dx[n0:n1, ri, ci]""",
     """dxs = dx[n0:n1, ri.start:ri.start + ro.stop - ro.start, ci.start:ci.start + co.stop - co.start]"""),
    ("dwise-dx-not-zeroed", "src/cconv/functional.py",
     "depthwise route: dx not zeroed before the taps add into it",
     [],
     """            if dx is not None:
                dx[n0:n1] = 0
""",
     """"""),
    ("direct-fwd2-second-bias", "src/cconv/_conv_direct_kern.h",
     "direct forward, 2-vector block: the second vector of outputs starts from the first "
     "vector's bias", ["test_conv_direct.py"],
     """    VTYPE init1 = b ? VEC(load)(b + VLANES) : VEC(zero)();""",
     """    VTYPE init1 = b ? VEC(load)(b) : VEC(zero)();"""),
    ("direct-fwd2-avx2-half-offset", "src/cconv/_conv_direct_kern.h",
     "direct forward, AVX2 2-vector blocks of 4 pixels: the group's second half is stored "
     "4 floats on instead of 4 pixels on", ["test_conv_direct.py"],
     """                                       yo + 4 * cout + o, np - 4);""",
     """                                       yo + 4 + o, np - 4);"""),
    ("direct-fwd2-avx2-tail-half", "src/cconv/_conv_direct_kern.h",
     "direct forward, AVX2 2-vector blocks of 4 pixels: a row's last group of 5-7 pixels "
     "leaves its second half out", ["test_conv_direct.py"],
     """            if (np > 4)        /* the blocks are of 4 pixels: the group's second half */""",
     """            if (np > 7)        /* the blocks are of 4 pixels: the group's second half */"""),
    ("direct-fwd2-inside-weights", "src/cconv/_conv_direct_kern.h",
     "direct forward, 2-vector block, pixels inside the image: the second vector of "
     "outputs reads the first vector's weights", ["test_conv_direct.py"],
     """        for (ptrdiff_t t = 0; t < K; t++) {
            VTYPE w0 = VEC(load)(w + t * cout), w1 = VEC(load)(w + t * cout + VLANES);
            ptrdiff_t d = pt[t];""",
     """        for (ptrdiff_t t = 0; t < K; t++) {
            VTYPE w0 = VEC(load)(w + t * cout), w1 = VEC(load)(w + t * cout);
            ptrdiff_t d = pt[t];"""),
    ("same-bytes-last-run", "src/cconv/_core.pyx",
     "the Winograd filter cache's threaded check: the last thread's run is not compared",
     [],
     """            if r0 < n:
                r1 = r0 + run if r0 + run < n else n""",
     """            if r0 < n and ch < nt - 1:
                r1 = r0 + run if r0 + run < n else n"""),
    ("same-bytes-run-short", "src/cconv/_core.pyx",
     "the Winograd filter cache's threaded check: each run leaves out its last byte", [],
     """                if memcmp(ap + r0, bp + r0, r1 - r0) != 0:""",
     """                if memcmp(ap + r0, bp + r0, r1 - r0 - 1) != 0:"""),
    ("plan-copied", "src/cconv/model.py",
     "a model's copies and pickles keep its inference plans (functions bound to the "
     "original's layers)", ["test_inference_plan.py"],
     """        state["_plans"] = {}
        return state""",
     """        return state"""),
    ("prepared-relu-lost", "src/cconv/functional.py",
     "prepared conv + pool (a model's inference plan): the fused kernel runs without the "
     "ReLU", ["test_inference_plan.py"],
     """        _conv_pool_fused(plan, x, w, b, y, None, geo, relu, workspace)""",
     """        _conv_pool_fused(plan, x, w, b, y, None, geo, False, workspace)"""),
    ("prepared-matmul-beta-lost", "src/cconv/functional.py",
     "prepared matmul: beta is dropped (a dense layer's bias, filled into out, is "
     "overwritten)", ["test_inference_plan.py"],
     """        _run(nt, mnk, _core.matmul, ta, tb, a, b, float(beta), out, blas=1)""",
     """        _run(nt, mnk, _core.matmul, ta, tb, a, b, 0.0, out, blas=1)"""),
    ("plan-stale-route-state", "src/cconv/model.py",
     "inference plans keyed on the input shapes only: a plan made for another thread "
     "budget or route knobs is reused", ["test_inference_plan.py"],
     """        key = (tuple(a.shape for a in xs), F.route_state())""",
     """        key = (tuple(a.shape for a in xs), ())"""),
    ("plan-freed-after-first-reader", "src/cconv/model.py",
     "inference plan: a value read by several steps is released after its first reader",
     ["test_inference_plan.py"],
     """            for s in st.inputs:
                last_reader[s] = len(steps)""",
     """            for s in st.inputs:
                last_reader.setdefault(s, len(steps))"""),
    ("plan-fused-output-slot", "src/cconv/model.py",
     "inference plan: a fused pair writes the first step's output slot, not the second's",
     ["test_inference_plan.py"],
     """                    out, k = nxt.output, k + 1""",
     """                    k = k + 1"""),
    ("pool-regs-last-block", "src/cconv/_conv_direct_kern.h",
     "direct forward, pool in the registers: a row's last, partial block of pooled pixels "
     "is left out", ["test_conv_direct.py"],
     """    for (ptrdiff_t pw0 = 0; pw0 < PW; pw0 += VPOOL) {""",
     """    for (ptrdiff_t pw0 = 0; pw0 + VPOOL <= PW; pw0 += VPOOL) {"""),
    ("pool-regs-step", "src/cconv/_conv_direct_kern.h",
     "direct forward, pool in the registers: neighbouring pixels read taps one float apart, "
     "not one window step", ["test_conv_direct.py"],
     """#define CCONV_FMA(r, p) { VTYPE v = VEC(set1)(q##r[p * step]); """,
     """#define CCONV_FMA(r, p) { VTYPE v = VEC(set1)(q##r[p]); """),
    ("pool-regs-second-row", "src/cconv/_conv.pyx",
     "direct forward, pool in the registers: the second convolution row of a pooled row "
     "starts at the first's input row", ["test_conv_direct.py"],
     """                                              xp + (n * g.H + (oh + 1) * g.sh) * g.W * g.C,""",
     """                                              xp + (n * g.H + oh * g.sh) * g.W * g.C,"""),
    ("pool-regs-relu-nan", "src/cconv/_simd.h",
     "AVX-512 ReLU of the pool in the registers: a NaN becomes 0", ["test_conv_direct.py"],
     """#define CCONV_V16_relu(v) _mm512_maskz_mov_ps(_mm512_cmp_ps_mask((v), _mm512_setzero_ps(), \\
    _CMP_NLE_UQ), (v))""",
     """#define CCONV_V16_relu(v) _mm512_maskz_mov_ps(_mm512_cmp_ps_mask((v), _mm512_setzero_ps(), \\
    _CMP_GT_OQ), (v))"""),
    ("pool-regs-right-edge", "src/cconv/_conv.pyx",
     "direct forward, pool in the registers: taken also when the windows of the last pooled "
     "columns cross the right edge (padding on the right only)", ["test_conv_direct.py"],
     """                      and (2 * PW - 1) * g.sw + (g.KW - 1) * g.dw < g.W)""",
     """                      )"""),
    # NEON (aarch64): only tests/test_isa_suites.py's qemu checks reach these on x86
    ("neon-pool-nan", "src/cconv/_simd.h",
     "NEON max-pool step (the pool kernels' and the registers' pool): a NaN no longer takes "
     "the window", ["test_isa_suites.py"],
     """#define CCONV_V4_take(best, v) vorrq_u32(vcgtq_f32((v), (best)), vmvnq_u32(vceqq_f32((v), (v))))""",
     """#define CCONV_V4_take(best, v) vcgtq_f32((v), (best))"""),
    ("neon-pool-argmax", "src/cconv/_pool_simd_kern.h",
     "NEON max pool: the argmax names the window's first column", ["test_isa_suites.py"],
     """VEC(iset1)((int)((oh * KH + kh) * W + ow * KW + kw)),""",
     """VEC(iset1)((int)((oh * KH + kh) * W + ow * KW + (VLANES != 4) * kw)),"""),
    ("neon-pool-bwd-count", "src/cconv/_simd.h",
     "NEON max-pool backward: each match counted 3 times", ["test_isa_suites.py"],
     """#define CCONV_V4_count(k) vaddvq_u32(vshrq_n_u32((k), 31))""",
     """#define CCONV_V4_count(k) vaddvq_u32(vshrq_n_u32((k), 30))"""),
    ("neon-sel-swap", "src/cconv/_simd.h",
     "NEON select (max-pool step, the registers' pool) takes the smaller value",
     ["test_isa_suites.py"],
     """#define CCONV_V4_sel(k, v, best) vbslq_f32((k), (v), (best))""",
     """#define CCONV_V4_sel(k, v, best) vbslq_f32((k), (best), (v))"""),
    ("neon-relu-minus-zero", "src/cconv/_simd.h",
     "NEON ReLU of the pool in the registers keeps -0", ["test_isa_suites.py"],
     """vmvnq_u32(vcleq_f32((v), vdupq_n_f32(0.0f)))))""",
     """vmvnq_u32(vcltq_f32((v), vdupq_n_f32(0.0f)))))"""),
    ("neon-pool-regs-cout", "src/cconv/_conv_direct.h",
     "NEON pool in the registers taken for C_out a multiple of 4 (its blocks are 8 wide)",
     ["test_isa_suites.py"],
     """return level >= 1 && cout % 8 == 0 ? 3 : 0;""",
     """return level >= 1 && cout % 4 == 0 ? 3 : 0;"""),
]


def run(cmd, cwd, env=None, timeout=None):
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def build(tree, python, header=None):
    """Build the extensions in place. After an edit of `header`, only the modules whose .pyx
    names it are rebuilt (setup.py makes every module depend on every header): the others'
    built files are marked newer than the edit."""
    if header is not None:
        src = os.path.join(tree, "src", "cconv")
        name = os.path.basename(header)
        others = [f for f in os.listdir(src) if f.endswith(".h") and f != name
                  and name in open(os.path.join(src, f)).read()]
        if not others:                   # no other header includes it
            later = time.time() + 3600
            for pyx in glob.glob(os.path.join(src, "*.pyx")):
                if name in open(pyx).read():
                    continue
                for so in glob.glob(pyx[:-4] + ".*.so") + glob.glob(pyx[:-4] + ".*.pyd"):
                    os.utime(so, (later, later))
    proc = run([python, "setup.py", "build_ext", "--inplace", "-q"], tree)
    if proc.returncode:
        raise RuntimeError(f"build failed in {tree}:\n{proc.stderr[-3000:]}")


def test(tree, python, timeout, pytest_args):
    env = {**os.environ, "PYTHONPATH": os.path.join(tree, "src")}
    t0 = time.perf_counter()
    try:
        proc = run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--tb=no", "-rfE",
                    *pytest_args], tree, env, timeout)
        out, code = proc.stdout, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out, code = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or ""), "timeout"
    failed = collections.Counter()
    names = []
    for line in out.splitlines():
        m = re.match(r"(FAILED|ERROR) (tests/[^:\s]+)(::\S+)?", line)
        if m:
            failed[os.path.basename(m.group(2))] += 1
            names.append(m.group(2) + (m.group(3) or ""))
    summary = next((ln for ln in reversed(out.splitlines()) if " passed" in ln or " failed" in ln),
                   out.strip().splitlines()[-1] if out.strip() else "")
    return {"exit": code, "failed": dict(failed), "tests": names, "summary": summary,
            "seconds": round(time.perf_counter() - t0, 1)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", help="mutant ids")
    p.add_argument("--list", action="store_true")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--out", default="mutants")
    p.add_argument("--timeout", type=float, default=1800, help="per test run, seconds")
    p.add_argument("--pytest-args", default="", help="extra pytest arguments")
    p.add_argument("--tests", nargs="*", default=[], help="test files to run (default: all)")
    p.add_argument("--per-file", action="store_true",
                   help="run each test file on its own and stop it at its first failure "
                        "(-x): says which files catch a mutant, faster, without counts")
    p.add_argument("--skip-baseline", action="store_true",
                   help="trust that the unmutated tree passes the chosen tests")
    p.add_argument("--merge", nargs="+", metavar="JSON",
                   help="merge the records of earlier runs (later files win for a mutant run "
                        "twice) into one record and table under --out, in MUTANTS order")
    p.add_argument("--base", help="an unmutated copy built by an earlier run (its directory "
                                  "'base'), to skip building it again")
    a = p.parse_args(argv)
    if a.list:
        for mid, path, desc, own, _, _ in MUTANTS:
            print(f"{mid:<30} {path:<28} {desc}")
        return 0
    if a.merge:
        return merge(a.merge, a.out)
    chosen = [m for m in MUTANTS if not a.only or m[0] in a.only]
    os.makedirs(a.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="cconv-mutants-")
    base = os.path.join(work, "base")
    if a.base:
        shutil.copytree(a.base, base, symlinks=True)
        with open(os.path.join(base, ".mutants-commit")) as f:
            commit = f.read().strip()
    else:
        os.makedirs(base)
        archive = subprocess.run(["git", "-C", ROOT, "archive", "HEAD"], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", base], input=archive, check=True)
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        with open(os.path.join(base, ".mutants-commit"), "w") as f:
            f.write(commit + "\n")
    for mid, path, _, _, old, _ in chosen:        # every edit applies to this tree, once
        with open(os.path.join(base, path)) as f:
            n = f.read().count(old)
        if n != 1:
            raise SystemExit(f"mutant {mid}: its text occurs {n} times in {path}")
    if not a.base:
        print(f"building the unmutated tree ({commit[:10]}) in {base}", flush=True)
        build(base, a.python)
    extra = a.pytest_args.split() + a.tests
    env = {**os.environ, "PYTHONPATH": os.path.join(base, "src")}
    where = run([a.python, "-c", "import cconv._core as c; print(c.__file__)"], base, env)
    if not where.stdout.startswith(os.path.join(base, "src")):
        raise SystemExit(f"{a.python} imports cconv from {where.stdout.strip() or where.stderr}, "
                         "not from the copy: use an interpreter without cconv installed")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    record = os.path.join(a.out, f"mutants-{stamp}")
    if a.per_file and not a.tests:
        raise SystemExit("--per-file needs --tests")

    def run_tests(tree):
        if not a.per_file:
            return test(tree, a.python, a.timeout, extra)
        parts = [test(tree, a.python, a.timeout, a.pytest_args.split() + ["-x", t])
                 for t in a.tests]
        return {"exit": max((p["exit"] for p in parts), key=str),
                "failed": {k: v for p in parts for k, v in p["failed"].items()},
                "tests": [t for p in parts for t in p["tests"]],
                "summary": "; ".join(f"{os.path.basename(t)}: {p['summary']}"
                                     for t, p in zip(a.tests, parts) if p["tests"]) or "all passed",
                "seconds": round(sum(p["seconds"] for p in parts), 1)}

    if a.skip_baseline:
        baseline = {"skipped": True, "tests": [], "summary": "skipped (--skip-baseline)"}
    else:
        print("baseline test run ...", flush=True)
        baseline = run_tests(base)
        print(f"  baseline: {baseline['summary']} ({baseline['seconds']} s)", flush=True)
    known = set(baseline["tests"])
    results = []
    for mid, path, desc, own, old, new in chosen:
        tree = os.path.join(work, mid)
        shutil.copytree(base, tree, symlinks=True)
        target = os.path.join(tree, path)
        with open(target) as f:
            text = f.read()
        with open(target, "w") as f:
            f.write(text.replace(old, new))
        try:
            if path.endswith((".pyx", ".h", ".pxd")):
                build(tree, a.python, path if path.endswith(".h") else None)
        except RuntimeError as exc:
            print(f"  {mid}: {exc}", flush=True)
            results.append({"id": mid, "path": path, "description": desc, "own": own,
                            "failed": {}, "general": {}, "exit": "build failed", "tests": [],
                            "summary": str(exc)[-500:], "seconds": 0})
            continue
        r = run_tests(tree)
        r["tests"] = [t for t in r["tests"] if t not in known]
        failed = collections.Counter(os.path.basename(t.split("::")[0]) for t in r["tests"])
        r.update(id=mid, path=path, description=desc, own=own, failed=dict(failed),
                 general={f: n for f, n in failed.items() if f not in own})
        results.append(r)
        print(f"  {mid}: {r['summary']} ({r['seconds']} s); general files failing: "
              f"{r['general'] or 'NONE'}", flush=True)
        shutil.rmtree(tree, ignore_errors=True)
        with open(record + ".json", "w") as f:
            json.dump({"commit": commit, "python": a.python, "tests": a.tests or ["(all)"],
                       "per_file": a.per_file,
                       "pytest_args": a.pytest_args, "baseline": baseline,
                       "mutants": results}, f, indent=1)
    with open(record + ".md", "w") as f:
        f.write(table(results, commit, a.tests, a.per_file))
    print(table(results, commit, a.tests, a.per_file))
    shutil.rmtree(work, ignore_errors=True)
    return 0


def merge(paths, out):
    """One record and table from several runs' records (each mutant's latest result)."""
    runs = []
    for path in paths:
        with open(path) as f:
            runs.append((path, json.load(f)))
    latest = {}
    for path, rec in runs:
        for r in rec["mutants"]:
            latest[r["id"]] = {**r, "commit": rec["commit"], "record": os.path.basename(path)}
    order = [m[0] for m in MUTANTS]
    results = sorted(latest.values(), key=lambda r: order.index(r["id"]) if r["id"] in order
                     else len(order))
    tests = sorted({t for _, rec in runs for t in rec.get("tests", [])})
    per_file = all(rec.get("per_file") for _, rec in runs)
    commits = sorted({r["commit"][:10] for r in results})
    stamp = time.strftime("%Y%m%d-%H%M%S")
    record = os.path.join(out, f"mutants-merged-{stamp}")
    with open(record + ".json", "w") as f:
        json.dump({"merged_from": [os.path.basename(p) for p, _ in runs], "tests": tests,
                   "per_file": per_file, "mutants": results}, f, indent=1)
    text = table(results, ", ".join(commits), tests, per_file)
    text += "\nRecords: " + ", ".join(f"`{os.path.basename(p)}`" for p, _ in runs) + "\n"
    with open(record + ".md", "w") as f:
        f.write(text)
    print(text)
    return 0


def table(results, commit, tests=(), per_file=False):
    ran = ", ".join(os.path.basename(t) for t in tests) if tests else "the whole suite"
    what = ("the test files that caught it (each file run alone, stopped at its first failure)"
            if per_file else "failing tests per file")
    lines = [f"Injected bugs at {commit if ',' in commit else commit[:10]}: {what}; "
             f"tests run: {ran}.", "",
             "| mutant | bug | caught by files other than the route's own | by its own files |",
             "|---|---|---|---|"]

    def files(d):
        items = sorted(d.items(), key=lambda kv: -kv[1])
        return ", ".join(f if per_file else f"{f} {n}" for f, n in items)

    for r in results:
        general = files(r["general"]) or "**none**"
        own = files({f: n for f, n in r["failed"].items() if f in r["own"]}) or "-"
        if r["exit"] not in (0, 1):
            general += f" (test run ended: {r['exit']})"
        lines.append(f"| {r['id']} | {r['description']} | {general} | {own} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
