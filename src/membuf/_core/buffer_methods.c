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
    return membuf_format_or_null(self) == NULL && membuf_ndim(self) == 1;
}

/* ------------------------------------------------------------------------ */
/* Errors of element access                                                 */
/* ------------------------------------------------------------------------ */

/* Element access follows memoryview's rules and raises the exception types
 * memoryview raises, but every message names membuf.Buffer and the
 * operation.  Keys are checked here, before anything is delegated to a
 * memoryview (typed items, multi-indices, slice assignment); what the
 * memoryview can still refuse -- a format it cannot pack or unpack, a value
 * of the wrong type or range, a slice value of another structure -- is
 * translated on the error path, from the exception's type and our own look
 * at the format and the value, never from memoryview's wording (which
 * changes between CPython versions).  Exceptions raised by the user's own
 * code (__index__, __bool__, a value's buffer export) pass through. */

#define OP_GET "membuf.Buffer indexing"
#define OP_SET "membuf.Buffer item assignment"
#define OP_SLICE_GET "membuf.Buffer slicing"
#define OP_SLICE_SET "membuf.Buffer slice assignment"

/* IndexError for index `i` (as the user wrote it; `key`, when it is an
 * exact int, is printed instead: i may have been clipped) on dimension
 * dim (1-based) of `size` items. */
static void
index_error(const char *op, PyObject *key, Py_ssize_t i, int dim, Py_ssize_t size)
{
    if (key != NULL && PyLong_CheckExact(key)) {
        PyErr_Format(PyExc_IndexError, "%s: index %S out of range on dimension %d (size %zd)", op,
                     key, dim, size);
    }
    else {
        PyErr_Format(PyExc_IndexError, "%s: index %zd out of range on dimension %d (size %zd)", op,
                     i, dim, size);
    }
}

static void
zero_dim_error(const char *op, PyObject *key)
{
    membuf_type_error(PyExc_TypeError, key, "%s: a 0-dim membuf.Buffer is indexed with () or ...",
                      op);
}

/* NotImplementedError: fewer indices than dimensions (memoryview has no
 * sub-views). */
static void
subview_error(const char *op, Py_ssize_t nindices, int ndim)
{
    PyErr_Format(PyExc_NotImplementedError,
                 "%s: %zd ind%s for %d dimensions: sub-views are not implemented (index every "
                 "dimension, or slice the first)",
                 op, nindices, nindices == 1 ? "ex" : "ices", ndim);
}

/* The exception pending now, taken out (the limited API of 3.11 has no
 * PyErr_GetRaisedException). */
typedef struct {
    PyObject *type, *value, *tb;
} saved_error;

static void
save_error(saved_error *e)
{
    PyErr_Fetch(&e->type, &e->value, &e->tb);
}

/* Put the saved exception back (it was the right one after all). */
static void
restore_error(saved_error *e)
{
    PyErr_Restore(e->type, e->value, e->tb);
}

/* Drop the saved exception: a translation replaces it.  (Dropped, not
 * chained: its message is memoryview's, which is what we hide.) */
static void
drop_error(saved_error *e)
{
    Py_XDECREF(e->type);
    Py_XDECREF(e->value);
    Py_XDECREF(e->tb);
}

static void
unsupported_format_error(MemBufObject *self, const char *op)
{
    PyErr_Format(PyExc_NotImplementedError,
                 "%s: format '%s' is not supported (element access takes a single native "
                 "struct type code, such as 'd' or '@i')",
                 op, membuf_format(self));
}

/* After a delegated read of one item failed: a format that memoryview
 * cannot unpack is reported as ours; anything else passes through. */
static void
translate_get_error(MemBufObject *self)
{
    if (PyErr_ExceptionMatches(PyExc_NotImplementedError)) {
        PyErr_Clear();
        unsupported_format_error(self, OP_GET);
    }
}

/* After a delegated store of one item failed (memoryview's pack_single:
 * TypeError for a value of the wrong type, ValueError for one out of range,
 * NotImplementedError for a format it cannot pack). */
