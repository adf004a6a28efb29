/* cconv's C API: its kernels for C and C++ extension modules.
 *
 *     #include <Python.h>
 *     #include <cconv/cconv.h>      compile with -I "$(python -c 'import cconv; print(cconv.get_include())')"
 *
 *     // in the module's init function, with the GIL held:
 *     if (import_cconv() < 0) return NULL;
 *
 *     // then, from any thread, with or without the GIL:
 *     cconv_geom g;
 *     if (cconv_conv_geom(&g, N, H, W, C, 3, 3, Cout, 1, 1, 1, 1, 1, 1, 1, 1, 1) != CCONV_OK) ...
 *     int err = cconv_conv2d_forward_f32(&g, x, w, b, y, NULL, 0, 1);
 *
 * The kernels are those of the Cython API (cconv/conv.pxd, im2col.pxd, pool.pxd,
 * activation.pxd, beside cconv's Python modules), which states each one's contract: the
 * buffers read (IN) and written (OUT) and their shapes, who zeroes what, the threads used
 * and the error codes returned. In short: every array is C-contiguous (activations NHWC,
 * weights HWIO); every kernel checks its geometry (cconv/geometry.h) before it touches
 * memory and returns CCONV_OK (0) or a negative CCONV_ERR_* code, having written nothing
 * when a check failed; it runs on at most num_threads threads, fewer when the work is
 * small (as cconv.functional decides, so the results are those of cconv.functional bit for
 * bit at the same thread count) and on the calling thread alone when num_threads is 1,
 * which is what a caller inside its own parallel region should ask for. No kernel raises a
 * Python exception or needs the GIL; the first convolution of the process binds scipy's
 * BLAS, and import_cconv() does that beforehand. The convolutions call BLAS from each of
 * their threads: limit BLAS to one thread (threadpoolctl) around calls made with several
 * threads or from several threads at once.
 *
 * The functions are reached through a table of pointers that cconv exports as a capsule,
 * cconv._core._C_API, as numpy exports its C API. import_cconv() fetches it into a
 * variable of this translation unit: call it in every translation unit that uses the
 * macros below (or define CCONV_API_UNIQUE_SYMBOL to share one table between files, with
 * CCONV_NO_IMPORT in all of them but the one that calls import_cconv()).
 *
 * Versions and compatibility: CCONV_API_VERSION_MAJOR.MINOR below is the API this header
 * describes. Within a major version cconv only appends entries to the end of the table and
 * never changes the meaning of an existing entry, of the geometry struct or of an error
 * code; a change to any of those increments the major version. A module built against
 * MAJOR.MINOR therefore runs with any cconv whose API is MAJOR.x with x >= MINOR, and
 * import_cconv() refuses, with an ImportError that names both versions, a cconv of another
 * major version or of an older minor one.
 */
#ifndef CCONV_CCONV_H
#define CCONV_CCONV_H

#include <stddef.h>
#include "geometry.h"

#define CCONV_API_VERSION_MAJOR 1
#define CCONV_API_VERSION_MINOR 0

