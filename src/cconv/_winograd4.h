/* Winograd F(4x4, 3x3) transforms for the backward pass of cconv's 3x3 stride-1
 * convolutions (NHWC); the forward pass stays on F(2x2, 3x3) (_winograd.h).
 *
 * A 4x4 block of outputs comes from a 6x6 block of inputs d with 36 products instead of
 * 144:  Y = A^T [ (G g G^T) . (B^T d B) ] A,  the interpolation points 0, 1, -1, 2, -2
 * and infinity:
 *
 *       | 4  0 -5  0  1  0 |          |  1/4    0     0   |
 *       | 0 -4 -4  1  1  0 |          | -1/6  -1/6  -1/6  |       | 1  1  1  1  1  0 |
 * B^T = | 0  4 -4 -1  1  0 |      G = | -1/6   1/6  -1/6  | A^T = | 0  1 -1  2 -2  0 |
 *       | 0 -2 -1  2  1  0 |          |  1/24  1/12  1/6  |       | 0  1  1  4  4  0 |
 *       | 0  2 -1 -2  1  0 |          |  1/24 -1/12  1/6  |       | 0  1 -1  8 -8  1 |
 *       | 0  4  0 -5  0  1 |          |  0     0     1    |
 *
 * The backward pass is the adjoint (as in _winograd.h, with 36 slots k = 6*i + j instead
 * of 16): Yh = A dY A^T per tile, dU_k = sum over tiles of V_k^T Yh_k with V = B^T d B
 * (dW = G^T dU G), dV_k = Yh_k U_k^T and dX += B dV B^T on the (overlapping: stride 4)
 * 6x6 input blocks. Every function handles one tile, channels innermost; positions outside
 * the image or the output read a zero buffer or write a sink buffer, as in _winograd.h.
 */
#ifndef CCONV_WINOGRAD4_H
#define CCONV_WINOGRAD4_H

#include "_winograd.h"

/* The channel loops below vectorise only once their short inner loops are unrolled. */
#if defined(__GNUC__) && !defined(__clang__)
#define CCONV_UNROLL _Pragma("GCC unroll 8")
#else
#define CCONV_UNROLL
#endif

/* Filter pairs per pass of cconv_wino4_filter_grad's slot sum (its stack buffer: 36 x this). */
#define CCONV_WINO4_SUB 128

/* The 1-D transforms, on six (or four, three) values: o = M i for the matrices above.
   Arguments are distinct lvalues (no aliasing of inputs and outputs). */
#define CCONV_W4_BT(T, i0, i1, i2, i3, i4, i5, o0, o1, o2, o3, o4, o5) do {                 \
    T a_ = (i4) - 4 * (i2), b_ = (i3) - 4 * (i1), c_ = (i4) - (i2), e_ = 2 * ((i3) - (i1));\
    o0 = 4 * (i0) - 5 * (i2) + (i4); o1 = a_ + b_; o2 = a_ - b_;                           \
    o3 = c_ + e_; o4 = c_ - e_; o5 = 4 * (i1) - 5 * (i3) + (i5); } while (0)
/* B (the adjoint of B^T) */
#define CCONV_W4_B(T, i0, i1, i2, i3, i4, i5, o0, o1, o2, o3, o4, o5) do {                  \
    T s12_ = (i1) + (i2), m12_ = (i2) - (i1), s34_ = (i3) + (i4), m34_ = (i4) - (i3);      \
    o0 = 4 * (i0); o1 = 4 * m12_ + 2 * m34_ + 4 * (i5);                                     \
    o2 = -5 * (i0) - 4 * s12_ - s34_; o3 = -m12_ - 2 * m34_ - 5 * (i5);                     \
    o4 = (i0) + s12_ + s34_; o5 = (i5); } while (0)
/* A (4 -> 6, the adjoint of A^T) */
#define CCONV_W4_A(T, i0, i1, i2, i3, o0, o1, o2, o3, o4, o5) do {                           \
    T e_ = (i0) + (i2), d_ = (i1) + (i3), e2_ = (i0) + 4 * (i2), d2_ = 2 * (i1) + 8 * (i3);\
    o0 = (i0); o1 = e_ + d_; o2 = e_ - d_; o3 = e2_ + d2_; o4 = e2_ - d2_; o5 = (i3);      \
    } while (0)
