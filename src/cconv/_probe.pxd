# Which kernel paths ran, and on how many OpenMP threads: a record for the tests, kept in
# one place (cconv._probe) for every kernel module. cconv._core exposes it to Python as
# probe_reset() / probe_record(); cconv._testing is the interface the tests use.
#
# Every parallel loop of the kernel modules calls probe(id) in each work item it runs (and
# the calling-thread path of a kernel given one thread once per call), with the id of the
# path it took: a tiled max pool says whether its AVX-512, AVX2 or generic loop ran.

cdef enum:
    P_MATMUL, P_IM2COL, P_COL2IM
    P_CONV_FWD, P_CONV_BWD, P_CONV_BWD_DW
    P_DIRECT_FWD, P_DIRECT_DW
    P_WINO_FILTER, P_WINO_FILTER_GRAD, P_WINO_FWD, P_WINO_BWD
    P_WINO4_FILTER, P_WINO4_FILTER_GRAD, P_WINO4_BWD
    # tiled max pool: + 0 generic loop, + 1 AVX2, + 2 AVX-512 (the level that ran)
    P_MAXPOOL_FWD, P_MAXPOOL_FWD_AVX2, P_MAXPOOL_FWD_AVX512
    P_MAXPOOL_BWD_TILED, P_MAXPOOL_BWD_TILED_AVX2, P_MAXPOOL_BWD_TILED_AVX512
    P_MAXPOOL_BWD, P_AVGPOOL_FWD, P_AVGPOOL_BWD, P_RELU_BWD
    # convolutions that write the 2x2 max pool of their output (conv2d_max_pool2d), and
    # their backward passes from the pool's gradient (conv2d_max_pool2d_backward)
    P_DIRECT_FWD_POOL, P_WINO_FWD_POOL, P_DIRECT_DW_POOL, P_WINO_BWD_POOL
    # the comparison of a cached Winograd filter's weights with a copy (same_bytes)
    P_SAME_BYTES
    # the Winograd forward of a few tiles: one block, its 16 GEMMs shared out (per thread)
    P_WINO_FWD_SLOTS
    # the direct forward's fused pool of inference pooled in the registers (no argmax)
    P_DIRECT_FWD_POOL_REGS
    P_COUNT

# Mark that the calling thread ran a work item of path `id` (first time per thread and id
# since the last reset: one atomic or; afterwards one load and a branch).
cdef void probe(int id) noexcept nogil
