# cython: language_level=3
"""im2col / col2im for NHWC images (see _im2col.pxd and the public im2col.pxd)."""
from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.string cimport memcpy, memset

from cconv.geometry cimport cconv_geom, cconv_conv_geom_check, CCONV_ERR_VALUE
from cconv._probe cimport probe, P_IM2COL, P_COL2IM
from cconv._platform cimport (cconv_ftz_on, cconv_ftz_restore, cconv_threads,
                              CCONV_MIN_WORK_PER_THREAD)

cdef extern from "_elementwise.h":
    void cconv_add_f(float *d, const float *s, Py_ssize_t n) noexcept nogil
    void cconv_add_d(double *d, const double *s, Py_ssize_t n) noexcept nogil


cdef inline void vadd(floating *d, const floating *s, Py_ssize_t n) noexcept nogil:
    """d[:n] += s[:n] for non-overlapping d and s."""
    if floating is float:
        cconv_add_f(d, s, n)
    else:
        cconv_add_d(d, s, n)


cdef inline Py_ssize_t row_origin(Py_ssize_t r, const cconv_geom *g, Py_ssize_t *ih0,
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
                      Py_ssize_t c0, Py_ssize_t cg, const cconv_geom *g) noexcept nogil:
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
                      Py_ssize_t c0, Py_ssize_t cg, const cconv_geom *g) noexcept nogil:
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


cdef int im2col_ex(const cconv_geom *g, const floating *x, floating *cols,
                int num_threads) noexcept nogil:
    cdef int err = cconv_conv_geom_check(g)
    if err:
        return err
    if num_threads < 1 or (g.N and (x == NULL or cols == NULL)):
        return CCONV_ERR_VALUE
    cdef Py_ssize_t P = g.OH * g.OW, n
    cdef Py_ssize_t K = g.KH * g.KW * g.C
    cdef unsigned long old
    if g.N == 0:
        return 0
    if num_threads == 1:          # on the calling thread (see _pool.pyx)
        old = cconv_ftz_on()
        probe(P_IM2COL)
        im2col_rows(x, cols, 0, g.N * P, 0, g.C, g)
        cconv_ftz_restore(old)
        return 0
    with parallel(num_threads=num_threads):
        old = cconv_ftz_on()
        for n in prange(g.N, schedule="static"):
            probe(P_IM2COL)
            im2col_rows(x, cols + n * P * K, n * P, (n + 1) * P, 0, g.C, g)
        cconv_ftz_restore(old)
    return 0


cdef int col2im_ex(const cconv_geom *g, const floating *cols, floating *x, bint zero,
                   int num_threads) noexcept nogil:
    cdef int err = cconv_conv_geom_check(g)
    if err:
        return err
    if num_threads < 1 or (g.N and (x == NULL or cols == NULL)):
        return CCONV_ERR_VALUE
    cdef Py_ssize_t P = g.OH * g.OW, n
    cdef Py_ssize_t K = g.KH * g.KW * g.C
    cdef Py_ssize_t image = g.H * g.W * g.C
    cdef unsigned long old
    if g.N == 0:
        return 0
    if num_threads == 1:          # on the calling thread (see _pool.pyx)
        old = cconv_ftz_on()
        if zero:
            memset(x, 0, g.N * image * sizeof(floating))
        probe(P_COL2IM)
        col2im_rows(cols, x, 0, g.N * P, 0, g.C, g)
        cconv_ftz_restore(old)
        return 0
    # Parallel over images: a thread zeroes and writes only its own images.
    with parallel(num_threads=num_threads):
        old = cconv_ftz_on()
        for n in prange(g.N, schedule="static"):
            probe(P_COL2IM)
            if zero:
                memset(x + n * image, 0, image * sizeof(floating))
            col2im_rows(cols + n * P * K, x, n * P, (n + 1) * P, 0, g.C, g)
        cconv_ftz_restore(old)
    return 0


# The kernels of cconv.im2col: at most num_threads threads, sized by the work as
# cconv.functional sizes them.
cdef inline int threads(const cconv_geom *g, int budget) noexcept nogil:
    """Threads for im2col/col2im of a checked geometry: items are images, work the columns."""
    return cconv_threads(budget, g.N, g.N * g.OH * g.OW * g.KH * g.KW * g.C,
                         CCONV_MIN_WORK_PER_THREAD)


cdef int im2col(const cconv_geom *g, const floating *x, floating *cols,
                int num_threads) noexcept nogil:
    cdef int err = cconv_conv_geom_check(g)
    return err if err else im2col_ex(g, x, cols, threads(g, num_threads))


cdef int col2im(const cconv_geom *g, const floating *cols, floating *x,
                int num_threads) noexcept nogil:
    cdef int err = cconv_conv_geom_check(g)
    return err if err else col2im_ex(g, cols, x, True, threads(g, num_threads))
