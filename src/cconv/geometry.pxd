# cconv's Cython API: the geometry of a layer and the error codes of the kernels.
#
#     from cconv.geometry cimport cconv_geom, cconv_conv_geom, CCONV_OK
#
# Declared from the C header cconv/geometry.h: compile with
# include_dirs=[cconv.get_include()]. The kernels that take a geometry are in
# cconv/conv.pxd, cconv/im2col.pxd, cconv/pool.pxd; cconv/activation.pxd has ReLU's.
#
# Layout: activations NHWC (N, H, W, C), convolution weights HWIO (KH, KW, C / groups,
# Cout), every array C-contiguous and of one dtype (float or double, the fused type
# `floating` of each kernel). Output sizes follow
#     OH = floor((H + pt + pb - dh * (KH - 1) - 1) / sh) + 1     (OW likewise)
# Every kernel checks its geometry before it touches memory and returns CCONV_OK (0) or a
# negative code below; a failed check writes nothing. The geometry cannot say how large
# the caller's buffers are: each kernel states, next to its declaration, the shape (in
# elements) of every buffer it reads (IN) or writes (OUT).

cdef extern from "cconv/geometry.h" nogil:
    # Error codes.
    enum:
        CCONV_OK              # 0: success
        CCONV_ERR_VALUE       # a size, stride, dilation, padding, group or thread count out
                              # of range, or a required pointer is NULL
        CCONV_ERR_GEOMETRY    # window larger than the padded input, OH/OW not the formula's,
                              # or (pools) a padding not smaller than the window
        CCONV_ERR_CHANNELS    # C or Cout not divisible by groups (pools: Cout != C)
        CCONV_ERR_TOO_LARGE   # a size beyond 2**31 - 1 (the 32-bit GEMM interface) or
                              # arrays beyond the address space
        CCONV_ERR_WORKSPACE   # workspace smaller than the kernel needs, or not 64-byte aligned
        CCONV_ERR_ARGMAX      # an argmax entry outside [0, H*W): dropped, dx incomplete
        CCONV_ERR_NOMEM       # out of memory
        CCONV_ERR_BLAS        # scipy's BLAS could not be loaded
        CCONV_SIZE_MAX        # 2**31 - 1: the largest size, stride, padding or dilation

    ctypedef struct cconv_geom:
        Py_ssize_t N, H, W, C        # input (N, H, W, C); N may be 0, the others >= 1
        Py_ssize_t KH, KW            # window (kernel or pool)
        Py_ssize_t OH, OW, Cout      # output (N, OH, OW, Cout); pools: Cout == C
        Py_ssize_t sh, sw            # stride
        Py_ssize_t pt, pb, pl, pr    # zero padding: top, bottom, left, right
        Py_ssize_t dh, dw            # dilation (pools: 1)
        Py_ssize_t groups            # divides C and Cout (pools: 1)

    # Fill g for a convolution (OH, OW from the formula) and check it: CCONV_OK or an error.
    int cconv_conv_geom(cconv_geom *g, Py_ssize_t N, Py_ssize_t H, Py_ssize_t W, Py_ssize_t C,
                        Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t Cout,
                        Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pb,
                        Py_ssize_t pl, Py_ssize_t pr, Py_ssize_t dh, Py_ssize_t dw,
                        Py_ssize_t groups)
    # Fill g for a max or average pool over C channels and check it.
    int cconv_pool_geom(cconv_geom *g, Py_ssize_t N, Py_ssize_t H, Py_ssize_t W, Py_ssize_t C,
                        Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw,
                        Py_ssize_t pt, Py_ssize_t pb, Py_ssize_t pl, Py_ssize_t pr)
    # The checks that the kernels run (for a geometry filled by hand).
    int cconv_conv_geom_check(const cconv_geom *g)
    int cconv_pool_geom_check(const cconv_geom *g)
    # Only the sizes N, H, W, C, Cout, OH, OW (what max_pool2d_backward reads).
    int cconv_sizes_check(const cconv_geom *g)
    # floor((size + before + after - dilation * (kernel - 1) - 1) / stride) + 1, or 0 when
    # the window does not fit.
    Py_ssize_t cconv_output_size(Py_ssize_t size, Py_ssize_t kernel, Py_ssize_t stride,
                                 Py_ssize_t before, Py_ssize_t after, Py_ssize_t dilation)
