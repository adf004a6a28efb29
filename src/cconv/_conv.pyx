# cython: language_level=3
"""Convolution forward and backward (see _conv.pxd, and conv.pxd for the public kernels).

Parallel pattern: ``with parallel(num_threads=nt)``; each thread owns a slice of the
caller's scratch (its im2col tile or Winograd block, its accumulators), single-threaded
BLAS inside (cconv.functional limits the BLAS threads around the call), per-thread or
per-slot partial sums added up afterwards in a fixed order, so that the results are
bit-for-bit reproducible for a given thread count.
"""
from cython cimport floating
from cython.parallel cimport parallel, prange, threadid
from libc.stdint cimport uintptr_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset

from cconv.geometry cimport (cconv_geom, cconv_conv_geom_check, CCONV_ERR_VALUE,
                             CCONV_ERR_WORKSPACE, CCONV_ERR_NOMEM)
from cconv._platform cimport (cconv_ftz_on, cconv_ftz_restore, cconv_threads,
                              CCONV_MIN_WORK_PER_THREAD)
from cconv._cpu cimport simd_level
from cconv._probe cimport (probe, P_CONV_FWD, P_CONV_BWD, P_CONV_BWD_DW, P_DIRECT_FWD,
                           P_DIRECT_DW, P_WINO_FILTER, P_WINO_FILTER_GRAD, P_WINO_FWD,
                           P_WINO_BWD, P_DIRECT_FWD_POOL, P_WINO_FWD_POOL, P_WINO4_FILTER,
                           P_WINO4_FILTER_GRAD, P_WINO4_BWD, P_DIRECT_DW_POOL,
                           P_DIRECT_FWD_POOL_REGS, P_WINO_BWD_POOL, P_WINO_FWD_SLOTS)
from cconv._blas cimport ensure_blas, gemm
from cconv._im2col cimport im2col_rows, col2im_rows

from cpython.pyport cimport PY_SSIZE_T_MAX


# ---------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------
cdef conv_tuning DEFAULTS = conv_tuning(tile_bytes=1 << 21, winograd_min_channels=16,
                                        winograd4_min_channels=WINOGRAD4_MIN_CHANNELS,
                                        winograd_block_bytes=1 << 20, direct_max_k=32,
                                        slots_per_thread=4,
                                        min_work_per_thread=CCONV_MIN_WORK_PER_THREAD)

cdef enum:
    ALIGN = 64           # workspace parts start on 64-byte boundaries
    WINOGRAD4_MIN_CHANNELS = -1   # the default of conv_tuning.winograd4_min_channels: never


