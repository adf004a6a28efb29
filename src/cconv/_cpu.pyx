# cython: language_level=3
"""The instruction-set level of cconv's vectorised kernels (see _cpu.pxd)."""

cdef extern from "_simd.h":
    int cconv_simd_detect() noexcept nogil

cdef int _supported = cconv_simd_detect()
cdef int _cap = 2


cdef int simd_level(int cap) noexcept nogil:
    global _cap
    if cap >= 0:
        _cap = cap
    return _cap if _cap < _supported else _supported
