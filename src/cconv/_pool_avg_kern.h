/* The average-pooling kernels of _pool_avg.h, written once over a vector of VLANES float32
 * lanes (the helpers of _simd.h) and compiled once per instruction set: _pool_avg.h
 * includes this file with VLANES, KATTR and KSFX defined; it #undefs them at its end.
 * Channels go VLANES at a time, the last partial vector through a lane mask. The
 * arithmetic is the generic loops' (_pool.pyx), in the same order and without fused
 * multiply-adds, so every x86 level gives the same bits (aarch64 compilers may fuse the
 * generic loops' multiply-adds). */

/* Output row (n, oh), whose windows cover input rows h0..h1 and columns clipped to [0, W):
   forward (bwd = 0): dst[ow, c] = the sum of src = x over the window times inv;
   backward (bwd = 1): dst = dx over each window += src = dy[ow, c] * inv (dx zeroed by the
   caller). */
KATTR static void CCONV_KNAME(cconv_avgpool_row)(
        int bwd, const float *src, float *dst, ptrdiff_t n, ptrdiff_t H, ptrdiff_t W,
        ptrdiff_t C, ptrdiff_t OW, ptrdiff_t h0, ptrdiff_t h1, ptrdiff_t KW, ptrdiff_t sw,
        ptrdiff_t pl, float inv) {
    ptrdiff_t full_end = C - C % VLANES;
    CCONV_VMASK m = CCONV_VEC(mask)(C % VLANES ? C % VLANES : 1);
    CCONV_VTYPE vinv = CCONV_VEC(set1)(inv);
#define CCONV_LD(p) (full ? CCONV_VEC(load)(p) : CCONV_VEC(loadm)((p), m))
#define CCONV_ST(p, v) if (full) CCONV_VEC(store)((p), (v)); else CCONV_VEC(storem)((p), m, (v));
    for (ptrdiff_t ow = 0; ow < OW; ow++) {
        ptrdiff_t w0 = ow * sw - pl, w1 = w0 + KW;
        if (w0 < 0) w0 = 0;
        if (w1 > W) w1 = W;
        for (ptrdiff_t c = 0; c < C; c += VLANES) {
            int full = c < full_end;
            CCONV_VTYPE acc = bwd ? CCONV_VEC(mul)(CCONV_LD(src + ow * C + c), vinv)
                                  : CCONV_VEC(zero)();
            for (ptrdiff_t ih = h0; ih < h1; ih++)
                for (ptrdiff_t iw = w0; iw < w1; iw++) {
                    ptrdiff_t at = ((n * H + ih) * W + iw) * C + c;
                    if (bwd) {
                        CCONV_ST(dst + at, CCONV_VEC(add)(CCONV_LD(dst + at), acc))
                    } else {
                        acc = CCONV_VEC(add)(acc, CCONV_LD(src + at));
                    }
                }
            if (!bwd) {
                CCONV_ST(dst + ow * C + c, CCONV_VEC(mul)(acc, vinv))
            }
        }
    }
#undef CCONV_LD
#undef CCONV_ST
}

#undef VLANES
#undef KATTR
#undef KSFX
