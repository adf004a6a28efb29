# cython: language_level=3
"""Compiled kernels of cconv.

Everything here runs without the GIL. The functions take C-contiguous arrays that
``cconv.functional`` has already validated (shapes, dtypes, geometry, index ranges
where they can be checked up front); the kernels contain nothing that can fail
except the range check of ``argmax`` in the max-pool backward, which is reported
back through the return value instead of writing out of bounds.

Layout: activations NHWC, im2col rows ordered (n, oh, ow), columns (kh, kw, c);
convolution weights HWIO, which seen as a matrix of shape (KH*KW*C_in/groups, C_out)
are exactly the right operand of the im2col GEMM.

Parallel pattern: ``with nogil, parallel(num_threads=nt)``; each thread owns a slice
of a workspace allocated by the caller (its im2col tile, its dW/db accumulators),
``prange(schedule="static")`` over tiles or images, single-threaded BLAS inside
(the caller limits BLAS threads, see ``cconv._config``), per-thread partial
results summed afterwards.
"""
from cython cimport floating
from cython.parallel cimport parallel, prange, threadid
from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_GetName
from libc.stdint cimport uintptr_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

ctypedef fused index_t:     # max-pool argmax: int32 unless a plane has 2**31 units or more
    int
    long long

cdef extern from "_platform.h":
    int CCONV_OPENMP
    int CCONV_HAVE_FTZ
    int cconv_omp_max_threads() noexcept nogil
    unsigned long cconv_ftz_on() noexcept nogil
    void cconv_ftz_restore(unsigned long old) noexcept nogil

cdef extern from "_elementwise.h":
    void cconv_add_f(float *d, const float *s, Py_ssize_t n) noexcept nogil
    void cconv_add_d(double *d, const double *s, Py_ssize_t n) noexcept nogil
    void cconv_relu_bwd_f(float *out, const float *dy, const float *y, Py_ssize_t n) noexcept nogil
    void cconv_relu_bwd_d(double *out, const double *dy, const double *y, Py_ssize_t n) noexcept nogil

cdef extern from "_pool_rows.h":
    long long cconv_maxpool_bwd_row_fi(float *dx, const float *dy, const int *a, Py_ssize_t n,
                                       Py_ssize_t oh, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t H,
                                       Py_ssize_t W, Py_ssize_t C, Py_ssize_t KH, Py_ssize_t KW) noexcept nogil
    long long cconv_maxpool_bwd_row_fl(float *dx, const float *dy, const long long *a, Py_ssize_t n,
                                       Py_ssize_t oh, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t H,
                                       Py_ssize_t W, Py_ssize_t C, Py_ssize_t KH, Py_ssize_t KW) noexcept nogil
    long long cconv_maxpool_bwd_row_di(double *dx, const double *dy, const int *a, Py_ssize_t n,
                                       Py_ssize_t oh, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t H,
                                       Py_ssize_t W, Py_ssize_t C, Py_ssize_t KH, Py_ssize_t KW) noexcept nogil
    long long cconv_maxpool_bwd_row_dl(double *dx, const double *dy, const long long *a, Py_ssize_t n,
                                       Py_ssize_t oh, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t H,
                                       Py_ssize_t W, Py_ssize_t C, Py_ssize_t KH, Py_ssize_t KW) noexcept nogil
    void cconv_maxpool_row_fi(const float *x, float *y, int *a, Py_ssize_t n, Py_ssize_t H,
                              Py_ssize_t W, Py_ssize_t C, Py_ssize_t OW, Py_ssize_t h0,
                              Py_ssize_t h1, Py_ssize_t KW, Py_ssize_t sw, Py_ssize_t pl) noexcept nogil
    void cconv_maxpool_row_fl(const float *x, float *y, long long *a, Py_ssize_t n, Py_ssize_t H,
                              Py_ssize_t W, Py_ssize_t C, Py_ssize_t OW, Py_ssize_t h0,
                              Py_ssize_t h1, Py_ssize_t KW, Py_ssize_t sw, Py_ssize_t pl) noexcept nogil
    void cconv_maxpool_row_di(const double *x, double *y, int *a, Py_ssize_t n, Py_ssize_t H,
                              Py_ssize_t W, Py_ssize_t C, Py_ssize_t OW, Py_ssize_t h0,
                              Py_ssize_t h1, Py_ssize_t KW, Py_ssize_t sw, Py_ssize_t pl) noexcept nogil
    void cconv_maxpool_row_dl(const double *x, double *y, long long *a, Py_ssize_t n, Py_ssize_t H,
                              Py_ssize_t W, Py_ssize_t C, Py_ssize_t OW, Py_ssize_t h0,
                              Py_ssize_t h1, Py_ssize_t KW, Py_ssize_t sw, Py_ssize_t pl) noexcept nogil


cdef inline void vadd(floating *d, const floating *s, Py_ssize_t n) noexcept nogil:
    """d[:n] += s[:n] for non-overlapping d and s."""
    if floating is float:
        cconv_add_f(d, s, n)
    else:
        cconv_add_d(d, s, n)


# ---------------------------------------------------------------------------------
# BLAS: function pointers taken from scipy.linalg.cython_blas on first use, so that
# `import cconv` does not import scipy.linalg (which costs more than half a second).
# ---------------------------------------------------------------------------------
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
    if _sgemm != NULL:
        return
    from scipy.linalg import cython_blas
    caps = cython_blas.__pyx_capi__
    _sgemm = <sgemm_t> PyCapsule_GetPointer(caps["sgemm"], PyCapsule_GetName(caps["sgemm"]))
    _dgemm = <dgemm_t> PyCapsule_GetPointer(caps["dgemm"], PyCapsule_GetName(caps["dgemm"]))


cdef inline void gemm(bint trans_a, bint trans_b, int m, int n, int k, floating alpha,
                      const floating *a, int lda, const floating *b, int ldb,
                      floating beta, floating *c, int ldc) noexcept nogil:
    """Row-major C (m, n) = alpha * op(A) @ op(B) + beta * C.

    Column-major BLAS sees a row-major matrix as its transpose, so C^T = op(B)^T op(A)^T
    is computed by swapping the operands: gemm(tb, ta, n, m, k, B, A).
    """
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    if floating is float:
        _sgemm(&tb, &ta, &n, &m, &k, &alpha, <float *> b, &ldb, <float *> a, &lda,
               &beta, c, &ldc)
    else:
        _dgemm(&tb, &ta, &n, &m, &k, &alpha, <double *> b, &ldb, <double *> a, &lda,
               &beta, c, &ldc)


def matmul(bint trans_a, bint trans_b, const floating[:, ::1] a, const floating[:, ::1] b,
           double beta, floating[:, ::1] c, int num_threads):  # c: IN/OUT
    """c = op(a) @ op(b) + beta * c, the rows of c cut into one block per thread.

    Each thread makes one single-threaded BLAS call on its block, so dense layers run on
    cconv's own (passively waiting) OpenMP threads: no BLAS thread pool is left spinning
    next to the convolution kernels. The caller ensures the inner dimension is non-zero.
    """
    cdef int m = c.shape[0], n = c.shape[1]
    cdef int k = a.shape[0] if trans_a else a.shape[1]
    cdef int lda = a.shape[1], ldb = b.shape[1]
    cdef const floating *ap = &a[0, 0]
    cdef const floating *bp = &b[0, 0]
    cdef floating *cp = &c[0, 0]
    cdef Py_ssize_t ch, r0, r1
    load_blas()
    with nogil, parallel(num_threads=num_threads):
        for ch in prange(num_threads, schedule="static"):
            r0 = ch * m // num_threads
            r1 = (ch + 1) * m // num_threads
            if r1 > r0:
                gemm(trans_a, trans_b, <int> (r1 - r0), n, k, <floating> 1,
                     ap + (r0 if trans_a else r0 * lda), lda, bp, ldb, <floating> beta,
                     cp + r0 * n, n)


# ---------------------------------------------------------------------------------
# A cache of large output buffers. A freshly mapped buffer costs the kernel a page fault
# and a zero-fill of every page before the first write, which for a 64 MB pool gradient
# takes as long as the pool itself; a training loop frees and re-allocates the same sizes
# every step, so freed buffers are kept (up to a byte limit) and handed out again.
# All of it runs with the GIL held (allocation from Python, release from __dealloc__).
# ---------------------------------------------------------------------------------
cdef enum:
    BLOCK_ALIGN = 64
cdef dict _free_blocks = {}          # rounded size -> list of malloc'ed addresses
cdef Py_ssize_t _cached_bytes = 0
cdef Py_ssize_t _cache_limit = 0
cdef Py_ssize_t _cache_hits = 0      # requests served from the cache, and the others
cdef Py_ssize_t _cache_misses = 0


