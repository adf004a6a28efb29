/* Winograd F(2x2, 3x3) transforms for cconv's 3x3 stride-1 convolutions (NHWC).
 *
 * A 2x2 block of outputs is computed from a 4x4 block of inputs d with 16 products
 * instead of 36:  Y = A^T [ (G g G^T) . (B^T d B) ] A,  where . is the elementwise
 * product and, per input channel c and output channel o, the 16 products are summed over
 * c as 16 GEMMs (done by the caller through BLAS):  M_k = V_k U_k,  k = 4*i + j.
 *
 *       | 1  0 -1  0 |          | 1    0    0  |
 * B^T = | 0  1  1  0 |      G = | 1/2  1/2  1/2 |      A^T = | 1 1  1  0 |
 *       | 0 -1  1  0 |          | 1/2 -1/2  1/2 |            | 0 1 -1 -1 |
 *       | 0  1  0 -1 |          | 0    0    1  |
 *
 * The backward pass is the adjoint of the same computation: with Yh = A dY A^T,
 * dU_k = V_k^T Yh_k (summed over tiles; dW = G^T dU G), dV_k = Yh_k U_k^T and
 * dX += B dV B^T, scattered back onto the (overlapping) 4x4 input blocks.
 *
 * Every function handles one tile and loops over channels innermost (contiguous in
 * NHWC); positions outside the image read from a zero buffer or write to a scratch
 * "sink" buffer, so the channel loops have no branches and vectorise.
 */
#ifndef CCONV_WINOGRAD_H
#define CCONV_WINOGRAD_H

#include <stddef.h>
#include "_simd.h"

#if defined(_OPENMP) && !defined(_MSC_VER)
#define CCONV_SIMD _Pragma("omp simd")
#define CCONV_PRAGMA(x) _Pragma(#x)
#define CCONV_SIMD_SUM(v) CCONV_PRAGMA(omp simd reduction(+:v))
#else
#define CCONV_SIMD
#define CCONV_SIMD_SUM(v)
#endif

/* Filter pairs per pass of cconv_wino_filter_grad's slot sum (its stack buffer: 16 x this). */
#define CCONV_WINO_SUB 256

#define CCONV_IN_IMAGE(i, j, H, W) ((i) >= 0 && (i) < (H) && (j) >= 0 && (j) < (W))
/* Whether the 4x4 block at (i, j) lies inside the H x W image. */
#define CCONV_BLOCK_IN_IMAGE(i, j, H, W) ((i) >= 0 && (j) >= 0 && (i) + 4 <= (H) && (j) + 4 <= (W))

/* t (T[2][4]) = A^T M_o for output channel o of the 16 rows of M (row k at M + k * ldm):
   the first half of the output transform, A^T M A = t A. */
#define CCONV_WINO_AT_M(T, t, M, ldm, o)                                                    \
        for (int j = 0; j < 4; j++) {                                                       \
            T m0 = M[j * ldm + o], m1 = M[(4 + j) * ldm + o];                               \
            T m2 = M[(8 + j) * ldm + o], m3 = M[(12 + j) * ldm + o];                        \
            t[0][j] = m0 + m1 + m2; t[1][j] = m1 - m2 - m3;                                 \
        }

/* Yh[k*ldy + o] = (A g A^T)[k][o] for the 2x2 dy block g00..g11 of output channel o, and
   db[o] += its sum: the first step of the backward pass. */
#define CCONV_WINO_YH(T, Yh, ldy, o, db, g00, g01, g10, g11)                                \
        db[o] += (g00 + g01) + (g10 + g11);                                                 \
        T t[4][2] = {{g00, g01}, {g00 + g10, g01 + g11}, {g00 - g10, g01 - g11},            \
                     {-g10, -g11}};                                                         \
        for (int i = 0; i < 4; i++) {                                                       \
            Yh[(4 * i + 0) * ldy + o] = t[i][0];                                            \
            Yh[(4 * i + 1) * ldy + o] = t[i][0] + t[i][1];                                  \
            Yh[(4 * i + 2) * ldy + o] = t[i][0] - t[i][1];                                  \
            Yh[(4 * i + 3) * ldy + o] = -t[i][1];                                           \
        }

/* V[k*ldv + c] = (B^T d B)[k][c] for channel c of the 4x4 block d whose column j (the
   loop variable of the first loop) has rows D0..D3. */
