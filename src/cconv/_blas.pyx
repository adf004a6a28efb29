# cython: language_level=3
"""Row-major GEMM on scipy's BLAS (see _blas.pxd)."""
from cython cimport floating
from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_GetName

cdef extern from "cconv/geometry.h":
    int CCONV_ERR_BLAS

ctypedef void (*sgemm_t)(char *transa, char *transb, int *m, int *n, int *k,
                         float *alpha, float *a, int *lda, float *b, int *ldb,
                         float *beta, float *c, int *ldc) noexcept nogil
ctypedef void (*dgemm_t)(char *transa, char *transb, int *m, int *n, int *k,
                         double *alpha, double *a, int *lda, double *b, int *ldb,
                         double *beta, double *c, int *ldc) noexcept nogil

cdef sgemm_t _sgemm = NULL
cdef dgemm_t _dgemm = NULL


def load_blas():
    """Bind the GEMM routines of scipy's BLAS (idempotent)."""
    global _sgemm, _dgemm
    if _dgemm != NULL:
        return
    from scipy.linalg import cython_blas
    caps = cython_blas.__pyx_capi__
    _sgemm = <sgemm_t> PyCapsule_GetPointer(caps["sgemm"], PyCapsule_GetName(caps["sgemm"]))
    _dgemm = <dgemm_t> PyCapsule_GetPointer(caps["dgemm"], PyCapsule_GetName(caps["dgemm"]))


cdef int ensure_blas() noexcept nogil:
    if _dgemm != NULL:
        return 0
    with gil:
        try:
            load_blas()
        except Exception:
            return CCONV_ERR_BLAS
    return 0


cdef void gemm(bint trans_a, bint trans_b, int m, int n, int k, floating alpha,
               const floating *a, int lda, const floating *b, int ldb,
               floating beta, floating *c, int ldc) noexcept nogil:
    # Column-major BLAS sees a row-major matrix as its transpose, so C^T = op(B)^T op(A)^T
    # is computed by swapping the operands: gemm(tb, ta, n, m, k, B, A).
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    if floating is float:
        _sgemm(&tb, &ta, &n, &m, &k, &alpha, <float *> b, &ldb, <float *> a, &lda,
               &beta, c, &ldc)
    else:
        _dgemm(&tb, &ta, &n, &m, &k, &alpha, <double *> b, &ldb, <double *> a, &lda,
               &beta, c, &ldc)
