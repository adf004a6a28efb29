# cython: language_level=3
"""The Python face of cconv's compiled kernels.

The kernels themselves live in one module per concept, each with its declarations in a
.pxd: ``_im2col``, ``_conv``, ``_pool``, ``_activation`` (and ``_blas``, ``_cpu`` under them).
They check their geometry and buffers and return error codes (``cconv/geometry.h``);
the functions here hand them the arrays that ``cconv.functional`` prepared, check what the
kernels cannot see (each array's extents against the geometry), and turn an error code
into a ``ValueError`` or ``MemoryError`` that names the kernel.

Layout: activations NHWC, im2col rows ordered (n, oh, ow), columns (kh, kw, c);
convolution weights HWIO, which seen as a matrix of shape (KH*KW*C_in/groups, C_out)
are exactly the right operand of the im2col GEMM.

Also here: the cache of large output buffers (``Block``) and what the build supports.
"""
from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.stdint cimport uintptr_t
from libc.stdlib cimport free, malloc

from cconv.geometry cimport (cconv_geom, cconv_output_size, CCONV_ERR_VALUE, CCONV_ERR_GEOMETRY,
                             CCONV_ERR_CHANNELS, CCONV_ERR_TOO_LARGE, CCONV_ERR_WORKSPACE,
                             CCONV_ERR_ARGMAX, CCONV_ERR_NOMEM, CCONV_ERR_BLAS)
from cconv._platform cimport CCONV_OPENMP, CCONV_HAVE_FTZ, cconv_omp_max_threads
from cconv cimport _blas, _cpu, _im2col, _conv, _pool, _activation
from cconv._pool cimport index_t
from cconv._blas import load_blas


# ---------------------------------------------------------------------------------
# Errors and geometry
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


cdef int check(int err, str where) except -1:
    """Raise for a kernel's error code (MemoryError, else ValueError naming `where`)."""
    if err == 0:
        return 0
    if err == CCONV_ERR_NOMEM:
        raise MemoryError(f"cconv: {where}: out of memory")
    raise ValueError(f"{where}: {_ERRORS.get(err, f'error {err}')}")


cdef int expect(str where, str name, tuple got, tuple want) except -1:
    """An array's extents must be those the geometry implies."""
    if got != want:
        raise ValueError(f"{where}: {name} has shape {got}, expected {want}")
    return 0


cdef tuple dims(const Py_ssize_t *shape, int n):
    return tuple([shape[i] for i in range(n)])


cdef cconv_geom geometry(Py_ssize_t N, Py_ssize_t H, Py_ssize_t W, Py_ssize_t C,
                         Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t OH, Py_ssize_t OW,
                         Py_ssize_t Cout, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt,
                         Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t groups):
    """The geometry of an input and an output of the given sizes: the bottom/right padding
    is the least that makes OH x OW outputs (the kernels then check the rest)."""
    cdef cconv_geom g
    g.N, g.H, g.W, g.C = N, H, W, C
    g.KH, g.KW, g.OH, g.OW, g.Cout = KH, KW, OH, OW, Cout
    g.sh, g.sw, g.pt, g.pl, g.dh, g.dw, g.groups = sh, sw, pt, pl, dh, dw, groups
    g.pb = max(0, (OH - 1) * sh + dh * (KH - 1) + 1 - H - pt)
    g.pr = max(0, (OW - 1) * sw + dw * (KW - 1) + 1 - W - pl)
    return g