#define CCONV_WINO_BTDB(T, V, ldv, c, D0, D1, D2, D3)                                       \
        T t[4][4];                                                                          \
        for (int j = 0; j < 4; j++) {                                                       \
            T d0 = D0, d1 = D1, d2 = D2, d3 = D3;                                           \
            t[0][j] = d0 - d2; t[1][j] = d1 + d2; t[2][j] = d2 - d1; t[3][j] = d1 - d3;     \
        }                                                                                   \
        for (int i = 0; i < 4; i++) {                                                       \
            V[(4 * i + 0) * ldv + c] = t[i][0] - t[i][2];                                   \
            V[(4 * i + 1) * ldv + c] = t[i][1] + t[i][2];                                   \
            V[(4 * i + 2) * ldv + c] = t[i][2] - t[i][1];                                   \
            V[(4 * i + 3) * ldv + c] = t[i][1] - t[i][3];                                   \
        }

/* Tiles run along the rows, two pixels apart: the next row of tiles is the first to touch
   the two rows below a tile's 4x4 block. A tile whose block starts at r0 (row ih0 of H,
   rows `row` elements apart) asks for `bytes` of each of those two rows from its block's
   first column (its first two columns; the next tile asks for the next two), so that they
   arrive before that row of tiles needs them: a map row of the paper network's conv2 input
   is about one 4 KiB page, and the hardware prefetchers stop at pages. A hint: it changes
   no result. In the paper network's batch-256 predict at one thread, the in-image path
   alone gave 0.97x the time and with this 0.95x (10 alternating process pairs each). */
#define CCONV_WINO_AHEAD(r0, ih0, H, row, bytes)                                            \
        for (ptrdiff_t i_ = 4; i_ < 6 && ih0 + i_ < H; i_++)                                \
            for (ptrdiff_t b_ = 0; b_ < (bytes); b_ += 64)                                  \
                CCONV_PREFETCH((const char *)((r0) + i_ * (row)) + b_);

/* dx[block] += (B dV B^T) for channel c, Q(i, j) naming the block's element at row i,
   column j: CCONV_WINO_ROW_AT with row pointers s[i] (C elements a pixel), CCONV_WINO_PTR_AT
   with pixel pointers q[4i + j]. */
#define CCONV_WINO_ROW_AT(i, j) s[i][(j) * C + c]
#define CCONV_WINO_PTR_AT(i, j) q[4 * (i) + (j)][c]
#define CCONV_WINO_BDVB(T, dV, ldv, c, Q)                                                   \
        T t[4][4];                                                                          \
        for (int j = 0; j < 4; j++) {                                                       \
            T v0 = dV[j * ldv + c], v1 = dV[(4 + j) * ldv + c];                             \
            T v2 = dV[(8 + j) * ldv + c], v3 = dV[(12 + j) * ldv + c];                      \
            t[0][j] = v0; t[1][j] = v1 - v2 + v3; t[2][j] = v1 + v2 - v0; t[3][j] = -v3;    \
        }                                                                                   \
        for (int i = 0; i < 4; i++) {                                                       \
            Q(i, 0) += t[i][0];                                                             \
            Q(i, 1) += t[i][1] - t[i][2] + t[i][3];                                         \
            Q(i, 2) += t[i][1] + t[i][2] - t[i][0];                                         \
            Q(i, 3) -= t[i][3];                                                             \
        }

