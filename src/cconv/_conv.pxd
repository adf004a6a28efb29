# Convolution forward and backward over NHWC images and HWIO weights: the plan that picks
# a route, the three routes, and the checked kernels of cconv.conv that run a plan.
#
# Routes: im2col + GEMM in tiles of output rows (any geometry); Winograd F(2x2, 3x3) for
# 3x3 stride-1 undilated ungrouped layers with many input channels, and for their backward
# pass Winograd F(4x4, 3x3) where its tiles need fewer multiplications; the direct kernels
# (AVX-512, AVX2 + FMA, NEON) for float32 layers with few input channels (K = KH*KW*C small).
# Each route kernel checks its geometry, its preconditions and its scratch sizes; it runs
# on exactly num_threads threads (its scratch has a row per thread), as its plan says.

from cython cimport floating
from cconv.geometry cimport cconv_geom

cdef enum:
    ROUTE_GEMM = 0
    ROUTE_WINOGRAD = 1
    ROUTE_DIRECT = 2
    ROUTE_WINOGRAD4 = 3     # backward passes only (the forward pass stays on F(2x2, 3x3))

# What the plan may choose; cconv.functional exposes them as module attributes.
ctypedef struct conv_tuning:
    Py_ssize_t tile_bytes              # upper bound on one thread's im2col tile
    Py_ssize_t winograd_min_channels   # Winograd from this many input channels (< 0: never)
    Py_ssize_t winograd4_min_channels  # backward on the Winograd route: F(4x4, 3x3) from this
                                       # many input channels where its tiles need fewer
                                       # multiplications than F(2x2, 3x3)'s; 0: wherever
                                       # the Winograd route applies; < 0: never
    Py_ssize_t winograd_block_bytes    # upper bound on one thread's Winograd block
    Py_ssize_t direct_max_k            # direct route up to this K = KH*KW*C (< 0: never)
    Py_ssize_t slots_per_thread        # accumulator runs per thread (direct, Winograd bwd)
    Py_ssize_t min_work_per_thread     # elements of work below which a thread is not worth it

ctypedef struct conv_plan:
    int route              # ROUTE_*
    int threads            # threads of the route kernel
    int filter_threads     # threads of the Winograd filter transforms
    Py_ssize_t tile        # GEMM: output rows per im2col tile; Winograd: tiles per block
    Py_ssize_t slots       # backward accumulators (GEMM: one per thread)
    Py_ssize_t scratch     # elements of scratch per thread (GEMM tile, Winograd block)
    Py_ssize_t K, Kpad     # rows of a weight-gradient accumulator: Kg, and (direct) K
                           # rounded up to 8
    Py_ssize_t workspace   # bytes of workspace the conv2d_forward/backward kernels need

# The plan of a forward (backward = 0) or backward pass on at most `budget` threads, with
# the tuning t (NULL: cconv's defaults, those of cconv.functional). itemsize: 4 (float32)
# or 8 (float64). Returns 0 or an error code.
cdef int make_plan(const cconv_geom *g, int itemsize, bint backward, bint need_dx, int budget,
                   const conv_tuning *t, conv_plan *p) noexcept nogil

# --- im2col + GEMM (weights as the (Kg, Cout) matrix, Kg = KH*KW*C/groups) --------------
# y (OUT) = conv(x, w) + b (b may be NULL); work: num_threads rows of work_stride
# >= tile_rows * Kg elements.
cdef int gemm_forward(const cconv_geom *g, const floating *x, const floating *w,
                      const floating *b, floating *y, floating *work, Py_ssize_t work_rows,
                      Py_ssize_t work_stride, Py_ssize_t tile_rows,
                      int num_threads) noexcept nogil
