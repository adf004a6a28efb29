# A BLAS shim for cconv's kernels: row-major GEMM over the fused type `floating`, on top of
# scipy.linalg.cython_blas, whose routines are bound on first use (importing scipy.linalg
# costs more than half a second, so `import cconv` does not).

from cython cimport floating

# Bind scipy's sgemm/dgemm/sgemv/dgemv if not done yet. Returns 0, or CCONV_ERR_BLAS when scipy's BLAS
# cannot be imported. The first call takes the GIL for the import (PyGILState_Ensure, so
# the caller may or may not hold it); call it on the calling thread before a parallel
# region, as every kernel that uses gemm does at its entry.
cdef int ensure_blas() noexcept nogil

# Row-major C (m, n) = alpha * op(A) @ op(B) + beta * C (IN/OUT), op = transpose when asked.
# Single-threaded when BLAS is limited to one thread (cconv.functional does it around its
# parallel kernels). Requires ensure_blas() == 0 beforehand.
cdef void gemm(bint trans_a, bint trans_b, int m, int n, int k, floating alpha,
               const floating *a, int lda, const floating *b, int ldb,
               floating beta, floating *c, int ldc) noexcept nogil

# The same with m = 1 (one row of C: c[0..n)), as a matrix-vector product (BLAS gemv):
# gemm packs op(B) before multiplying, which for one row costs more than the product
# (OpenBLAS's Haswell sgemm took 380 us for the paper network's first dense layer on one
# image, its sgemv 36 us). Requires ensure_blas() == 0 beforehand.
cdef void gemm_row(bint trans_a, bint trans_b, int n, int k, floating alpha,
                   const floating *a, int lda, const floating *b, int ldb,
                   floating beta, floating *c) noexcept nogil
