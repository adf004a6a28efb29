/* Direct convolution for layers with few input channels (the first layer of a network:
 * RGB or grey images), float32, AVX-512F.
 *
 * With K = KH*KW*C_in small (27 for a 3x3 RGB layer), the im2col route is a poor fit: the
 * im2col buffer is as large as the input times KH*KW, and a GEMM with an inner dimension
 * of 27 runs far below the machine's peak (OpenBLAS reaches about a third of it here).
 * Here every output is computed straight from the input:
 *
 *   forward  y[p, o]  = b[o] + sum_t  x_p[t] * w[t, o]     (8 pixels x 16 outputs at a time)
 *   dW       dw[t, o] += sum_p x_p[t] * dy[p, o]           (8 taps x 16 outputs at a time)
 *
 * where x_p[t] is tap t = (kh, kw, c) of the window of output pixel p (the im2col row of
 * p, in the same (kh, kw, c) order), read in place: x_p[t] = base_p[off[t]] with
 * off[t] = (kh*dh*W + kw*dw)*C + c for a window that lies inside the image. A window that
 * crosses the padding is first copied, with zeros, into a small patch (off = identity).
 * The accumulators stay in registers for the whole sum over t (forward) or over the
 * pixels of a row (dW).
 *
 * The caller checks simd_level() >= 2 (cconv._cpu) and the shape conditions (float32,
 * groups 1, C_out % 16 == 0, K small).
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
   patch + ow*K with zeros for the padding (base = the patch, po = ident). */
static void cconv_direct_row(const cconv_dgeom *g, const float *x, ptrdiff_t n, ptrdiff_t oh,
                             const ptrdiff_t *off, const ptrdiff_t *ident, float *patch,
                             const float **base, const ptrdiff_t **po) {
    ptrdiff_t ih0 = oh * g->sh - g->pt, C = g->C;
    int rows_in = ih0 >= 0 && ih0 + (g->KH - 1) * g->dh < g->H;
    for (ptrdiff_t ow = 0; ow < g->OW; ow++) {
        ptrdiff_t iw0 = ow * g->sw - g->pl;
        if (rows_in && iw0 >= 0 && iw0 + (g->KW - 1) * g->dw < g->W) {
            base[ow] = x + ((n * g->H + ih0) * g->W + iw0) * C;
            po[ow] = off;
            continue;
        }
        float *p = patch + ow * g->K;
        for (ptrdiff_t kh = 0; kh < g->KH; kh++) {
            ptrdiff_t ih = ih0 + kh * g->dh;
            for (ptrdiff_t kw = 0; kw < g->KW; kw++, p += C) {
                ptrdiff_t iw = iw0 + kw * g->dw;
                if (ih >= 0 && ih < g->H && iw >= 0 && iw < g->W)
                    memcpy(p, x + ((n * g->H + ih) * g->W + iw) * C, (size_t)C * sizeof(float));
                else
                    memset(p, 0, (size_t)C * sizeof(float));
            }
        }
        base[ow] = patch + ow * g->K;
        po[ow] = ident;
    }
}

#if CCONV_X86
#define CCONV_D8(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7)

/* Forward of one output row: y (OW x cout) = taps (OW x K) . w (K x cout) + b. */
CCONV_AVX512 static void cconv_direct_fwd_row(const cconv_dgeom *g, const float *const *base,
                                              const ptrdiff_t *const *po,
                                              const float *w, const float *b, float *y) {
    ptrdiff_t OW = g->OW, K = g->K, cout = g->cout;
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
        for (ptrdiff_t o = 0; o < cout; o += 16) {
            __m512 init = b ? _mm512_loadu_ps(b + o) : _mm512_setzero_ps();
#define CCONV_DECL(p) __m512 a##p = init;
            CCONV_D8(CCONV_DECL)
#undef CCONV_DECL
            if (inside) {              /* every pixel reads its taps at the same offsets */
                const ptrdiff_t *pt = ps[0];
                for (ptrdiff_t t = 0; t < K; t++) {
                    __m512 wv = _mm512_loadu_ps(w + t * cout + o);
                    ptrdiff_t d = pt[t];
#define CCONV_FMA(p) a##p = _mm512_fmadd_ps(_mm512_set1_ps(bs[p][d]), wv, a##p);
                    CCONV_D8(CCONV_FMA)
#undef CCONV_FMA
                }
            } else {
                for (ptrdiff_t t = 0; t < K; t++) {
                    __m512 wv = _mm512_loadu_ps(w + t * cout + o);
#define CCONV_FMA(p) a##p = _mm512_fmadd_ps(_mm512_set1_ps(bs[p][ps[p][t]]), wv, a##p);
                    CCONV_D8(CCONV_FMA)
#undef CCONV_FMA
                }
            }
            float *yo = y + ow0 * cout + o;
#define CCONV_STORE(p) if (p < np) _mm512_storeu_ps(yo + p * cout, a##p);
            CCONV_D8(CCONV_STORE)
#undef CCONV_STORE
        }
    }
}

