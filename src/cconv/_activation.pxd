# Elementwise gradients of activations.

from cython cimport floating

# The kernel of cconv.activation (see activation.pxd for its contract): at most num_threads
# threads, fewer for small work (as cconv.functional decides).
cdef int relu_backward(const floating *dy, const floating *y, floating *out, Py_ssize_t n,
                       int num_threads) noexcept nogil
# The same on exactly num_threads threads (cconv.functional sizes its calls itself).
cdef int relu_backward_ex(const floating *dy, const floating *y, floating *out, Py_ssize_t n,
                          int num_threads) noexcept nogil
# out = max(x, 0) as numpy computes it (+0 for x <= 0, NaN kept), on exactly num_threads
# threads; out may be x itself.
cdef int relu_forward_ex(const floating *x, floating *out, Py_ssize_t n,
                         int num_threads) noexcept nogil
