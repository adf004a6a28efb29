/* Elementwise loops over non-aliasing arrays (the restrict qualifiers let the compiler
 * vectorise them), compiled for several instruction sets (CCONV_MULTIVERSION, _simd.h).
 * `inline` only spares the modules that include this header without using every loop a
 * warning: a multiversioned function is always called through its resolver. */
#ifndef CCONV_ELEMENTWISE_H
#define CCONV_ELEMENTWISE_H

#include <math.h>
#include <stddef.h>
#include "_simd.h"

/* d[i] += s[i] */
CCONV_MULTIVERSION static inline void cconv_add_f(float *__restrict d, const float *__restrict s, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) d[i] += s[i];
}
CCONV_MULTIVERSION static inline void cconv_add_d(double *__restrict d, const double *__restrict s, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) d[i] += s[i];
}

/* ReLU backward in one pass: out = dy where y > 0, else 0. out may be dy itself (in place,
 * as the training engine calls it on a gradient of its own): a loop of its own then, so
 * that no restrict pointer aliases another. */
#define CCONV_RELU_BWD(NAME, T)                                                          \
CCONV_MULTIVERSION static inline void NAME##_to(T *__restrict out, const T *__restrict dy,    \
                                    const T *__restrict y, ptrdiff_t n) {              \
    for (ptrdiff_t i = 0; i < n; i++) out[i] = y[i] > 0 ? dy[i] : (T)0;                \
}                                                                                        \
CCONV_MULTIVERSION static inline void NAME##_in_place(T *__restrict g, const T *__restrict y, \
                                    ptrdiff_t n) {                                       \
    for (ptrdiff_t i = 0; i < n; i++) g[i] = y[i] > 0 ? g[i] : (T)0;                    \
}                                                                                        \
static inline void NAME(T *out, const T *dy, const T *y, ptrdiff_t n) {                 \
    if (out == dy) NAME##_in_place(out, y, n);                                           \
    else NAME##_to(out, dy, y, n);                                                       \
}
CCONV_RELU_BWD(cconv_relu_bwd_f, float)
CCONV_RELU_BWD(cconv_relu_bwd_d, double)

/* ReLU forward as numpy's maximum(x, 0): +0 for x <= 0 (-0 included), a NaN kept. out may
 * be x itself (in place): no restrict. */
#define CCONV_RELU_FWD(NAME, T)                                                          \
CCONV_MULTIVERSION static inline void NAME(T *out, const T *x, ptrdiff_t n) {                 \
    for (ptrdiff_t i = 0; i < n; i++) out[i] = x[i] <= 0 ? (T)0 : x[i];                  \
}
CCONV_RELU_FWD(cconv_relu_fwd_f, float)
CCONV_RELU_FWD(cconv_relu_fwd_d, double)

/* One Adam / AdamW step on n elements, in place (cconv.optim.adam_update's arithmetic, in
 * its order, one pass instead of a dozen):
 *   decay_mode 1 (AdamW): p = p * decay              (decay = 1 - lr * weight_decay)
 *   decay_mode 2 (Adam):  g = p * wd + g             (the L2 term)
 *   m = m * b1 + g * c1;  v = v * b2 + g * g * c2    (c1 = 1 - b1, c2 = 1 - b2)
 *   p = p - m / (sqrt(v) / sbc2 + eps) * step        (sbc2 = sqrt(1 - b2^t), step = lr / (1 - b1^t)) */
#define CCONV_ADAM_LOOP(T, SQRT, GRAD)                                                   \
    for (ptrdiff_t i = 0; i < n; i++) {                                                  \
        T gi = GRAD;                                                                     \
        T mi = m[i] * b1 + gi * c1;                                                      \
        T vi = v[i] * b2 + (gi * gi) * c2;                                               \
        m[i] = mi;                                                                       \
        v[i] = vi;                                                                       \
        p[i] = p[i] - (mi / (SQRT(vi) / sbc2 + eps)) * step;                             \
    }
#define CCONV_ADAM(NAME, T, SQRT)                                                        \
CCONV_MULTIVERSION static inline void NAME(T *__restrict p, const T *__restrict g,            \
        T *__restrict m, T *__restrict v, ptrdiff_t n, int decay_mode, T decay, T wd,    \
        T b1, T c1, T b2, T c2, T sbc2, T eps, T step) {                                 \
    if (decay_mode == 1) {                                                               \
        for (ptrdiff_t i = 0; i < n; i++) p[i] = p[i] * decay;                           \
        CCONV_ADAM_LOOP(T, SQRT, g[i])                                                   \
    } else if (decay_mode == 2) {                                                        \
        CCONV_ADAM_LOOP(T, SQRT, p[i] * wd + g[i])                                       \
    } else {                                                                             \
        CCONV_ADAM_LOOP(T, SQRT, g[i])                                                   \
    }                                                                                    \
}
/* Rounded as numpy rounds each operation of optim.adam_update: no fused multiply-adds. (Its
 * sqrt vectorises because setup.py builds with -fno-math-errno.) */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
CCONV_ADAM(cconv_adam_f, float, sqrtf)
CCONV_ADAM(cconv_adam_d, double, sqrt)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

#endif  /* CCONV_ELEMENTWISE_H */