/* dW of one output row: dw (Kpad x cout) += taps^T (K x OW) . dy (OW x cout), and
   db (cout) += the sum of dy over the row. Outputs go 32 at a time (16 accumulators:
   8 taps x 2 vectors), the last 16 of a cout that is an odd multiple of 16 alone. */
CCONV_AVX512 static void cconv_direct_dw_row(const cconv_dgeom *g, const float *const *base,
                                             const ptrdiff_t *const *po, const ptrdiff_t *off,
                                             const float *dy, float *dw, float *db) {
    ptrdiff_t OW = g->OW, cout = g->cout;
    for (ptrdiff_t o = 0; o < cout; o += 16) {
        __m512 s = _mm512_setzero_ps();
        for (ptrdiff_t ow = 0; ow < OW; ow++) s = _mm512_add_ps(s, _mm512_loadu_ps(dy + ow * cout + o));
        _mm512_storeu_ps(db + o, _mm512_add_ps(_mm512_loadu_ps(db + o), s));
    }
    ptrdiff_t o = 0;
    for (; o + 32 <= cout; o += 32) {
        for (ptrdiff_t t0 = 0; t0 < g->Kpad; t0 += 8) {
            float *acc = dw + t0 * cout + o;
#define CCONV_LOAD(j) __m512 a##j = _mm512_loadu_ps(acc + j * cout);                   \
                      __m512 b##j = _mm512_loadu_ps(acc + j * cout + 16);              \
                      ptrdiff_t d##j = off[t0 + j];
            CCONV_D8(CCONV_LOAD)
#undef CCONV_LOAD
            for (ptrdiff_t ow = 0; ow < OW; ow++) {
                __m512 g0 = _mm512_loadu_ps(dy + ow * cout + o);
                __m512 g1 = _mm512_loadu_ps(dy + ow * cout + o + 16);
                const float *bp = base[ow];
                const ptrdiff_t *pp = po[ow];
                if (pp == off) {       /* window inside the image: offsets in registers */
#define CCONV_FMA(j) { __m512 v = _mm512_set1_ps(bp[d##j]);                             \
                       a##j = _mm512_fmadd_ps(v, g0, a##j); b##j = _mm512_fmadd_ps(v, g1, b##j); }
                    CCONV_D8(CCONV_FMA)
#undef CCONV_FMA
                } else {
#define CCONV_FMA(j) { __m512 v = _mm512_set1_ps(bp[pp[t0 + j]]);                       \
                       a##j = _mm512_fmadd_ps(v, g0, a##j); b##j = _mm512_fmadd_ps(v, g1, b##j); }
                    CCONV_D8(CCONV_FMA)
#undef CCONV_FMA
                }
            }
#define CCONV_STORE(j) _mm512_storeu_ps(acc + j * cout, a##j); _mm512_storeu_ps(acc + j * cout + 16, b##j);
            CCONV_D8(CCONV_STORE)
#undef CCONV_STORE
        }
    }
    if (o < cout) {
        for (ptrdiff_t t0 = 0; t0 < g->Kpad; t0 += 8) {
            float *acc = dw + t0 * cout + o;
#define CCONV_LOAD(j) __m512 a##j = _mm512_loadu_ps(acc + j * cout); ptrdiff_t d##j = off[t0 + j];
            CCONV_D8(CCONV_LOAD)
#undef CCONV_LOAD
            for (ptrdiff_t ow = 0; ow < OW; ow++) {
                __m512 g0 = _mm512_loadu_ps(dy + ow * cout + o);
                const float *bp = base[ow];
                const ptrdiff_t *pp = po[ow];
                if (pp == off) {
#define CCONV_FMA(j) a##j = _mm512_fmadd_ps(_mm512_set1_ps(bp[d##j]), g0, a##j);
                    CCONV_D8(CCONV_FMA)
#undef CCONV_FMA
                } else {
#define CCONV_FMA(j) a##j = _mm512_fmadd_ps(_mm512_set1_ps(bp[pp[t0 + j]]), g0, a##j);
                    CCONV_D8(CCONV_FMA)
#undef CCONV_FMA
                }
            }
#define CCONV_STORE(j) _mm512_storeu_ps(acc + j * cout, a##j);
            CCONV_D8(CCONV_STORE)
#undef CCONV_STORE
        }
    }
}
#undef CCONV_D8
#else
static void cconv_direct_fwd_row(const cconv_dgeom *g, const float *const *base,
                                 const ptrdiff_t *const *po,
                                 const float *w, const float *b, float *y) {
    (void)g; (void)base; (void)po; (void)w; (void)b; (void)y;   /* never called */
}
static void cconv_direct_dw_row(const cconv_dgeom *g, const float *const *base,
                                const ptrdiff_t *const *po, const ptrdiff_t *off,
                                const float *dy, float *dw, float *db) {
    (void)g; (void)base; (void)po; (void)off; (void)dy; (void)dw; (void)db;  /* never called */
}
#endif  /* CCONV_X86 */

#endif  /* CCONV_CONV_DIRECT_H */
