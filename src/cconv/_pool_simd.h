/* Explicitly vectorised max pooling for the common case: float32 activations, int32
 * argmax, and windows that tile the input (stride == pool size, no padding), with the
 * channel count a multiple of the vector width (16 for AVX-512, 8 for AVX2, 4 for NEON).
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

/* The kernels (_pool_simd_kern.h, one copy per instruction set). */
#if CCONV_X86
#define VLANES 16
#define SALIGN_FWD 64
#define SALIGN_BWD 64
#define KATTR CCONV_AVX512
#define KSFX _avx512
#include "_pool_simd_kern.h"

#define VLANES 8
#define SALIGN_FWD 0
#define SALIGN_BWD 32
#define KATTR CCONV_AVX2
#define KSFX _avx2
#include "_pool_simd_kern.h"
#endif

#if CCONV_NEON
#define VLANES 4
#define SALIGN_FWD 0
#define SALIGN_BWD 0
#define KATTR
#define KSFX _neon
#include "_pool_simd_kern.h"
#endif

/* The kernel that serves C channels at `level`: 2 = AVX-512, 1 = AVX2 (NEON on aarch64),
   0 = none (the generic loop). The one statement of that choice (the probe record names
   the path by it; its "_avx2" ids stand for level 1, NEON included). */
static inline int cconv_pool_simd_path(int level, ptrdiff_t C) {
#if CCONV_X86
    if (level >= 2 && C % 16 == 0) return 2;
    if (level >= 1 && C % 8 == 0) return 1;
#elif CCONV_NEON
    if (level >= 1 && C % 4 == 0) return 1;
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
        cconv_pool_fwd_avx2(x, y, a, n, oh, H, W, C, OW, KH, KW, stream);
        return 1;
    }
#elif CCONV_NEON
    if (cconv_pool_simd_path(level, C) == 1) {
        cconv_pool_fwd_neon(x, y, a, n, oh, H, W, C, OW, KH, KW, stream);
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
#elif CCONV_NEON
    if (cconv_pool_simd_path(level, C) == 1)
        return cconv_pool_bwd_neon(dx, dy, a, n, oh, OH, OW, H, W, C, KH, KW, stream);
#endif
    (void)level; (void)dx; (void)dy; (void)a; (void)n; (void)oh; (void)OH; (void)OW;
    (void)H; (void)W; (void)C; (void)KH; (void)KW; (void)stream;
    return -1;
}

#endif  /* CCONV_POOL_SIMD_H */
