/* What Python code sees of a Buffer: len / index / slice, ==,
 * repr, tobytes(), hex(), release(), and the context manager.
 *
 * Rule for every operation that touches the memory: MB_CHECK_RELEASED
 * (core.h), again *after* anything that can run Python code (__index__,
 * another object's buffer export), because that code may have released the
 * Buffer.
 *
 * Typed and multi-dimensional Buffers delegate element access to a
 * memoryview of themselves, which holds an export while it works: the
 * memory cannot be released under it, and the semantics are memoryview's.
 */
#include "core.h"

/* A memoryview over self (an export), or NULL with ValueError if released. */
static PyObject *
as_memoryview(MemBufObject *self)
{
    return PyMemoryView_FromObject((PyObject *)self);
}

static int
is_byte_vector(const MemBufObject *self)
{
    return self->format == NULL && self->ndim == 1;
}

/* ------------------------------------------------------------------------ */
/* len, indexing, slicing                                                   */
/* ------------------------------------------------------------------------ */

Py_ssize_t
membuf_length(MemBufObject *self)
{
    MB_CHECK_RELEASED(self, -1);
    if (self->ndim == 0) {
        /* memoryview's rule since CPython 3.12 (3.11 answered 1): the same
         * on every version. */
        PyErr_SetString(PyExc_TypeError, "0-dim memory has no length");
        return -1;
    }
    return self->shape[0];
}

/* Item i (already made non-negative by the caller where it could be). */
PyObject *
membuf_item(MemBufObject *self, Py_ssize_t i)
{
    MB_CHECK_RELEASED(self, NULL);
    if (self->ndim == 0) {
        PyErr_SetString(PyExc_TypeError, "invalid indexing of 0-dim memory");
        return NULL;
    }
    if (i < 0 || i >= self->shape[0]) {
        PyErr_SetString(PyExc_IndexError, "index out of bounds on dimension 1");
        return NULL;
    }
    if (is_byte_vector(self)) {
        return PyLong_FromLong(*(unsigned char *)(self->buf + i * self->strides[0]));
    }
    PyObject *view = as_memoryview(self);
    if (view == NULL) {
        return NULL;
    }
    PyObject *item = PySequence_GetItem(view, i);
    Py_DECREF(view);
    return item;
}

static PyObject *
membuf_slice(MemBufObject *self, PyObject *key)
{
    Py_ssize_t start, stop, step, count;
    Py_ssize_t shape[MEMBUF_MAX_NDIM], strides[MEMBUF_MAX_NDIM];

    if (PySlice_Unpack(key, &start, &stop, &step) < 0) {
        return NULL;
    }
    /* __index__ of the slice's parts may have released us. */
    MB_CHECK_RELEASED(self, NULL);
    if (self->ndim == 0) {
        PyErr_SetString(PyExc_TypeError, "invalid indexing of 0-dim memory");
        return NULL;
    }
    count = PySlice_AdjustIndices(self->shape[0], &start, &stop, step);
    memcpy(shape, self->shape, (size_t)self->ndim * sizeof(Py_ssize_t));
    memcpy(strides, self->strides, (size_t)self->ndim * sizeof(Py_ssize_t));
    shape[0] = count;
    /* Offsets are bounded by the memory only where elements exist: in an
     * empty layout (nbytes 0) strides are arbitrary, and a stride along a
     * dimension of at most one item is never used.  There the new stride is
     * stride * step (memoryview's rule) unless that overflows, and the
     * address stays put; elsewhere nothing can overflow. */
    char *buf = self->buf;
    Py_ssize_t stride = self->strides[0];
    if (self->nbytes > 0 && count > 0) {
        buf += start * stride;
    }
    size_t stride_size = stride < 0 ? (size_t)0 - (size_t)stride : (size_t)stride;
    size_t step_size = step < 0 ? (size_t)0 - (size_t)step : (size_t)step; /* step != 0 */
    if ((self->nbytes > 0 && count > 1) || stride_size <= (size_t)PY_SSIZE_T_MAX / step_size) {
        strides[0] = stride * step;
    }
    return membuf_new_view(self, buf, self->ndim, shape, strides);
}

PyObject *
membuf_subscript(MemBufObject *self, PyObject *key)
{
    MB_CHECK_RELEASED(self, NULL);
    if (PyIndex_Check(key)) {
        Py_ssize_t i = PyNumber_AsSsize_t(key, PyExc_IndexError);
        if (i == -1 && PyErr_Occurred()) {
            return NULL;
        }
        /* __index__ may have released us: checked again here. */
        MB_CHECK_RELEASED(self, NULL);
        if (self->ndim > 0 && i < 0) {
            i += self->shape[0];
        }
        return membuf_item(self, i);
    }
    if (PySlice_Check(key)) {
        return membuf_slice(self, key);
    }
    /* Tuples, Ellipsis, ...: memoryview's rules and errors. */
    PyObject *view = as_memoryview(self);
    if (view == NULL) {
        return NULL;
    }
    PyObject *result = PyObject_GetItem(view, key);
    Py_DECREF(view);
    return result;
}

