/* Explicitly vectorised max pooling for the common case: float32 activations, int32
 * argmax, and windows that tile the input (stride == pool size, no padding), with the
 * channel count a multiple of the vector width (16 for AVX-512, 8 for AVX2).
 *
 * Why not leave it to the compiler: the generic loops in _core.pyx keep the running
 * maximum in memory (y and argmax are read back for every window element) and their
 * stores go through the cache, so each output line is first read from memory (a
 * "read for ownership") before it is overwritten. Here the maximum of a window is kept
 * in registers, and large outputs are written with non-temporal (streaming) stores,
 * which skip that read: max pooling moves a lot of bytes for very little arithmetic, so
 * the bytes are what counts.
 *
 * Semantics are those of the generic loops: the window is scanned in row-major order, a
 * strictly greater value or a NaN takes the place (ties keep the first element, NaN
 * propagates), and argmax holds the flat index h * W + w of the winner in its plane.
 *
 * Every entry point returns 0 when it cannot handle the call (no such instruction set
 * on this CPU or in this build, or C not a multiple of the vector width); the caller
 * then runs the generic loop. The level comes from simd_level() (cconv._cpu).
 */
#ifndef CCONV_POOL_SIMD_H
#define CCONV_POOL_SIMD_H

#include <stddef.h>
#include <stdint.h>
#include "_simd.h"

#if CCONV_X86
/* ---------------------------------------------------------------- AVX-512F, 16 lanes */

CCONV_AVX512 static void cconv_pool_fwd_avx512(
        const float *x, float *y, int *a, ptrdiff_t n, ptrdiff_t oh, ptrdiff_t H,
        ptrdiff_t W, ptrdiff_t C, ptrdiff_t OW, ptrdiff_t KH, ptrdiff_t KW, int stream) {
    stream = stream && ((uintptr_t)y % 64 == 0) && ((uintptr_t)a % 64 == 0);
    for (ptrdiff_t ow = 0; ow < OW; ow++) {
        for (ptrdiff_t c = 0; c < C; c += 16) {
            const float *x0 = x + ((n * H + oh * KH) * W + ow * KW) * C + c;
            __m512 best = _mm512_loadu_ps(x0);
            __m512i arg = _mm512_set1_epi32((int)(oh * KH * W + ow * KW));
            for (ptrdiff_t kh = 0; kh < KH; kh++) {
                for (ptrdiff_t kw = (kh == 0); kw < KW; kw++) {
                    __m512 v = _mm512_loadu_ps(x0 + (kh * W + kw) * C);
                    __mmask16 take = _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ)
                                   | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
                    best = _mm512_mask_mov_ps(best, take, v);
                    arg = _mm512_mask_mov_epi32(
                        arg, take, _mm512_set1_epi32((int)((oh * KH + kh) * W + ow * KW + kw)));
                }
            }
            float *yo = y + ow * C + c;
            int *ao = a + ow * C + c;
            if (stream) {
                _mm512_stream_ps(yo, best);
                _mm512_stream_si512((void *)ao, arg);
            } else {
                _mm512_storeu_ps(yo, best);
                _mm512_storeu_si512((void *)ao, arg);
            }
        }
    }
    if (stream) _mm_sfence();
}

CCONV_AVX512 static long long cconv_pool_bwd_avx512(
        float *dx, const float *dy, const int *a, ptrdiff_t n, ptrdiff_t oh, ptrdiff_t OH,
        ptrdiff_t OW, ptrdiff_t H, ptrdiff_t W, ptrdiff_t C, ptrdiff_t KH, ptrdiff_t KW,
        int stream) {
    long long matched = 0;
    stream = stream && ((uintptr_t)dx % 64 == 0);
    for (ptrdiff_t ow = 0; ow < OW; ow++) {
        const float *g = dy + ((n * OH + oh) * OW + ow) * C;
        const int *ai = a + ((n * OH + oh) * OW + ow) * C;
        for (ptrdiff_t kh = 0; kh < KH; kh++) {
            for (ptrdiff_t kw = 0; kw < KW; kw++) {
                ptrdiff_t ih = oh * KH + kh, iw = ow * KW + kw;
                __m512i idx = _mm512_set1_epi32((int)(ih * W + iw));
                float *d = dx + ((n * H + ih) * W + iw) * C;
                for (ptrdiff_t c = 0; c < C; c += 16) {
                    __mmask16 m = _mm512_cmpeq_epi32_mask(_mm512_loadu_si512(ai + c), idx);
                    __m512 v = _mm512_maskz_mov_ps(m, _mm512_loadu_ps(g + c));
                    if (stream) _mm512_stream_ps(d + c, v);
                    else _mm512_storeu_ps(d + c, v);
                    matched += __builtin_popcount((unsigned)m);
                }
            }
        }
    }
    if (stream) _mm_sfence();
    return matched;
}

/* ---------------------------------------------------------------- AVX2, 8 lanes */

/* Cached stores only: 32-byte streaming stores, alternating between y and argmax,
   measured slower here (8.3 vs 5.6 ms on the paper's first pool). */