static void
translate_set_error(MemBufObject *self, PyObject *value)
{
    const char *format = membuf_format(self);
    const char *code = format[0] == '@' ? format + 1 : format;
    if (PyErr_ExceptionMatches(PyExc_NotImplementedError)) {
        PyErr_Clear();
        unsupported_format_error(self, OP_SET);
        return;
    }
    if (code[0] == '?' || code[0] == '\0' || code[1] != '\0') {
        return; /* '?' takes any object: its error is the object's own __bool__'s */
    }
    const char *what = code[0] == 'c' ? "a bytes object of length 1"
                       : strchr("fde", code[0]) != NULL ? "a float"
                                                        : "an int";
    if (PyErr_ExceptionMatches(PyExc_TypeError)) {
        PyErr_Clear();
        membuf_type_error(PyExc_TypeError, value, "%s: format '%s' takes %s", OP_SET, format,
                          what);
    }
    else if (PyErr_ExceptionMatches(PyExc_ValueError)) {
        PyErr_Clear();
        if (code[0] == 'c' && PyBytes_Check(value)) {
            PyErr_Format(PyExc_ValueError,
                         "%s: format 'c' takes a bytes object of length 1, not of length %zd",
                         OP_SET, PyBytes_Size(value));
        }
        else {
            PyErr_Format(PyExc_ValueError, "%s: value out of range for format '%s'", OP_SET,
                         format);
        }
    }
}

/* After PySlice_Unpack(key) failed: a slice part that is not an index, or
 * a step of 0, is reported as ours; an error of a part's own __index__
 * passes through. */
static void
translate_slice_error(PyObject *key, const char *op)
{
    static const char *const parts[3] = {"start", "stop", "step"};
    saved_error saved;
    save_error(&saved);
    for (int k = 0; k < 3; k++) {
        PyObject *part = PyObject_GetAttrString(key, parts[k]);
        if (part == NULL) {
            PyErr_Clear();
            break;
        }
        int bad_type = part != Py_None && !PyIndex_Check(part);
        int zero_step = k == 2 && PyLong_Check(part) && PyLong_AsSsize_t(part) == 0;
        PyErr_Clear(); /* a huge step is not 0 */
        if (bad_type) {
            drop_error(&saved);
            membuf_type_error(PyExc_TypeError, part,
                              "%s: slice %s must be an int, None or have __index__", op,
                              parts[k]);
            Py_DECREF(part);
            return;
        }
        Py_DECREF(part);
        if (zero_step) {
            drop_error(&saved);
            PyErr_Format(PyExc_ValueError, "%s: slice step cannot be zero", op);
            return;
        }
    }
    restore_error(&saved);
}

/* After a delegated slice assignment (1-D) failed: a value that is not
 * bytes-like, or whose structure differs from the slice's, is reported as
 * ours; an error of the value's own export passes through. */
static void
translate_slice_set_error(MemBufObject *self, PyObject *value, Py_ssize_t count)
{
    if (PyErr_ExceptionMatches(PyExc_TypeError) && !PyObject_CheckBuffer(value)) {
        PyErr_Clear();
        membuf_type_error(PyExc_TypeError, value, "%s: a bytes-like object is required",
                          OP_SLICE_SET);
        return;
    }
    if (!PyErr_ExceptionMatches(PyExc_ValueError) || !PyObject_CheckBuffer(value)) {
        return;
    }
    saved_error saved;
    Py_buffer theirs;
    save_error(&saved);
    if (PyObject_GetBuffer(value, &theirs, PyBUF_FULL_RO) < 0) {
        /* the value's own export refused: that was the error */
        PyErr_Clear();
        restore_error(&saved);
        return;
    }
    drop_error(&saved);
    PyObject *shape = theirs.ndim > 0 && theirs.shape != NULL
                          ? membuf_ssize_tuple(theirs.ndim, theirs.shape)
                          : PyTuple_New(0);
    if (shape != NULL) {
        PyErr_Format(PyExc_ValueError,
                     "%s: the value (format '%s', itemsize %zd, shape %R) does not match the "
                     "slice (format '%s', itemsize %zd, shape (%zd,))",
                     OP_SLICE_SET, theirs.format != NULL ? theirs.format : "B", theirs.itemsize,
                     shape, membuf_format(self), membuf_itemsize(self), count);
        Py_DECREF(shape);
    }
    PyBuffer_Release(&theirs);
}