/* G (3 -> 6) */
#define CCONV_W4_G(T, i0, i1, i2, o0, o1, o2, o3, o4, o5) do {                               \
    T e_ = (i0) + (i2), e4_ = (i0) + 4 * (i2);                                              \
    o0 = (T)0.25 * (i0); o1 = (T)(-1.0 / 6) * (e_ + (i1)); o2 = (T)(-1.0 / 6) * (e_ - (i1));\
    o3 = (T)(1.0 / 24) * (e4_ + 2 * (i1)); o4 = (T)(1.0 / 24) * (e4_ - 2 * (i1));          \
    o5 = (i2); } while (0)
/* G^T (6 -> 3) */
#define CCONV_W4_GT(T, i0, i1, i2, i3, i4, i5, o0, o1, o2) do {                              \
    T p12_ = (i1) + (i2), m12_ = (i2) - (i1), p34_ = (i3) + (i4), m34_ = (i3) - (i4);      \
    o0 = (T)0.25 * (i0) - (T)(1.0 / 6) * p12_ + (T)(1.0 / 24) * p34_;                       \
    o1 = (T)(1.0 / 6) * m12_ + (T)(1.0 / 12) * m34_;                                        \
    o2 = (T)(1.0 / 6) * (p34_ - p12_) + (i5); } while (0)

#define CCONV_WINOGRAD4_KERNELS(S, T)                                                       \
/* V[k*ldv + c] = (B^T d B)[k][c], d = the 6x6 block of image n at (ih0, iw0). */           \
CCONV_MULTIVERSION static void cconv_wino4_in_##S(                                          \
        const T *x, T *V, ptrdiff_t ldv, ptrdiff_t H, ptrdiff_t W, ptrdiff_t C,             \
        ptrdiff_t n, ptrdiff_t ih0, ptrdiff_t iw0, const T *zero) {                         \
    const T *p[36];                                                                         \
    CCONV_UNROLL                                                                            \
    for (int i = 0; i < 6; i++)                                                             \
        CCONV_UNROLL                                                                        \
        for (int j = 0; j < 6; j++)                                                         \
            p[6 * i + j] = CCONV_IN_IMAGE(ih0 + i, iw0 + j, H, W)                           \
                ? x + ((n * H + ih0 + i) * W + iw0 + j) * C : zero;                         \
    CCONV_SIMD                                                                              \
    for (ptrdiff_t c = 0; c < C; c++) {                                                     \
        T t[6][6];                                                                          \
        CCONV_UNROLL                                                                        \
        for (int j = 0; j < 6; j++)                                                         \
            CCONV_W4_BT(T, p[j][c], p[6 + j][c], p[12 + j][c], p[18 + j][c], p[24 + j][c],  \
                        p[30 + j][c], t[0][j], t[1][j], t[2][j], t[3][j], t[4][j], t[5][j]);\
        CCONV_UNROLL                                                                        \
        for (int i = 0; i < 6; i++)                                                         \
            CCONV_W4_BT(T, t[i][0], t[i][1], t[i][2], t[i][3], t[i][4], t[i][5],            \
                        V[(6 * i) * ldv + c], V[(6 * i + 1) * ldv + c],                     \
                        V[(6 * i + 2) * ldv + c], V[(6 * i + 3) * ldv + c],                 \
                        V[(6 * i + 4) * ldv + c], V[(6 * i + 5) * ldv + c]);                \
    }                                                                                       \
}                                                                                           \
                                                                                            \
/* Yh[k*ldy + o] = (A g A^T)[k][o], g = the 4x4 block of dy at (oh0, ow0) (0 outside);      \
   db[o] accumulates the block's sum. */                                                    \
