# The instruction-set level of cconv's vectorised kernels, kept in one place for every
# kernel module: 2 = AVX-512F, 1 = AVX2 + FMA (aarch64: NEON), 0 = generic loops only.

# The level in use: what the CPU supports (and the environment's CCONV_SIMD_LEVEL allows),
# capped by the last cap >= 0 given (a negative
# cap leaves it as it is). The tests lower the cap to run every path on one machine; it
# is set with the GIL held, never while a kernel runs.
cdef int simd_level(int cap) noexcept nogil

# The instruction sets that the plain C loops' clones (CCONV_MULTIVERSION, _simd.h) were
# compiled for, best first: "avx512f,avx2,default", "avx2,default" in a build made with
# CFLAGS=-DCCONV_CLONES_MAX_AVX2, "" where the loops have one version (the baseline's).
cdef const char *multiversion_targets() noexcept nogil
