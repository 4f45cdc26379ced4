/* The Python constructors: from_address(), from_buffer(), address_of(), and
 * the core of _rebuild() (pickle.c), membuf_from_exporter().
 *
 * Ownership (contract 3, as in the C API): a callable on_release becomes
 * the constructor's as soon as its type is checked; from then on every
 * failure calls it (once) before raising.  An export taken of an exporter
 * is the new Buffer's from creation on; if creation fails it has been ended.
 * Layouts are checked by the one validator, layout.c, whichever door they
 * come through (C, from_address, from_buffer, _rebuild).
 *
 * Keyword arguments are matched against names interned once per module
 * object (membuf_module_state): by identity first (the compiler interns the
 * names in a call), by value only if that misses. */
#include "core.h"

#include <stdarg.h>
#include <stdint.h>

static const char *const kw_text[MB_KW_COUNT] = {
    "address", "size", "format", "shape", "strides", "readonly", "owner", "on_release",
};

int
membuf_module_state_init(PyObject *module)
{
    membuf_module_state *state = PyModule_GetState(module);
    for (int i = 0; i < MB_KW_COUNT; i++) {
        state->kw[i] = PyUnicode_InternFromString(kw_text[i]);
        if (state->kw[i] == NULL) {
            return -1;
        }
    }
    return 0;
}

void
membuf_module_state_clear(PyObject *module)
{
    membuf_module_state *state = PyModule_GetState(module);
    if (state == NULL) {
        return;
    }
    for (int i = 0; i < MB_KW_COUNT; i++) {
        Py_CLEAR(state->kw[i]);
    }
}

/* ------------------------------------------------------------------------ */
/* Arguments                                                                */
/* ------------------------------------------------------------------------ */

typedef struct {
    const char *name;   /* of the function, for messages */
    int npositional;    /* how many of params may come by position (the first ones) */
    int nrequired;      /* how many of the first ones are required */
    int nparams;
    const int *params;  /* MB_KW_* of each parameter, in order; -1: positional-only */
    signed char slot_of[MB_KW_COUNT]; /* MB_KW_* -> index in params, -1: not a keyword here */
} signature;

/* Vectorcall arguments into values[] (NULL: not given).  -1 with TypeError
 * on a bad call. */
