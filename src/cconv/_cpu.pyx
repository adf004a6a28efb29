# cython: language_level=3
"""The instruction-set level of cconv's vectorised kernels (see _cpu.pxd)."""

cdef extern from "_simd.h":
    int cconv_simd_detect() noexcept nogil
    const char *CCONV_MULTIVERSION_TARGETS

import os


cdef int _env_level():
    """CCONV_SIMD_LEVEL=0/1/2 in the environment: a ceiling below the CPU's level, for the
    process's lifetime (a machine without AVX-512, or without AVX2, simulated on one that
    has it: the benchmarks and the test suites run capped this way). Anything else: none."""
    v = os.environ.get("CCONV_SIMD_LEVEL", "").strip()
    return int(v) if v in ("0", "1", "2") else 2


cdef int _supported = min(cconv_simd_detect(), _env_level())
cdef int _cap = 2


cdef int simd_level(int cap) noexcept nogil:
    global _cap
    if cap >= 0:
        _cap = cap
    return _cap if _cap < _supported else _supported


cdef const char *multiversion_targets() noexcept nogil:
    return CCONV_MULTIVERSION_TARGETS
