/* The one C function of cconv's probe record (see _probe.pyx, its only includer): mark that
 * the calling thread ran a work item of kernel path `id`.
 *
 * The first time a thread does so for an id since the last reset, it sets its bit in
 * mask[id] and stores the size of its team (omp_get_num_threads(): 1 outside a parallel
 * region, as on the calling-thread paths of a kernel given one thread); every later call
 * costs one load and a branch. Threads 63 and above share bit 63.
 */
#ifndef CCONV_PROBE_H
#define CCONV_PROBE_H

#include <stdint.h>
#if defined(_OPENMP)
#include <omp.h>
#endif
#if defined(_MSC_VER) && !defined(__clang__)
#include <intrin.h>
#endif

static inline void cconv_probe_mark(unsigned long long *mask, int *team, int id) {
#if defined(_OPENMP)
    int tid = omp_get_thread_num(), size = omp_get_num_threads();
#else
    int tid = 0, size = 1;
#endif
    unsigned long long bit = 1ULL << (tid < 63 ? tid : 63);
#if defined(_MSC_VER) && !defined(__clang__)
    if (!(mask[id] & bit)) {
        team[id] = size;
        _InterlockedOr64((volatile __int64 *)&mask[id], (__int64)bit);
    }
#else
    if (!(__atomic_load_n(&mask[id], __ATOMIC_RELAXED) & bit)) {
        __atomic_store_n(&team[id], size, __ATOMIC_RELAXED);
        __atomic_fetch_or(&mask[id], bit, __ATOMIC_RELAXED);
    }
#endif
}

#endif  /* CCONV_PROBE_H */
