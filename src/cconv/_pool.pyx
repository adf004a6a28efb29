# cython: language_level=3
"""Max and average pooling over NHWC images (see _pool.pxd and the public pool.pxd).

Every kernel runs with flush-to-zero on in each of its threads and a static schedule over
output rows or images, so no two threads write the same element and the results do not
depend on the thread count.
"""
from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.string cimport memset

from cconv.geometry cimport (cconv_geom, cconv_pool_geom_check, cconv_sizes_check,
                             CCONV_ERR_VALUE, CCONV_ERR_ARGMAX, CCONV_ERR_TOO_LARGE,
                             CCONV_SIZE_MAX)
from cconv._platform cimport (cconv_ftz_on, cconv_ftz_restore, cconv_threads,
                              CCONV_MIN_WORK_PER_THREAD)
from cconv._cpu cimport simd_level
from cconv._probe cimport (probe, P_MAXPOOL_FWD, P_MAXPOOL_BWD_TILED, P_MAXPOOL_BWD,
                           P_AVGPOOL_FWD, P_AVGPOOL_BWD)

cdef extern from "_pool_rows.h":
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

cdef extern from "_pool_simd.h":
    int cconv_pool_simd_path(int level, Py_ssize_t C) noexcept nogil
    int cconv_pool_fwd_simd(int level, const float *x, float *y, int *a, Py_ssize_t n,
                            Py_ssize_t oh, Py_ssize_t H, Py_ssize_t W, Py_ssize_t C,
                            Py_ssize_t OW, Py_ssize_t KH, Py_ssize_t KW, int stream) noexcept nogil
    long long cconv_pool_bwd_simd(int level, float *dx, const float *dy, const int *a,
                                  Py_ssize_t n, Py_ssize_t oh, Py_ssize_t OH, Py_ssize_t OW,
                                  Py_ssize_t H, Py_ssize_t W, Py_ssize_t C, Py_ssize_t KH,
                                  Py_ssize_t KW, int stream) noexcept nogil


cdef extern from "_pool_avg.h":
    int cconv_avgpool_row_simd(int level, int bwd, const float *src, float *dst, Py_ssize_t n,
                               Py_ssize_t H, Py_ssize_t W, Py_ssize_t C, Py_ssize_t OW,
                               Py_ssize_t h0, Py_ssize_t h1, Py_ssize_t KW, Py_ssize_t sw,
                               Py_ssize_t pl, float inv) noexcept nogil


cdef inline Py_ssize_t clip_lo(Py_ssize_t start) noexcept nogil:
    """First in-bounds index of a window starting at `start` (0 if it starts in the padding)."""
    return start if start > 0 else 0


cdef inline Py_ssize_t clip_hi(Py_ssize_t start, Py_ssize_t size, Py_ssize_t limit) noexcept nogil:
    """One past the last in-bounds index of a window [start, start + size) on [0, limit)."""
    return start + size if start + size < limit else limit


cdef inline bint streams(int stream, Py_ssize_t nbytes) noexcept nogil:
    return stream > 0 or (stream < 0 and nbytes >= STREAM_MIN_BYTES)