CCONV_MULTIVERSION static void cconv_wino4_dy_##S(                                          \
        const T *dy, T *Yh, ptrdiff_t ldy, ptrdiff_t OH, ptrdiff_t OW, ptrdiff_t Co,        \
        ptrdiff_t n, ptrdiff_t oh0, ptrdiff_t ow0, const T *zero, T *db) {                  \
    const T *p[16];                                                                         \
    CCONV_UNROLL                                                                            \
    for (int r = 0; r < 4; r++)                                                             \
        CCONV_UNROLL                                                                        \
        for (int s = 0; s < 4; s++)                                                         \
            p[4 * r + s] = CCONV_IN_IMAGE(oh0 + r, ow0 + s, OH, OW)                         \
                ? dy + ((n * OH + oh0 + r) * OW + ow0 + s) * Co : zero;                     \
    CCONV_SIMD                                                                              \
    for (ptrdiff_t o = 0; o < Co; o++) {                                                    \
        T t[6][4], sum = 0;                                                                 \
        CCONV_UNROLL                                                                        \
        for (int s = 0; s < 4; s++) {                                                       \
            T g0 = p[s][o], g1 = p[4 + s][o], g2 = p[8 + s][o], g3 = p[12 + s][o];          \
            sum += (g0 + g1) + (g2 + g3);                                                   \
            CCONV_W4_A(T, g0, g1, g2, g3, t[0][s], t[1][s], t[2][s], t[3][s], t[4][s],      \
                       t[5][s]);                                                            \
        }                                                                                   \
        db[o] += sum;                                                                       \
        CCONV_UNROLL                                                                        \
        for (int i = 0; i < 6; i++)                                                         \
            CCONV_W4_A(T, t[i][0], t[i][1], t[i][2], t[i][3],                               \
                       Yh[(6 * i) * ldy + o], Yh[(6 * i + 1) * ldy + o],                    \
                       Yh[(6 * i + 2) * ldy + o], Yh[(6 * i + 3) * ldy + o],                \
                       Yh[(6 * i + 4) * ldy + o], Yh[(6 * i + 5) * ldy + o]);               \
    }                                                                                       \
}                                                                                           \
                                                                                            \
/* dx[6x6 block at (ih0, iw0) of image n] += (B dV B^T); positions outside the image        \
   (padding) go to sink. */                                                                 \
CCONV_MULTIVERSION static void cconv_wino4_dx_##S(                                          \
        const T *dV, ptrdiff_t ldv, T *dx, ptrdiff_t H, ptrdiff_t W, ptrdiff_t C,           \
        ptrdiff_t n, ptrdiff_t ih0, ptrdiff_t iw0, T *sink) {                               \
    T *q[36];                                                                               \
    CCONV_UNROLL                                                                            \
    for (int i = 0; i < 6; i++)                                                             \
        CCONV_UNROLL                                                                        \
        for (int j = 0; j < 6; j++)                                                         \
            q[6 * i + j] = CCONV_IN_IMAGE(ih0 + i, iw0 + j, H, W)                           \
                ? dx + ((n * H + ih0 + i) * W + iw0 + j) * C : sink;                        \
    CCONV_SIMD                                                                              \
    for (ptrdiff_t c = 0; c < C; c++) {                                                     \
        T t[6][6], u[6];                                                                    \
        CCONV_UNROLL                                                                        \
        for (int j = 0; j < 6; j++)                                                         \
            CCONV_W4_B(T, dV[j * ldv + c], dV[(6 + j) * ldv + c], dV[(12 + j) * ldv + c],   \
                       dV[(18 + j) * ldv + c], dV[(24 + j) * ldv + c],                      \
                       dV[(30 + j) * ldv + c],                                              \
                       t[0][j], t[1][j], t[2][j], t[3][j], t[4][j], t[5][j]);               \
        CCONV_UNROLL                                                                        \
        for (int i = 0; i < 6; i++) {                                                       \
            CCONV_W4_B(T, t[i][0], t[i][1], t[i][2], t[i][3], t[i][4], t[i][5],             \
                       u[0], u[1], u[2], u[3], u[4], u[5]);                                 \
            CCONV_UNROLL                                                                    \
            for (int j = 0; j < 6; j++) q[6 * i + j][c] += u[j];                            \
        }                                                                                   \
    }                                                                                       \
}                                                                                           \
                                                                                            \
