/* Instruction sets: the multiversioning macro of cconv's plain C loops, and the level of
 * its explicitly vectorised kernels (_pool_simd.h, _conv_direct.h): 2 = AVX-512F,
 * 1 = AVX2, 0 = generic loops only.
 *
 * The kernels are compiled for their instruction set with target attributes, whatever the
 * build's baseline, and chosen at run time by cconv_simd_level(). The tests lower the cap to
 * run every path on one machine.
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

static int cconv_simd_max = -1;   /* what the CPU and the build support */
static int cconv_simd_cap = 2;    /* what the caller allows (tests lower it) */

/* Set the cap (a negative value leaves it) and return the level in use. Called with the
   GIL held, never while a kernel runs. */
static int cconv_simd_level(int cap) {
    if (cconv_simd_max < 0) {
        int level = 0;
#if CCONV_X86
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx2")) level = 1;
        if (__builtin_cpu_supports("avx512f")) level = 2;
#endif
        cconv_simd_max = level;
    }
    if (cap >= 0) cconv_simd_cap = cap;
    return cconv_simd_cap < cconv_simd_max ? cconv_simd_cap : cconv_simd_max;
}

#endif  /* CCONV_SIMD_H */