cdef inline char *_aligned(char *raw) noexcept:
    return <char *> ((<uintptr_t> raw + BLOCK_ALIGN - 1) & ~(<uintptr_t> BLOCK_ALIGN - 1))


cdef class Block:
    """Writable, 64-byte aligned memory of ``nbytes`` bytes (a numpy array's base).

    Taken from the cache when it holds a block of the same rounded size (or up to 25%
    larger); given back to it when the last array using it goes away, unless that would
    exceed the cache limit. A request that the cache cannot serve is a plain malloc.
    """
    cdef char *raw
    cdef Py_ssize_t size             # rounded size: the cache key
    cdef Py_ssize_t nbytes

    def __cinit__(self, Py_ssize_t nbytes):
        global _cached_bytes, _cache_hits, _cache_misses
        self.nbytes = nbytes
        self.size = (nbytes + 4095) // 4096 * 4096
        # Best fit among the cached blocks at most 25% larger (a last, smaller batch
        # reuses the blocks of the full ones).
        fits = [size for size in _free_blocks if self.size <= size <= self.size + self.size // 4]
        if fits:
            self.size = min(fits)
            free_list = _free_blocks[self.size]
            self.raw = <char *> <uintptr_t> free_list.pop()
            if not free_list:
                del _free_blocks[self.size]
            _cached_bytes -= self.size
            _cache_hits += 1
            return
        # A miss leaves the cached blocks alone. Freeing some of them here (an earlier
        # rule, to keep the footprint at a plain allocator's) made a loop thrash whenever
        # the previous step's output was still alive while the next one was allocated, as
        # a layer's stored activations are: each miss freed the block that the next request
        # needed, and a training epoch took 400,000 page faults. The limit bounds the cache.
        _cache_misses += 1
        self.raw = <char *> malloc(self.size + BLOCK_ALIGN)
        if self.raw == NULL and _cached_bytes:      # short of memory: the cache goes first
            _trim(0)
            self.raw = <char *> malloc(self.size + BLOCK_ALIGN)
        if self.raw == NULL:
            raise MemoryError(f"cconv: could not allocate {nbytes} bytes")

    def __getbuffer__(self, Py_buffer *view, int flags):
        view.buf = _aligned(self.raw)
        view.obj = self
        view.len = self.nbytes
        view.readonly = 0
        view.itemsize = 1
        view.format = "B"
        view.ndim = 1
        view.shape = &self.nbytes
        view.strides = &view.itemsize
        view.suboffsets = NULL
        view.internal = NULL

    def __releasebuffer__(self, Py_buffer *view):
        pass

    def __dealloc__(self):
        global _cached_bytes
        if self.raw == NULL:
            return
        if _free_blocks is not None and _cached_bytes + self.size <= _cache_limit:
            _free_blocks.setdefault(self.size, []).append(<uintptr_t> self.raw)
            _cached_bytes += self.size
        else:
            free(self.raw)
        self.raw = NULL


def set_cache_limit(Py_ssize_t limit):
    """Keep at most ``limit`` bytes of freed blocks; frees what is beyond it now."""
    global _cache_limit
    _cache_limit = max(0, limit)
    _trim(_cache_limit)


def cache_info():
    """(bytes held by freed blocks, the limit)."""
    return _cached_bytes, _cache_limit


def cache_stats():
    """(requests served from the cache, requests that were not) since the module loaded."""
    return _cache_hits, _cache_misses


cdef _trim(Py_ssize_t keep):
    global _cached_bytes
    for size in sorted(_free_blocks, reverse=True):
        free_list = _free_blocks[size]
        while free_list and _cached_bytes > keep:
            free(<char *> <uintptr_t> free_list.pop())
            _cached_bytes -= size
        if not free_list:
            del _free_blocks[size]


def openmp_enabled():
    """True when the extension was compiled with OpenMP."""
    return bool(CCONV_OPENMP)


def omp_max_threads():
    """omp_get_max_threads() of the OpenMP runtime (1 without OpenMP)."""
    return cconv_omp_max_threads()


def ftz_available():
    """True when the kernels set flush-to-zero/denormals-are-zero in their threads."""
    return bool(CCONV_HAVE_FTZ)


# ---------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------
ctypedef struct Geom:
    Py_ssize_t N, H, W, C          # input
    Py_ssize_t KH, KW              # kernel / pool window
    Py_ssize_t OH, OW              # output
    Py_ssize_t sh, sw, pt, pl, dh, dw


cdef Geom make_geom(Py_ssize_t N, Py_ssize_t H, Py_ssize_t W, Py_ssize_t C,
                    Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t OH, Py_ssize_t OW,
                    Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                    Py_ssize_t dh, Py_ssize_t dw):
    cdef Geom g
    g.N = N; g.H = H; g.W = W; g.C = C
    g.KH = KH; g.KW = KW; g.OH = OH; g.OW = OW
    g.sh = sh; g.sw = sw; g.pt = pt; g.pl = pl; g.dh = dh; g.dw = dw
    return g


cdef inline Py_ssize_t row_origin(Py_ssize_t r, const Geom *g, Py_ssize_t *ih0,
                                  Py_ssize_t *iw0) noexcept nogil:
    """Image index of im2col row r (flat (n, oh, ow)); the input position of the window's
    top-left tap (which may lie in the padding) goes to ih0, iw0."""
    cdef Py_ssize_t P = g.OH * g.OW
    cdef Py_ssize_t n = r // P
    cdef Py_ssize_t p = r - n * P
    cdef Py_ssize_t oh = p // g.OW
    ih0[0] = oh * g.sh - g.pt
    iw0[0] = (p - oh * g.OW) * g.sw - g.pl
    return n


cdef void im2col_rows(const floating *x, floating *out, Py_ssize_t r0, Py_ssize_t r1,
                      Py_ssize_t c0, Py_ssize_t cg, const Geom *g) noexcept nogil:
    """Write im2col rows r0..r1 (flat (n, oh, ow) index) of channels c0..c0+cg into out.

    out: OUT, shape (r1 - r0, KH*KW*cg), written sequentially; zeros where the window
    falls in the padding.
    """
    cdef Py_ssize_t r, n, kh, kw, ih, iw, ih0, iw0
    cdef const floating *src
    cdef floating *dst = out
    cdef bint contiguous_row = g.dw == 1 and cg == g.C
    for r in range(r0, r1):
        n = row_origin(r, g, &ih0, &iw0)
        for kh in range(g.KH):
            ih = ih0 + kh * g.dh
            if ih < 0 or ih >= g.H:
                memset(dst, 0, g.KW * cg * sizeof(floating))
                dst += g.KW * cg
                continue
            src = x + ((n * g.H + ih) * g.W) * g.C + c0
            if contiguous_row and iw0 >= 0 and iw0 + g.KW <= g.W:
                # The whole kernel row lies inside the image: one contiguous copy.
                memcpy(dst, src + iw0 * g.C, g.KW * cg * sizeof(floating))
                dst += g.KW * cg
                continue
            for kw in range(g.KW):
                iw = iw0 + kw * g.dw
                if iw < 0 or iw >= g.W:
                    memset(dst, 0, cg * sizeof(floating))
                else:
                    memcpy(dst, src + iw * g.C, cg * sizeof(floating))
                dst += cg


cdef void col2im_rows(const floating *cols, floating *x, Py_ssize_t r0, Py_ssize_t r1,
                      Py_ssize_t c0, Py_ssize_t cg, const Geom *g) noexcept nogil:
    """Scatter-add im2col rows r0..r1 (channels c0..c0+cg) back into x (IN/OUT, NHWC)."""
    cdef Py_ssize_t r, n, kh, kw, ih, iw, ih0, iw0
    cdef floating *dst
    cdef const floating *src = cols
    cdef bint contiguous_row = g.dw == 1 and cg == g.C
    for r in range(r0, r1):
        n = row_origin(r, g, &ih0, &iw0)
        for kh in range(g.KH):
            ih = ih0 + kh * g.dh
            if ih < 0 or ih >= g.H:
                src += g.KW * cg
                continue
            dst = x + ((n * g.H + ih) * g.W) * g.C + c0
            if contiguous_row and iw0 >= 0 and iw0 + g.KW <= g.W:
                vadd(dst + iw0 * g.C, src, g.KW * cg)
                src += g.KW * cg
                continue
            for kw in range(g.KW):
                iw = iw0 + kw * g.dw
                if iw >= 0 and iw < g.W:
                    vadd(dst + iw * g.C, src, cg)
                src += cg


# ---------------------------------------------------------------------------------
# im2col / col2im as public kernels
# ---------------------------------------------------------------------------------
def im2col(const floating[:, :, :, ::1] x, floating[:, ::1] cols,  # cols: OUT
           Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t OH, Py_ssize_t OW,
           Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
           Py_ssize_t dh, Py_ssize_t dw, int num_threads):
    cdef Geom g = make_geom(x.shape[0], x.shape[1], x.shape[2], x.shape[3], KH, KW, OH, OW, sh, sw, pt, pl, dh, dw)
    cdef Py_ssize_t M = g.N * OH * OW, n
    cdef Py_ssize_t P = OH * OW
    cdef Py_ssize_t K = KH * KW * g.C
    if M == 0 or K == 0:
        return
    cdef const floating *xp = &x[0, 0, 0, 0]
    cdef floating *cp = &cols[0, 0]
    cdef unsigned long old
    with nogil, parallel(num_threads=num_threads):
        old = cconv_ftz_on()
        for n in prange(g.N, schedule="static"):
            im2col_rows(xp, cp + n * P * K, n * P, (n + 1) * P, 0, g.C, &g)
        cconv_ftz_restore(old)


def col2im(const floating[:, ::1] cols, floating[:, :, :, ::1] x,  # x: OUT, zeroed by caller
           Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t OH, Py_ssize_t OW,
           Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
           Py_ssize_t dh, Py_ssize_t dw, int num_threads):
    cdef Geom g = make_geom(x.shape[0], x.shape[1], x.shape[2], x.shape[3], KH, KW, OH, OW, sh, sw, pt, pl, dh, dw)
    cdef Py_ssize_t P = OH * OW, n
    cdef Py_ssize_t K = KH * KW * g.C
    if g.N * P == 0 or K == 0:
        return
    cdef const floating *cp = &cols[0, 0]
    cdef floating *xp = &x[0, 0, 0, 0]
    cdef unsigned long old
    # Parallel over images: two threads never write the same image.
    with nogil, parallel(num_threads=num_threads):
        old = cconv_ftz_on()
        for n in prange(g.N, schedule="static"):
            col2im_rows(cp + n * P * K, xp, n * P, (n + 1) * P, 0, g.C, &g)
        cconv_ftz_restore(old)


# ---------------------------------------------------------------------------------
# Convolution
# ---------------------------------------------------------------------------------
def conv2d_forward(const floating[:, :, :, ::1] x,
                   const floating[:, ::1] wmat,         # (KH*KW*Cg, Cout)
                   const floating[::1] bias,            # (Cout,) or None
                   floating[:, :, :, ::1] y,            # OUT (N, OH, OW, Cout)
                   floating[:, ::1] work,               # scratch (nthreads, T*Kg)
                   Py_ssize_t KH, Py_ssize_t KW,
                   Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                   Py_ssize_t dh, Py_ssize_t dw, int groups, Py_ssize_t tile_rows,
                   int num_threads):
    """y = conv(x, w) + b, tiles of `tile_rows` output pixels in parallel."""
    cdef Geom g = make_geom(x.shape[0], x.shape[1], x.shape[2], x.shape[3], KH, KW, y.shape[1], y.shape[2],
                            sh, sw, pt, pl, dh, dw)
    cdef Py_ssize_t Cout = y.shape[3]
    cdef Py_ssize_t Cg = g.C // groups, Coutg = Cout // groups
    cdef Py_ssize_t Kg = KH * KW * Cg
    cdef Py_ssize_t M = g.N * g.OH * g.OW
    cdef Py_ssize_t T = tile_rows
    cdef Py_ssize_t ntiles = (M + T - 1) // T
    cdef bint direct = (KH == 1 and KW == 1 and sh == 1 and sw == 1 and pt == 0 and pl == 0
                        and g.OH == g.H and g.OW == g.W)
    cdef bint has_bias = bias is not None
    cdef const floating *xp = &x[0, 0, 0, 0]
    cdef const floating *wp = &wmat[0, 0]
    cdef const floating *bp = &bias[0] if has_bias else NULL
    cdef floating *yp = &y[0, 0, 0, 0]
    cdef floating *wk = &work[0, 0]
    cdef Py_ssize_t wstride = work.shape[1]
    cdef Py_ssize_t t, r0, r1, m, i, co, gi, lda
    cdef floating *buf
    cdef floating *yrow
    cdef const floating *a
    cdef floating beta
    cdef unsigned long old
    load_blas()
    with nogil, parallel(num_threads=num_threads):
        buf = wk + threadid() * wstride
        old = cconv_ftz_on()
        for t in prange(ntiles, schedule="static"):
            r0 = t * T
            r1 = r0 + T
            if r1 > M:
                r1 = M
            m = r1 - r0
            yrow = yp + r0 * Cout
            if has_bias:
                for i in range(m):
                    for co in range(Cout):
                        yrow[i * Cout + co] = bp[co]
                beta = 1
            else:
                beta = 0
            for gi in range(groups):
                if direct:
                    a = xp + r0 * g.C + gi * Cg
                    lda = g.C
                else:
                    im2col_rows(xp, buf, r0, r1, gi * Cg, Cg, &g)
                    a = buf
                    lda = Kg
                gemm(False, False, <int> m, <int> Coutg, <int> Kg, <floating> 1, a, <int> lda,
                     wp + gi * Coutg, <int> Cout, beta, yrow + gi * Coutg, <int> Cout)
        cconv_ftz_restore(old)


cdef inline void _conv_backward_tile(const floating *xp, const floating *dyp, const floating *wp,
                                     floating *dxp, floating *buf, floating *dwacc, floating *dbacc,
                                     Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t Cout, int groups,
                                     bint direct, bint need_dx, bint has_db,
                                     const Geom *g) noexcept nogil:
    """dW, db and (optionally) dX contributions of output rows r0..r1.

    dwacc (Kg, Cout) and dbacc (Cout,) are this thread's accumulators (IN/OUT); dxp
    is IN/OUT (scatter-added by col2im, or written directly for 1x1 stride-1 kernels).
    """
    cdef Py_ssize_t Cg = g.C // groups, Coutg = Cout // groups
    cdef Py_ssize_t Kg = g.KH * g.KW * Cg
    cdef Py_ssize_t m = r1 - r0, i, co, gi, lda
    cdef const floating *dyrow = dyp + r0 * Cout
    cdef const floating *a
    if has_db:
        for i in range(m):
            for co in range(Cout):
                dbacc[co] = dbacc[co] + dyrow[i * Cout + co]
    for gi in range(groups):
        if direct:
            a = xp + r0 * g.C + gi * Cg
            lda = g.C
        else:
            im2col_rows(xp, buf, r0, r1, gi * Cg, Cg, g)
            a = buf
            lda = Kg
        # dW_g (Kg, Coutg) += cols_g^T (Kg, m) @ dY_g (m, Coutg)
        gemm(True, False, <int> Kg, <int> Coutg, <int> m, <floating> 1, a, <int> lda,
             dyrow + gi * Coutg, <int> Cout, <floating> 1, dwacc + gi * Coutg, <int> Cout)
        if need_dx:
            # dcols_g (m, Kg) = dY_g (m, Coutg) @ W_g^T (Coutg, Kg)
            if direct:
                gemm(False, True, <int> m, <int> Cg, <int> Coutg, <floating> 1,
                     dyrow + gi * Coutg, <int> Cout, wp + gi * Coutg, <int> Cout,
                     <floating> 0, dxp + r0 * g.C + gi * Cg, <int> g.C)
            else:
                gemm(False, True, <int> m, <int> Kg, <int> Coutg, <floating> 1,
                     dyrow + gi * Coutg, <int> Cout, wp + gi * Coutg, <int> Cout,
                     <floating> 0, buf, <int> Kg)
                col2im_rows(buf, dxp, r0, r1, gi * Cg, Cg, g)


def conv2d_backward(const floating[:, :, :, ::1] dy,   # (N, OH, OW, Cout)
                    const floating[:, :, :, ::1] x,    # (N, H, W, C)
                    const floating[:, ::1] wmat,       # (Kg, Cout)
                    floating[:, :, :, ::1] dx,         # OUT, zeroed by caller; ignored if not need_dx
                    floating[:, :, ::1] dw_work,       # OUT per-thread dW (nthreads, Kg, Cout), zeroed
                    floating[:, ::1] db_work,          # OUT per-thread db (nthreads, Cout), zeroed
                    floating[:, ::1] work,             # scratch (nthreads, T*Kg)
                    Py_ssize_t KH, Py_ssize_t KW,
                    Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                    Py_ssize_t dh, Py_ssize_t dw, int groups, Py_ssize_t tile_rows,
                    bint need_dx, bint need_db, int num_threads):
    """Gradients of a convolution; the caller sums dw_work and db_work over threads.

    With need_dx the batch is cut into one chunk of whole images per thread and each
    chunk's output rows are processed in tiles of at most `tile_rows`: a thread scatters
    (col2im) only into the images of its own chunk, so no two threads write the same
    part of dx. Without need_dx, tiles of `tile_rows` output rows over the whole batch.
    Static schedules only: which thread sums which rows depends on nothing but the
    thread count, so the results are bit-for-bit reproducible for a given count.
    """
    cdef Geom g = make_geom(x.shape[0], x.shape[1], x.shape[2], x.shape[3], KH, KW, dy.shape[1], dy.shape[2],
                            sh, sw, pt, pl, dh, dw)
    cdef Py_ssize_t Cout = dy.shape[3]
    cdef Py_ssize_t P = g.OH * g.OW
    cdef Py_ssize_t M = g.N * P
    cdef Py_ssize_t T = tile_rows
    cdef Py_ssize_t ntiles = (M + T - 1) // T
    cdef bint direct = (KH == 1 and KW == 1 and sh == 1 and sw == 1 and pt == 0 and pl == 0
                        and g.OH == g.H and g.OW == g.W)
    cdef const floating *xp = &x[0, 0, 0, 0]
    cdef const floating *dyp = &dy[0, 0, 0, 0]
    cdef const floating *wp = &wmat[0, 0]
    cdef floating *dxp = &dx[0, 0, 0, 0] if need_dx else NULL
    cdef floating *wk = &work[0, 0]
    cdef floating *dwk = &dw_work[0, 0, 0]
    cdef floating *dbk = &db_work[0, 0]
    cdef Py_ssize_t wstride = work.shape[1]
    cdef Py_ssize_t dwstride = dw_work.shape[1] * dw_work.shape[2]
    cdef Py_ssize_t dbstride = db_work.shape[1]
    cdef Py_ssize_t t, ch, r0, r1, rend, tid
    cdef Py_ssize_t nchunks = min(g.N, num_threads)
    cdef floating *buf
    cdef floating *dwacc
    cdef floating *dbacc
    cdef unsigned long old
    load_blas()
    with nogil, parallel(num_threads=num_threads):
        tid = threadid()
        buf = wk + tid * wstride
        dwacc = dwk + tid * dwstride
        dbacc = dbk + tid * dbstride
        old = cconv_ftz_on()
        if need_dx:
            for ch in prange(nchunks, schedule="static"):
                r0 = (ch * g.N // nchunks) * P
                rend = ((ch + 1) * g.N // nchunks) * P
                while r0 < rend:
                    r1 = r0 + T
                    if r1 > rend:
                        r1 = rend
                    _conv_backward_tile(xp, dyp, wp, dxp, buf, dwacc, dbacc, r0, r1, Cout,
                                        groups, direct, True, need_db, &g)
                    r0 = r1
        else:
            for t in prange(ntiles, schedule="static"):
                r0 = t * T
                r1 = r0 + T
                if r1 > M:
                    r1 = M
                _conv_backward_tile(xp, dyp, wp, dxp, buf, dwacc, dbacc, r0, r1, Cout,
                                    groups, direct, False, need_db, &g)
        cconv_ftz_restore(old)


# ---------------------------------------------------------------------------------
# Explicitly vectorised kernels: their instruction-set level (_simd.h), tiled max pooling
# for float32 / int32 (_pool_simd.h), direct convolution for few input channels
# (_conv_direct.h)
cdef extern from "_simd.h":
    int cconv_simd_level(int cap) noexcept nogil


def simd_level(int cap=-1):
    """Instruction set of the vectorised kernels (tiled float32 max pool, direct
    convolution): 2 = AVX-512F, 1 = AVX2, 0 = generic loops and the GEMM routes. ``cap`` >= 0
    lowers (or restores) the level used, never above what the CPU supports (the tests run
    every path this way)."""
    return cconv_simd_level(cap)


cdef extern from "_pool_simd.h":
    int cconv_pool_fwd_simd(int level, const float *x, float *y, int *a, Py_ssize_t n,
                            Py_ssize_t oh, Py_ssize_t H, Py_ssize_t W, Py_ssize_t C,
                            Py_ssize_t OW, Py_ssize_t KH, Py_ssize_t KW, int stream) noexcept nogil
    long long cconv_pool_bwd_simd(int level, float *dx, const float *dy, const int *a,
                                  Py_ssize_t n, Py_ssize_t oh, Py_ssize_t OH, Py_ssize_t OW,
                                  Py_ssize_t H, Py_ssize_t W, Py_ssize_t C, Py_ssize_t KH,
                                  Py_ssize_t KW, int stream) noexcept nogil


cdef extern from "_conv_direct.h":
    ctypedef struct cconv_dgeom:
        Py_ssize_t H, W, C, OH, OW, cout, KH, KW, sh, sw, dh, dw, pt, pl, K, Kpad
    void cconv_direct_offsets(const cconv_dgeom *g, Py_ssize_t *off, Py_ssize_t *ident) noexcept nogil
    void cconv_direct_row(const cconv_dgeom *g, const float *x, Py_ssize_t n, Py_ssize_t oh,
                          const Py_ssize_t *off, const Py_ssize_t *ident, float *patch,
                          const float **base, const Py_ssize_t **po) noexcept nogil
    void cconv_direct_fwd_row(const cconv_dgeom *g, const float **base, const Py_ssize_t **po,
                              const float *w, const float *b, float *y) noexcept nogil
    void cconv_direct_dw_row(const cconv_dgeom *g, const float **base, const Py_ssize_t **po,
                             const Py_ssize_t *off, const float *dy, float *dw,
                             float *db) noexcept nogil


cdef cconv_dgeom direct_geom(Py_ssize_t H, Py_ssize_t W, Py_ssize_t C, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t cout,
                             Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw,
                             Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw):
    cdef cconv_dgeom g
    g.H, g.W, g.C = H, W, C
    g.OH, g.OW, g.cout = OH, OW, cout
    g.KH, g.KW, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl = KH, KW, sh, sw, dh, dw, pt, pl
    g.K = KH * KW * g.C
    g.Kpad = (g.K + 7) // 8 * 8
    return g


cdef void direct_run(const cconv_dgeom *g, Py_ssize_t N, const float *xp, const float *wp,
                     const float *bp, float *yp, const float *dyp, float *dwp, float *dbp,
                     Py_ssize_t nslots, int num_threads) except *:
    """The parallel loop over output rows (n, oh) of both direct kernels: the forward pass
    when yp is set, else the dW/db accumulation.

    The rows are cut into nslots equal runs handed out dynamically (a thread that the
    machine slows down takes fewer of them); run s zeroes slice s of dwp/dbp and accumulates
    into it, so the sums depend on nslots and not on which thread ran what."""
    cdef Py_ssize_t *off = <Py_ssize_t *> malloc(2 * g.Kpad * sizeof(Py_ssize_t))
    if off == NULL:
        raise MemoryError()
    cconv_direct_offsets(g, off, off + g.Kpad)
    cdef Py_ssize_t rows = N * g.OH
    cdef Py_ssize_t slot, row, n
    cdef Py_ssize_t failed = 0
    cdef char *scratch
    cdef const float **base
    cdef const Py_ssize_t **po
    cdef unsigned long old
    with nogil, parallel(num_threads=num_threads):
        scratch = <char *> malloc(g.OW * (2 * sizeof(void *) + g.K * sizeof(float)))
        base = <const float **> scratch
        po = <const Py_ssize_t **> (scratch + g.OW * sizeof(void *))
        old = cconv_ftz_on()
        for slot in prange(nslots, schedule="dynamic"):
            if scratch == NULL:
                failed += 1
                continue
            if yp == NULL:
                memset(dwp + slot * g.Kpad * g.cout, 0, g.Kpad * g.cout * sizeof(float))
                memset(dbp + slot * g.cout, 0, g.cout * sizeof(float))
            for row in range(slot * rows // nslots, (slot + 1) * rows // nslots):
                n = row // g.OH
                cconv_direct_row(g, xp, n, row - n * g.OH, off, off + g.Kpad,
                                 <float *> (scratch + 2 * g.OW * sizeof(void *)), base, po)
                if yp != NULL:
                    cconv_direct_fwd_row(g, base, po, wp, bp, yp + row * g.OW * g.cout)
                else:
                    cconv_direct_dw_row(g, base, po, off, dyp + row * g.OW * g.cout,
                                        dwp + slot * g.Kpad * g.cout, dbp + slot * g.cout)
        cconv_ftz_restore(old)
        free(scratch)
    free(off)
    if failed:
        raise MemoryError("cconv: no memory for the direct convolution's scratch")


def direct_forward(const float[:, :, :, ::1] x,
                   const float[:, ::1] w,               # (KH*KW*C, Cout), rows in (kh, kw, c) order
                   const float[::1] bias,               # (Cout,) or None
                   float[:, :, :, ::1] y,               # OUT (N, OH, OW, Cout), Cout % 16 == 0
                   Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw,
                   Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw, int num_threads):
    """y = conv(x, w) + b computed directly from x (no im2col buffer), row by row.

    Per thread: OW * (2 pointers + K floats) of scratch. The caller checks
    simd_level() >= 2 and Cout % 16 == 0.
    """
    cdef cconv_dgeom g = direct_geom(x.shape[1], x.shape[2], x.shape[3], y.shape[1], y.shape[2],
                                     y.shape[3], KH, KW, sh, sw, pt, pl, dh, dw)
    if (w.shape[0] != g.K or w.shape[1] != g.cout or y.shape[0] != x.shape[0]
            or (bias is not None and bias.shape[0] != g.cout)):
        raise ValueError(f"direct_forward: w {w.shape}, bias, y {y.shape} do not match "
                         f"x {x.shape} and a {KH}x{KW} kernel")
    if x.shape[0] * g.OH * g.OW == 0:
        return
    direct_run(&g, x.shape[0], &x[0, 0, 0, 0], &w[0, 0],
               &bias[0] if bias is not None else NULL, &y[0, 0, 0, 0], NULL, NULL, NULL,
               min(x.shape[0] * g.OH, 16 * num_threads), num_threads)


def direct_backward_weights(const float[:, :, :, ::1] dy,   # (N, OH, OW, Cout)
                            const float[:, :, :, ::1] x,    # (N, H, W, C)
                            float[:, :, ::1] dw_work,       # OUT per slot (nslots, Kpad, Cout)
                            float[:, ::1] db_work,          # OUT per slot (nslots, Cout)
                            Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw,
                            Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
                            int num_threads):
    """dW and db of direct_forward (rows K..Kpad-1 of dw_work are scratch); the caller sums
    the accumulators of the nslots = dw_work.shape[0] runs of rows (see direct_run): the
    result depends on nslots only, not on the threads' timing."""
    cdef cconv_dgeom g = direct_geom(x.shape[1], x.shape[2], x.shape[3], dy.shape[1],
                                     dy.shape[2], dy.shape[3], KH, KW, sh, sw, pt, pl, dh, dw)
    if (dw_work.shape[1] != g.Kpad or dw_work.shape[2] != g.cout or db_work.shape[1] != g.cout
            or dw_work.shape[0] < 1 or db_work.shape[0] != dw_work.shape[0]
            or dy.shape[0] != x.shape[0]):
        raise ValueError(f"direct_backward_weights: dw_work {dw_work.shape}, db_work "
                         f"{db_work.shape}, dy {dy.shape} do not match x {x.shape} and a "
                         f"{KH}x{KW} kernel (one slot or more, as many in both)")
    if x.shape[0] * g.OH * g.OW == 0:
        return
    direct_run(&g, x.shape[0], &x[0, 0, 0, 0], NULL, NULL, NULL, &dy[0, 0, 0, 0],
               &dw_work[0, 0, 0], &db_work[0, 0], dw_work.shape[0], num_threads)


# Winograd F(2x2, 3x3): 3x3 stride-1 convolutions (see _winograd.h for the algebra)
# ---------------------------------------------------------------------------------
cdef extern from "_winograd.h":
    void cconv_wino_in_f(const float *x, float *V, Py_ssize_t ldv, Py_ssize_t H, Py_ssize_t W,
                         Py_ssize_t C, Py_ssize_t n, Py_ssize_t ih0, Py_ssize_t iw0,
                         const float *zero) noexcept nogil
    void cconv_wino_in_d(const double *x, double *V, Py_ssize_t ldv, Py_ssize_t H, Py_ssize_t W,
                         Py_ssize_t C, Py_ssize_t n, Py_ssize_t ih0, Py_ssize_t iw0,
                         const double *zero) noexcept nogil
    void cconv_wino_out_f(const float *M, Py_ssize_t ldm, float *y, const float *bias,
                          Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t Co, Py_ssize_t n,
                          Py_ssize_t oh0, Py_ssize_t ow0, float *sink) noexcept nogil
    void cconv_wino_out_d(const double *M, Py_ssize_t ldm, double *y, const double *bias,
                          Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t Co, Py_ssize_t n,
                          Py_ssize_t oh0, Py_ssize_t ow0, double *sink) noexcept nogil
    void cconv_wino_dy_f(const float *dy, float *Yh, Py_ssize_t ldy, Py_ssize_t OH, Py_ssize_t OW,
                         Py_ssize_t Co, Py_ssize_t n, Py_ssize_t oh0, Py_ssize_t ow0,
                         const float *zero, float *db) noexcept nogil
    void cconv_wino_dy_d(const double *dy, double *Yh, Py_ssize_t ldy, Py_ssize_t OH,
                         Py_ssize_t OW, Py_ssize_t Co, Py_ssize_t n, Py_ssize_t oh0,
                         Py_ssize_t ow0, const double *zero, double *db) noexcept nogil
    void cconv_wino_dx_f(const float *dV, Py_ssize_t ldv, float *dx, Py_ssize_t H, Py_ssize_t W,
                         Py_ssize_t C, Py_ssize_t n, Py_ssize_t ih0, Py_ssize_t iw0,
                         float *sink) noexcept nogil
    void cconv_wino_dx_d(const double *dV, Py_ssize_t ldv, double *dx, Py_ssize_t H,
                         Py_ssize_t W, Py_ssize_t C, Py_ssize_t n, Py_ssize_t ih0,
                         Py_ssize_t iw0, double *sink) noexcept nogil
    void cconv_wino_filter_f(const float *w, float *U, Py_ssize_t P, Py_ssize_t p0,
                             Py_ssize_t p1) noexcept nogil
    void cconv_wino_filter_d(const double *w, double *U, Py_ssize_t P, Py_ssize_t p0,
                             Py_ssize_t p1) noexcept nogil
    void cconv_wino_filter_grad_f(const float *dU, Py_ssize_t ns, float *dW, Py_ssize_t P,
                                  Py_ssize_t p0, Py_ssize_t p1) noexcept nogil
    void cconv_wino_filter_grad_d(const double *dU, Py_ssize_t ns, double *dW, Py_ssize_t P,
                                  Py_ssize_t p0, Py_ssize_t p1) noexcept nogil


ctypedef struct WinoGeom:
    Py_ssize_t N, H, W, C, OH, OW, Cout
    Py_ssize_t TW, TT            # tiles per output row, per image
    Py_ssize_t pt, pl, TB        # top/left padding, tiles per block


cdef WinoGeom make_wino_geom(Py_ssize_t N, Py_ssize_t H, Py_ssize_t W, Py_ssize_t C,
                             Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t Cout,
                             Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t TB):
    cdef WinoGeom g
    g.N = N; g.H = H; g.W = W; g.C = C; g.OH = OH; g.OW = OW; g.Cout = Cout
    g.TW = (OW + 1) // 2
    g.TT = ((OH + 1) // 2) * g.TW
    g.pt = pt; g.pl = pl; g.TB = TB
    return g


cdef inline Py_ssize_t tile_origin(Py_ssize_t t, const WinoGeom *g, Py_ssize_t *oh0,
                                   Py_ssize_t *ow0) noexcept nogil:
    """Image index of tile t (flat (n, th, tw)); its top-left output goes to oh0, ow0."""
    cdef Py_ssize_t n = t // g.TT
    cdef Py_ssize_t r = t - n * g.TT
    cdef Py_ssize_t th = r // g.TW
    oh0[0] = 2 * th
    ow0[0] = 2 * (r - th * g.TW)
    return n


cdef void wino_input_block(const floating *x, floating *V, Py_ssize_t t0, Py_ssize_t t1,
                           const floating *zero, const WinoGeom *g) noexcept nogil:
    """V (16, TB, C): the transformed 4x4 input blocks of tiles t0..t1."""
    cdef Py_ssize_t t, n, oh0, ow0
    for t in range(t0, t1):
        n = tile_origin(t, g, &oh0, &ow0)
        if floating is float:
            cconv_wino_in_f(x, V + (t - t0) * g.C, g.TB * g.C, g.H, g.W, g.C, n,
                            oh0 - g.pt, ow0 - g.pl, zero)
        else:
            cconv_wino_in_d(x, V + (t - t0) * g.C, g.TB * g.C, g.H, g.W, g.C, n,
                            oh0 - g.pt, ow0 - g.pl, zero)


cdef void wino_output_block(const floating *M, floating *y, const floating *bias,
                            Py_ssize_t t0, Py_ssize_t t1, floating *sink,
                            const WinoGeom *g) noexcept nogil:
    """y (OUT) of tiles t0..t1 from M (16, TB, Cout), plus the bias (or NULL)."""
    cdef Py_ssize_t t, n, oh0, ow0
    for t in range(t0, t1):
        n = tile_origin(t, g, &oh0, &ow0)
        if floating is float:
            cconv_wino_out_f(M + (t - t0) * g.Cout, g.TB * g.Cout, y, bias, g.OH, g.OW, g.Cout,
                             n, oh0, ow0, sink)
        else:
            cconv_wino_out_d(M + (t - t0) * g.Cout, g.TB * g.Cout, y, bias, g.OH, g.OW, g.Cout,
                             n, oh0, ow0, sink)


cdef void wino_dy_block(const floating *dy, floating *Yh, Py_ssize_t t0, Py_ssize_t t1,
                        const floating *zero, floating *db, const WinoGeom *g) noexcept nogil:
    """Yh (16, TB, Cout): the transformed 2x2 dy blocks of tiles t0..t1; db += their sums."""
    cdef Py_ssize_t t, n, oh0, ow0
    for t in range(t0, t1):
        n = tile_origin(t, g, &oh0, &ow0)
        if floating is float:
            cconv_wino_dy_f(dy, Yh + (t - t0) * g.Cout, g.TB * g.Cout, g.OH, g.OW, g.Cout,
                            n, oh0, ow0, zero, db)
        else:
            cconv_wino_dy_d(dy, Yh + (t - t0) * g.Cout, g.TB * g.Cout, g.OH, g.OW, g.Cout,
                            n, oh0, ow0, zero, db)


cdef void wino_dx_block(const floating *dV, floating *dx, Py_ssize_t t0, Py_ssize_t t1,
                        floating *sink, const WinoGeom *g) noexcept nogil:
    """dx (IN/OUT) += the input-space gradients of tiles t0..t1, from dV (16, TB, C)."""
    cdef Py_ssize_t t, n, oh0, ow0
    for t in range(t0, t1):
        n = tile_origin(t, g, &oh0, &ow0)
        if floating is float:
            cconv_wino_dx_f(dV + (t - t0) * g.C, g.TB * g.C, dx, g.H, g.W, g.C, n,
                            oh0 - g.pt, ow0 - g.pl, sink)
        else:
            cconv_wino_dx_d(dV + (t - t0) * g.C, g.TB * g.C, dx, g.H, g.W, g.C, n,
                            oh0 - g.pt, ow0 - g.pl, sink)


#: Filter-pair chunk of the parallel filter transforms.
DEF WINO_FILTER_CHUNK = 1024


cdef void wino_filter_run(const floating *src, Py_ssize_t ns, floating *dst, Py_ssize_t P,
                          int num_threads) noexcept nogil:
    """The filter transform of the P filter pairs (ns == 0), or its adjoint over ns slots."""
    cdef Py_ssize_t ch, p0, p1
    for ch in prange((P + WINO_FILTER_CHUNK - 1) // WINO_FILTER_CHUNK, schedule="static",
                     num_threads=num_threads):
        p0 = ch * WINO_FILTER_CHUNK
        p1 = min(p0 + WINO_FILTER_CHUNK, P)
        if floating is float:
            if ns == 0:
                cconv_wino_filter_f(src, dst, P, p0, p1)
            else:
                cconv_wino_filter_grad_f(src, ns, dst, P, p0, p1)
        else:
            if ns == 0:
                cconv_wino_filter_d(src, dst, P, p0, p1)
            else:
                cconv_wino_filter_grad_d(src, ns, dst, P, p0, p1)


def winograd_filter(const floating[:, :, :, ::1] w,   # (3, 3, C, Cout)
                    floating[:, :, ::1] U,            # OUT (16, C, Cout)
                    int num_threads):
    """U = G w G^T for every (input, output) channel pair (see _winograd.h)."""
    if (w.shape[0] != 3 or w.shape[1] != 3 or U.shape[0] != 16 or U.shape[1] != w.shape[2]
            or U.shape[2] != w.shape[3]):
        raise ValueError(f"winograd_filter: w {w.shape} and U {U.shape} must be (3, 3, C, Cout) "
                         f"and (16, C, Cout)")
    if U.size:
        with nogil:
            wino_filter_run(&w[0, 0, 0, 0], 0, &U[0, 0, 0], U.shape[1] * U.shape[2], num_threads)


def winograd_filter_grad(const floating[:, :, :, ::1] dU_work,   # (slots, 16, C, Cout)
                         floating[:, :, :, ::1] dw,              # OUT (3, 3, C, Cout)
                         int num_threads):
    """dw = G^T (dU_work summed over its slots, in slot order) G: the adjoint of
    winograd_filter, with the per-slot accumulators of winograd_backward summed on the way."""
    if (dw.shape[0] != 3 or dw.shape[1] != 3 or dU_work.shape[0] < 1 or dU_work.shape[1] != 16
            or dU_work.shape[2] != dw.shape[2] or dU_work.shape[3] != dw.shape[3]):
        raise ValueError(f"winograd_filter_grad: dU_work {dU_work.shape} and dw {dw.shape} must "
                         f"be (slots, 16, C, Cout) and (3, 3, C, Cout)")
    if dw.size:
        with nogil:
            wino_filter_run(&dU_work[0, 0, 0, 0], dU_work.shape[0], &dw[0, 0, 0, 0],
                            dw.shape[2] * dw.shape[3], num_threads)


def winograd_forward(const floating[:, :, :, ::1] x,
                     const floating[:, :, ::1] U,         # (16, C, Cout): G w G^T
                     const floating[::1] bias,            # (Cout,) or None
                     floating[:, :, :, ::1] y,            # OUT (N, OH, OW, Cout)
                     floating[:, ::1] work,               # scratch (nthreads, wino_work_size)
                     Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t TB, int num_threads):
    """y = conv3x3(x, w) + b, stride 1, by Winograd F(2x2, 3x3) in blocks of TB tiles.

    Per block: transform the inputs (V), 16 GEMMs M_k = V_k U_k, transform the outputs.
    """
    cdef WinoGeom g = make_wino_geom(x.shape[0], x.shape[1], x.shape[2], x.shape[3],
                                     y.shape[1], y.shape[2], y.shape[3], pt, pl, TB)
    cdef Py_ssize_t C = g.C, Cout = g.Cout
    cdef Py_ssize_t ntiles = g.N * g.TT
    cdef Py_ssize_t nblocks = (ntiles + TB - 1) // TB
    cdef Py_ssize_t Z = max(C, Cout)
    cdef const floating *xp = &x[0, 0, 0, 0]
    cdef const floating *up = &U[0, 0, 0]
    cdef const floating *bp = &bias[0] if bias is not None else NULL
    cdef floating *yp = &y[0, 0, 0, 0]
    cdef floating *wk = &work[0, 0]
    cdef Py_ssize_t wstride = work.shape[1]
    cdef Py_ssize_t blk, t0, t1, k
    cdef floating *V
    cdef floating *Mb
    cdef floating *zero
    cdef floating *sink
    cdef unsigned long old
    load_blas()
    with nogil, parallel(num_threads=num_threads):
        V = wk + threadid() * wstride
        Mb = V + 16 * TB * C
        zero = Mb + 16 * TB * Cout
        sink = zero + Z
        memset(zero, 0, Z * sizeof(floating))
        old = cconv_ftz_on()
        for blk in prange(nblocks, schedule="dynamic"):
            t0 = blk * TB
            t1 = min(t0 + TB, ntiles)
            wino_input_block(xp, V, t0, t1, zero, &g)
            for k in range(16):
                gemm(False, False, <int> (t1 - t0), <int> Cout, <int> C, <floating> 1,
                     V + k * TB * C, <int> C, up + k * C * Cout, <int> Cout,
                     <floating> 0, Mb + k * TB * Cout, <int> Cout)
            wino_output_block(Mb, yp, bp, t0, t1, sink, &g)
        cconv_ftz_restore(old)


def winograd_backward(const floating[:, :, :, ::1] dy,   # (N, OH, OW, Cout)
                      const floating[:, :, :, ::1] x,    # (N, H, W, C)
                      const floating[:, :, ::1] U,       # (16, C, Cout): G w G^T
                      floating[:, :, :, ::1] dx,         # OUT; ignored if not need_dx
                      floating[:, :, :, ::1] dU_work,    # OUT per-slot dU (nslots, 16, C, Cout)
                      floating[:, ::1] db_work,          # OUT per-slot db (nslots, Cout)
                      floating[:, ::1] work,             # scratch (nthreads, wino_work_size)
                      Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t TB, bint need_dx,
                      int num_threads):
    """Gradients of winograd_forward; the caller turns dU_work into dW with
    winograd_filter_grad (which sums the slots) and sums db_work over the slots.

    The batch is cut into nslots = dU_work.shape[0] chunks of whole images (a chunk scatters
    only into the dx of its own images), handed out dynamically so that a thread slowed
    down by the machine takes fewer of them. Chunk s accumulates into slot s, so the result
    is bit-reproducible for a given slot count whatever ran where. A chunk first zeroes its
    slot and its images' dx (the outputs need no zeroing by the caller, and the zeroing is
    spread over the threads), then works in blocks of TB tiles: transform x (V) and dy (Yh);
    dU_k += V_k^T Yh_k; then dV_k = Yh_k U_k^T, transformed back and added onto dx.
    """
    cdef WinoGeom g = make_wino_geom(x.shape[0], x.shape[1], x.shape[2], x.shape[3],
                                     dy.shape[1], dy.shape[2], dy.shape[3], pt, pl, TB)
    cdef Py_ssize_t C = g.C, Cout = g.Cout
    cdef Py_ssize_t Z = max(C, Cout)
    cdef Py_ssize_t nchunks = dU_work.shape[0]
    if (nchunks < 1 or db_work.shape[0] != nchunks or dU_work.shape[1] != 16
            or dU_work.shape[2] != C or dU_work.shape[3] != Cout or db_work.shape[1] != Cout):
        raise ValueError(f"winograd_backward: dU_work {dU_work.shape} and db_work "
                         f"{db_work.shape} must be (slots, 16, {C}, {Cout}) and (slots, {Cout})")
    if dy.shape[0] != g.N or (need_dx and (dx.shape[0] != g.N or dx.shape[1] != g.H
                                           or dx.shape[2] != g.W or dx.shape[3] != C)):
        raise ValueError(f"winograd_backward: dy {tuple(dy.shape)[:4]} and dx "
                         f"{tuple(dx.shape)[:4]} do not match x {tuple(x.shape)[:4]}")
    cdef const floating *xp = &x[0, 0, 0, 0]
    cdef const floating *dyp = &dy[0, 0, 0, 0]
    cdef const floating *up = &U[0, 0, 0]
    cdef floating *dxp = &dx[0, 0, 0, 0] if need_dx else NULL
    cdef floating *wk = &work[0, 0]
    cdef floating *duk = &dU_work[0, 0, 0, 0]
    cdef floating *dbk = &db_work[0, 0]
    cdef Py_ssize_t wstride = work.shape[1]
    cdef Py_ssize_t dustride = 16 * C * Cout
    cdef Py_ssize_t dbstride = db_work.shape[1]
    cdef Py_ssize_t image = g.H * g.W * C
    cdef Py_ssize_t ch, n0, n1, t0, t1, tend, k, tid
    cdef floating *V
    cdef floating *Yh
    cdef floating *zero
    cdef floating *sink
    cdef floating *duacc
    cdef floating *dbacc
    cdef unsigned long old
    load_blas()
    with nogil, parallel(num_threads=num_threads):
        tid = threadid()
        V = wk + tid * wstride
        Yh = V + 16 * TB * C
        zero = Yh + 16 * TB * Cout
        sink = zero + Z
        memset(zero, 0, Z * sizeof(floating))
        old = cconv_ftz_on()
        for ch in prange(nchunks, schedule="dynamic"):
            duacc = duk + ch * dustride
            dbacc = dbk + ch * dbstride
            n0 = ch * g.N // nchunks
            n1 = (ch + 1) * g.N // nchunks
            memset(duacc, 0, dustride * sizeof(floating))
            memset(dbacc, 0, Cout * sizeof(floating))
            if need_dx:
                memset(dxp + n0 * image, 0, (n1 - n0) * image * sizeof(floating))
            t0 = n0 * g.TT
            tend = n1 * g.TT
            while t0 < tend:
                t1 = min(t0 + TB, tend)
                wino_input_block(xp, V, t0, t1, zero, &g)
                wino_dy_block(dyp, Yh, t0, t1, zero, dbacc, &g)
                for k in range(16):
                    # dU_k (C, Cout) += V_k^T (C, tb) @ Yh_k (tb, Cout)
                    gemm(True, False, <int> C, <int> Cout, <int> (t1 - t0), <floating> 1,
                         V + k * TB * C, <int> C, Yh + k * TB * Cout, <int> Cout,
                         <floating> 1, duacc + k * C * Cout, <int> Cout)
                if need_dx:
                    for k in range(16):
                        # dV_k (tb, C) = Yh_k (tb, Cout) @ U_k^T (Cout, C), into V
                        gemm(False, True, <int> (t1 - t0), <int> C, <int> Cout, <floating> 1,
                             Yh + k * TB * Cout, <int> Cout, up + k * C * Cout, <int> Cout,
                             <floating> 0, V + k * TB * C, <int> C)
                    wino_dx_block(V, dxp, t0, t1, sink, &g)
                t0 = t1
        cconv_ftz_restore(old)


# ---------------------------------------------------------------------------------
# Pooling
# ---------------------------------------------------------------------------------
cdef inline Py_ssize_t clip_lo(Py_ssize_t start) noexcept nogil:
    """First in-bounds index of a window starting at `start` (0 if it starts in the padding)."""
    return start if start > 0 else 0


cdef inline Py_ssize_t clip_hi(Py_ssize_t start, Py_ssize_t size, Py_ssize_t limit) noexcept nogil:
    """One past the last in-bounds index of a window [start, start + size) on [0, limit)."""
    return start + size if start + size < limit else limit

def max_pool2d_forward(const floating[:, :, :, ::1] x,
                       floating[:, :, :, ::1] y,            # OUT (N, OH, OW, C)
                       index_t[:, :, :, ::1] argmax,        # OUT, flat h*W + w of the winner
                       Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw,
                       Py_ssize_t pt, Py_ssize_t pl, int num_threads, bint stream=False):
    """Max over each window, recording the winner (see _pool_rows.h).

    The caller guarantees every window holds at least one in-bounds element. Windows
    that tile the input go through _pool_simd.h for float32 / int32; ``stream`` asks it
    for non-temporal stores (for outputs too large to stay in cache).
    """
    cdef Py_ssize_t N = x.shape[0], H = x.shape[1], W = x.shape[2], C = x.shape[3]
    cdef Py_ssize_t OH = y.shape[1], OW = y.shape[2]
    cdef Py_ssize_t rows = N * OH
    if rows * OW * C == 0:
        return
    cdef const floating *xp = &x[0, 0, 0, 0]
    cdef floating *yp = &y[0, 0, 0, 0]
    cdef index_t *ap = &argmax[0, 0, 0, 0]
    cdef Py_ssize_t row, n, oh, h0, h1
    cdef bint tiled = (sh == KH and sw == KW and pt == 0 and pl == 0
                       and OH * KH <= H and OW * KW <= W)
    cdef int level = cconv_simd_level(-1) if tiled else 0
    cdef unsigned long old
    with nogil, parallel(num_threads=num_threads):
        old = cconv_ftz_on()
        for row in prange(rows, schedule="static"):
            n = row // OH
            oh = row - n * OH
            h0 = clip_lo(oh * sh - pt)
            h1 = clip_hi(oh * sh - pt, KH, H)
            if floating is float and index_t is int:
                if not cconv_pool_fwd_simd(level, xp, yp + row * OW * C, ap + row * OW * C,
                                           n, oh, H, W, C, OW, KH, KW, stream):
                    cconv_maxpool_row_fi(xp, yp + row * OW * C, ap + row * OW * C, n, H, W, C,
                                         OW, h0, h1, KW, sw, pl)
            elif floating is float:
                cconv_maxpool_row_fl(xp, yp + row * OW * C, ap + row * OW * C, n, H, W, C, OW,
                                     h0, h1, KW, sw, pl)
            elif index_t is int:
                cconv_maxpool_row_di(xp, yp + row * OW * C, ap + row * OW * C, n, H, W, C, OW,
                                     h0, h1, KW, sw, pl)
            else:
                cconv_maxpool_row_dl(xp, yp + row * OW * C, ap + row * OW * C, n, H, W, C, OW,
                                     h0, h1, KW, sw, pl)
        cconv_ftz_restore(old)


def max_pool2d_backward_tiled(const floating[:, :, :, ::1] dy,
                              const index_t[:, :, :, ::1] argmax,
                              floating[:, :, :, ::1] dx,     # OUT, every element written
                              Py_ssize_t KH, Py_ssize_t KW, int num_threads,
                              bint stream=False):
    """Max-pool backward for windows that tile the input (stride == pool, no padding).

    One pass writes every element of dx once (no zeroing pass). Returns True when every
    argmax entry named a unit of its own window; otherwise dx is incomplete and the
    caller must use :func:`max_pool2d_backward`, which routes any in-range index.
    float32 / int32 go through _pool_simd.h; ``stream`` as in :func:`max_pool2d_forward`.
    """
    cdef Py_ssize_t N = dx.shape[0], H = dx.shape[1], W = dx.shape[2], C = dx.shape[3]
    cdef Py_ssize_t OH = dy.shape[1], OW = dy.shape[2]
    if N * H * W * C == 0:
        return True
    if OH * OW == 0:
        dx[...] = 0
        return True
    cdef const floating *dyp = &dy[0, 0, 0, 0]
    cdef const index_t *ap = &argmax[0, 0, 0, 0]
    cdef floating *dxp = &dx[0, 0, 0, 0]
    cdef Py_ssize_t n, oh, ih
    cdef long long matched = 0, got
    cdef int level = cconv_simd_level(-1)
    cdef unsigned long old
    with nogil, parallel(num_threads=num_threads):
        old = cconv_ftz_on()
        for n in prange(N, schedule="static"):
            for oh in range(OH):
                if floating is float and index_t is int:
                    got = cconv_pool_bwd_simd(level, dxp, dyp, ap, n, oh, OH, OW, H, W, C, KH,
                                              KW, stream)
                    if got < 0:
                        got = cconv_maxpool_bwd_row_fi(dxp, dyp, ap, n, oh, OH, OW, H, W, C, KH, KW)
                    matched += got
                elif floating is float:
                    matched += cconv_maxpool_bwd_row_fl(dxp, dyp, ap, n, oh, OH, OW, H, W, C, KH, KW)
                elif index_t is int:
                    matched += cconv_maxpool_bwd_row_di(dxp, dyp, ap, n, oh, OH, OW, H, W, C, KH, KW)
                else:
                    matched += cconv_maxpool_bwd_row_dl(dxp, dyp, ap, n, oh, OH, OW, H, W, C, KH, KW)
                if OW * KW < W:   # columns right of the last window
                    for ih in range(oh * KH, oh * KH + KH):
                        memset(dxp + ((n * H + ih) * W + OW * KW) * C, 0,
                               (W - OW * KW) * C * sizeof(floating))
            if OH * KH < H:       # rows below the last window
                memset(dxp + (n * H + OH * KH) * W * C, 0,
                       (H - OH * KH) * W * C * sizeof(floating))
        cconv_ftz_restore(old)
    return matched == N * OH * OW * C


def max_pool2d_backward(const floating[:, :, :, ::1] dy,
                        const index_t[:, :, :, ::1] argmax,
                        floating[:, :, :, ::1] dx,           # OUT (zeroed here, image by image)
                        int num_threads):
    """Route each gradient to the unit that won the forward pass.

    Returns the number of argmax entries outside [0, H*W); those are skipped, never
    used as an index (the caller raises ValueError when it is not 0).
    """
    cdef Py_ssize_t N = dx.shape[0], H = dx.shape[1], W = dx.shape[2], C = dx.shape[3]
    cdef Py_ssize_t Q = dy.shape[1] * dy.shape[2]
    cdef Py_ssize_t HW = H * W
    if N * C == 0 or HW == 0:
        return 0
    if Q == 0:
        dx[...] = 0
        return 0
    cdef const floating *dyp = &dy[0, 0, 0, 0]
    cdef const index_t *ap = &argmax[0, 0, 0, 0]
    cdef floating *dxp = &dx[0, 0, 0, 0]
    cdef Py_ssize_t n, q, c, bad = 0
    cdef long long idx
    cdef const floating *dyo
    cdef const index_t *ao
    cdef floating *dxn
    cdef unsigned long old
    # Parallel over images: every write of image n stays inside dx[n].
    with nogil, parallel(num_threads=num_threads):
        old = cconv_ftz_on()
        for n in prange(N, schedule="static"):
            dxn = dxp + n * HW * C
            memset(dxn, 0, HW * C * sizeof(floating))
            for q in range(Q):
                dyo = dyp + (n * Q + q) * C
                ao = ap + (n * Q + q) * C
                for c in range(C):
                    idx = ao[c]
                    if idx < 0 or idx >= HW:
                        bad += 1
                    else:
                        dxn[idx * C + c] = dxn[idx * C + c] + dyo[c]
        cconv_ftz_restore(old)
    return bad


def avg_pool2d_forward(const floating[:, :, :, ::1] x,
                       floating[:, :, :, ::1] y,            # OUT
                       Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw,
                       Py_ssize_t pt, Py_ssize_t pl, int num_threads):
    """Mean over each window; padded zeros count in the divisor (always KH*KW)."""
    cdef Geom g = make_geom(x.shape[0], x.shape[1], x.shape[2], x.shape[3], KH, KW, y.shape[1], y.shape[2],
                            sh, sw, pt, pl, 1, 1)
    cdef Py_ssize_t rows = g.N * g.OH, C = g.C
    if rows * g.OW * C == 0:
        return
    cdef const floating *xp = &x[0, 0, 0, 0]
    cdef floating *yp = &y[0, 0, 0, 0]
    cdef floating inv = <floating> 1 / <floating> (KH * KW)
    cdef Py_ssize_t row, n, oh, ow, h0, w0, h1, w1, ih, iw, c
    cdef floating *yo
    cdef const floating *xi
    cdef unsigned long old
    with nogil, parallel(num_threads=num_threads):
        old = cconv_ftz_on()
        for row in prange(rows, schedule="static"):
            n = row // g.OH
            oh = row - n * g.OH
            h0 = clip_lo(oh * sh - pt)
            h1 = clip_hi(oh * sh - pt, KH, g.H)
            for ow in range(g.OW):
                w0 = clip_lo(ow * sw - pl)
                w1 = clip_hi(ow * sw - pl, KW, g.W)
                yo = yp + (row * g.OW + ow) * C
                for c in range(C):
                    yo[c] = 0
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        xi = xp + ((n * g.H + ih) * g.W + iw) * C
                        for c in range(C):
                            yo[c] = yo[c] + xi[c]
                for c in range(C):
                    yo[c] = yo[c] * inv
        cconv_ftz_restore(old)


def avg_pool2d_backward(const floating[:, :, :, ::1] dy,
                        floating[:, :, :, ::1] dx,           # OUT, zeroed by caller
                        Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw,
                        Py_ssize_t pt, Py_ssize_t pl, int num_threads):
    cdef Geom g = make_geom(dx.shape[0], dx.shape[1], dx.shape[2], dx.shape[3], KH, KW, dy.shape[1], dy.shape[2],
                            sh, sw, pt, pl, 1, 1)
    cdef Py_ssize_t C = g.C
    if g.N * g.OH * g.OW * C == 0:
        return
    cdef const floating *dyp = &dy[0, 0, 0, 0]
    cdef floating *dxp = &dx[0, 0, 0, 0]
    cdef floating inv = <floating> 1 / <floating> (KH * KW)
    cdef Py_ssize_t n, oh, ow, h0, w0, h1, w1, ih, iw, c
    cdef const floating *dyo
    cdef floating *dxi
    cdef unsigned long old
    with nogil, parallel(num_threads=num_threads):
        old = cconv_ftz_on()
        for n in prange(g.N, schedule="static"):
            for oh in range(g.OH):
                h0 = clip_lo(oh * sh - pt)
                h1 = clip_hi(oh * sh - pt, KH, g.H)
                for ow in range(g.OW):
                    w0 = clip_lo(ow * sw - pl)
                    w1 = clip_hi(ow * sw - pl, KW, g.W)
                    dyo = dyp + ((n * g.OH + oh) * g.OW + ow) * C
                    for ih in range(h0, h1):
                        for iw in range(w0, w1):
                            dxi = dxp + ((n * g.H + ih) * g.W + iw) * C
                            for c in range(C):
                                dxi[c] = dxi[c] + dyo[c] * inv
        cconv_ftz_restore(old)


# ---------------------------------------------------------------------------------
# Elementwise
# ---------------------------------------------------------------------------------
DEF ELEMENTWISE_BLOCK = 65536


def relu_backward(const floating[::1] dy, const floating[::1] y,
                  floating[::1] out,                   # OUT
                  int num_threads):
    """out = dy where y > 0, else 0 (blocks of 64K elements in parallel)."""
    cdef Py_ssize_t n = dy.shape[0]
    if n == 0:
        return
    cdef Py_ssize_t nblocks = (n + ELEMENTWISE_BLOCK - 1) // ELEMENTWISE_BLOCK, blk, lo, m
    cdef const floating *dyp = &dy[0]
    cdef const floating *yp = &y[0]
    cdef floating *op = &out[0]
    for blk in prange(nblocks, nogil=True, schedule="static", num_threads=num_threads):
        lo = blk * ELEMENTWISE_BLOCK
        m = n - lo
        if m > ELEMENTWISE_BLOCK:
            m = ELEMENTWISE_BLOCK
        if floating is float:
            cconv_relu_bwd_f(op + lo, dyp + lo, yp + lo, m)
        else:
            cconv_relu_bwd_d(op + lo, dyp + lo, yp + lo, m)