static int
parse_args(PyObject *module, const signature *sig, PyObject *const *args, Py_ssize_t nargs,
           PyObject *kwnames, PyObject **values)
{
    for (int i = 0; i < sig->nparams; i++) {
        values[i] = NULL;
    }
    if (nargs > sig->npositional) {
        if (sig->nrequired == sig->npositional) {
            PyErr_Format(PyExc_TypeError, "%s() takes %d positional argument%s but %zd were given",
                         sig->name, sig->npositional, sig->npositional == 1 ? "" : "s", nargs);
        }
        else {
            PyErr_Format(PyExc_TypeError,
                         "%s() takes from %d to %d positional arguments but %zd were given",
                         sig->name, sig->nrequired, sig->npositional, nargs);
        }
        return -1;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) {
        values[i] = args[i];
    }
    Py_ssize_t nkw = kwnames != NULL ? MB_TUPLE_SIZE(kwnames) : 0;
    if (nkw > 0) {
        PyObject *const *kw = ((membuf_module_state *)PyModule_GetState(module))->kw;
        for (Py_ssize_t k = 0; k < nkw; k++) {
            PyObject *name = MB_TUPLE_ITEM(kwnames, k);
            int id = 0;
            while (id < MB_KW_COUNT && name != kw[id]) {
                id++;
            }
            for (int i = 0; id == MB_KW_COUNT && i < MB_KW_COUNT; i++) {
                if (PyUnicode_Compare(name, kw[i]) == 0) { /* a name not interned */
                    id = i;
                }
            }
            int slot = id < MB_KW_COUNT ? sig->slot_of[id] : -1;
            if (slot < 0) {
                PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%S'",
                             sig->name, name);
                return -1;
            }
            if (values[slot] != NULL) {
                PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'",
                             sig->name, kw_text[id]);
                return -1;
            }
            values[slot] = args[nargs + k];
        }
    }
    for (int i = 0; i < sig->nrequired; i++) {
        if (values[i] == NULL) {
            PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", sig->name,
                         sig->params[i] >= 0 ? kw_text[sig->params[i]] : "obj");
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

/* readonly=: True or False (or None where allowed), never a truthy accident. */
static int
readonly_arg(PyObject *obj, int allow_none, int *out)
{
    if (obj == NULL || (allow_none && obj == Py_None)) {
        return 0; /* *out keeps the default */
    }
    if (!PyBool_Check(obj)) {
        return membuf_type_error(PyExc_TypeError, obj,
                                 allow_none ? "readonly must be True, False or None"
                                            : "readonly must be True or False");
    }
    *out = obj == Py_True ? MB_FORCE_READONLY : MB_REQUIRE_WRITABLE;
    return 0;
}

/* on_release=: a callable or None; *out a new reference or NULL. */
static int
on_release_arg(PyObject *obj, PyObject **out)
{
    *out = NULL;
    if (obj == NULL || obj == Py_None) {
        return 0;
    }
    if (!PyCallable_Check(obj)) {
        return membuf_type_error(PyExc_TypeError, obj, "on_release must be callable or None");
    }
    *out = Py_NewRef(obj);
    return 0;
}

/* A constructor failed after it took on_release (a new reference, or NULL):
 * call it once, as contract 3 says, keeping the constructor's exception. */
static void
give_back(PyObject *on_release)
{
    if (on_release != NULL) {
        MemBuf_Spec unwrapped = {0};
        unwrapped.ctx = on_release;
        membuf_release_unwrapped(&unwrapped, 1);
    }
}

/* format=: a str without NUL, or None (*out stays NULL). */
static int
format_arg(PyObject *obj, const char **out)
{
    if (obj == NULL || obj == Py_None) {
        return 0;
    }
    if (!PyUnicode_Check(obj)) {
        return membuf_type_error(PyExc_TypeError, obj, "format must be a str");
    }
    Py_ssize_t len;
    const char *text = PyUnicode_AsUTF8AndSize(obj, &len);
    if (text == NULL) {
        return -1;
    }
    if ((size_t)len != strlen(text)) {
        PyErr_SetString(PyExc_ValueError, "format contains a NUL character");
        return -1;
    }
    *out = text;
    return 0;
}

/* shape= / strides=: a tuple or list of at most MEMBUF_MAX_NDIM ints (not
 * bools), or None (*n stays -1).  Signs are checked by the validator. */
static int
ssize_list_arg(PyObject *obj, const char *name, Py_ssize_t *values, int *n)
{
    if (obj == NULL || obj == Py_None) {
        return 0;
    }
    if (!PyTuple_Check(obj) && !PyList_Check(obj)) {
        return membuf_type_error(PyExc_TypeError, obj, "%s must be a tuple of ints", name);
    }
    Py_ssize_t count = PySequence_Size(obj);
    if (count < 0) {
        return -1;
    }
    if (count > MEMBUF_MAX_NDIM) {
        PyErr_Format(PyExc_ValueError, "%s has %zd entries (at most %d)", name, count,
                     MEMBUF_MAX_NDIM);
        return -1;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PySequence_GetItem(obj, i); /* a list may change under __index__ */
        if (item == NULL) {
            return -1;
        }
        if (!PyIndex_Check(item) || PyBool_Check(item)) {
            membuf_type_error(PyExc_TypeError, item, "%s[%zd] must be an int", name, i);
            Py_DECREF(item);
            return -1;
        }
        PyObject *number = PyNumber_Index(item);
        Py_DECREF(item);
        if (number == NULL) {
            return -1;
        }
        values[i] = PyLong_AsSsize_t(number);
        Py_DECREF(number);
        if (values[i] == -1 && PyErr_Occurred()) {
            if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
                PyErr_Format(PyExc_OverflowError, "%s[%zd] is too large", name, i);
            }
            return -1;
        }
    }
    *n = (int)count;
    return 0;
}

