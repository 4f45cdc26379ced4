/* Layouts: the one parser and validator of formats, shapes and strides.
 *
 * Creation (MemBuf_FromSpec, from_address, _rebuild) validates a layout here;
 * slicing, exports, pickle and DLPack read the flags and helpers it computes.
 * Invariants it establishes for a Buffer (core.h): every element of the
 * layout lies inside the memory the creator passed, nbytes ==
 * product(shape) * itemsize, and no product or offset overflows. */
#include "core.h"

#include <string.h>

/* ------------------------------------------------------------------------ */
/* Formats                                                                  */
/* ------------------------------------------------------------------------ */

/* Item size of a struct-module format, or -1 with ValueError set.  Native
 * single-character formats are answered without calling into Python. */
Py_ssize_t
membuf_itemsize_of_format(const char *format)
{
    const char *code = format[0] == '@' ? format + 1 : format;
    if (code[0] != '\0' && code[1] == '\0') {
        switch (code[0]) {
        case 'b': case 'B': case 'c': case '?': return 1;
        case 'h': case 'H': return sizeof(short);
        case 'i': case 'I': return sizeof(int);
        case 'l': case 'L': return sizeof(long);
        case 'q': case 'Q': return sizeof(long long);
        case 'n': case 'N': return sizeof(Py_ssize_t);
        case 'e': return 2;
        case 'f': return sizeof(float);
        case 'd': return sizeof(double);
        case 'P': return sizeof(void *);
        default: break;
        }
    }
    /* PEP 3118 complex formats, which NumPy exports and the struct module
     * does not know: single items only, with any byte-order prefix. */
    code = strchr("@=<>!", format[0]) != NULL && format[0] != '\0' ? format + 1 : format;
    if (strcmp(code, "Zf") == 0) {
        return 2 * (Py_ssize_t)sizeof(float);
    }
    if (strcmp(code, "Zd") == 0) {
        return 2 * (Py_ssize_t)sizeof(double);
    }
    Py_ssize_t size = PyBuffer_SizeFromFormat(format);
    if (size < 0) {
        if (PyErr_ExceptionMatches(PyExc_MemoryError)) {
            return -1; /* out of memory is not a bad format */
        }
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        PyErr_Format(PyExc_ValueError, "invalid format '%.200s': %S", format,
                     value != NULL ? value : Py_None);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        return -1;
    }
    if (size == 0) {
        PyErr_Format(PyExc_ValueError, "invalid format '%.200s': items of size 0", format);
        return -1;
    }
    return size;
}

/* ------------------------------------------------------------------------ */
/* Layouts                                                                  */
/* ------------------------------------------------------------------------ */

/* The same rule as PyBuffer_IsContiguous(): empty layouts are contiguous. */
static int
layout_is_contiguous(int ndim, const Py_ssize_t *shape, const Py_ssize_t *strides,
                     Py_ssize_t itemsize, char order)
{
    Py_ssize_t expected = itemsize;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] == 0) {
            return 1;
        }
    }
    for (int k = 0; k < ndim; k++) {
        int i = order == 'C' ? ndim - 1 - k : k;
        if (shape[i] > 1 && strides[i] != expected) {
            return 0;
        }
        expected *= shape[i];
    }
    return 1;
}

int
membuf_layout_flags(int ndim, const Py_ssize_t *shape, const Py_ssize_t *strides, Py_ssize_t itemsize)
{
    int flags = 0;
    if (layout_is_contiguous(ndim, shape, strides, itemsize, 'C')) {
        flags |= MB_C_CONTIG;
    }
    if (layout_is_contiguous(ndim, shape, strides, itemsize, 'F')) {
        flags |= MB_F_CONTIG;
    }
    return flags;
}


static int
mul_overflows(Py_ssize_t a, Py_ssize_t b, Py_ssize_t *out)
{
    /* a, b >= 0 */
    if (a != 0 && b > PY_SSIZE_T_MAX / a) {
        return 1;
    }
    *out = a * b;
    return 0;
}

/* Check a spec's layout, with element [0, ..., 0] at ptr + offset; on
 * success fill *ndim_out, shape_out, strides_out (strides computed for C
 * order when the spec has none), *itemsize_out and *nbytes_out.  -1 with
 * ValueError/OverflowError set otherwise.  offset is 0 for the C API (so a
 * negative stride along a dimension of more than one item reaches below ptr
 * and is refused); from_buffer() passes the offset of an exporter's element
 * 0 above the lowest byte it reaches (negative strides). */