#ifdef __cplusplus
extern "C" {
#endif

/* The table of cconv's kernels (API 1.0). Every entry of a table whose major version is
   CCONV_API_VERSION_MAJOR is non-NULL up to the table's size. */
typedef struct cconv_api {
    unsigned int major, minor;   /* the API version of the cconv that filled the table */
    size_t size;                 /* sizeof(cconv_api) in that cconv */

    /* Convolution (conv.pxd): workspace sizes in bytes (or a negative error code), and the
       forward and backward passes. */
    Py_ssize_t (*conv2d_forward_workspace)(const cconv_geom *g, int itemsize, int num_threads);
    Py_ssize_t (*conv2d_backward_workspace)(const cconv_geom *g, int itemsize, int need_dx,
                                            int num_threads);
    int (*conv2d_forward_f32)(const cconv_geom *g, const float *x, const float *w,
                              const float *b, float *y, void *work, size_t work_bytes,
                              int num_threads);
    int (*conv2d_forward_f64)(const cconv_geom *g, const double *x, const double *w,
                              const double *b, double *y, void *work, size_t work_bytes,
                              int num_threads);
    int (*conv2d_backward_f32)(const cconv_geom *g, const float *dy, const float *x,
                               const float *w, float *dx, float *dw, float *db, void *work,
                               size_t work_bytes, int num_threads);
    int (*conv2d_backward_f64)(const cconv_geom *g, const double *dy, const double *x,
                               const double *w, double *dx, double *dw, double *db, void *work,
                               size_t work_bytes, int num_threads);

    /* im2col / col2im (im2col.pxd). */
    int (*im2col_f32)(const cconv_geom *g, const float *x, float *cols, int num_threads);
    int (*im2col_f64)(const cconv_geom *g, const double *x, double *cols, int num_threads);
    int (*col2im_f32)(const cconv_geom *g, const float *cols, float *x, int num_threads);
    int (*col2im_f64)(const cconv_geom *g, const double *cols, double *x, int num_threads);

    /* Pooling (pool.pxd): argmax int32 (i32) or int64 (i64). */
    int (*max_pool2d_forward_f32_i32)(const cconv_geom *g, const float *x, float *y,
                                      int *argmax, int num_threads);
    int (*max_pool2d_forward_f32_i64)(const cconv_geom *g, const float *x, float *y,
                                      long long *argmax, int num_threads);
    int (*max_pool2d_forward_f64_i32)(const cconv_geom *g, const double *x, double *y,
                                      int *argmax, int num_threads);
    int (*max_pool2d_forward_f64_i64)(const cconv_geom *g, const double *x, double *y,
                                      long long *argmax, int num_threads);
    int (*max_pool2d_backward_f32_i32)(const cconv_geom *g, const float *dy, const int *argmax,
                                       float *dx, int num_threads);
    int (*max_pool2d_backward_f32_i64)(const cconv_geom *g, const float *dy,
                                       const long long *argmax, float *dx, int num_threads);
    int (*max_pool2d_backward_f64_i32)(const cconv_geom *g, const double *dy,
                                       const int *argmax, double *dx, int num_threads);
    int (*max_pool2d_backward_f64_i64)(const cconv_geom *g, const double *dy,
                                       const long long *argmax, double *dx, int num_threads);
    int (*avg_pool2d_forward_f32)(const cconv_geom *g, const float *x, float *y, int num_threads);
    int (*avg_pool2d_forward_f64)(const cconv_geom *g, const double *x, double *y,
                                  int num_threads);
    int (*avg_pool2d_backward_f32)(const cconv_geom *g, const float *dy, float *dx,
                                   int num_threads);
    int (*avg_pool2d_backward_f64)(const cconv_geom *g, const double *dy, double *dx,
                                   int num_threads);

    /* ReLU backward over n elements (activation.pxd). */
    int (*relu_backward_f32)(const float *dy, const float *y, float *out, Py_ssize_t n,
                             int num_threads);
    int (*relu_backward_f64)(const double *dy, const double *y, double *out, Py_ssize_t n,
                             int num_threads);
} cconv_api;

#define CCONV_CAPSULE_NAME "cconv._core._C_API"

#ifndef CCONV_INTERNAL   /* what follows is for the modules that use cconv, not cconv itself */

#if defined(CCONV_API_UNIQUE_SYMBOL)
#define cconv_API CCONV_API_UNIQUE_SYMBOL
#endif
#if defined(CCONV_NO_IMPORT)
extern const cconv_api *cconv_API;
#elif defined(CCONV_API_UNIQUE_SYMBOL)
const cconv_api *cconv_API = NULL;
#else
static const cconv_api *cconv_API = NULL;
#endif

#define cconv_conv2d_forward_workspace  (cconv_API->conv2d_forward_workspace)
#define cconv_conv2d_backward_workspace (cconv_API->conv2d_backward_workspace)
#define cconv_conv2d_forward_f32        (cconv_API->conv2d_forward_f32)
#define cconv_conv2d_forward_f64        (cconv_API->conv2d_forward_f64)
#define cconv_conv2d_backward_f32       (cconv_API->conv2d_backward_f32)
#define cconv_conv2d_backward_f64       (cconv_API->conv2d_backward_f64)
#define cconv_im2col_f32                (cconv_API->im2col_f32)
#define cconv_im2col_f64                (cconv_API->im2col_f64)
#define cconv_col2im_f32                (cconv_API->col2im_f32)
#define cconv_col2im_f64                (cconv_API->col2im_f64)
#define cconv_max_pool2d_forward_f32_i32  (cconv_API->max_pool2d_forward_f32_i32)
#define cconv_max_pool2d_forward_f32_i64  (cconv_API->max_pool2d_forward_f32_i64)
#define cconv_max_pool2d_forward_f64_i32  (cconv_API->max_pool2d_forward_f64_i32)
#define cconv_max_pool2d_forward_f64_i64  (cconv_API->max_pool2d_forward_f64_i64)
#define cconv_max_pool2d_backward_f32_i32 (cconv_API->max_pool2d_backward_f32_i32)
#define cconv_max_pool2d_backward_f32_i64 (cconv_API->max_pool2d_backward_f32_i64)
#define cconv_max_pool2d_backward_f64_i32 (cconv_API->max_pool2d_backward_f64_i32)
#define cconv_max_pool2d_backward_f64_i64 (cconv_API->max_pool2d_backward_f64_i64)
#define cconv_avg_pool2d_forward_f32    (cconv_API->avg_pool2d_forward_f32)
#define cconv_avg_pool2d_forward_f64    (cconv_API->avg_pool2d_forward_f64)
#define cconv_avg_pool2d_backward_f32   (cconv_API->avg_pool2d_backward_f32)
#define cconv_avg_pool2d_backward_f64   (cconv_API->avg_pool2d_backward_f64)
#define cconv_relu_backward_f32         (cconv_API->relu_backward_f32)
#define cconv_relu_backward_f64         (cconv_API->relu_backward_f64)

#if !defined(CCONV_NO_IMPORT)
/* Fetch cconv's table (importing cconv, which binds scipy's BLAS) and check its version.
   Call with the GIL held, in the module's init function. Returns 0, or -1 with a Python
   exception set (ImportError when the versions are incompatible). */
static int import_cconv(void) {
    PyObject *module, *capsule;
    const cconv_api *api;
    module = PyImport_ImportModule("cconv._core");
    if (module == NULL)
        return -1;
    /* Bind scipy's BLAS now, while the GIL is held, rather than at the first convolution. */
    capsule = PyObject_CallMethod(module, "load_blas", NULL);
    if (capsule == NULL) {
        Py_DECREF(module);
        return -1;
    }
    Py_DECREF(capsule);
    capsule = PyObject_GetAttrString(module, "_C_API");
    Py_DECREF(module);
    if (capsule == NULL)
        return -1;
    /* The table is a static of cconv._core, which stays loaded: the pointer outlives the
       capsule object. */
    api = (const cconv_api *)PyCapsule_GetPointer(capsule, CCONV_CAPSULE_NAME);
    Py_DECREF(capsule);
    if (api == NULL)
        return -1;
    if (api->major != CCONV_API_VERSION_MAJOR) {
        PyErr_Format(PyExc_ImportError,
                     "this module was compiled against cconv C API version %d.%d, but the "
                     "installed cconv provides C API version %u.%u (another major version, "
                     "whose kernels differ): rebuild the module against the installed cconv "
                     "(cconv.get_include())",
                     CCONV_API_VERSION_MAJOR, CCONV_API_VERSION_MINOR, api->major, api->minor);
        return -1;
    }
    if (api->minor < CCONV_API_VERSION_MINOR) {
        PyErr_Format(PyExc_ImportError,
                     "this module was compiled against cconv C API version %d.%d, but the "
                     "installed cconv provides only C API version %u.%u: upgrade cconv to a "
                     "version that provides C API %d.%d or newer",
                     CCONV_API_VERSION_MAJOR, CCONV_API_VERSION_MINOR, api->major, api->minor,
                     CCONV_API_VERSION_MAJOR, CCONV_API_VERSION_MINOR);
        return -1;
    }
    cconv_API = api;
    return 0;
}
#endif  /* !CCONV_NO_IMPORT */

#endif  /* !CCONV_INTERNAL */

#ifdef __cplusplus
}
#endif

#endif  /* CCONV_CCONV_H */
