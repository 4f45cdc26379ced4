/* The extension module membuf._membuf: the Buffer type, the C API capsule,
 * and from_address() for ctypes / cffi users.  Multi-phase init; the type
 * and the API table are static (one per process). */
#include "core.h"

#include <stdint.h>

/* The package version: one source, meson.build's project(version:), passed
 * in by src/membuf/meson.build (builds outside meson, such as the fuzzer,
 * have none). */
#ifndef MEMBUF_PACKAGE_VERSION
#define MEMBUF_PACKAGE_VERSION "0+unknown"
#endif

/* ------------------------------------------------------------------------ */
/* from_address(address, size, *, readonly=True, owner=None, on_release=None) */
/* ------------------------------------------------------------------------ */

enum { ARG_ADDRESS, ARG_SIZE, ARG_READONLY, ARG_OWNER, ARG_ON_RELEASE, NARGS };
static const char *const from_address_names[NARGS] = {"address", "size", "readonly", "owner",
                                                      "on_release"};
#define FROM_ADDRESS_POSITIONAL 2

/* Vectorcall arguments into values[] by name; keyword-only after the
 * positional ones.  -1 with TypeError on a bad call. */
static int
parse_from_address_args(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                        PyObject *values[NARGS])
{
    for (int i = 0; i < NARGS; i++) {
        values[i] = NULL;
    }
    if (nargs > FROM_ADDRESS_POSITIONAL) {
        PyErr_Format(PyExc_TypeError,
                     "from_address() takes 2 positional arguments but %zd were given", nargs);
        return -1;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) {
        values[i] = args[i];
    }
    Py_ssize_t nkw = kwnames != NULL ? MB_TUPLE_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *name = MB_TUPLE_ITEM(kwnames, k);
        int slot = -1;
        for (int i = 0; i < NARGS; i++) {
            if (PyUnicode_CompareWithASCIIString(name, from_address_names[i]) == 0) {
                slot = i;
                break;
            }
        }
        if (slot < 0) {
            PyErr_Format(PyExc_TypeError,
                         "from_address() got an unexpected keyword argument '%S'", name);
            return -1;
        }
        if (values[slot] != NULL) {
            PyErr_Format(PyExc_TypeError, "from_address() got multiple values for argument '%s'",
                         from_address_names[slot]);
            return -1;
        }
        values[slot] = args[nargs + k];
    }
    for (int i = 0; i < FROM_ADDRESS_POSITIONAL; i++) {
        if (values[i] == NULL) {
            PyErr_Format(PyExc_TypeError, "from_address() missing required argument '%s'",
                         from_address_names[i]);
            return -1;
        }
    }
    return 0;
}

/* A non-negative int no larger than max: -1 with TypeError / ValueError /
 * OverflowError naming the argument otherwise. */
static int
unsigned_arg(PyObject *obj, const char *name, unsigned long long max, unsigned long long *out)
{
    /* bool is an int, but True as an address or a size is an accident (as
     * for the shape entries of a layout). */
    if (!PyIndex_Check(obj) || PyBool_Check(obj)) {
        return membuf_type_error(PyExc_TypeError, obj, "%s must be an int", name);
    }
    PyObject *number = PyNumber_Index(obj);
    if (number == NULL) {
        return -1;
    }
    int overflow;
    long long value = PyLong_AsLongLongAndOverflow(number, &overflow);
    unsigned long long result = (unsigned long long)value;
    if (value == -1 && PyErr_Occurred()) {
        Py_DECREF(number);
        return -1;
    }
    if (overflow < 0 || (overflow == 0 && value < 0)) {
        Py_DECREF(number);
        PyErr_Format(PyExc_ValueError, "%s must not be negative", name);
        return -1;
    }
    if (overflow > 0) {
        result = PyLong_AsUnsignedLongLong(number);
        if (result == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            Py_DECREF(number);
            PyErr_Format(PyExc_OverflowError, "%s is too large", name);
            return -1;
        }
    }
    Py_DECREF(number);
    if (result > max) {
        PyErr_Format(PyExc_OverflowError, "%s is too large (at most %llu)", name, max);
        return -1;
    }
    *out = result;
    return 0;
}

static PyObject *
from_address(PyObject *module, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    (void)module;
    PyObject *values[NARGS];
    if (parse_from_address_args(args, nargs, kwnames, values) < 0) {
        return NULL;
    }
    PyObject *on_release = values[ARG_ON_RELEASE];
    if (on_release == Py_None) {
        on_release = NULL;
    }
    if (on_release != NULL && !PyCallable_Check(on_release)) {
        membuf_type_error(PyExc_TypeError, on_release, "on_release must be callable or None");
        return NULL;
    }
    /* From here on on_release is ours: every failure below calls it
     * (ownership passes on entry, as in the C API). */
    MemBuf_Spec spec = {0};
    spec.ctx = Py_XNewRef(on_release);
    spec.owner = values[ARG_OWNER] != Py_None ? values[ARG_OWNER] : NULL;
    unsigned long long address = 0, size = 0;
    int readonly = 1;
    int bad = unsigned_arg(values[ARG_ADDRESS], "address", UINTPTR_MAX, &address) < 0 ||
              unsigned_arg(values[ARG_SIZE], "size", PY_SSIZE_T_MAX, &size) < 0;
    if (!bad && values[ARG_READONLY] != NULL) {
        /* A safety switch: only True or False, never a truthy accident. */
        if (!PyBool_Check(values[ARG_READONLY])) {
            membuf_type_error(PyExc_TypeError, values[ARG_READONLY],
                              "readonly must be True or False");
            bad = 1;
        }
        else {
            readonly = values[ARG_READONLY] == Py_True;
        }
    }
    if (!bad && size > UINTPTR_MAX - address) {
        PyErr_SetString(PyExc_OverflowError, "address + size overflows the address space");
        bad = 1;
    }
    if (!bad && address == 0 && size > 0) {
        PyErr_Format(PyExc_ValueError, "address is 0 (NULL) but size is %llu", size);
        bad = 1;
    }
    if (bad) {
        if (on_release != NULL) {
            membuf_release_unwrapped(&spec, 1); /* only calls the callable */
        }
        return NULL;
    }
    spec.ptr = (const void *)(uintptr_t)address;
    spec.len = (size_t)size;
    spec.flags = readonly ? 0 : MEMBUF_WRITABLE;
    return membuf_from_spec(&spec, on_release != NULL);
}

