# cython: language_level=3
"""The Python face of cconv's compiled kernels.

The kernels live in one module per concept, each with its declarations in a .pxd:
``_im2col``, ``_conv``, ``_pool``, ``_activation`` (on ``_blas`` and ``_cpu``). They take a
geometry (``cconv/geometry.h``) and raw pointers, check the geometry, their scratch and
their thread count, and return an error code. The functions here hand them the arrays that
:mod:`cconv.functional` prepared; they check only what the kernels cannot see (that each
array is a C-contiguous ndarray of the right dtype whose extents are those the geometry
implies) and turn an error code into a ``ValueError`` or ``MemoryError`` naming the kernel.

Layout: activations NHWC, im2col rows ordered (n, oh, ow), columns (kh, kw, c);
convolution weights HWIO, which seen as a matrix of shape (KH*KW*C_in/groups, C_out)
are exactly the right operand of the im2col GEMM.

Also here: the compiled fast paths of conv2d and max_pool2d for cconv.functional, the cache
of large output buffers (``Block``), what the build supports, the tests' record of which
kernel paths ran on how many threads (``probe_reset``, ``probe_record``: cconv._probe, read
through cconv._testing), and the table of the C API
(``_C_API``, see ``cconv/cconv.h``): the kernels of the public .pxd files (conv, im2col,
pool, activation), which other packages cimport directly.
"""
from cython.parallel cimport parallel, prange
from libc.stdint cimport uintptr_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp
from cpython.pycapsule cimport PyCapsule_New
from cpython.long cimport PyLong_CheckExact
from cpython.unicode cimport PyUnicode_CheckExact
from cpython.tuple cimport PyTuple_CheckExact, PyTuple_GET_SIZE, PyTuple_GET_ITEM
cimport numpy as cnp

from cconv.geometry cimport (cconv_geom, cconv_output_size, cconv_conv_geom, cconv_pool_geom,
                             CCONV_SIZE_MAX, CCONV_ERR_VALUE, CCONV_ERR_GEOMETRY,
                             CCONV_ERR_CHANNELS, CCONV_ERR_TOO_LARGE, CCONV_ERR_WORKSPACE,
                             CCONV_ERR_ARGMAX, CCONV_ERR_NOMEM, CCONV_ERR_BLAS)
from cconv._platform cimport CCONV_OPENMP, CCONV_HAVE_FTZ, cconv_omp_max_threads
from cconv._probe cimport probe, P_MATMUL, P_SAME_BYTES
from cconv cimport _blas, _cpu, _im2col, _conv, _pool, _activation
from cconv._blas import load_blas
from cconv._probe import probe_reset, probe_record

ctypedef long long longlong

cnp.import_array()


# ---------------------------------------------------------------------------------
# Arrays, errors and geometry
# ---------------------------------------------------------------------------------
_ERRORS = {
    CCONV_ERR_VALUE: "a size, stride, dilation, padding, group or thread count out of range",
    CCONV_ERR_GEOMETRY: "the window does not fit the padded input, or the output size "
                        "disagrees with the geometry",
    CCONV_ERR_CHANNELS: "channels not divisible by groups",
    CCONV_ERR_TOO_LARGE: "a dimension beyond 2**31 - 1",
    CCONV_ERR_WORKSPACE: "scratch buffer too small",
    CCONV_ERR_ARGMAX: "argmax holds indices outside [0, H*W)",
    CCONV_ERR_BLAS: "scipy's BLAS could not be loaded",
}

cdef enum:
    F32 = cnp.NPY_FLOAT32
    F64 = cnp.NPY_FLOAT64
    I32 = cnp.NPY_INT32
    I64 = cnp.NPY_INT64


cdef int check(int err, str where) except -1:
    """Raise for a kernel's error code (MemoryError, else ValueError naming `where`)."""
    if err == 0:
        return 0
    if err == CCONV_ERR_NOMEM:
        raise MemoryError(f"cconv: {where}: out of memory")
    raise ValueError(f"{where}: {_ERRORS.get(err, f'error {err}')}")


cdef char *data(object a, int typenum, int ndim, bint writable, str where,
                str name) except NULL:
    """The data of `a`, a C-contiguous ndarray of dtype `typenum` with `ndim` dimensions
    (and writable when the kernel writes it)."""
    if not cnp.PyArray_Check(a):
        raise TypeError(f"{where}: {name} must be an ndarray, got {type(a).__name__}")
    cdef cnp.ndarray arr = <cnp.ndarray> a
    if (cnp.PyArray_TYPE(arr) != typenum or cnp.PyArray_NDIM(arr) != ndim
            or not cnp.PyArray_IS_C_CONTIGUOUS(arr)
            or (writable and not cnp.PyArray_ISWRITEABLE(arr))):
        raise TypeError(f"{where}: {name} must be a C-contiguous{' writable' if writable else ''} "
                        f"{ndim}-D array of {cnp.PyArray_DescrFromType(typenum)}, got "
                        f"{a.dtype} of shape {a.shape}")
    return <char *> cnp.PyArray_DATA(arr)


cdef inline int dtype_of(object a, str where, str name) except -1:
    """F32 or F64: the dtype of the floating-point arrays of a call."""
    if cnp.PyArray_Check(a):
        t = cnp.PyArray_TYPE(<cnp.ndarray> a)
        if t == F32 or t == F64:
            return t
    raise TypeError(f"{where}: {name} must be a float32 or float64 ndarray")


cdef inline int index_type(object a, str where) except -1:
    """I32 or I64: the dtype of an argmax array."""
    if cnp.PyArray_Check(a):
        t = cnp.PyArray_TYPE(<cnp.ndarray> a)
        if t == I32 or t == I64:
            return t
    raise TypeError(f"{where}: argmax must be an int32 or int64 ndarray")


cdef inline Py_ssize_t dim(object a, int i) noexcept:
    """Extent i of an array that data() accepted."""
    return cnp.PyArray_DIM(<cnp.ndarray> a, i)


cdef int expect(object a, str where, str name, Py_ssize_t d0, Py_ssize_t d1=-1,
                Py_ssize_t d2=-1, Py_ssize_t d3=-1) except -1:
    """The extents of an array that data() accepted must be those the geometry implies."""
    cdef Py_ssize_t want[4]
    want[0], want[1], want[2], want[3] = d0, d1, d2, d3
    cdef int i, n = cnp.PyArray_NDIM(<cnp.ndarray> a)
    for i in range(n):
        if cnp.PyArray_DIM(<cnp.ndarray> a, i) != want[i]:
            raise ValueError(f"{where}: {name} has shape {a.shape}, expected "
                             f"{tuple([want[k] for k in range(n)])}")
    return 0


cdef cconv_geom geometry(object x, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t OH, Py_ssize_t OW,
                         Py_ssize_t Cout, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt,
                         Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t groups) noexcept:
    """The geometry of a 4-D input x that data() accepted and an output of OH x OW x Cout:
    the bottom/right padding is the least that makes OH x OW (the kernels check the rest)."""
    cdef cconv_geom g
    g.N, g.H, g.W, g.C = dim(x, 0), dim(x, 1), dim(x, 2), dim(x, 3)
    g.OH, g.OW, g.Cout = OH, OW, Cout
    g.KH, g.KW, g.sh, g.sw, g.pt, g.pl = KH, KW, sh, sw, pt, pl
    g.dh, g.dw, g.groups = dh, dw, groups
    g.pb = max(0, (g.OH - 1) * sh + dh * (KH - 1) + 1 - g.H - pt)
    g.pr = max(0, (g.OW - 1) * sw + dw * (KW - 1) + 1 - g.W - pl)
    return g


cdef bint overlap(cnp.ndarray x, cnp.ndarray y):
    """Whether x and y may share memory: their address ranges overlap (exact for
    C-contiguous arrays; numpy's may_share_memory for others)."""
    if not (cnp.PyArray_IS_C_CONTIGUOUS(x) and cnp.PyArray_IS_C_CONTIGUOUS(y)):
        import numpy
        return numpy.may_share_memory(x, y)
    cdef uintptr_t x0 = <uintptr_t> cnp.PyArray_DATA(x), y0 = <uintptr_t> cnp.PyArray_DATA(y)
    return (x0 < y0 + <uintptr_t> cnp.PyArray_NBYTES(y)
            and y0 < x0 + <uintptr_t> cnp.PyArray_NBYTES(x))


def out_problem(out, tuple shape, cnp.dtype dtype, tuple inputs):
    """What stops ``out`` from receiving a result of ``shape`` and ``dtype`` computed from the
    ndarrays ``inputs`` (None entries skipped): 0 nothing, 1 not an ndarray, 2 its dtype,
    3 its shape, 4 not C-contiguous, 5 read-only, 6 + i shares memory with inputs[i]. (The
    checks of cconv.functional's out= arguments, in one call; the messages are its own.)"""
    return out_check(out, shape, dtype, inputs)


cdef int out_check(object out, tuple shape, cnp.dtype dtype, tuple inputs) except -1:
    if not cnp.PyArray_Check(out):
        return 1
    cdef cnp.ndarray o = <cnp.ndarray> out
    have = out.dtype
    if have is not dtype and have != dtype:
        return 2
    cdef int i, n = cnp.PyArray_NDIM(o)
    if n != len(shape):
        return 3
    for i in range(n):
        if cnp.PyArray_DIM(o, i) != shape[i]:
            return 3
    if not cnp.PyArray_IS_C_CONTIGUOUS(o):
        return 4
    if not cnp.PyArray_ISWRITEABLE(o):
        return 5
    for i in range(len(inputs)):
        if inputs[i] is not None and overlap(o, <cnp.ndarray?> inputs[i]):
            return 6 + i
    return 0