#define CCONV_WINOGRAD_KERNELS(S, T)                                                        \
/* V[k*ldv + c] = (B^T d B)[k][c], d = the 4x4 block of image n at (ih0, iw0). */           \
CCONV_MULTIVERSION static void cconv_wino_in_##S(                                      \
        const T *x, T *V, ptrdiff_t ldv, ptrdiff_t H, ptrdiff_t W, ptrdiff_t C,             \
        ptrdiff_t n, ptrdiff_t ih0, ptrdiff_t iw0, const T *zero) {                         \
    if (CCONV_BLOCK_IN_IMAGE(ih0, iw0, H, W)) {                                             \
        /* inside the image: four row pointers, no zero buffer, and the two rows the next   \
           row of tiles reads first asked for ahead (CCONV_WINO_AHEAD) */                   \
        const T *r0 = x + ((n * H + ih0) * W + iw0) * C;                                    \
        const T *r1 = r0 + W * C, *r2 = r1 + W * C, *r3 = r2 + W * C;                       \
        CCONV_WINO_AHEAD(r0, ih0, H, W * C, 2 * C * (ptrdiff_t)sizeof(T))                   \
        CCONV_SIMD                                                                          \
        for (ptrdiff_t c = 0; c < C; c++) {                                                 \
            CCONV_WINO_BTDB(T, V, ldv, c, r0[j * C + c], r1[j * C + c], r2[j * C + c],      \
                            r3[j * C + c])                                                  \
        }                                                                                   \
        return;                                                                             \
    }                                                                                       \
    const T *p[16];                                                                         \
    for (int i = 0; i < 4; i++)                                                             \
        for (int j = 0; j < 4; j++)                                                         \
            p[4 * i + j] = CCONV_IN_IMAGE(ih0 + i, iw0 + j, H, W)                           \
                ? x + ((n * H + ih0 + i) * W + iw0 + j) * C : zero;                         \
    CCONV_SIMD                                                                              \
    for (ptrdiff_t c = 0; c < C; c++) {                                                     \
        CCONV_WINO_BTDB(T, V, ldv, c, p[j][c], p[4 + j][c], p[8 + j][c], p[12 + j][c])      \
    }                                                                                       \
}                                                                                           \
                                                                                            \
/* The 2x2 outputs (A^T M A)[o] + bias[o] of the tile at (oh0, ow0) of image n; those       \
   outside the output (the last row/column of an odd-sized map) go to sink. */              \
CCONV_MULTIVERSION static void cconv_wino_out_##S(                                     \
        const T *M, ptrdiff_t ldm, T *y, const T *bias, ptrdiff_t OH, ptrdiff_t OW,         \
        ptrdiff_t Co, ptrdiff_t n, ptrdiff_t oh0, ptrdiff_t ow0, T *sink) {                 \
    T *q[4];                                                                                \
    for (int r = 0; r < 2; r++)                                                             \
        for (int s = 0; s < 2; s++)                                                         \
            q[2 * r + s] = CCONV_IN_IMAGE(oh0 + r, ow0 + s, OH, OW)                         \
                ? y + ((n * OH + oh0 + r) * OW + ow0 + s) * Co : sink;                      \
    CCONV_SIMD                                                                              \
    for (ptrdiff_t o = 0; o < Co; o++) {                                                    \
        T t[2][4];                                                                          \
        CCONV_WINO_AT_M(T, t, M, ldm, o)                                                    \
        T b = bias ? bias[o] : (T)0;                                                        \
        for (int r = 0; r < 2; r++) {                                                       \
            q[2 * r][o] = t[r][0] + t[r][1] + t[r][2] + b;                                  \
            q[2 * r + 1][o] = t[r][1] - t[r][2] - t[r][3] + b;                              \
        }                                                                                   \
    }                                                                                       \
}                                                                                           \
                                                                                            \
/* The same tile pooled (a 2x2 stride-2 max pool's window is one tile): y[n, ph, pw, o] =    \
   max of the 4 outputs (A^T M A)[o], scanned in row-major order as the max pool does (a     \
   greater value or a NaN takes the place: the last NaN wins), + bias[o], then max(., 0)    \
   if relu. Adding the bias after the max is exact (x -> x + b is monotone under            \
   rounding), and so is the ReLU (it commutes with max), so the result is the unfused       \
   convolution -> ReLU -> max pool bit for bit. With a (not NULL): the pool's argmax too,    \
   a[...] = the winner's flat index h * OW + w in the output plane; the bias is then added  \
   to each output before the max, so that ties are those of the unfused pool. */            \
