/* cconv's geometry of a convolution or pooling layer, and the error codes of its kernels.
 *
 * Part of cconv's C and Cython API (see cconv.h and the .pxd files beside cconv's modules);
 * include it with the compiler flag -I "$(python -c 'import cconv; print(cconv.get_include())')".
 *
 * Layout: activations NHWC, convolution weights HWIO (KH, KW, C / groups, Cout), all
 * arrays C-contiguous. A "convolution" is a cross-correlation:
 *     y[n, i, j, o] = b[o] + sum_{m, k, c} x[n, i*sh + m*dh - pt, j*sw + k*dw - pl, c] w[m, k, c, o]
 * with zeros outside the input, and every output size follows
 *     OH = floor((H + pt + pb - dh * (KH - 1) - 1) / sh) + 1     (OW likewise).
 *
 * Every kernel checks the geometry it is given (cconv_conv_geom_check or
 * cconv_pool_geom_check below) before it touches memory, and returns one of the codes
 * below; 0 means success. The geometry cannot say how large the caller's buffers are:
 * each kernel documents the shapes it reads and writes, in elements, from these fields.
 */
#ifndef CCONV_GEOMETRY_H
#define CCONV_GEOMETRY_H

#include <stddef.h>
#include <stdint.h>

/* Error codes (negative; CCONV_OK is 0). A failed check writes nothing. */
#define CCONV_OK             0
#define CCONV_ERR_VALUE     (-1)  /* a size, stride, dilation, padding, group count or thread
                                     count out of range, or a required pointer is NULL */
#define CCONV_ERR_GEOMETRY  (-2)  /* the (dilated) window is larger than the padded input, OH
                                     or OW differ from the formula, or (pools) a padding is
                                     not smaller than the window */
#define CCONV_ERR_CHANNELS  (-3)  /* C or Cout not divisible by groups (pools: Cout != C) */
#define CCONV_ERR_TOO_LARGE (-4)  /* a size beyond the 32-bit BLAS interface or beyond the
                                     address space (KH*KW*C/groups, Cout or C > 2**31 - 1) */
#define CCONV_ERR_WORKSPACE (-5)  /* the workspace is smaller than the kernel needs, or not
                                     aligned to 64 bytes */
#define CCONV_ERR_ARGMAX    (-6)  /* an argmax entry outside [0, H*W): that gradient was
                                     dropped; dx is written in bounds only, and incomplete */
#define CCONV_ERR_NOMEM     (-7)  /* out of memory */
#define CCONV_ERR_BLAS      (-8)  /* scipy's BLAS could not be loaded */

/* The largest value of any size, stride, padding or dilation (and of C, Cout and
   KH*KW*C/groups, the dimensions of the GEMMs, whose interface is 32-bit). */
#define CCONV_SIZE_MAX 2147483647

typedef struct cconv_geom {
    ptrdiff_t N, H, W, C;        /* input (N, H, W, C); N may be 0, the others >= 1 */
    ptrdiff_t KH, KW;            /* window (kernel or pool) >= 1 */
    ptrdiff_t OH, OW, Cout;      /* output (N, OH, OW, Cout), OH and OW from the formula;
                                    pools: Cout == C */
    ptrdiff_t sh, sw;            /* stride >= 1 */
    ptrdiff_t pt, pb, pl, pr;    /* zero padding top, bottom, left, right >= 0 */
    ptrdiff_t dh, dw;            /* dilation >= 1 (pools: 1) */
    ptrdiff_t groups;            /* >= 1, divides C and Cout (pools: 1) */
} cconv_geom;

/* floor((size + before + after - dilation*(kernel-1) - 1) / stride) + 1, or 0 when the
   dilated window does not fit into the padded size (arguments already range-checked). */
static inline ptrdiff_t cconv_output_size(ptrdiff_t size, ptrdiff_t kernel, ptrdiff_t stride,
                                          ptrdiff_t before, ptrdiff_t after, ptrdiff_t dilation) {
    ptrdiff_t span = dilation * (kernel - 1) + 1, padded = size + before + after;
    return span > padded ? 0 : (padded - span) / stride + 1;
}

/* The sizes alone: N >= 0, H, W, C, Cout >= 1, OH, OW >= 0, every array addressable. */
static inline int cconv_sizes_check(const cconv_geom *g) {
    const ptrdiff_t M = CCONV_SIZE_MAX;
    if (g == NULL || g->N < 0 || g->H < 1 || g->W < 1 || g->C < 1 || g->Cout < 1 ||
        g->OH < 0 || g->OW < 0)
        return CCONV_ERR_VALUE;
    if (g->H > M || g->W > M || g->C > M || g->Cout > M || g->OH > M || g->OW > M)
        return CCONV_ERR_TOO_LARGE;
    /* The input and output arrays fit in the address space (in 8-byte elements). */
    if (g->N > PTRDIFF_MAX / 8 / g->H / g->W / g->C ||
        (g->OH && g->OW && g->N > PTRDIFF_MAX / 8 / g->OH / g->OW / g->Cout))
        return CCONV_ERR_TOO_LARGE;
    return CCONV_OK;
}

