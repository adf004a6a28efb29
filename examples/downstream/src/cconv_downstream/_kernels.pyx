"""cconv's kernels from Cython: cimported, called without the GIL, from a prange too.

Each function fills a cconv geometry from its arguments, calls the kernel with the GIL
released and returns the kernel's error code; the caller allocates every output (so that a
test can surround them with guard cells). Arrays are NHWC (weights HWIO), C-contiguous.
"""
from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.stdint cimport uintptr_t
from libc.stdlib cimport free, malloc

from cconv.geometry cimport (cconv_geom, cconv_conv_geom, cconv_pool_geom, CCONV_OK,
                             CCONV_ERR_ARGMAX, CCONV_ERR_GEOMETRY, CCONV_ERR_VALUE,
                             CCONV_ERR_WORKSPACE, CCONV_ERR_NOMEM)
# The kernels, by module: cconv/conv.pxd, pool.pxd, im2col.pxd, activation.pxd.
from cconv cimport conv as cc_conv, pool as cc_pool, im2col as cc_im2col
from cconv cimport activation as cc_activation

OK = CCONV_OK
ERR_ARGMAX = CCONV_ERR_ARGMAX
ERR_GEOMETRY = CCONV_ERR_GEOMETRY
ERR_VALUE = CCONV_ERR_VALUE
ERR_WORKSPACE = CCONV_ERR_WORKSPACE

ctypedef fused index_t:
    int
    long long


cdef cconv_geom conv_geom(Py_ssize_t N, Py_ssize_t H, Py_ssize_t W, Py_ssize_t C,
                          Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t Cout, tuple stride,
                          tuple pads, tuple dilation, Py_ssize_t groups) except *:
    cdef cconv_geom g
    (sh, sw), ((pt, pb), (pl, pr)), (dh, dw) = stride, pads, dilation
    cdef int err = cconv_conv_geom(&g, N, H, W, C, KH, KW, Cout, sh, sw, pt, pb, pl, pr, dh, dw,
                                   groups)
    if err != CCONV_OK:
        raise ValueError(f"not a convolution's geometry (cconv error {err})")
    return g


cdef cconv_geom pool_geom(Py_ssize_t N, Py_ssize_t H, Py_ssize_t W, Py_ssize_t C, tuple size,
                          tuple stride, tuple pads) except *:
    cdef cconv_geom g
    (KH, KW), (sh, sw), ((pt, pb), (pl, pr)) = size, stride, pads
    cdef int err = cconv_pool_geom(&g, N, H, W, C, KH, KW, sh, sw, pt, pb, pl, pr)
    if err != CCONV_OK:
        raise ValueError(f"not a pool's geometry (cconv error {err})")
    return g


def conv2d_workspace(tuple xshape, tuple wshape, tuple stride, tuple pads, tuple dilation,
                     int groups, int itemsize, bint backward, bint need_dx, int num_threads):
    """Bytes of workspace cconv's convolution needs (or a negative error code)."""
    cdef cconv_geom g = conv_geom(xshape[0], xshape[1], xshape[2], xshape[3], wshape[0],
                                  wshape[1], wshape[3], stride, pads, dilation, groups)
    if backward:
        return cc_conv.conv2d_backward_workspace(&g, itemsize, need_dx, num_threads)
    return cc_conv.conv2d_forward_workspace(&g, itemsize, num_threads)


def conv2d(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w,
           const floating[::1] b, floating[:, :, :, ::1] y, tuple stride, tuple pads,
           tuple dilation, int groups, int num_threads):
    """y = conv(x, w) + b (b may be None) by one call of cconv's kernel on the whole batch,
    on at most num_threads threads; cconv allocates its workspace."""
    cdef cconv_geom g = conv_geom(x.shape[0], x.shape[1], x.shape[2], x.shape[3], w.shape[0],
                                  w.shape[1], w.shape[3], stride, pads, dilation, groups)
    cdef const floating *bp = &b[0] if b is not None else NULL
    cdef int err
    with nogil:
        err = cc_conv.conv2d_forward(&g, &x[0, 0, 0, 0], &w[0, 0, 0, 0], bp, &y[0, 0, 0, 0], NULL, 0,
                             num_threads)
    return err


def conv2d_per_image(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w,
                     const floating[::1] b, floating[:, :, :, ::1] y, tuple stride,
                     tuple pads, tuple dilation, int groups, int num_threads):
    """The same, but from this package's own prange over the images: each iteration
    convolves one image with cconv's kernel on one thread (the calling one), in the
    workspace of the thread that runs it. Returns the first error code, or 0."""
    cdef cconv_geom g = conv_geom(1, x.shape[1], x.shape[2], x.shape[3], w.shape[0],
                                  w.shape[1], w.shape[3], stride, pads, dilation, groups)
    cdef const floating *bp = &b[0] if b is not None else NULL
    cdef Py_ssize_t ws = cc_conv.conv2d_forward_workspace(&g, sizeof(floating), 1)
    if ws < 0:
        return ws
    cdef char *raw = <char *> malloc(num_threads * ws + 64)
    if raw == NULL:
        raise MemoryError()
    cdef char *work = <char *> ((<uintptr_t> raw + 63) & ~(<uintptr_t> 63))   # 64-byte aligned
    cdef Py_ssize_t n
    cdef int err, failed = 0
    for n in prange(x.shape[0], nogil=True, num_threads=num_threads, schedule="static"):
        err = cc_conv.conv2d_forward(&g, &x[n, 0, 0, 0], &w[0, 0, 0, 0], bp, &y[n, 0, 0, 0],
                             work + threadid() * ws, ws, 1)
        if err != CCONV_OK:
            failed += 1
    free(raw)
    return CCONV_ERR_VALUE if failed else CCONV_OK