cdef inline Py_ssize_t smul(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """a * b for a, b >= 0, saturated at PY_SSIZE_T_MAX (the plan only compares the
    products with small thread counts, so a saturated product decides as the exact one)."""
    if a and b > PY_SSIZE_T_MAX // a:
        return PY_SSIZE_T_MAX
    return a * b


cdef inline Py_ssize_t cdiv(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return (a + b - 1) // b


cdef inline Py_ssize_t aligned(Py_ssize_t nbytes) noexcept nogil:
    return (nbytes + ALIGN - 1) // ALIGN * ALIGN


cdef inline Py_ssize_t nslots(int nt, Py_ssize_t units, const conv_tuning *t) noexcept nogil:
    """Accumulator slots for nt threads over `units` indivisible pieces of work."""
    if nt <= 1:
        return 1
    return max(1, min(units, nt * t.slots_per_thread))


cdef inline Py_ssize_t tile_rows(Py_ssize_t kg, int itemsize, Py_ssize_t rows, int nt,
                                 const conv_tuning *t) noexcept nogil:
    """Rows of one im2col tile: at most tile_bytes, and at least one tile per thread."""
    cdef Py_ssize_t T = max(1, t.tile_bytes // max(1, kg * itemsize))
    cdef Py_ssize_t ntiles = cdiv(rows, T)
    ntiles = cdiv(ntiles, nt) * nt     # a multiple of the thread count: balanced work
    return max(1, cdiv(rows, ntiles))


cdef int make_plan(const cconv_geom *g, int itemsize, bint backward, bint need_dx, int budget,
                   const conv_tuning *t, conv_plan *p) noexcept nogil:
    cdef int err = cconv_conv_geom_check(g)
    if err:
        return err
    if (itemsize != 4 and itemsize != 8) or budget < 1 or p == NULL:
        return CCONV_ERR_VALUE
    if t == NULL:
        t = &DEFAULTS
    cdef Py_ssize_t N = g.N, C = g.C, Cout = g.Cout, OH = g.OH, OW = g.OW
    cdef Py_ssize_t Kg = g.KH * g.KW * (C // g.groups), K = g.KH * g.KW * C
    cdef Py_ssize_t M = N * OH * OW, P = OH * OW
    cdef Py_ssize_t per_image, ntiles, per, tb, work, U = 16 * C * Cout
    cdef Py_ssize_t m, nk, block   # Winograd: outputs per tile side, transformed slots per
                                   # tile, bytes per block
    cdef Py_ssize_t mw = t.min_work_per_thread
    need_dx = need_dx and backward
    p.threads = p.filter_threads = 1
    p.tile = p.slots = 1
    p.scratch = 0
    p.K = Kg
    p.Kpad = Kg
    if (t.direct_max_k >= 0 and not need_dx and itemsize == 4 and g.groups == 1
            and K <= t.direct_max_k and cconv_direct_available(simd_level(-1))):
        p.route = ROUTE_DIRECT
        p.Kpad = (K + 7) // 8 * 8
        p.threads = cconv_threads(budget, N * OH, smul(smul(M, K), Cout) // 16, mw)
        if backward:
            p.slots = nslots(p.threads, N * OH, t)
    elif (t.winograd_min_channels >= 0 and C >= t.winograd_min_channels and g.KH == 3
            and g.KW == 3 and g.sh == 1 and g.sw == 1 and g.dh == 1 and g.dw == 1
            and g.groups == 1):
        m = 2
        if (backward and t.winograd4_min_channels >= 0 and C >= t.winograd4_min_channels
                and (t.winograd4_min_channels == 0
                     or 36 * cdiv(OH, 4) * cdiv(OW, 4) < 16 * cdiv(OH, 2) * cdiv(OW, 2))):
            m = 4              # F(4x4, 3x3): 36 products per 4x4 outputs instead of 4 x 16
        nk = (m + 2) * (m + 2)
        U = nk * C * Cout
        p.route = ROUTE_WINOGRAD if m == 2 else ROUTE_WINOGRAD4
        # the threads as for F(2x2, 3x3), whose work F(4x4, 3x3) does in 0.6-0.8x the time
        work = smul(smul(smul(N * cdiv(OH, 2) * cdiv(OW, 2), 16), C), Cout) // 64
        per_image = cdiv(OH, m) * cdiv(OW, m)
        ntiles = N * per_image
        if backward:   # runs of whole images, one accumulator slot each
            p.threads = cconv_threads(budget, N, work, mw)
            p.slots = nslots(p.threads, N, t)
            per = cdiv(N, p.slots) * per_image
        else:          # blocks of tiles
            p.threads = cconv_threads(budget, ntiles, work, mw)
            per = cdiv(ntiles, p.threads)
        # F(4x4, 3x3) blocks of half the bytes: on the paper network's conv2/conv3 backward
        # 0.92x / 0.78x the time of full-size ones at 1 thread (its dU and U slots, read per
        # block, are 2.25x larger; 256 KiB blocks were slower again)
        block = t.winograd_block_bytes if m == 2 else t.winograd_block_bytes // 2
        tb = max(8, min(1024, block // (nk * (C + Cout) * itemsize)))
        if per > 0:
            tb = cdiv(per, cdiv(per, tb))      # equal blocks
        p.tile = tb
        p.scratch = wino_scratch(nk, C, Cout, tb)
        p.filter_threads = cconv_threads(budget, U // max(1, mw), -1, mw)
    else:
        p.route = ROUTE_GEMM
        work = smul(smul(M, Kg), max(1, Cout // g.groups)) // 16
        # With dx a thread owns whole images (it scatters into their dx): at most N threads.
        p.threads = cconv_threads(budget, N if need_dx else M, work, mw)
        p.tile = tile_rows(Kg, itemsize, M, p.threads, t)
        if not need_dx:
            p.threads = <int> min(p.threads, cdiv(M, p.tile))
        p.slots = p.threads
        p.scratch = p.tile * Kg
    # The workspace of conv2d_forward / conv2d_backward, part by part.
    p.workspace = 0
    if M == 0:
        return 0
    if p.route == ROUTE_DIRECT:
        p.workspace = aligned(direct_scratch_bytes(g, p.threads))
        if backward:
            p.workspace += aligned(p.slots * p.Kpad * Cout * itemsize)
            p.workspace += aligned(p.slots * Cout * itemsize)
    elif p.route == ROUTE_WINOGRAD or p.route == ROUTE_WINOGRAD4:
        p.workspace = aligned(U * itemsize) + aligned(p.threads * p.scratch * itemsize)
        if backward:
            p.workspace += aligned(p.slots * U * itemsize) + aligned(p.slots * Cout * itemsize)
    else:
        p.workspace = aligned(p.threads * p.scratch * itemsize)
        if backward:
            p.workspace += aligned(p.slots * Kg * Cout * itemsize)
            p.workspace += aligned(p.slots * Cout * itemsize)
    return 0


# ---------------------------------------------------------------------------------
# im2col + GEMM
# ---------------------------------------------------------------------------------
cdef inline bint is_1x1(const cconv_geom *g) noexcept nogil:
    """A 1x1 stride-1 unpadded kernel: the input rows are the im2col rows."""
    return (g.KH == 1 and g.KW == 1 and g.sh == 1 and g.sw == 1 and g.pt == 0 and g.pl == 0
            and g.OH == g.H and g.OW == g.W)


cdef inline const floating *gemm_rows(const floating *x, floating *buf, Py_ssize_t r0,
                                      Py_ssize_t r1, Py_ssize_t gi, bint direct,
                                      const cconv_geom *g, Py_ssize_t *lda) noexcept nogil:
    """The rows r0..r1 of group gi's im2col matrix as a GEMM operand (leading dimension in
    lda): x itself for a 1x1 stride-1 kernel, else the tile written into buf."""
    cdef Py_ssize_t Cg = g.C // g.groups
    if direct:
        lda[0] = g.C
        return x + r0 * g.C + gi * Cg
    im2col_rows(x, buf, r0, r1, gi * Cg, Cg, g)
    lda[0] = g.KH * g.KW * Cg
    return buf


cdef int check_scratch(const cconv_geom *g, const void *work, Py_ssize_t work_rows,
                       Py_ssize_t work_stride, Py_ssize_t need, int num_threads) noexcept nogil:
    cdef int err = cconv_conv_geom_check(g)
    if err:
        return err
    if num_threads < 1:
        return CCONV_ERR_VALUE
    if g.N and (work == NULL or work_rows < num_threads or work_stride < need):
        return CCONV_ERR_WORKSPACE
    return 0


cdef void gemm_forward_tile(const cconv_geom *g, const floating *x, const floating *w,
                            const floating *b, floating *y, floating *buf, Py_ssize_t r0,
                            Py_ssize_t r1, bint direct) noexcept nogil:
    """Output rows r0..r1 (flat (n, oh, ow)): y = b, then y += im2col(x) W per group."""
    cdef Py_ssize_t Cout = g.Cout, groups = g.groups
    cdef Py_ssize_t Coutg = Cout // groups, Kg = g.KH * g.KW * (g.C // groups)
    cdef Py_ssize_t m = r1 - r0, i, co, gi, lda
    cdef floating *yrow = y + r0 * Cout
    cdef const floating *a
    cdef floating beta = 0
    if b != NULL:
        for i in range(m):
            for co in range(Cout):
                yrow[i * Cout + co] = b[co]
        beta = 1
    for gi in range(groups):
        a = gemm_rows(x, buf, r0, r1, gi, direct, g, &lda)
        gemm(False, False, <int> m, <int> Coutg, <int> Kg, <floating> 1, a, <int> lda,
             w + gi * Coutg, <int> Cout, beta, yrow + gi * Coutg, <int> Cout)


cdef int gemm_forward(const cconv_geom *g, const floating *x, const floating *w,
                      const floating *b, floating *y, floating *work, Py_ssize_t work_rows,
                      Py_ssize_t work_stride, Py_ssize_t tile_rows,
                      int num_threads) noexcept nogil:
    cdef int err = cconv_conv_geom_check(g)
    if err:
        return err
    cdef Py_ssize_t Kg = g.KH * g.KW * (g.C // g.groups)
    cdef bint direct = is_1x1(g)
    err = check_scratch(g, work, work_rows, work_stride,
                        0 if direct else smul(max(1, tile_rows), Kg), num_threads)
    if err:
        return err
    if tile_rows < 1 or (g.N and (x == NULL or w == NULL or y == NULL)):
        return CCONV_ERR_VALUE
    if g.N == 0:
        return 0
    err = ensure_blas()
    if err:
        return err
    cdef Py_ssize_t M = g.N * g.OH * g.OW
    cdef Py_ssize_t T = tile_rows
    cdef Py_ssize_t ntiles = (M + T - 1) // T
    cdef Py_ssize_t t
    cdef floating *buf
    cdef unsigned long old
    if num_threads == 1:          # on the calling thread (see _pool.pyx)
        old = cconv_ftz_on()
        probe(P_CONV_FWD)
        for t in range(ntiles):
            gemm_forward_tile(g, x, w, b, y, work, t * T, min(t * T + T, M), direct)
        cconv_ftz_restore(old)
        return 0
    with parallel(num_threads=num_threads):
        buf = work + threadid() * work_stride
        old = cconv_ftz_on()
        for t in prange(ntiles, schedule="static"):
            probe(P_CONV_FWD)
            gemm_forward_tile(g, x, w, b, y, buf, t * T, min(t * T + T, M), direct)
        cconv_ftz_restore(old)
    return 0


cdef inline void gemm_backward_tile(const floating *xp, const floating *dyp, const floating *wp,
                                    floating *dxp, floating *buf, floating *dwacc,
                                    floating *dbacc, Py_ssize_t r0, Py_ssize_t r1,
                                    bint direct, const cconv_geom *g) noexcept nogil:
    """dW, db (if dbacc) and dX (if dxp) contributions of output rows r0..r1.

    dwacc (Kg, Cout) and dbacc (Cout,) are this thread's accumulators (IN/OUT); dxp
    is IN/OUT (scatter-added by col2im, or written directly for 1x1 stride-1 kernels).
    """
    cdef Py_ssize_t Cout = g.Cout, groups = g.groups
    cdef Py_ssize_t Cg = g.C // groups, Coutg = Cout // groups
    cdef Py_ssize_t Kg = g.KH * g.KW * Cg
    cdef Py_ssize_t m = r1 - r0, i, co, gi, lda
    cdef const floating *dyrow = dyp + r0 * Cout
    cdef const floating *a
    if dbacc != NULL:
        for i in range(m):
            for co in range(Cout):
                dbacc[co] = dbacc[co] + dyrow[i * Cout + co]
    for gi in range(groups):
        a = gemm_rows(xp, buf, r0, r1, gi, direct, g, &lda)
        # dW_g (Kg, Coutg) += cols_g^T (Kg, m) @ dY_g (m, Coutg)
        gemm(True, False, <int> Kg, <int> Coutg, <int> m, <floating> 1, a, <int> lda,
             dyrow + gi * Coutg, <int> Cout, <floating> 1, dwacc + gi * Coutg, <int> Cout)
        if dxp != NULL:
            # dcols_g (m, Kg) = dY_g (m, Coutg) @ W_g^T (Coutg, Kg)
            if direct:
                gemm(False, True, <int> m, <int> Cg, <int> Coutg, <floating> 1,
                     dyrow + gi * Coutg, <int> Cout, wp + gi * Coutg, <int> Cout,
                     <floating> 0, dxp + r0 * g.C + gi * Cg, <int> g.C)
            else:
                gemm(False, True, <int> m, <int> Kg, <int> Coutg, <floating> 1,
                     dyrow + gi * Coutg, <int> Cout, wp + gi * Coutg, <int> Cout,
                     <floating> 0, buf, <int> Kg)
                col2im_rows(buf, dxp, r0, r1, gi * Cg, Cg, g)


cdef void gemm_backward_chunk(const cconv_geom *g, const floating *dy, const floating *x,
                              const floating *w, floating *dx, floating *buf, floating *dwacc,
                              floating *dbacc, Py_ssize_t n0, Py_ssize_t n1, Py_ssize_t T,
                              bint direct) noexcept nogil:
    """Images n0..n1: zero their dx, then their output rows in tiles of at most T rows."""
    cdef Py_ssize_t P = g.OH * g.OW, r0 = n0 * P, r1, rend = n1 * P
    memset(dx + n0 * g.H * g.W * g.C, 0, (n1 - n0) * g.H * g.W * g.C * sizeof(floating))
    while r0 < rend:
        r1 = min(r0 + T, rend)
        gemm_backward_tile(x, dy, w, dx, buf, dwacc, dbacc, r0, r1, direct, g)
        r0 = r1


cdef int gemm_backward(const cconv_geom *g, const floating *dy, const floating *x,
                       const floating *w, floating *dx, floating *dw_work, floating *db_work,
                       floating *work, Py_ssize_t work_rows, Py_ssize_t work_stride,
                       Py_ssize_t tile_rows, int num_threads) noexcept nogil:
    # With dx the batch is cut into one chunk of whole images per thread, and each chunk's
    # output rows are processed in tiles of at most tile_rows: a thread zeroes and scatters
    # (col2im) into the images of its own chunk only. Without dx, tiles of tile_rows output
    # rows over the whole batch. Static schedules only: which thread sums which rows depends
    # on nothing but the thread count.
    cdef int err = cconv_conv_geom_check(g)
    if err:
        return err
    cdef Py_ssize_t Cout = g.Cout
    cdef Py_ssize_t Kg = g.KH * g.KW * (g.C // g.groups)
    cdef bint direct = is_1x1(g)
    err = check_scratch(g, work, work_rows, work_stride,
                        0 if direct and dx == NULL else smul(max(1, tile_rows), Kg), num_threads)
    if err:
        return err
    if tile_rows < 1 or dw_work == NULL or (g.N and (x == NULL or dy == NULL or w == NULL)):
        return CCONV_ERR_VALUE
    memset(dw_work, 0, num_threads * Kg * Cout * sizeof(floating))
    if db_work != NULL:
        memset(db_work, 0, num_threads * Cout * sizeof(floating))
    if g.N == 0:
        return 0
    err = ensure_blas()
    if err:
        return err
    cdef Py_ssize_t P = g.OH * g.OW
    cdef Py_ssize_t M = g.N * P
    cdef Py_ssize_t T = tile_rows
    cdef Py_ssize_t ntiles = (M + T - 1) // T
    cdef Py_ssize_t nchunks = min(g.N, num_threads)
    cdef Py_ssize_t t, ch, tid
    cdef floating *buf
    cdef floating *dwacc
    cdef floating *dbacc
    cdef unsigned long old
    if num_threads == 1:          # on the calling thread (see _pool.pyx)
        old = cconv_ftz_on()
        if dx != NULL:
            probe(P_CONV_BWD)
            gemm_backward_chunk(g, dy, x, w, dx, work, dw_work, db_work, 0, g.N, T, direct)
        else:
            probe(P_CONV_BWD_DW)
            for t in range(ntiles):
                gemm_backward_tile(x, dy, w, NULL, work, dw_work, db_work, t * T,
                                   min(t * T + T, M), direct, g)
        cconv_ftz_restore(old)
        return 0
    with parallel(num_threads=num_threads):
        tid = threadid()
        buf = work + tid * work_stride
        dwacc = dw_work + tid * Kg * Cout
        dbacc = db_work + tid * Cout if db_work != NULL else NULL
        old = cconv_ftz_on()
        if dx != NULL:
            for ch in prange(nchunks, schedule="static"):
                probe(P_CONV_BWD)
                gemm_backward_chunk(g, dy, x, w, dx, buf, dwacc, dbacc, ch * g.N // nchunks,
                                    (ch + 1) * g.N // nchunks, T, direct)
        else:
            for t in prange(ntiles, schedule="static"):
                probe(P_CONV_BWD_DW)
                gemm_backward_tile(x, dy, w, NULL, buf, dwacc, dbacc, t * T, min(t * T + T, M),
                                   direct, g)
        cconv_ftz_restore(old)
    return 0


# ---------------------------------------------------------------------------------
# Direct convolution, float32, few input channels (_conv_direct.h)
# ---------------------------------------------------------------------------------
cdef extern from "_conv_direct.h":
    ctypedef struct cconv_dgeom:
        Py_ssize_t H, W, C, OH, OW, cout, KH, KW, sh, sw, dh, dw, pt, pl, K, Kpad
    void cconv_direct_offsets(const cconv_dgeom *g, Py_ssize_t *off, Py_ssize_t *ident) noexcept nogil
    void cconv_direct_row(const cconv_dgeom *g, const float *x, Py_ssize_t n, Py_ssize_t oh,
                          const Py_ssize_t *off, const Py_ssize_t *ident, float *patch,
                          const float **base, const Py_ssize_t **po) noexcept nogil
    int cconv_direct_available(int level) noexcept nogil
    long long cconv_direct_unpool_row(const float *dp, const int *a, const float *m,
                                      float *row, Py_ssize_t PW,
                                      Py_ssize_t OW, Py_ssize_t cout, Py_ssize_t oh,
                                      int under) noexcept nogil
    void cconv_direct_pool_rows(const float *r0, const float *r1, float *y, Py_ssize_t PW,
                                Py_ssize_t cout, int relu, int *a, Py_ssize_t h0,
                                Py_ssize_t OW) noexcept nogil
    void cconv_direct_fwd_row(int level, const cconv_dgeom *g, const float **base,
                              const Py_ssize_t **po, const float *w, const float *b,
                              float *y) noexcept nogil
    int cconv_direct_pool_regs(int level, Py_ssize_t cout) noexcept nogil
    void cconv_direct_fwd_pool_row(int level, const cconv_dgeom *g, Py_ssize_t PW,
                                   const float *x0, const float *x1, const Py_ssize_t *off,
                                   const float *w, const float *b, float *y,
                                   int relu) noexcept nogil
    void cconv_direct_dw_row(int level, const cconv_dgeom *g, const float **base,
                             const Py_ssize_t **po, const Py_ssize_t *off, const float *dy,
                             float *dw, float *db) noexcept nogil


cdef cconv_dgeom direct_geom(const cconv_geom *g) noexcept nogil:
    cdef cconv_dgeom d
    d.H, d.W, d.C = g.H, g.W, g.C
    d.OH, d.OW, d.cout = g.OH, g.OW, g.Cout
    d.KH, d.KW, d.sh, d.sw, d.dh, d.dw, d.pt, d.pl = g.KH, g.KW, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl
    d.K = g.KH * g.KW * g.C
    d.Kpad = (d.K + 7) // 8 * 8
    return d


cdef inline Py_ssize_t direct_thread_bytes(const cconv_geom *g, bint pool) noexcept nogil:
    """One thread's scratch: OW * (2 pointers + K floats), 64-byte aligned; with pool, two
    output rows (2 x OW x Cout floats) besides."""
    return (aligned(g.OW * (2 * sizeof(void *) + g.KH * g.KW * g.C * sizeof(float)))
            + (aligned(2 * g.OW * g.Cout * sizeof(float)) if pool else 0))


cdef Py_ssize_t direct_scratch_size(const cconv_geom *g, int num_threads,
                                    bint pool) noexcept nogil:
    cdef Py_ssize_t Kpad = (g.KH * g.KW * g.C + 7) // 8 * 8
    return aligned(2 * Kpad * sizeof(Py_ssize_t)) + num_threads * direct_thread_bytes(g, pool)


cdef Py_ssize_t direct_scratch_bytes(const cconv_geom *g, int num_threads) noexcept nogil:
    return direct_scratch_size(g, num_threads, False)


cdef int direct_check(const cconv_geom *g, int num_threads) noexcept nogil:
    cdef int err = cconv_conv_geom_check(g)
    if err:
        return err
    if num_threads < 1 or g.groups != 1 or not cconv_direct_available(simd_level(-1)):
        return CCONV_ERR_VALUE
    return 0


cdef int direct_run(const cconv_geom *geom, const float *xp, const float *wp, const float *bp,
                    float *yp, const float *dyp, float *dwp, float *dbp, Py_ssize_t nslots,
                    char *scratch, int num_threads, int pool=0, int *argmax=NULL,
                    const int *dy_argmax=NULL, long long *matched=NULL,
                    const float *dy_mask=NULL) noexcept nogil:
    """The parallel loop over output rows (n, oh) of both direct kernels: the forward pass
    when yp is set, else the dW/db accumulation.

    With pool (1, or 2 for pool + ReLU), yp is the 2x2 stride-2 max pool of the output
    (N, OH // 2, OW // 2, Cout) and the loop runs over its rows: each computes the two
    output rows under it into the thread's scratch and pools them at once (the last
    row/column of an odd-sized output, which the pool drops, is not computed). Without
    argmax, when every pooled window lies inside the image and the level has the kernel for
    Cout (cconv_direct_pool_regs), the two rows are pooled in the registers instead
    (cconv_direct_fwd_pool_row): no output row is stored, the same bits.

    The rows are cut into nslots equal runs handed out dynamically (a thread that the
    machine slows down takes fewer of them); run s zeroes slice s of dwp/dbp and accumulates
    into it, so the sums depend on nslots and not on which thread ran what.

    With dy_argmax (dW only), dyp is the gradient of the output's 2x2 stride-2 max pool
    (N, OH // 2, OW // 2, Cout) and dy_argmax that pool's argmax: each row of the output's
    gradient is rebuilt from them in the thread's scratch (cconv_direct_unpool_row) just
    before it is used, and matched[slot] counts the argmax entries that named a unit of
    their window; with dy_mask (the pooled output after a ReLU, dyp's shape), dyp is masked
    as relu_backward(dyp, dy_mask) would be on the way."""
    cdef cconv_dgeom dg = direct_geom(geom)
    cdef const cconv_dgeom *g = &dg
    cdef char *owned = NULL
    cdef Py_ssize_t PH = geom.OH // 2, PW = geom.OW // 2
    cdef bint rows_buf = pool or dy_argmax != NULL     # the two-row buffer in the scratch
    if pool:
        dg.OW = 2 * PW             # the pooled columns only
    if scratch == NULL:
        owned = scratch = <char *> malloc(direct_scratch_size(geom, num_threads, rows_buf) + ALIGN)
        if owned == NULL:
            return CCONV_ERR_NOMEM
        scratch = <char *> ((<uintptr_t> owned + ALIGN - 1) & ~(<uintptr_t> ALIGN - 1))
    cdef Py_ssize_t *off = <Py_ssize_t *> scratch
    cdef char *threads_scratch = scratch + aligned(2 * g.Kpad * sizeof(Py_ssize_t))
    cdef Py_ssize_t per_thread = direct_thread_bytes(geom, rows_buf)
    cdef Py_ssize_t rowbuf = aligned(geom.OW * (2 * sizeof(void *) + g.K * sizeof(float)))
    cdef int level = simd_level(-1)
    # the inference pool of a layer whose pooled windows all lie inside the image: pooled
    # in the registers (cconv_direct_fwd_pool_row), no row of the output stored
    cdef int per_block = cconv_direct_pool_regs(level, g.cout)
    cdef bint regs = (pool and argmax == NULL and per_block and PW >= per_block
                      and g.pt == 0 and g.pl == 0
                      and (2 * PH - 1) * g.sh + (g.KH - 1) * g.dh < g.H
                      and (2 * PW - 1) * g.sw + (g.KW - 1) * g.dw < g.W)
    cconv_direct_offsets(g, off, off + g.Kpad)
    cdef Py_ssize_t rows = geom.N * (PH if pool else g.OH)
    cdef Py_ssize_t slot, row, n, r, oh
    cdef const float *dyrow
    cdef char *mine
    cdef const float **base
    cdef const Py_ssize_t **po
    cdef float *pair
    cdef unsigned long old
    with parallel(num_threads=num_threads):
        mine = threads_scratch + threadid() * per_thread
        base = <const float **> mine
        po = <const Py_ssize_t **> (mine + g.OW * sizeof(void *))
        pair = <float *> (mine + rowbuf)
        old = cconv_ftz_on()
        for slot in prange(nslots, schedule="dynamic"):
            probe((P_DIRECT_FWD_POOL if pool else P_DIRECT_FWD) if yp != NULL
                  else (P_DIRECT_DW_POOL if dy_argmax != NULL else P_DIRECT_DW))
            if regs:
                probe(P_DIRECT_FWD_POOL_REGS)
            if yp == NULL:
                memset(dwp + slot * g.Kpad * g.cout, 0, g.Kpad * g.cout * sizeof(float))
                memset(dbp + slot * g.cout, 0, g.cout * sizeof(float))
                if dy_argmax != NULL:
                    matched[slot] = 0
            for row in range(slot * rows // nslots, (slot + 1) * rows // nslots):
                if regs:
                    n = row // PH
                    oh = 2 * (row - n * PH)
                    cconv_direct_fwd_pool_row(level, g, PW,
                                              xp + (n * g.H + oh * g.sh) * g.W * g.C,
                                              xp + (n * g.H + (oh + 1) * g.sh) * g.W * g.C,
                                              off, wp, bp, yp + row * PW * g.cout, pool == 2)
                    continue
                if pool:
                    n = row // PH
                    for r in range(2):
                        cconv_direct_row(g, xp, n, 2 * (row - n * PH) + r, off, off + g.Kpad,
                                         <float *> (mine + 2 * g.OW * sizeof(void *)), base, po)
                        cconv_direct_fwd_row(level, g, base, po, wp, bp, pair + r * g.OW * g.cout)
                    cconv_direct_pool_rows(pair, pair + g.OW * g.cout, yp + row * PW * g.cout,
                                           PW, g.cout, pool == 2,
                                           argmax + row * PW * g.cout if argmax != NULL else NULL,
                                           2 * (row - n * PH), geom.OW)
                    continue
                n = row // g.OH
                oh = row - n * g.OH
                cconv_direct_row(g, xp, n, oh, off, off + g.Kpad,
                                 <float *> (mine + 2 * g.OW * sizeof(void *)), base, po)
                if yp != NULL:
                    cconv_direct_fwd_row(level, g, base, po, wp, bp, yp + row * g.OW * g.cout)
                    continue
                dyrow = dyp + row * g.OW * g.cout
                if dy_argmax != NULL:
                    r = (n * PH + min(oh // 2, PH - 1)) * PW * g.cout
                    matched[slot] += cconv_direct_unpool_row(dyp + r, dy_argmax + r,
                                                             dy_mask + r if dy_mask != NULL
                                                             else NULL, pair, PW,
                                                             g.OW, g.cout, oh, oh // 2 < PH)
                    dyrow = pair
                cconv_direct_dw_row(level, g, base, po, off, dyrow,
                                    dwp + slot * g.Kpad * g.cout, dbp + slot * g.cout)
        cconv_ftz_restore(old)
    free(owned)
    return 0


cdef int direct_forward(const cconv_geom *g, const float *x, const float *w, const float *b,
                        float *y, char *scratch, int num_threads) noexcept nogil:
    cdef int err = direct_check(g, num_threads)
    if err:
        return err
    if g.N and (x == NULL or w == NULL or y == NULL):
        return CCONV_ERR_VALUE
    if g.N == 0:
        return 0
    return direct_run(g, x, w, b, y, NULL, NULL, NULL, min(g.N * g.OH, 16 * num_threads),
                      scratch, num_threads)


cdef int direct_forward_pool(const cconv_geom *g, const float *x, const float *w,
                             const float *b, float *y, int *argmax, bint relu, char *scratch,
                             int num_threads) noexcept nogil:
    cdef int err = direct_check(g, num_threads)
    if err:
        return err
    if g.N and (x == NULL or w == NULL or y == NULL):
        return CCONV_ERR_VALUE
    cdef Py_ssize_t rows = g.N * (g.OH // 2)
    if rows == 0 or g.OW < 2:
        return 0
    return direct_run(g, x, w, b, y, NULL, NULL, NULL, min(rows, 16 * num_threads), scratch,
                      num_threads, 2 if relu else 1, argmax)


cdef int direct_backward_weights(const cconv_geom *g, const float *dy, const float *x,
                                 float *dw_work, float *db_work, Py_ssize_t nslots,
                                 char *scratch, int num_threads) noexcept nogil:
    cdef int err = direct_check(g, num_threads)
    if err:
        return err
    if nslots < 1 or dw_work == NULL or db_work == NULL or (g.N and (x == NULL or dy == NULL)):
        return CCONV_ERR_VALUE
    cdef Py_ssize_t Kpad = (g.KH * g.KW * g.C + 7) // 8 * 8
    if g.N == 0:
        memset(dw_work, 0, nslots * Kpad * g.Cout * sizeof(float))
        memset(db_work, 0, nslots * g.Cout * sizeof(float))
        return 0
    return direct_run(g, x, NULL, NULL, NULL, dy, dw_work, db_work, nslots, scratch,
                      num_threads)


cdef int direct_backward_weights_pool(const cconv_geom *g, const float *dp, const int *argmax,
                                      const float *mask, const float *x, float *dw_work,
                                      float *db_work, Py_ssize_t nslots, long long *matched,
                                      char *scratch, int num_threads) noexcept nogil:
    cdef int err = direct_check(g, num_threads)
    if err:
        return err
    if matched == NULL or g.OH < 2 or g.OW < 2 or (g.N and argmax == NULL):
        return CCONV_ERR_VALUE
    matched[0] = 0
    if g.N == 0:                # the zeroed accumulators (dy unread)
        return direct_backward_weights(g, dp, x, dw_work, db_work, nslots, scratch,
                                       num_threads)
    if nslots < 1 or dw_work == NULL or db_work == NULL or x == NULL or dp == NULL:
        return CCONV_ERR_VALUE
    cdef long long *counts = <long long *> calloc(nslots, sizeof(long long))
    if counts == NULL:
        return CCONV_ERR_NOMEM
    err = direct_run(g, x, NULL, NULL, NULL, dp, dw_work, db_work, nslots, scratch,
                     num_threads, 0, NULL, argmax, counts, mask)
    matched[0] = take_counts(counts, nslots)
    return err


cdef long long take_counts(long long *counts, Py_ssize_t n) noexcept nogil:
    """The sum of a pooled backward's per-slot counts of argmax matches; frees them."""
    cdef long long total = 0
    cdef Py_ssize_t s
    for s in range(n):
        total += counts[s]
    free(counts)
    return total


# ---------------------------------------------------------------------------------
# Winograd F(2x2, 3x3): 3x3 stride-1 convolutions (see _winograd.h for the algebra)
# ---------------------------------------------------------------------------------
cdef extern from "_winograd.h":
    void cconv_wino_in_f(const float *x, float *V, Py_ssize_t ldv, Py_ssize_t H, Py_ssize_t W,
                         Py_ssize_t C, Py_ssize_t n, Py_ssize_t ih0, Py_ssize_t iw0,
                         const float *zero) noexcept nogil
    void cconv_wino_in_d(const double *x, double *V, Py_ssize_t ldv, Py_ssize_t H, Py_ssize_t W,
                         Py_ssize_t C, Py_ssize_t n, Py_ssize_t ih0, Py_ssize_t iw0,
                         const double *zero) noexcept nogil
    void cconv_wino_out_f(const float *M, Py_ssize_t ldm, float *y, const float *bias,
                          Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t Co, Py_ssize_t n,
                          Py_ssize_t oh0, Py_ssize_t ow0, float *sink) noexcept nogil
    void cconv_wino_out_d(const double *M, Py_ssize_t ldm, double *y, const double *bias,
                          Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t Co, Py_ssize_t n,
                          Py_ssize_t oh0, Py_ssize_t ow0, double *sink) noexcept nogil
    void cconv_wino_out_pool_f(const float *M, Py_ssize_t ldm, float *y, const float *bias,
                               Py_ssize_t PH, Py_ssize_t PW, Py_ssize_t Co, Py_ssize_t n,
                               Py_ssize_t ph, Py_ssize_t pw, int relu, int *a,
                               Py_ssize_t OW) noexcept nogil
    void cconv_wino_out_pool_d(const double *M, Py_ssize_t ldm, double *y, const double *bias,
                               Py_ssize_t PH, Py_ssize_t PW, Py_ssize_t Co, Py_ssize_t n,
                               Py_ssize_t ph, Py_ssize_t pw, int relu, int *a,
                               Py_ssize_t OW) noexcept nogil
    void cconv_wino_dy_f(const float *dy, float *Yh, Py_ssize_t ldy, Py_ssize_t OH, Py_ssize_t OW,
                         Py_ssize_t Co, Py_ssize_t n, Py_ssize_t oh0, Py_ssize_t ow0,
                         const float *zero, float *db) noexcept nogil
    void cconv_wino_dy_d(const double *dy, double *Yh, Py_ssize_t ldy, Py_ssize_t OH,
                         Py_ssize_t OW, Py_ssize_t Co, Py_ssize_t n, Py_ssize_t oh0,
                         Py_ssize_t ow0, const double *zero, double *db) noexcept nogil
    long long cconv_wino_dy_pool_f(const float *dp, const int *a, const float *m, float *Yh,
                                   Py_ssize_t ldy,
                                   Py_ssize_t PH, Py_ssize_t PW, Py_ssize_t OW, Py_ssize_t Co,
                                   Py_ssize_t n, Py_ssize_t oh0, Py_ssize_t ow0,
                                   float *db) noexcept nogil
    long long cconv_wino_dy_pool_d(const double *dp, const int *a, const double *m,
                                   double *Yh, Py_ssize_t ldy,
                                   Py_ssize_t PH, Py_ssize_t PW, Py_ssize_t OW, Py_ssize_t Co,
                                   Py_ssize_t n, Py_ssize_t oh0, Py_ssize_t ow0,
                                   double *db) noexcept nogil
    void cconv_wino_dx_f(const float *dV, Py_ssize_t ldv, float *dx, Py_ssize_t H, Py_ssize_t W,
                         Py_ssize_t C, Py_ssize_t n, Py_ssize_t ih0, Py_ssize_t iw0,
                         float *sink) noexcept nogil
    void cconv_wino_dx_d(const double *dV, Py_ssize_t ldv, double *dx, Py_ssize_t H,
                         Py_ssize_t W, Py_ssize_t C, Py_ssize_t n, Py_ssize_t ih0,
                         Py_ssize_t iw0, double *sink) noexcept nogil
    void cconv_wino_filter_f(const float *w, float *U, Py_ssize_t P, Py_ssize_t p0,
                             Py_ssize_t p1) noexcept nogil
    void cconv_wino_filter_d(const double *w, double *U, Py_ssize_t P, Py_ssize_t p0,
                             Py_ssize_t p1) noexcept nogil
    void cconv_wino_filter_grad_f(const float *dU, Py_ssize_t ns, float *dW, Py_ssize_t P,
                                  Py_ssize_t p0, Py_ssize_t p1) noexcept nogil
    void cconv_wino_filter_grad_d(const double *dU, Py_ssize_t ns, double *dW, Py_ssize_t P,
                                  Py_ssize_t p0, Py_ssize_t p1) noexcept nogil


cdef extern from "_winograd4.h":
    void cconv_wino4_in_f(const float *x, float *V, Py_ssize_t ldv, Py_ssize_t H, Py_ssize_t W,
                          Py_ssize_t C, Py_ssize_t n, Py_ssize_t ih0, Py_ssize_t iw0,
                          const float *zero) noexcept nogil
    void cconv_wino4_in_d(const double *x, double *V, Py_ssize_t ldv, Py_ssize_t H,
                          Py_ssize_t W, Py_ssize_t C, Py_ssize_t n, Py_ssize_t ih0,
                          Py_ssize_t iw0, const double *zero) noexcept nogil
    void cconv_wino4_dy_f(const float *dy, float *Yh, Py_ssize_t ldy, Py_ssize_t OH,
                          Py_ssize_t OW, Py_ssize_t Co, Py_ssize_t n, Py_ssize_t oh0,
                          Py_ssize_t ow0, const float *zero, float *db) noexcept nogil
    void cconv_wino4_dy_d(const double *dy, double *Yh, Py_ssize_t ldy, Py_ssize_t OH,
                          Py_ssize_t OW, Py_ssize_t Co, Py_ssize_t n, Py_ssize_t oh0,
                          Py_ssize_t ow0, const double *zero, double *db) noexcept nogil
    void cconv_wino4_dx_f(const float *dV, Py_ssize_t ldv, float *dx, Py_ssize_t H,
                          Py_ssize_t W, Py_ssize_t C, Py_ssize_t n, Py_ssize_t ih0,
                          Py_ssize_t iw0, float *sink) noexcept nogil
    void cconv_wino4_dx_d(const double *dV, Py_ssize_t ldv, double *dx, Py_ssize_t H,
                          Py_ssize_t W, Py_ssize_t C, Py_ssize_t n, Py_ssize_t ih0,
                          Py_ssize_t iw0, double *sink) noexcept nogil
    void cconv_wino4_filter_f(const float *w, float *U, Py_ssize_t P, Py_ssize_t p0,
                              Py_ssize_t p1) noexcept nogil
    void cconv_wino4_filter_d(const double *w, double *U, Py_ssize_t P, Py_ssize_t p0,
                              Py_ssize_t p1) noexcept nogil
    void cconv_wino4_filter_grad_f(const float *dU, Py_ssize_t ns, float *dW, Py_ssize_t P,
                                   Py_ssize_t p0, Py_ssize_t p1) noexcept nogil
    void cconv_wino4_filter_grad_d(const double *dU, Py_ssize_t ns, double *dW, Py_ssize_t P,
                                   Py_ssize_t p0, Py_ssize_t p1) noexcept nogil


ctypedef struct WinoGeom:
    Py_ssize_t N, H, W, C, OH, OW, Cout
    Py_ssize_t TW, TT            # tiles per output row, per image
    Py_ssize_t pt, pl, TB        # top/left padding, tiles per block
    int pool                     # 0: y is the output; 1: its 2x2 max pool; 2: pool + ReLU
    int *argmax                  # with pool: the pool's argmax (int32), or NULL


cdef WinoGeom wino_geom(const cconv_geom *g, Py_ssize_t TB, int pool, int m) noexcept nogil:
    """The tiles of F(m x m, 3x3), m = 2 or 4. With pool (m = 2), the tiles are the pool's
    windows: those of the last row/column of an odd-sized output, which the pool drops, are
    not enumerated at all."""
    cdef WinoGeom w
    w.N = g.N; w.H = g.H; w.W = g.W; w.C = g.C; w.OH = g.OH; w.OW = g.OW; w.Cout = g.Cout
    w.TW = g.OW // 2 if pool else (g.OW + m - 1) // m
    w.TT = (g.OH // 2 if pool else (g.OH + m - 1) // m) * w.TW
    w.pt = g.pt; w.pl = g.pl; w.TB = TB
    w.pool = pool
    w.argmax = NULL
    return w


cdef inline Py_ssize_t tile_origin(Py_ssize_t t, const WinoGeom *g, Py_ssize_t *oh0,
                                   Py_ssize_t *ow0) noexcept nogil:
    """Image index of tile t (flat (n, th, tw)); its top-left output goes to oh0, ow0."""
    cdef Py_ssize_t n = t // g.TT
    cdef Py_ssize_t r = t - n * g.TT
    cdef Py_ssize_t th = r // g.TW
    oh0[0] = 2 * th
    ow0[0] = 2 * (r - th * g.TW)
    return n


cdef void wino_input_block(const floating *x, floating *V, Py_ssize_t t0, Py_ssize_t t1,
                           const floating *zero, const WinoGeom *g) noexcept nogil:
    """V (16, TB, C): the transformed 4x4 input blocks of tiles t0..t1."""
    cdef Py_ssize_t t, n, oh0, ow0
    for t in range(t0, t1):
        n = tile_origin(t, g, &oh0, &ow0)
        if floating is float:
            cconv_wino_in_f(x, V + (t - t0) * g.C, g.TB * g.C, g.H, g.W, g.C, n,
                            oh0 - g.pt, ow0 - g.pl, zero)
        else:
            cconv_wino_in_d(x, V + (t - t0) * g.C, g.TB * g.C, g.H, g.W, g.C, n,
                            oh0 - g.pt, ow0 - g.pl, zero)


cdef void wino_output_block(const floating *M, floating *y, const floating *bias,
                            Py_ssize_t t0, Py_ssize_t t1, floating *sink,
                            const WinoGeom *g) noexcept nogil:
    """y (OUT) of tiles t0..t1 from M (16, TB, Cout), plus the bias (or NULL); with g.pool,
    y is the pooled output (N, OH // 2, OW // 2, Cout)."""
    cdef Py_ssize_t t, n, oh0, ow0
    for t in range(t0, t1):
        n = tile_origin(t, g, &oh0, &ow0)
        if g.pool:
            if floating is float:
                cconv_wino_out_pool_f(M + (t - t0) * g.Cout, g.TB * g.Cout, y, bias, g.OH // 2,
                                      g.OW // 2, g.Cout, n, oh0 // 2, ow0 // 2, g.pool == 2,
                                      g.argmax, g.OW)
            else:
                cconv_wino_out_pool_d(M + (t - t0) * g.Cout, g.TB * g.Cout, y, bias, g.OH // 2,
                                      g.OW // 2, g.Cout, n, oh0 // 2, ow0 // 2, g.pool == 2,
                                      g.argmax, g.OW)
        elif floating is float:
            cconv_wino_out_f(M + (t - t0) * g.Cout, g.TB * g.Cout, y, bias, g.OH, g.OW, g.Cout,
                             n, oh0, ow0, sink)
        else:
            cconv_wino_out_d(M + (t - t0) * g.Cout, g.TB * g.Cout, y, bias, g.OH, g.OW, g.Cout,
                             n, oh0, ow0, sink)


cdef void wino_dy_block(const floating *dy, floating *Yh, Py_ssize_t t0, Py_ssize_t t1,
                        const floating *zero, floating *db, const WinoGeom *g) noexcept nogil:
    """Yh (16, TB, Cout): the transformed 2x2 dy blocks of tiles t0..t1; db += their sums."""
    cdef Py_ssize_t t, n, oh0, ow0
    for t in range(t0, t1):
        n = tile_origin(t, g, &oh0, &ow0)
        if floating is float:
            cconv_wino_dy_f(dy, Yh + (t - t0) * g.Cout, g.TB * g.Cout, g.OH, g.OW, g.Cout,
                            n, oh0, ow0, zero, db)
        else:
            cconv_wino_dy_d(dy, Yh + (t - t0) * g.Cout, g.TB * g.Cout, g.OH, g.OW, g.Cout,
                            n, oh0, ow0, zero, db)


cdef long long wino_dy_pool_block(const floating *dp, const int *argmax,
                                  const floating *mask, floating *Yh,
                                  Py_ssize_t t0, Py_ssize_t t1, floating *db,
                                  const WinoGeom *g) noexcept nogil:
    """wino_dy_block with dy given by the gradient dp of its 2x2 stride-2 max pool and the
    pool's argmax (dp masked by the ReLU output mask, if not NULL); returns how many argmax
    entries named a unit of their window."""
    cdef Py_ssize_t t, n, oh0, ow0
    cdef long long matched = 0
    for t in range(t0, t1):
        n = tile_origin(t, g, &oh0, &ow0)
        if floating is float:
            matched += cconv_wino_dy_pool_f(dp, argmax, mask, Yh + (t - t0) * g.Cout,
                                            g.TB * g.Cout,
                                            g.OH // 2, g.OW // 2, g.OW, g.Cout, n, oh0, ow0, db)
        else:
            matched += cconv_wino_dy_pool_d(dp, argmax, mask, Yh + (t - t0) * g.Cout,
                                            g.TB * g.Cout,
                                            g.OH // 2, g.OW // 2, g.OW, g.Cout, n, oh0, ow0, db)
    return matched


cdef void wino_dx_block(const floating *dV, floating *dx, Py_ssize_t t0, Py_ssize_t t1,
                        floating *sink, const WinoGeom *g) noexcept nogil:
    """dx (IN/OUT) += the input-space gradients of tiles t0..t1, from dV (16, TB, C)."""
    cdef Py_ssize_t t, n, oh0, ow0
    for t in range(t0, t1):
        n = tile_origin(t, g, &oh0, &ow0)
        if floating is float:
            cconv_wino_dx_f(dV + (t - t0) * g.C, g.TB * g.C, dx, g.H, g.W, g.C, n,
                            oh0 - g.pt, ow0 - g.pl, sink)
        else:
            cconv_wino_dx_d(dV + (t - t0) * g.C, g.TB * g.C, dx, g.H, g.W, g.C, n,
                            oh0 - g.pt, ow0 - g.pl, sink)


cdef enum:
    W4_IN, W4_DY, W4_DX          # the per-tile transforms of wino4_block


cdef void wino4_block(int which, const floating *src, floating *dst, Py_ssize_t t0,
                      Py_ssize_t t1, floating *edge, floating *db,
                      const WinoGeom *g) noexcept nogil:
    """F(4x4, 3x3) over tiles t0..t1 (flat (n, th, tw), 4x4 outputs each): W4_IN, dst =
    V (36, TB, C) from x; W4_DY, dst = Yh (36, TB, Cout) from dy, db += its sums; W4_DX,
    dst = dx (IN/OUT) += the input-space gradients from src = dV (36, TB, C). edge: the zero
    row (W4_IN, W4_DY) or the sink row (W4_DX)."""
    cdef Py_ssize_t t, n, r, oh0, ow0
    for t in range(t0, t1):
        n = t // g.TT
        r = t - n * g.TT
        oh0 = 4 * (r // g.TW)
        ow0 = 4 * (r - (r // g.TW) * g.TW)
        if floating is float:
            if which == W4_IN:
                cconv_wino4_in_f(src, dst + (t - t0) * g.C, g.TB * g.C, g.H, g.W, g.C, n,
                                 oh0 - g.pt, ow0 - g.pl, edge)
            elif which == W4_DY:
                cconv_wino4_dy_f(src, dst + (t - t0) * g.Cout, g.TB * g.Cout, g.OH, g.OW,
                                 g.Cout, n, oh0, ow0, edge, db)
            else:
                cconv_wino4_dx_f(src + (t - t0) * g.C, g.TB * g.C, dst, g.H, g.W, g.C, n,
                                 oh0 - g.pt, ow0 - g.pl, edge)
        else:
            if which == W4_IN:
                cconv_wino4_in_d(src, dst + (t - t0) * g.C, g.TB * g.C, g.H, g.W, g.C, n,
                                 oh0 - g.pt, ow0 - g.pl, edge)
            elif which == W4_DY:
                cconv_wino4_dy_d(src, dst + (t - t0) * g.Cout, g.TB * g.Cout, g.OH, g.OW,
                                 g.Cout, n, oh0, ow0, edge, db)
            else:
                cconv_wino4_dx_d(src + (t - t0) * g.C, g.TB * g.C, dst, g.H, g.W, g.C, n,
                                 oh0 - g.pt, ow0 - g.pl, edge)


cdef enum:
    WINO_FILTER_CHUNK = 1024     # filter pairs per parallel item of the filter transforms


cdef void wino_filter_run(const floating *src, Py_ssize_t ns, floating *dst, Py_ssize_t P,
                          int m, int num_threads) noexcept nogil:
    """The filter transform of F(m x m, 3x3) (m = 2 or 4) of the P filter pairs (ns == 0),
    or its adjoint over ns slots."""
    cdef Py_ssize_t ch, p0, p1
    for ch in prange((P + WINO_FILTER_CHUNK - 1) // WINO_FILTER_CHUNK, schedule="static",
                     num_threads=num_threads):
        if m == 2:
            probe(P_WINO_FILTER if ns == 0 else P_WINO_FILTER_GRAD)
        else:
            probe(P_WINO4_FILTER if ns == 0 else P_WINO4_FILTER_GRAD)
        p0 = ch * WINO_FILTER_CHUNK
        p1 = min(p0 + WINO_FILTER_CHUNK, P)
        if floating is float:
            if ns == 0:
                if m == 2:
                    cconv_wino_filter_f(src, dst, P, p0, p1)
                else:
                    cconv_wino4_filter_f(src, dst, P, p0, p1)
            elif m == 2:
                cconv_wino_filter_grad_f(src, ns, dst, P, p0, p1)
            else:
                cconv_wino4_filter_grad_f(src, ns, dst, P, p0, p1)
        else:
            if ns == 0:
                if m == 2:
                    cconv_wino_filter_d(src, dst, P, p0, p1)
                else:
                    cconv_wino4_filter_d(src, dst, P, p0, p1)
            elif m == 2:
                cconv_wino_filter_grad_d(src, ns, dst, P, p0, p1)
            else:
                cconv_wino4_filter_grad_d(src, ns, dst, P, p0, p1)


cdef int wino_filter(const floating *w, floating *U, Py_ssize_t C, Py_ssize_t Cout, int m,
                     int num_threads) noexcept nogil:
    if ((m != 2 and m != 4) or C < 0 or Cout < 0 or num_threads < 1
            or (C * Cout and (w == NULL or U == NULL))):
        return CCONV_ERR_VALUE
    if C * Cout:
        wino_filter_run(w, 0, U, C * Cout, m, num_threads)
    return 0


cdef int wino_filter_grad(const floating *dU_work, Py_ssize_t nslots, floating *dw,
                          Py_ssize_t C, Py_ssize_t Cout, int m, int num_threads) noexcept nogil:
    if ((m != 2 and m != 4) or C < 0 or Cout < 0 or nslots < 1 or num_threads < 1
            or (C * Cout and (dU_work == NULL or dw == NULL))):
        return CCONV_ERR_VALUE
    if C * Cout:
        wino_filter_run(dU_work, nslots, dw, C * Cout, m, num_threads)
    return 0


cdef int winograd_filter(const floating *w, floating *U, Py_ssize_t C, Py_ssize_t Cout,
                         int num_threads) noexcept nogil:
    return wino_filter(w, U, C, Cout, 2, num_threads)


cdef int winograd_filter_grad(const floating *dU_work, Py_ssize_t nslots, floating *dw,
                              Py_ssize_t C, Py_ssize_t Cout, int num_threads) noexcept nogil:
    return wino_filter_grad(dU_work, nslots, dw, C, Cout, 2, num_threads)


cdef inline Py_ssize_t wino_scratch(Py_ssize_t nk, Py_ssize_t C, Py_ssize_t Cout,
                                    Py_ssize_t tb) noexcept nogil:
    """A thread's block: V (nk, tb, C), M or Yh (nk, tb, Cout), a zero row and a sink row
    (nk = 16 transformed slots per tile for F(2x2, 3x3), 36 for F(4x4, 3x3))."""
    return nk * tb * (C + Cout) + 2 * max(C, Cout)


cdef Py_ssize_t winograd_scratch(Py_ssize_t C, Py_ssize_t Cout, Py_ssize_t tb) noexcept nogil:
    return wino_scratch(16, C, Cout, tb)


cdef int wino_check(const cconv_geom *g, const void *work, Py_ssize_t work_rows,
                    Py_ssize_t work_stride, Py_ssize_t tb, int num_threads,
                    Py_ssize_t nk=16) noexcept nogil:
    cdef int err = cconv_conv_geom_check(g)
    if err:
        return err
    err = check_scratch(g, work, work_rows, work_stride,
                        wino_scratch(nk, g.C, g.Cout, max(1, tb)), num_threads)
    if err:
        return err
    if (tb < 1 or g.KH != 3 or g.KW != 3 or g.sh != 1 or g.sw != 1 or g.dh != 1
            or g.dw != 1 or g.groups != 1):
        return CCONV_ERR_VALUE
    return 0


cdef int winograd_forward(const cconv_geom *geom, const floating *x, const floating *U,
                          const floating *b, floating *y, floating *work, Py_ssize_t work_rows,
                          Py_ssize_t work_stride, Py_ssize_t tb, int num_threads) noexcept nogil:
    return winograd_forward_pool(geom, x, U, b, y, NULL, 0, work, work_rows, work_stride, tb,
                                 num_threads)


cdef int winograd_forward_pool(const cconv_geom *geom, const floating *x, const floating *U,
                               const floating *b, floating *y, int *argmax, int pool,
                               floating *work, Py_ssize_t work_rows, Py_ssize_t work_stride,
                               Py_ssize_t tb, int num_threads) noexcept nogil:
    # Per block of tb tiles: transform the inputs (V), 16 GEMMs M_k = V_k U_k, transform the
    # outputs (pool: into the 2x2 max pool of the output, see wino_geom). Blocks are handed
    # out dynamically; a block's result does not depend on which thread computes it.
    cdef int err = wino_check(geom, work, work_rows, work_stride, tb, num_threads)
    if err:
        return err
    if (pool < 0 or pool > 2 or (argmax != NULL and not pool)
            or (geom.N and (x == NULL or U == NULL or y == NULL))):
        return CCONV_ERR_VALUE
    if geom.N == 0:
        return 0
    err = ensure_blas()
    if err:
        return err
    cdef WinoGeom g = wino_geom(geom, tb, pool, 2)
    g.argmax = argmax
    cdef Py_ssize_t C = g.C, Cout = g.Cout
    cdef Py_ssize_t ntiles = g.N * g.TT
    # Blocks of at most tb tiles, as many as a multiple of the threads and of equal size
    # (the plan sizes tb for the output's tiles; the pool's windows are fewer: at batch 1,
    # conv2 of the paper network's 196 went in blocks of 113 and 83 tiles).
    cdef Py_ssize_t nblocks = (ntiles + tb - 1) // tb
    nblocks = (nblocks + num_threads - 1) // num_threads * num_threads
    cdef Py_ssize_t TB = max(1, (ntiles + nblocks - 1) // nblocks)
    g.TB = TB
    nblocks = (ntiles + TB - 1) // TB
    cdef Py_ssize_t Z = max(C, Cout)
    if (num_threads > 1 and nblocks == num_threads and C * Cout > ntiles * (C + Cout)
            and 16 * ntiles * (C + Cout) + 2 * Z * num_threads <= work_rows * work_stride):
        return wino_forward_slots(&g, x, U, b, y, pool, work, ntiles, num_threads)
    cdef Py_ssize_t blk, t0, t1, k
    cdef floating *V
    cdef floating *Mb
    cdef floating *zero
    cdef floating *sink
    cdef unsigned long old
    with parallel(num_threads=num_threads):
        V = work + threadid() * work_stride
        Mb = V + 16 * TB * C
        zero = Mb + 16 * TB * Cout
        sink = zero + Z
        memset(zero, 0, Z * sizeof(floating))
        old = cconv_ftz_on()
        for blk in prange(nblocks, schedule="dynamic"):
            probe(P_WINO_FWD_POOL if pool else P_WINO_FWD)
            t0 = blk * TB
            t1 = min(t0 + TB, ntiles)
            wino_input_block(x, V, t0, t1, zero, &g)
            for k in range(16):
                gemm(False, False, <int> (t1 - t0), <int> Cout, <int> C, <floating> 1,
                     V + k * TB * C, <int> C, U + k * C * Cout, <int> Cout,
                     <floating> 0, Mb + k * TB * Cout, <int> Cout)
            wino_output_block(Mb, y, b, t0, t1, sink, &g)
        cconv_ftz_restore(old)
    return 0


cdef int wino_forward_slots(WinoGeom *g, const floating *x, const floating *U,
                            const floating *b, floating *y, int pool, floating *work,
                            Py_ssize_t ntiles, int num_threads) noexcept nogil:
    # winograd_forward_pool when each thread would get one block of tiles and U is larger
    # than the block's V and M (C * Cout > ntiles * (C + Cout): a few tiles, many channels,
    # as at batch 1): all the tiles go in one block, whose 16 GEMMs the threads share out.
    # A thread then reads only the slices of U of its GEMMs instead of all of U, and its
    # GEMMs are num_threads times taller (the paper network's conv3 at batch 1: 8 GEMMs of
    # 36 x 64 x 128 per thread instead of 16 of 18 x 64 x 128), while V and M move between
    # the cores. Phases: the input transforms (tiles split statically), the GEMMs
    # (dynamically), the output transforms (statically), each ended by the loop's barrier.
    # Every output is the same sum as on the other split: one GEMM row per tile.
    # Scratch: V (16, ntiles, C) and M (16, ntiles, Cout) across the work rows, then a
    # zero row and a sink row per thread.
    cdef Py_ssize_t C = g.C, Cout = g.Cout, Z = max(C, Cout)
    cdef floating *V = work
    cdef floating *Mb = work + 16 * ntiles * C
    cdef floating *rows = Mb + 16 * ntiles * Cout
    cdef floating *zero
    cdef floating *sink
    cdef Py_ssize_t t, k
    cdef unsigned long old
    g.TB = ntiles
    with parallel(num_threads=num_threads):
        zero = rows + threadid() * 2 * Z
        sink = zero + Z
        memset(zero, 0, Z * sizeof(floating))
        old = cconv_ftz_on()
        for t in prange(ntiles, schedule="static"):
            probe(P_WINO_FWD_SLOTS)
            wino_input_block(x, V + t * C, t, t + 1, zero, g)
        for k in prange(16, schedule="dynamic"):
            probe(P_WINO_FWD_POOL if pool else P_WINO_FWD)
            gemm(False, False, <int> ntiles, <int> Cout, <int> C, <floating> 1,
                 V + k * ntiles * C, <int> C, U + k * C * Cout, <int> Cout,
                 <floating> 0, Mb + k * ntiles * Cout, <int> Cout)
        for t in prange(ntiles, schedule="static"):
            wino_output_block(Mb + t * Cout, y, b, t, t + 1, sink, g)
        cconv_ftz_restore(old)
    return 0


cdef int winograd_backward(const cconv_geom *geom, const floating *dy, const floating *x,
                           const floating *U, floating *dx, floating *dU_work,
                           floating *db_work, Py_ssize_t nslots, floating *work,
                           Py_ssize_t work_rows, Py_ssize_t work_stride, Py_ssize_t tb,
                           int m, int num_threads) noexcept nogil:
    return wino_backward(geom, dy, NULL, NULL, x, U, dx, dU_work, db_work, nslots, NULL, work,
                         work_rows, work_stride, tb, m, num_threads)


cdef int winograd_backward_pool(const cconv_geom *geom, const floating *dp, const int *argmax,
                                const floating *mask, const floating *x, const floating *U,
                                floating *dx,
                                floating *dU_work, floating *db_work, Py_ssize_t nslots,
                                long long *matched, floating *work, Py_ssize_t work_rows,
                                Py_ssize_t work_stride, Py_ssize_t tb,
                                int num_threads) noexcept nogil:
    if matched == NULL or geom.OH < 2 or geom.OW < 2 or (geom.N and (dp == NULL or argmax == NULL)):
        return CCONV_ERR_VALUE
    matched[0] = 0
    cdef long long *counts = <long long *> calloc(max(1, nslots), sizeof(long long))
    if counts == NULL:
        return CCONV_ERR_NOMEM
    cdef int err = wino_backward(geom, dp, argmax, mask, x, U, dx, dU_work, db_work, nslots,
                                 counts, work, work_rows, work_stride, tb, 2, num_threads)
    matched[0] = take_counts(counts, max(0, nslots))
    return err


cdef int wino_backward(const cconv_geom *geom, const floating *dy, const int *dy_argmax,
                       const floating *dy_mask, const floating *x, const floating *U,
                       floating *dx, floating *dU_work,
                       floating *db_work, Py_ssize_t nslots, long long *matched,
                       floating *work, Py_ssize_t work_rows, Py_ssize_t work_stride,
                       Py_ssize_t tb, int m, int num_threads) noexcept nogil:
    # The backward pass of F(m x m, 3x3), m = 2 (_winograd.h) or 4 (_winograd4.h), with
    # nk = (m + 2)^2 transformed slots per tile.
    # The batch is cut into nslots chunks of whole images (a chunk scatters only into the dx
    # of its own images), handed out dynamically so that a thread slowed down by the machine
    # takes fewer of them. Chunk s accumulates into slot s, so the result is bit-reproducible
    # for a given slot count whatever ran where. A chunk first zeroes its slot and its
    # images' dx, then works in blocks of tb tiles: transform x (V) and dy (Yh);
    # dU_k += V_k^T Yh_k; then dV_k = Yh_k U_k^T, transformed back and added onto dx.
    # With dy_argmax (m = 2), dy is the gradient of the output's 2x2 stride-2 max pool and
    # dy_argmax the pool's argmax: the dy transform reads the pool's windows (one per tile)
    # and matched[s] counts chunk s's argmax entries that named a unit of their window;
    # dy_mask (or NULL), the pooled output after a ReLU, masks dy as relu_backward would.
    if (m != 2 and m != 4) or (dy_argmax != NULL and (m != 2 or matched == NULL)):
        return CCONV_ERR_VALUE
    cdef Py_ssize_t nk = (m + 2) * (m + 2)
    cdef int err = wino_check(geom, work, work_rows, work_stride, tb, num_threads, nk)
    if err:
        return err
    if (nslots < 1 or dU_work == NULL or db_work == NULL
            or (geom.N and (x == NULL or dy == NULL or U == NULL))):
        return CCONV_ERR_VALUE
    # From the pooled gradient, the tiles are the pool's windows (wino_geom): those of the
    # last row/column of an odd-sized output, whose gradient the pool makes 0, add nothing
    # to dU, db or dx and are not enumerated.
    cdef WinoGeom g = wino_geom(geom, tb, dy_argmax != NULL, m)
    cdef Py_ssize_t C = g.C, Cout = g.Cout, TB = tb
    cdef Py_ssize_t Z = max(C, Cout)
    cdef Py_ssize_t nchunks = nslots
    cdef Py_ssize_t dustride = nk * C * Cout
    cdef Py_ssize_t image = g.H * g.W * C
    if g.N == 0:
        memset(dU_work, 0, nslots * dustride * sizeof(floating))
        memset(db_work, 0, nslots * Cout * sizeof(floating))
        return 0
    err = ensure_blas()
    if err:
        return err
    cdef bint need_dx = dx != NULL
    cdef Py_ssize_t ch, n0, n1, t0, t1, tend, k, tid
    cdef floating *V
    cdef floating *Yh
    cdef floating *zero
    cdef floating *sink
    cdef floating *duacc
    cdef floating *dbacc
    cdef unsigned long old
    with parallel(num_threads=num_threads):
        tid = threadid()
        V = work + tid * work_stride
        Yh = V + nk * TB * C
        zero = Yh + nk * TB * Cout
        sink = zero + Z
        memset(zero, 0, Z * sizeof(floating))
        old = cconv_ftz_on()
        for ch in prange(nchunks, schedule="dynamic"):
            probe(P_WINO4_BWD if m == 4
                  else (P_WINO_BWD_POOL if dy_argmax != NULL else P_WINO_BWD))
            duacc = dU_work + ch * dustride
            dbacc = db_work + ch * Cout
            n0 = ch * g.N // nchunks
            n1 = (ch + 1) * g.N // nchunks
            memset(duacc, 0, dustride * sizeof(floating))
            memset(dbacc, 0, Cout * sizeof(floating))
            if dy_argmax != NULL:
                matched[ch] = 0
            if need_dx:
                memset(dx + n0 * image, 0, (n1 - n0) * image * sizeof(floating))
            t0 = n0 * g.TT
            tend = n1 * g.TT
            while t0 < tend:
                t1 = min(t0 + TB, tend)
                if m == 2:
                    wino_input_block(x, V, t0, t1, zero, &g)
                    if dy_argmax != NULL:
                        matched[ch] += wino_dy_pool_block(dy, dy_argmax, dy_mask, Yh, t0, t1,
                                                          dbacc, &g)
                    else:
                        wino_dy_block(dy, Yh, t0, t1, zero, dbacc, &g)
                else:
                    wino4_block(W4_IN, x, V, t0, t1, zero, NULL, &g)
                    wino4_block(W4_DY, dy, Yh, t0, t1, zero, dbacc, &g)
                for k in range(nk):
                    # dU_k (C, Cout) += V_k^T (C, tb) @ Yh_k (tb, Cout)
                    gemm(True, False, <int> C, <int> Cout, <int> (t1 - t0), <floating> 1,
                         V + k * TB * C, <int> C, Yh + k * TB * Cout, <int> Cout,
                         <floating> 1, duacc + k * C * Cout, <int> Cout)
                if need_dx:
                    for k in range(nk):
                        # dV_k (tb, C) = Yh_k (tb, Cout) @ U_k^T (Cout, C), into V
                        gemm(False, True, <int> (t1 - t0), <int> C, <int> Cout, <floating> 1,
                             Yh + k * TB * Cout, <int> Cout, U + k * C * Cout, <int> Cout,
                             <floating> 0, V + k * TB * C, <int> C)
                    if m == 2:
                        wino_dx_block(V, dx, t0, t1, sink, &g)
                    else:
                        wino4_block(W4_DX, V, dx, t0, t1, sink, NULL, &g)
                t0 = t1
        cconv_ftz_restore(old)
    return 0


# ---------------------------------------------------------------------------------
# The checked kernels of cconv.conv: a plan with the default tuning, run on the caller's
# workspace (or on memory allocated here when work is NULL).
# ---------------------------------------------------------------------------------
cdef Py_ssize_t conv2d_forward_workspace(const cconv_geom *g, int itemsize,
                                         int num_threads) noexcept nogil:
    cdef conv_plan p
    cdef int err = make_plan(g, itemsize, False, False, num_threads, NULL, &p)
    return err if err else p.workspace


cdef Py_ssize_t conv2d_backward_workspace(const cconv_geom *g, int itemsize, int need_dx,
                                          int num_threads) noexcept nogil:
    cdef conv_plan p
    cdef int err = make_plan(g, itemsize, True, need_dx, num_threads, NULL, &p)
    return err if err else p.workspace


cdef int take_workspace(void *work, size_t work_bytes, Py_ssize_t need,
                        char **base, void **owned) noexcept nogil:
    """base = the caller's workspace (checked: large enough, 64-byte aligned) or, when work
    is NULL, memory allocated here (owned, for the caller to free)."""
    owned[0] = NULL
    if work == NULL:
        if need == 0:
            base[0] = NULL
            return 0
        owned[0] = malloc(need + ALIGN)
        if owned[0] == NULL:
            return CCONV_ERR_NOMEM
        base[0] = <char *> ((<uintptr_t> owned[0] + ALIGN - 1) & ~(<uintptr_t> ALIGN - 1))
        return 0
    if <Py_ssize_t> work_bytes < need or (<uintptr_t> work) % ALIGN:
        return CCONV_ERR_WORKSPACE
    base[0] = <char *> work
    return 0


cdef void sum_slots(const floating *acc, Py_ssize_t nslots, Py_ssize_t stride, Py_ssize_t n,
                    floating *out) noexcept nogil:
    """out[i] = acc[0][i] + acc[1][i] + ... (slot s at acc + s * stride), in slot order."""
    cdef Py_ssize_t s, i
    memcpy(out, acc, n * sizeof(floating))
    for s in range(1, nslots):
        for i in range(n):
            out[i] = out[i] + acc[s * stride + i]


cdef int conv2d_forward(const cconv_geom *g, const floating *x, const floating *w,
                        const floating *b, floating *y, void *work, size_t work_bytes,
                        int num_threads) noexcept nogil:
    cdef conv_plan p
    cdef int err = make_plan(g, sizeof(floating), False, False, num_threads, NULL, &p)
    if err:
        return err
    if g.N and (x == NULL or w == NULL or y == NULL):
        return CCONV_ERR_VALUE
    if g.N == 0:
        return 0
    cdef char *base
    cdef void *owned
    err = take_workspace(work, work_bytes, p.workspace, &base, &owned)
    if err:
        return err
    cdef floating *U
    if p.route == ROUTE_DIRECT:
        if floating is float:
            err = direct_forward(g, x, w, b, y, base, p.threads)
    elif p.route == ROUTE_WINOGRAD:
        U = <floating *> base
        err = winograd_filter(w, U, g.C, g.Cout, p.filter_threads)
        if not err:
            err = winograd_forward(g, x, U, b, y,
                                   <floating *> (base + aligned(16 * g.C * g.Cout * sizeof(floating))),
                                   p.threads, p.scratch, p.tile, p.threads)
    else:
        err = gemm_forward(g, x, w, b, y, <floating *> base, p.threads, p.scratch, p.tile,
                           p.threads)
    free(owned)
    return err


cdef int conv2d_backward(const cconv_geom *g, const floating *dy, const floating *x,
                         const floating *w, floating *dx, floating *dw, floating *db,
                         void *work, size_t work_bytes, int num_threads) noexcept nogil:
    cdef conv_plan p
    cdef int err = make_plan(g, sizeof(floating), True, dx != NULL, num_threads, NULL, &p)
    if err:
        return err
    cdef Py_ssize_t Kg = p.K, Cout = g.Cout
    cdef Py_ssize_t U_size = (36 if p.route == ROUTE_WINOGRAD4 else 16) * g.C * g.Cout
    if dw == NULL or (g.N and (x == NULL or dy == NULL or w == NULL)):
        return CCONV_ERR_VALUE
    if g.N == 0:
        memset(dw, 0, Kg * Cout * sizeof(floating))
        if db != NULL:
            memset(db, 0, Cout * sizeof(floating))
        return 0
    cdef char *base
    cdef void *owned
    err = take_workspace(work, work_bytes, p.workspace, &base, &owned)
    if err:
        return err
    cdef char *part = base
    cdef int m
    cdef floating *U
    cdef floating *acc_w
    cdef floating *acc_b
    if p.route == ROUTE_DIRECT:
        if floating is float:
            acc_w = <floating *> part
            part += aligned(p.slots * p.Kpad * Cout * sizeof(floating))
            acc_b = <floating *> part
            part += aligned(p.slots * Cout * sizeof(floating))
            err = direct_backward_weights(g, dy, x, acc_w, acc_b, p.slots, part, p.threads)
            if not err:
                sum_slots(acc_w, p.slots, p.Kpad * Cout, Kg * Cout, dw)
    elif p.route == ROUTE_WINOGRAD or p.route == ROUTE_WINOGRAD4:
        m = 2 if p.route == ROUTE_WINOGRAD else 4
        U = <floating *> part
        part += aligned(U_size * sizeof(floating))
        acc_w = <floating *> part
        part += aligned(p.slots * U_size * sizeof(floating))
        acc_b = <floating *> part
        part += aligned(p.slots * Cout * sizeof(floating))
        err = wino_filter(w, U, g.C, Cout, m, p.filter_threads)
        if not err:
            err = winograd_backward(g, dy, x, U, dx, acc_w, acc_b, p.slots,
                                    <floating *> part, p.threads, p.scratch, p.tile, m,
                                    p.threads)
        if not err:
            err = wino_filter_grad(acc_w, p.slots, dw, g.C, Cout, m, p.filter_threads)
    else:
        part += aligned(p.threads * p.scratch * sizeof(floating))
        acc_w = <floating *> part
        part += aligned(p.slots * Kg * Cout * sizeof(floating))
        acc_b = <floating *> part
        err = gemm_backward(g, dy, x, w, dx, acc_w, acc_b, <floating *> base, p.threads,
                            p.scratch, p.tile, p.threads)
        if not err:
            sum_slots(acc_w, p.slots, Kg * Cout, Kg * Cout, dw)
    if not err and db != NULL:
        sum_slots(acc_b, p.slots, Cout, Cout, db)
    free(owned)
    return err