# ---------------------------------------------------------------------------------
# BLAS
# ---------------------------------------------------------------------------------
def same_bytes(cnp.ndarray a, cnp.ndarray b, int num_threads=1):
    """Whether two C-contiguous arrays hold the same bytes (memcmp; a cache's validity test).

    On num_threads threads the bytes go in equal runs (multiples of 64 bytes), one per
    thread: the comparison of a large filter with its copy, cold in the caches after the
    other layers of a batch-1 predict, is bound by each core's bandwidth from L3."""
    if not (cnp.PyArray_IS_C_CONTIGUOUS(a) and cnp.PyArray_IS_C_CONTIGUOUS(b)):
        raise ValueError("same_bytes: the arrays must be C-contiguous")
    if num_threads < 1:
        raise ValueError(f"same_bytes: num_threads must be >= 1, got {num_threads}")
    cdef size_t n = <size_t> cnp.PyArray_NBYTES(a)
    if n != <size_t> cnp.PyArray_NBYTES(b):
        return False
    cdef const char *ap = <const char *> cnp.PyArray_DATA(a)
    cdef const char *bp = <const char *> cnp.PyArray_DATA(b)
    cdef int ch, nt = num_threads
    cdef size_t run = (n + nt - 1) // nt
    run = (run + 63) // 64 * 64
    cdef size_t r0, r1
    cdef int differ = 0
    if nt == 1 or run >= n:
        with nogil:
            probe(P_SAME_BYTES)
            differ = memcmp(ap, bp, n) != 0
        return not differ
    with nogil, parallel(num_threads=nt):
        for ch in prange(nt, schedule="static"):
            r0 = ch * run
            if r0 < n:
                r1 = r0 + run if r0 + run < n else n
                probe(P_SAME_BYTES)
                if memcmp(ap + r0, bp + r0, r1 - r0) != 0:
                    differ += 1           # a reduction: summed over the threads
    return differ == 0