/* The layout arguments of from_address / from_buffer. */
typedef struct {
    const char *format; /* NULL: not given */
    Py_ssize_t shape[MEMBUF_MAX_NDIM], strides[MEMBUF_MAX_NDIM];
    int ndim;           /* of shape; -1: not given */
    int nstrides;       /* -1: not given */
} layout_args;

static int
parse_layout(PyObject *format, PyObject *shape, PyObject *strides, layout_args *out)
{
    out->format = NULL;
    out->ndim = out->nstrides = -1;
    if (format_arg(format, &out->format) < 0 ||
        ssize_list_arg(shape, "shape", out->shape, &out->ndim) < 0 ||
        ssize_list_arg(strides, "strides", out->strides, &out->nstrides) < 0) {
        return -1;
    }
    if (out->nstrides >= 0 && out->ndim < 0) {
        PyErr_SetString(PyExc_ValueError, "strides given without a shape");
        return -1;
    }
    if (out->nstrides >= 0 && out->nstrides != out->ndim) {
        PyErr_Format(PyExc_ValueError, "strides has %d entries but shape has %d",
                     out->nstrides, out->ndim);
        return -1;
    }
    return 0;
}

/* The bytes a layout (from element 0 at offset 0, non-negative strides)
 * reaches: -1 with an exception if it cannot be derived. */
static Py_ssize_t
derived_size(const layout_args *layout, const char *format)
{
    Py_ssize_t itemsize = format != NULL ? membuf_itemsize_of_format(format) : 1;
    if (itemsize < 0) {
        return -1;
    }
    Py_ssize_t extent = itemsize; /* the last item's end */
    for (int i = 0; i < layout->ndim; i++) {
        Py_ssize_t n = layout->shape[i];
        if (n < 0) {
            PyErr_Format(PyExc_ValueError, "shape[%d] is negative (%zd)", i, n);
            return -1;
        }
        if (n == 0) {
            return 0; /* no item */
        }
    }
    for (int i = 0; i < layout->ndim; i++) {
        Py_ssize_t n = layout->shape[i];
        Py_ssize_t step = layout->nstrides >= 0 ? layout->strides[i] : 0;
        if (layout->nstrides < 0) {
            /* C order: the extent is the product */
            if (extent > PY_SSIZE_T_MAX / n) {
                goto overflow;
            }
            extent *= n;
            continue;
        }
        if (step < 0 && n > 1) {
            PyErr_Format(PyExc_ValueError,
                         "strides[%d] is negative: element [0, ..., 0] is at address, so the "
                         "layout reaches below it", i);
            return -1;
        }
        if (n > 1 && step > (PY_SSIZE_T_MAX - extent) / (n - 1)) {
            goto overflow;
        }
        extent += (n - 1) * step;
    }
    return extent;
overflow:
    PyErr_SetString(PyExc_OverflowError, "the size of the layout overflows");
    return -1;
}

/* ------------------------------------------------------------------------ */
/* from_address                                                             */
/* ------------------------------------------------------------------------ */

/* A ctypes or cffi object as an address: membuf/_address.py's
 * convert(obj) -> (address, size or None, format or None, shape or None),
 * or None if obj is neither.  Returns a new reference (a 4-tuple), or NULL
 * with TypeError for an object of no known kind. */
static PyObject *
convert_address(PyObject *obj)
{
    PyObject *helper = PyImport_ImportModule("membuf._address");
    if (helper == NULL) {
        return NULL;
    }
    PyObject *result = PyObject_CallMethod(helper, "convert", "O", obj);
    Py_DECREF(helper);
    if (result == Py_None) {
        Py_DECREF(result);
        membuf_type_error(PyExc_TypeError, obj,
                          "address must be an int, a ctypes pointer, array or object, or a "
                          "cffi pointer or array");
        return NULL;
    }
    return result;
}