/* address_of(obj): where obj's buffer export starts (inspection helper). */
static PyObject *
address_of(PyObject *module, PyObject *obj)
{
    (void)module;
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_FULL_RO) < 0) {
        return NULL;
    }
    PyObject *address = PyLong_FromVoidPtr(view.buf);
    PyBuffer_Release(&view);
    return address;
}

static PyObject *
clear_freelist(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    membuf_clear_freelist();
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"_rebuild", membuf_rebuild, METH_VARARGS,
     "_rebuild(data, format, shape, readonly)\n--\n\n"
     "Unpickle a Buffer: wrap data's memory (kept alive as owner) without copying."},
    {"_clear_freelist", clear_freelist, METH_NOARGS,
     "Empty the free list of Buffer objects (for allocation-failure tests)."},
    {"address_of", (PyCFunction)address_of, METH_O,
     "address_of(obj)\n--\n\n"
     "Address of the first item that obj exports through the buffer protocol\n"
     "(memoryview, bytes, NumPy arrays, Buffers, ...).  Proves zero-copy."},
    {"from_address", (PyCFunction)(void (*)(void))from_address, METH_FASTCALL | METH_KEYWORDS,
     "from_address(address, size, *, readonly=True, owner=None, on_release=None)\n--\n\n"
     "A Buffer over size bytes at address (an int, e.g. from ctypes or cffi),\n"
     "without copying.  owner is kept alive until the memory is released;\n"
     "on_release() is called exactly once when it is.  If from_address raises\n"
     "after accepting a callable on_release, on_release has already been called."},
    {NULL, NULL, 0, NULL},
};

/* ------------------------------------------------------------------------ */
/* Module                                                                   */
/* ------------------------------------------------------------------------ */

/* membuf._membuf.LIMITED_API: 0 in the default build, the Py_LIMITED_API
 * version (0x030B0000) in the abi3 build. */
#ifdef Py_LIMITED_API
#define MB_LIMITED_API Py_LIMITED_API
#else
#define MB_LIMITED_API 0
#endif

static int
module_exec(PyObject *module)
{
    if (membuf_type_ready() < 0) {
        return -1;
    }
    if (PyModule_AddObjectRef(module, "Buffer", (PyObject *)MEMBUF_TYPE) < 0) {
        return -1;
    }
    PyObject *capsule = PyCapsule_New((void *)&membuf_capi, MEMBUF_CAPSULE_NAME, NULL);
    if (capsule == NULL) {
        return -1;
    }
    if (PyModule_AddObject(module, "_C_API", capsule) < 0) {
        Py_DECREF(capsule);
        return -1;
    }
    if (PyModule_AddIntConstant(module, "ABI_VERSION", MEMBUF_ABI_VERSION) < 0 ||
        PyModule_AddIntConstant(module, "API_VERSION", MEMBUF_API_VERSION) < 0 ||
        PyModule_AddStringConstant(module, "__version__", MEMBUF_PACKAGE_VERSION) < 0) {
        return -1;
    }
    if (PyModule_AddIntConstant(module, "LIMITED_API", MB_LIMITED_API) < 0 ||
        PyModule_AddIntConstant(module, "_FREELIST_MAX", MEMBUF_FREELIST_MAX) < 0) {
        return -1;
    }
    return 0;
}

/* Subinterpreters: supported when they share the main interpreter's GIL
 * (every subinterpreter of 3.11, "legacy" ones from 3.12 on).  The type, the
 * free list and the C API table are one per process, which only a shared GIL
 * keeps safe, so an interpreter with its own GIL gets CPython's ImportError
 * ("does not support loading in subinterpreters" / "per-interpreter GIL"). */
static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
#ifdef Py_mod_multiple_interpreters
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_SUPPORTED},
#endif
#ifdef Py_mod_gil /* 3.13+: free-threaded CPython keeps the GIL off (see core.h, MB_LOCK) */
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static void
module_free(void *module)
{
    (void)module;
    membuf_clear_freelist();
}

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "membuf._membuf",
    .m_doc = "C core of membuf: zero-copy, lifetime-managed buffers over foreign memory.",
    .m_size = 0,
    .m_methods = module_methods,
    .m_slots = module_slots,
    .m_free = module_free,
};

PyMODINIT_FUNC
PyInit__membuf(void)
{
    return PyModuleDef_Init(&module_def);
}
