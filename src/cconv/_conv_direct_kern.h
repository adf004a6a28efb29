/* The kernels of the direct convolution (_conv_direct.h), written once over a vector of
 * VLANES float32 lanes and compiled once per instruction set: _conv_direct.h includes this
 * file with
 *
 *   VLANES    the vector width: the set's helpers of _simd.h are CCONV_V<VLANES>_*
 *   VDW2      1 if it has registers for 16 accumulators: 8 taps x 2 vectors (dW) and 8
 *             pixels x 2 vectors (forward); else the forward's 2-vector blocks are of 4
 *             pixels (8 accumulators)
 *   VPOOL     the pooled pixels of a block of cconv_direct_fwd_pool_row: 3 (24
 *             accumulators, for 32 registers: AVX-512, NEON) or 1 (8, for 16: AVX2)
 *   KATTR     the target attribute, KSFX the suffix of the functions' names for this set
 *
 * defined, and #undefs them at its end. Outputs go VLANES at a time; the last, partial vector of a C_out
 * that is not a multiple of VLANES is loaded and stored with a lane mask, so no output
 * column is read or written past C_out.
 */

#define VEC(op) CCONV_VEC(op)
#define VTYPE CCONV_VTYPE
#define VMASK CCONV_VMASK
#define KNAME(f) CCONV_KNAME(f)
#define CCONV_D8(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7)

/* Forward of up to 8 pixels (bs/ps: where their taps are) for the VLANES outputs at w, b
   (w: K rows of stride cout), stored at yo (row stride cout), np pixels of them. `full`
   and `m` are constants where this is inlined: full vectors, or the partial one. */
