/* Average pooling of float32 rows with the vector kernels of AVX-512F, AVX2 or NEON
 * (_pool_avg_kern.h, one copy per instruction set), chosen from simd_level() (cconv._cpu).
 * The entry point returns 0 when `level` has no kernel here (the caller then runs the
 * generic loops of _pool.pyx, which compute the same bits on x86). */
#ifndef CCONV_POOL_AVG_H
#define CCONV_POOL_AVG_H

#include <stddef.h>
#include "_simd.h"

#if CCONV_X86
#define VLANES 16
#define KATTR CCONV_AVX512
#define KSFX _avx512
#include "_pool_avg_kern.h"
#define VLANES 8
#define KATTR CCONV_AVX2
#define KSFX _avx2
#include "_pool_avg_kern.h"
#endif
#if CCONV_NEON
#define VLANES 4
#define KATTR
#define KSFX _neon
#include "_pool_avg_kern.h"
#endif

/* The kernel of `level` for output row (n, oh), forward (bwd = 0: x -> y) or backward
   (bwd = 1: dy -> dx, accumulated). */
static int cconv_avgpool_row_simd(int level, int bwd, const float *src, float *dst,
                                  ptrdiff_t n, ptrdiff_t H, ptrdiff_t W, ptrdiff_t C,
                                  ptrdiff_t OW, ptrdiff_t h0, ptrdiff_t h1, ptrdiff_t KW,
                                  ptrdiff_t sw, ptrdiff_t pl, float inv) {
#if CCONV_X86
    if (level >= 2) {
        cconv_avgpool_row_avx512(bwd, src, dst, n, H, W, C, OW, h0, h1, KW, sw, pl, inv);
        return 1;
    }
    if (level >= 1) {
        cconv_avgpool_row_avx2(bwd, src, dst, n, H, W, C, OW, h0, h1, KW, sw, pl, inv);
        return 1;
    }
#elif CCONV_NEON
    if (level >= 1) {
        cconv_avgpool_row_neon(bwd, src, dst, n, H, W, C, OW, h0, h1, KW, sw, pl, inv);
        return 1;
    }
#endif
    (void)level; (void)bwd; (void)src; (void)dst; (void)n; (void)H; (void)W; (void)C;
    (void)OW; (void)h0; (void)h1; (void)KW; (void)sw; (void)pl; (void)inv;
    return 0;
}

#endif  /* CCONV_POOL_AVG_H */