/* What a key that is neither an int nor a slice names. */
enum { KEY_ITEM, KEY_ELLIPSIS };

/* Check such a key against self's layout (memoryview's rules, our
 * messages): KEY_ELLIPSIS for `...` on a 0-dim Buffer; KEY_ITEM for () on a
 * 0-dim Buffer or a tuple of ndim ints in range, with *item_key a new
 * tuple of exact ints (memoryview runs no __index__ again); -1 with an
 * exception set otherwise.  The caller holds an export (its memoryview):
 * the indices' __index__ cannot release the memory under it. */
static int
check_other_key(MemBufObject *self, PyObject *key, const char *op, PyObject **item_key)
{
    *item_key = NULL;
    if (membuf_ndim(self) == 0) {
        if (key == Py_Ellipsis) {
            return KEY_ELLIPSIS;
        }
        if (PyTuple_Check(key) && MB_TUPLE_SIZE(key) == 0) {
            *item_key = Py_NewRef(key);
            return KEY_ITEM;
        }
        zero_dim_error(op, key);
        return -1;
    }
    if (!PyTuple_Check(key)) {
        membuf_type_error(PyExc_TypeError, key, "%s: an index must be an int, a slice or a "
                          "tuple of ints", op);
        return -1;
    }
    Py_ssize_t n = MB_TUPLE_SIZE(key), nslices = 0;
    PyObject *not_int = NULL;
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *part = MB_TUPLE_ITEM(key, k);
        if (PySlice_Check(part)) {
            nslices++;
        }
        if (!PyIndex_Check(part) && not_int == NULL) {
            not_int = part;
        }
    }
    if (n > 0 && nslices == n) {
        PyErr_Format(PyExc_NotImplementedError,
                     "%s: multi-dimensional slicing is not implemented (slice the first "
                     "dimension only)",
                     op);
        return -1;
    }
    if (not_int != NULL) {
        membuf_type_error(PyExc_TypeError, not_int, "%s: an index tuple must hold only ints",
                          op);
        return -1;
    }
    if (n < membuf_ndim(self)) {
        subview_error(op, n, membuf_ndim(self));
        return -1;
    }
    if (n > membuf_ndim(self)) {
        PyErr_Format(PyExc_TypeError, "%s: %zd indices for %d dimension%s", op, n, membuf_ndim(self),
                     membuf_ndim(self) == 1 ? "" : "s");
        return -1;
    }
    PyObject *normalized = PyTuple_New(n);
    if (normalized == NULL) {
        return -1;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *part = MB_TUPLE_ITEM(key, k);
        Py_ssize_t i = PyNumber_AsSsize_t(part, NULL); /* clipped: then out of range */
        if (i == -1 && PyErr_Occurred()) {
            goto fail; /* the index's own __index__ raised */
        }
        Py_ssize_t size = membuf_shape(self)[k], j = i < 0 ? i + size : i;
        if (j < 0 || j >= size) {
            index_error(op, part, i, (int)k + 1, size);
            goto fail;
        }
        PyObject *index = PyLong_FromSsize_t(j);
        if (index == NULL || PyTuple_SetItem(normalized, k, index) < 0) {
            goto fail;
        }
    }
    *item_key = normalized;
    return KEY_ITEM;
fail:
    Py_DECREF(normalized);
    return -1;
}

/* ------------------------------------------------------------------------ */
/* len, indexing, slicing                                                   */
/* ------------------------------------------------------------------------ */

