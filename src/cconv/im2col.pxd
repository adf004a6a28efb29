# cconv's Cython API: im2col and col2im, the patches of an NHWC image as the rows of a
# matrix, and back.
#
#     from cconv.geometry cimport cconv_geom, cconv_conv_geom
#     from cconv.im2col cimport im2col, col2im
#
# compiled with include_dirs=[cconv.get_include()] (see cconv/conv.pxd for the conventions
# these kernels share: C-contiguous arrays of one `floating` dtype, threads, errors).
#
#     x    (N, H, W, C)
#     cols (N*OH*OW, KH*KW*C): row (n*OH + i)*OW + j holds the patch under output pixel
#          (n, i, j) in (kh, kw, c) order, zeros where the window lies in the padding
#
# for a convolution geometry g (cconv_conv_geom); its Cout and groups play no part (pass 1).
# Threads: at most num_threads (fewer for small work; 1: the calling thread alone). Returns
# CCONV_OK or an error code of cconv.geometry, with nothing written: CCONV_ERR_VALUE,
# CCONV_ERR_GEOMETRY, CCONV_ERR_CHANNELS, CCONV_ERR_TOO_LARGE. No exception, no GIL.

from cconv.geometry cimport cconv_geom
from cconv cimport _im2col
from cython cimport floating


# x IN (N, H, W, C); cols OUT (N*OH*OW, KH*KW*C), every element written.
cdef inline int im2col(const cconv_geom *g, const floating *x, floating *cols,
                       int num_threads) noexcept nogil:
    return _im2col.im2col(g, x, cols, num_threads)


# The adjoint of im2col: cols IN (N*OH*OW, KH*KW*C); x OUT (N, H, W, C), zeroed here, then
# every row of cols added onto the input pixels of its patch (overlapping patches sum).
cdef inline int col2im(const cconv_geom *g, const floating *cols, floating *x,
                       int num_threads) noexcept nogil:
    return _im2col.col2im(g, cols, x, num_threads)
