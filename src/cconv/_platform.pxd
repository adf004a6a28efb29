# Declarations of the private C header that every kernel module uses (_platform.h): OpenMP,
# flush-to-zero, and the rule that sizes a kernel's thread team.
# Only cconv's own .pyx files cimport this (its headers are not installed for other packages).

cdef extern from "_platform.h":
    int CCONV_OPENMP
    int CCONV_HAVE_FTZ
    int cconv_omp_max_threads() noexcept nogil
    # FTZ/DAZ on for the calling thread; returns the mode to restore.
    unsigned long cconv_ftz_on() noexcept nogil
    void cconv_ftz_restore(unsigned long old) noexcept nogil
    # Threads for a kernel: <= budget, <= items, <= work / min_work (when work >= 0), >= 1.
    int CCONV_MIN_WORK_PER_THREAD
    int cconv_threads(int budget, Py_ssize_t items, Py_ssize_t work,
                      Py_ssize_t min_work) noexcept nogil