enum {
    FA_ADDRESS, FA_SIZE, FA_FORMAT, FA_SHAPE, FA_STRIDES, FA_READONLY, FA_OWNER, FA_ON_RELEASE,
    FA_COUNT
};
static const int from_address_params[FA_COUNT] = {
    MB_KW_ADDRESS, MB_KW_SIZE,     MB_KW_FORMAT, MB_KW_SHAPE,
    MB_KW_STRIDES, MB_KW_READONLY, MB_KW_OWNER,  MB_KW_ON_RELEASE,
};
static const signature from_address_sig = {
    "from_address", 2, 1, FA_COUNT, from_address_params,
    {FA_ADDRESS, FA_SIZE, FA_FORMAT, FA_SHAPE, FA_STRIDES, FA_READONLY, FA_OWNER, FA_ON_RELEASE},
};

PyObject *
membuf_py_from_address(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                       PyObject *kwnames)
{
    PyObject *v[FA_COUNT];
    if (parse_args(module, &from_address_sig, args, nargs, kwnames, v) < 0) {
        return NULL;
    }
    PyObject *on_release;
    if (on_release_arg(v[FA_ON_RELEASE], &on_release) < 0) {
        return NULL;
    }
    /* From here on on_release is ours: every failure calls it. */
    MemBuf_Spec spec = {0};
    spec.ctx = on_release;
    PyObject *converted = NULL; /* a ctypes/cffi address: (address, size, format, shape) */
    PyObject *owner = v[FA_OWNER] != Py_None ? v[FA_OWNER] : NULL;
    PyObject *address_obj = v[FA_ADDRESS], *size_obj = v[FA_SIZE];
    PyObject *format_obj = v[FA_FORMAT], *shape_obj = v[FA_SHAPE];
    unsigned long long address = 0, size = 0;
    int readonly = MB_FORCE_READONLY;
    layout_args layout;

    /* The short path: plain bytes at an int address with an int size. */
    if (PyLong_CheckExact(address_obj) && size_obj != NULL && PyLong_CheckExact(size_obj) &&
        (format_obj == NULL || format_obj == Py_None) &&
        (shape_obj == NULL || shape_obj == Py_None) &&
        (v[FA_STRIDES] == NULL || v[FA_STRIDES] == Py_None) &&
        (v[FA_READONLY] == NULL || PyBool_Check(v[FA_READONLY]))) {
        Py_ssize_t length = -1;
        address = PyLong_AsUnsignedLongLong(address_obj);
        if (!PyErr_Occurred()) {
            length = PyLong_AsSsize_t(size_obj);
        }
        if (PyErr_Occurred()) {
            PyErr_Clear(); /* negative or too large: the general path says which */
        }
        else if (length >= 0 && address <= UINTPTR_MAX &&
                 (unsigned long long)length <= UINTPTR_MAX - address &&
                 (address != 0 || length == 0)) {
            int flags = v[FA_READONLY] == Py_False ? MEMBUF_WRITABLE : 0;
            return membuf_new_plain((const void *)(uintptr_t)address, (size_t)length, flags,
                                    owner, on_release);
        }
    }

    if (!PyLong_CheckExact(address_obj) && (!PyIndex_Check(address_obj) ||
                                            PyBool_Check(address_obj))) {
        if (PyBool_Check(address_obj)) {
            membuf_type_error(PyExc_TypeError, address_obj, "address must be an int");
            goto fail;
        }
        converted = convert_address(address_obj);
        if (converted == NULL) {
            goto fail;
        }
        if (owner != NULL) {
            PyObject *name = membuf_type_name(address_obj);
            if (name != NULL) {
                PyErr_Format(PyExc_ValueError,
                             "from_address() keeps the %.200U object given as address alive "
                             "as the owner: owner= must be None with it (pass its address as "
                             "an int to choose another owner)",
                             name);
                Py_DECREF(name);
            }
            goto fail;
        }
        owner = address_obj;
        address_obj = MB_TUPLE_ITEM(converted, 0);
        if (size_obj == NULL || size_obj == Py_None) {
            size_obj = MB_TUPLE_ITEM(converted, 1);
        }
        /* Its element type is the default format; its dimensions the
         * default shape, only when neither format nor shape is given. */
        int retyped = (format_obj != NULL && format_obj != Py_None) ||
                      (shape_obj != NULL && shape_obj != Py_None);
        if (format_obj == NULL || format_obj == Py_None) {
            format_obj = MB_TUPLE_ITEM(converted, 2);
        }
        if (!retyped) {
            shape_obj = MB_TUPLE_ITEM(converted, 3);
        }
    }
    if (unsigned_arg(address_obj, "address", UINTPTR_MAX, &address) < 0 ||
        parse_layout(format_obj, shape_obj, v[FA_STRIDES], &layout) < 0 ||
        readonly_arg(v[FA_READONLY], 0, &readonly) < 0) {
        goto fail;
    }
    if (size_obj != NULL && size_obj != Py_None) {
        if (unsigned_arg(size_obj, "size", PY_SSIZE_T_MAX, &size) < 0) {
            goto fail;
        }
        PyObject *own_size = converted != NULL ? MB_TUPLE_ITEM(converted, 1) : Py_None;
        if (own_size != Py_None && size_obj != own_size) {
            /* A ctypes/cffi object holding its memory: never reach past it. */
            unsigned long long limit;
            if (unsigned_arg(own_size, "size", PY_SSIZE_T_MAX, &limit) < 0) {
                goto fail;
            }
            if (size > limit) {
                PyObject *name = membuf_type_name(owner);
                if (name != NULL) {
                    PyErr_Format(PyExc_ValueError,
                                 "size %llu is larger than the %llu bytes of the %.200U object "
                                 "given as address",
                                 size, limit, name);
                    Py_DECREF(name);
                }
                goto fail;
            }
        }
    }
    else if (layout.ndim >= 0) {
        Py_ssize_t derived = derived_size(&layout, layout.format);
        if (derived < 0) {
            goto fail;
        }
        size = (unsigned long long)derived;
    }
    else {
        PyErr_SetString(PyExc_TypeError,
                        "from_address() needs a size, or a shape to derive it from");
        goto fail;
    }
    if (size > UINTPTR_MAX - address) {
        PyErr_SetString(PyExc_OverflowError, "address + size overflows the address space");
        goto fail;
    }
    if (address == 0 && size > 0) {
        PyErr_Format(PyExc_ValueError, "address is 0 (NULL) but size is %llu", size);
        goto fail;
    }
    spec.ptr = (const void *)(uintptr_t)address;
    spec.len = (size_t)size;
    spec.flags = readonly == MB_FORCE_READONLY ? 0 : MEMBUF_WRITABLE;
    spec.format = layout.format;
    if (layout.ndim >= 0) {
        spec.ndim = layout.ndim;
        spec.shape = layout.shape;
        spec.strides = layout.nstrides >= 0 ? layout.strides : NULL;
    }
    spec.owner = owner;
    /* membuf_from_spec calls on_release itself if it fails. */
    PyObject *result = membuf_from_spec(&spec, on_release != NULL ? MB_CTX_PYCALLABLE : MB_CTX_C);
    Py_XDECREF(converted); /* after: the format text may live in it */
    return result;

fail:
    Py_XDECREF(converted);
    give_back(on_release);
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* from_buffer and _rebuild: a Buffer over another exporter's memory        */
/* ------------------------------------------------------------------------ */

/* "from_buffer(): <type of obj> <problem>" */
static void
exporter_error(PyObject *exc, PyObject *obj, const char *format, ...)
{
    va_list va;
    va_start(va, format);
    PyObject *problem = PyUnicode_FromFormatV(format, va);
    va_end(va);
    PyObject *name = problem != NULL ? membuf_type_name(obj) : NULL;
    if (name != NULL) {
        PyErr_Format(exc, "from_buffer(): %.200U %U", name, problem);
    }
    Py_XDECREF(name);
    Py_XDECREF(problem);
}

PyObject *
membuf_from_exporter(PyObject *obj, int readonly_mode, const MemBuf_Spec *layout,
                     PyObject *on_release)
{
    membuf_held_export *held = PyMem_Calloc(1, sizeof(membuf_held_export));
    if (held == NULL) {
        PyErr_NoMemory();
        goto fail_early;
    }
    /* With a layout of our own: the exporter's bytes, C-contiguous (its
     * format only as the default).  Otherwise its own layout, strided. */
    int request = layout != NULL ? PyBUF_C_CONTIGUOUS | PyBUF_FORMAT : PyBUF_RECORDS_RO;
    if (readonly_mode == MB_REQUIRE_WRITABLE) {
        request |= PyBUF_WRITABLE;
    }
    Py_buffer *view = &held->view;
    if (PyObject_GetBuffer(obj, view, request) < 0) {
        PyMem_Free(held);
        goto fail_early;
    }
    /* The export is ours now: from here on the spec's release ends it. */
    held->on_release = on_release;
    MemBuf_Spec spec = {0};
    spec.release = membuf_held_export_release;
    spec.ctx = held;
    spec.owner = obj;
    int writable = !view->readonly && readonly_mode != MB_FORCE_READONLY;
    spec.flags = writable ? MEMBUF_WRITABLE : 0;
    const char *exporter_format = view->format != NULL ? view->format : "B";
    Py_ssize_t offset = 0;
    Py_ssize_t c_strides[MEMBUF_MAX_NDIM];

    if (layout != NULL) {
        spec.ptr = view->buf;
        spec.len = (size_t)view->len;
        spec.format = layout->format != NULL ? layout->format : exporter_format;
        spec.ndim = layout->ndim;
        spec.shape = layout->shape;
        spec.strides = layout->strides;
    }
    else {
        /* The exporter's layout as it is: find the lowest and the highest
         * byte it reaches, so that the validator sees the whole span. */
        if (view->suboffsets != NULL) {
            exporter_error(PyExc_BufferError, obj,
                           "exports an indirect (suboffsets) layout, which membuf.Buffer "
                           "cannot represent");
            goto fail;
        }
        if (view->ndim > MEMBUF_MAX_NDIM) {
            exporter_error(PyExc_ValueError, obj, "exports %d dimensions (at most %d)",
                           view->ndim, MEMBUF_MAX_NDIM);
            goto fail;
        }
        Py_ssize_t itemsize = membuf_itemsize_of_format(exporter_format);
        if (itemsize < 0) {
            goto fail;
        }
        if (itemsize != view->itemsize) {
            exporter_error(PyExc_ValueError, obj,
                           "exports format '%.200s' (item size %zd) with itemsize %zd",
                           exporter_format, itemsize, view->itemsize);
            goto fail;
        }
        spec.format = exporter_format;
        spec.ndim = view->ndim;
        if (view->ndim == 0 || view->shape == NULL) {
            /* One item (ndim 0), or a 1-D exporter that filled no shape. */
            spec.ptr = view->buf;
            spec.len = (size_t)view->len;
            spec.shape = view->ndim == 0 ? c_strides /* unread: ndim 0 */ : NULL;
        }
        else {
            const Py_ssize_t *strides = view->strides;
            if (strides == NULL) { /* C-contiguous */
                Py_ssize_t step = itemsize;
                for (int i = view->ndim - 1; i >= 0; i--) {
                    c_strides[i] = step;
                    step *= view->shape[i] > 0 ? view->shape[i] : 1;
                }
                strides = c_strides;
            }
            /* The bytes below and above element 0 that the layout reaches,
             * each kept <= PY_SSIZE_T_MAX: an exporter may claim anything. */
            Py_ssize_t below = 0, above = itemsize, empty = 0;
            for (int i = 0; i < view->ndim; i++) {
                empty |= view->shape[i] == 0;
            }
            for (int i = 0; i < view->ndim && !empty; i++) {
                Py_ssize_t n = view->shape[i], stride = strides[i];
                if (n < 0 || stride == PY_SSIZE_T_MIN) {
                    goto bad_layout;
                }
                Py_ssize_t step = stride < 0 ? -stride : stride;
                if (n > 1 && step > (PY_SSIZE_T_MAX - (stride < 0 ? below : above)) / (n - 1)) {
                    goto bad_layout;
                }
                *(stride < 0 ? &below : &above) += (n - 1) * step;
            }
            if (below > PY_SSIZE_T_MAX - above) {
                goto bad_layout;
            }
            Py_ssize_t low = -below, high = above;
            offset = empty ? 0 : -low;
            spec.ptr = empty ? view->buf : (char *)view->buf + low;
            spec.len = empty ? 0 : (size_t)(high - low);
            spec.shape = view->shape;
            spec.strides = strides;
        }
    }
    /* On failure membuf_from_spec_at calls membuf_held_export_release. */
    return membuf_from_spec_at(&spec, MB_CTX_HELD_EXPORT, offset);

bad_layout:
    exporter_error(PyExc_OverflowError, obj, "exports a layout whose extent overflows");
fail:
    membuf_held_export_release(NULL, 0, held); /* ends the export, calls on_release */
    return NULL;
fail_early:
    give_back(on_release);
    return NULL;
}

enum { FB_OBJ, FB_READONLY, FB_FORMAT, FB_SHAPE, FB_STRIDES, FB_ON_RELEASE, FB_COUNT };
static const int from_buffer_params[FB_COUNT] = {
    -1, MB_KW_READONLY, MB_KW_FORMAT, MB_KW_SHAPE, MB_KW_STRIDES, MB_KW_ON_RELEASE,
};
static const signature from_buffer_sig = {
    "from_buffer", 1, 1, FB_COUNT, from_buffer_params,
    {-1, -1, FB_FORMAT, FB_SHAPE, FB_STRIDES, FB_READONLY, -1, FB_ON_RELEASE},
};

PyObject *
membuf_py_from_buffer(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                      PyObject *kwnames)
{
    PyObject *v[FB_COUNT];
    if (parse_args(module, &from_buffer_sig, args, nargs, kwnames, v) < 0) {
        return NULL;
    }
    PyObject *on_release;
    if (on_release_arg(v[FB_ON_RELEASE], &on_release) < 0) {
        return NULL;
    }
    int readonly = MB_FOLLOW_EXPORTER;
    layout_args parsed;
    if (readonly_arg(v[FB_READONLY], 1, &readonly) < 0 ||
        parse_layout(v[FB_FORMAT], v[FB_SHAPE], v[FB_STRIDES], &parsed) < 0) {
        give_back(on_release);
        return NULL;
    }
    if (parsed.format == NULL && parsed.ndim < 0) {
        return membuf_from_exporter(v[FB_OBJ], readonly, NULL, on_release);
    }
    MemBuf_Spec layout = {0};
    layout.format = parsed.format;
    if (parsed.ndim >= 0) {
        layout.ndim = parsed.ndim;
        layout.shape = parsed.shape;
        layout.strides = parsed.nstrides >= 0 ? parsed.strides : NULL;
    }
    return membuf_from_exporter(v[FB_OBJ], readonly, &layout, on_release);
}

/* ------------------------------------------------------------------------ */
/* address_of                                                               */
/* ------------------------------------------------------------------------ */

/* address_of(obj): where obj's buffer export starts (inspection helper). */
PyObject *
membuf_py_address_of(PyObject *module, PyObject *obj)
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