Py_ssize_t
membuf_length(MemBufObject *self)
{
    MB_CHECK_RELEASED(self, -1);
    if (membuf_ndim(self) == 0) {
        /* memoryview's rule since CPython 3.12 (3.11 answered 1): the same
         * on every version. */
        PyErr_SetString(PyExc_TypeError, "len() of a 0-dim membuf.Buffer: it has no length");
        return -1;
    }
    return membuf_shape(self)[0];
}

/* Item i of a typed 1-D Buffer (0 <= i < shape[0]), or the NotImplementedError
 * of a multi-dimensional one (no sub-views), through a memoryview. */
static PyObject *
typed_item(MemBufObject *self, Py_ssize_t i)
{
    if (membuf_ndim(self) > 1) {
        subview_error(OP_GET, 1, membuf_ndim(self));
        return NULL;
    }
    PyObject *view = as_memoryview(self);
    if (view == NULL) {
        return NULL;
    }
    PyObject *item = PySequence_GetItem(view, i);
    Py_DECREF(view);
    if (item == NULL) {
        translate_get_error(self);
    }
    return item;
}

/* Item i (made non-negative by PySequence_GetItem where it could be). */
PyObject *
membuf_item(MemBufObject *self, Py_ssize_t i)
{
    MB_CHECK_RELEASED(self, NULL);
    if (membuf_ndim(self) == 0) {
        PyObject *key = PyLong_FromSsize_t(i);
        if (key != NULL) {
            zero_dim_error(OP_GET, key);
            Py_DECREF(key);
        }
        return NULL;
    }
    if (i < 0 || i >= membuf_shape(self)[0]) {
        /* a negative i was made non-negative by adding shape[0] once */
        index_error(OP_GET, NULL, i < 0 ? i - membuf_shape(self)[0] : i, 1, membuf_shape(self)[0]);
        return NULL;
    }
    if (is_byte_vector(self)) {
        return PyLong_FromLong(*(unsigned char *)(self->buf + i * membuf_strides(self)[0]));
    }
    return typed_item(self, i);
}

static PyObject *
membuf_slice(MemBufObject *self, PyObject *key)
{
    Py_ssize_t start, stop, step, count;
    Py_ssize_t shape[MEMBUF_MAX_NDIM], strides[MEMBUF_MAX_NDIM];

    if (membuf_ndim(self) == 0) {
        zero_dim_error(OP_SLICE_GET, key);
        return NULL;
    }
    if (PySlice_Unpack(key, &start, &stop, &step) < 0) {
        translate_slice_error(key, OP_SLICE_GET);
        return NULL;
    }
    /* __index__ of the slice's parts may have released us. */
    MB_CHECK_RELEASED(self, NULL);
    count = PySlice_AdjustIndices(membuf_shape(self)[0], &start, &stop, step);
    memcpy(shape, membuf_shape(self), (size_t)membuf_ndim(self) * sizeof(Py_ssize_t));
    memcpy(strides, membuf_strides(self), (size_t)membuf_ndim(self) * sizeof(Py_ssize_t));
    shape[0] = count;
    /* Offsets are bounded by the memory only where elements exist: in an
     * empty layout (nbytes 0) strides are arbitrary, and a stride along a
     * dimension of at most one item is never used.  There the new stride is
     * stride * step (memoryview's rule) unless that overflows, and the
     * address stays put; elsewhere nothing can overflow. */
    char *buf = self->buf;
    Py_ssize_t stride = membuf_strides(self)[0];
    if (self->nbytes > 0 && count > 0) {
        buf += start * stride;
    }
    size_t stride_size = stride < 0 ? (size_t)0 - (size_t)stride : (size_t)stride;
    size_t step_size = step < 0 ? (size_t)0 - (size_t)step : (size_t)step; /* step != 0 */
    if ((self->nbytes > 0 && count > 1) || stride_size <= (size_t)PY_SSIZE_T_MAX / step_size) {
        strides[0] = stride * step;
    }
    return membuf_new_view(self, buf, membuf_ndim(self), shape, strides);
}

