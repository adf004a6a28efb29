# cconv's Cython API: 2-D convolution, forward and backward.
#
#     from cconv.geometry cimport cconv_geom, cconv_conv_geom, CCONV_OK
#     from cconv.conv cimport conv2d_forward, conv2d_forward_workspace
#
# compiled with include_dirs=[cconv.get_include()]; a complete package that does this is in
# cconv's repository, examples/downstream. The C API (cconv/cconv.h) offers the same kernels.
#
# Arrays: C-contiguous, one dtype per call (the fused type `floating`: float or double):
#     x  (N, H, W, C)              the input, NHWC
#     w  (KH, KW, C/groups, Cout)  the weights, HWIO
#     b  (Cout,)                   the bias
#     y  (N, OH, OW, Cout)         the output, for g's OH and OW
# with the sizes, stride, padding, dilation and groups of a geometry g that
# cconv_conv_geom filled (cconv.geometry). The convolution is a cross-correlation:
#     y[n, i, j, o] = b[o] + sum_{m, k, c} x[n, i*sh + m*dh - pt, j*sw + k*dw - pl, c] w[m, k, c, o]
# (zeros outside the input), and the results equal cconv.functional's bit for bit at the
# same thread count: the kernels make the plan cconv.functional makes with its defaults
# (im2col + GEMM in tiles, Winograd F(2x2, 3x3), or the direct AVX-512/AVX2/NEON kernel;
# never the opt-in F(4x4, 3x3) backward of cconv.functional.WINOGRAD4_MIN_CHANNELS)
# and run it.
#
# Threads: at most num_threads, fewer when the work is small (as cconv.functional
# decides); num_threads == 1 runs on the calling thread alone, which is what a caller inside
# its own prange should ask for. The GEMMs call scipy's BLAS from each thread: limit BLAS to
# one thread (threadpoolctl) around calls made with several threads or from several threads
# at once. The kernels are reentrant: concurrent calls need only distinct outputs and
# workspaces.
#
# Workspace: `work` is scratch memory of work_bytes bytes, aligned to 64 bytes, of at least
# conv2d_*_workspace(...) bytes (the same g, itemsize and num_threads), reusable from call to
# call; or NULL, and the kernel allocates what it needs and frees it before returning.
#
# Errors: CCONV_OK (0), or a negative code of cconv.geometry, with nothing written:
# CCONV_ERR_VALUE (a field of g out of range, num_threads < 1, a required pointer NULL),
# CCONV_ERR_GEOMETRY, CCONV_ERR_CHANNELS, CCONV_ERR_TOO_LARGE (g is not a consistent
# convolution), CCONV_ERR_WORKSPACE (work too small or misaligned), CCONV_ERR_NOMEM (work
# NULL and no memory), CCONV_ERR_BLAS (scipy's BLAS cannot be imported). No exception and no
# GIL, except once per process: the first convolution binds scipy's BLAS, taking the GIL for
# that moment (importing cconv.functional, or calling cconv._core.load_blas(), does it
# beforehand).

from cconv.geometry cimport cconv_geom
from cconv cimport _conv
from cython cimport floating


# Bytes of workspace that conv2d_forward needs for g, itemsize (sizeof(float) or
# sizeof(double)) and num_threads; 0 when it needs none; a negative error code for a bad g.
cdef inline Py_ssize_t conv2d_forward_workspace(const cconv_geom *g, int itemsize,
                                                int num_threads) noexcept nogil:
    return _conv.conv2d_forward_workspace(g, itemsize, num_threads)


# Bytes of workspace that conv2d_backward needs (need_dx: whether dx is asked for).
cdef inline Py_ssize_t conv2d_backward_workspace(const cconv_geom *g, int itemsize, int need_dx,
                                                 int num_threads) noexcept nogil:
    return _conv.conv2d_backward_workspace(g, itemsize, need_dx, num_threads)


# y = conv(x, w) + b.
#   x  IN  (N, H, W, C)
#   w  IN  (KH, KW, C/groups, Cout)
#   b  IN  (Cout,), or NULL: no bias
#   y  OUT (N, OH, OW, Cout), every element written (the caller need not zero it)
#   work: scratch, see above
cdef inline int conv2d_forward(const cconv_geom *g, const floating *x, const floating *w,
                               const floating *b, floating *y, void *work, size_t work_bytes,
                               int num_threads) noexcept nogil:
    return _conv.conv2d_forward(g, x, w, b, y, work, work_bytes, num_threads)


# The gradients of conv2d_forward, given dy = dL/dy:
#   dy IN  (N, OH, OW, Cout)
#   x  IN  (N, H, W, C), w IN (KH, KW, C/groups, Cout): as given to conv2d_forward
#   dx OUT (N, H, W, C) = dL/dx (the full convolution of dy with w rotated by 180 degrees),
#          or NULL: not computed (then the plan may take a cheaper route)
#   dw OUT (KH, KW, C/groups, Cout) = dL/dw (the cross-correlation of x with dy)
#   db OUT (Cout,) = dy summed over N, OH, OW, or NULL: not computed
# Every element of dx, dw and db is overwritten (nothing is accumulated into them, and the
# caller need not zero them).
cdef inline int conv2d_backward(const cconv_geom *g, const floating *dy, const floating *x,
                                const floating *w, floating *dx, floating *dw, floating *db,
                                void *work, size_t work_bytes, int num_threads) noexcept nogil:
    return _conv.conv2d_backward(g, dy, x, w, dx, dw, db, work, work_bytes, num_threads)
