# cython: language_level=3
"""The probe record: which kernel paths ran and how many threads each used (see _probe.pxd).

The state lives here and only here; every kernel module marks it through ``probe(id)``.
"""

cdef extern from "_probe.h":
    void cconv_probe_mark(unsigned long long *mask, int *team, int id) noexcept nogil

# In the order of the P_* ids of _probe.pxd.
NAMES = (
    "matmul", "im2col", "col2im",
    "conv2d_forward", "conv2d_backward", "conv2d_backward_weights",
    "direct_forward", "direct_backward_weights",
    "winograd_filter", "winograd_filter_grad", "winograd_forward", "winograd_backward",
    "winograd4_filter", "winograd4_filter_grad", "winograd4_backward",
    "max_pool2d_forward", "max_pool2d_forward_avx2", "max_pool2d_forward_avx512",
    "max_pool2d_backward_tiled", "max_pool2d_backward_tiled_avx2",
    "max_pool2d_backward_tiled_avx512",
    "max_pool2d_backward", "avg_pool2d_forward", "avg_pool2d_backward", "relu_backward",
    "direct_forward_pool", "winograd_forward_pool", "direct_backward_weights_pool",
    "winograd_backward_pool", "same_bytes", "winograd_forward_slots",
    "direct_forward_pool_registers",
)
assert len(NAMES) == P_COUNT

cdef unsigned long long _mask[P_COUNT]   # bit t: thread t ran a work item of the path
cdef int _team[P_COUNT]                  # the team size of the last thread to set a bit


cdef void probe(int id) noexcept nogil:
    cconv_probe_mark(_mask, _team, id)


def probe_reset():
    """Forget which threads and kernel paths have run. Call with no kernel running."""
    cdef int i
    for i in range(P_COUNT):
        _mask[i] = 0
        _team[i] = 0


def probe_record():
    """{path: (team size, threads that took work)} of the kernel paths that ran since the
    last probe_reset()."""
    return {NAMES[i]: (_team[i], bin(_mask[i]).count("1"))
            for i in range(P_COUNT) if _mask[i]}


probe_reset()
