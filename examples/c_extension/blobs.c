/* A complete downstream extension: "a C library hands me a pointer".
 *
 * blobs.make(n) asks a (pretend) C library for an n-byte blob and returns it
 * to Python as a zero-copy, read-only membuf.Buffer.  The blob goes back to
 * the library exactly once: on buf.release(), at the end of `with buf:`, or
 * when the Buffer is collected -- never while a memoryview or NumPy array
 * still sees it.  blobs.freed() tells how many blobs were given back.
 *
 * Build: see setup.py beside this file (include_dirs=[membuf.get_include()]).
 */
#include <membuf.h>

#include <stdlib.h>
#include <string.h>

/* --- the pretend C library -------------------------------------------- */
typedef struct {
    size_t size;
    unsigned char data[];
} lib_blob;

static long blobs_freed = 0;

static lib_blob *
lib_make_blob(size_t size)
{
    lib_blob *blob = malloc(sizeof(lib_blob) + size);
    if (blob != NULL) {
        blob->size = size;
        memset(blob->data, 'x', size);
    }
    return blob;
}

static void
lib_free_blob(lib_blob *blob)
{
    blobs_freed++;
    free(blob);
}

/* --- the wrapper: ten lines -------------------------------------------- */
static void
give_back(void *ptr, size_t len, void *ctx)
{
    (void)ptr;
    (void)len;
    lib_free_blob(ctx);
}

static PyObject *
make(PyObject *module, PyObject *arg)
{
    (void)module;
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n < 0) {
        return PyErr_Occurred() ? NULL : PyErr_Format(PyExc_ValueError, "negative size");
    }
    lib_blob *blob = lib_make_blob((size_t)n);
    if (blob == NULL) {
        return PyErr_NoMemory();
    }
    /* On failure give_back has already run: no cleanup code here. */
    return MemBuf_FromMemory(blob->data, blob->size, 0, give_back, blob);
}

static PyObject *
freed(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    return PyLong_FromLong(blobs_freed);
}

static PyMethodDef methods[] = {
    {"make", make, METH_O, "make(n) -> membuf.Buffer over an n-byte blob"},
    {"freed", freed, METH_NOARGS, "number of blobs given back"},
    {NULL, NULL, 0, NULL},
};

static int
exec_module(PyObject *module)
{
    (void)module;
    return import_membuf(); /* 0, or -1 with ImportError set */
}

static PyModuleDef_Slot slots[] = {{Py_mod_exec, exec_module}, {0, NULL}};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, .m_name = "blobs", .m_methods = methods, .m_slots = slots,
};

PyMODINIT_FUNC
PyInit_blobs(void)
{
    return PyModuleDef_Init(&module_def);
}
