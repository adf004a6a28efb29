# cconv's Cython API: elementwise gradients of activations.
#
#     from cconv.activation cimport relu_backward
#
# (see cconv/conv.pxd for the conventions these kernels share).

from cconv cimport _activation
from cython cimport floating


# out = dy where y > 0, else 0: the gradient of ReLU from its output y = max(x, 0).
#   dy  IN  (n,)
#   y   IN  (n,)
#   out OUT (n,), every element written; it must not overlap dy or y
# Threads: at most num_threads, in blocks of 65,536 elements (fewer for small n; 1: the
# calling thread alone). Returns CCONV_OK, or CCONV_ERR_VALUE (n < 0, num_threads < 1, a
# NULL pointer with n > 0) with nothing written. No exception, no GIL.
cdef inline int relu_backward(const floating *dy, const floating *y, floating *out,
                              Py_ssize_t n, int num_threads) noexcept nogil:
    return _activation.relu_backward(dy, y, out, n, num_threads)