PyObject *
membuf_subscript(MemBufObject *self, PyObject *key)
{
    MB_CHECK_RELEASED(self, NULL);
    if (PyIndex_Check(key)) {
        /* NULL: a huge index is clipped, then out of range (no OverflowError) */
        Py_ssize_t i = PyNumber_AsSsize_t(key, NULL);
        if (i == -1 && PyErr_Occurred()) {
            return NULL; /* the key's own __index__ raised */
        }
        /* __index__ may have released us: checked again here. */
        MB_CHECK_RELEASED(self, NULL);
        if (membuf_ndim(self) != 1) {
            if (membuf_ndim(self) == 0) {
                zero_dim_error(OP_GET, key);
            }
            else {
                subview_error(OP_GET, 1, membuf_ndim(self));
            }
            return NULL;
        }
        Py_ssize_t n = membuf_shape(self)[0], j = i < 0 ? i + n : i;
        if (j < 0 || j >= n) {
            index_error(OP_GET, key, i, 1, n);
            return NULL;
        }
        if (membuf_format_or_null(self) == NULL) {
            return PyLong_FromLong(*(unsigned char *)(self->buf + j * membuf_strides(self)[0]));
        }
        return typed_item(self, j);
    }
    if (PySlice_Check(key)) {
        return membuf_slice(self, key);
    }
    /* Tuples, Ellipsis, anything else: checked here, read by a memoryview,
     * whose export is held while the indices convert. */
    PyObject *view = as_memoryview(self);
    if (view == NULL) {
        return NULL;
    }
    PyObject *item_key, *result = NULL;
    int kind = check_other_key(self, key, OP_GET, &item_key);
    if (kind == KEY_ELLIPSIS) {
        result = Py_NewRef((PyObject *)self); /* memoryview's m[...] is m */
    }
    else if (kind == KEY_ITEM) {
        result = PyObject_GetItem(view, item_key);
        Py_DECREF(item_key);
        if (result == NULL) {
            translate_get_error(self);
        }
    }
    Py_DECREF(view);
    return result;
}

/* The key of a slice assignment with its parts as exact ints (memoryview
 * runs no __index__ again), and the slice's length in *count. */
static PyObject *
plain_slice(MemBufObject *self, PyObject *key, Py_ssize_t *count)
{
    Py_ssize_t start, stop, step;
    if (PySlice_Unpack(key, &start, &stop, &step) < 0) {
        translate_slice_error(key, OP_SLICE_SET);
        return NULL;
    }
    *count = PySlice_AdjustIndices(membuf_shape(self)[0], &start, &stop, step);
    PyObject *parts[3] = {PyLong_FromSsize_t(start), PyLong_FromSsize_t(stop),
                          PyLong_FromSsize_t(step)};
    PyObject *slice = NULL;
    if (parts[0] != NULL && parts[1] != NULL && parts[2] != NULL) {
        slice = PySlice_New(parts[0], parts[1], parts[2]);
    }
    for (int k = 0; k < 3; k++) {
        Py_XDECREF(parts[k]);
    }
    return slice;
}

/* Stores go through a memoryview, whose export is held from the start: the
 * key's and the value's conversions (__index__, ...) cannot release the
 * memory under the write (a strict release is refused; a deferred one
 * completes after it).  The key is checked here, in memoryview's order,
 * with our messages. */