int
membuf_check_layout(const MemBuf_Spec *spec, const char *format, Py_ssize_t offset, int *ndim_out,
                    Py_ssize_t *shape_out, Py_ssize_t *strides_out, Py_ssize_t *itemsize_out,
                    Py_ssize_t *nbytes_out)
{
    Py_ssize_t len = (Py_ssize_t)spec->len;
    Py_ssize_t itemsize = format != NULL ? membuf_itemsize_of_format(format) : 1;
    if (itemsize < 0) {
        return -1;
    }
    assert(offset >= 0 && offset <= len);
    *itemsize_out = itemsize;
    if (spec->shape == NULL) {
        if (spec->ndim != 0 && spec->ndim != 1) {
            PyErr_Format(PyExc_ValueError,
                         "ndim is %d but shape is NULL (NULL shape means one dimension)",
                         spec->ndim);
            return -1;
        }
        if (spec->strides != NULL) {
            PyErr_SetString(PyExc_ValueError, "strides given without a shape");
            return -1;
        }
        if (len % itemsize != 0) {
            PyErr_Format(PyExc_ValueError,
                         "len %zd is not a multiple of the item size %zd of format '%.200s'",
                         len, itemsize, format != NULL ? format : "B");
            return -1;
        }
        assert(offset == 0);
        *ndim_out = 1;
        shape_out[0] = len / itemsize;
        strides_out[0] = itemsize;
        *nbytes_out = len;
        return 0;
    }
    int ndim = spec->ndim;
    if (ndim < 0 || ndim > MEMBUF_MAX_NDIM) {
        PyErr_Format(PyExc_ValueError, "ndim %d is outside 0..%d", ndim, MEMBUF_MAX_NDIM);
        return -1;
    }
    *ndim_out = ndim;
    Py_ssize_t nitems = 1;
    for (int i = 0; i < ndim; i++) {
        if (spec->shape[i] < 0) {
            PyErr_Format(PyExc_ValueError, "shape[%d] is negative (%zd)", i, spec->shape[i]);
            return -1;
        }
        shape_out[i] = spec->shape[i];
    }
    for (int i = 0; i < ndim; i++) {
        if (mul_overflows(nitems, shape_out[i], &nitems)) {
            /* product(shape) may still be 0 because of a later dimension */
            int empty = 0;
            for (int j = i; j < ndim; j++) {
                empty |= shape_out[j] == 0;
            }
            if (!empty) {
                PyErr_SetString(PyExc_OverflowError, "the product of the shape overflows");
                return -1;
            }
            nitems = 0;
            break;
        }
    }
    Py_ssize_t nbytes;
    if (mul_overflows(nitems, itemsize, &nbytes)) {
        PyErr_SetString(PyExc_OverflowError, "the size of the layout overflows");
        return -1;
    }
    *nbytes_out = nbytes;
    if (spec->strides == NULL) {
        if (nbytes != len) {
            PyErr_Format(PyExc_ValueError,
                         "a C-contiguous layout of shape and format '%.200s' covers %zd bytes, "
                         "but len is %zd",
                         format != NULL ? format : "B", nbytes, len);
            return -1;
        }
        assert(offset == 0);
        /* Each stride is <= nbytes unless a dimension is 0; then no element
         * is ever addressed, and a stride that would overflow stays as is. */
        Py_ssize_t stride = itemsize;
        for (int i = ndim - 1; i >= 0; i--) {
            strides_out[i] = stride;
            Py_ssize_t grown;
            if (!mul_overflows(stride, shape_out[i] > 0 ? shape_out[i] : 1, &grown)) {
                stride = grown;
            }
        }
        return 0;
    }
    /* Explicit strides: every element must lie inside [ptr, ptr + len).
     * Element [0, ..., 0] is at ptr + offset; each dimension of more than
     * one item reaches (shape - 1) * |stride| further up (positive stride)
     * or down (negative), out of the room left on that side. */
    for (int i = 0; i < ndim; i++) {
        strides_out[i] = spec->strides[i];
    }
    if (nitems == 0) {
        return 0; /* no element is ever addressed */
    }
    if (len < itemsize || offset > len - itemsize) {
        goto outside;
    }
    Py_ssize_t room_below = offset, room_above = len - itemsize - offset;
    for (int i = 0; i < ndim; i++) {
        Py_ssize_t stride = strides_out[i], span;
        if (shape_out[i] == 1) {
            continue;
        }
        if (stride == PY_SSIZE_T_MIN ||
            mul_overflows(shape_out[i] - 1, stride < 0 ? -stride : stride, &span)) {
            goto outside;
        }
        Py_ssize_t *room = stride < 0 ? &room_below : &room_above;
        if (span > *room) {
            goto outside;
        }
        *room -= span;
    }
    return 0;
outside:
    PyErr_Format(PyExc_ValueError,
                 "the layout (shape, strides, format '%.200s') reaches outside the %zd bytes "
                 "at ptr",
                 format != NULL ? format : "B", len);
    return -1;
}

/* ------------------------------------------------------------------------ */
/* Reading formats and layouts back                                         */
/* ------------------------------------------------------------------------ */

const char *
membuf_native_code(const char *format)
{
    const char *code = format;
#if PY_LITTLE_ENDIAN
    if (code[0] == '@' || code[0] == '=' || code[0] == '<') {
#else
    if (code[0] == '@' || code[0] == '=' || code[0] == '>' || code[0] == '!') {
#endif
        code++;
    }
    if (code[0] != '\0' && code[1] == '\0' && strchr("@=<>!", code[0]) == NULL) {
        return code;
    }
    if (strcmp(code, "Zf") == 0 || strcmp(code, "Zd") == 0) {
        return code;
    }
    return NULL;
}

PyObject *
membuf_ssize_tuple(int n, const Py_ssize_t *values)
{
    PyObject *tuple = PyTuple_New(n);
    if (tuple == NULL) {
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        PyObject *item = PyLong_FromSsize_t(values[i]);
        if (item == NULL || PyTuple_SetItem(tuple, i, item) < 0) { /* SetItem steals item */
            Py_DECREF(tuple);
            return NULL;
        }
    }
    return tuple;
}
