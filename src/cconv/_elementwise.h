/* Elementwise loops over non-aliasing arrays (the restrict qualifiers let the compiler
 * vectorise them), compiled for several instruction sets (CCONV_MULTIVERSION, _simd.h).
 * `inline` only spares the modules that include this header without using every loop a
 * warning: a multiversioned function is always called through its resolver. */
#ifndef CCONV_ELEMENTWISE_H
#define CCONV_ELEMENTWISE_H

#include <stddef.h>
#include "_simd.h"

/* d[i] += s[i] */
CCONV_MULTIVERSION static inline void cconv_add_f(float *__restrict d, const float *__restrict s, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) d[i] += s[i];
}
CCONV_MULTIVERSION static inline void cconv_add_d(double *__restrict d, const double *__restrict s, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) d[i] += s[i];
}

/* ReLU backward in one pass: out = dy where y > 0, else 0. */
#define CCONV_RELU_BWD(NAME, T)                                                          \
CCONV_MULTIVERSION static inline void NAME(T *__restrict out, const T *__restrict dy,         \
                                    const T *__restrict y, ptrdiff_t n) {              \
    for (ptrdiff_t i = 0; i < n; i++) out[i] = y[i] > 0 ? dy[i] : (T)0;                \
}
CCONV_RELU_BWD(cconv_relu_bwd_f, float)
CCONV_RELU_BWD(cconv_relu_bwd_d, double)

#endif  /* CCONV_ELEMENTWISE_H */
