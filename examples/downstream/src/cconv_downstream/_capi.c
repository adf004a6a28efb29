/* cconv's kernels from C, through its C API: import_cconv() fetches the table of kernels at
 * import; the functions below hand it the buffers of the arrays they are given (any object
 * with the buffer protocol: numpy arrays here) and return its error code. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <cconv/cconv.h>

/* A C-contiguous buffer of `ndim` dimensions whose items are `itemsize` bytes of one of the
   struct formats in `formats` ("f" float32, "d" float64, "i" int32, "lq" int64). */
static int get(PyObject *obj, Py_buffer *view, int ndim, const char *formats, int writable) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0)
        return -1;
    const char *f = view->format;
    if (f[0] == '<' || f[0] == '=' || f[0] == '@')
        f++;
    if (view->ndim != ndim || f[0] == '\0' || f[1] != '\0' || strchr(formats, f[0]) == NULL) {
        PyErr_Format(PyExc_TypeError, "expected a %d-D C-contiguous array of format %s", ndim,
                     formats);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static PyObject *api_version(PyObject *self, PyObject *args) {
    (void)self; (void)args;
    return Py_BuildValue("(ii)(II)", CCONV_API_VERSION_MAJOR, CCONV_API_VERSION_MINOR,
                         cconv_API->major, cconv_API->minor);
}

/* conv2d_forward(x, w, b or None, y, sh, sw, pt, pb, pl, pr, dh, dw, groups, num_threads) */
static PyObject *conv2d_forward(PyObject *self, PyObject *args) {
    PyObject *ox, *ow, *ob, *oy;
    Py_ssize_t sh, sw, pt, pb, pl, pr, dh, dw, groups;
    int nt, err = CCONV_OK;
    Py_buffer x, w, b, y;
    cconv_geom g;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOnnnnnnnnni", &ox, &ow, &ob, &oy, &sh, &sw, &pt, &pb,
                          &pl, &pr, &dh, &dw, &groups, &nt))
        return NULL;
    if (get(ox, &x, 4, "fd", 0) < 0)
        return NULL;
    if (get(ow, &w, 4, x.format[strlen(x.format) - 1] == 'f' ? "f" : "d", 0) < 0)
        goto fail_x;
    if (ob != Py_None && get(ob, &b, 1, x.format[strlen(x.format) - 1] == 'f' ? "f" : "d", 0) < 0)
        goto fail_w;
    if (get(oy, &y, 4, x.format[strlen(x.format) - 1] == 'f' ? "f" : "d", 1) < 0)
        goto fail_b;
    err = cconv_conv_geom(&g, x.shape[0], x.shape[1], x.shape[2], x.shape[3], w.shape[0],
                          w.shape[1], w.shape[3], sh, sw, pt, pb, pl, pr, dh, dw, groups);
    if (err == CCONV_OK && (y.shape[0] != g.N || y.shape[1] != g.OH || y.shape[2] != g.OW ||
                            y.shape[3] != g.Cout || w.shape[2] != g.C / g.groups ||
                            (ob != Py_None && b.shape[0] != g.Cout)))
        err = CCONV_ERR_VALUE;     /* the buffers do not have the geometry's shapes */
    if (err == CCONV_OK) {
        Py_BEGIN_ALLOW_THREADS
        if (x.itemsize == 4)
            err = cconv_conv2d_forward_f32(&g, x.buf, w.buf, ob != Py_None ? b.buf : NULL,
                                           y.buf, NULL, 0, nt);
        else
            err = cconv_conv2d_forward_f64(&g, x.buf, w.buf, ob != Py_None ? b.buf : NULL,
                                           y.buf, NULL, 0, nt);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&y);
fail_b:
    if (ob != Py_None)
        PyBuffer_Release(&b);
fail_w:
    PyBuffer_Release(&w);
fail_x:
    PyBuffer_Release(&x);
    return PyErr_Occurred() ? NULL : PyLong_FromLong(err);
}

/* max_pool2d_forward(x, y, argmax, KH, KW, sh, sw, pt, pb, pl, pr, num_threads) */
static PyObject *max_pool2d_forward(PyObject *self, PyObject *args) {
    PyObject *ox, *oy, *oa;
    Py_ssize_t KH, KW, sh, sw, pt, pb, pl, pr;
    int nt, err = CCONV_OK;
    Py_buffer x, y, a;
    cconv_geom g;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOnnnnnnnni", &ox, &oy, &oa, &KH, &KW, &sh, &sw, &pt, &pb,
                          &pl, &pr, &nt))
        return NULL;
    if (get(ox, &x, 4, "fd", 0) < 0)
        return NULL;
    if (get(oy, &y, 4, x.itemsize == 4 ? "f" : "d", 1) < 0)
        goto fail_x;
    if (get(oa, &a, 4, "ilq", 1) < 0)
        goto fail_y;
    err = cconv_pool_geom(&g, x.shape[0], x.shape[1], x.shape[2], x.shape[3], KH, KW, sh, sw,
                          pt, pb, pl, pr);
    for (int i = 0; err == CCONV_OK && i < 4; i++)
        if (y.shape[i] != a.shape[i] || y.shape[i] != (i == 0 ? g.N : i == 1 ? g.OH :
                                                       i == 2 ? g.OW : g.C))
            err = CCONV_ERR_VALUE;
    if (err == CCONV_OK) {
        Py_BEGIN_ALLOW_THREADS
        if (x.itemsize == 4)
            err = a.itemsize == 4 ? cconv_max_pool2d_forward_f32_i32(&g, x.buf, y.buf, a.buf, nt)
                                  : cconv_max_pool2d_forward_f32_i64(&g, x.buf, y.buf, a.buf, nt);
        else
            err = a.itemsize == 4 ? cconv_max_pool2d_forward_f64_i32(&g, x.buf, y.buf, a.buf, nt)
                                  : cconv_max_pool2d_forward_f64_i64(&g, x.buf, y.buf, a.buf, nt);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&a);
fail_y:
    PyBuffer_Release(&y);
fail_x:
    PyBuffer_Release(&x);
    return PyErr_Occurred() ? NULL : PyLong_FromLong(err);
}

static PyMethodDef methods[] = {
    {"api_version", api_version, METH_NOARGS,
     "((major, minor) of the cconv.h this module was built with, (major, minor) of cconv's table)"},
    {"conv2d_forward", conv2d_forward, METH_VARARGS,
     "conv2d_forward(x, w, b, y, sh, sw, pt, pb, pl, pr, dh, dw, groups, num_threads) -> error code"},
    {"max_pool2d_forward", max_pool2d_forward, METH_VARARGS,
     "max_pool2d_forward(x, y, argmax, KH, KW, sh, sw, pt, pb, pl, pr, num_threads) -> error code"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_capi", NULL, -1, methods};

PyMODINIT_FUNC PyInit__capi(void) {
    if (import_cconv() < 0)
        return NULL;
    return PyModule_Create(&module);
}
