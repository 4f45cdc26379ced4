/* The Python face of the fake C library: drives every membuf C API entry
 * point for the tests.  This file owns the shared API pointer and calls
 * import_membuf(); fakelib.c uses it through MEMBUF_NO_IMPORT. */
#define MEMBUF_UNIQUE_SYMBOL fakelib_membuf_api
#include <membuf.h>

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "fakelib.h"

PyObject *fakelib_reimport(PyObject *module, PyObject *unused);
PyObject *fakelib_wrap_unimported(PyObject *module, PyObject *arg);
PyObject *fakelib_spec_unimported(PyObject *module, PyObject *arg);
PyObject *fakelib_release_unimported(PyObject *module, PyObject *arg);
PyObject *fakelib_fake_capsule(PyObject *module, PyObject *args);

static Py_ssize_t
id_arg(PyObject *arg)
{
    Py_ssize_t id = PyLong_AsSsize_t(arg);
    if (id == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (fakelib_releases(id) < 0) {
        PyErr_Format(PyExc_ValueError, "fakelib: unknown block id %zd", id);
        return -1;
    }
    return id;
}

/* alloc(len, null=False) -> id */
static PyObject *
py_alloc(PyObject *module, PyObject *args, PyObject *kwargs)
{
    (void)module;
    static char *names[] = {"len", "null", NULL};
    Py_ssize_t len;
    int null_memory = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "n|p", names, &len, &null_memory)) {
        return NULL;
    }
    if (len < 0) {
        PyErr_SetString(PyExc_ValueError, "fakelib: negative len");
        return NULL;
    }
    Py_ssize_t id = fakelib_alloc((size_t)len, null_memory);
    return id < 0 ? NULL : PyLong_FromSsize_t(id);
}

/* new(len, flags=0) -> (Buffer, id): the everyday path, MemBuf_FromMemory
 * called from the second C file through the shared pointer. */
static PyObject *
py_new(PyObject *module, PyObject *args)
{
    (void)module;
    Py_ssize_t len;
    int flags = 0;
    if (!PyArg_ParseTuple(args, "n|i", &len, &flags)) {
        return NULL;
    }
    Py_ssize_t id = fakelib_alloc((size_t)len, 0);
    if (id < 0) {
        return NULL;
    }
    PyObject *buf = fakelib_wrap(id, flags);
    if (buf == NULL) {
        return NULL;
    }
    return Py_BuildValue("Nn", buf, id);
}

/* from_memory(id, flags=0) -> Buffer: MemBuf_FromMemory over block id. */
static PyObject *
py_from_memory(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *id_obj;
    int flags = 0;
    if (!PyArg_ParseTuple(args, "O|i", &id_obj, &flags)) {
        return NULL;
    }
    Py_ssize_t id = id_arg(id_obj);
    if (id < 0) {
        return NULL;
    }
    return fakelib_wrap(id, flags);
}

/* from_memory_len(len) -> (result or exception, releases): MemBuf_FromMemory
 * over a static byte with an arbitrary (possibly absurd) len and a counting
 * callback; the callback checks ptr and len. */
static unsigned char static_byte;
static size_t static_len;
static long static_releases;

static void
static_release(void *ptr, size_t len, void *ctx)
{
    assert(ptr == &static_byte);
    assert(len == static_len);
    assert(ctx == &static_releases);
    (void)ptr;
    (void)len;
    (void)ctx;
    static_releases++;
}

static PyObject *
py_from_memory_len(PyObject *module, PyObject *arg)
{
    (void)module;
    size_t len = PyLong_AsSize_t(arg);
    if (len == (size_t)-1 && PyErr_Occurred()) {
        return NULL;
    }
    static_len = len;
    static_releases = 0;
    PyObject *buf = MemBuf_FromMemory(&static_byte, len, 0, static_release, &static_releases);
    if (buf == NULL) {
        assert(static_releases == 1);
        return NULL;
    }
    return buf;
}

static PyObject *
py_static_releases(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    return PyLong_FromLong(static_releases);
}

/* Fill a Py_ssize_t array from a sequence of ints; returns the count. */
static int
ssize_array(PyObject *seq, Py_ssize_t *out, int max, const char *what)
{
    PyObject *fast = PySequence_Fast(seq, what);
    if (fast == NULL) {
        return -1;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    if (n > max) {
        Py_DECREF(fast);
        PyErr_Format(PyExc_ValueError, "fakelib: %s has more than %d entries", what, max);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        out[i] = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(fast, i));
        if (out[i] == -1 && PyErr_Occurred()) {
            Py_DECREF(fast);
            return -1;
        }
    }
    Py_DECREF(fast);
    return (int)n;
}

