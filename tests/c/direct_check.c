/* The direct-convolution kernels of _conv_direct.h against the definition, in plain C:
 * built by tests/test_isa_suites.py natively (the AVX-512 and AVX2 kernels, levels 2 and 1)
 * and, where a cross compiler and qemu-user are installed, for aarch64 (the NEON kernels,
 * which no other test reaches on an x86 machine). Exit status 0 when every output, weight
 * gradient and bias gradient is within 1e-3 of the double-precision sums, and the 2x2 max
 * pool of each pair of output rows (cconv_direct_pool_rows, with and without ReLU) is the
 * maximum of its four outputs exactly, as is the pool in the registers
 * (cconv_direct_fwd_pool_row, where it applies), and each output row's gradient rebuilt from a pooled
 * one (cconv_direct_unpool_row) holds exactly the gradients whose argmax names its units
 * (and, with a ReLU output's mask, only those whose pooled output is > 0). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include "_conv_direct.h"

static int check(int level, ptrdiff_t H, ptrdiff_t W, ptrdiff_t C, ptrdiff_t KH, ptrdiff_t KW,
                 ptrdiff_t s, ptrdiff_t p, ptrdiff_t cout) {
    cconv_dgeom g = {0};
    g.H = H; g.W = W; g.C = C; g.KH = KH; g.KW = KW; g.sh = g.sw = s; g.dh = g.dw = 1;
    g.pt = g.pl = p; g.OH = (H + 2 * p - KH) / s + 1; g.OW = (W + 2 * p - KW) / s + 1;
    g.cout = cout; g.K = KH * KW * C; g.Kpad = (g.K + 7) / 8 * 8;
    float *x = malloc(sizeof(float) * H * W * C), *w = malloc(sizeof(float) * g.K * cout);
    float *b = malloc(sizeof(float) * cout), *y = malloc(sizeof(float) * g.OW * cout);
    float *prev = malloc(sizeof(float) * g.OW * cout), *pooled = malloc(sizeof(float) * g.OW * cout);
    float *dy = malloc(sizeof(float) * g.OW * cout), *patch = malloc(sizeof(float) * g.OW * g.K);
    float *dw = calloc(g.Kpad * cout, sizeof(float)), *db = calloc(cout, sizeof(float));
    double *rw = calloc(g.K * cout, sizeof(double)), *rb = calloc(cout, sizeof(double));
    ptrdiff_t *off = malloc(sizeof(ptrdiff_t) * 2 * g.Kpad);
    const float **base = malloc(sizeof(float *) * g.OW);
    const ptrdiff_t **po = malloc(sizeof(ptrdiff_t *) * g.OW);
    float *gp = malloc(sizeof(float) * g.OW * cout), *urow = malloc(sizeof(float) * g.OW * cout);
    float *mk = malloc(sizeof(float) * g.OW * cout), *inreg = malloc(sizeof(float) * g.OW * cout);
    int *am = malloc(sizeof(int) * g.OW * cout);
    for (ptrdiff_t i = 0; i < H * W * C; i++) x[i] = (float)((i * 37) % 11) - 5.0f;
    for (ptrdiff_t i = 0; i < g.K * cout; i++) w[i] = (float)((i * 13) % 7) - 3.0f;
    for (ptrdiff_t i = 0; i < cout; i++) b[i] = (float)i;
    cconv_direct_offsets(&g, off, off + g.Kpad);
    double err = 0;
    for (ptrdiff_t oh = 0; oh < g.OH; oh++) {
        for (ptrdiff_t i = 0; i < g.OW * cout; i++) dy[i] = (float)(((oh + i) * 7) % 5) - 2.0f;
        cconv_direct_row(&g, x, 0, oh, off, off + g.Kpad, patch, base, po);
        cconv_direct_fwd_row(level, &g, base, po, w, b, y);
        cconv_direct_dw_row(level, &g, base, po, off, dy, dw, db);
        for (ptrdiff_t ow = 0; ow < g.OW; ow++)
            for (ptrdiff_t o = 0; o < cout; o++) {
                double sum = b[o];
                rb[o] += dy[ow * cout + o];
                for (ptrdiff_t kh = 0; kh < KH; kh++)
                    for (ptrdiff_t kw = 0; kw < KW; kw++)
                        for (ptrdiff_t c = 0; c < C; c++) {
                            ptrdiff_t ih = oh * s + kh - p, iw = ow * s + kw - p, t = (kh * KW + kw) * C + c;
                            if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                            sum += x[(ih * W + iw) * C + c] * w[t * cout + o];
                            rw[t * cout + o] += x[(ih * W + iw) * C + c] * dy[ow * cout + o];
                        }
                err = fmax(err, fabs(sum - y[ow * cout + o]));
            }
        if (oh % 2) {                  /* rows oh - 1 (prev) and oh: their pool */
            int relu = oh % 4 == 1;
            cconv_direct_pool_rows(prev, y, pooled, g.OW / 2, cout, relu, NULL, 0, 0);
            for (ptrdiff_t pw = 0; pw < g.OW / 2; pw++)
                for (ptrdiff_t o = 0; o < cout; o++) {
                    ptrdiff_t i = 2 * pw * cout + o;
                    float m = fmaxf(fmaxf(prev[i], prev[i + cout]), fmaxf(y[i], y[i + cout]));
                    if (relu && m < 0) m = 0;
                    if (pooled[pw * cout + o] != m) err = 1;
                }
            int per_block = cconv_direct_pool_regs(level, cout);
            if (p == 0 && per_block && g.OW / 2 >= per_block) {   /* the same from registers */
                cconv_direct_fwd_pool_row(level, &g, g.OW / 2, x + (oh - 1) * s * W * C,
                                          x + oh * s * W * C, off, w, b, inreg, relu);
                for (ptrdiff_t i = 0; i < g.OW / 2 * cout; i++)
                    if (inreg[i] != pooled[i]) err = 1;
            }
        }
        for (ptrdiff_t i = 0; i < g.OW * cout; i++) prev[i] = y[i];
        ptrdiff_t PW = g.OW / 2, ph = oh / 2;
        int under = ph < g.OH / 2;
        for (ptrdiff_t pw = 0; pw < PW; pw++)     /* window (ph, pw)'s winner: a pattern */
            for (ptrdiff_t o = 0; o < cout; o++) {
                int u = (int)((pw * 3 + o + ph) % 4);
                am[pw * cout + o] = (int)((2 * ph + u / 2) * g.OW + 2 * pw + u % 2);
                gp[pw * cout + o] = (float)(pw * cout + o + 1);
            }
        for (ptrdiff_t i = 0; i < PW * cout; i++)    /* a ReLU output: -1, 0 or 1 */
            mk[i] = (float)((i * 7 + oh) % 3) - 1.0f;
        for (int masked = 0; masked < 2; masked++) {
            for (ptrdiff_t i = 0; i < g.OW * cout; i++) urow[i] = NAN;
            long long got = cconv_direct_unpool_row(gp, am, masked ? mk : NULL, urow, PW, g.OW,
                                                    cout, oh, under), want = 0;
            for (ptrdiff_t ow = 0; ow < g.OW; ow++)
                for (ptrdiff_t o = 0; o < cout; o++) {
                    ptrdiff_t k = (ow / 2) * cout + o;
                    int hit = under && ow < 2 * PW && am[k] == (int)(oh * g.OW + ow);
                    want += hit;
                    float v = masked && !(mk[k] > 0) ? 0.0f : gp[k];
                    if (urow[ow * cout + o] != (hit ? v : 0.0f)) err = 1;
                }
            if (got != want) err = 1;
        }
    }
    for (ptrdiff_t i = 0; i < g.K * cout; i++) err = fmax(err, fabs(rw[i] - dw[i]));
    for (ptrdiff_t i = 0; i < cout; i++) err = fmax(err, fabs(rb[i] - db[i]));
    free(x); free(w); free(b); free(y); free(prev); free(pooled); free(dy); free(patch); free(dw); free(db); free(rw);
    free(rb); free(off); free(base); free(po); free(gp); free(urow); free(am);
    free(mk); free(inreg);
    if (err > 1e-3)
        printf("level %d H %td W %td C %td k %tdx%td s %td p %td cout %td: error %g\n",
               level, H, W, C, KH, KW, s, p, cout, err);
    return err > 1e-3;
}

int main(void) {
    static const ptrdiff_t couts[] = {1, 3, 4, 5, 8, 13, 16, 20, 32, 33, 48};
    int top = cconv_simd_detect(), bad = 0, runs = 0;
    for (int level = 1; level <= top; level++)
        for (size_t i = 0; i < sizeof couts / sizeof couts[0]; i++) {
            bad += check(level, 7, 11, 3, 3, 3, 1, 1, couts[i]);
            bad += check(level, 9, 13, 1, 5, 3, 2, 2, couts[i]);
            bad += check(level, 6, 17, 2, 2, 4, 1, 0, couts[i]);
            runs += 3;
        }
    printf("%d of %d cases wrong (levels 1..%d)\n", bad, runs, top);
    return bad != 0 || top < 1;
}
