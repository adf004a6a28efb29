# Elementwise gradients of activations.

from cython cimport floating

# The checked kernel of cconv.activation (see activation.pxd for its contract).
cdef int relu_backward(const floating *dy, const floating *y, floating *out, Py_ssize_t n,
                       int num_threads) noexcept nogil