/* The checks common to both kinds of layer. */
static inline int cconv__geom_check(const cconv_geom *g) {
    const ptrdiff_t M = CCONV_SIZE_MAX;
    int err = cconv_sizes_check(g);
    if (err) return err;
    if (g->KH < 1 || g->KW < 1 || g->sh < 1 || g->sw < 1 || g->pt < 0 || g->pb < 0 ||
        g->pl < 0 || g->pr < 0 || g->dh < 1 || g->dw < 1 || g->groups < 1)
        return CCONV_ERR_VALUE;
    if (g->KH > M || g->KW > M || g->sh > M || g->sw > M || g->pt > M || g->pb > M ||
        g->pl > M || g->pr > M || g->dh > M || g->dw > M || g->groups > M)
        return CCONV_ERR_TOO_LARGE;
    if (g->dh * (g->KH - 1) + 1 > g->H + g->pt + g->pb ||
        g->dw * (g->KW - 1) + 1 > g->W + g->pl + g->pr ||
        g->OH != cconv_output_size(g->H, g->KH, g->sh, g->pt, g->pb, g->dh) ||
        g->OW != cconv_output_size(g->W, g->KW, g->sw, g->pl, g->pr, g->dw))
        return CCONV_ERR_GEOMETRY;
    return CCONV_OK;
}

/* A convolution's geometry: the common checks, groups dividing C and Cout, and the GEMM
   dimensions within 32 bits. */
static inline int cconv_conv_geom_check(const cconv_geom *g) {
    int err = cconv__geom_check(g);
    if (err) return err;
    if (g->C % g->groups || g->Cout % g->groups) return CCONV_ERR_CHANNELS;
    if (g->KH * g->KW > CCONV_SIZE_MAX / (g->C / g->groups)) return CCONV_ERR_TOO_LARGE;
    return CCONV_OK;
}

/* A pool's geometry: the common checks, no dilation or groups, Cout == C, and every
   padding smaller than the window (so that every window holds an input element). */
static inline int cconv_pool_geom_check(const cconv_geom *g) {
    int err = cconv__geom_check(g);
    if (err) return err;
    if (g->dh != 1 || g->dw != 1 || g->groups != 1) return CCONV_ERR_VALUE;
    if (g->Cout != g->C) return CCONV_ERR_CHANNELS;
    if (g->pt >= g->KH || g->pb >= g->KH || g->pl >= g->KW || g->pr >= g->KW)
        return CCONV_ERR_GEOMETRY;
    return CCONV_OK;
}

/* Fill *g for a convolution (OH and OW from the formula) and check it. */
static inline int cconv_conv_geom(cconv_geom *g, ptrdiff_t N, ptrdiff_t H, ptrdiff_t W,
                                  ptrdiff_t C, ptrdiff_t KH, ptrdiff_t KW, ptrdiff_t Cout,
                                  ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t pt, ptrdiff_t pb,
                                  ptrdiff_t pl, ptrdiff_t pr, ptrdiff_t dh, ptrdiff_t dw,
                                  ptrdiff_t groups) {
    if (g == NULL) return CCONV_ERR_VALUE;
    g->N = N; g->H = H; g->W = W; g->C = C; g->KH = KH; g->KW = KW; g->Cout = Cout;
    g->sh = sh; g->sw = sw; g->pt = pt; g->pb = pb; g->pl = pl; g->pr = pr;
    g->dh = dh; g->dw = dw; g->groups = groups;
    g->OH = g->OW = 0;
    if (H >= 1 && KH >= 1 && sh >= 1 && pt >= 0 && pb >= 0 && dh >= 1 && H <= CCONV_SIZE_MAX &&
        KH <= CCONV_SIZE_MAX && sh <= CCONV_SIZE_MAX && pt <= CCONV_SIZE_MAX &&
        pb <= CCONV_SIZE_MAX && dh <= CCONV_SIZE_MAX)
        g->OH = cconv_output_size(H, KH, sh, pt, pb, dh);
    if (W >= 1 && KW >= 1 && sw >= 1 && pl >= 0 && pr >= 0 && dw >= 1 && W <= CCONV_SIZE_MAX &&
        KW <= CCONV_SIZE_MAX && sw <= CCONV_SIZE_MAX && pl <= CCONV_SIZE_MAX &&
        pr <= CCONV_SIZE_MAX && dw <= CCONV_SIZE_MAX)
        g->OW = cconv_output_size(W, KW, sw, pl, pr, dw);
    return cconv_conv_geom_check(g);
}

/* Fill *g for a max or average pool over C channels (OH and OW from the formula) and
   check it. */
static inline int cconv_pool_geom(cconv_geom *g, ptrdiff_t N, ptrdiff_t H, ptrdiff_t W,
                                  ptrdiff_t C, ptrdiff_t KH, ptrdiff_t KW, ptrdiff_t sh,
                                  ptrdiff_t sw, ptrdiff_t pt, ptrdiff_t pb, ptrdiff_t pl,
                                  ptrdiff_t pr) {
    int err = cconv_conv_geom(g, N, H, W, C, KH, KW, C, sh, sw, pt, pb, pl, pr, 1, 1, 1);
    return err ? err : cconv_pool_geom_check(g);
}

#endif  /* CCONV_GEOMETRY_H */