CCONV_MULTIVERSION static void cconv_wino_out_pool_##S(                                \
        const T *M, ptrdiff_t ldm, T *y, const T *bias, ptrdiff_t PH, ptrdiff_t PW,         \
        ptrdiff_t Co, ptrdiff_t n, ptrdiff_t ph, ptrdiff_t pw, int relu, int *a,            \
        ptrdiff_t OW) {                                                                     \
    T *q = y + ((n * PH + ph) * PW + pw) * Co;                                              \
    if (a) {                                                                                \
        int *ao = a + ((n * PH + ph) * PW + pw) * Co;                                       \
        int i0 = (int)(2 * ph * OW + 2 * pw), i2 = (int)(i0 + OW);                          \
        CCONV_SIMD                                                                          \
        for (ptrdiff_t o = 0; o < Co; o++) {                                                \
            T t[2][4];                                                                      \
            CCONV_WINO_AT_M(T, t, M, ldm, o)                                                \
            T b = bias ? bias[o] : (T)0;                                                    \
            T best = t[0][0] + t[0][1] + t[0][2] + b;                                       \
            int arg = i0;                                                                   \
            T v = t[0][1] - t[0][2] - t[0][3] + b;                                          \
            int take = (v > best) | (v != v);                                               \
            best = take ? v : best; arg = take ? i0 + 1 : arg;                              \
            v = t[1][0] + t[1][1] + t[1][2] + b;                                            \
            take = (v > best) | (v != v);                                                   \
            best = take ? v : best; arg = take ? i2 : arg;                                  \
            v = t[1][1] - t[1][2] - t[1][3] + b;                                            \
            take = (v > best) | (v != v);                                                   \
            best = take ? v : best; arg = take ? i2 + 1 : arg;                              \
            q[o] = relu && best <= 0 ? (T)0 : best;                                         \
            ao[o] = arg;                                                                    \
        }                                                                                   \
        return;                                                                             \
    }                                                                                       \
    CCONV_SIMD                                                                              \
    for (ptrdiff_t o = 0; o < Co; o++) {                                                    \
        T t[2][4];                                                                          \
        CCONV_WINO_AT_M(T, t, M, ldm, o)                                                    \
        T best = t[0][0] + t[0][1] + t[0][2];                                               \
        T v = t[0][1] - t[0][2] - t[0][3];                                                  \
        best = (v > best) | (v != v) ? v : best;                                            \
        v = t[1][0] + t[1][1] + t[1][2];                                                    \
        best = (v > best) | (v != v) ? v : best;                                            \
        v = t[1][1] - t[1][2] - t[1][3];                                                    \
        best = (v > best) | (v != v) ? v : best;                                            \
        best = best + (bias ? bias[o] : (T)0);                                              \
        q[o] = relu && best <= 0 ? (T)0 : best;                                             \
    }                                                                                       \
}                                                                                           \
                                                                                            \
/* Yh[k*ldy + o] = (A g A^T)[k][o], g = the 2x2 block of dy at (oh0, ow0) (0 outside);      \
   db[o] accumulates the block's sum. */                                                    \
CCONV_MULTIVERSION static void cconv_wino_dy_##S(                                      \
        const T *dy, T *Yh, ptrdiff_t ldy, ptrdiff_t OH, ptrdiff_t OW, ptrdiff_t Co,        \
        ptrdiff_t n, ptrdiff_t oh0, ptrdiff_t ow0, const T *zero, T *db) {                  \
    const T *p[4];                                                                          \
    for (int r = 0; r < 2; r++)                                                             \
        for (int s = 0; s < 2; s++)                                                         \
            p[2 * r + s] = CCONV_IN_IMAGE(oh0 + r, ow0 + s, OH, OW)                         \
                ? dy + ((n * OH + oh0 + r) * OW + ow0 + s) * Co : zero;                     \
    CCONV_SIMD                                                                              \
    for (ptrdiff_t o = 0; o < Co; o++) {                                                    \
        T g00 = p[0][o], g01 = p[1][o], g10 = p[2][o], g11 = p[3][o];                       \
        CCONV_WINO_YH(T, Yh, ldy, o, db, g00, g01, g10, g11)                                \
    }                                                                                       \
}                                                                                           \
                                                                                            \
/* The same, dy given by the gradient dp of its 2x2 stride-2 max pool (N, PH, PW, Co) and   \
   the pool's argmax a (flat indices h * OW + w): the tile's 2x2 block is the window of     \
   (oh0 / 2, ow0 / 2), whose gradient goes to the unit a names; a tile outside the pooled   \
   rows/columns (the last of an odd-sized output; wino_backward skips them) has a zero      \
   block. The values are those max_pool2d_backward writes, so Yh and db are the unfused     \
   ones bit for bit. With m (not NULL: the pooled output after a ReLU, laid out as dp), dp  \
   is first masked as relu_backward(dp, m) would. Returns how many argmax entries of the    \
   window named one of its units. */                                                        \
