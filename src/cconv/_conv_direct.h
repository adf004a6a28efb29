/* Direct convolution for layers with few input channels (the first layer of a network:
 * RGB or grey images), float32, on AVX-512F, AVX2 + FMA or NEON.
 *
 * With K = KH*KW*C_in small (27 for a 3x3 RGB layer), the im2col route is a poor fit: the
 * im2col buffer is as large as the input times KH*KW, and a GEMM with an inner dimension
 * of 27 runs far below the machine's peak (OpenBLAS reaches about a third of it here).
 * Here every output is computed straight from the input:
 *
 *   forward  y[p, o]  = b[o] + sum_t  x_p[t] * w[t, o]     (8 pixels x 1 vector of outputs)
 *   dW       dw[t, o] += sum_p x_p[t] * dy[p, o]           (8 taps x 1 or 2 vectors)
 *
 * where x_p[t] is tap t = (kh, kw, c) of the window of output pixel p (the im2col row of
 * p, in the same (kh, kw, c) order), read in place: x_p[t] = base_p[off[t]] with
 * off[t] = (kh*dh*W + kw*dw)*C + c for a window that lies inside the image. A window that
 * crosses the padding is first copied, with zeros, into a small patch (off = identity).
 * The accumulators stay in registers for the whole sum over t (forward) or over the
 * pixels of a row (dW). The inference forward of a convolution -> 2x2 stride-2 max pool
 * (cconv_direct_fwd_pool_row) keeps the four outputs of each pool window in registers and
 * stores only their maximum, where every window lies inside the image.
 *
 * The kernels (_conv_direct_kern.h) are written once over the vector helpers of _simd.h
 * and compiled for each instruction set; a C_out that is not a multiple of the vector
 * width is served by masked loads and stores of its last vector. The caller checks
 * cconv_direct_available(simd_level()) (cconv._cpu) and the shape conditions (float32,
 * groups 1, K small) and passes the level to the row functions.
 */
#ifndef CCONV_CONV_DIRECT_H
#define CCONV_CONV_DIRECT_H

#include <stddef.h>
#include <string.h>
#include "_simd.h"

typedef struct {
    ptrdiff_t H, W, C, OH, OW, cout, KH, KW, sh, sw, dh, dw, pt, pl;
    ptrdiff_t K;      /* KH * KW * C */
    ptrdiff_t Kpad;   /* K rounded up to 8: rows of the per-thread dW accumulator */
} cconv_dgeom;

/* off[t] for t < K (window inside the image), 0 beyond (padding taps of the dW groups,
   whose sums land in rows K..Kpad-1 and are dropped); ident[t] = t, 0 beyond. */
static void cconv_direct_offsets(const cconv_dgeom *g, ptrdiff_t *off, ptrdiff_t *ident) {
    ptrdiff_t t = 0;
    for (ptrdiff_t kh = 0; kh < g->KH; kh++)
        for (ptrdiff_t kw = 0; kw < g->KW; kw++)
            for (ptrdiff_t c = 0; c < g->C; c++, t++) {
                off[t] = (kh * g->dh * g->W + kw * g->dw) * g->C + c;
                ident[t] = t;
            }
    for (; t < g->Kpad; t++) off[t] = ident[t] = 0;
}

/* For every pixel ow of output row (n, oh): where its taps are read from. Windows inside
   the image read x in place (base = window origin, po = off); the others are copied into
   patch + ow*K with zeros for the padding (base = the patch, po = ident). The inside
   windows are the columns lo <= ow < hi of a row whose window rows are all inside. */
static void cconv_direct_row(const cconv_dgeom *g, const float *x, ptrdiff_t n, ptrdiff_t oh,
                             const ptrdiff_t *off, const ptrdiff_t *ident, float *patch,
                             const float **base, const ptrdiff_t **po) {
    const ptrdiff_t H = g->H, W = g->W, C = g->C, OW = g->OW, sw = g->sw, pl = g->pl;
    const ptrdiff_t ih0 = oh * g->sh - g->pt, span = (g->KW - 1) * g->dw;
    ptrdiff_t lo = 0, hi = 0;
    if (ih0 >= 0 && ih0 + (g->KH - 1) * g->dh < H) {
        lo = (pl + sw - 1) / sw;                    /* ow * sw - pl >= 0 */
        hi = W - 1 + pl - span >= 0 ? (W - 1 + pl - span) / sw + 1 : 0;   /* ... + span < W */
        hi = hi < OW ? hi : OW;
        lo = lo < hi ? lo : hi;
    }
    const ptrdiff_t row = (n * H + ih0) * W;
    for (ptrdiff_t ow = lo; ow < hi; ow++) {
        base[ow] = x + (row + ow * sw - pl) * C;
        po[ow] = off;
    }
    for (ptrdiff_t ow = 0; ow < OW; ow++) {
        if (ow == lo && lo < hi) {          /* skip the inside run */
            ow = hi;
            if (ow == OW)
                break;
        }
        ptrdiff_t iw0 = ow * sw - pl;
        float *p = patch + ow * g->K;
        for (ptrdiff_t kh = 0; kh < g->KH; kh++) {
            ptrdiff_t ih = ih0 + kh * g->dh;
            for (ptrdiff_t kw = 0; kw < g->KW; kw++, p += C) {
                ptrdiff_t iw = iw0 + kw * g->dw;
                if (ih >= 0 && ih < H && iw >= 0 && iw < W)
                    memcpy(p, x + ((n * H + ih) * W + iw) * C, (size_t)C * sizeof(float));
                else
                    memset(p, 0, (size_t)C * sizeof(float));
            }
        }
        base[ow] = patch + ow * g->K;
        po[ow] = ident;
    }
}

