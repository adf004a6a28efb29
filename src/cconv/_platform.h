/* What the kernels need from the platform: OpenMP when the build has it, the
 * flush-to-zero / denormals-are-zero mode of the calling thread, and the rule that sizes
 * a kernel's thread team.
 *
 * Every kernel switches FTZ/DAZ on in each of its threads and restores the previous mode
 * before returning: a long training run otherwise slows down many times over as values
 * decay into denormals (see cconv.functional's module docstring).
 */
#ifndef CCONV_PLATFORM_H
#define CCONV_PLATFORM_H

#include <stddef.h>

#if defined(_OPENMP)
#include <omp.h>
#define CCONV_OPENMP 1
static inline int cconv_omp_max_threads(void) { return omp_get_max_threads(); }
#else
#define CCONV_OPENMP 0
static inline int cconv_omp_max_threads(void) { return 1; }
#endif

/* Switch FTZ/DAZ on for the calling thread; returns the old mode for cconv_ftz_restore. */
#if defined(__SSE__) || defined(_M_X64) || (defined(_M_IX86_FP) && _M_IX86_FP >= 1)
#include <xmmintrin.h>
#define CCONV_HAVE_FTZ 1
static inline unsigned long cconv_ftz_on(void) {
    unsigned int old = _mm_getcsr();
    _mm_setcsr(old | 0x8040u);  /* FTZ (bit 15) | DAZ (bit 6) */
    return old;
}
static inline void cconv_ftz_restore(unsigned long old) { _mm_setcsr((unsigned int)old); }
#elif defined(__aarch64__)
#define CCONV_HAVE_FTZ 1
static inline unsigned long cconv_ftz_on(void) {
    unsigned long old;
    __asm__ __volatile__("mrs %0, fpcr" : "=r"(old));
    __asm__ __volatile__("msr fpcr, %0" : : "r"(old | (1UL << 24)));
    return old;
}
static inline void cconv_ftz_restore(unsigned long old) { __asm__ __volatile__("msr fpcr, %0" : : "r"(old)); }
#else
#define CCONV_HAVE_FTZ 0
static inline unsigned long cconv_ftz_on(void) { return 0; }
static inline void cconv_ftz_restore(unsigned long old) { (void)old; }
#endif

/* Below this many elements of work per thread, another thread costs more than it saves
   (cconv.functional.MIN_WORK_PER_THREAD, which the tests lower). */
#define CCONV_MIN_WORK_PER_THREAD 32768

/* The threads of a kernel: at most `budget`, at most one per parallel item, and (work >= 0)
   at most one per min_work elements of work; at least 1. cconv.functional sizes its calls
   by the same rule (its _threads), the kernels of the Cython and C API by this one. */
static inline int cconv_threads(int budget, ptrdiff_t items, ptrdiff_t work, ptrdiff_t min_work) {
    ptrdiff_t n = budget < items ? budget : items;
    if (work >= 0 && min_work > 0 && work / min_work < n) n = work / min_work;
    return n < 1 ? 1 : (int)n;
}

#endif  /* CCONV_PLATFORM_H */
