/* C-level timing loops for the benchmark: each function runs an operation n
 * times in C and returns nanoseconds per operation, so no Python call
 * overhead is measured.  Built against the installed membuf.h, like any
 * downstream extension. */
#include <membuf.h>

#include <stdatomic.h>
#include <time.h>

static char block[4096];

/* Release callbacks run: each timing loop counts into a local (its ctx), so
 * loops running in parallel threads (free-threaded CPython) share no cache
 * line, then adds its count here once. */
static atomic_long releases;

static void
count_release(void *ptr, size_t len, void *ctx)
{
    (void)ptr;
    (void)len;
    (*(long *)ctx)++;
}

static double
now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* Runs body n times; returns ns per run.  `released` (a long in scope) is
 * the loop's own callback count: added to `releases` at the end. */
#define TIMED_LOOP(n, body)                                                                    \
    do {                                                                                       \
        double start_ = now_ns();                                                              \
        for (Py_ssize_t i_ = 0; i_ < (n); i_++) {                                              \
            body                                                                               \
        }                                                                                      \
        double ns_ = (now_ns() - start_) / (double)(n);                                        \
        atomic_fetch_add_explicit(&releases, released, memory_order_relaxed);                  \
        return PyFloat_FromDouble(ns_);                                                        \
    } while (0)

static Py_ssize_t
count_arg(PyObject *arg)
{
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n <= 0 && !PyErr_Occurred()) {
        PyErr_SetString(PyExc_ValueError, "n must be positive");
    }
    return n;
}

/* membuf: MemBuf_FromMemory with a release callback, then drop. */
static PyObject *
wrap_membuf(PyObject *m, PyObject *arg)
{
    (void)m;
    Py_ssize_t n = count_arg(arg);
    if (n <= 0) {
        return NULL;
    }
    long released = 0;
    TIMED_LOOP(n, {
        PyObject *o = MemBuf_FromMemory(block, sizeof(block), 0, count_release, &released);
        if (o == NULL) {
            return NULL;
        }
        Py_DECREF(o);
    });
}

/* membuf without a callback (static memory). */
static PyObject *
wrap_membuf_nocallback(PyObject *m, PyObject *arg)
{
    (void)m;
    Py_ssize_t n = count_arg(arg);
    if (n <= 0) {
        return NULL;
    }
    const long released = 0;
    TIMED_LOOP(n, {
        PyObject *o = MemBuf_FromMemory(block, sizeof(block), 0, NULL, NULL);
        if (o == NULL) {
            return NULL;
        }
        Py_DECREF(o);
    });
}

/* membuf with a size: wrap cost must not depend on it. */
static PyObject *
wrap_membuf_size(PyObject *m, PyObject *args)
{
    (void)m;
    Py_ssize_t n;
    unsigned long long address, size;
    if (!PyArg_ParseTuple(args, "nKK", &n, &address, &size)) {
        return NULL;
    }
    long released = 0;
    TIMED_LOOP(n, {
        PyObject *o = MemBuf_FromMemory((void *)(uintptr_t)address, (size_t)size, 0,
                                        count_release, &released);
        if (o == NULL) {
            return NULL;
        }
        Py_DECREF(o);
    });
}

/* CPython's PyMemoryView_FromMemory (no lifetime tracking at all). */
static PyObject *
wrap_memoryview(PyObject *m, PyObject *arg)
{
    (void)m;
    Py_ssize_t n = count_arg(arg);
    if (n <= 0) {
        return NULL;
    }
    const long released = 0;
    TIMED_LOOP(n, {
        PyObject *o = PyMemoryView_FromMemory(block, sizeof(block), PyBUF_READ);
        if (o == NULL) {
            return NULL;
        }
        Py_DECREF(o);
    });
}

/* The floor: allocate and free one minimal object. */
typedef struct {
    PyObject_HEAD
} MinimalObject;

static PyTypeObject Minimal_Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "bench_capi.Minimal",
    .tp_basicsize = sizeof(MinimalObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
};

static PyObject *
floor_alloc(PyObject *m, PyObject *arg)
{
    (void)m;
    Py_ssize_t n = count_arg(arg);
    if (n <= 0) {
        return NULL;
    }
    const long released = 0;
    TIMED_LOOP(n, {
        PyObject *o = (PyObject *)PyObject_New(MinimalObject, &Minimal_Type);
        if (o == NULL) {
            return NULL;
        }
        Py_DECREF(o);
    });
}

/* One export cycle (PyObject_GetBuffer + PyBuffer_Release) of any object. */
static PyObject *
export_cycle(PyObject *m, PyObject *args)
{
    (void)m;
    Py_ssize_t n;
    PyObject *obj;
    int flags = PyBUF_SIMPLE;
    if (!PyArg_ParseTuple(args, "nO|i", &n, &obj, &flags)) {
        return NULL;
    }
    const long released = 0;
    TIMED_LOOP(n, {
        Py_buffer view;
        if (PyObject_GetBuffer(obj, &view, flags) < 0) {
            return NULL;
        }
        PyBuffer_Release(&view);
    });
}

static PyObject *
release_count(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    return PyLong_FromLong(atomic_load(&releases));
}

static PyMethodDef methods[] = {
    {"wrap_membuf", wrap_membuf, METH_O, NULL},
    {"wrap_membuf_nocallback", wrap_membuf_nocallback, METH_O, NULL},
    {"wrap_membuf_size", wrap_membuf_size, METH_VARARGS, NULL},
    {"wrap_memoryview", wrap_memoryview, METH_O, NULL},
    {"floor_alloc", floor_alloc, METH_O, NULL},
    {"export_cycle", export_cycle, METH_VARARGS, NULL},
    {"release_count", release_count, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "bench_capi", "C-level timing loops for membuf's benchmark.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit_bench_capi(void)
{
    if (import_membuf() < 0 || PyType_Ready(&Minimal_Type) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&module_def);
#ifdef Py_GIL_DISABLED
    /* The loops share no mutable state but `releases` (atomic): importing
     * this module keeps the GIL off, so threads run the loops at once. */
    if (module != NULL && PyUnstable_Module_SetGIL(module, Py_MOD_GIL_NOT_USED) < 0) {
        Py_DECREF(module);
        return NULL;
    }
#endif
    return module;
}
