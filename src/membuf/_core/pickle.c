/* Pickling: Buffer.__reduce_ex__() and membuf._membuf._rebuild().
 *
 * The pickle of a Buffer is the call (a stable format: pickles outlive
 * versions; never change the meaning of these arguments)
 *
 *     membuf._membuf._rebuild(data, format, shape, readonly)
 *
 * where data is, for protocol >= 5 and a C-contiguous Buffer, a
 * pickle.PickleBuffer over the Buffer: with a buffer_callback the memory goes
 * out-of-band without a copy; without one the pickler writes it in-band as
 * bytes (read-only) or bytearray (writable).  Otherwise data is a bytes
 * (read-only) or bytearray (writable) copy of the contents in C order.
 *
 * _rebuild wraps the memory of whatever it receives without copying, holding
 * an export of it (so a bytearray cannot be resized under the Buffer) until
 * the new Buffer is released, and keeping the object itself as the owner:
 * from_buffer(data, format=format, shape=shape) (constructors.c).
 * The new Buffer is writable only if the original was and the received
 * memory is (NumPy's rule: an out-of-band buffer handed back read-only stays
 * read-only; in-band pickles of writable Buffers carry a bytearray).
 *
 * Only limited-API calls (Py_LIMITED_API 3.11) are used here.
 */
#include "core.h"

#include <string.h>

/* ------------------------------------------------------------------------ */
/* __reduce_ex__                                                            */
/* ------------------------------------------------------------------------ */

/* The bytes (read-only) or bytearray (writable) of self, in C order. */
static PyObject *
inband_copy(MemBufObject *self)
{
    if (self->flags & MEMBUF_WRITABLE) {
        return PyByteArray_FromObject((PyObject *)self);
    }
    return PyBytes_FromObject((PyObject *)self);
}

/* pickle.PickleBuffer(self): holds an export of self until the pickler is
 * done with it.  (PyPickleBuffer_FromObject is not in the limited API.) */
static PyObject *
pickle_buffer(MemBufObject *self)
{
    PyObject *pickle = PyImport_ImportModule("pickle");
    if (pickle == NULL) {
        return NULL;
    }
    PyObject *type = PyObject_GetAttrString(pickle, "PickleBuffer");
    Py_DECREF(pickle);
    if (type == NULL) {
        return NULL;
    }
    PyObject *result = PyObject_CallFunctionObjArgs(type, (PyObject *)self, NULL);
    Py_DECREF(type);
    return result;
}

static PyObject *
rebuild_function(void)
{
    PyObject *module = PyImport_ImportModule("membuf._membuf");
    if (module == NULL) {
        return NULL;
    }
    PyObject *function = PyObject_GetAttrString(module, "_rebuild");
    Py_DECREF(module);
    return function;
}

PyObject *
membuf_reduce_ex(MemBufObject *self, PyObject *protocol_obj)
{
    long protocol = PyLong_AsLong(protocol_obj);
    if (protocol == -1 && PyErr_Occurred()) {
        return NULL;
    }
    /* After __index__ (which may have released us), before any export. */
    MB_CHECK_RELEASED(self, NULL);
    PyObject *function = rebuild_function();
    if (function == NULL) {
        return NULL;
    }
    PyObject *data = protocol >= 5 && (self->flags & MB_C_CONTIG) ? pickle_buffer(self)
                                                                   : inband_copy(self);
    PyObject *format = NULL, *shape = NULL, *result = NULL;
    if (data == NULL) {
        goto done; /* no further calls with an exception set */
    }
    format = PyUnicode_FromString(membuf_format(self));
    shape = format != NULL ? membuf_ssize_tuple(membuf_ndim(self), membuf_shape(self)) : NULL;
    if (shape == NULL) {
        goto done;
    }
    result = Py_BuildValue("(O(OOOO))", function, data, format, shape,
                           (self->flags & MEMBUF_WRITABLE) ? Py_False : Py_True);
done:
    Py_DECREF(function);
    Py_XDECREF(data);
    Py_XDECREF(format);
    Py_XDECREF(shape);
    return result;
}

/* ------------------------------------------------------------------------ */
/* _rebuild                                                                 */
/* ------------------------------------------------------------------------ */

/* Shape tuple of a pickle: at most MEMBUF_MAX_NDIM ints (not bools, which
 * no pickler of ours writes).  Negative entries are left to
 * membuf_from_spec, which names them. */
static int
parse_shape(PyObject *tuple, Py_ssize_t *shape, int *ndim)
{
    Py_ssize_t n = PyTuple_Size(tuple);
    if (n > MEMBUF_MAX_NDIM) {
        PyErr_Format(PyExc_ValueError, "_rebuild: shape has %zd dimensions (at most %d)", n,
                     MEMBUF_MAX_NDIM);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyTuple_GetItem(tuple, i);
        if (!PyLong_Check(item) || PyBool_Check(item)) {
            return membuf_type_error(PyExc_TypeError, item, "_rebuild: shape[%zd] must be an int",
                                     i);
        }
        shape[i] = PyLong_AsSsize_t(item);
        if (shape[i] == -1 && PyErr_Occurred()) {
            return -1;
        }
    }
    *ndim = (int)n;
    return 0;
}

PyObject *
membuf_rebuild(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *data, *format_obj, *shape_obj, *readonly_obj;
    if (!PyArg_ParseTuple(args, "OUO!O!:_rebuild", &data, &format_obj, &PyTuple_Type, &shape_obj,
                          &PyBool_Type, &readonly_obj)) {
        return NULL;
    }
    Py_ssize_t format_len;
    const char *format = PyUnicode_AsUTF8AndSize(format_obj, &format_len);
    if (format == NULL) {
        return NULL;
    }
    if ((size_t)format_len != strlen(format)) {
        PyErr_SetString(PyExc_ValueError, "_rebuild: format contains a NUL character");
        return NULL;
    }
    Py_ssize_t shape[MEMBUF_MAX_NDIM];
    MemBuf_Spec layout = {0};
    if (parse_shape(shape_obj, shape, &layout.ndim) < 0) {
        return NULL;
    }
    layout.format = format;
    layout.shape = shape; /* never NULL: ndim 0 means one item */
    /* Writable only if the original was and the received memory is. */
    return membuf_from_exporter(data, readonly_obj == Py_True ? MB_FORCE_READONLY
                                                              : MB_FOLLOW_EXPORTER,
                                &layout, NULL);
}
