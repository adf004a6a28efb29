# im2col / col2im: the patches of an NHWC image as the rows of a matrix, and back.
# im2col rows are ordered (n, oh, ow) and their columns (kh, kw, c): seen as a matrix of
# shape (KH*KW*C/groups, Cout), HWIO weights are exactly the right operand of the GEMM.

from cython cimport floating
from cconv.geometry cimport cconv_geom

# Rows r0..r1 (flat (n, oh, ow) index) of channels c0..c0+cg of x (N, H, W, C) into
# out (OUT, (r1 - r0, KH*KW*cg)), written sequentially; zeros where the window lies in
# the padding. No checks: for kernels that have checked g.
cdef void im2col_rows(const floating *x, floating *out, Py_ssize_t r0, Py_ssize_t r1,
                      Py_ssize_t c0, Py_ssize_t cg, const cconv_geom *g) noexcept nogil

# The adjoint: scatter-add rows r0..r1 of cols (channels c0..c0+cg) into x (IN/OUT).
cdef void col2im_rows(const floating *cols, floating *x, Py_ssize_t r0, Py_ssize_t r1,
                      Py_ssize_t c0, Py_ssize_t cg, const cconv_geom *g) noexcept nogil

# The kernels of cconv.im2col (see im2col.pxd for their contract): at most num_threads
# threads, fewer for small work (as cconv.functional decides).
cdef int im2col(const cconv_geom *g, const floating *x, floating *cols,
                int num_threads) noexcept nogil
cdef int col2im(const cconv_geom *g, const floating *cols, floating *x,
                int num_threads) noexcept nogil
# The same on exactly num_threads threads (cconv.functional sizes its calls itself); col2im_ex
# zeroes x first only when asked (zero), else adds onto what x holds (IN/OUT).
cdef int im2col_ex(const cconv_geom *g, const floating *x, floating *cols,
                   int num_threads) noexcept nogil
cdef int col2im_ex(const cconv_geom *g, const floating *cols, floating *x, bint zero,
                   int num_threads) noexcept nogil