# dw_work (OUT, num_threads x (Kg, Cout)) and db_work (OUT, num_threads x Cout, or NULL):
# per-thread sums, zeroed here, for the caller to add up in thread order; dx (OUT, zeroed
# here, or NULL): with dx, a thread owns whole images. Static schedules: bit-reproducible for a
# thread count.
cdef int gemm_backward(const cconv_geom *g, const floating *dy, const floating *x,
                       const floating *w, floating *dx, floating *dw_work, floating *db_work,
                       floating *work, Py_ssize_t work_rows, Py_ssize_t work_stride,
                       Py_ssize_t tile_rows, int num_threads) noexcept nogil

# --- direct, float32 (weights as the (K, Cout) matrix; needs simd_level() >= 1) ----------
# scratch: direct_scratch_bytes(g, num_threads) bytes, or NULL (allocated here).
cdef Py_ssize_t direct_scratch_bytes(const cconv_geom *g, int num_threads) noexcept nogil
cdef int direct_forward(const cconv_geom *g, const float *x, const float *w, const float *b,
                        float *y, char *scratch, int num_threads) noexcept nogil
# y (OUT, (N, OH // 2, OW // 2, Cout)) = the 2x2 stride-2 max pool of conv(x, w) + b, then
# ReLU if relu; the full output is never stored (two rows at a time in a thread's scratch).
# argmax (OUT, y's shape, or NULL): the pool's, flat indices h * OW + w of the output plane.
# scratch: NULL (allocated here).
cdef int direct_forward_pool(const cconv_geom *g, const float *x, const float *w,
                             const float *b, float *y, int *argmax, bint relu, char *scratch,
                             int num_threads) noexcept nogil
# dw_work (OUT, nslots x (Kpad, Cout)), db_work (OUT, nslots x Cout): per-slot sums, zeroed
# here; rows K..Kpad-1 of each dw slot are scratch.
cdef int direct_backward_weights(const cconv_geom *g, const float *dy, const float *x,
                                 float *dw_work, float *db_work, Py_ssize_t nslots,
                                 char *scratch, int num_threads) noexcept nogil
# The same with dy given as the gradient dp (N, OH // 2, OW // 2, Cout) of the output's
# 2x2 stride-2 max pool and that pool's argmax (flat indices h * OW + w): each row of dy is
# rebuilt in a thread's scratch as max_pool2d_backward would write it. mask (or NULL): the
# pooled output after a ReLU (dp's shape); dp is then masked as relu_backward(dp, mask)
# would be. matched (OUT): how many argmax entries named a unit of their own window (all
# of them, unless argmax is bad).
cdef int direct_backward_weights_pool(const cconv_geom *g, const float *dp, const int *argmax,
                                      const float *mask, const float *x, float *dw_work,
                                      float *db_work, Py_ssize_t nslots, long long *matched,
                                      char *scratch, int num_threads) noexcept nogil

# --- Winograd F(2x2, 3x3), see _winograd.h ----------------------------------------------
# U (OUT, (16, C, Cout)) = G w G^T for the 3x3 weights w (3, 3, C, Cout).
cdef int winograd_filter(const floating *w, floating *U, Py_ssize_t C, Py_ssize_t Cout,
                         int num_threads) noexcept nogil
# dw (OUT, (3, 3, C, Cout)) = G^T (dU_work summed over its nslots slots, in order) G.
cdef int winograd_filter_grad(const floating *dU_work, Py_ssize_t nslots, floating *dw,
                              Py_ssize_t C, Py_ssize_t Cout, int num_threads) noexcept nogil
# work: num_threads rows of work_stride >= winograd_scratch(C, Cout, tb) elements.
cdef Py_ssize_t winograd_scratch(Py_ssize_t C, Py_ssize_t Cout, Py_ssize_t tb) noexcept nogil
cdef int winograd_forward(const cconv_geom *g, const floating *x, const floating *U,
                          const floating *b, floating *y, floating *work, Py_ssize_t work_rows,
                          Py_ssize_t work_stride, Py_ssize_t tb, int num_threads) noexcept nogil