int
membuf_ass_subscript(MemBufObject *self, PyObject *key, PyObject *value)
{
    PyObject *view = as_memoryview(self);
    if (view == NULL) {
        return -1;
    }
    int rc = value != NULL ? PyObject_SetItem(view, key, value) : PyObject_DelItem(view, key);
    Py_DECREF(view);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* ==                                                                       */
/* ------------------------------------------------------------------------ */

/* A format of unsigned bytes: NULL ("B" implied), "B", "@B", "=B", ... */
static int
is_unsigned_bytes_format(const char *format)
{
    const char *code = format != NULL ? membuf_native_code(format) : "B";
    return code != NULL && code[0] == 'B' && code[1] == '\0';
}

/* Equal by content to any bytes-like object, as memoryview is.  A released
 * Buffer is equal only to itself (memoryview's rule too). */
PyObject *
membuf_richcompare(PyObject *obj, PyObject *other, int op)
{
    MemBufObject *self = (MemBufObject *)obj;
    Py_buffer theirs;
    int equal;

    if (op != Py_EQ && op != Py_NE) {
        Py_RETURN_NOTIMPLEMENTED;
    }
    if (obj == other) {
        equal = 1;
        goto done;
    }
    if (MB_REFUSES_WORK(self)) {
        equal = 0;
        goto done;
    }
    if (!PyObject_CheckBuffer(other)) {
        Py_RETURN_NOTIMPLEMENTED;
    }
    if (PyObject_GetBuffer(other, &theirs, PyBUF_FULL_RO) < 0) {
        PyErr_Clear();
        Py_RETURN_NOTIMPLEMENTED;
    }
    /* other's export may have run code that released us */
    if (MB_REFUSES_WORK(self)) {
        PyBuffer_Release(&theirs);
        equal = 0;
        goto done;
    }
    if ((self->flags & MB_COMPACT) && theirs.ndim == 1 && is_unsigned_bytes_format(theirs.format) &&
        PyBuffer_IsContiguous(&theirs, 'C')) {
        equal = theirs.len == self->nbytes && memcmp(self->buf, theirs.buf, (size_t)self->nbytes) == 0;
        PyBuffer_Release(&theirs);
        goto done;
    }
    PyBuffer_Release(&theirs);
    PyObject *view = as_memoryview(self);
    if (view == NULL) {
        return NULL;
    }
    PyObject *result = PyObject_RichCompare(view, other, op);
    Py_DECREF(view);
    return result;

done:
    return PyBool_FromLong(op == Py_EQ ? equal : !equal);
}

/* ------------------------------------------------------------------------ */
/* repr                                                                     */
/* ------------------------------------------------------------------------ */

PyObject *
membuf_repr(MemBufObject *self)
{
    const char *access = (self->flags & MEMBUF_WRITABLE) ? "writable" : "read-only";
    PyObject *state;
    if (MB_IS_RELEASED(self)) {
        state = PyUnicode_FromString(", released");
    }
    else if (self->flags & MB_PENDING) {
        state = PyUnicode_FromFormat(", release pending on %zd export%s", self->exports,
                                     self->exports == 1 ? "" : "s");
    }
    else if (self->exports > 0) {
        state = PyUnicode_FromFormat(", %zd export%s", self->exports,
                                     self->exports == 1 ? "" : "s");
    }
    else {
        state = PyUnicode_FromString("");
    }
    if (state == NULL) {
        return NULL;
    }
    PyObject *result;
    if (self->flags & MB_COMPACT) {
        result = PyUnicode_FromFormat("<membuf.Buffer address=%p nbytes=%zd %s%U>", self->buf,
                                      self->nbytes, access, state);
    }
    else {
        PyObject *shape = membuf_ssize_tuple(self->ndim, self->shape);
        if (shape == NULL) {
            Py_DECREF(state);
            return NULL;
        }
        result = PyUnicode_FromFormat("<membuf.Buffer address=%p nbytes=%zd format='%s' shape=%R "
                                      "%s%U>",
                                      self->buf, self->nbytes, membuf_format(self), shape, access,
                                      state);
        Py_DECREF(shape);
    }
    Py_DECREF(state);
    return result;
}

/* ------------------------------------------------------------------------ */
/* Methods                                                                  */
/* ------------------------------------------------------------------------ */

static PyObject *
membuf_release_method(MemBufObject *self, PyObject *const *args, Py_ssize_t nargs,
                      PyObject *kwnames)
{
    PyObject *defer_obj = NULL;
    Py_ssize_t nkw = kwnames != NULL ? MB_TUPLE_SIZE(kwnames) : 0;
    if (nargs > 1 || nargs + nkw > 1) {
        PyErr_Format(PyExc_TypeError, "release() takes at most 1 argument (%zd given)",
                     nargs + nkw);
        return NULL;
    }
    if (nargs == 1) {
        defer_obj = args[0];
    }
    else if (nkw == 1) {
        PyObject *name = MB_TUPLE_ITEM(kwnames, 0);
        if (!PyUnicode_Check(name) || PyUnicode_CompareWithASCIIString(name, "defer") != 0) {
            PyErr_Format(PyExc_TypeError, "release() got an unexpected keyword argument '%S'",
                         name);
            return NULL;
        }
        defer_obj = args[0];
    }
    /* A safety switch, as readonly=: only True or False, never a truthy accident. */
    if (defer_obj != NULL && !PyBool_Check(defer_obj)) {
        membuf_type_error(PyExc_TypeError, defer_obj, "defer must be True or False");
        return NULL;
    }
    int defer = defer_obj == Py_True;
    if (membuf_release(self, defer) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
membuf_enter(MemBufObject *self, PyObject *unused)
{
    (void)unused;
    MB_CHECK_RELEASED(self, NULL);
    return Py_NewRef((PyObject *)self);
}

static PyObject *
membuf_exit(MemBufObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)args;
    (void)nargs;
    if (membuf_release(self, 0) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
membuf_tobytes(MemBufObject *self, PyObject *unused)
{
    (void)unused;
    MB_CHECK_RELEASED(self, NULL);
    if (self->flags & MB_C_CONTIG) {
        return PyBytes_FromStringAndSize(self->buf, self->nbytes);
    }
    PyObject *view = as_memoryview(self);
    if (view == NULL) {
        return NULL;
    }
    PyObject *result = PyObject_CallMethod(view, "tobytes", NULL);
    Py_DECREF(view);
    return result;
}

/* Delegated to memoryview.hex() (cold; the same path in both builds: the
 * limited API of 3.11 has no vectorcall). */
static PyObject *
membuf_hex(MemBufObject *self, PyObject *args, PyObject *kwargs)
{
    PyObject *view = as_memoryview(self);
    if (view == NULL) {
        return NULL;
    }
    PyObject *hex = PyObject_GetAttrString(view, "hex");
    PyObject *result = hex != NULL ? PyObject_Call(hex, args, kwargs) : NULL;
    Py_XDECREF(hex);
    Py_DECREF(view);
    return result;
}

PyMethodDef membuf_methods[] = {
    {"release", (PyCFunction)(void (*)(void))membuf_release_method, METH_FASTCALL | METH_KEYWORDS,
     "release(defer=False)\n--\n\n"
     "Give the memory back now: the release callback runs (exactly once) and\n"
     "the owner is dropped.  Raises BufferError while exports (memoryviews,\n"
     "NumPy arrays, slices, ...) are alive, unless defer=True: then new exports\n"
     "are refused at once and the memory goes back when the last export ends.\n"
     "Releasing a released Buffer does nothing."},
    {"tobytes", (PyCFunction)membuf_tobytes, METH_NOARGS,
     "tobytes()\n--\n\nA copy of the contents as bytes (C order)."},
    {"hex", (PyCFunction)(void (*)(void))membuf_hex, METH_VARARGS | METH_KEYWORDS,
     "hex(sep=..., bytes_per_sep=1)\n--\n\nThe contents as hexadecimal, as memoryview.hex()."},
    {"__enter__", (PyCFunction)membuf_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))membuf_exit, METH_FASTCALL,
     "Strict release() at the end of the with block."},
    {"__reduce_ex__", (PyCFunction)membuf_reduce_ex, METH_O,
     "Pickle support: protocol 5 hands the memory out-of-band as a PickleBuffer."},
    {"__dlpack__", (PyCFunction)(void (*)(void))membuf_dlpack, METH_VARARGS | METH_KEYWORDS,
     "__dlpack__(*, stream=None, max_version=None, dl_device=None, copy=None)\n--\n\n"
     "A DLPack capsule over the memory (array API standard): versioned when\n"
     "max_version >= (1, 0), legacy otherwise.  Holds an export until the\n"
     "consumer lets go; copy=True exports a private copy instead."},
    {"__dlpack_device__", (PyCFunction)membuf_dlpack_device, METH_NOARGS,
     "__dlpack_device__()\n--\n\n(1, 0): kDLCPU, device 0."},
    {NULL, NULL, 0, NULL},
};