int
membuf_ass_subscript(MemBufObject *self, PyObject *key, PyObject *value)
{
    int is_slice = PySlice_Check(key);
    const char *op = is_slice ? OP_SLICE_SET : OP_SET;
    Py_ssize_t count = 0;
    PyObject *item_key = NULL, *view;
    int rc = -1;

    MB_CHECK_RELEASED(self, -1);
    if (!(self->flags & MEMBUF_WRITABLE)) {
        PyErr_Format(PyExc_TypeError, "%s: cannot modify read-only memory (the Buffer was "
                     "created read-only)", op);
        return -1;
    }
    if (value == NULL) {
        PyErr_SetString(PyExc_TypeError,
                        "membuf.Buffer does not support item deletion (its size is fixed)");
        return -1;
    }
    if (PyIndex_Check(key)) {
        if (membuf_ndim(self) != 1) {
            if (membuf_ndim(self) == 0) {
                zero_dim_error(op, key);
            }
            else {
                subview_error(op, 1, membuf_ndim(self));
            }
            return -1;
        }
        view = as_memoryview(self);
        if (view == NULL) {
            return -1;
        }
        Py_ssize_t i = PyNumber_AsSsize_t(key, NULL);
        if (i == -1 && PyErr_Occurred()) {
            goto done; /* the key's own __index__ raised */
        }
        Py_ssize_t n = membuf_shape(self)[0], j = i < 0 ? i + n : i;
        if (j < 0 || j >= n) {
            index_error(op, key, i, 1, n);
            goto done;
        }
        item_key = PyLong_CheckExact(key) ? Py_NewRef(key) : PyLong_FromSsize_t(j);
    }
    else if (is_slice) {
        if (membuf_ndim(self) != 1) {
            if (membuf_ndim(self) == 0) {
                zero_dim_error(op, key);
            }
            else {
                PyErr_Format(PyExc_NotImplementedError,
                             "%s: only 1-D Buffers take slice assignment (this one has %d "
                             "dimensions)",
                             op, membuf_ndim(self));
            }
            return -1;
        }
        view = as_memoryview(self);
        if (view == NULL) {
            return -1;
        }
        item_key = plain_slice(self, key, &count);
    }
    else {
        view = as_memoryview(self);
        if (view == NULL) {
            return -1;
        }
        int kind = check_other_key(self, key, op, &item_key);
        if (kind == KEY_ELLIPSIS) {
            item_key = PyTuple_New(0); /* the one item of a 0-dim Buffer */
        }
    }
    if (item_key == NULL) {
        goto done;
    }
    rc = PyObject_SetItem(view, item_key, value);
    Py_DECREF(item_key);
    if (rc < 0) {
        if (is_slice) {
            translate_slice_set_error(self, value, count);
        }
        else {
            translate_set_error(self, value);
        }
    }
done:
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
        state = PyUnicode_FromFormat(", release pending on %d export%s", self->exports,
                                     self->exports == 1 ? "" : "s");
    }
    else if (self->exports > 0) {
        state = PyUnicode_FromFormat(", %d export%s", self->exports,
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
        PyObject *shape = membuf_ssize_tuple(membuf_ndim(self), membuf_shape(self));
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
        PyErr_Format(PyExc_TypeError, "membuf.Buffer.release() takes at most 1 argument (%zd given)",
                     nargs + nkw);
        return NULL;
    }
    if (nargs == 1) {
        defer_obj = args[0];
    }
    else if (nkw == 1) {
        PyObject *name = MB_TUPLE_ITEM(kwnames, 0);
        if (!PyUnicode_Check(name) || PyUnicode_CompareWithASCIIString(name, "defer") != 0) {
            PyErr_Format(PyExc_TypeError, "membuf.Buffer.release() got an unexpected keyword argument '%S'",
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

/* The end of a with block.  A clean exit releases strictly, as release():
 * BufferError while an export is alive.  An exit by an exception never hides
 * it: the Buffer is released at once if it can be, else the release is
 * deferred to the end of the last export (release(defer=True)); an
 * exception from a Python on_release goes to sys.unraisablehook; and the
 * block's exception propagates unchanged (we return None, as the stubs
 * say: never true, so it is never swallowed). */
static PyObject *
membuf_exit(MemBufObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError,
                     "membuf.Buffer.__exit__() takes exactly 3 arguments (%zd given)", nargs);
        return NULL;
    }
    if (args[0] == Py_None) {
        if (membuf_release(self, 0) < 0) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    if (membuf_release(self, 1) < 0) {
        PyErr_WriteUnraisable((PyObject *)self);
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

/* hex(sep=None, bytes_per_sep=1): the arguments are checked here (our
 * messages), the work is memoryview.hex()'s (cold; a call by name: the
 * limited API of 3.11 has no vectorcall). */
static PyObject *
membuf_hex(MemBufObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[2] = {"sep", "bytes_per_sep"};
    PyObject *values[2] = {NULL, NULL}, *per = NULL, *result = NULL;
    Py_ssize_t nkw = kwnames != NULL ? MB_TUPLE_SIZE(kwnames) : 0;
    if (nargs > 2) {
        PyErr_Format(PyExc_TypeError, "membuf.Buffer.hex() takes at most 2 arguments (%zd given)",
                     nargs);
        return NULL;
    }
    for (Py_ssize_t k = 0; k < nargs; k++) {
        values[k] = args[k];
    }
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *name = MB_TUPLE_ITEM(kwnames, k);
        int slot = -1;
        for (int i = 0; i < 2; i++) {
            if (PyUnicode_CompareWithASCIIString(name, names[i]) == 0) {
                slot = i;
            }
        }
        if (slot < 0) {
            PyErr_Format(PyExc_TypeError,
                         "membuf.Buffer.hex() got an unexpected keyword argument '%S'", name);
            return NULL;
        }
        if (values[slot] != NULL) {
            PyErr_Format(PyExc_TypeError,
                         "membuf.Buffer.hex() got multiple values for argument '%s'", names[slot]);
            return NULL;
        }
        values[slot] = args[nargs + k];
    }
    PyObject *sep = values[0] != Py_None ? values[0] : NULL;
    if (sep != NULL) {
        Py_ssize_t len;
        long ch = -1;
        if (PyUnicode_Check(sep)) {
            len = PyUnicode_GetLength(sep);
            if (len == 1) {
                ch = (long)PyUnicode_ReadChar(sep, 0);
            }
        }
        else if (PyBytes_Check(sep)) {
            len = PyBytes_Size(sep);
            if (len == 1) {
                ch = (unsigned char)PyBytes_AsString(sep)[0];
            }
        }
        else {
            membuf_type_error(PyExc_TypeError, sep, "membuf.Buffer.hex(): sep must be str, bytes "
                              "or None");
            return NULL;
        }
        if (len < 0) {
            return NULL;
        }
        if (len != 1) {
            PyErr_Format(PyExc_ValueError,
                         "membuf.Buffer.hex(): sep must be one character, not %zd", len);
            return NULL;
        }
        if (ch < 0 || ch > 127) {
            PyErr_SetString(PyExc_ValueError, "membuf.Buffer.hex(): sep must be ASCII");
            return NULL;
        }
    }
    if (values[1] != NULL && !PyIndex_Check(values[1])) {
        membuf_type_error(PyExc_TypeError, values[1],
                          "membuf.Buffer.hex(): bytes_per_sep must be an int");
        return NULL;
    }
    /* The export is held from here: bytes_per_sep's __index__ cannot release
     * the memory under the work. */
    PyObject *view = as_memoryview(self);
    if (view == NULL) {
        return NULL;
    }
    if (values[1] != NULL) {
        per = PyNumber_Index(values[1]); /* once: memoryview gets an exact int */
        if (per == NULL) {
            goto done;
        }
        int overflow;
        long n = PyLong_AsLongAndOverflow(per, &overflow);
        if (overflow != 0 || n > INT_MAX || n < INT_MIN) {
            PyErr_SetString(PyExc_OverflowError,
                            "membuf.Buffer.hex(): bytes_per_sep does not fit in a C int");
            goto done;
        }
    }
    if (sep == NULL) {
        result = PyObject_CallMethod(view, "hex", NULL);
    }
    else if (per == NULL) {
        result = PyObject_CallMethod(view, "hex", "O", sep);
    }
    else {
        result = PyObject_CallMethod(view, "hex", "OO", sep, per);
    }
done:
    Py_XDECREF(per);
    Py_DECREF(view);
    return result;
}

/* Every docstring starts with a text signature ("name($self, ...)\n--\n\n"):
 * inspect.signature() and help() read it.  tests/test_messages.py checks
 * each against the method's behaviour. */
/* __sizeof__: the head, or the extended layout with its trailing storage
 * (core.h); not the memory, which is not ours, nor a held export's struct. */
static PyObject *
membuf_sizeof(MemBufObject *self, PyObject *unused)
{
    (void)unused;
    size_t size = sizeof(MemBufObject);
    if (MB_IS_EXTENDED(self)) {
        size = sizeof(MemBufExtended);
        if (!(self->flags & MB_COMPACT)) {
            const char *format = membuf_format_or_null(self);
            size += 2 * (size_t)membuf_ndim(self) * sizeof(Py_ssize_t) +
                    (format != NULL ? strlen(format) + 1 : 0);
        }
    }
    return PyLong_FromSize_t(size);
}

PyMethodDef membuf_methods[] = {
    {"release", (PyCFunction)(void (*)(void))membuf_release_method, METH_FASTCALL | METH_KEYWORDS,
     "release($self, /, defer=False)\n--\n\n"
     "Give the memory back now: the release callback runs (exactly once) and\n"
     "the owner is dropped.  Raises BufferError while exports (memoryviews,\n"
     "NumPy arrays, slices, ...) are alive, unless defer=True: then new exports\n"
     "are refused at once and the memory goes back when the last export ends.\n"
     "defer must be True or False.  Releasing a released Buffer does nothing."},
    {"tobytes", (PyCFunction)membuf_tobytes, METH_NOARGS,
     "tobytes($self, /)\n--\n\nA copy of the contents as bytes (C order)."},
    {"hex", (PyCFunction)(void (*)(void))membuf_hex, METH_FASTCALL | METH_KEYWORDS,
     "hex($self, /, sep=None, bytes_per_sep=1)\n--\n\n"
     "The contents as hexadecimal, as memoryview.hex(): sep (one ASCII character,\n"
     "str or bytes; None for none) goes between groups of bytes_per_sep bytes,\n"
     "counted from the right (from the left if bytes_per_sep is negative)."},
    {"__enter__", (PyCFunction)membuf_enter, METH_NOARGS,
     "__enter__($self, /)\n--\n\n"
     "Return the Buffer itself (ValueError if it is released)."},
    {"__exit__", (PyCFunction)(void (*)(void))membuf_exit, METH_FASTCALL,
     "__exit__($self, exc_type, exc_value, traceback, /)\n--\n\n"
     "End of the with block.  Without an exception: a strict release(), which\n"
     "raises BufferError (and leaves the Buffer unreleased) while a view is alive.\n"
     "With an exception: release(defer=True) -- at once if no view is alive, else\n"
     "when the last one ends -- and the exception propagates unchanged; an\n"
     "exception from on_release then goes to sys.unraisablehook.  Returns None."},
    {"__sizeof__", (PyCFunction)membuf_sizeof, METH_NOARGS,
     "__sizeof__($self, /)\n--\n\n"
     "Size of the object in bytes, without the memory it views.  (sys.getsizeof\n"
     "adds the size of a GC header to every Buffer, by type, although plain\n"
     "Buffers are allocated without one.)"},
    {"__reduce_ex__", (PyCFunction)membuf_reduce_ex, METH_O,
     "__reduce_ex__($self, protocol, /)\n--\n\n"
     "Pickle support: protocol 5 hands the memory out-of-band as a PickleBuffer."},
    {"__dlpack__", (PyCFunction)(void (*)(void))membuf_dlpack, METH_VARARGS | METH_KEYWORDS,
     "__dlpack__($self, /, *, stream=None, max_version=None, dl_device=None, copy=None)\n--\n\n"
     "A DLPack capsule over the memory (array API standard): versioned when\n"
     "max_version >= (1, 0), legacy otherwise.  Holds an export until the\n"
     "consumer lets go; copy=True exports a private copy instead."},
    {"__dlpack_device__", (PyCFunction)membuf_dlpack_device, METH_NOARGS,
     "__dlpack_device__($self, /)\n--\n\n(1, 0): kDLCPU, device 0."},
    {NULL, NULL, 0, NULL},
};