/* U[k*P + p] = (G g G^T)[k] for the 3x3 filters g[(3a+b)*P + p] with p in [p0, p1)         \
   (P = C * Cout). */                                                                       \
CCONV_MULTIVERSION static void cconv_wino4_filter_##S(                                      \
        const T *w, T *U, ptrdiff_t P, ptrdiff_t p0, ptrdiff_t p1) {                        \
    CCONV_SIMD                                                                              \
    for (ptrdiff_t p = p0; p < p1; p++) {                                                   \
        T t[6][3];                                                                          \
        CCONV_UNROLL                                                                        \
        for (int b = 0; b < 3; b++)                                                         \
            CCONV_W4_G(T, w[b * P + p], w[(3 + b) * P + p], w[(6 + b) * P + p],             \
                       t[0][b], t[1][b], t[2][b], t[3][b], t[4][b], t[5][b]);               \
        CCONV_UNROLL                                                                        \
        for (int i = 0; i < 6; i++)                                                         \
            CCONV_W4_G(T, t[i][0], t[i][1], t[i][2],                                        \
                       U[(6 * i) * P + p], U[(6 * i + 1) * P + p], U[(6 * i + 2) * P + p],  \
                       U[(6 * i + 3) * P + p], U[(6 * i + 4) * P + p],                      \
                       U[(6 * i + 5) * P + p]);                                             \
    }                                                                                       \
}                                                                                           \
                                                                                            \
/* dW[(3a+b)*P + p] = (G^T S G)[a][b] for p in [p0, p1), S = the sum over the ns slots of   \
   dU (slot s at dU + s * 36 * P, added in slot order): the adjoint of cconv_wino4_filter,  \
   summing CCONV_WINO4_SUB pairs at a time as cconv_wino_filter_grad does. */              \
CCONV_MULTIVERSION static void cconv_wino4_filter_grad_##S(                                 \
        const T *dU, ptrdiff_t ns, T *dW, ptrdiff_t P, ptrdiff_t p0, ptrdiff_t p1) {        \
    T s[36][CCONV_WINO4_SUB];                                                               \
    for (ptrdiff_t pb = p0; pb < p1; pb += CCONV_WINO4_SUB) {                               \
        ptrdiff_t m = p1 - pb < CCONV_WINO4_SUB ? p1 - pb : CCONV_WINO4_SUB;                \
        CCONV_UNROLL                                                                        \
        for (int k = 0; k < 36; k++) {                                                      \
            const T *src = dU + k * P + pb;                                                 \
            CCONV_SIMD                                                                      \
            for (ptrdiff_t i = 0; i < m; i++) s[k][i] = src[i];                             \
        }                                                                                   \
        for (ptrdiff_t q = 1; q < ns; q++)                                                  \
            CCONV_UNROLL                                                                    \
            for (int k = 0; k < 36; k++) {                                                  \
                const T *src = dU + (q * 36 + k) * P + pb;                                  \
                CCONV_SIMD                                                                  \
                for (ptrdiff_t i = 0; i < m; i++) s[k][i] += src[i];                        \
            }                                                                               \
        CCONV_SIMD                                                                          \
        for (ptrdiff_t i = 0; i < m; i++) {                                                 \
            T r[3][6];                                                                      \
            CCONV_UNROLL                                                                    \
            for (int j = 0; j < 6; j++)                                                     \
                CCONV_W4_GT(T, s[j][i], s[6 + j][i], s[12 + j][i], s[18 + j][i],            \
                            s[24 + j][i], s[30 + j][i], r[0][j], r[1][j], r[2][j]);         \
            CCONV_UNROLL                                                                    \
            for (int a = 0; a < 3; a++)                                                     \
                CCONV_W4_GT(T, r[a][0], r[a][1], r[a][2], r[a][3], r[a][4], r[a][5],        \
                            dW[(3 * a) * P + pb + i], dW[(3 * a + 1) * P + pb + i],         \
                            dW[(3 * a + 2) * P + pb + i]);                                  \
        }                                                                                   \
    }                                                                                       \
}

CCONV_WINOGRAD4_KERNELS(f, float)
CCONV_WINOGRAD4_KERNELS(d, double)

#endif
