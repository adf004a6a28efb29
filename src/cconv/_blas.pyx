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
ctypedef void (*sgemv_t)(char *trans, int *m, int *n, float *alpha, float *a, int *lda,
                         float *x, int *incx, float *beta, float *y, int *incy) noexcept nogil
ctypedef void (*dgemv_t)(char *trans, int *m, int *n, double *alpha, double *a, int *lda,
                         double *x, int *incx, double *beta, double *y, int *incy) noexcept nogil

cdef sgemm_t _sgemm = NULL
cdef dgemm_t _dgemm = NULL
cdef sgemv_t _sgemv = NULL
cdef dgemv_t _dgemv = NULL      # bound last: ensure_blas tests it


def load_blas():
    """Bind the GEMM and GEMV routines of scipy's BLAS (idempotent)."""
    global _sgemm, _dgemm, _sgemv, _dgemv
    if _dgemv != NULL:
        return
    from scipy.linalg import cython_blas
    caps = cython_blas.__pyx_capi__
    _sgemm = <sgemm_t> PyCapsule_GetPointer(caps["sgemm"], PyCapsule_GetName(caps["sgemm"]))
    _dgemm = <dgemm_t> PyCapsule_GetPointer(caps["dgemm"], PyCapsule_GetName(caps["dgemm"]))
    _sgemv = <sgemv_t> PyCapsule_GetPointer(caps["sgemv"], PyCapsule_GetName(caps["sgemv"]))
    _dgemv = <dgemv_t> PyCapsule_GetPointer(caps["dgemv"], PyCapsule_GetName(caps["dgemv"]))


cdef int ensure_blas() noexcept nogil:
    if _dgemv != NULL:
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


cdef void gemm_row(bint trans_a, bint trans_b, int n, int k, floating alpha,
                   const floating *a, int lda, const floating *b, int ldb,
                   floating beta, floating *c) noexcept nogil:
    # c^T (n x 1) = op(B)^T a^T: B's row-major memory is, to column-major BLAS, the (n, k)
    # matrix op(B)^T itself (gemv "N"), or with trans_b the (k, n) matrix op(B) (gemv "T");
    # the row of op(A) is a[0], a[1], ... or with trans_a the column a[0], a[lda], ...
    # beta == 0 must not read c (it may hold NaN from uninitialised memory), and some BLAS
    # scale y by beta with a multiplication: c is zeroed first.
    cdef char tr = b'T' if trans_b else b'N'
    cdef int rows = k if trans_b else n, cols = n if trans_b else k
    cdef int incx = lda if trans_a else 1, incy = 1, i
    if beta == 0:
        for i in range(n):
            c[i] = 0
    if floating is float:
        _sgemv(&tr, &rows, &cols, &alpha, <float *> b, &ldb, <float *> a, &incx, &beta, c, &incy)
    else:
        _dgemv(&tr, &rows, &cols, &alpha, <double *> b, &ldb, <double *> a, &incx, &beta, c,
               &incy)