# Each kernel runs on the calling thread when it is given one thread (an OpenMP region of
# one thread costs about 0.65 us here, as much as pooling a small image), else in a parallel
# region over rows or images; the work of a row or image is the same function either way.
cdef void maxpool_rows(const cconv_geom *g, const floating *x, floating *y, index_t *argmax,
                       int level, bint stream, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    """Forward of output rows r0..r1 (flat (n, oh)); `level` > 0 lets tiled float32/int32
    windows go through _pool_simd.h."""
    cdef Py_ssize_t H = g.H, W = g.W, C = g.C, OH = g.OH, OW = g.OW
    cdef Py_ssize_t KH = g.KH, KW = g.KW, sh = g.sh, sw = g.sw, pt = g.pt, pl = g.pl
    cdef Py_ssize_t row, n, oh, h0, h1
    if floating is float and index_t is int:
        probe(P_MAXPOOL_FWD + cconv_pool_simd_path(level, C))
    else:
        probe(P_MAXPOOL_FWD)
    for row in range(r0, r1):
        n = row // OH
        oh = row - n * OH
        h0 = clip_lo(oh * sh - pt)
        h1 = clip_hi(oh * sh - pt, KH, H)
        if floating is float and index_t is int:
            if not cconv_pool_fwd_simd(level, x, y + row * OW * C, argmax + row * OW * C,
                                       n, oh, H, W, C, OW, KH, KW, stream):
                cconv_maxpool_row_fi(x, y + row * OW * C, argmax + row * OW * C, n, H, W, C,
                                     OW, h0, h1, KW, sw, pl)
        elif floating is float:
            cconv_maxpool_row_fl(x, y + row * OW * C, argmax + row * OW * C, n, H, W, C, OW,
                                 h0, h1, KW, sw, pl)
        elif index_t is int:
            cconv_maxpool_row_di(x, y + row * OW * C, argmax + row * OW * C, n, H, W, C, OW,
                                 h0, h1, KW, sw, pl)
        else:
            cconv_maxpool_row_dl(x, y + row * OW * C, argmax + row * OW * C, n, H, W, C, OW,
                                 h0, h1, KW, sw, pl)


cdef int max_pool2d_forward_ex(const cconv_geom *g, const floating *x, floating *y,
                               index_t *argmax, int stream, int num_threads) noexcept nogil:
    cdef int err = cconv_pool_geom_check(g)
    if err:
        return err
    if num_threads < 1 or (g.N and (x == NULL or y == NULL or argmax == NULL)):
        return CCONV_ERR_VALUE
    if index_t is int and g.H * g.W > CCONV_SIZE_MAX:
        return CCONV_ERR_TOO_LARGE          # a plane's indices do not fit in int32
    cdef Py_ssize_t rows = g.N * g.OH, row
    if rows == 0:
        return 0
    cdef bint stream_ = streams(stream, rows * g.OW * g.C * (sizeof(floating) + sizeof(index_t)))
    # Windows that tile the input may go through _pool_simd.h.
    cdef bint tiled = (g.sh == g.KH and g.sw == g.KW and g.pt == 0 and g.pl == 0
                       and g.OH * g.KH <= g.H and g.OW * g.KW <= g.W)
    cdef int level = simd_level(-1) if tiled else 0
    cdef unsigned long old
    if num_threads == 1:
        old = cconv_ftz_on()
        maxpool_rows(g, x, y, argmax, level, stream_, 0, rows)
        cconv_ftz_restore(old)
        return 0
    with parallel(num_threads=num_threads):
        old = cconv_ftz_on()
        for row in prange(rows, schedule="static"):
            maxpool_rows(g, x, y, argmax, level, stream_, row, row + 1)
        cconv_ftz_restore(old)
    return 0


cdef long long tiled_image(const cconv_geom *g, const floating *dy, const index_t *argmax,
                           floating *dx, Py_ssize_t KH, Py_ssize_t KW, int level, bint stream,
                           Py_ssize_t n) noexcept nogil:
    """The tiled backward of image n: every element of dx[n] written once. Returns how many
    argmax entries named a unit of their own window."""
    cdef Py_ssize_t H = g.H, W = g.W, C = g.C, OH = g.OH, OW = g.OW
    cdef Py_ssize_t oh, ih
    cdef long long matched = 0, got
    if floating is float and index_t is int:
        probe(P_MAXPOOL_BWD_TILED + cconv_pool_simd_path(level, C))
    else:
        probe(P_MAXPOOL_BWD_TILED)
    for oh in range(OH):
        if floating is float and index_t is int:
            got = cconv_pool_bwd_simd(level, dx, dy, argmax, n, oh, OH, OW, H, W, C, KH, KW,
                                      stream)
            if got < 0:
                got = cconv_maxpool_bwd_row_fi(dx, dy, argmax, n, oh, OH, OW, H, W, C, KH, KW)
            matched += got
        elif floating is float:
            matched += cconv_maxpool_bwd_row_fl(dx, dy, argmax, n, oh, OH, OW, H, W, C, KH, KW)
        elif index_t is int:
            matched += cconv_maxpool_bwd_row_di(dx, dy, argmax, n, oh, OH, OW, H, W, C, KH, KW)
        else:
            matched += cconv_maxpool_bwd_row_dl(dx, dy, argmax, n, oh, OH, OW, H, W, C, KH, KW)
        if OW * KW < W:   # columns right of the last window
            for ih in range(oh * KH, oh * KH + KH):
                memset(dx + ((n * H + ih) * W + OW * KW) * C, 0,
                       (W - OW * KW) * C * sizeof(floating))
    if OH * KH < H:       # rows below the last window
        memset(dx + (n * H + OH * KH) * W * C, 0, (H - OH * KH) * W * C * sizeof(floating))
    return matched


cdef int max_pool2d_backward_tiled(const cconv_geom *g, const floating *dy,
                                   const index_t *argmax, floating *dx, Py_ssize_t KH,
                                   Py_ssize_t KW, int stream, int num_threads) noexcept nogil:
    cdef int err = cconv_sizes_check(g)
    if err:
        return err
    cdef Py_ssize_t N = g.N, H = g.H, W = g.W, C = g.C, OH = g.OH, OW = g.OW
    if (num_threads < 1 or g.Cout != C or KH < 1 or KW < 1 or OH * KH > H or OW * KW > W
            or (N and (dx == NULL or (OH * OW and (dy == NULL or argmax == NULL))))):
        return CCONV_ERR_VALUE
    if N == 0:
        return 1
    if OH * OW == 0:
        memset(dx, 0, N * H * W * C * sizeof(floating))
        return 1
    cdef bint stream_ = streams(stream, N * H * W * C * sizeof(floating))
    cdef int level = simd_level(-1)
    cdef Py_ssize_t n
    cdef long long matched = 0
    cdef unsigned long old
    if num_threads == 1:
        old = cconv_ftz_on()
        for n in range(N):
            matched += tiled_image(g, dy, argmax, dx, KH, KW, level, stream_, n)
        cconv_ftz_restore(old)
    else:
        with parallel(num_threads=num_threads):
            old = cconv_ftz_on()
            for n in prange(N, schedule="static"):
                matched += tiled_image(g, dy, argmax, dx, KH, KW, level, stream_, n)
            cconv_ftz_restore(old)
    return matched == N * OH * OW * C


cdef Py_ssize_t scatter_image(const cconv_geom *g, const floating *dy, const index_t *argmax,
                              floating *dx, Py_ssize_t n) noexcept nogil:
    """Zero dx[n] and add every gradient of image n onto the unit its argmax names; returns
    the number of entries outside [0, H*W), which are skipped, never used as an index."""
    cdef Py_ssize_t C = g.C, HW = g.H * g.W, Q = g.OH * g.OW
    cdef Py_ssize_t q, c, bad = 0
    cdef long long idx
    cdef const floating *dyo
    cdef const index_t *ao
    cdef floating *dxn = dx + n * HW * C
    probe(P_MAXPOOL_BWD)
    memset(dxn, 0, HW * C * sizeof(floating))
    for q in range(Q):
        dyo = dy + (n * Q + q) * C
        ao = argmax + (n * Q + q) * C
        for c in range(C):
            idx = ao[c]
            if idx < 0 or idx >= HW:
                bad += 1
            else:
                dxn[idx * C + c] = dxn[idx * C + c] + dyo[c]
    return bad


cdef Py_ssize_t scatter(const cconv_geom *g, const floating *dy, const index_t *argmax,
                        floating *dx, int nt) noexcept nogil:
    """scatter_image for every image, in parallel over images (every write of image n stays
    inside dx[n]); returns the number of out-of-range entries."""
    cdef Py_ssize_t n, bad = 0
    cdef unsigned long old
    if nt == 1:
        old = cconv_ftz_on()
        for n in range(g.N):
            bad += scatter_image(g, dy, argmax, dx, n)
        cconv_ftz_restore(old)
        return bad
    with parallel(num_threads=nt):
        old = cconv_ftz_on()
        for n in prange(g.N, schedule="static"):
            bad += scatter_image(g, dy, argmax, dx, n)
        cconv_ftz_restore(old)
    return bad


cdef int max_pool2d_backward_ex(const cconv_geom *g, const floating *dy, const index_t *argmax,
                                floating *dx, int stream, int num_threads) noexcept nogil:
    cdef int err = cconv_sizes_check(g)
    if err:
        return err
    cdef Py_ssize_t N = g.N, H = g.H, W = g.W, C = g.C, OH = g.OH, OW = g.OW
    if (num_threads < 1 or g.Cout != C
            or (N and (dx == NULL or (OH * OW and (dy == NULL or argmax == NULL))))):
        return CCONV_ERR_VALUE
    if N == 0:
        return 0
    cdef Py_ssize_t k, KH, KW
    # When windows of some size can tile the input (the usual 2x2, stride 2), try the
    # one-pass kernel; it succeeds only if every argmax names a unit of its own window.
    # Window sizes K with OH*K <= H < (OH+1)*K run from H//(OH+1)+1 to H//OH: try both ends.
    if OH and OW:
        for k in range(2):
            KH = H // OH if k == 0 else H // (OH + 1) + 1
            KW = W // OW if k == 0 else W // (OW + 1) + 1
            if k == 1 and KH == H // OH and KW == W // OW:
                break
            if OH * KH <= H < (OH + 1) * KH and OW * KW <= W < (OW + 1) * KW:
                if max_pool2d_backward_tiled(g, dy, argmax, dx, KH, KW, stream,
                                             num_threads) == 1:
                    return 0
    if scatter(g, dy, argmax, dx, num_threads):
        return CCONV_ERR_ARGMAX
    return 0


cdef void avgpool_rows(const cconv_geom *g, const floating *x, floating *y, int level,
                       Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    """Forward of output rows r0..r1 (flat (n, oh)); float32 rows go through the vector
    kernels of _pool_avg.h when `level` (simd_level()) has them."""
    cdef Py_ssize_t C = g.C
    cdef Py_ssize_t KH = g.KH, KW = g.KW, sh = g.sh, sw = g.sw, pt = g.pt, pl = g.pl
    cdef floating inv = <floating> 1 / <floating> (KH * KW)
    cdef Py_ssize_t row, n, oh, ow, h0, w0, h1, w1, ih, iw, c
    cdef floating *yo
    cdef const floating *xi
    probe(P_AVGPOOL_FWD)
    for row in range(r0, r1):
        n = row // g.OH
        oh = row - n * g.OH
        h0 = clip_lo(oh * sh - pt)
        h1 = clip_hi(oh * sh - pt, KH, g.H)
        if floating is float:
            if cconv_avgpool_row_simd(level, 0, x, y + row * g.OW * C, n, g.H, g.W, C, g.OW,
                                      h0, h1, KW, sw, pl, inv):
                continue
        for ow in range(g.OW):
            w0 = clip_lo(ow * sw - pl)
            w1 = clip_hi(ow * sw - pl, KW, g.W)
            yo = y + (row * g.OW + ow) * C
            for c in range(C):
                yo[c] = 0
            for ih in range(h0, h1):
                for iw in range(w0, w1):
                    xi = x + ((n * g.H + ih) * g.W + iw) * C
                    for c in range(C):
                        yo[c] = yo[c] + xi[c]
            for c in range(C):
                yo[c] = yo[c] * inv


cdef int avg_pool2d_forward_ex(const cconv_geom *g, const floating *x, floating *y,
                               int num_threads) noexcept nogil:
    cdef int err = cconv_pool_geom_check(g)
    if err:
        return err
    if num_threads < 1 or (g.N and (x == NULL or y == NULL)):
        return CCONV_ERR_VALUE
    cdef Py_ssize_t rows = g.N * g.OH, row
    cdef unsigned long old
    cdef int level = simd_level(-1)
    if rows == 0:
        return 0
    if num_threads == 1:
        old = cconv_ftz_on()
        avgpool_rows(g, x, y, level, 0, rows)
        cconv_ftz_restore(old)
        return 0
    with parallel(num_threads=num_threads):
        old = cconv_ftz_on()
        for row in prange(rows, schedule="static"):
            avgpool_rows(g, x, y, level, row, row + 1)
        cconv_ftz_restore(old)
    return 0


cdef void avgpool_backward_image(const cconv_geom *g, const floating *dy, floating *dx,
                                 int level, Py_ssize_t n) noexcept nogil:
    """Zero dx[n], then spread each gradient of image n evenly over its window (float32
    rows through _pool_avg.h when `level` has a kernel)."""
    cdef Py_ssize_t C = g.C, image = g.H * g.W * g.C
    cdef Py_ssize_t KH = g.KH, KW = g.KW, sh = g.sh, sw = g.sw, pt = g.pt, pl = g.pl
    cdef floating inv = <floating> 1 / <floating> (KH * KW)
    cdef Py_ssize_t oh, ow, h0, w0, h1, w1, ih, iw, c
    cdef const floating *dyo
    cdef floating *dxi
    probe(P_AVGPOOL_BWD)
    memset(dx + n * image, 0, image * sizeof(floating))
    for oh in range(g.OH):
        h0 = clip_lo(oh * sh - pt)
        h1 = clip_hi(oh * sh - pt, KH, g.H)
        if floating is float:
            if cconv_avgpool_row_simd(level, 1, dy + (n * g.OH + oh) * g.OW * C, dx, n, g.H,
                                      g.W, C, g.OW, h0, h1, KW, sw, pl, inv):
                continue
        for ow in range(g.OW):
            w0 = clip_lo(ow * sw - pl)
            w1 = clip_hi(ow * sw - pl, KW, g.W)
            dyo = dy + ((n * g.OH + oh) * g.OW + ow) * C
            for ih in range(h0, h1):
                for iw in range(w0, w1):
                    dxi = dx + ((n * g.H + ih) * g.W + iw) * C
                    for c in range(C):
                        dxi[c] = dxi[c] + dyo[c] * inv


cdef int avg_pool2d_backward_ex(const cconv_geom *g, const floating *dy, floating *dx,
                                int num_threads) noexcept nogil:
    cdef int err = cconv_pool_geom_check(g)
    if err:
        return err
    if num_threads < 1 or (g.N and (dy == NULL or dx == NULL)):
        return CCONV_ERR_VALUE
    cdef Py_ssize_t n
    cdef unsigned long old
    cdef int level = simd_level(-1)
    if num_threads == 1:
        old = cconv_ftz_on()
        for n in range(g.N):
            avgpool_backward_image(g, dy, dx, level, n)
        cconv_ftz_restore(old)
        return 0
    with parallel(num_threads=num_threads):
        old = cconv_ftz_on()
        for n in prange(g.N, schedule="static"):
            avgpool_backward_image(g, dy, dx, level, n)
        cconv_ftz_restore(old)
    return 0


# ---------------------------------------------------------------------------------
# The kernels of cconv.pool: at most num_threads threads, sized by the work as
# cconv.functional sizes them, and streaming stores for outputs of 8 MiB or more.
# ---------------------------------------------------------------------------------
cdef inline int threads(int budget, Py_ssize_t items, const cconv_geom *g) noexcept nogil:
    return cconv_threads(budget, items, g.N * g.H * g.W * g.C, CCONV_MIN_WORK_PER_THREAD)


cdef int max_pool2d_forward(const cconv_geom *g, const floating *x, floating *y,
                            index_t *argmax, int num_threads) noexcept nogil:
    cdef int err = cconv_pool_geom_check(g)
    if err:
        return err
    return max_pool2d_forward_ex(g, x, y, argmax, -1, threads(num_threads, g.N * g.OH, g))


cdef int max_pool2d_backward(const cconv_geom *g, const floating *dy, const index_t *argmax,
                             floating *dx, int num_threads) noexcept nogil:
    cdef int err = cconv_sizes_check(g)
    if err:
        return err
    return max_pool2d_backward_ex(g, dy, argmax, dx, -1, threads(num_threads, g.N, g))


cdef int avg_pool2d_forward(const cconv_geom *g, const floating *x, floating *y,
                            int num_threads) noexcept nogil:
    cdef int err = cconv_pool_geom_check(g)
    if err:
        return err
    return avg_pool2d_forward_ex(g, x, y, threads(num_threads, g.N * g.OH, g))


cdef int avg_pool2d_backward(const cconv_geom *g, const floating *dy, floating *dx,
                             int num_threads) noexcept nogil:
    cdef int err = cconv_pool_geom_check(g)
    if err:
        return err
    return avg_pool2d_backward_ex(g, dy, dx, threads(num_threads, g.N, g))