CCONV_MULTIVERSION static long long cconv_wino_dy_pool_##S(                            \
        const T *dp, const int *a, const T *m, T *Yh, ptrdiff_t ldy, ptrdiff_t PH,          \
        ptrdiff_t PW, ptrdiff_t OW, ptrdiff_t Co, ptrdiff_t n, ptrdiff_t oh0, ptrdiff_t ow0,\
        T *db) {                                                                            \
    ptrdiff_t ph = oh0 / 2, pw = ow0 / 2;                                                   \
    long long matched = 0;                                                                  \
    if (ph >= PH || pw >= PW) {                                                             \
        CCONV_SIMD                                                                          \
        for (ptrdiff_t o = 0; o < Co; o++) {                                                \
            T z = (T)0;                                                                     \
            CCONV_WINO_YH(T, Yh, ldy, o, db, z, z, z, z)                                    \
        }                                                                                   \
        return 0;                                                                           \
    }                                                                                       \
    const T *g = dp + ((n * PH + ph) * PW + pw) * Co;                                       \
    const T *mk = m ? m + ((n * PH + ph) * PW + pw) * Co : g;                               \
    const int *ai = a + ((n * PH + ph) * PW + pw) * Co;                                     \
    int i0 = (int)(oh0 * OW + ow0), i2 = (int)(i0 + OW);                                    \
    CCONV_SIMD_SUM(matched)                                                                 \
    for (ptrdiff_t o = 0; o < Co; o++) {                                                    \
        int i = ai[o];                                                                      \
        T z = (T)0, v = !m || mk[o] > 0 ? g[o] : z;                                         \
        T g00 = i == i0 ? v : z, g01 = i == i0 + 1 ? v : z;                                 \
        T g10 = i == i2 ? v : z, g11 = i == i2 + 1 ? v : z;                                 \
        matched += (i == i0) + (i == i0 + 1) + (i == i2) + (i == i2 + 1);                   \
        CCONV_WINO_YH(T, Yh, ldy, o, db, g00, g01, g10, g11)                                \
    }                                                                                       \
    return matched;                                                                         \
}                                                                                           \
                                                                                            \
/* dx[4x4 block at (ih0, iw0) of image n] += (B dV B^T); positions outside the image        \
   (padding) go to sink. */                                                                 \
CCONV_MULTIVERSION static void cconv_wino_dx_##S(                                      \
        const T *dV, ptrdiff_t ldv, T *dx, ptrdiff_t H, ptrdiff_t W, ptrdiff_t C,           \
        ptrdiff_t n, ptrdiff_t ih0, ptrdiff_t iw0, T *sink) {                               \
    if (CCONV_BLOCK_IN_IMAGE(ih0, iw0, H, W)) {                     /* as cconv_wino_in */   \
        T *s[4];                                                                            \
        s[0] = dx + ((n * H + ih0) * W + iw0) * C;                                          \
        for (int i = 1; i < 4; i++)                                                         \
            s[i] = s[i - 1] + W * C;                                                        \
        CCONV_WINO_AHEAD(s[0], ih0, H, W * C, 2 * C * (ptrdiff_t)sizeof(T))                 \
        CCONV_SIMD                                                                          \
        for (ptrdiff_t c = 0; c < C; c++) {                                                 \
            CCONV_WINO_BDVB(T, dV, ldv, c, CCONV_WINO_ROW_AT)                               \
        }                                                                                   \
        return;                                                                             \
    }                                                                                       \
    T *q[16];                                                                               \
    for (int i = 0; i < 4; i++)                                                             \
        for (int j = 0; j < 4; j++)                                                         \
            q[4 * i + j] = CCONV_IN_IMAGE(ih0 + i, iw0 + j, H, W)                           \
                ? dx + ((n * H + ih0 + i) * W + iw0 + j) * C : sink;                        \
    CCONV_SIMD                                                                              \
    for (ptrdiff_t c = 0; c < C; c++) {                                                     \
        CCONV_WINO_BDVB(T, dV, ldv, c, CCONV_WINO_PTR_AT)                                   \
    }                                                                                       \
}                                                                                           \
                                                                                            \
