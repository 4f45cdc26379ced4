/* A third C file with its own, file-static API pointer (the default mode of
 * membuf.h): used to test import_membuf() itself -- version checks against
 * a fake capsule, and what the API does before import_membuf() ran. */
#include <membuf.h>

#include "fakelib.h"

/* import_membuf() anew (forgetting any earlier import): None or ImportError. */
PyObject *
fakelib_reimport(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    MemBuf_API = NULL;
    if (import_membuf() < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* Forget the import, then call MemBuf_FromMemory over block id: must raise
 * RuntimeError and still give the block back (contract 3). */
PyObject *
fakelib_wrap_unimported(PyObject *module, PyObject *arg)
{
    (void)module;
    Py_ssize_t id = PyLong_AsSsize_t(arg);
    if (id == -1 && PyErr_Occurred()) {
        return NULL;
    }
    MemBuf_API = NULL;
    return MemBuf_FromMemory(fakelib_memory(id), 0, 0, fakelib_release, (void *)(intptr_t)id);
}

/* The same for MemBuf_FromSpec and MemBuf_Release. */
PyObject *
fakelib_spec_unimported(PyObject *module, PyObject *arg)
{
    (void)module;
    Py_ssize_t id = PyLong_AsSsize_t(arg);
    if (id == -1 && PyErr_Occurred()) {
        return NULL;
    }
    MemBuf_Spec spec = {0};
    spec.ptr = fakelib_memory(id);
    spec.release = fakelib_release;
    spec.ctx = (void *)(intptr_t)id;
    MemBuf_API = NULL;
    return MemBuf_FromSpec(&spec);
}

PyObject *
fakelib_release_unimported(PyObject *module, PyObject *arg)
{
    (void)module;
    MemBuf_API = NULL;
    if (MemBuf_Release(arg, 0) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* A capsule with the real table's entries but the given version numbers,
 * to stand in for membuf._membuf._C_API in version-check tests. */
static MemBuf_CAPI fake_table;

PyObject *
fakelib_fake_capsule(PyObject *module, PyObject *args)
{
    (void)module;
    unsigned int abi, api;
    if (!PyArg_ParseTuple(args, "II", &abi, &api)) {
        return NULL;
    }
    const MemBuf_CAPI *real = (const MemBuf_CAPI *)PyCapsule_Import(MEMBUF_CAPSULE_NAME, 0);
    if (real == NULL) {
        return NULL;
    }
    fake_table = *real;
    fake_table.abi_version = abi;
    fake_table.api_version = api;
    return PyCapsule_New(&fake_table, MEMBUF_CAPSULE_NAME, NULL);
}
