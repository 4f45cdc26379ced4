/* The extension module membuf._membuf: the Buffer type, the C API capsule,
 * the Python constructors (constructors.c) and their method table.
 * Multi-phase init; the type and the API table are static (one per
 * process); the interned keyword names are module state (per interpreter). */
#include "core.h"

#include <stdint.h>

/* The package version: one source, meson.build's project(version:), passed
 * in by src/membuf/meson.build (builds outside meson, such as the fuzzer,
 * have none). */
#ifndef MEMBUF_PACKAGE_VERSION
#define MEMBUF_PACKAGE_VERSION "0+unknown"
#endif

static PyObject *
clear_freelist(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    membuf_clear_freelist();
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"from_address", (PyCFunction)(void (*)(void))membuf_py_from_address,
     METH_FASTCALL | METH_KEYWORDS,
     "from_address(address, size=None, *, format=None, shape=None, strides=None, "
     "readonly=True, owner=None, on_release=None)\n--\n\n"
     "A Buffer over the memory at address, without copying.\n\n"
     "address is an int (or has __index__), or a ctypes pointer, array or\n"
     "object, or a cffi pointer or array: such an object is kept alive as the\n"
     "owner, gives the default size (arrays and objects: a larger size is\n"
     "refused) and the default\n"
     "format (its element type; char becomes 'B') and shape (its dimensions).\n"
     "size is in bytes; when None it is derived from format and shape.\n"
     "format (a struct-module / PEP 3118 code, default 'B'), shape and strides\n"
     "(in bytes) describe typed, multi-dimensional memory, checked against\n"
     "size as MemBuf_FromSpec checks them.  owner is kept alive until the\n"
     "memory is released; on_release() is called exactly once when it is.\n"
     "If from_address raises after accepting a callable on_release,\n"
     "on_release has already been called."},
    {"from_buffer", (PyCFunction)(void (*)(void))membuf_py_from_buffer,
     METH_FASTCALL | METH_KEYWORDS,
     "from_buffer(obj, /, *, readonly=None, format=None, shape=None, strides=None, "
     "on_release=None)\n--\n\n"
     "A Buffer over obj's memory (any buffer exporter), without copying,\n"
     "holding one export of obj until the Buffer is released: obj stays\n"
     "locked (a bytearray cannot resize, a SharedMemory cannot close) exactly\n"
     "as long as the Buffer's memory is in use.  readonly=None follows obj;\n"
     "readonly=False asks obj for writable memory (BufferError if it has\n"
     "none); readonly=True makes a read-only Buffer.  Without format, shape\n"
     "or strides the Buffer has obj's own layout; with any of them they\n"
     "reinterpret obj's C-contiguous bytes (format defaults to obj's), checked\n"
     "against its size.  on_release() is called exactly once, after the\n"
     "export of obj has ended.  If from_buffer raises after accepting a\n"
     "callable on_release, on_release has already been called."},
    {"address_of", (PyCFunction)membuf_py_address_of, METH_O,
     "address_of(obj, /)\n--\n\n"
     "Address of the first item that obj exports through the buffer protocol\n"
     "(memoryview, bytes, NumPy arrays, Buffers, ...).  Proves zero-copy."},
    {"_rebuild", membuf_rebuild, METH_VARARGS,
     "_rebuild(data, format, shape, readonly)\n--\n\n"
     "Unpickle a Buffer: wrap data's memory (kept alive as owner) without copying."},
    {"_clear_freelist", clear_freelist, METH_NOARGS,
     "Empty the free list of Buffer objects (for allocation-failure tests)."},
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
    if (membuf_type_ready() < 0 || membuf_module_state_init(module) < 0) {
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

static int
module_clear(PyObject *module)
{
    membuf_module_state_clear(module);
    return 0;
}

static void
module_free(void *module)
{
    membuf_module_state_clear(module);
    membuf_clear_freelist();
}

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "membuf._membuf",
    .m_doc = "C core of membuf: zero-copy, lifetime-managed buffers over foreign memory.",
    .m_size = sizeof(membuf_module_state),
    .m_methods = module_methods,
    .m_slots = module_slots,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC
PyInit__membuf(void)
{
    return PyModuleDef_Init(&module_def);
}