# pool 1 (2 with ReLU): y (OUT, (N, OH // 2, OW // 2, Cout)) = the 2x2 stride-2 max pool of
# winograd_forward's output, then ReLU: one F(2x2, 3x3) tile per pool window, the
# pooled-away tiles skipped; the same bits as winograd_forward followed by the max pool
# (and ReLU). argmax (OUT, y's shape, or NULL; with pool only): the pool's, flat indices
# h * OW + w of the output plane. pool 0: winograd_forward.
cdef int winograd_forward_pool(const cconv_geom *g, const floating *x, const floating *U,
                               const floating *b, floating *y, int *argmax, int pool,
                               floating *work, Py_ssize_t work_rows, Py_ssize_t work_stride,
                               Py_ssize_t tb, int num_threads) noexcept nogil
# dU_work (OUT, nslots x (16, C, Cout)), db_work (OUT, nslots x Cout): per-slot sums;
# dx (OUT or NULL); all zeroed here, chunk by chunk of images. m = 2: F(2x2, 3x3), U from
# winograd_filter; m = 4: F(4x4, 3x3), U and dU_work slots (36, C, Cout), U from
# wino_filter(..., 4, ...), tb 4x4-output tiles per block, work rows of at least
# 36 * tb * (C + Cout) + 2 * max(C, Cout) elements.
cdef int winograd_backward(const cconv_geom *g, const floating *dy, const floating *x,
                           const floating *U, floating *dx, floating *dU_work,
                           floating *db_work, Py_ssize_t nslots, floating *work,
                           Py_ssize_t work_rows, Py_ssize_t work_stride, Py_ssize_t tb,
                           int m, int num_threads) noexcept nogil
# The same (m = 2) with dy given as the gradient dp (N, OH // 2, OW // 2, Cout) of the
# output's 2x2 stride-2 max pool and that pool's argmax (flat indices h * OW + w): the dy
# transform reads a tile's pool window, giving the bits of max_pool2d_backward then
# winograd_backward, except that the tiles of the last row/column of an odd-sized output
# (gradient 0) are skipped, which may change dU and dx in the last bits (their GEMMs'
# sizes change). mask (or NULL): as for direct_backward_weights_pool. matched (OUT): how
# many argmax entries named a unit of their window.
cdef int winograd_backward_pool(const cconv_geom *g, const floating *dp, const int *argmax,
                                const floating *mask, const floating *x, const floating *U,
                                floating *dx,
                                floating *dU_work, floating *db_work, Py_ssize_t nslots,
                                long long *matched, floating *work, Py_ssize_t work_rows,
                                Py_ssize_t work_stride, Py_ssize_t tb,
                                int num_threads) noexcept nogil

# --- Winograd F(m x m, 3x3), m = 2 (_winograd.h) or 4 (_winograd4.h, backward passes) -----
# U (OUT, ((m + 2)^2, C, Cout)) = G w G^T, and its adjoint dw (OUT, (3, 3, C, Cout)) =
# G^T (dU_work (nslots, (m + 2)^2, C, Cout) summed over its slots) G.
cdef int wino_filter(const floating *w, floating *U, Py_ssize_t C, Py_ssize_t Cout, int m,
                     int num_threads) noexcept nogil
cdef int wino_filter_grad(const floating *dU_work, Py_ssize_t nslots, floating *dw,
                          Py_ssize_t C, Py_ssize_t Cout, int m, int num_threads) noexcept nogil

# --- the checked kernels of cconv.conv (see conv.pxd for their contract) -----------------
cdef Py_ssize_t conv2d_forward_workspace(const cconv_geom *g, int itemsize,
                                         int num_threads) noexcept nogil
cdef Py_ssize_t conv2d_backward_workspace(const cconv_geom *g, int itemsize, int need_dx,
                                          int num_threads) noexcept nogil
cdef int conv2d_forward(const cconv_geom *g, const floating *x, const floating *w,
                        const floating *b, floating *y, void *work, size_t work_bytes,
                        int num_threads) noexcept nogil
cdef int conv2d_backward(const cconv_geom *g, const floating *dy, const floating *x,
                         const floating *w, floating *dx, floating *dw, floating *db,
                         void *work, size_t work_bytes, int num_threads) noexcept nogil