/* A 2x2 stride-2 max pool of two computed output rows r0, r1 (each 2*PW x cout; bias in)
   into the pooled row y (PW x cout), + ReLU if relu: the fused convolution -> max pool of
   conv2d_max_pool2d. The window is scanned in row-major order as the max pool does (a
   greater value or a NaN takes the place), so the result is the unfused one bit for bit
   (ReLU commutes with max). With a (not NULL): the pool's argmax too, a[pw * cout + o] =
   the winner's flat index h * OW + w in the output plane, r0 being row h0 of it. Plain loops
   over the channels, vectorised by the compiler. */
CCONV_MULTIVERSION static void cconv_direct_pool_rows(
        const float *__restrict r0, const float *__restrict r1, float *__restrict y,
        ptrdiff_t PW, ptrdiff_t cout, int relu, int *__restrict a, ptrdiff_t h0,
        ptrdiff_t OW) {
    if (a) {
        for (ptrdiff_t pw = 0; pw < PW; pw++) {
            const float *p = r0 + 2 * pw * cout, *c = r1 + 2 * pw * cout;
            float *yo = y + pw * cout;
            int *ao = a + pw * cout, i0 = (int)(h0 * OW + 2 * pw), i2 = (int)(i0 + OW);
            for (ptrdiff_t o = 0; o < cout; o++) {
                float best = p[o], v = p[cout + o];
                int arg = i0, take = (v > best) | (v != v);
                best = take ? v : best; arg = take ? i0 + 1 : arg;
                v = c[o];
                take = (v > best) | (v != v);
                best = take ? v : best; arg = take ? i2 : arg;
                v = c[cout + o];
                take = (v > best) | (v != v);
                best = take ? v : best; arg = take ? i2 + 1 : arg;
                yo[o] = relu && best <= 0.0f ? 0.0f : best;
                ao[o] = arg;
            }
        }
        return;
    }
    for (ptrdiff_t pw = 0; pw < PW; pw++) {
        const float *a = r0 + 2 * pw * cout, *c = r1 + 2 * pw * cout;
        float *yo = y + pw * cout;
        for (ptrdiff_t o = 0; o < cout; o++) {
            float best = a[o], v = a[cout + o];
            best = (v > best) | (v != v) ? v : best;
            v = c[o];
            best = (v > best) | (v != v) ? v : best;
            v = c[cout + o];
            best = (v > best) | (v != v) ? v : best;
            yo[o] = relu && best <= 0.0f ? 0.0f : best;
        }
    }
}

/* Row oh of the gradient of a convolution's output (OW x cout) from that of its 2x2
   stride-2 max pool: dy[ow, o] = dp[ow / 2, o] where the pool's argmax (a: the pooled row
   oh / 2, flat indices h * OW + w) names (oh, ow), else 0; with `under` 0 (a row that no
   window covers) and in the columns from 2 * PW on, zeros. The row that
   max_pool2d_backward writes, bit for bit (a -0.0 kept). With m (not NULL: the pooled
   output after a ReLU, laid out as dp), dp is first masked as relu_backward(dp, m) would
   (0 where m is not > 0). Returns how many entries of the pooled row named a unit of
   this row. */
CCONV_MULTIVERSION static long long cconv_direct_unpool_row(
        const float *__restrict dp, const int *__restrict a, const float *__restrict m,
        float *__restrict row, ptrdiff_t PW, ptrdiff_t OW, ptrdiff_t cout, ptrdiff_t oh,
        int under) {
    long long matched = 0;
    ptrdiff_t done = 0;
    if (under) {
        for (ptrdiff_t pw = 0; pw < PW; pw++) {
            const float *g = dp + pw * cout, *mk = m ? m + pw * cout : g;
            const int *ai = a + pw * cout;
            float *r0 = row + 2 * pw * cout, *r1 = r0 + cout;
            int c0 = (int)(oh * OW + 2 * pw), c1 = c0 + 1;
            for (ptrdiff_t o = 0; o < cout; o++) {
                int i = ai[o];
                float v = !m || mk[o] > 0 ? g[o] : 0.0f;
                r0[o] = i == c0 ? v : 0.0f;
                r1[o] = i == c1 ? v : 0.0f;
                matched += (i == c0) + (i == c1);
            }
        }
        done = 2 * PW;
    }
    memset(row + done * cout, 0, (size_t)((OW - done) * cout) * sizeof(float));
    return matched;
}