/* from_spec(id, *, format=None, ndim=0, shape=None, strides=None, flags=0,
 *           owner=None, release=True, null=False) -> Buffer
 * MemBuf_FromSpec over block id; every field settable, including bad ones.
 * null=True passes ptr = NULL (with the block's len). */
static PyObject *
py_from_spec(PyObject *module, PyObject *args, PyObject *kwargs)
{
    (void)module;
    static char *names[] = {"id",    "format",  "ndim", "shape", "strides",
                            "flags", "owner",   "release", NULL};
    PyObject *id_obj, *shape_obj = Py_None, *strides_obj = Py_None, *owner = Py_None;
    const char *format = NULL;
    int ndim = 0, flags = 0, release = 1;
    Py_ssize_t shape[MEMBUF_MAX_NDIM + 2], strides[MEMBUF_MAX_NDIM + 2];
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|$ziOOiOp", names, &id_obj, &format, &ndim,
                                     &shape_obj, &strides_obj, &flags, &owner, &release)) {
        return NULL;
    }
    Py_ssize_t id = id_arg(id_obj);
    if (id < 0) {
        return NULL;
    }
    MemBuf_Spec spec;
    memset(&spec, 0, sizeof(spec));
    spec.ptr = fakelib_memory(id);
    spec.len = fakelib_len(id);
    spec.flags = flags;
    spec.ndim = ndim;
    spec.format = format;
    if (shape_obj != Py_None) {
        if (ssize_array(shape_obj, shape, MEMBUF_MAX_NDIM + 2, "shape") < 0) {
            return NULL;
        }
        spec.shape = shape;
    }
    if (strides_obj != Py_None) {
        if (ssize_array(strides_obj, strides, MEMBUF_MAX_NDIM + 2, "strides") < 0) {
            return NULL;
        }
        spec.strides = strides;
    }
    spec.owner = owner != Py_None ? owner : NULL;
    if (release) {
        spec.release = fakelib_release;
        spec.ctx = (void *)(intptr_t)id;
    }
    return MemBuf_FromSpec(&spec);
}

static PyObject *
py_from_spec_null(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    return MemBuf_FromSpec(NULL);
}