# ---------------------------------------------------------------------------------
# BLAS
# ---------------------------------------------------------------------------------
def matmul(bint trans_a, bint trans_b, const floating[:, ::1] a, const floating[:, ::1] b,
           double beta, floating[:, ::1] c, int num_threads):  # c: IN/OUT
    """c = op(a) @ op(b) + beta * c, the rows of c cut into one block per thread.

    Each thread makes one single-threaded BLAS call on its block, so dense layers run on
    cconv's own OpenMP threads: no BLAS thread pool is left spinning next to the
    convolution kernels. The caller ensures the inner dimension is non-zero.
    """
    cdef int m = c.shape[0], n = c.shape[1]
    cdef int k = a.shape[0] if trans_a else a.shape[1]
    cdef int lda = a.shape[1], ldb = b.shape[1]
    cdef const floating *ap = &a[0, 0]
    cdef const floating *bp = &b[0, 0]
    cdef floating *cp = &c[0, 0]
    cdef Py_ssize_t ch, r0, r1
    check(_blas.ensure_blas(), "matmul")
    with nogil, parallel(num_threads=num_threads):
        for ch in prange(num_threads, schedule="static"):
            r0 = ch * m // num_threads
            r1 = (ch + 1) * m // num_threads
            if r1 > r0:
                _blas.gemm(trans_a, trans_b, <int> (r1 - r0), n, k, <floating> 1,
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
    convolution): 2 = AVX-512F, 1 = AVX2, 0 = generic loops and the GEMM routes. ``cap`` >= 0
    lowers (or restores) the level used, never above what the CPU supports (the tests run
    every path this way)."""
    return _cpu.simd_level(cap)


# ---------------------------------------------------------------------------------
# im2col / col2im
# ---------------------------------------------------------------------------------
def im2col(const floating[:, :, :, ::1] x, floating[:, ::1] cols,  # cols: OUT
           Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t OH, Py_ssize_t OW,
           Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
           Py_ssize_t dh, Py_ssize_t dw, int num_threads):
    cdef cconv_geom g = geometry(x.shape[0], x.shape[1], x.shape[2], x.shape[3], KH, KW, OH, OW,
                                 1, sh, sw, pt, pl, dh, dw, 1)
    expect("im2col", "cols", (cols.shape[0], cols.shape[1]), (g.N * OH * OW, KH * KW * g.C))
    cdef int err
    with nogil:
        err = _im2col.im2col(&g, &x[0, 0, 0, 0] if g.N else NULL,
                             &cols[0, 0] if g.N else NULL, num_threads)
    check(err, "im2col")


def col2im(const floating[:, ::1] cols, floating[:, :, :, ::1] x,  # x: OUT
           Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t OH, Py_ssize_t OW,
           Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
           Py_ssize_t dh, Py_ssize_t dw, int num_threads):
    cdef cconv_geom g = geometry(x.shape[0], x.shape[1], x.shape[2], x.shape[3], KH, KW, OH, OW,
                                 1, sh, sw, pt, pl, dh, dw, 1)
    expect("col2im", "cols", (cols.shape[0], cols.shape[1]), (g.N * OH * OW, KH * KW * g.C))
    cdef int err
    with nogil:
        err = _im2col.col2im(&g, &cols[0, 0] if g.N else NULL,
                             &x[0, 0, 0, 0] if g.N else NULL, num_threads)
    check(err, "col2im")


# ---------------------------------------------------------------------------------
# Convolution: the plan, and the routes it picks
# ---------------------------------------------------------------------------------
def conv_plan(tuple shape, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t Cout,
              Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pb, Py_ssize_t pl,
              Py_ssize_t pr, Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t groups, int itemsize,
              bint backward, bint need_dx, int budget, tuning):
    """The route and sizes of a convolution on input ``shape`` (N, H, W, C):
    (route, threads, filter_threads, tile, slots, scratch, K, Kpad), route 0 = im2col +
    GEMM, 1 = Winograd, 2 = direct. ``tuning``: (tile_bytes, winograd_min_channels,
    winograd_block_bytes, direct_max_k, slots_per_thread), a negative threshold = never."""
    cdef cconv_geom g
    cdef _conv.conv_tuning t
    cdef _conv.conv_plan p
    g.N, g.H, g.W, g.C = shape
    g.KH, g.KW, g.Cout, g.sh, g.sw, g.pt, g.pb, g.pl, g.pr = KH, KW, Cout, sh, sw, pt, pb, pl, pr
    g.dh, g.dw, g.groups = dh, dw, groups
    g.OH = cconv_output_size(g.H, KH, sh, pt, pb, dh)
    g.OW = cconv_output_size(g.W, KW, sw, pl, pr, dw)
    (t.tile_bytes, t.winograd_min_channels, t.winograd_block_bytes, t.direct_max_k,
     t.slots_per_thread) = tuning
    check(_conv.make_plan(&g, itemsize, backward, need_dx, budget, &t, &p), "conv_plan")
    return p.route, p.threads, p.filter_threads, p.tile, p.slots, p.scratch, p.K, p.Kpad


def conv2d_forward(const floating[:, :, :, ::1] x,
                   const floating[:, ::1] wmat,         # (KH*KW*Cg, Cout)
                   const floating[::1] bias,            # (Cout,) or None
                   floating[:, :, :, ::1] y,            # OUT (N, OH, OW, Cout)
                   floating[:, ::1] work,               # scratch (nthreads, T*Kg)
                   Py_ssize_t KH, Py_ssize_t KW,
                   Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                   Py_ssize_t dh, Py_ssize_t dw, int groups, Py_ssize_t tile_rows,
                   int num_threads):
    """y = conv(x, w) + b by im2col + GEMM, tiles of `tile_rows` output pixels in parallel."""
    cdef cconv_geom g = geometry(x.shape[0], x.shape[1], x.shape[2], x.shape[3], KH, KW,
                                 y.shape[1], y.shape[2], y.shape[3], sh, sw, pt, pl, dh, dw,
                                 groups)
    expect("conv2d_forward", "y", (y.shape[0],), (g.N,))
    expect("conv2d_forward", "wmat", (wmat.shape[0], wmat.shape[1]),
           (KH * KW * (g.C // max(1, groups)), g.Cout))
    if bias is not None:
        expect("conv2d_forward", "bias", (bias.shape[0],), (g.Cout,))
    cdef const floating *bp = &bias[0] if bias is not None else NULL
    cdef int err
    with nogil:
        err = _conv.gemm_forward(&g, &x[0, 0, 0, 0] if g.N else NULL, &wmat[0, 0], bp,
                                 &y[0, 0, 0, 0] if g.N else NULL, &work[0, 0], work.shape[0],
                                 work.shape[1], tile_rows, num_threads)
    check(err, "conv2d_forward")


def conv2d_backward(const floating[:, :, :, ::1] dy,   # (N, OH, OW, Cout)
                    const floating[:, :, :, ::1] x,    # (N, H, W, C)
                    const floating[:, ::1] wmat,       # (Kg, Cout)
                    floating[:, :, :, ::1] dx,         # OUT, or None
                    floating[:, :, ::1] dw_work,       # OUT per-thread dW (nthreads, Kg, Cout)
                    floating[:, ::1] db_work,          # OUT per-thread db (nthreads, Cout)
                    floating[:, ::1] work,             # scratch (nthreads, T*Kg)
                    Py_ssize_t KH, Py_ssize_t KW,
                    Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                    Py_ssize_t dh, Py_ssize_t dw, int groups, Py_ssize_t tile_rows,
                    int num_threads):
    """Gradients of a convolution by im2col + GEMM; the caller sums dw_work and db_work
    over the threads, in order (see _conv.gemm_backward)."""
    cdef cconv_geom g = geometry(x.shape[0], x.shape[1], x.shape[2], x.shape[3], KH, KW,
                                 dy.shape[1], dy.shape[2], dy.shape[3], sh, sw, pt, pl, dh, dw,
                                 groups)
    cdef Py_ssize_t Kg = KH * KW * (g.C // max(1, groups))
    expect("conv2d_backward", "dy", (dy.shape[0],), (g.N,))
    expect("conv2d_backward", "wmat", (wmat.shape[0], wmat.shape[1]), (Kg, g.Cout))
    expect("conv2d_backward", "dw_work", dims(dw_work.shape, 3),
           (max(num_threads, 1), Kg, g.Cout))
    expect("conv2d_backward", "db_work", dims(db_work.shape, 2), (max(num_threads, 1), g.Cout))
    if dx is not None:
        expect("conv2d_backward", "dx", dims(dx.shape, 4), (g.N, g.H, g.W, g.C))
    cdef int err
    with nogil:
        err = _conv.gemm_backward(&g, &dy[0, 0, 0, 0] if g.N else NULL,
                                  &x[0, 0, 0, 0] if g.N else NULL, &wmat[0, 0],
                                  &dx[0, 0, 0, 0] if dx is not None and g.N else NULL,
                                  &dw_work[0, 0, 0], &db_work[0, 0], &work[0, 0],
                                  work.shape[0], work.shape[1], tile_rows, num_threads)
    check(err, "conv2d_backward")


def direct_forward(const float[:, :, :, ::1] x,
                   const float[:, ::1] w,               # (KH*KW*C, Cout), rows in (kh, kw, c) order
                   const float[::1] bias,               # (Cout,) or None
                   float[:, :, :, ::1] y,               # OUT (N, OH, OW, Cout), Cout % 16 == 0
                   Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw,
                   Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw, int num_threads):
    """y = conv(x, w) + b computed directly from x (no im2col buffer), row by row, on an
    AVX-512 CPU (see _conv_direct.h)."""
    cdef cconv_geom g = geometry(x.shape[0], x.shape[1], x.shape[2], x.shape[3], KH, KW,
                                 y.shape[1], y.shape[2], y.shape[3], sh, sw, pt, pl, dh, dw, 1)
    expect("direct_forward", "y", (y.shape[0],), (g.N,))
    expect("direct_forward", "w", (w.shape[0], w.shape[1]), (KH * KW * g.C, g.Cout))
    if bias is not None:
        expect("direct_forward", "bias", (bias.shape[0],), (g.Cout,))
    cdef const float *bp = &bias[0] if bias is not None else NULL
    cdef int err
    with nogil:
        err = _conv.direct_forward(&g, &x[0, 0, 0, 0] if g.N else NULL, &w[0, 0], bp,
                                   &y[0, 0, 0, 0] if g.N else NULL, NULL, num_threads)
    check(err, "direct_forward")


def direct_backward_weights(const float[:, :, :, ::1] dy,   # (N, OH, OW, Cout)
                            const float[:, :, :, ::1] x,    # (N, H, W, C)
                            float[:, :, ::1] dw_work,       # OUT per slot (nslots, Kpad, Cout)
                            float[:, ::1] db_work,          # OUT per slot (nslots, Cout)
                            Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw,
                            Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
                            int num_threads):
    """dW and db of direct_forward (rows K..Kpad-1 of dw_work are scratch); the caller sums
    the accumulators of the nslots = dw_work.shape[0] runs of rows: the result depends on
    nslots only, not on the threads' timing."""
    cdef cconv_geom g = geometry(x.shape[0], x.shape[1], x.shape[2], x.shape[3], KH, KW,
                                 dy.shape[1], dy.shape[2], dy.shape[3], sh, sw, pt, pl, dh, dw, 1)
    cdef Py_ssize_t nslots = dw_work.shape[0]
    expect("direct_backward_weights", "dy", (dy.shape[0],), (g.N,))
    expect("direct_backward_weights", "dw_work", dims(dw_work.shape, 3),
           (nslots, (KH * KW * g.C + 7) // 8 * 8, g.Cout))
    expect("direct_backward_weights", "db_work", dims(db_work.shape, 2), (nslots, g.Cout))
    cdef int err
    with nogil:
        err = _conv.direct_backward_weights(&g, &dy[0, 0, 0, 0] if g.N else NULL,
                                            &x[0, 0, 0, 0] if g.N else NULL,
                                            &dw_work[0, 0, 0] if nslots else NULL,
                                            &db_work[0, 0] if nslots else NULL,
                                            nslots, NULL, num_threads)
    check(err, "direct_backward_weights")


def winograd_filter(const floating[:, :, :, ::1] w,   # (3, 3, C, Cout)
                    floating[:, :, ::1] U,            # OUT (16, C, Cout)
                    int num_threads):
    """U = G w G^T for every (input, output) channel pair (see _winograd.h)."""
    expect("winograd_filter", "w", dims(w.shape, 2), (3, 3))
    expect("winograd_filter", "U", dims(U.shape, 3), (16, w.shape[2], w.shape[3]))
    cdef int err
    cdef bint some = w.shape[2] * w.shape[3] > 0
    with nogil:
        err = _conv.winograd_filter(&w[0, 0, 0, 0] if some else NULL,
                                    &U[0, 0, 0] if some else NULL,
                                    w.shape[2], w.shape[3], num_threads)
    check(err, "winograd_filter")


def winograd_filter_grad(const floating[:, :, :, ::1] dU_work,   # (slots, 16, C, Cout)
                         floating[:, :, :, ::1] dw,              # OUT (3, 3, C, Cout)
                         int num_threads):
    """dw = G^T (dU_work summed over its slots, in slot order) G: the adjoint of
    winograd_filter, with the per-slot accumulators of winograd_backward summed on the way."""
    expect("winograd_filter_grad", "dw", dims(dw.shape, 2), (3, 3))
    expect("winograd_filter_grad", "dU_work", dims(dU_work.shape + 1, 3),
           (16, dw.shape[2], dw.shape[3]))
    cdef int err
    cdef bint some = dU_work.shape[0] * dw.shape[2] * dw.shape[3] > 0
    with nogil:
        err = _conv.winograd_filter_grad(&dU_work[0, 0, 0, 0] if some else NULL,
                                         dU_work.shape[0], &dw[0, 0, 0, 0] if some else NULL,
                                         dw.shape[2], dw.shape[3], num_threads)
    check(err, "winograd_filter_grad")


def winograd_forward(const floating[:, :, :, ::1] x,
                     const floating[:, :, ::1] U,         # (16, C, Cout): G w G^T
                     const floating[::1] bias,            # (Cout,) or None
                     floating[:, :, :, ::1] y,            # OUT (N, OH, OW, Cout)
                     floating[:, ::1] work,               # scratch (nthreads, per-thread block)
                     Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t TB, int num_threads):
    """y = conv3x3(x, w) + b, stride 1, by Winograd F(2x2, 3x3) in blocks of TB tiles."""
    cdef cconv_geom g = geometry(x.shape[0], x.shape[1], x.shape[2], x.shape[3], 3, 3,
                                 y.shape[1], y.shape[2], y.shape[3], 1, 1, pt, pl, 1, 1, 1)
    expect("winograd_forward", "y", (y.shape[0],), (g.N,))
    expect("winograd_forward", "U", dims(U.shape, 3), (16, g.C, g.Cout))
    if bias is not None:
        expect("winograd_forward", "bias", (bias.shape[0],), (g.Cout,))
    cdef const floating *bp = &bias[0] if bias is not None else NULL
    cdef int err
    with nogil:
        err = _conv.winograd_forward(&g, &x[0, 0, 0, 0] if g.N else NULL, &U[0, 0, 0], bp,
                                     &y[0, 0, 0, 0] if g.N else NULL, &work[0, 0],
                                     work.shape[0], work.shape[1], TB, num_threads)
    check(err, "winograd_forward")


def winograd_backward(const floating[:, :, :, ::1] dy,   # (N, OH, OW, Cout)
                      const floating[:, :, :, ::1] x,    # (N, H, W, C)
                      const floating[:, :, ::1] U,       # (16, C, Cout): G w G^T
                      floating[:, :, :, ::1] dx,         # OUT; ignored if not need_dx
                      floating[:, :, :, ::1] dU_work,    # OUT per-slot dU (nslots, 16, C, Cout)
                      floating[:, ::1] db_work,          # OUT per-slot db (nslots, Cout)
                      floating[:, ::1] work,             # scratch (nthreads, per-thread block)
                      Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t TB, bint need_dx,
                      int num_threads):
    """Gradients of winograd_forward; the caller turns dU_work into dW with
    winograd_filter_grad (which sums the slots) and sums db_work over the slots. The
    kernel zeroes dx and the slots itself (see _conv.winograd_backward)."""
    cdef cconv_geom g = geometry(x.shape[0], x.shape[1], x.shape[2], x.shape[3], 3, 3,
                                 dy.shape[1], dy.shape[2], dy.shape[3], 1, 1, pt, pl, 1, 1, 1)
    cdef Py_ssize_t nslots = dU_work.shape[0]
    expect("winograd_backward", "dy", (dy.shape[0],), (g.N,))
    expect("winograd_backward", "U", dims(U.shape, 3), (16, g.C, g.Cout))
    expect("winograd_backward", "dU_work", dims(dU_work.shape + 1, 3), (16, g.C, g.Cout))
    expect("winograd_backward", "db_work", dims(db_work.shape, 2), (nslots, g.Cout))
    if need_dx:
        expect("winograd_backward", "dx", dims(dx.shape, 4), (g.N, g.H, g.W, g.C))
    cdef int err
    with nogil:
        err = _conv.winograd_backward(&g, &dy[0, 0, 0, 0] if g.N else NULL,
                                      &x[0, 0, 0, 0] if g.N else NULL, &U[0, 0, 0],
                                      &dx[0, 0, 0, 0] if need_dx and g.N else NULL,
                                      &dU_work[0, 0, 0, 0] if nslots else NULL,
                                      &db_work[0, 0] if nslots else NULL, nslots,
                                      &work[0, 0], work.shape[0], work.shape[1], TB,
                                      num_threads)
    check(err, "winograd_backward")


# ---------------------------------------------------------------------------------
# Pooling
# ---------------------------------------------------------------------------------
def max_pool2d_forward(const floating[:, :, :, ::1] x,
                       floating[:, :, :, ::1] y,            # OUT (N, OH, OW, C)
                       index_t[:, :, :, ::1] argmax,        # OUT, flat h*W + w of the winner
                       Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw,
                       Py_ssize_t pt, Py_ssize_t pl, int num_threads, bint stream=False):
    """Max over each window, recording the winner (see _pool_rows.h). Windows that tile the
    input go through _pool_simd.h for float32 / int32; ``stream`` asks it for non-temporal
    stores (for outputs too large to stay in cache)."""
    cdef cconv_geom g = geometry(x.shape[0], x.shape[1], x.shape[2], x.shape[3], KH, KW,
                                 y.shape[1], y.shape[2], y.shape[3], sh, sw, pt, pl, 1, 1, 1)
    expect("max_pool2d_forward", "y", (y.shape[0],), (g.N,))
    expect("max_pool2d_forward", "argmax", dims(argmax.shape, 4), dims(y.shape, 4))
    cdef int err
    with nogil:
        err = _pool.max_pool2d_forward(&g, &x[0, 0, 0, 0] if g.N else NULL,
                                       &y[0, 0, 0, 0] if g.N else NULL,
                                       &argmax[0, 0, 0, 0] if g.N else NULL, stream, num_threads)
    check(err, "max_pool2d_forward")


cdef cconv_geom sizes(Py_ssize_t N, Py_ssize_t H, Py_ssize_t W, Py_ssize_t C, Py_ssize_t OH,
                      Py_ssize_t OW):
    """A geometry with only the sizes (what the max-pool backward kernels read)."""
    cdef cconv_geom g = geometry(N, H, W, C, 1, 1, OH, OW, C, 1, 1, 0, 0, 1, 1, 1)
    return g


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
    cdef cconv_geom g = sizes(dx.shape[0], dx.shape[1], dx.shape[2], dx.shape[3],
                              dy.shape[1], dy.shape[2])
    expect("max_pool2d_backward_tiled", "dy", (dy.shape[0], dy.shape[3]), (g.N, g.C))
    expect("max_pool2d_backward_tiled", "argmax", dims(argmax.shape, 4), dims(dy.shape, 4))
    cdef int err
    cdef bint some_dy = g.N * g.OH * g.OW > 0, some_dx = g.N > 0
    with nogil:
        err = _pool.max_pool2d_backward_tiled(
            &g, &dy[0, 0, 0, 0] if some_dy else NULL, &argmax[0, 0, 0, 0] if some_dy else NULL,
            &dx[0, 0, 0, 0] if some_dx else NULL, KH, KW, stream, num_threads)
    check(err if err < 0 else 0, "max_pool2d_backward_tiled")
    return err == 1


def max_pool2d_backward(const floating[:, :, :, ::1] dy,
                        const index_t[:, :, :, ::1] argmax,
                        floating[:, :, :, ::1] dx,           # OUT, every element written
                        bint stream, int num_threads):
    """Route each gradient to the unit that won the forward pass (see _pool.pxd).

    Raises ValueError when argmax holds an index outside [0, H*W); such entries are
    skipped, never used as an index.
    """
    cdef cconv_geom g = sizes(dx.shape[0], dx.shape[1], dx.shape[2], dx.shape[3],
                              dy.shape[1], dy.shape[2])
    expect("max_pool2d_backward", "dy", (dy.shape[0], dy.shape[3]), (g.N, g.C))
    expect("max_pool2d_backward", "argmax", dims(argmax.shape, 4), dims(dy.shape, 4))
    cdef int err
    cdef bint some_dy = g.N * g.OH * g.OW > 0, some_dx = g.N > 0
    with nogil:
        err = _pool.max_pool2d_backward(
            &g, &dy[0, 0, 0, 0] if some_dy else NULL, &argmax[0, 0, 0, 0] if some_dy else NULL,
            &dx[0, 0, 0, 0] if some_dx else NULL, stream, num_threads)
    check(err, "max_pool2d_backward")


def avg_pool2d_forward(const floating[:, :, :, ::1] x,
                       floating[:, :, :, ::1] y,            # OUT
                       Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw,
                       Py_ssize_t pt, Py_ssize_t pl, int num_threads):
    """Mean over each window; padded zeros count in the divisor (always KH*KW)."""
    cdef cconv_geom g = geometry(x.shape[0], x.shape[1], x.shape[2], x.shape[3], KH, KW,
                                 y.shape[1], y.shape[2], y.shape[3], sh, sw, pt, pl, 1, 1, 1)
    expect("avg_pool2d_forward", "y", (y.shape[0],), (g.N,))
    cdef int err
    with nogil:
        err = _pool.avg_pool2d_forward(&g, &x[0, 0, 0, 0] if g.N else NULL,
                                       &y[0, 0, 0, 0] if g.N else NULL, num_threads)
    check(err, "avg_pool2d_forward")


def avg_pool2d_backward(const floating[:, :, :, ::1] dy,
                        floating[:, :, :, ::1] dx,           # OUT, every element written
                        Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw,
                        Py_ssize_t pt, Py_ssize_t pl, int num_threads):
    """Each gradient spread evenly over its window (the adjoint of avg_pool2d_forward)."""
    cdef cconv_geom g = geometry(dx.shape[0], dx.shape[1], dx.shape[2], dx.shape[3], KH, KW,
                                 dy.shape[1], dy.shape[2], dy.shape[3], sh, sw, pt, pl, 1, 1, 1)
    expect("avg_pool2d_backward", "dy", (dy.shape[0],), (g.N,))
    cdef int err
    with nogil:
        err = _pool.avg_pool2d_backward(&g, &dy[0, 0, 0, 0] if g.N else NULL,
                                        &dx[0, 0, 0, 0] if g.N else NULL, num_threads)
    check(err, "avg_pool2d_backward")


# ---------------------------------------------------------------------------------
# Elementwise
# ---------------------------------------------------------------------------------
def relu_backward(const floating[::1] dy, const floating[::1] y,
                  floating[::1] out,                   # OUT
                  int num_threads):
    """out = dy where y > 0, else 0 (blocks of 64K elements in parallel)."""
    cdef Py_ssize_t n = dy.shape[0]
    expect("relu_backward", "y", (y.shape[0],), (n,))
    expect("relu_backward", "out", (out.shape[0],), (n,))
    cdef int err
    with nogil:
        err = _activation.relu_backward(&dy[0] if n else NULL, &y[0] if n else NULL,
                                        &out[0] if n else NULL, n, num_threads)
    check(err, "relu_backward")