KATTR static inline __attribute__((always_inline)) void KNAME(cconv_dfwd_blk)(
        ptrdiff_t K, ptrdiff_t cout, int inside, const float *const *bs,
        const ptrdiff_t *const *ps, const float *w, const float *b, float *yo, ptrdiff_t np,
        int full, VMASK m) {
    VTYPE init = b ? (full ? VEC(load)(b) : VEC(loadm)(b, m)) : VEC(zero)();
#define CCONV_DECL(p) VTYPE a##p = init;
    CCONV_D8(CCONV_DECL)
#undef CCONV_DECL
    if (inside) {              /* every pixel reads its taps at the same offsets */
        const ptrdiff_t *pt = ps[0];
        for (ptrdiff_t t = 0; t < K; t++) {
            VTYPE wv = full ? VEC(load)(w + t * cout) : VEC(loadm)(w + t * cout, m);
            ptrdiff_t d = pt[t];
#define CCONV_FMA(p) a##p = VEC(fma)(VEC(set1)(bs[p][d]), wv, a##p);
            CCONV_D8(CCONV_FMA)
#undef CCONV_FMA
        }
    } else {
        for (ptrdiff_t t = 0; t < K; t++) {
            VTYPE wv = full ? VEC(load)(w + t * cout) : VEC(loadm)(w + t * cout, m);
#define CCONV_FMA(p) a##p = VEC(fma)(VEC(set1)(bs[p][ps[p][t]]), wv, a##p);
            CCONV_D8(CCONV_FMA)
#undef CCONV_FMA
        }
    }
#define CCONV_STORE(p)                                                                  \
    if (p < np) {                                                                       \
        if (full) VEC(store)(yo + p * cout, a##p); else VEC(storem)(yo + p * cout, m, a##p); \
    }
    CCONV_D8(CCONV_STORE)
#undef CCONV_STORE
}

/* The forward of cconv_dfwd_blk for 2 full vectors of outputs (at w, b and yo, and VLANES
   further) of 8 pixels (VDW2: 16 accumulators) or 4 (else: 8 accumulators, for 16
   registers), np of them stored: each broadcast tap feeds 2 FMAs instead of 1, so that the
   loads (a broadcast per pixel and a vector per tap) no longer outnumber the FMAs. Each
   output sums the same products in the same order: the same bits as single blocks. */
#if VDW2
#define CCONV_DP2 CCONV_D8
#else
#define CCONV_DP2(M) M(0) M(1) M(2) M(3)
#endif
KATTR static inline __attribute__((always_inline)) void KNAME(cconv_dfwd_blk2)(
        ptrdiff_t K, ptrdiff_t cout, int inside, const float *const *bs,
        const ptrdiff_t *const *ps, const float *w, const float *b, float *yo, ptrdiff_t np) {
    VTYPE init0 = b ? VEC(load)(b) : VEC(zero)();
    VTYPE init1 = b ? VEC(load)(b + VLANES) : VEC(zero)();
#define CCONV_DECL(p) VTYPE a##p = init0, c##p = init1;
    CCONV_DP2(CCONV_DECL)
#undef CCONV_DECL
    if (inside) {
        const ptrdiff_t *pt = ps[0];
        for (ptrdiff_t t = 0; t < K; t++) {
            VTYPE w0 = VEC(load)(w + t * cout), w1 = VEC(load)(w + t * cout + VLANES);
            ptrdiff_t d = pt[t];
#define CCONV_FMA(p) { VTYPE v = VEC(set1)(bs[p][d]);                                    \
                       a##p = VEC(fma)(v, w0, a##p); c##p = VEC(fma)(v, w1, c##p); }
            CCONV_DP2(CCONV_FMA)
#undef CCONV_FMA
        }
    } else {
        for (ptrdiff_t t = 0; t < K; t++) {
            VTYPE w0 = VEC(load)(w + t * cout), w1 = VEC(load)(w + t * cout + VLANES);
#define CCONV_FMA(p) { VTYPE v = VEC(set1)(bs[p][ps[p][t]]);                             \
                       a##p = VEC(fma)(v, w0, a##p); c##p = VEC(fma)(v, w1, c##p); }
            CCONV_DP2(CCONV_FMA)
#undef CCONV_FMA
        }
    }
#define CCONV_STORE(p)                                                                  \
    if (p < np) {                                                                       \
        VEC(store)(yo + p * cout, a##p);                                                \
        VEC(store)(yo + p * cout + VLANES, c##p);                                       \
    }
    CCONV_DP2(CCONV_STORE)
#undef CCONV_STORE
}
#undef CCONV_DP2

/* Forward of one output row: y (OW x cout) = taps (OW x K) . w (K x cout) + b. Outputs go
   2 vectors at a time (in blocks of 8 pixels, or two of 4 without VDW2), then 1, then the
   partial vector. */
KATTR static void KNAME(cconv_direct_fwd_row)(const cconv_dgeom *g, const float *const *base,
                                              const ptrdiff_t *const *po,
                                              const float *w, const float *b, float *y) {
    ptrdiff_t OW = g->OW, K = g->K, cout = g->cout;
    ptrdiff_t full_end = cout - cout % VLANES;
    VMASK m = VEC(mask)(cout % VLANES ? cout % VLANES : 1);
    for (ptrdiff_t ow0 = 0; ow0 < OW; ow0 += 8) {
        const float *bs[8];
        const ptrdiff_t *ps[8];
        int inside = 1;
        for (int p = 0; p < 8; p++) {
            ptrdiff_t q = ow0 + p < OW ? ow0 + p : OW - 1;   /* the tail repeats a pixel */
            bs[p] = base[q];
            ps[p] = po[q];
            inside &= ps[p] == ps[0];
        }
        ptrdiff_t np = OW - ow0 < 8 ? OW - ow0 : 8;
        float *yo = y + ow0 * cout;
        ptrdiff_t o = 0;
        for (; o + 2 * VLANES <= full_end; o += 2 * VLANES) {
            KNAME(cconv_dfwd_blk2)(K, cout, inside, bs, ps, w + o, b ? b + o : b, yo + o, np);
#if !VDW2
            if (np > 4)        /* the blocks are of 4 pixels: the group's second half */
                KNAME(cconv_dfwd_blk2)(K, cout, inside, bs + 4, ps + 4, w + o, b ? b + o : b,
                                       yo + 4 * cout + o, np - 4);
#endif
        }
        for (; o < full_end; o += VLANES)
            KNAME(cconv_dfwd_blk)(K, cout, inside, bs, ps, w + o, b ? b + o : b, yo + o, np, 1, m);
        if (full_end < cout)
            KNAME(cconv_dfwd_blk)(K, cout, inside, bs, ps, w + full_end, b ? b + full_end : b,
                                  yo + full_end, np, 0, m);
    }
}

/* One row of the fused convolution -> 2x2 stride-2 max pool (-> ReLU when relu), pooled in
   the registers: no row of the convolution's output is stored. For a row pair whose
   windows all lie inside the image and C_out a multiple of 2 * VLANES: x0, x1 are the
   window origins of the first pixel of the two convolution rows, step the distance from
   one pixel's window to the next (sw * C), off the taps' offsets (cconv_direct_offsets).

   Blocks of VPOOL pooled pixels (2 rows x 2 * VPOOL pixels) x 2 vectors of outputs: with
   VPOOL 3, 24 accumulators, 12 broadcast taps and 2 weight vectors per 24 FMAs. Each output
   of the convolution sums the same products in the same order as cconv_dfwd_blk2, and
   each window is scanned as cconv_direct_pool_rows scans it (row-major; a greater value or
   a NaN takes the place; then ReLU: +0 for <= 0, a NaN kept): the same bits. PW >= VPOOL:
   the last block starts at PW - VPOOL and writes again the values of the pixels it shares
   with the one before. */
#if VPOOL == 3
#define CCONV_PX(M, r) M(r, 0) M(r, 1) M(r, 2) M(r, 3) M(r, 4) M(r, 5)
#define CCONV_POOLS(M) M(0, 0, 1) M(1, 2, 3) M(2, 4, 5)
#else
#define CCONV_PX(M, r) M(r, 0) M(r, 1)
#define CCONV_POOLS(M) M(0, 0, 1)
#endif
KATTR static void KNAME(cconv_direct_fwd_pool_row)(
        ptrdiff_t K, ptrdiff_t cout, ptrdiff_t PW, const float *x0, const float *x1,
        ptrdiff_t step, const ptrdiff_t *off, const float *w, const float *b, float *y,
        int relu) {
    for (ptrdiff_t pw0 = 0; pw0 < PW; pw0 += VPOOL) {
        if (pw0 > PW - VPOOL)
            pw0 = PW - VPOOL;
        const float *r0 = x0 + 2 * pw0 * step, *r1 = x1 + 2 * pw0 * step;
        for (ptrdiff_t o = 0; o < cout; o += 2 * VLANES) {
            VTYPE init0 = b ? VEC(load)(b + o) : VEC(zero)();
            VTYPE init1 = b ? VEC(load)(b + o + VLANES) : VEC(zero)();
#define CCONV_DECL(r, p) VTYPE a##r##p = init0, c##r##p = init1;
            CCONV_PX(CCONV_DECL, 0)
            CCONV_PX(CCONV_DECL, 1)
#undef CCONV_DECL
            for (ptrdiff_t t = 0; t < K; t++) {
                VTYPE w0 = VEC(load)(w + t * cout + o), w1 = VEC(load)(w + t * cout + o + VLANES);
                const float *q0 = r0 + off[t], *q1 = r1 + off[t];
#define CCONV_FMA(r, p) { VTYPE v = VEC(set1)(q##r[p * step]);                           \
                          a##r##p = VEC(fma)(v, w0, a##r##p); c##r##p = VEC(fma)(v, w1, c##r##p); }
                CCONV_PX(CCONV_FMA, 0)
                CCONV_PX(CCONV_FMA, 1)
#undef CCONV_FMA
            }
            /* pooled pixel j: row 0's pixels p, q = 2j, 2j + 1, then row 1's */
#define CCONV_POOL(j, p, q)                                                             \
            {                                                                           \
                VTYPE m0 = a0##p, m1 = c0##p;                                           \
                m0 = VEC(pmax)(m0, a0##q); m1 = VEC(pmax)(m1, c0##q);                   \
                m0 = VEC(pmax)(m0, a1##p); m1 = VEC(pmax)(m1, c1##p);                   \
                m0 = VEC(pmax)(m0, a1##q); m1 = VEC(pmax)(m1, c1##q);                   \
                if (relu) { m0 = VEC(relu)(m0); m1 = VEC(relu)(m1); }                   \
                VEC(store)(y + (pw0 + j) * cout + o, m0);                               \
                VEC(store)(y + (pw0 + j) * cout + o + VLANES, m1);                      \
            }
            CCONV_POOLS(CCONV_POOL)
#undef CCONV_POOL
        }
    }
}
#undef CCONV_POOLS
#undef CCONV_PX

/* dW of taps t0..t0+7 and the outputs at acc (nv = 1 or 2 vectors; the second always full):
   acc (rows of stride cout) += taps^T . dy over the row's OW pixels. */
KATTR static inline __attribute__((always_inline)) void KNAME(cconv_ddw_blk)(
        ptrdiff_t OW, ptrdiff_t cout, const float *const *base, const ptrdiff_t *const *po,
        const ptrdiff_t *off, ptrdiff_t t0, const float *dy, float *acc, int nv, int full,
        VMASK m) {
#define CCONV_LOAD(j) VTYPE a##j = full ? VEC(load)(acc + j * cout) : VEC(loadm)(acc + j * cout, m); \
                      VTYPE b##j = nv > 1 ? VEC(load)(acc + j * cout + VLANES) : VEC(zero)();    \
                      ptrdiff_t d##j = off[t0 + j];
    CCONV_D8(CCONV_LOAD)
#undef CCONV_LOAD
    for (ptrdiff_t ow = 0; ow < OW; ow++) {
        VTYPE g0 = full ? VEC(load)(dy + ow * cout) : VEC(loadm)(dy + ow * cout, m);
        VTYPE g1 = nv > 1 ? VEC(load)(dy + ow * cout + VLANES) : g0;
        const float *bp = base[ow];
        const ptrdiff_t *pp = po[ow];
        if (pp == off) {       /* window inside the image: offsets in registers */
#define CCONV_FMA(j) { VTYPE v = VEC(set1)(bp[d##j]);                                    \
                       a##j = VEC(fma)(v, g0, a##j);                                     \
                       if (nv > 1) b##j = VEC(fma)(v, g1, b##j); }
            CCONV_D8(CCONV_FMA)
#undef CCONV_FMA
        } else {
#define CCONV_FMA(j) { VTYPE v = VEC(set1)(bp[pp[t0 + j]]);                              \
                       a##j = VEC(fma)(v, g0, a##j);                                     \
                       if (nv > 1) b##j = VEC(fma)(v, g1, b##j); }
            CCONV_D8(CCONV_FMA)
#undef CCONV_FMA
        }
    }
#define CCONV_STORE(j)                                                                    \
    if (full) VEC(store)(acc + j * cout, a##j); else VEC(storem)(acc + j * cout, m, a##j); \
    if (nv > 1) VEC(store)(acc + j * cout + VLANES, b##j);
    CCONV_D8(CCONV_STORE)
#undef CCONV_STORE
}

/* dW of one output row: dw (Kpad x cout) += taps^T (K x OW) . dy (OW x cout), and
   db (cout) += the sum of dy over the row. Taps go 8 at a time (Kpad is a multiple of 8),
   outputs 2 vectors at a time where the set has the registers, then 1, then the partial
   vector. */
KATTR static void KNAME(cconv_direct_dw_row)(const cconv_dgeom *g, const float *const *base,
                                             const ptrdiff_t *const *po, const ptrdiff_t *off,
                                             const float *dy, float *dw, float *db) {
    ptrdiff_t OW = g->OW, cout = g->cout, Kpad = g->Kpad;
    ptrdiff_t full_end = cout - cout % VLANES;
    VMASK m = VEC(mask)(cout % VLANES ? cout % VLANES : 1);
    for (ptrdiff_t o = 0; o < cout; o += VLANES) {
        int full = o < full_end;
        VTYPE s = VEC(zero)();
        for (ptrdiff_t ow = 0; ow < OW; ow++)
            s = VEC(add)(s, full ? VEC(load)(dy + ow * cout + o) : VEC(loadm)(dy + ow * cout + o, m));
        s = VEC(add)(s, full ? VEC(load)(db + o) : VEC(loadm)(db + o, m));
        if (full) VEC(store)(db + o, s); else VEC(storem)(db + o, m, s);
    }
    ptrdiff_t o = 0;
#if VDW2
    for (; o + 2 * VLANES <= cout; o += 2 * VLANES)
        for (ptrdiff_t t0 = 0; t0 < Kpad; t0 += 8)
            KNAME(cconv_ddw_blk)(OW, cout, base, po, off, t0, dy + o, dw + t0 * cout + o, 2, 1, m);
#endif
    for (; o < full_end; o += VLANES)
        for (ptrdiff_t t0 = 0; t0 < Kpad; t0 += 8)
            KNAME(cconv_ddw_blk)(OW, cout, base, po, off, t0, dy + o, dw + t0 * cout + o, 1, 1, m);
    if (full_end < cout)
        for (ptrdiff_t t0 = 0; t0 < Kpad; t0 += 8)
            KNAME(cconv_ddw_blk)(OW, cout, base, po, off, t0, dy + full_end,
                                 dw + t0 * cout + full_end, 1, 0, m);
}

#undef CCONV_D8
#undef VEC
#undef VTYPE
#undef VMASK
#undef KNAME
#undef VLANES
#undef VDW2
#undef VPOOL
#undef KATTR
#undef KSFX
