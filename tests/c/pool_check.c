/* The vector max-pool kernels of _pool_simd.h against the definition, in plain C: built by
 * tests/test_isa_suites.py natively (the AVX-512 and AVX2 kernels) and, where a cross
 * compiler and qemu-user are installed, for aarch64 (the NEON kernels, which no other test
 * reaches on an x86 machine). Every level this CPU has, every channel count the level
 * serves: the forward's maximum and argmax are those of a row-major scan in which a
 * strictly greater value or a NaN takes the place (inputs with ties, NaNs and -0), and the
 * backward writes dy where the argmax names the unit and +0 elsewhere, and counts the
 * names. Exit status 0 when every value is the same, bit for bit. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "_pool_simd.h"

static int same(float u, float v) { return memcmp(&u, &v, sizeof u) == 0; }

/* 64-byte aligned, as the streaming stores need (they are skipped on other addresses) */
static void *alloc64(size_t bytes) { return aligned_alloc(64, (bytes + 63) / 64 * 64); }

/* One case: N x H x W x C input, KH x KW windows that tile it. -1: the level does not
   serve C (skipped), else the number of wrong values. */
static long check(int level, ptrdiff_t N, ptrdiff_t H, ptrdiff_t W, ptrdiff_t C, ptrdiff_t KH,
                  ptrdiff_t KW, int stream) {
    ptrdiff_t OH = H / KH, OW = W / KW;
    size_t nx = (size_t)(N * H * W * C), ny = (size_t)(N * OH * OW * C);
    float *x = malloc(sizeof(float) * nx), *y = alloc64(sizeof(float) * ny);
    float *dy = malloc(sizeof(float) * ny), *dx = alloc64(sizeof(float) * nx);
    int *a = alloc64(sizeof(int) * ny);
    long wrong = 0;
    for (size_t i = 0; i < nx; i++) {      /* few distinct values: ties; some NaN and -0 */
        int k = (int)((i * 37 + i / 7) % 23);
        x[i] = k == 0 ? NAN : k == 1 ? -0.0f : (float)(k % 6) - 3.0f;
        dx[i] = 99.0f;
    }
    for (size_t i = 0; i < ny; i++) dy[i] = (float)(i % 13) + 0.5f;
    for (ptrdiff_t n = 0; n < N && wrong >= 0; n++)
        for (ptrdiff_t oh = 0; oh < OH; oh++) {
            size_t row = (size_t)((n * OH + oh) * OW * C);
            if (!cconv_pool_fwd_simd(level, x, y + row, a + row, n, oh, H, W, C, OW, KH, KW,
                                     stream)) {
                wrong = -1;
                break;
            }
            long long got = cconv_pool_bwd_simd(level, dx, dy, a, n, oh, OH, OW, H, W, C, KH,
                                                KW, stream);
            long long want = 0;
            for (ptrdiff_t ow = 0; ow < OW; ow++)
                for (ptrdiff_t c = 0; c < C; c++) {
                    float best = 0;
                    int arg = -1;
                    for (ptrdiff_t kh = 0; kh < KH; kh++)
                        for (ptrdiff_t kw = 0; kw < KW; kw++) {
                            ptrdiff_t ih = oh * KH + kh, iw = ow * KW + kw;
                            float v = x[((n * H + ih) * W + iw) * C + c];
                            if (arg < 0 || v > best || isnan(v)) {
                                best = v;
                                arg = (int)(ih * W + iw);
                            }
                        }
                    size_t k = row + (size_t)(ow * C + c);
                    wrong += !same(y[k], best) + (a[k] != arg);
                    want++;
                    for (ptrdiff_t kh = 0; kh < KH; kh++)
                        for (ptrdiff_t kw = 0; kw < KW; kw++) {
                            ptrdiff_t ih = oh * KH + kh, iw = ow * KW + kw;
                            float g = (int)(ih * W + iw) == arg ? dy[k] : 0.0f;
                            wrong += !same(dx[((n * H + ih) * W + iw) * C + c], g);
                        }
                }
            if (got != want) wrong++;
        }
    for (ptrdiff_t n = 0; n < N && wrong >= 0; n++)   /* units under no window: untouched */
        for (ptrdiff_t ih = 0; ih < H; ih++)
            for (ptrdiff_t iw = 0; iw < W; iw++)
                if (ih >= OH * KH || iw >= OW * KW)
                    for (ptrdiff_t c = 0; c < C; c++)
                        wrong += dx[((n * H + ih) * W + iw) * C + c] != 99.0f;
    free(x); free(y); free(dy); free(dx); free(a);
    if (wrong > 0)
        printf("level %d N %td H %td W %td C %td k %tdx%td stream %d: %ld wrong\n", level, N,
               H, W, C, KH, KW, stream, wrong);
    return wrong;
}

#if CCONV_NEON
/* The vector helpers of the NEON direct kernel's pool in the registers (_simd.h), which
   direct_check.c's NaN-free data cannot fully reach: pmax takes v where v > best or v is a
   NaN; relu gives +0 for v <= 0 (-0 included) and keeps a NaN. */
static int check_neon_helpers(void) {
    static const float vals[] = {-2.0f, -0.0f, 0.0f, 1.0f, 1.0f, NAN, 3.0f, -INFINITY};
    int wrong = 0;
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 8; j += 4) {
            float best[4], v[4], got[4], r[4];
            for (int k = 0; k < 4; k++) { best[k] = vals[i]; v[k] = vals[(j + k + i) % 8]; }
            vst1q_f32(got, CCONV_V4_pmax(vld1q_f32(best), vld1q_f32(v)));
            vst1q_f32(r, CCONV_V4_relu(vld1q_f32(v)));
            for (int k = 0; k < 4; k++) {
                float want = v[k] > best[k] || isnan(v[k]) ? v[k] : best[k];
                float rw = v[k] <= 0 ? 0.0f : v[k];
                wrong += !same(got[k], want) + !same(r[k], rw);
            }
        }
    if (wrong) printf("NEON pmax/relu: %d wrong\n", wrong);
    return wrong != 0;
}
#endif

int main(void) {
    static const ptrdiff_t cs[] = {4, 8, 12, 16, 24, 32, 48, 64};
    static const ptrdiff_t shapes[][4] = {{6, 8, 2, 2}, {7, 9, 2, 2}, {9, 9, 3, 3}, {4, 10, 1, 3}};
    int top = cconv_simd_detect(), bad = 0, runs = 0;
    for (int level = 1; level <= top; level++)
        for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++)
            for (size_t j = 0; j < sizeof shapes / sizeof shapes[0]; j++) {
                const ptrdiff_t *s = shapes[j];
                long r = check(level, 2, s[0], s[1], cs[i], s[2], s[3], (int)(j % 2));
                if (r < 0) continue;
                bad += r > 0;
                runs++;
            }
#if CCONV_NEON
    bad += check_neon_helpers();
    runs++;
#endif
    printf("%d of %d cases wrong (levels 1..%d)\n", bad, runs, top);
    return bad != 0 || runs == 0;
}
