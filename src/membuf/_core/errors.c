/* Errors shared by every file.  The house style of messages:
 *   - ValueError for an operation on a released or release-pending Buffer:
 *     "operation forbidden on released membuf.Buffer object" (memoryview's).
 *   - BufferError from the buffer protocol and its neighbours (DLPack):
 *     "membuf.Buffer: <problem>", as memoryview's "memoryview: ...".
 *   - Misuse of a C API function names the function: "MemBuf_Release: ...".
 *   - Bad arguments name the argument and, for a wrong type, the type given:
 *     "<argument> must be <what>, not <type name>" (membuf_type_error, with
 *     %.200s for the foreign type's name, as CPython does).
 */
#include "core.h"

int
membuf_refuse(MemBufObject *self)
{
    if (MB_IS_RELEASED(self)) {
        PyErr_SetString(PyExc_ValueError, "operation forbidden on released membuf.Buffer object");
    }
    else if (self->flags & MB_GC_DEFERRED) {
        PyErr_SetString(PyExc_ValueError,
                        "operation forbidden on membuf.Buffer object with a pending release "
                        "(the garbage collector finalized it while a view was alive; its "
                        "memory is given back when the last view ends)");
    }
    else {
        PyErr_SetString(PyExc_ValueError,
                        "operation forbidden on membuf.Buffer object with a pending release "
                        "(release(defer=True) was called)");
    }
    return -1;
}

int
membuf_type_error(PyObject *exc, PyObject *obj, const char *format, ...)
{
    va_list va;
    va_start(va, format);
    PyObject *message = PyUnicode_FromFormatV(format, va);
    va_end(va);
    if (message == NULL) {
        return -1;
    }
#ifdef Py_LIMITED_API
    PyObject *name = PyType_GetName(Py_TYPE(obj));
    if (name != NULL) {
        PyErr_Format(exc, "%U, not %.200U", message, name);
        Py_DECREF(name);
    }
#else
    PyErr_Format(exc, "%U, not %.200s", message, Py_TYPE(obj)->tp_name);
#endif
    Py_DECREF(message);
    return -1;
}

PyObject *
membuf_type_name(PyObject *obj)
{
#ifdef Py_LIMITED_API
    return PyType_GetName(Py_TYPE(obj));
#else
    return PyUnicode_FromString(Py_TYPE(obj)->tp_name);
#endif
}
