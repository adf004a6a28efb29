# Max and average pooling over NHWC images; max pooling records the winner of every window.

from cython cimport floating
from cconv.geometry cimport cconv_geom

# Max-pool argmax: int32 unless a plane has 2**31 units or more.
ctypedef fused index_t:
    int
    long long

# The kernels of cconv.pool (see pool.pxd for their contract): at most num_threads threads
# (fewer for small work, as cconv.functional decides), non-temporal stores for outputs of
# STREAM_MIN_BYTES or more.
cdef int max_pool2d_forward(const cconv_geom *g, const floating *x, floating *y,
                            index_t *argmax, int num_threads) noexcept nogil
cdef int max_pool2d_backward(const cconv_geom *g, const floating *dy, const index_t *argmax,
                             floating *dx, int num_threads) noexcept nogil
cdef int avg_pool2d_forward(const cconv_geom *g, const floating *x, floating *y,
                            int num_threads) noexcept nogil
cdef int avg_pool2d_backward(const cconv_geom *g, const floating *dy, floating *dx,
                             int num_threads) noexcept nogil

# The same on exactly num_threads threads, with the choice of stores explicit (what
# cconv.functional calls, having sized the call with its own knobs). stream: 1 writes the
# outputs with non-temporal stores (the float32/int32 vectorised kernels, for outputs too
# large to stay in cache), 0 does not, -1 decides by size. The values are the same.
cdef enum:
    STREAM_MIN_BYTES = 8 << 20
cdef int max_pool2d_forward_ex(const cconv_geom *g, const floating *x, floating *y,
                               index_t *argmax, int stream, int num_threads) noexcept nogil
cdef int max_pool2d_backward_ex(const cconv_geom *g, const floating *dy, const index_t *argmax,
                                floating *dx, int stream, int num_threads) noexcept nogil
cdef int avg_pool2d_forward_ex(const cconv_geom *g, const floating *x, floating *y,
                               int num_threads) noexcept nogil
cdef int avg_pool2d_backward_ex(const cconv_geom *g, const floating *dy, floating *dx,
                                int num_threads) noexcept nogil

# Max-pool backward for windows KH x KW that tile the input (OH*KH <= H, OW*KW <= W; the
# rest of dx is zeroed): one pass writes every element of dx (N, H, W, C) once. Returns 1
# when every argmax entry named a unit of its own window, 0 when one did not (then dx is
# incomplete: run max_pool2d_backward), or an error code. Reads N, H, W, C, OH, OW of g.
cdef int max_pool2d_backward_tiled(const cconv_geom *g, const floating *dy,
                                   const index_t *argmax, floating *dx, Py_ssize_t KH,
                                   Py_ssize_t KW, int stream, int num_threads) noexcept nogil
