# cconv's Cython API: max pooling (which records the winner of every window) and average
# pooling, forward and backward.
#
#     from cconv.geometry cimport cconv_geom, cconv_pool_geom, CCONV_OK, CCONV_ERR_ARGMAX
#     from cconv.pool cimport max_pool2d_forward, max_pool2d_backward
#
# compiled with include_dirs=[cconv.get_include()] (see cconv/conv.pxd for the conventions
# these kernels share: C-contiguous arrays of one `floating` dtype, threads, errors).
#
#     x, dx     (N, H, W, C)
#     y, dy     (N, OH, OW, C)
#     argmax    (N, OH, OW, C), int (int32; needs H*W < 2**31) or long long (int64): the
#               flat index h*W + w of each window's winner in its (n, c) plane
#
# for a pool geometry g (cconv_pool_geom: window KH x KW, stride, paddings each smaller than
# the window, no dilation, Cout == C). The results equal cconv.functional's bit for bit.
# Threads: at most num_threads, fewer for small work; 1 runs on the calling thread alone. No
# exception, no GIL. Returns CCONV_OK or an error code of cconv.geometry (CCONV_ERR_VALUE,
# CCONV_ERR_GEOMETRY, CCONV_ERR_CHANNELS, CCONV_ERR_TOO_LARGE), with nothing written, or,
# from max_pool2d_backward only, CCONV_ERR_ARGMAX (see there).

from cconv.geometry cimport cconv_geom
from cconv cimport _pool
from cconv._pool cimport index_t
from cython cimport floating


# y = the maximum of each window, argmax = its position. A window is scanned in row-major
# order from its first element inside the input: padding never wins, ties keep the first
# element, a NaN wins (NaN propagates).
#   x      IN  (N, H, W, C)
#   y      OUT (N, OH, OW, C), every element written
#   argmax OUT (N, OH, OW, C), every element written; int indices refused
#          (CCONV_ERR_TOO_LARGE) when H*W >= 2**31
cdef inline int max_pool2d_forward(const cconv_geom *g, const floating *x, floating *y,
                                   index_t *argmax, int num_threads) noexcept nogil:
    return _pool.max_pool2d_forward(g, x, y, argmax, num_threads)


# dx = each gradient routed to the unit that won its window in the forward pass.
#   dy     IN  (N, OH, OW, C)
#   argmax IN  (N, OH, OW, C), as max_pool2d_forward wrote it
#   dx     OUT (N, H, W, C), every element written (zero where nothing was routed)
# Only N, H, W, C, OH and OW of g are read (and Cout must equal C): argmax says where each
# gradient goes, whatever the window. An argmax entry outside [0, H*W) is skipped, never used
# as an index: the kernel returns CCONV_ERR_ARGMAX, having written dx in bounds only, and
# dx then lacks those gradients.
cdef inline int max_pool2d_backward(const cconv_geom *g, const floating *dy,
                                    const index_t *argmax, floating *dx,
                                    int num_threads) noexcept nogil:
    return _pool.max_pool2d_backward(g, dy, argmax, dx, num_threads)


# y = the mean of each window; padded zeros count in the divisor (always KH*KW, as
# PyTorch's default count_include_pad=True).
#   x IN  (N, H, W, C)
#   y OUT (N, OH, OW, C), every element written
cdef inline int avg_pool2d_forward(const cconv_geom *g, const floating *x, floating *y,
                                   int num_threads) noexcept nogil:
    return _pool.avg_pool2d_forward(g, x, y, num_threads)


# dx = each gradient spread evenly (divided by KH*KW) over its window.
#   dy IN  (N, OH, OW, C)
#   dx OUT (N, H, W, C), zeroed here, then every window's share added
cdef inline int avg_pool2d_backward(const cconv_geom *g, const floating *dy, floating *dx,
                                    int num_threads) noexcept nogil:
    return _pool.avg_pool2d_backward(g, dy, dx, num_threads)