def matmul(bint trans_a, bint trans_b, a, b, double beta, c, int num_threads):  # c: IN/OUT
    """c = op(a) @ op(b) + beta * c, the rows of c cut into one block per thread; a single
    row (m = 1: one image) is cut into blocks of op(b)'s rows (the inner dimension) instead,
    or with trans_b into blocks of its columns: either way into contiguous blocks of b.

    Each thread makes one single-threaded BLAS call on its block, so dense layers run on
    cconv's own OpenMP threads: no BLAS thread pool is left spinning next to the
    convolution kernels. A single row's blocks are gemv calls (BLAS may round an element
    differently for another block size); an inner block other than the first goes into a
    partial row of its own, added to c after the threads, in block order. The caller
    ensures the inner dimension is non-zero.
    """
    cdef int t = dtype_of(c, "matmul", "c")
    cdef char *ap = data(a, t, 2, False, "matmul", "a")
    cdef char *bp = data(b, t, 2, False, "matmul", "b")
    cdef char *cp = data(c, t, 2, True, "matmul", "c")
    cdef int m = dim(c, 0), n = dim(c, 1)
    cdef int k = dim(a, 0) if trans_a else dim(a, 1)
    cdef int lda = dim(a, 1), ldb = dim(b, 1)
    cdef Py_ssize_t ch, r0, r1, j
    cdef int nt
    if num_threads < 1:
        raise ValueError("matmul: num_threads must be >= 1")
    check(_blas.ensure_blas(), "matmul")
    cdef Py_ssize_t cols = (n + COLUMN_BLOCK - 1) // COLUMN_BLOCK, c0, c1
    cdef Py_ssize_t size = 4 if t == F32 else 8
    cdef char *part = NULL
    if m == 1 and num_threads > 1 and trans_b:
        # one row, b stored as op(b)^T: column c0 of op(b) is row c0 of b, so blocks of
        # COLUMN_BLOCK columns are contiguous; spread over the threads
        with nogil, parallel(num_threads=num_threads):
            for ch in prange(num_threads, schedule="static"):
                c0 = min(n, ch * cols // num_threads * COLUMN_BLOCK)
                c1 = min(n, (ch + 1) * cols // num_threads * COLUMN_BLOCK)
                if c1 > c0:
                    probe(P_MATMUL)
                    matmul_rows(t, trans_a, trans_b, 0, 1, <int> (c1 - c0), k, ap, lda,
                                bp + c0 * ldb * size, ldb, beta, cp + c0 * size, n)
        return
    if m == 1 and num_threads > 1:
        # one row, b stored as op(b): a block of its rows (the inner dimension) is
        # contiguous, so each thread streams one part of the weights, the same part on
        # every call, which stays in its core's cache (blocks of columns gave each thread
        # every other run of cache lines). At most one thread per block of COLUMN_BLOCK
        # rows, so that every thread has rows: the first writes c (with beta), the others
        # their partial rows.
        cols = (k + COLUMN_BLOCK - 1) // COLUMN_BLOCK
        nt = min(num_threads, cols)
        part = <char *> malloc((nt - 1) * n * size + 1)
        if part == NULL:
            raise MemoryError("matmul: no memory for the partial rows")
        with nogil, parallel(num_threads=nt):
            for ch in prange(nt, schedule="static"):
                c0 = ch * cols // nt * COLUMN_BLOCK
                c1 = min(k, (ch + 1) * cols // nt * COLUMN_BLOCK)
                probe(P_MATMUL)
                matmul_rows(t, trans_a, False, 0, 1, n, <int> (c1 - c0),
                            ap + c0 * (lda if trans_a else 1) * size, lda,
                            bp + c0 * ldb * size, ldb, beta if ch == 0 else 0.0,
                            cp if ch == 0 else part + (ch - 1) * n * size, n)
        for ch in range(nt - 1):
            for j in range(n):
                if t == F32:
                    (<float *> cp)[j] += (<float *> part)[ch * n + j]
                else:
                    (<double *> cp)[j] += (<double *> part)[ch * n + j]
        free(part)
        return
    with nogil, parallel(num_threads=num_threads):
        for ch in prange(num_threads, schedule="static"):
            r0 = ch * m // num_threads
            r1 = (ch + 1) * m // num_threads
            if r1 > r0:
                probe(P_MATMUL)
                matmul_rows(t, trans_a, trans_b, r0, r1, n, k, ap, lda, bp, ldb, beta, cp, n)


#: A thread's block of at most this many rows is multiplied row by row (BLAS gemv), a
#: larger one with one gemm: gemm packs B before multiplying, which costs more than a few
#: passes over it.
cdef enum:
    GEMV_MAX_ROWS = 1
    COLUMN_BLOCK = 16   # a single row's columns are cut in blocks of 16 (a 64-byte line)


cdef void matmul_rows(int t, bint trans_a, bint trans_b, Py_ssize_t r0, Py_ssize_t r1, int n,
                      int k, char *ap, int lda, char *bp, int ldb, double beta,
                      char *cp, int ldc) noexcept nogil:
    """Rows r0..r1 of matmul's c (row stride ldc), n columns of it (bp, cp: the first)."""
    cdef Py_ssize_t r
    if r1 - r0 <= GEMV_MAX_ROWS:
        for r in range(r0, r1):
            if t == F32:
                _blas.gemm_row(trans_a, trans_b, n, k, <float> 1,
                               <float *> ap + (r if trans_a else r * lda), lda, <float *> bp,
                               ldb, <float> beta, <float *> cp + r * ldc)
            else:
                _blas.gemm_row(trans_a, trans_b, n, k, <double> 1,
                               <double *> ap + (r if trans_a else r * lda), lda,
                               <double *> bp, ldb, beta, <double *> cp + r * ldc)
    elif t == F32:
        _blas.gemm(trans_a, trans_b, <int> (r1 - r0), n, k, <float> 1,
                   <float *> ap + (r0 if trans_a else r0 * lda), lda, <float *> bp,
                   ldb, <float> beta, <float *> cp + r0 * ldc, ldc)
    else:
        _blas.gemm(trans_a, trans_b, <int> (r1 - r0), n, k, <double> 1,
                   <double *> ap + (r0 if trans_a else r0 * lda), lda,
                   <double *> bp, ldb, beta, <double *> cp + r0 * ldc, ldc)


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


# ---------------------------------------------------------------------------------
# What the build supports
# ---------------------------------------------------------------------------------
def openmp_enabled():
    """True when the extension was compiled with OpenMP."""
    return bool(CCONV_OPENMP)


def omp_max_threads():
    """omp_get_max_threads() of the OpenMP runtime (1 without OpenMP)."""
    return cconv_omp_max_threads()


def ftz_available():
    """True when the kernels set flush-to-zero/denormals-are-zero in their threads."""
    return bool(CCONV_HAVE_FTZ)


def simd_level(int cap=-1):
    """Instruction set of the vectorised kernels (tiled float32 max pool, direct
    convolution): 2 = AVX-512F, 1 = AVX2 + FMA (on aarch64: NEON), 0 = generic loops and the
    GEMM routes. ``cap`` >= 0 lowers (or restores) the level used, never above what the CPU
    supports nor above the environment variable ``CCONV_SIMD_LEVEL`` read at import (the
    tests run every path this way; ``CCONV_SIMD_LEVEL=1`` simulates a CPU without AVX-512)."""
    return _cpu.simd_level(cap)


def multiversion_targets():
    """The instruction sets of the clones of cconv's plain C loops, best first
    ("avx512f,avx2,default"). The loader picks one from the CPU's features, whatever
    simd_level() says; a build made with ``CFLAGS=-DCCONV_CLONES_MAX_AVX2`` has no AVX-512
    clone ("avx2,default"), for measuring a CPU without AVX-512. "" where the loops have one
    version (the build's baseline: not gcc on x86-64 Linux)."""
    return _cpu.multiversion_targets().decode()


# ---------------------------------------------------------------------------------
# im2col / col2im
# ---------------------------------------------------------------------------------
def im2col(x, cols,                                    # cols: OUT (N*OH*OW, KH*KW*C)
           Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t OH, Py_ssize_t OW,
           Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
           Py_ssize_t dh, Py_ssize_t dw, int num_threads):
    cdef int t = dtype_of(x, "im2col", "x")
    cdef char *xp = data(x, t, 4, False, "im2col", "x")
    cdef char *cp = data(cols, t, 2, True, "im2col", "cols")
    cdef cconv_geom g = geometry(x, KH, KW, OH, OW, 1, sh, sw, pt, pl,
                                 dh, dw, 1)
    expect(cols, "im2col", "cols", g.N * OH * OW, KH * KW * g.C)
    cdef int err
    with nogil:
        if t == F32:
            err = _im2col.im2col_ex(&g, <float *> xp, <float *> cp, num_threads)
        else:
            err = _im2col.im2col_ex(&g, <double *> xp, <double *> cp, num_threads)
    check(err, "im2col")


def col2im(cols, x,                                    # x: IN/OUT (N, H, W, C)
           Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t OH, Py_ssize_t OW,
           Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
           Py_ssize_t dh, Py_ssize_t dw, int num_threads, bint zero=False):
    """Add the rows of cols onto the patches of x they came from (the adjoint of im2col);
    ``zero`` zeroes x first (image by image, on the kernel's threads)."""
    cdef int t = dtype_of(x, "col2im", "x")
    cdef char *cp = data(cols, t, 2, False, "col2im", "cols")
    cdef char *xp = data(x, t, 4, True, "col2im", "x")
    cdef cconv_geom g = geometry(x, KH, KW, OH, OW, 1, sh, sw, pt, pl,
                                 dh, dw, 1)
    expect(cols, "col2im", "cols", g.N * OH * OW, KH * KW * g.C)
    cdef int err
    with nogil:
        if t == F32:
            err = _im2col.col2im_ex(&g, <float *> cp, <float *> xp, zero, num_threads)
        else:
            err = _im2col.col2im_ex(&g, <double *> cp, <double *> xp, zero, num_threads)
    check(err, "col2im")


# ---------------------------------------------------------------------------------
# Convolution: the plan, and the routes it picks
# ---------------------------------------------------------------------------------
def conv_plan(tuple shape, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t Cout,
              Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pb, Py_ssize_t pl,
              Py_ssize_t pr, Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t groups, int itemsize,
              bint backward, bint need_dx, int budget, tuple tuning):
    """The route and sizes of a convolution on input ``shape`` (N, H, W, C) on at most
    ``budget`` threads: (route, threads, filter_threads, tile, slots, scratch, K, Kpad),
    route 0 = im2col + GEMM, 1 = Winograd, 2 = direct, 3 = Winograd F(4x4, 3x3) (backward
    only; see _conv.pxd). ``tuning``: (tile_bytes, winograd_min_channels,
    winograd_block_bytes, direct_max_k, slots_per_thread, min_work_per_thread,
    winograd4_min_channels), a negative threshold meaning never."""
    cdef cconv_geom g
    cdef _conv.conv_tuning t
    cdef _conv.conv_plan p
    g.N, g.H, g.W, g.C = shape
    g.KH, g.KW, g.Cout, g.sh, g.sw, g.pt, g.pb, g.pl, g.pr = KH, KW, Cout, sh, sw, pt, pb, pl, pr
    g.dh, g.dw, g.groups = dh, dw, groups
    g.OH = cconv_output_size(g.H, KH, sh, pt, pb, dh)
    g.OW = cconv_output_size(g.W, KW, sw, pl, pr, dw)
    (t.tile_bytes, t.winograd_min_channels, t.winograd_block_bytes, t.direct_max_k,
     t.slots_per_thread, t.min_work_per_thread, t.winograd4_min_channels) = tuning
    check(_conv.make_plan(&g, itemsize, backward, need_dx, budget, &t, &p), "conv_plan")
    return p.route, p.threads, p.filter_threads, p.tile, p.slots, p.scratch, p.K, p.Kpad


cdef inline char *bias_data(object bias, int t, str where) except? NULL:
    return NULL if bias is None else data(bias, t, 1, False, where, "bias")


def conv2d_forward(x, w, bias, y, work,                # y: OUT (N, OH, OW, Cout); work: scratch
                   Py_ssize_t KH, Py_ssize_t KW,
                   Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                   Py_ssize_t dh, Py_ssize_t dw, int groups, Py_ssize_t tile_rows,
                   int num_threads):
    """y = conv(x, w) + b by im2col + GEMM, tiles of ``tile_rows`` output pixels in
    parallel; w (KH, KW, C/groups, Cout), bias (Cout,) or None, work (threads, scratch), or
    None: num_threads tiles of scratch allocated for the call (for small ones: a large one
    belongs in cconv's buffer cache, which functional uses)."""
    cdef str where = "conv2d_forward"
    cdef int t = dtype_of(x, where, "x")
    cdef char *xp = data(x, t, 4, False, where, "x")
    cdef char *wp = data(w, t, 4, False, where, "w")
    cdef char *bp = bias_data(bias, t, where)
    cdef char *yp = data(y, t, 4, True, where, "y")
    cdef char *kp = NULL if work is None else data(work, t, 2, True, where, "work")
    cdef cconv_geom g = geometry(x, KH, KW, dim(y, 1), dim(y, 2), dim(y, 3), sh, sw, pt, pl, dh,
                                 dw, groups)
    expect(y, where, "y", g.N, g.OH, g.OW, g.Cout)
    expect(w, where, "w", KH, KW, g.C // max(1, groups), g.Cout)
    if bias is not None:
        expect(bias, where, "bias", g.Cout)
    cdef Py_ssize_t rows = max(1, num_threads), stride = max(1, tile_rows) * KH * KW * dim(w, 2)
    if work is None:
        kp = <char *> malloc(rows * stride * (4 if t == F32 else 8))
        if kp == NULL:
            raise MemoryError(f"cconv: {where}: out of memory")
    else:
        rows, stride = dim(work, 0), dim(work, 1)
    cdef int err
    with nogil:
        if t == F32:
            err = _conv.gemm_forward(&g, <float *> xp, <float *> wp, <float *> bp, <float *> yp,
                                     <float *> kp, rows, stride, tile_rows, num_threads)
        else:
            err = _conv.gemm_forward(&g, <double *> xp, <double *> wp, <double *> bp,
                                     <double *> yp, <double *> kp, rows, stride, tile_rows,
                                     num_threads)
    if work is None:
        free(kp)
    check(err, where)


def conv2d_backward(dy, x, w, dx, dw_work, db_work, work,
                    Py_ssize_t KH, Py_ssize_t KW,
                    Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                    Py_ssize_t dh, Py_ssize_t dw, int groups, Py_ssize_t tile_rows,
                    int num_threads):
    """Gradients of a convolution by im2col + GEMM: dx (OUT, or None), dw_work (OUT,
    (threads, Kg, Cout)) and db_work (OUT, (threads, Cout)), per-thread sums for the caller
    to add up in thread order (see _conv.gemm_backward); work: scratch (threads, scratch)."""
    cdef str where = "conv2d_backward"
    cdef int t = dtype_of(x, where, "x")
    cdef char *dyp = data(dy, t, 4, False, where, "dy")
    cdef char *xp = data(x, t, 4, False, where, "x")
    cdef char *wp = data(w, t, 4, False, where, "w")
    cdef char *dxp = NULL if dx is None else data(dx, t, 4, True, where, "dx")
    cdef char *dwp = data(dw_work, t, 3, True, where, "dw_work")
    cdef char *dbp = data(db_work, t, 2, True, where, "db_work")
    cdef char *kp = data(work, t, 2, True, where, "work")
    cdef cconv_geom g = geometry(x, KH, KW, dim(dy, 1), dim(dy, 2), dim(dy, 3), sh, sw, pt, pl,
                                 dh, dw, groups)
    cdef Py_ssize_t Kg = KH * KW * (g.C // max(1, groups))
    expect(dy, where, "dy", g.N, g.OH, g.OW, g.Cout)
    expect(w, where, "w", KH, KW, g.C // max(1, groups), g.Cout)
    expect(dw_work, where, "dw_work", max(num_threads, 1), Kg, g.Cout)
    expect(db_work, where, "db_work", max(num_threads, 1), g.Cout)
    if dx is not None:
        expect(dx, where, "dx", dim(x, 0), dim(x, 1), dim(x, 2), dim(x, 3))
    cdef Py_ssize_t rows = dim(work, 0), stride = dim(work, 1)
    cdef int err
    with nogil:
        if t == F32:
            err = _conv.gemm_backward(&g, <float *> dyp, <float *> xp, <float *> wp,
                                      <float *> dxp, <float *> dwp, <float *> dbp,
                                      <float *> kp, rows, stride, tile_rows, num_threads)
        else:
            err = _conv.gemm_backward(&g, <double *> dyp, <double *> xp, <double *> wp,
                                      <double *> dxp, <double *> dwp, <double *> dbp,
                                      <double *> kp, rows, stride, tile_rows, num_threads)
    check(err, where)


def direct_forward(x, w, bias, y,                     # y: OUT (N, OH, OW, Cout)
                   Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw,
                   Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw, int num_threads):
    """y = conv(x, w) + b computed directly from x (no im2col buffer), row by row, with the
    AVX-512, AVX2 or NEON kernel of simd_level() >= 1 (see _conv_direct.h); float32, w
    (KH*KW*C, Cout), bias (Cout,) or None."""
    cdef str where = "direct_forward"
    cdef char *xp = data(x, F32, 4, False, where, "x")
    cdef char *wp = data(w, F32, 2, False, where, "w")
    cdef char *bp = bias_data(bias, F32, where)
    cdef char *yp = data(y, F32, 4, True, where, "y")
    cdef cconv_geom g = geometry(x, KH, KW, dim(y, 1), dim(y, 2), dim(y, 3), sh, sw, pt, pl, dh,
                                 dw, 1)
    expect(y, where, "y", g.N, g.OH, g.OW, g.Cout)
    expect(w, where, "w", KH * KW * g.C, g.Cout)
    if bias is not None:
        expect(bias, where, "bias", g.Cout)
    cdef int err
    with nogil:
        err = _conv.direct_forward(&g, <float *> xp, <float *> wp, <float *> bp, <float *> yp,
                                   NULL, num_threads)
    check(err, where)


def direct_forward_pool(x, w, bias, y, argmax,        # y, argmax: OUT (N, OH // 2, OW // 2, Cout)
                        Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t KH, Py_ssize_t KW,
                        Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                        Py_ssize_t dh, Py_ssize_t dw, bint relu, int num_threads):
    """The 2x2 stride-2 max pool of direct_forward's (OH, OW) output, then ReLU if
    ``relu``, without storing that output: two rows at a time in a thread's scratch, or
    without ``argmax``, where every pooled window lies inside the image and the level has
    the kernel for Cout, pooled in the registers (_conv_direct_kern.h).
    ``argmax``: None, or int32 for the pool's (max_pool2d's format)."""
    cdef str where = "direct_forward_pool"
    cdef char *xp = data(x, F32, 4, False, where, "x")
    cdef char *wp = data(w, F32, 2, False, where, "w")
    cdef char *bp = bias_data(bias, F32, where)
    cdef char *yp = data(y, F32, 4, True, where, "y")
    cdef char *ap = NULL if argmax is None else data(argmax, I32, 4, True, where, "argmax")
    cdef cconv_geom g = geometry(x, KH, KW, OH, OW, dim(y, 3), sh, sw, pt, pl, dh, dw, 1)
    expect(y, where, "y", g.N, g.OH // 2, g.OW // 2, g.Cout)
    if argmax is not None:
        expect(argmax, where, "argmax", g.N, g.OH // 2, g.OW // 2, g.Cout)
    expect(w, where, "w", KH * KW * g.C, g.Cout)
    if bias is not None:
        expect(bias, where, "bias", g.Cout)
    cdef int err
    with nogil:
        err = _conv.direct_forward_pool(&g, <float *> xp, <float *> wp, <float *> bp,
                                        <float *> yp, <int *> ap, relu, NULL, num_threads)
    check(err, where)


def direct_backward_weights(dy, x, dw_work, db_work,
                            Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw,
                            Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
                            int num_threads):
    """dW and db of direct_forward into dw_work (OUT, (nslots, Kpad, Cout); rows K..Kpad-1
    are scratch) and db_work (OUT, (nslots, Cout)); the caller sums the accumulators of the
    nslots = dw_work.shape[0] runs of rows: the result depends on nslots only, not on the
    threads' timing."""
    cdef str where = "direct_backward_weights"
    cdef char *dyp = data(dy, F32, 4, False, where, "dy")
    cdef char *xp = data(x, F32, 4, False, where, "x")
    cdef char *dwp = data(dw_work, F32, 3, True, where, "dw_work")
    cdef char *dbp = data(db_work, F32, 2, True, where, "db_work")
    cdef cconv_geom g = geometry(x, KH, KW, dim(dy, 1), dim(dy, 2), dim(dy, 3), sh, sw, pt, pl,
                                 dh, dw, 1)
    cdef Py_ssize_t nslots = dim(dw_work, 0)
    expect(dy, where, "dy", g.N, g.OH, g.OW, g.Cout)
    expect(dw_work, where, "dw_work", nslots, (KH * KW * g.C + 7) // 8 * 8, g.Cout)
    expect(db_work, where, "db_work", nslots, g.Cout)
    cdef int err
    with nogil:
        err = _conv.direct_backward_weights(&g, <float *> dyp, <float *> xp, <float *> dwp,
                                            <float *> dbp, nslots, NULL, num_threads)
    check(err, where)


def direct_backward_weights_pool(dp, argmax, mask, x, dw_work, db_work,
                                 Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t KH, Py_ssize_t KW,
                                 Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                                 Py_ssize_t dh, Py_ssize_t dw, int num_threads):
    """direct_backward_weights of the (OH, OW) output whose gradient is given by dp, that of
    its 2x2 stride-2 max pool (N, OH // 2, OW // 2, Cout), and the pool's int32 argmax:
    each row of the output's gradient is rebuilt in a thread's scratch; mask (None, or the
    pooled output after a ReLU, dp's shape) masks dp as relu_backward(dp, mask) would.
    Returns how many argmax entries named a unit of their own window (all of them for a
    valid argmax)."""
    cdef str where = "direct_backward_weights_pool"
    cdef char *dpp = data(dp, F32, 4, False, where, "dp")
    cdef char *ap = data(argmax, I32, 4, False, where, "argmax")
    cdef char *mp = NULL if mask is None else data(mask, F32, 4, False, where, "mask")
    cdef char *xp = data(x, F32, 4, False, where, "x")
    cdef char *dwp = data(dw_work, F32, 3, True, where, "dw_work")
    cdef char *dbp = data(db_work, F32, 2, True, where, "db_work")
    cdef cconv_geom g = geometry(x, KH, KW, OH, OW, dim(dp, 3), sh, sw, pt, pl, dh, dw, 1)
    cdef Py_ssize_t nslots = dim(dw_work, 0)
    expect(dp, where, "dp", g.N, g.OH // 2, g.OW // 2, g.Cout)
    expect(argmax, where, "argmax", g.N, g.OH // 2, g.OW // 2, g.Cout)
    if mask is not None:
        expect(mask, where, "mask", g.N, g.OH // 2, g.OW // 2, g.Cout)
    expect(dw_work, where, "dw_work", nslots, (KH * KW * g.C + 7) // 8 * 8, g.Cout)
    expect(db_work, where, "db_work", nslots, g.Cout)
    cdef int err
    cdef long long matched = 0
    with nogil:
        err = _conv.direct_backward_weights_pool(&g, <float *> dpp, <int *> ap,
                                                 <float *> mp, <float *> xp,
                                                 <float *> dwp, <float *> dbp, nslots,
                                                 &matched, NULL, num_threads)
    check(err, where)
    return matched


cdef inline Py_ssize_t wino_slots(Py_ssize_t n) noexcept:
    """The transformed slots per tile that an array dimension n asks for: 36 (F(4x4, 3x3)),
    or else 16 (F(2x2, 3x3), whose shape check then refuses any other n)."""
    return 36 if n == 36 else 16


def winograd_filter(w, U, int num_threads):            # U: OUT (16 or 36, C, Cout)
    """U = G w G^T for every (input, output) channel pair of w (3, 3, C, Cout): the filter
    transform of F(2x2, 3x3) for U (16, C, Cout), of F(4x4, 3x3) for U (36, C, Cout)."""
    cdef str where = "winograd_filter"
    cdef int t = dtype_of(w, where, "w")
    cdef char *wp = data(w, t, 4, False, where, "w")
    cdef char *up = data(U, t, 3, True, where, "U")
    cdef Py_ssize_t nk = wino_slots(dim(U, 0))
    expect(w, where, "w", 3, 3, dim(w, 2), dim(w, 3))
    expect(U, where, "U", nk, dim(w, 2), dim(w, 3))
    cdef Py_ssize_t C = dim(w, 2), Cout = dim(w, 3)
    cdef int err
    cdef int m = 2 if nk == 16 else 4
    with nogil:
        if t == F32:
            err = _conv.wino_filter(<float *> wp, <float *> up, C, Cout, m, num_threads)
        else:
            err = _conv.wino_filter(<double *> wp, <double *> up, C, Cout, m, num_threads)
    check(err, where)


def winograd_filter_grad(dU_work, dw, int num_threads):  # dw: OUT (3, 3, C, Cout)
    """dw = G^T (dU_work summed over its slots, in slot order) G: the adjoint of
    winograd_filter, with the per-slot accumulators (slots, 16 or 36, C, Cout) of
    winograd_backward summed on the way (16: F(2x2, 3x3), 36: F(4x4, 3x3))."""
    cdef str where = "winograd_filter_grad"
    cdef int t = dtype_of(dw, where, "dw")
    cdef char *up = data(dU_work, t, 4, False, where, "dU_work")
    cdef char *dwp = data(dw, t, 4, True, where, "dw")
    cdef Py_ssize_t nk = wino_slots(dim(dU_work, 1))
    expect(dw, where, "dw", 3, 3, dim(dw, 2), dim(dw, 3))
    expect(dU_work, where, "dU_work", dim(dU_work, 0), nk, dim(dw, 2), dim(dw, 3))
    cdef Py_ssize_t nslots = dim(dU_work, 0), C = dim(dw, 2), Cout = dim(dw, 3)
    cdef int err
    cdef int m = 2 if nk == 16 else 4
    with nogil:
        if t == F32:
            err = _conv.wino_filter_grad(<float *> up, nslots, <float *> dwp, C, Cout, m,
                                         num_threads)
        else:
            err = _conv.wino_filter_grad(<double *> up, nslots, <double *> dwp, C, Cout, m,
                                         num_threads)
    check(err, where)


def winograd_forward(x, U, bias, y, work,             # y: OUT (N, OH, OW, Cout); work: scratch
                     Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t TB, int num_threads):
    """y = conv3x3(x, w) + b, stride 1, by Winograd F(2x2, 3x3) in blocks of TB tiles;
    U (16, C, Cout) = G w G^T, work (threads, scratch)."""
    wino_forward("winograd_forward", x, U, bias, y, None, work, dim(y, 1), dim(y, 2), pt, pl,
                 TB, 0, num_threads)


def winograd_forward_pool(x, U, bias, y, argmax, work,  # y, argmax: OUT (N, OH//2, OW//2, Cout)
                          Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t pt, Py_ssize_t pl,
                          Py_ssize_t TB, bint relu, int num_threads):
    """The 2x2 stride-2 max pool of winograd_forward's (OH, OW) output, then ReLU if
    ``relu``: one tile per pool window, the output itself never stored. ``argmax``: None,
    or int32 for the pool's (max_pool2d's format)."""
    wino_forward("winograd_forward_pool", x, U, bias, y, argmax, work, OH, OW, pt, pl, TB,
                 2 if relu else 1, num_threads)


cdef wino_forward(str where, x, U, bias, y, argmax, work, Py_ssize_t OH, Py_ssize_t OW,
                  Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t TB, int pool, int num_threads):
    """winograd_forward (pool 0) or winograd_forward_pool (1, 2 with ReLU): y is the
    (OH, OW) output or its pool (OH // 2, OW // 2), argmax None or the pool's."""
    cdef int t = dtype_of(x, where, "x")
    cdef char *xp = data(x, t, 4, False, where, "x")
    cdef char *up = data(U, t, 3, False, where, "U")
    cdef char *bp = bias_data(bias, t, where)
    cdef char *yp = data(y, t, 4, True, where, "y")
    cdef char *kp = data(work, t, 2, True, where, "work")
    cdef char *ap = NULL if argmax is None else data(argmax, I32, 4, True, where, "argmax")
    cdef cconv_geom g = geometry(x, 3, 3, OH, OW, dim(y, 3), 1, 1, pt, pl, 1, 1, 1)
    if argmax is not None:
        expect(argmax, where, "argmax", g.N, g.OH // 2, g.OW // 2, g.Cout)
    if pool:
        expect(y, where, "y", g.N, g.OH // 2, g.OW // 2, g.Cout)
    else:
        expect(y, where, "y", g.N, g.OH, g.OW, g.Cout)
    expect(U, where, "U", 16, g.C, g.Cout)
    if bias is not None:
        expect(bias, where, "bias", g.Cout)
    cdef Py_ssize_t rows = dim(work, 0), stride = dim(work, 1)
    cdef int err
    with nogil:
        if t == F32:
            err = _conv.winograd_forward_pool(&g, <float *> xp, <float *> up, <float *> bp,
                                              <float *> yp, <int *> ap, pool, <float *> kp,
                                              rows, stride, TB, num_threads)
        else:
            err = _conv.winograd_forward_pool(&g, <double *> xp, <double *> up, <double *> bp,
                                              <double *> yp, <int *> ap, pool, <double *> kp,
                                              rows, stride, TB, num_threads)
    check(err, where)


def winograd_backward(dy, x, U, dx, dU_work, db_work, work,
                      Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t TB, bint need_dx,
                      int num_threads):
    """Gradients of winograd_forward: dx (OUT; ignored unless need_dx), dU_work (OUT,
    (nslots, 16, C, Cout)) and db_work (OUT, (nslots, Cout)), all zeroed by the kernel; the
    caller turns dU_work into dW with winograd_filter_grad (which sums the slots) and sums
    db_work over the slots (see _conv.winograd_backward). With U (36, C, Cout) from
    winograd_filter and dU_work (nslots, 36, C, Cout), the same by F(4x4, 3x3) in blocks of
    TB 4x4-output tiles (_conv.winograd_backward with m = 4)."""
    wino_backward("winograd_backward", dy, None, None, x, U, dx, dU_work, db_work, work,
                  dim(dy, 1), dim(dy, 2), pt, pl, TB, need_dx, num_threads)


def winograd_backward_pool(dp, argmax, mask, x, U, dx, dU_work, db_work, work,
                           Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t pt, Py_ssize_t pl,
                           Py_ssize_t TB, bint need_dx, int num_threads):
    """winograd_backward (F(2x2, 3x3)) of the (OH, OW) output whose gradient is given by
    dp, that of its 2x2 stride-2 max pool (N, OH // 2, OW // 2, Cout), and the pool's int32
    argmax: the dy transform reads one pool window per tile; mask as for
    direct_backward_weights_pool. Returns how many argmax entries named a unit of their own
    window (all of them for a valid argmax)."""
    return wino_backward("winograd_backward_pool", dp, argmax, mask, x, U, dx, dU_work, db_work,
                         work, OH, OW, pt, pl, TB, need_dx, num_threads)


cdef long long wino_backward(str where, dy, argmax, mask, x, U, dx, dU_work, db_work, work,
                             Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t pt, Py_ssize_t pl,
                             Py_ssize_t TB, bint need_dx, int num_threads) except -1:
    """winograd_backward (argmax None: dy is the (OH, OW) output's gradient) or
    winograd_backward_pool (dy is its 2x2 max pool's, argmax that pool's); the count of
    argmax entries naming a unit of their window (0 without argmax)."""
    cdef int t = dtype_of(x, where, "x")
    cdef char *dyp = data(dy, t, 4, False, where, "dp" if argmax is not None else "dy")
    cdef char *ap = NULL if argmax is None else data(argmax, I32, 4, False, where, "argmax")
    cdef char *mp = NULL if mask is None else data(mask, t, 4, False, where, "mask")
    cdef char *xp = data(x, t, 4, False, where, "x")
    cdef char *up = data(U, t, 3, False, where, "U")
    cdef char *dxp = data(dx, t, 4, True, where, "dx") if need_dx else NULL
    cdef char *dup = data(dU_work, t, 4, True, where, "dU_work")
    cdef char *dbp = data(db_work, t, 2, True, where, "db_work")
    cdef char *kp = data(work, t, 2, True, where, "work")
    cdef cconv_geom g = geometry(x, 3, 3, OH, OW, dim(dy, 3), 1, 1, pt, pl, 1, 1, 1)
    cdef Py_ssize_t nslots = dim(dU_work, 0), nk = wino_slots(dim(U, 0))
    if argmax is None:
        expect(dy, where, "dy", g.N, g.OH, g.OW, g.Cout)
    else:
        nk = 16                          # F(2x2, 3x3) only: a tile is a pool window
        expect(dy, where, "dp", g.N, g.OH // 2, g.OW // 2, g.Cout)
        expect(argmax, where, "argmax", g.N, g.OH // 2, g.OW // 2, g.Cout)
        if mask is not None:
            expect(mask, where, "mask", g.N, g.OH // 2, g.OW // 2, g.Cout)
    expect(U, where, "U", nk, g.C, g.Cout)
    expect(dU_work, where, "dU_work", nslots, nk, g.C, g.Cout)
    expect(db_work, where, "db_work", nslots, g.Cout)
    if need_dx:
        expect(dx, where, "dx", dim(x, 0), dim(x, 1), dim(x, 2), dim(x, 3))
    cdef Py_ssize_t rows = dim(work, 0), stride = dim(work, 1)
    cdef int err
    cdef int m = 2 if nk == 16 else 4
    cdef long long matched = 0
    with nogil:
        if t == F32 and ap == NULL:
            err = _conv.winograd_backward(&g, <float *> dyp, <float *> xp, <float *> up,
                                          <float *> dxp, <float *> dup, <float *> dbp, nslots,
                                          <float *> kp, rows, stride, TB, m, num_threads)
        elif ap == NULL:
            err = _conv.winograd_backward(&g, <double *> dyp, <double *> xp, <double *> up,
                                          <double *> dxp, <double *> dup, <double *> dbp,
                                          nslots, <double *> kp, rows, stride, TB, m,
                                          num_threads)
        elif t == F32:
            err = _conv.winograd_backward_pool(&g, <float *> dyp, <int *> ap, <float *> mp,
                                               <float *> xp,
                                               <float *> up, <float *> dxp, <float *> dup,
                                               <float *> dbp, nslots, &matched, <float *> kp,
                                               rows, stride, TB, num_threads)
        else:
            err = _conv.winograd_backward_pool(&g, <double *> dyp, <int *> ap,
                                               <double *> mp, <double *> xp,
                                               <double *> up, <double *> dxp, <double *> dup,
                                               <double *> dbp, nslots, &matched,
                                               <double *> kp, rows, stride, TB, num_threads)
    check(err, where)
    return matched


# ---------------------------------------------------------------------------------
# Pooling
# ---------------------------------------------------------------------------------
def max_pool2d_forward(x, y, argmax,                   # y, argmax: OUT (N, OH, OW, C)
                       Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw,
                       Py_ssize_t pt, Py_ssize_t pl, int num_threads, bint stream=False):
    """Max over each window, recording the winner's flat index h * W + w in its plane
    (int32 or int64 argmax; see _pool_rows.h). Windows that tile the input go through
    _pool_simd.h for float32 / int32; ``stream`` asks it for non-temporal stores (for
    outputs too large to stay in cache)."""
    cdef str where = "max_pool2d_forward"
    cdef int t = dtype_of(x, where, "x"), it = index_type(argmax, where)
    cdef char *xp = data(x, t, 4, False, where, "x")
    cdef char *yp = data(y, t, 4, True, where, "y")
    cdef char *ap = data(argmax, it, 4, True, where, "argmax")
    cdef cconv_geom g = geometry(x, KH, KW, dim(y, 1), dim(y, 2), dim(y, 3), sh, sw, pt, pl, 1, 1,
                                 1)
    expect(y, where, "y", g.N, g.OH, g.OW, g.Cout)
    expect(argmax, where, "argmax", dim(y, 0), dim(y, 1), dim(y, 2), dim(y, 3))
    cdef int err
    with nogil:
        if t == F32 and it == I32:
            err = _pool.max_pool2d_forward_ex(&g, <float *> xp, <float *> yp, <int *> ap, stream,
                                           num_threads)
        elif t == F32:
            err = _pool.max_pool2d_forward_ex(&g, <float *> xp, <float *> yp, <long long *> ap,
                                           stream, num_threads)
        elif it == I32:
            err = _pool.max_pool2d_forward_ex(&g, <double *> xp, <double *> yp, <int *> ap,
                                           stream, num_threads)
        else:
            err = _pool.max_pool2d_forward_ex(&g, <double *> xp, <double *> yp, <long long *> ap,
                                           stream, num_threads)
    check(err, where)


cdef int pool_backward(str where, dy, argmax, dx, Py_ssize_t KH, Py_ssize_t KW, bint stream,
                       int num_threads) except -2:
    """The tiled max-pool backward with windows KH x KW (KH > 0), or the general one."""
    cdef int t = dtype_of(dx, where, "dx"), it = index_type(argmax, where)
    cdef char *dyp = data(dy, t, 4, False, where, "dy")
    cdef char *ap = data(argmax, it, 4, False, where, "argmax")
    cdef char *dxp = data(dx, t, 4, True, where, "dx")
    cdef cconv_geom g = geometry(dx, 1, 1, dim(dy, 1), dim(dy, 2), dim(dx, 3), 1, 1, 0, 0, 1, 1, 1)
    expect(dy, where, "dy", g.N, g.OH, g.OW, g.C)
    expect(argmax, where, "argmax", dim(dy, 0), dim(dy, 1), dim(dy, 2), dim(dy, 3))
    cdef int err
    with nogil:
        if KH > 0:
            if t == F32 and it == I32:
                err = _pool.max_pool2d_backward_tiled(&g, <float *> dyp, <int *> ap,
                                                      <float *> dxp, KH, KW, stream, num_threads)
            elif t == F32:
                err = _pool.max_pool2d_backward_tiled(&g, <float *> dyp, <long long *> ap,
                                                      <float *> dxp, KH, KW, stream, num_threads)
            elif it == I32:
                err = _pool.max_pool2d_backward_tiled(&g, <double *> dyp, <int *> ap,
                                                      <double *> dxp, KH, KW, stream, num_threads)
            else:
                err = _pool.max_pool2d_backward_tiled(&g, <double *> dyp, <long long *> ap,
                                                      <double *> dxp, KH, KW, stream, num_threads)
        elif t == F32 and it == I32:
            err = _pool.max_pool2d_backward_ex(&g, <float *> dyp, <int *> ap, <float *> dxp, stream,
                                            num_threads)
        elif t == F32:
            err = _pool.max_pool2d_backward_ex(&g, <float *> dyp, <long long *> ap, <float *> dxp,
                                            stream, num_threads)
        elif it == I32:
            err = _pool.max_pool2d_backward_ex(&g, <double *> dyp, <int *> ap, <double *> dxp,
                                            stream, num_threads)
        else:
            err = _pool.max_pool2d_backward_ex(&g, <double *> dyp, <long long *> ap, <double *> dxp,
                                            stream, num_threads)
    check(min(err, 0), where)
    return err


def max_pool2d_backward_tiled(dy, argmax, dx,         # dx: OUT, every element written
                              Py_ssize_t KH, Py_ssize_t KW, int num_threads,
                              bint stream=False):
    """Max-pool backward for windows that tile the input (stride == pool, no padding).

    One pass writes every element of dx once (no zeroing pass). Returns True when every
    argmax entry named a unit of its own window; otherwise dx is incomplete and the
    caller must use :func:`max_pool2d_backward`, which routes any in-range index.
    float32 / int32 go through _pool_simd.h; ``stream`` as in :func:`max_pool2d_forward`.
    """
    if KH < 1 or KW < 1:
        raise ValueError(f"max_pool2d_backward_tiled: window {KH}x{KW}")
    return pool_backward("max_pool2d_backward_tiled", dy, argmax, dx, KH, KW, stream,
                         num_threads) == 1


def max_pool2d_backward(dy, argmax, dx, bint stream, int num_threads):  # dx: OUT
    """Route each gradient to the unit that won the forward pass (see _pool.pxd).

    Raises ValueError when argmax holds an index outside [0, H*W); such entries are
    skipped, never used as an index.
    """
    pool_backward("max_pool2d_backward", dy, argmax, dx, 0, 0, stream, num_threads)


def avg_pool2d_forward(x, y,                          # y: OUT (N, OH, OW, C)
                       Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw,
                       Py_ssize_t pt, Py_ssize_t pl, int num_threads):
    """Mean over each window; padded zeros count in the divisor (always KH*KW)."""
    cdef str where = "avg_pool2d_forward"
    cdef int t = dtype_of(x, where, "x")
    cdef char *xp = data(x, t, 4, False, where, "x")
    cdef char *yp = data(y, t, 4, True, where, "y")
    cdef cconv_geom g = geometry(x, KH, KW, dim(y, 1), dim(y, 2), dim(y, 3), sh, sw, pt, pl, 1, 1,
                                 1)
    expect(y, where, "y", g.N, g.OH, g.OW, g.Cout)
    cdef int err
    with nogil:
        if t == F32:
            err = _pool.avg_pool2d_forward_ex(&g, <float *> xp, <float *> yp, num_threads)
        else:
            err = _pool.avg_pool2d_forward_ex(&g, <double *> xp, <double *> yp, num_threads)
    check(err, where)


def avg_pool2d_backward(dy, dx,                       # dx: OUT, every element written
                        Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw,
                        Py_ssize_t pt, Py_ssize_t pl, int num_threads):
    """Each gradient spread evenly over its window (the adjoint of avg_pool2d_forward)."""
    cdef str where = "avg_pool2d_backward"
    cdef int t = dtype_of(dx, where, "dx")
    cdef char *dyp = data(dy, t, 4, False, where, "dy")
    cdef char *dxp = data(dx, t, 4, True, where, "dx")
    cdef cconv_geom g = geometry(dx, KH, KW, dim(dy, 1), dim(dy, 2), dim(dy, 3), sh, sw, pt, pl,
                                 1, 1, 1)
    expect(dy, where, "dy", g.N, g.OH, g.OW, g.Cout)
    cdef int err
    with nogil:
        if t == F32:
            err = _pool.avg_pool2d_backward_ex(&g, <float *> dyp, <float *> dxp, num_threads)
        else:
            err = _pool.avg_pool2d_backward_ex(&g, <double *> dyp, <double *> dxp, num_threads)
    check(err, where)


# ---------------------------------------------------------------------------------
# Elementwise
# ---------------------------------------------------------------------------------
def relu_forward(x, out, int num_threads):             # out: OUT (may be x)
    """out = max(x, 0) over 1-D arrays (blocks of 64K elements in parallel)."""
    cdef str where = "relu_forward"
    cdef int t = dtype_of(x, where, "x")
    cdef char *xp = data(x, t, 1, False, where, "x")
    cdef char *op = data(out, t, 1, True, where, "out")
    expect(out, where, "out", dim(x, 0))
    cdef Py_ssize_t n = dim(x, 0)
    cdef int err
    with nogil:
        if t == F32:
            err = _activation.relu_forward_ex(<float *> xp, <float *> op, n, num_threads)
        else:
            err = _activation.relu_forward_ex(<double *> xp, <double *> op, n, num_threads)
    check(err, where)


def relu_backward(dy, y, out, int num_threads):       # out: OUT
    """out = dy where y > 0, else 0, over 1-D arrays (blocks of 64K elements in parallel)."""
    cdef str where = "relu_backward"
    cdef int t = dtype_of(dy, where, "dy")
    cdef char *dyp = data(dy, t, 1, False, where, "dy")
    cdef char *yp = data(y, t, 1, False, where, "y")
    cdef char *op = data(out, t, 1, True, where, "out")
    expect(y, where, "y", dim(dy, 0))
    expect(out, where, "out", dim(dy, 0))
    cdef Py_ssize_t n = dim(dy, 0)
    cdef int err
    with nogil:
        if t == F32:
            err = _activation.relu_backward_ex(<float *> dyp, <float *> yp, <float *> op, n,
                                            num_threads)
        else:
            err = _activation.relu_backward_ex(<double *> dyp, <double *> yp, <double *> op, n,
                                            num_threads)
    check(err, where)


cdef extern from "_elementwise.h":
    void cconv_adam_f(float *p, const float *g, float *m, float *v, Py_ssize_t n,
                      int decay_mode, float decay, float wd, float b1, float c1, float b2,
                      float c2, float sbc2, float eps, float step) noexcept nogil
    void cconv_adam_d(double *p, const double *g, double *m, double *v, Py_ssize_t n,
                      int decay_mode, double decay, double wd, double b1, double c1, double b2,
                      double c2, double sbc2, double eps, double step) noexcept nogil

cdef enum:
    ADAM_BLOCK = 32768            # elements per parallel block of adam_update


def adam_update(list params, list grads, list ms, list vs, int decay_mode, double decay,
                double wd, double b1, double b2, double sbc2, double eps, double step,
                int num_threads):
    """One Adam step over every parameter (params, ms, vs: IN/OUT; grads: IN), in blocks of
    32K elements on up to num_threads threads (see cconv_adam_f in _elementwise.h for the
    arithmetic and the constants). Every array C-contiguous, of one float dtype; each
    parameter's four arrays of one size and disjoint."""
    cdef str where = "adam_update"
    cdef Py_ssize_t n = len(params), k, j, nblocks = 0, blk, lo, cnt, size
    if not (len(grads) == len(ms) == len(vs) == n):
        raise ValueError(f"{where}: {n} params, {len(grads)} grads, {len(ms)} ms, {len(vs)} vs")
    if n == 0:
        return
    cdef int t = dtype_of(params[0], where, "params[0]")
    cdef cnp.ndarray a
    for k in range(n):
        size = -1
        for j, (name, arr) in enumerate((("params", params[k]), ("grads", grads[k]),
                                         ("ms", ms[k]), ("vs", vs[k]))):
            if not cnp.PyArray_Check(arr) or cnp.PyArray_TYPE(<cnp.ndarray> arr) != t:
                raise TypeError(f"{where}: {name}[{k}] must be an ndarray of params[0]'s dtype")
            a = <cnp.ndarray> arr
            if not cnp.PyArray_IS_C_CONTIGUOUS(a) or (j != 1 and not cnp.PyArray_ISWRITEABLE(a)):
                raise ValueError(f"{where}: {name}[{k}] must be C-contiguous"
                                 f"{'' if j == 1 else ' and writeable'}")
            if size >= 0 and cnp.PyArray_SIZE(a) != size:
                raise ValueError(f"{where}: the arrays of parameter {k} differ in size")
            size = cnp.PyArray_SIZE(a)
        if (overlap(params[k], grads[k]) or overlap(params[k], ms[k]) or overlap(params[k], vs[k])
                or overlap(ms[k], vs[k]) or overlap(ms[k], grads[k]) or overlap(vs[k], grads[k])):
            raise ValueError(f"{where}: the arrays of parameter {k} overlap")
        nblocks += (size + ADAM_BLOCK - 1) // ADAM_BLOCK
    cdef Py_ssize_t item = 4 if t == F32 else 8
    cdef char **P = <char **> malloc(max(1, 4 * n) * sizeof(char *))
    cdef Py_ssize_t *B = <Py_ssize_t *> malloc(max(1, 3 * nblocks) * sizeof(Py_ssize_t))
    if P == NULL or B == NULL:
        free(P)
        free(B)
        raise MemoryError(f"cconv: {where}: out of memory")
    blk = 0
    for k in range(n):
        P[4 * k] = <char *> cnp.PyArray_DATA(<cnp.ndarray> params[k])
        P[4 * k + 1] = <char *> cnp.PyArray_DATA(<cnp.ndarray> grads[k])
        P[4 * k + 2] = <char *> cnp.PyArray_DATA(<cnp.ndarray> ms[k])
        P[4 * k + 3] = <char *> cnp.PyArray_DATA(<cnp.ndarray> vs[k])
        size = cnp.PyArray_SIZE(<cnp.ndarray> params[k])
        lo = 0
        while lo < size:
            B[3 * blk], B[3 * blk + 1], B[3 * blk + 2] = k, lo * item, min(ADAM_BLOCK, size - lo)
            blk += 1
            lo += ADAM_BLOCK
    cdef int nt = <int> max(1, min(<Py_ssize_t> num_threads, nblocks))
    with nogil:
        if nt == 1:                     # on the calling thread
            for blk in range(nblocks):
                adam_block(t, P, B, blk, decay_mode, decay, wd, b1, b2, sbc2, eps, step)
        else:
            for blk in prange(nblocks, schedule="static", num_threads=nt):
                adam_block(t, P, B, blk, decay_mode, decay, wd, b1, b2, sbc2, eps, step)
    free(P)
    free(B)


cdef inline void adam_block(int t, char **P, Py_ssize_t *B, Py_ssize_t blk, int mode,
                            double decay, double wd, double b1, double b2, double sbc2,
                            double eps, double step) noexcept nogil:
    cdef Py_ssize_t k = B[3 * blk], off = B[3 * blk + 1], cnt = B[3 * blk + 2]
    if t == F32:
        cconv_adam_f(<float *> (P[4 * k] + off), <const float *> (P[4 * k + 1] + off),
                     <float *> (P[4 * k + 2] + off), <float *> (P[4 * k + 3] + off), cnt, mode,
                     <float> decay, <float> wd, <float> b1, <float> (1.0 - b1), <float> b2,
                     <float> (1.0 - b2), <float> sbc2, <float> eps, <float> step)
    else:
        cconv_adam_d(<double *> (P[4 * k] + off), <const double *> (P[4 * k + 1] + off),
                     <double *> (P[4 * k + 2] + off), <double *> (P[4 * k + 3] + off), cnt, mode,
                     decay, wd, b1, 1.0 - b1, b2, 1.0 - b2, sbc2, eps, step)


# ---------------------------------------------------------------------------------
# Fast paths of the forward ops of inference, for cconv.functional. A call on a batch of
# one small image takes a few microseconds in the kernels, and as long again in Python
# (array and argument checks, dispatch, allocation): these functions do that part in C for
# the common case: C-contiguous float arrays, plain arguments whose geometry the general
# path has already validated and remembered (functional._memo), work for one thread, small
# outputs (functional's buffer cache serves the large ones) and no problem with out=. In
# every other case they return None, and functional takes its general path, which checks
# everything and gives the errors their messages.
# ---------------------------------------------------------------------------------
cdef inline bint int_pair(object v):
    return (PyTuple_CheckExact(v) and PyTuple_GET_SIZE(v) == 2
            and PyLong_CheckExact(<object> PyTuple_GET_ITEM(v, 0))
            and PyLong_CheckExact(<object> PyTuple_GET_ITEM(v, 1)))


cdef inline bint plain(object v):
    """An int, None, a str, a pair of ints or a pair of pairs of ints, of exactly those
    types (see plain_args)."""
    if PyLong_CheckExact(v) or v is None or PyUnicode_CheckExact(v) or int_pair(v):
        return True
    return (PyTuple_CheckExact(v) and PyTuple_GET_SIZE(v) == 2
            and int_pair(<object> PyTuple_GET_ITEM(v, 0))
            and int_pair(<object> PyTuple_GET_ITEM(v, 1)))


def plain_args(tuple args):
    """Whether every argument is plain: an int, None, a str, a pair of ints or a pair of
    pairs of ints, of exactly those types. Geometry computed for plain arguments may be remembered and reused for
    equal ones (an equal argument of another type, 2.0 for 2, is not plain)."""
    cdef object v
    for v in args:
        if not plain(v):
            return False
    return True


cdef inline int float_array(object a, int ndim) noexcept:
    """F32 or F64 when `a` is a C-contiguous float ndarray of `ndim` dimensions, else 0."""
    if not cnp.PyArray_CheckExact(a):
        return 0
    cdef cnp.ndarray arr = <cnp.ndarray> a
    cdef int t = cnp.PyArray_TYPE(arr)
    if (t != F32 and t != F64) or cnp.PyArray_NDIM(arr) != ndim or not cnp.PyArray_IS_C_CONTIGUOUS(arr):
        return 0
    return t


cdef inline object geometry_of(dict memo, object make, tuple shapes, tuple args):
    """What functional._memo remembered for make(*shapes, *args), or None."""
    if not plain_args(args):
        return None
    return memo.get((make, shapes, args))


cdef object result(object out, tuple shape, int typenum, Py_ssize_t cache_min, tuple inputs):
    """out when it can receive the result, a new array when out is None and the result is
    small, else None (the general path then allocates from the cache or raises)."""
    cdef cnp.npy_intp dims[4]
    cdef int i
    if out is None:
        for i in range(4):
            dims[i] = shape[i]
        if dims[0] * dims[1] * dims[2] * dims[3] * (4 if typenum in (F32, I32) else 8) >= cache_min:
            return None
        return cnp.PyArray_EMPTY(4, dims, typenum, 0)
    if out_check(out, shape, cnp.PyArray_DescrFromType(typenum), inputs):
        return None
    return out


def max_pool2d_fast(x, tuple args, out, dict memo, make, Py_ssize_t min_work,
                    Py_ssize_t cache_min, Py_ssize_t stream_min):
    """(y, argmax) of functional.max_pool2d(x, *args, out=out), or None (see above)."""
    cdef int t = float_array(x, 4)
    if t == 0 or (out is not None and not (PyTuple_CheckExact(out) and len(out) == 2)):
        return None
    cdef tuple xshape = x.shape
    geo = geometry_of(memo, make, (xshape,), args)
    if geo is None:
        return None
    (KH, KW), (sh, sw), ((pt, pb), (pl, pr)), (OH, OW) = geo
    cdef cconv_geom g
    if cconv_pool_geom(&g, xshape[0], xshape[1], xshape[2], xshape[3], KH, KW, sh, sw, pt, pb,
                       pl, pr):
        return None
    # One thread: less than two threads' worth of work (functional._threads), or one row.
    if g.N * g.OH > 1 and g.N * g.H * g.W * g.C // max(1, min_work) > 1:
        return None
    cdef tuple shape = (g.N, g.OH, g.OW, g.C)
    y = result(None if out is None else out[0], shape, t, cache_min, (x,))
    cdef int it = I32
    if out is not None and cnp.PyArray_Check(out[1]) and cnp.PyArray_TYPE(<cnp.ndarray> out[1]) == I64:
        it = I64
    if g.H * g.W > CCONV_SIZE_MAX:
        it = I64
        if out is not None and not (cnp.PyArray_Check(out[1]) and
                                    cnp.PyArray_TYPE(<cnp.ndarray> out[1]) == I64):
            return None
    argmax = result(None if out is None else out[1], shape, it, cache_min, (x,))
    if y is None or argmax is None:
        return None
    cdef char *xp = <char *> cnp.PyArray_DATA(<cnp.ndarray> x)
    cdef char *yp = <char *> cnp.PyArray_DATA(<cnp.ndarray> y)
    cdef char *ap = <char *> cnp.PyArray_DATA(<cnp.ndarray> argmax)
    cdef bint stream = g.N * g.OH * g.OW * g.C * ((4 if t == F32 else 8) + (4 if it == I32 else 8)) >= stream_min
    cdef int err
    with nogil:
        if t == F32 and it == I32:
            err = _pool.max_pool2d_forward_ex(&g, <float *> xp, <float *> yp, <int *> ap, stream, 1)
        elif t == F32:
            err = _pool.max_pool2d_forward_ex(&g, <float *> xp, <float *> yp, <long long *> ap,
                                              stream, 1)
        elif it == I32:
            err = _pool.max_pool2d_forward_ex(&g, <double *> xp, <double *> yp, <int *> ap,
                                              stream, 1)
        else:
            err = _pool.max_pool2d_forward_ex(&g, <double *> xp, <double *> yp, <long long *> ap,
                                              stream, 1)
    check(err, "max_pool2d_forward")
    return y, argmax


def conv2d_fast(x, w, b, tuple args, out, workspace, type workspace_type, dict memo, make,
                tuple tuning, Py_ssize_t cache_min):
    """y of functional.conv2d(x, w, b, *args, out=out, workspace=workspace), or None (see
    above; the im2col + GEMM route only: the plan's other routes take the general path)."""
    cdef int t = float_array(x, 4)
    if t == 0 or float_array(w, 4) != t or (b is not None and float_array(b, 1) != t):
        return None
    cdef tuple xshape = x.shape, wshape = w.shape
    geo = geometry_of(memo, make, (xshape, wshape), args)
    if geo is None:
        return None
    groups, (KH, KW), (sh, sw), ((pt, pb), (pl, pr)), (dh, dw), _ = geo
    cdef cconv_geom g
    if cconv_conv_geom(&g, xshape[0], xshape[1], xshape[2], xshape[3], KH, KW, wshape[3], sh, sw,
                       pt, pb, pl, pr, dh, dw, groups):
        return None
    if b is not None and dim(b, 0) != g.Cout:
        return None
    cdef _conv.conv_tuning tu
    cdef _conv.conv_plan p
    (tu.tile_bytes, tu.winograd_min_channels, tu.winograd_block_bytes, tu.direct_max_k,
     tu.slots_per_thread, tu.min_work_per_thread, tu.winograd4_min_channels) = tuning
    cdef int itemsize = 4 if t == F32 else 8
    if (g.N == 0 or _conv.make_plan(&g, itemsize, False, False, 1 << 30, &tu, &p)
            or p.route != _conv.ROUTE_GEMM or p.threads != 1):
        return None
    # Scratch: the workspace's block when it is large enough, else (no workspace, small
    # scratch) memory allocated here; otherwise the general path (which grows the workspace).
    cdef Py_ssize_t need = p.scratch * itemsize
    cdef char *kp = NULL
    if workspace is not None:
        if type(workspace) is not workspace_type:
            return None
        block = workspace._bytes
        if not (cnp.PyArray_CheckExact(block) and cnp.PyArray_NBYTES(<cnp.ndarray> block) >= need):
            return None
        kp = <char *> cnp.PyArray_DATA(<cnp.ndarray> block)
    elif need >= cache_min:
        return None
    y = result(out, (g.N, g.OH, g.OW, g.Cout), t, cache_min, (x, w, b))
    if y is None:
        return None
    cdef bint owned = kp == NULL
    if owned:
        kp = <char *> malloc(max(1, need))
        if kp == NULL:
            raise MemoryError("cconv: conv2d_forward: out of memory")
    cdef char *xp = <char *> cnp.PyArray_DATA(<cnp.ndarray> x)
    cdef char *wp = <char *> cnp.PyArray_DATA(<cnp.ndarray> w)
    cdef char *bp = NULL if b is None else <char *> cnp.PyArray_DATA(<cnp.ndarray> b)
    cdef char *yp = <char *> cnp.PyArray_DATA(<cnp.ndarray> y)
    cdef int err
    with nogil:
        if t == F32:
            err = _conv.gemm_forward(&g, <float *> xp, <float *> wp, <float *> bp, <float *> yp,
                                     <float *> kp, 1, p.scratch, p.tile, 1)
        else:
            err = _conv.gemm_forward(&g, <double *> xp, <double *> wp, <double *> bp,
                                     <double *> yp, <double *> kp, 1, p.scratch, p.tile, 1)
    if owned:
        free(kp)
    check(err, "conv2d_forward")
    return y


# ---------------------------------------------------------------------------------
# The C API (cconv/cconv.h): the kernels of the Cython API, one entry per dtype, in a table
# exported as the capsule _C_API, as numpy exports its C API.
# ---------------------------------------------------------------------------------
cdef extern from "cconv/cconv.h":
    int CCONV_API_VERSION_MAJOR, CCONV_API_VERSION_MINOR
    const char *CCONV_CAPSULE_NAME
    ctypedef struct cconv_api:
        unsigned int major, minor
        size_t size
        Py_ssize_t (*conv2d_forward_workspace)(const cconv_geom *, int, int) noexcept nogil
        Py_ssize_t (*conv2d_backward_workspace)(const cconv_geom *, int, int, int) noexcept nogil
        int (*conv2d_forward_f32)(const cconv_geom *, const float *, const float *, const float *,
                                  float *, void *, size_t, int) noexcept nogil
        int (*conv2d_forward_f64)(const cconv_geom *, const double *, const double *,
                                  const double *, double *, void *, size_t, int) noexcept nogil
        int (*conv2d_backward_f32)(const cconv_geom *, const float *, const float *,
                                   const float *, float *, float *, float *, void *, size_t,
                                   int) noexcept nogil
        int (*conv2d_backward_f64)(const cconv_geom *, const double *, const double *,
                                   const double *, double *, double *, double *, void *, size_t,
                                   int) noexcept nogil
        int (*im2col_f32)(const cconv_geom *, const float *, float *, int) noexcept nogil
        int (*im2col_f64)(const cconv_geom *, const double *, double *, int) noexcept nogil
        int (*col2im_f32)(const cconv_geom *, const float *, float *, int) noexcept nogil
        int (*col2im_f64)(const cconv_geom *, const double *, double *, int) noexcept nogil
        int (*max_pool2d_forward_f32_i32)(const cconv_geom *, const float *, float *, int *,
                                          int) noexcept nogil
        int (*max_pool2d_forward_f32_i64)(const cconv_geom *, const float *, float *, long long *,
                                          int) noexcept nogil
        int (*max_pool2d_forward_f64_i32)(const cconv_geom *, const double *, double *, int *,
                                          int) noexcept nogil
        int (*max_pool2d_forward_f64_i64)(const cconv_geom *, const double *, double *,
                                          long long *, int) noexcept nogil
        int (*max_pool2d_backward_f32_i32)(const cconv_geom *, const float *, const int *,
                                           float *, int) noexcept nogil
        int (*max_pool2d_backward_f32_i64)(const cconv_geom *, const float *, const long long *,
                                           float *, int) noexcept nogil
        int (*max_pool2d_backward_f64_i32)(const cconv_geom *, const double *, const int *,
                                           double *, int) noexcept nogil
        int (*max_pool2d_backward_f64_i64)(const cconv_geom *, const double *, const long long *,
                                           double *, int) noexcept nogil
        int (*avg_pool2d_forward_f32)(const cconv_geom *, const float *, float *, int) noexcept nogil
        int (*avg_pool2d_forward_f64)(const cconv_geom *, const double *, double *,
                                      int) noexcept nogil
        int (*avg_pool2d_backward_f32)(const cconv_geom *, const float *, float *,
                                       int) noexcept nogil
        int (*avg_pool2d_backward_f64)(const cconv_geom *, const double *, double *,
                                       int) noexcept nogil
        int (*relu_backward_f32)(const float *, const float *, float *, Py_ssize_t,
                                 int) noexcept nogil
        int (*relu_backward_f64)(const double *, const double *, double *, Py_ssize_t,
                                 int) noexcept nogil

cdef cconv_api _api
_api.major, _api.minor, _api.size = CCONV_API_VERSION_MAJOR, CCONV_API_VERSION_MINOR, sizeof(cconv_api)
_api.conv2d_forward_workspace = _conv.conv2d_forward_workspace
_api.conv2d_backward_workspace = _conv.conv2d_backward_workspace
_api.conv2d_forward_f32 = _conv.conv2d_forward[float]
_api.conv2d_forward_f64 = _conv.conv2d_forward[double]
_api.conv2d_backward_f32 = _conv.conv2d_backward[float]
_api.conv2d_backward_f64 = _conv.conv2d_backward[double]
_api.im2col_f32 = _im2col.im2col[float]
_api.im2col_f64 = _im2col.im2col[double]
_api.col2im_f32 = _im2col.col2im[float]
_api.col2im_f64 = _im2col.col2im[double]
_api.max_pool2d_forward_f32_i32 = _pool.max_pool2d_forward[float, int]
_api.max_pool2d_forward_f32_i64 = _pool.max_pool2d_forward[float, longlong]
_api.max_pool2d_forward_f64_i32 = _pool.max_pool2d_forward[double, int]
_api.max_pool2d_forward_f64_i64 = _pool.max_pool2d_forward[double, longlong]
_api.max_pool2d_backward_f32_i32 = _pool.max_pool2d_backward[float, int]
_api.max_pool2d_backward_f32_i64 = _pool.max_pool2d_backward[float, longlong]
_api.max_pool2d_backward_f64_i32 = _pool.max_pool2d_backward[double, int]
_api.max_pool2d_backward_f64_i64 = _pool.max_pool2d_backward[double, longlong]
_api.avg_pool2d_forward_f32 = _pool.avg_pool2d_forward[float]
_api.avg_pool2d_forward_f64 = _pool.avg_pool2d_forward[double]
_api.avg_pool2d_backward_f32 = _pool.avg_pool2d_backward[float]
_api.avg_pool2d_backward_f64 = _pool.avg_pool2d_backward[double]
_api.relu_backward_f32 = _activation.relu_backward[float]
_api.relu_backward_f64 = _activation.relu_backward[double]

#: The C API's table (cconv/cconv.h's import_cconv() fetches it) and its version.
_C_API = PyCapsule_New(&_api, CCONV_CAPSULE_NAME, NULL)
C_API_VERSION = (CCONV_API_VERSION_MAJOR, CCONV_API_VERSION_MINOR)
