/* NumPy's answer to "wrap C memory": PyArray_SimpleNewFromData over the
 * pointer, made read-only, with a PyCapsule as the base object whose
 * destructor is the release callback (PyArray_SetBaseObject).
 *
 * wrap_loop(n) creates and drops one such array n times in C and returns
 * ns/op, like benchmarks/capi/bench_capi.c does for membuf. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#include <time.h>

static char block[4096];
static long releases;

static void
capsule_release(PyObject *capsule)
{
    (void)capsule;
    releases++;
}

static double
now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* A read-only 1-D uint8 array over ptr whose base capsule "releases" it. */
static PyObject *
wrap(char *ptr, npy_intp size)
{
    npy_intp dims[1] = {size};
    PyObject *arr = PyArray_SimpleNewFromData(1, dims, NPY_UBYTE, ptr);
    if (arr == NULL) {
        capsule_release(NULL);
        return NULL;
    }
    PyArray_CLEARFLAGS((PyArrayObject *)arr, NPY_ARRAY_WRITEABLE);
    PyObject *cap = PyCapsule_New(ptr, NULL, capsule_release);
    if (cap == NULL) {
        Py_DECREF(arr);
        capsule_release(NULL);
        return NULL;
    }
    if (PyArray_SetBaseObject((PyArrayObject *)arr, cap) < 0) { /* steals cap */
        Py_DECREF(arr);
        return NULL;
    }
    return arr;
}

static PyObject *
wrap_loop(PyObject *m, PyObject *arg)
{
    (void)m;
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n <= 0) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "n must be positive");
        }
        return NULL;
    }
    double start = now_ns();
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *o = wrap(block, (npy_intp)sizeof(block));
        if (o == NULL) {
            return NULL;
        }
        Py_DECREF(o);
    }
    return PyFloat_FromDouble((now_ns() - start) / (double)n);
}

static PyObject *
make(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    return wrap(block, (npy_intp)sizeof(block));
}

static PyObject *
release_count(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    return PyLong_FromLong(releases);
}

static PyMethodDef methods[] = {
    {"wrap_loop", wrap_loop, METH_O, NULL},
    {"make", make, METH_NOARGS, NULL},
    {"release_count", release_count, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "np_wrap", "NumPy C-API wrap loop for membuf's benchmark.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit_np_wrap(void)
{
    import_array();
    return PyModule_Create(&module_def);
}
