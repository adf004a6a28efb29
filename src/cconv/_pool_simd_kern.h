/* The max-pool kernels of _pool_simd.h, written once over a vector of VLANES float32 lanes
 * (the helpers of _simd.h, the argmax's among them) and compiled once per instruction set:
 * _pool_simd.h includes this file with
 *
 *   VLANES     the vector width (C is a multiple of it)
 *   SALIGN_FWD the alignment in bytes that the forward's non-temporal stores need, or 0:
 *              the forward never streams (AVX2: 32-byte streaming stores alternating
 *              between y and argmax measured slower here, 8.3 vs 5.6 ms on the paper's
 *              first pool; NEON: no such hint taken)
 *   SALIGN_BWD the same for the backward's stores to dx
 *   KATTR      the target attribute, KSFX the suffix of the functions' names
 *
 * defined, and #undefs them at its end. */

#define VEC(op) CCONV_VEC(op)

/* One output row (n, oh): y and argmax of each window, the running maximum and its index
   in registers; the scan and its rules are _pool_simd.h's. */
KATTR static void CCONV_KNAME(cconv_pool_fwd)(
        const float *x, float *y, int *a, ptrdiff_t n, ptrdiff_t oh, ptrdiff_t H,
        ptrdiff_t W, ptrdiff_t C, ptrdiff_t OW, ptrdiff_t KH, ptrdiff_t KW, int stream) {
#if SALIGN_FWD
    stream = stream && (uintptr_t)y % SALIGN_FWD == 0 && (uintptr_t)a % SALIGN_FWD == 0;
#else
    stream = 0;
#endif
    for (ptrdiff_t ow = 0; ow < OW; ow++) {
        for (ptrdiff_t c = 0; c < C; c += VLANES) {
            const float *x0 = x + ((n * H + oh * KH) * W + ow * KW) * C + c;
            CCONV_VTYPE best = VEC(load)(x0);
            CCONV_ITYPE arg = VEC(iset1)((int)(oh * KH * W + ow * KW));
            for (ptrdiff_t kh = 0; kh < KH; kh++) {
                for (ptrdiff_t kw = (kh == 0); kw < KW; kw++) {
                    CCONV_VTYPE v = VEC(load)(x0 + (kh * W + kw) * C);
                    CCONV_PTYPE take = VEC(take)(best, v);
                    best = VEC(sel)(take, v, best);
                    arg = VEC(isel)(take, VEC(iset1)((int)((oh * KH + kh) * W + ow * KW + kw)),
                                    arg);
                }
            }
            if (stream) {
                VEC(stream)(y + ow * C + c, best);
                VEC(istream)(a + ow * C + c, arg);
            } else {
                VEC(store)(y + ow * C + c, best);
                VEC(istore)(a + ow * C + c, arg);
            }
        }
    }
#if SALIGN_FWD
    if (stream) _mm_sfence();
#endif
}

/* Backward of one output row (n, oh): every unit under its windows gets dy where the
   argmax names it, else +0. Returns how many argmax entries named a unit of their window. */
KATTR static long long CCONV_KNAME(cconv_pool_bwd)(
        float *dx, const float *dy, const int *a, ptrdiff_t n, ptrdiff_t oh, ptrdiff_t OH,
        ptrdiff_t OW, ptrdiff_t H, ptrdiff_t W, ptrdiff_t C, ptrdiff_t KH, ptrdiff_t KW,
        int stream) {
    long long matched = 0;
#if SALIGN_BWD
    stream = stream && (uintptr_t)dx % SALIGN_BWD == 0;
#else
    stream = 0;
#endif
    for (ptrdiff_t ow = 0; ow < OW; ow++) {
        const float *g = dy + ((n * OH + oh) * OW + ow) * C;
        const int *ai = a + ((n * OH + oh) * OW + ow) * C;
        for (ptrdiff_t kh = 0; kh < KH; kh++) {
            for (ptrdiff_t kw = 0; kw < KW; kw++) {
                ptrdiff_t ih = oh * KH + kh, iw = ow * KW + kw;
                CCONV_ITYPE idx = VEC(iset1)((int)(ih * W + iw));
                float *d = dx + ((n * H + ih) * W + iw) * C;
                for (ptrdiff_t c = 0; c < C; c += VLANES) {
                    CCONV_PTYPE m = VEC(ieq)(ai + c, idx);
                    CCONV_VTYPE v = VEC(keep)(m, VEC(load)(g + c));
                    if (stream) VEC(stream)(d + c, v);
                    else VEC(store)(d + c, v);
                    matched += VEC(count)(m);
                }
            }
        }
    }
#if SALIGN_BWD
    if (stream) _mm_sfence();
#endif
    return matched;
}

#undef VEC
#undef VLANES
#undef SALIGN_FWD
#undef SALIGN_BWD
#undef KATTR
#undef KSFX