CCONV_AVX2 static void cconv_pool_fwd_avx2(
        const float *x, float *y, int *a, ptrdiff_t n, ptrdiff_t oh, ptrdiff_t H,
        ptrdiff_t W, ptrdiff_t C, ptrdiff_t OW, ptrdiff_t KH, ptrdiff_t KW) {
    for (ptrdiff_t ow = 0; ow < OW; ow++) {
        for (ptrdiff_t c = 0; c < C; c += 8) {
            const float *x0 = x + ((n * H + oh * KH) * W + ow * KW) * C + c;
            __m256 best = _mm256_loadu_ps(x0);
            __m256 arg = _mm256_castsi256_ps(_mm256_set1_epi32((int)(oh * KH * W + ow * KW)));
            for (ptrdiff_t kh = 0; kh < KH; kh++) {
                for (ptrdiff_t kw = (kh == 0); kw < KW; kw++) {
                    __m256 v = _mm256_loadu_ps(x0 + (kh * W + kw) * C);
                    __m256 take = _mm256_or_ps(_mm256_cmp_ps(v, best, _CMP_GT_OQ),
                                               _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
                    best = _mm256_blendv_ps(best, v, take);
                    arg = _mm256_blendv_ps(arg, _mm256_castsi256_ps(_mm256_set1_epi32(
                        (int)((oh * KH + kh) * W + ow * KW + kw))), take);
                }
            }
            float *yo = y + ow * C + c;
            int *ao = a + ow * C + c;
            _mm256_storeu_ps(yo, best);
            _mm256_storeu_ps((float *)ao, arg);
        }
    }
}

CCONV_AVX2 static long long cconv_pool_bwd_avx2(
        float *dx, const float *dy, const int *a, ptrdiff_t n, ptrdiff_t oh, ptrdiff_t OH,
        ptrdiff_t OW, ptrdiff_t H, ptrdiff_t W, ptrdiff_t C, ptrdiff_t KH, ptrdiff_t KW,
        int stream) {
    long long matched = 0;
    stream = stream && ((uintptr_t)dx % 32 == 0);
    for (ptrdiff_t ow = 0; ow < OW; ow++) {
        const float *g = dy + ((n * OH + oh) * OW + ow) * C;
        const int *ai = a + ((n * OH + oh) * OW + ow) * C;
        for (ptrdiff_t kh = 0; kh < KH; kh++) {
            for (ptrdiff_t kw = 0; kw < KW; kw++) {
                ptrdiff_t ih = oh * KH + kh, iw = ow * KW + kw;
                __m256i idx = _mm256_set1_epi32((int)(ih * W + iw));
                float *d = dx + ((n * H + ih) * W + iw) * C;
                for (ptrdiff_t c = 0; c < C; c += 8) {
                    __m256 m = _mm256_castsi256_ps(_mm256_cmpeq_epi32(
                        _mm256_loadu_si256((const __m256i *)(ai + c)), idx));
                    __m256 v = _mm256_and_ps(m, _mm256_loadu_ps(g + c));
                    if (stream) _mm256_stream_ps(d + c, v);
                    else _mm256_storeu_ps(d + c, v);
                    matched += __builtin_popcount((unsigned)_mm256_movemask_ps(m));
                }
            }
        }
    }
    if (stream) _mm_sfence();
    return matched;
}
#endif  /* CCONV_X86 */

/* The kernel that serves C channels at `level`: 2 = AVX-512, 1 = AVX2, 0 = none (the
   generic loop). The one statement of that choice (the probe record names the path by it). */
static inline int cconv_pool_simd_path(int level, ptrdiff_t C) {
#if CCONV_X86
    if (level >= 2 && C % 16 == 0) return 2;
    if (level >= 1 && C % 8 == 0) return 1;
#endif
    (void)level; (void)C;
    return 0;
}

/* One output row (n, oh) of a tiled max pool. Returns 1 if done, 0 if the caller must
   use the generic loop. `level` is simd_level() (cconv._cpu), read once per call. */
static int cconv_pool_fwd_simd(int level, const float *x, float *y, int *a, ptrdiff_t n,
                               ptrdiff_t oh, ptrdiff_t H, ptrdiff_t W, ptrdiff_t C,
                               ptrdiff_t OW, ptrdiff_t KH, ptrdiff_t KW, int stream) {
#if CCONV_X86
    int path = cconv_pool_simd_path(level, C);
    if (path == 2) {
        cconv_pool_fwd_avx512(x, y, a, n, oh, H, W, C, OW, KH, KW, stream);
        return 1;
    }
    if (path == 1) {
        cconv_pool_fwd_avx2(x, y, a, n, oh, H, W, C, OW, KH, KW);
        return 1;
    }
#endif
    (void)level; (void)x; (void)y; (void)a; (void)n; (void)oh; (void)H; (void)W; (void)C;
    (void)OW; (void)KH; (void)KW; (void)stream;
    return 0;
}

/* Backward of one output row (n, oh) of a tiled max pool: every input unit under the
   row's windows is written, dy where argmax names it and 0 elsewhere. Returns the
   number of argmax entries that named a unit of their own window, or -1 if the caller
   must use the generic loop. */
static long long cconv_pool_bwd_simd(int level, float *dx, const float *dy, const int *a,
                                     ptrdiff_t n, ptrdiff_t oh, ptrdiff_t OH, ptrdiff_t OW,
                                     ptrdiff_t H, ptrdiff_t W, ptrdiff_t C, ptrdiff_t KH,
                                     ptrdiff_t KW, int stream) {
#if CCONV_X86
    int path = cconv_pool_simd_path(level, C);
    if (path == 2)
        return cconv_pool_bwd_avx512(dx, dy, a, n, oh, OH, OW, H, W, C, KH, KW, stream);
    if (path == 1)
        return cconv_pool_bwd_avx2(dx, dy, a, n, oh, OH, OW, H, W, C, KH, KW, stream);
#endif
    (void)level; (void)dx; (void)dy; (void)a; (void)n; (void)oh; (void)OH; (void)OW;
    (void)H; (void)W; (void)C; (void)KH; (void)KW; (void)stream;
    return -1;
}

#endif  /* CCONV_POOL_SIMD_H */
