/* Instruction sets: the multiversioning macro of cconv's plain C loops, and the level of
 * its explicitly vectorised kernels (_pool_simd.h, _conv_direct.h): 2 = AVX-512F,
 * 1 = AVX2, 0 = generic loops only.
 *
 * The kernels are compiled for their instruction set with target attributes, whatever the
 * build's baseline, and chosen at run time from cconv._cpu's simd_level().
 */
#ifndef CCONV_SIMD_H
#define CCONV_SIMD_H

/* Plain C loops that gain from wider vectors are compiled for several instruction sets on
   x86-64 Linux with gcc (the loader picks the best one at run time); elsewhere for the
   build's baseline. The one definition: _pool_rows.h, _elementwise.h and _winograd.h use it. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define CCONV_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CCONV_MULTIVERSION
#endif

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define CCONV_X86 1
#include <immintrin.h>
#define CCONV_AVX512 __attribute__((target("avx512f")))
#define CCONV_AVX2 __attribute__((target("avx2")))
#else
#define CCONV_X86 0
#endif

/* What the CPU and the build support: 2 (AVX-512F), 1 (AVX2) or 0. The level in use, which
   the tests lower to reach every path, is kept by cconv._cpu (simd_level). */
static inline int cconv_simd_detect(void) {
    int level = 0;
#if CCONV_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) level = 1;
    if (__builtin_cpu_supports("avx512f")) level = 2;
#endif
    return level;
}

#endif  /* CCONV_SIMD_H */