def conv2d_backward(const floating[:, :, :, ::1] dy, const floating[:, :, :, ::1] x,
                    const floating[:, :, :, ::1] w, floating[:, :, :, ::1] dx,
                    floating[:, :, :, ::1] dw, floating[::1] db, tuple stride, tuple pads,
                    tuple dilation, int groups, int num_threads):
    """dx (or None: not computed), dw and db of the convolution."""
    cdef cconv_geom g = conv_geom(x.shape[0], x.shape[1], x.shape[2], x.shape[3], w.shape[0],
                                  w.shape[1], w.shape[3], stride, pads, dilation, groups)
    cdef floating *dxp = &dx[0, 0, 0, 0] if dx is not None else NULL
    cdef int err
    with nogil:
        err = cc_conv.conv2d_backward(&g, &dy[0, 0, 0, 0], &x[0, 0, 0, 0], &w[0, 0, 0, 0], dxp,
                              &dw[0, 0, 0, 0], &db[0], NULL, 0, num_threads)
    return err


def im2col(const floating[:, :, :, ::1] x, floating[:, ::1] cols, tuple size, tuple stride,
           tuple pads, tuple dilation, int num_threads):
    cdef cconv_geom g = conv_geom(x.shape[0], x.shape[1], x.shape[2], x.shape[3], size[0],
                                  size[1], 1, stride, pads, dilation, 1)
    cdef int err
    with nogil:
        err = cc_im2col.im2col(&g, &x[0, 0, 0, 0], &cols[0, 0], num_threads)
    return err


def col2im(const floating[:, ::1] cols, floating[:, :, :, ::1] x, tuple size, tuple stride,
           tuple pads, tuple dilation, int num_threads):
    cdef cconv_geom g = conv_geom(x.shape[0], x.shape[1], x.shape[2], x.shape[3], size[0],
                                  size[1], 1, stride, pads, dilation, 1)
    cdef int err
    with nogil:
        err = cc_im2col.col2im(&g, &cols[0, 0], &x[0, 0, 0, 0], num_threads)
    return err


def max_pool2d(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y,
               index_t[:, :, :, ::1] argmax, tuple size, tuple stride, tuple pads,
               int num_threads):
    cdef cconv_geom g = pool_geom(x.shape[0], x.shape[1], x.shape[2], x.shape[3], size, stride,
                                  pads)
    cdef int err
    with nogil:
        err = cc_pool.max_pool2d_forward(&g, &x[0, 0, 0, 0], &y[0, 0, 0, 0], &argmax[0, 0, 0, 0],
                                 num_threads)
    return err


def max_pool2d_backward(const floating[:, :, :, ::1] dy, const index_t[:, :, :, ::1] argmax,
                        floating[:, :, :, ::1] dx, int num_threads):
    """dx: every gradient of dy routed to the unit argmax names. dx may be a view into a
    larger buffer: only its own elements may be written, even when argmax is invalid
    (then the result is ERR_ARGMAX)."""
    cdef cconv_geom g
    # Only the sizes matter to the kernel: any geometry with them will do, here a window of
    # 1 x 1 over an input as large as the output, then the real input and output sizes.
    cconv_pool_geom(&g, dx.shape[0], dy.shape[1], dy.shape[2], dx.shape[3], 1, 1, 1, 1, 0, 0,
                    0, 0)
    g.H, g.W = dx.shape[1], dx.shape[2]
    cdef int err
    with nogil:
        err = cc_pool.max_pool2d_backward(&g, &dy[0, 0, 0, 0], &argmax[0, 0, 0, 0], &dx[0, 0, 0, 0],
                                  num_threads)
    return err


def avg_pool2d(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y, tuple size,
               tuple stride, tuple pads, int num_threads):
    cdef cconv_geom g = pool_geom(x.shape[0], x.shape[1], x.shape[2], x.shape[3], size, stride,
                                  pads)
    cdef int err
    with nogil:
        err = cc_pool.avg_pool2d_forward(&g, &x[0, 0, 0, 0], &y[0, 0, 0, 0], num_threads)
    return err


def avg_pool2d_backward(const floating[:, :, :, ::1] dy, floating[:, :, :, ::1] dx,
                        tuple size, tuple stride, tuple pads, int num_threads):
    cdef cconv_geom g = pool_geom(dx.shape[0], dx.shape[1], dx.shape[2], dx.shape[3], size,
                                  stride, pads)
    cdef int err
    with nogil:
        err = cc_pool.avg_pool2d_backward(&g, &dy[0, 0, 0, 0], &dx[0, 0, 0, 0], num_threads)
    return err


def relu_backward(const floating[::1] dy, const floating[::1] y, floating[::1] out,
                  int num_threads):
    cdef int err
    with nogil:
        err = cc_activation.relu_backward(&dy[0], &y[0], &out[0], dy.shape[0], num_threads)
    return err
