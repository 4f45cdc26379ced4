/* An extension built for API version 1 (MEMBUF_TARGET_API_VERSION), as one
 * that must also run against an older membuf would be: it must import
 * against every membuf whose API version is at least 1, and must not see
 * what later versions added (MemBuf_IsReleased).  -DUSE_V2 makes it call
 * MemBuf_IsReleased anyway, which must not compile. */
#define MEMBUF_TARGET_API_VERSION 1
#include <membuf.h>

static PyObject *
wrap_empty(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    return MemBuf_FromMemory(NULL, 0, 0, NULL, NULL);
}

static PyObject *
target(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
#ifdef USE_V2
    return PyLong_FromLong(MemBuf_IsReleased(Py_None));
#else
    return PyLong_FromLong(MEMBUF_TARGET_API_VERSION);
#endif
}

/* reimport(): import_membuf() anew against whatever capsule membuf has now. */
static PyObject *
reimport(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    MemBuf_API = NULL;
    if (import_membuf() < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"wrap_empty", wrap_empty, METH_NOARGS, NULL},
    {"target", target, METH_NOARGS, NULL},
    {"reimport", reimport, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "target_v1", NULL, -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit_target_v1(void)
{
    if (import_membuf() < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&module_def);
#ifdef Py_GIL_DISABLED
    if (module != NULL && PyUnstable_Module_SetGIL(module, Py_MOD_GIL_NOT_USED) < 0) {
        Py_CLEAR(module);
    }
#endif
    return module;
}