/* The kernels, one per instruction set (_conv_direct_kern.h, which #undefs its parameters):
   VLANES float32 lanes, the 2-vector dW blocks if VDW2, the target attribute, the suffix. */
#if CCONV_X86
#define VLANES 16
#define VDW2 1
#define VPOOL 3
#define KATTR CCONV_AVX512
#define KSFX _avx512
#include "_conv_direct_kern.h"

#define VLANES 8
#define VDW2 0           /* 16 registers: 8 accumulators, 2 (1 in dW) vectors, the broadcast tap */
#define VPOOL 1
#define KATTR CCONV_AVX2FMA
#define KSFX _avx2
#include "_conv_direct_kern.h"
#endif

#if CCONV_NEON
#define VLANES 4
#define VDW2 1
#define VPOOL 3
#define KATTR
#define KSFX _neon
#include "_conv_direct_kern.h"
#endif

/* Whether simd_level() `level` has direct kernels: AVX-512F (2), AVX2 + FMA or NEON (1). */
static inline int cconv_direct_available(int level) {
#if CCONV_X86 || CCONV_NEON
    return level >= 1;
#else
    (void)level;
    return 0;
#endif
}

/* Forward of one output row with the kernel of `level` (cconv_direct_available(level)). */
static void cconv_direct_fwd_row(int level, const cconv_dgeom *g, const float *const *base,
                                 const ptrdiff_t *const *po, const float *w, const float *b,
                                 float *y) {
#if CCONV_X86
    if (level >= 2) cconv_direct_fwd_row_avx512(g, base, po, w, b, y);
    else cconv_direct_fwd_row_avx2(g, base, po, w, b, y);
#elif CCONV_NEON
    (void)level;
    cconv_direct_fwd_row_neon(g, base, po, w, b, y);
#else
    (void)level; (void)g; (void)base; (void)po; (void)w; (void)b; (void)y;   /* never called */
#endif
}

/* The pooled pixels of a block of cconv_direct_fwd_pool_row at simd_level() `level` for
   C_out = cout (AVX-512F: 3, C_out a multiple of 32; AVX2: 1, a multiple of 16; NEON: 3, a
   multiple of 8), or 0: no such kernel (the row pair then goes through a buffer and
   cconv_direct_pool_rows). */
static inline int cconv_direct_pool_regs(int level, ptrdiff_t cout) {
#if CCONV_X86
    return level >= 2 ? (cout % 32 == 0 ? 3 : 0) : level == 1 && cout % 16 == 0;
#elif CCONV_NEON
    return level >= 1 && cout % 8 == 0 ? 3 : 0;
#else
    (void)level; (void)cout;
    return 0;
#endif
}

/* One pooled row of the fused convolution -> 2x2 stride-2 max pool (-> ReLU), pooled in
   the registers (_conv_direct_kern.h), where PW >= cconv_direct_pool_regs(level, g->cout)
   > 0 and every window of the two convolution rows lies inside the image. */
static void cconv_direct_fwd_pool_row(int level, const cconv_dgeom *g, ptrdiff_t PW,
                                      const float *x0, const float *x1, const ptrdiff_t *off,
                                      const float *w, const float *b, float *y, int relu) {
#if CCONV_X86
    if (level >= 2)
        cconv_direct_fwd_pool_row_avx512(g->K, g->cout, PW, x0, x1, g->sw * g->C, off, w, b, y,
                                         relu);
    else
        cconv_direct_fwd_pool_row_avx2(g->K, g->cout, PW, x0, x1, g->sw * g->C, off, w, b, y,
                                       relu);
#elif CCONV_NEON
    (void)level;
    cconv_direct_fwd_pool_row_neon(g->K, g->cout, PW, x0, x1, g->sw * g->C, off, w, b, y, relu);
#else
    (void)level; (void)g; (void)PW; (void)x0; (void)x1; (void)off; (void)w; (void)b; (void)y;
    (void)relu;      /* never called */
#endif
}

/* dW and db of one output row with the kernel of `level`. */
static void cconv_direct_dw_row(int level, const cconv_dgeom *g, const float *const *base,
                                const ptrdiff_t *const *po, const ptrdiff_t *off,
                                const float *dy, float *dw, float *db) {
#if CCONV_X86
    if (level >= 2) cconv_direct_dw_row_avx512(g, base, po, off, dy, dw, db);
    else cconv_direct_dw_row_avx2(g, base, po, off, dy, dw, db);
#elif CCONV_NEON
    (void)level;
    cconv_direct_dw_row_neon(g, base, po, off, dy, dw, db);
#else
    (void)level; (void)g; (void)base; (void)po; (void)off; (void)dy; (void)dw; (void)db;
#endif
}

#endif  /* CCONV_CONV_DIRECT_H */
