/* The generic max-pool loops, one output row (n, oh) at a time, for float/double values
 * and int/long long argmax (the indices are int32 unless a plane has 2**31 units or more).
 *
 * Semantics shared with the vectorised kernels of _pool_simd.h: each window is scanned in
 * row-major order starting from its first in-bounds element; a strictly greater value or
 * a NaN takes the place, so ties keep the first element and NaN propagates; argmax holds
 * the flat index h * W + w of the winner in its (n, c) plane. The loops are branch-free
 * so that the compiler vectorises them over the channels.
 */
#ifndef CCONV_POOL_ROWS_H
#define CCONV_POOL_ROWS_H

#include <stddef.h>
#include "_simd.h"

/* Forward of row (n, oh): for every ow and channel, the running max over the window
   (input rows h0..h1, columns from ow*sw - pl, clipped to [0, W)). */
#define CCONV_MAXPOOL_ROW(NAME, T, I)                                                  \
CCONV_MULTIVERSION static void NAME(                                                 \
        const T *__restrict x, T *__restrict y, I *__restrict a,                     \
        ptrdiff_t n, ptrdiff_t H, ptrdiff_t W, ptrdiff_t C, ptrdiff_t OW,            \
        ptrdiff_t h0, ptrdiff_t h1, ptrdiff_t KW, ptrdiff_t sw, ptrdiff_t pl) {      \
    for (ptrdiff_t ow = 0; ow < OW; ow++) {                                          \
        ptrdiff_t w0 = ow * sw - pl, w1 = w0 + KW;                                   \
        if (w0 < 0) w0 = 0;                                                          \
        if (w1 > W) w1 = W;                                                          \
        T *yo = y + ow * C;                                                          \
        I *ao = a + ow * C;                                                          \
        const T *xi = x + ((n * H + h0) * W + w0) * C;                               \
        I first = (I)(h0 * W + w0);                                                  \
        for (ptrdiff_t c = 0; c < C; c++) { yo[c] = xi[c]; ao[c] = first; }          \
        for (ptrdiff_t ih = h0; ih < h1; ih++) {                                     \
            for (ptrdiff_t iw = (ih == h0 ? w0 + 1 : w0); iw < w1; iw++) {           \
                const T *xv = x + ((n * H + ih) * W + iw) * C;                       \
                I idx = (I)(ih * W + iw);                                            \
                for (ptrdiff_t c = 0; c < C; c++) {                                  \
                    T v = xv[c], b = yo[c];                                          \
                    int take = (v > b) | (v != v);                                   \
                    yo[c] = take ? v : b;                                            \
                    ao[c] = take ? idx : ao[c];                                      \
                }                                                                    \
            }                                                                        \
        }                                                                            \
    }                                                                                \
}
CCONV_MAXPOOL_ROW(cconv_maxpool_row_fi, float, int)
CCONV_MAXPOOL_ROW(cconv_maxpool_row_fl, float, long long)
CCONV_MAXPOOL_ROW(cconv_maxpool_row_di, double, int)
CCONV_MAXPOOL_ROW(cconv_maxpool_row_dl, double, long long)

/* Backward of row (n, oh) when the windows tile the input (stride == pool size, no
   padding): every input unit under the row's windows is written once, dy where argmax
   names it and 0 elsewhere. Returns how many argmax entries named a unit of their own
   window (the caller checks that it is all of them). */
#define CCONV_MAXPOOL_BWD_ROW(NAME, T, I)                                                \
CCONV_MULTIVERSION static long long NAME(                                              \
        T *__restrict dx, const T *__restrict dy, const I *__restrict a,               \
        ptrdiff_t n, ptrdiff_t oh, ptrdiff_t OH, ptrdiff_t OW, ptrdiff_t H,            \
        ptrdiff_t W, ptrdiff_t C, ptrdiff_t KH, ptrdiff_t KW) {                        \
    long long matched = 0;                                                             \
    for (ptrdiff_t ow = 0; ow < OW; ow++) {                                            \
        const T *g = dy + ((n * OH + oh) * OW + ow) * C;                               \
        const I *ai = a + ((n * OH + oh) * OW + ow) * C;                               \
        for (ptrdiff_t kh = 0; kh < KH; kh++) {                                        \
            ptrdiff_t ih = oh * KH + kh;                                               \
            for (ptrdiff_t kw = 0; kw < KW; kw++) {                                    \
                ptrdiff_t iw = ow * KW + kw;                                           \
                I idx = (I)(ih * W + iw);                                              \
                T *d = dx + ((n * H + ih) * W + iw) * C;                               \
                for (ptrdiff_t c = 0; c < C; c++) {                                    \
                    int m = ai[c] == idx;                                              \
                    d[c] = m ? g[c] : (T)0;                                            \
                    matched += m;                                                      \
                }                                                                      \
            }                                                                          \
        }                                                                              \
    }                                                                                  \
    return matched;                                                                    \
}
CCONV_MAXPOOL_BWD_ROW(cconv_maxpool_bwd_row_fi, float, int)
CCONV_MAXPOOL_BWD_ROW(cconv_maxpool_bwd_row_fl, float, long long)
CCONV_MAXPOOL_BWD_ROW(cconv_maxpool_bwd_row_di, double, int)
CCONV_MAXPOOL_BWD_ROW(cconv_maxpool_bwd_row_dl, double, long long)

#endif  /* CCONV_POOL_ROWS_H */