/* release(obj, flags=0) -> None: MemBuf_Release. */
static PyObject *
py_release(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *obj;
    int flags = 0;
    if (!PyArg_ParseTuple(args, "O|i", &obj, &flags)) {
        return NULL;
    }
    if (MemBuf_Release(obj, flags) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
py_release_null(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    if (MemBuf_Release(NULL, 0) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* check(obj) -> int: MemBuf_Check (obj None means NULL). */
static PyObject *
py_check(PyObject *module, PyObject *obj)
{
    (void)module;
    int result = MemBuf_Check(obj == Py_None ? NULL : obj);
    assert(!PyErr_Occurred());
    return PyLong_FromLong(result);
}

/* is_released(obj) -> int: MemBuf_IsReleased (obj None means NULL). */
static PyObject *
py_is_released(PyObject *module, PyObject *obj)
{
    (void)module;
    int result = MemBuf_IsReleased(obj == Py_None ? NULL : obj);
    if (result < 0) {
        return NULL;
    }
    return PyLong_FromLong(result);
}

/* getbuffer(obj, flags) -> dict of the Py_buffer fields of one export,
 * released before returning (the counts are observed by the tests). */
static PyObject *
ssize_tuple(int n, const Py_ssize_t *values)
{
    if (values == NULL) {
        Py_RETURN_NONE;
    }
    PyObject *t = PyTuple_New(n);
    if (t == NULL) {
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        PyObject *v = PyLong_FromSsize_t(values[i]);
        if (v == NULL) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, i, v);
    }
    return t;
}

static PyObject *
py_getbuffer(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *obj;
    int flags;
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "Oi", &obj, &flags)) {
        return NULL;
    }
    if (PyObject_GetBuffer(obj, &view, flags) < 0) {
        return NULL; /* view.obj is unspecified here: bytes leaves it as is */
    }
    assert(view.obj == obj);
    PyObject *result = Py_BuildValue(
        "{s:N,s:n,s:i,s:n,s:i,s:z,s:N,s:N,s:O}", "buf", PyLong_FromVoidPtr(view.buf), "len",
        view.len, "readonly", view.readonly, "itemsize", view.itemsize, "ndim", view.ndim,
        "format", view.format, "shape", ssize_tuple(view.ndim, view.shape), "strides",
        ssize_tuple(view.ndim, view.strides), "suboffsets",
        view.suboffsets == NULL ? Py_None : Py_True);
    PyBuffer_Release(&view);
    return result;
}

/* wrap_with_hook(id, hook, flags=0) -> Buffer whose release callback gives
 * the block back and then calls hook() (re-entrancy tests); an exception
 * from hook goes to sys.unraisablehook, as a C callback cannot raise. */
typedef struct {
    Py_ssize_t id;
    PyObject *hook;
} hook_ctx;

static void
release_with_hook(void *ptr, size_t len, void *ctx)
{
    hook_ctx *h = ctx;
    fakelib_release(ptr, len, (void *)(intptr_t)h->id);
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyObject *res = PyObject_CallNoArgs(h->hook);
    if (res == NULL) {
        PyErr_WriteUnraisable(h->hook);
    }
    Py_XDECREF(res);
    PyErr_Restore(type, value, tb);
    Py_DECREF(h->hook);
    free(h);
}

static PyObject *
py_wrap_with_hook(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *id_obj, *hook;
    int flags = 0;
    if (!PyArg_ParseTuple(args, "OO|i", &id_obj, &hook, &flags)) {
        return NULL;
    }
    Py_ssize_t id = id_arg(id_obj);
    if (id < 0) {
        return NULL;
    }
    hook_ctx *h = malloc(sizeof(hook_ctx));
    if (h == NULL) {
        return PyErr_NoMemory();
    }
    h->id = id;
    h->hook = Py_NewRef(hook);
    return MemBuf_FromMemory(fakelib_memory(id), fakelib_len(id), flags, release_with_hook, h);
}

static PyObject *
py_releases(PyObject *module, PyObject *arg)
{
    (void)module;
    Py_ssize_t id = id_arg(arg);
    return id < 0 ? NULL : PyLong_FromLong(fakelib_releases(id));
}

static PyObject *
py_outstanding(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    return PyLong_FromSsize_t(fakelib_outstanding());
}

static PyObject *
py_address(PyObject *module, PyObject *arg)
{
    (void)module;
    Py_ssize_t id = id_arg(arg);
    return id < 0 ? NULL : PyLong_FromVoidPtr(fakelib_memory(id));
}

static PyObject *
py_fail_next(PyObject *module, PyObject *arg)
{
    (void)module;
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) {
        return NULL;
    }
    fakelib_fail_next(n);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"alloc", (PyCFunction)(void (*)(void))py_alloc, METH_VARARGS | METH_KEYWORDS, NULL},
    {"new", py_new, METH_VARARGS, NULL},
    {"from_memory", py_from_memory, METH_VARARGS, NULL},
    {"from_memory_len", py_from_memory_len, METH_O, NULL},
    {"static_releases", py_static_releases, METH_NOARGS, NULL},
    {"from_spec", (PyCFunction)(void (*)(void))py_from_spec, METH_VARARGS | METH_KEYWORDS, NULL},
    {"from_spec_null", py_from_spec_null, METH_NOARGS, NULL},
    {"release", py_release, METH_VARARGS, NULL},
    {"release_null", py_release_null, METH_NOARGS, NULL},
    {"check", py_check, METH_O, NULL},
    {"is_released", py_is_released, METH_O, NULL},
    {"getbuffer", py_getbuffer, METH_VARARGS, NULL},
    {"wrap_with_hook", py_wrap_with_hook, METH_VARARGS, NULL},
    {"releases", py_releases, METH_O, NULL},
    {"outstanding", py_outstanding, METH_NOARGS, NULL},
    {"address", py_address, METH_O, NULL},
    {"fail_next", py_fail_next, METH_O, NULL},
    {"reimport", fakelib_reimport, METH_NOARGS, NULL},
    {"wrap_unimported", fakelib_wrap_unimported, METH_O, NULL},
    {"spec_unimported", fakelib_spec_unimported, METH_O, NULL},
    {"release_unimported", fakelib_release_unimported, METH_O, NULL},
    {"fake_capsule", fakelib_fake_capsule, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "fakelib", "A fake C library that hands out memory through membuf.",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit_fakelib(void)
{
    if (import_membuf() < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL) {
        return NULL;
    }
#ifdef Py_GIL_DISABLED
    /* Thread-safe (fakelib.c locks its records): keep the GIL off. */
    if (PyUnstable_Module_SetGIL(m, Py_MOD_GIL_NOT_USED) < 0) {
        Py_DECREF(m);
        return NULL;
    }
#endif
    if (PyModule_AddIntConstant(m, "WRITABLE", MEMBUF_WRITABLE) < 0 ||
        PyModule_AddIntConstant(m, "DEFER", MEMBUF_DEFER) < 0 ||
        PyModule_AddIntConstant(m, "ABI_VERSION", MEMBUF_ABI_VERSION) < 0 ||
        PyModule_AddIntConstant(m, "API_VERSION", MEMBUF_API_VERSION) < 0 ||
        PyModule_AddIntConstant(m, "MAX_NDIM", MEMBUF_MAX_NDIM) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