/* U[k*P + p] = (G g G^T)[k] for the 3x3 filters g[(3a+b)*P + p] with p in [p0, p1)         \
   (P = C * Cout: one filter per input/output channel pair). */                             \
CCONV_MULTIVERSION static void cconv_wino_filter_##S(                                  \
        const T *w, T *U, ptrdiff_t P, ptrdiff_t p0, ptrdiff_t p1) {                        \
    const T h = (T)0.5;                                                                     \
    CCONV_SIMD                                                                              \
    for (ptrdiff_t p = p0; p < p1; p++) {                                                   \
        T t[4][3];                                                                          \
        for (int b = 0; b < 3; b++) {                                                       \
            T g0 = w[b * P + p], g1 = w[(3 + b) * P + p], g2 = w[(6 + b) * P + p];          \
            t[0][b] = g0; t[1][b] = h * (g0 + g1 + g2);                                     \
            t[2][b] = h * (g0 - g1 + g2); t[3][b] = g2;                                     \
        }                                                                                   \
        for (int i = 0; i < 4; i++) {                                                       \
            U[(4 * i + 0) * P + p] = t[i][0];                                               \
            U[(4 * i + 1) * P + p] = h * (t[i][0] + t[i][1] + t[i][2]);                     \
            U[(4 * i + 2) * P + p] = h * (t[i][0] - t[i][1] + t[i][2]);                     \
            U[(4 * i + 3) * P + p] = t[i][2];                                               \
        }                                                                                   \
    }                                                                                       \
}                                                                                           \
                                                                                            \
/* dW[(3a+b)*P + p] = (G^T S G)[a][b] for p in [p0, p1), S = the sum over the ns slots of   \
   dU (slot s at dU + s * 16 * P, added in slot order): the adjoint of cconv_wino_filter.   \
   The slots are summed CCONV_WINO_SUB pairs at a time into a local buffer, with one        \
   contiguous stream per (slot, k). */                                                      \
CCONV_MULTIVERSION static void cconv_wino_filter_grad_##S(                             \
        const T *dU, ptrdiff_t ns, T *dW, ptrdiff_t P, ptrdiff_t p0, ptrdiff_t p1) {        \
    const T h = (T)0.5;                                                                     \
    T s[16][CCONV_WINO_SUB];                                                                \
    for (ptrdiff_t pb = p0; pb < p1; pb += CCONV_WINO_SUB) {                                \
        ptrdiff_t m = p1 - pb < CCONV_WINO_SUB ? p1 - pb : CCONV_WINO_SUB;                  \
        for (int k = 0; k < 16; k++) {                                                      \
            const T *src = dU + k * P + pb;                                                 \
            CCONV_SIMD                                                                      \
            for (ptrdiff_t i = 0; i < m; i++) s[k][i] = src[i];                             \
        }                                                                                   \
        for (ptrdiff_t q = 1; q < ns; q++)                                                  \
            for (int k = 0; k < 16; k++) {                                                  \
                const T *src = dU + (q * 16 + k) * P + pb;                                  \
                CCONV_SIMD                                                                  \
                for (ptrdiff_t i = 0; i < m; i++) s[k][i] += src[i];                        \
            }                                                                               \
        CCONV_SIMD                                                                          \
        for (ptrdiff_t i = 0; i < m; i++) {                                                 \
            T r[3][4];                                                                      \
            for (int j = 0; j < 4; j++) {                                                   \
                r[0][j] = s[j][i] + h * (s[4 + j][i] + s[8 + j][i]);                        \
                r[1][j] = h * (s[4 + j][i] - s[8 + j][i]);                                  \
                r[2][j] = h * (s[4 + j][i] + s[8 + j][i]) + s[12 + j][i];                   \
            }                                                                               \
            for (int a = 0; a < 3; a++) {                                                   \
                dW[(3 * a + 0) * P + pb + i] = r[a][0] + h * (r[a][1] + r[a][2]);           \
                dW[(3 * a + 1) * P + pb + i] = h * (r[a][1] - r[a][2]);                     \
                dW[(3 * a + 2) * P + pb + i] = h * (r[a][1] + r[a][2]) + r[a][3];           \
            }                                                                               \
        }                                                                                   \
    }                                                                                       \
}

CCONV_WINOGRAD_KERNELS(f, float)
CCONV_WINOGRAD_KERNELS(d, double)

#endif
