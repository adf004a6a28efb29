# cython: language_level=3
"""Elementwise gradients of activations (see _activation.pxd and activation.pxd)."""
from cython cimport floating
from cython.parallel cimport prange

from cconv.geometry cimport CCONV_ERR_VALUE
from cconv._probe cimport probe, P_RELU_BWD
from cconv._platform cimport cconv_threads, CCONV_MIN_WORK_PER_THREAD

cdef extern from "_elementwise.h":
    void cconv_relu_bwd_f(float *out, const float *dy, const float *y, Py_ssize_t n) noexcept nogil
    void cconv_relu_bwd_d(double *out, const double *dy, const double *y, Py_ssize_t n) noexcept nogil
    void cconv_relu_fwd_f(float *out, const float *x, Py_ssize_t n) noexcept nogil
    void cconv_relu_fwd_d(double *out, const double *x, Py_ssize_t n) noexcept nogil

cdef enum:
    ELEMENTWISE_BLOCK = 65536     # elements per parallel block


cdef int relu_backward_ex(const floating *dy, const floating *y, floating *out, Py_ssize_t n,
                       int num_threads) noexcept nogil:
    if num_threads < 1 or n < 0 or (n and (dy == NULL or y == NULL or out == NULL)):
        return CCONV_ERR_VALUE
    if n == 0:
        return 0
    if num_threads == 1:          # on the calling thread (see _pool.pyx)
        probe(P_RELU_BWD)
        if floating is float:
            cconv_relu_bwd_f(out, dy, y, n)
        else:
            cconv_relu_bwd_d(out, dy, y, n)
        return 0
    cdef Py_ssize_t nblocks = (n + ELEMENTWISE_BLOCK - 1) // ELEMENTWISE_BLOCK, blk, lo, m
    for blk in prange(nblocks, schedule="static", num_threads=num_threads):
        probe(P_RELU_BWD)
        lo = blk * ELEMENTWISE_BLOCK
        m = n - lo
        if m > ELEMENTWISE_BLOCK:
            m = ELEMENTWISE_BLOCK
        if floating is float:
            cconv_relu_bwd_f(out + lo, dy + lo, y + lo, m)
        else:
            cconv_relu_bwd_d(out + lo, dy + lo, y + lo, m)
    return 0


cdef int relu_backward(const floating *dy, const floating *y, floating *out, Py_ssize_t n,
                       int num_threads) noexcept nogil:
    return relu_backward_ex(dy, y, out, n, cconv_threads(num_threads, n, n,
                                                         CCONV_MIN_WORK_PER_THREAD))


cdef int relu_forward_ex(const floating *x, floating *out, Py_ssize_t n,
                         int num_threads) noexcept nogil:
    if num_threads < 1 or n < 0 or (n and (x == NULL or out == NULL)):
        return CCONV_ERR_VALUE
    if n == 0:
        return 0
    if num_threads == 1:
        if floating is float:
            cconv_relu_fwd_f(out, x, n)
        else:
            cconv_relu_fwd_d(out, x, n)
        return 0
    cdef Py_ssize_t nblocks = (n + ELEMENTWISE_BLOCK - 1) // ELEMENTWISE_BLOCK, blk, lo, m
    for blk in prange(nblocks, schedule="static", num_threads=num_threads):
        lo = blk * ELEMENTWISE_BLOCK
        m = n - lo
        if m > ELEMENTWISE_BLOCK:
            m = ELEMENTWISE_BLOCK
        if floating is float:
            cconv_relu_fwd_f(out + lo, x + lo, m)
        else:
            cconv_relu_fwd_d(out + lo, x + lo, m)
    return 0
