/* DLPack: Buffer.__dlpack__() and Buffer.__dlpack_device__(), following the
 * Python array API standard.  CPU memory only.
 *
 * Ownership: every capsule owns one heap block (dlpack_export) holding the
 * managed tensor, its shape and strides, and either an export of the Buffer
 * (zero-copy: the Buffer cannot be strictly released while the consumer
 * lives, and a deferred release completes when it lets go) or a private copy
 * of the contents (copy=True).  The block is freed exactly once, by the
 * deleter: called by the consumer once it has renamed the capsule to
 * "used_dltensor(_versioned)", or by the capsule's destructor if no consumer
 * ever took it.
 *
 * Only limited-API calls (Py_LIMITED_API 3.11) are used here.
 */
#include "core.h"

#include <string.h>

#include "dlpack.h"

#define LEGACY_NAME "dltensor"
#define VERSIONED_NAME "dltensor_versioned"

typedef struct {
    /* First member: the deleter's argument is also the block to free. */
    union {
        DLManagedTensor legacy;
        DLManagedTensorVersioned versioned;
    } tensor;
    Py_buffer view; /* an export of the Buffer while view.obj != NULL */
    void *copy;     /* copy=True: the contents, C order (PyMem_Malloc) */
    int64_t interp_id; /* the Buffer's interpreter: the deleter ends the export there */
    int64_t dims[]; /* shape[ndim], then strides[ndim] in items */
} dlpack_export;

/* ------------------------------------------------------------------------ */
/* Deleters                                                                 */
/* ------------------------------------------------------------------------ */

/* End the export and free the block.  The GIL of the Buffer's interpreter
 * is held. */
static void
export_end(dlpack_export *ex)
{
    if (ex->view.obj != NULL) {
        PyBuffer_Release(&ex->view); /* may complete a deferred release */
    }
    PyMem_Free(ex->copy);
    PyMem_Free(ex);
}

#ifndef Py_LIMITED_API

/* The thread state attached to *this* thread (it holds its interpreter's
 * GIL), or NULL.  3.12 made the current thread state thread-local; in 3.11
 * it is the process's, whichever thread holds the GIL, so it must be this
 * thread's own. */
static PyThreadState *
attached_thread_state(void)
{
#if PY_VERSION_HEX >= 0x030D0000
    return PyThreadState_GetUnchecked();
#elif PY_VERSION_HEX >= 0x030C0000
    return _PyThreadState_UncheckedGet();
#else
    PyThreadState *tstate = _PyThreadState_UncheckedGet();
    return tstate != NULL && tstate->thread_id == PyThread_get_thread_ident() ? tstate : NULL;
#endif
}

/* The interpreter of that ID if it still exists, else NULL.  The (shared)
 * GIL is held, under which interpreters are created and destroyed. */
static PyInterpreterState *
live_interpreter(int64_t id)
{
    for (PyInterpreterState *interp = PyInterpreterState_Head(); interp != NULL;
         interp = PyInterpreterState_Next(interp)) {
        if (PyInterpreterState_GetID(interp) == id) {
            return interp;
        }
    }
    return NULL;
}

/* The deleter.  Consumers call it from any thread, holding the GIL or not
 * (PyTorch frees tensors from its own threads), and inside subinterpreters
 * (which share the main GIL: membuf refuses to load where they do not):
 *   - a thread with an attached thread state holds the GIL of the running
 *     interpreter, which is the Buffer's (objects do not cross
 *     interpreters): end the export right here.  That includes the thread
 *     that finalizes the interpreter at exit, so a consumer freed then still
 *     ends its export.  (PyGILState_Ensure() here would switch to the main
 *     interpreter's thread state and wait for a GIL this thread holds.)
 *   - any other thread takes the GIL through PyGILState_Ensure(); a Buffer of
 *     a subinterpreter is then reached through a temporary thread state of
 *     that interpreter, if it still exists.  A consumer that outlived the
 *     Buffer's subinterpreter cannot end the export: the block is leaked, as
 *     every object of a destroyed interpreter that something still holds.
 *   - after Py_Finalize, nothing is left to end: the block is leaked. */
static void
export_free(dlpack_export *ex)
{
    PyThreadState *attached = attached_thread_state();
    if (attached != NULL) {
        if (PyInterpreterState_GetID(PyThreadState_GetInterpreter(attached)) == ex->interp_id) {
            export_end(ex);
        }
        /* else: freed by another interpreter's code, which must not touch
         * this one's objects: leaked. */
        return;
    }
    if (!Py_IsInitialized()) {
        return; /* the interpreter, and the Buffer with it, are gone */
    }
    PyGILState_STATE gil = PyGILState_Ensure();
    PyInterpreterState *current = PyThreadState_GetInterpreter(PyThreadState_Get());
    if (PyInterpreterState_GetID(current) == ex->interp_id) {
        export_end(ex);
    }
    else {
        PyInterpreterState *interp = live_interpreter(ex->interp_id);
        PyThreadState *tstate = interp != NULL ? PyThreadState_New(interp) : NULL;
        if (tstate != NULL) {
            PyThreadState *saved = PyThreadState_Swap(tstate); /* the GIL is shared */
            export_end(ex);
            PyThreadState_Clear(tstate);
            (void)PyThreadState_Swap(saved);
            PyThreadState_Delete(tstate);
        }
    }
    PyGILState_Release(gil);
}

#else /* Py_LIMITED_API */

/* The deleter of the stable-ABI build.  Its API cannot tell which thread
 * holds the GIL (3.11 has no PyGILState_Check, no unchecked thread-state
 * getter), so capsules are made in the main interpreter only (see
 * membuf_dlpack) and the deleter always goes through PyGILState_Ensure(),
 * which is re-entrant for a thread that holds the GIL already.  At exit,
 * the finalizing thread still has its thread state (Py_IsInitialized() is
 * false while module globals are cleared): a consumer freed then still
 * ends its export.  A thread without a thread state after that point finds
 * nothing to end: the block is leaked. */
static void
export_free(dlpack_export *ex)
{
    if (!Py_IsInitialized() && PyGILState_GetThisThreadState() == NULL) {
        return;
    }
    PyGILState_STATE gil = PyGILState_Ensure();
    export_end(ex);
    PyGILState_Release(gil);
}

#endif /* Py_LIMITED_API */

static void
legacy_deleter(DLManagedTensor *tensor)
{
    export_free((dlpack_export *)tensor->manager_ctx);
}

static void
versioned_deleter(DLManagedTensorVersioned *tensor)
{
    export_free((dlpack_export *)tensor->manager_ctx);
}

/* A consumer renames the capsule when it takes the tensor over (and then
 * calls the deleter itself); a capsule still under its first name was never
 * consumed, and its tensor is ours to delete. */
static void
capsule_destructor(PyObject *capsule)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (PyCapsule_IsValid(capsule, LEGACY_NAME)) {
        DLManagedTensor *tensor = PyCapsule_GetPointer(capsule, LEGACY_NAME);
        tensor->deleter(tensor);
    }
    else if (PyCapsule_IsValid(capsule, VERSIONED_NAME)) {
        DLManagedTensorVersioned *tensor = PyCapsule_GetPointer(capsule, VERSIONED_NAME);
        tensor->deleter(tensor);
    }
    PyErr_Restore(type, value, tb);
}

/* ------------------------------------------------------------------------ */
/* Arguments                                                                */
/* ------------------------------------------------------------------------ */

/* A tuple of two ints: values[] gets them saturated to the range of long (a
 * version or device number beyond it is only "very large"), exact[] new
 * references to them as exact ints (for messages).  -1 with TypeError
 * naming the argument and what is wrong with it otherwise. */
static int
int_pair(PyObject *obj, const char *name, long values[2], PyObject *exact[2])
{
    if (!PyTuple_Check(obj)) {
        return membuf_type_error(PyExc_TypeError, obj, "%s must be None or a tuple of two ints",
                                 name);
    }
    Py_ssize_t n = PyTuple_Size(obj);
    if (n != 2) {
        PyErr_Format(PyExc_TypeError, "%s must be a tuple of two ints, not of %zd item%s", name,
                     n, n == 1 ? "" : "s");
        return -1;
    }
    for (Py_ssize_t i = 0; i < 2; i++) {
        PyObject *item = PyTuple_GetItem(obj, i);
        if (!PyLong_Check(item) || PyBool_Check(item)) {
            Py_XDECREF(exact[0]);
            exact[0] = NULL;
            return membuf_type_error(PyExc_TypeError, item, "%s[%zd] must be an int", name, i);
        }
        int overflow;
        long value = PyLong_AsLongAndOverflow(item, &overflow);
        exact[i] = value == -1 && PyErr_Occurred() ? NULL : PyNumber_Index(item);
        if (exact[i] == NULL) {
            Py_XDECREF(exact[0]);
            exact[0] = NULL;
            return -1;
        }
        values[i] = overflow > 0 ? LONG_MAX : overflow < 0 ? LONG_MIN : value;
    }
    return 0;
}

/* The DLPack data type of self's format, or -1 with BufferError.  Only
 * native byte order: DLPack has no other. */
static int
dtype_of(const MemBufObject *self, DLDataType *dtype)
{
    const char *format = membuf_format(self);
    const char *code = membuf_native_code(format); /* DLPack has no other byte order */
    int kind = -1;
    if (code != NULL && code[1] == '\0') {
        switch (code[0]) {
        case 'b': case 'h': case 'i': case 'l': case 'q': case 'n': kind = kDLInt; break;
        case 'B': case 'H': case 'I': case 'L': case 'Q': case 'N': kind = kDLUInt; break;
        case 'e': case 'f': case 'd': kind = kDLFloat; break;
        case '?': kind = kDLBool; break;
        default: break;
        }
    }
    else if (code != NULL) {
        kind = kDLComplex; /* Zf, Zd */
    }
    if (kind < 0) {
        PyErr_Format(PyExc_BufferError,
                     "membuf.Buffer: format '%.200s' has no DLPack data type (supported: native "
                     "b h i l q n, B H I L Q N, e f d, ?, Zf Zd)", format);
        return -1;
    }
    dtype->code = (uint8_t)kind;
    dtype->bits = (uint8_t)(membuf_itemsize(self) * 8); /* itemsize <= 16 here */
    dtype->lanes = 1;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* __dlpack__                                                               */
/* ------------------------------------------------------------------------ */

/* Fill shape and strides (in items) of the exported tensor.  A stride that
 * never moves to another element (the dimension has at most one item, or
 * the layout none at all) is exported as the C-contiguous one; any other
 * stride must be a whole number of items, else -1 with BufferError. */
static int
fill_dims(const MemBufObject *self, int contiguous_copy, int64_t *shape, int64_t *strides)
{
    int64_t c_stride = 1;
    for (int i = membuf_ndim(self) - 1; i >= 0; i--) {
        Py_ssize_t stride = membuf_strides(self)[i];
        shape[i] = membuf_shape(self)[i];
        if (contiguous_copy || membuf_shape(self)[i] <= 1 || self->nbytes == 0) {
            strides[i] = c_stride;
        }
        else if (stride % membuf_itemsize(self) != 0) {
            PyErr_Format(PyExc_BufferError,
                         "membuf.Buffer: stride %zd of dimension %d is not a multiple of the item "
                         "size %zd; DLPack counts strides in items", stride, i, membuf_itemsize(self));
            return -1;
        }
        else {
            strides[i] = stride / membuf_itemsize(self);
        }
        /* Bounded by the memory unless the layout is empty; then the
         * strides are never used and only must not overflow. */
        if (membuf_shape(self)[i] > 1 && c_stride <= INT64_MAX / membuf_shape(self)[i]) {
            c_stride *= membuf_shape(self)[i];
        }
    }
    return 0;
}

PyObject *
membuf_dlpack(MemBufObject *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"stream", "max_version", "dl_device", "copy", NULL};
    PyObject *stream = Py_None, *max_version = Py_None, *dl_device = Py_None, *copy = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|$OOOO:__dlpack__", names, &stream,
                                     &max_version, &dl_device, &copy)) {
        return NULL;
    }
    long version[2] = {0, 0}, device[2] = {kDLCPU, 0};
    PyObject *version_ints[2] = {NULL, NULL}, *device_ints[2] = {NULL, NULL};
    if (max_version != Py_None && int_pair(max_version, "max_version", version, version_ints) < 0) {
        return NULL;
    }
    Py_XDECREF(version_ints[0]);
    Py_XDECREF(version_ints[1]);
    if (dl_device != Py_None && int_pair(dl_device, "dl_device", device, device_ints) < 0) {
        return NULL;
    }
    int bad = 0;
    if (copy != Py_None && !PyBool_Check(copy)) {
        membuf_type_error(PyExc_TypeError, copy, "copy must be None, True or False");
        bad = 1;
    }
    else if (device[0] != kDLCPU || device[1] != 0) {
        PyErr_Format(PyExc_BufferError,
                     "membuf.Buffer: cannot export to DLPack device (%S, %S); the memory is on "
                     "the CPU, device (1, 0)", device_ints[0], device_ints[1]);
        bad = 1;
    }
    Py_XDECREF(device_ints[0]);
    Py_XDECREF(device_ints[1]);
    if (bad) {
        return NULL;
    }
    if (stream != Py_None) {
        membuf_type_error(PyExc_BufferError, stream,
                          "membuf.Buffer: stream must be None for CPU memory");
        return NULL;
    }
    /* Argument conversion ran __index__: check the Buffer only now. */
    MB_CHECK_RELEASED(self, NULL);
#ifdef Py_LIMITED_API
    if (PyInterpreterState_GetID(PyInterpreterState_Get()) != 0) {
        PyErr_SetString(PyExc_BufferError,
                        "membuf.Buffer: the stable-ABI (abi3) build of membuf exports DLPack "
                        "capsules in the main interpreter only (its deleter could not tell which "
                        "thread holds a subinterpreter's GIL); use the default build");
        return NULL;
    }
#endif
    int versioned = version[0] >= 1;
    int do_copy = copy == Py_True;
    int readonly = !(self->flags & MEMBUF_WRITABLE);
    DLDataType dtype;
    if (dtype_of(self, &dtype) < 0) {
        return NULL;
    }
    if (readonly && !versioned && !do_copy) {
        PyErr_SetString(PyExc_BufferError,
                        "membuf.Buffer: cannot export read-only memory as a legacy DLPack tensor "
                        "(it has no read-only flag); pass max_version=(1, 0)");
        return NULL;
    }

    int ndim = membuf_ndim(self);
    dlpack_export *ex = PyMem_Calloc(1, sizeof(dlpack_export) + 2 * (size_t)ndim *
                                                                       sizeof(int64_t));
    if (ex == NULL) {
        return PyErr_NoMemory();
    }
    ex->interp_id = PyInterpreterState_GetID(PyInterpreterState_Get());
    int64_t *shape = ex->dims, *strides = ex->dims + ndim;
    if (fill_dims(self, do_copy, shape, strides) < 0) {
        PyMem_Free(ex);
        return NULL;
    }
    void *data;
    if (do_copy) {
        Py_buffer view;
        if (PyObject_GetBuffer((PyObject *)self, &view, PyBUF_FULL_RO) < 0) {
            PyMem_Free(ex);
            return NULL;
        }
        ex->copy = PyMem_Malloc(view.len > 0 ? (size_t)view.len : 1);
        int rc = ex->copy != NULL ? PyBuffer_ToContiguous(ex->copy, &view, view.len, 'C') : -1;
        PyBuffer_Release(&view);
        if (rc < 0) {
            if (ex->copy == NULL) {
                PyErr_NoMemory();
            }
            PyMem_Free(ex->copy);
            PyMem_Free(ex);
            return NULL;
        }
        data = ex->copy;
    }
    else {
        /* The export the capsule holds until the deleter runs. */
        int flags = readonly ? PyBUF_RECORDS_RO : PyBUF_RECORDS;
        if (PyObject_GetBuffer((PyObject *)self, &ex->view, flags) < 0) {
            PyMem_Free(ex);
            return NULL;
        }
        data = ex->view.buf;
    }

    DLTensor *tensor = versioned ? &ex->tensor.versioned.dl_tensor : &ex->tensor.legacy.dl_tensor;
    tensor->data = data;
    tensor->device.device_type = kDLCPU;
    tensor->device.device_id = 0;
    tensor->ndim = ndim;
    tensor->dtype = dtype;
    tensor->shape = shape;
    tensor->strides = strides;
    tensor->byte_offset = 0;
    void *pointer;
    const char *name;
    if (versioned) {
        ex->tensor.versioned.version.major = MB_DLPACK_MAJOR;
        ex->tensor.versioned.version.minor = MB_DLPACK_MINOR;
        ex->tensor.versioned.manager_ctx = ex;
        ex->tensor.versioned.deleter = versioned_deleter;
        ex->tensor.versioned.flags = do_copy    ? DLPACK_FLAG_BITMASK_IS_COPIED
                                     : readonly ? DLPACK_FLAG_BITMASK_READ_ONLY
                                                : 0;
        pointer = &ex->tensor.versioned;
        name = VERSIONED_NAME;
    }
    else {
        ex->tensor.legacy.manager_ctx = ex;
        ex->tensor.legacy.deleter = legacy_deleter;
        pointer = &ex->tensor.legacy;
        name = LEGACY_NAME;
    }
    PyObject *capsule = PyCapsule_New(pointer, name, capsule_destructor);
    if (capsule == NULL) {
        export_free(ex);
    }
    return capsule;
}

PyObject *
membuf_dlpack_device(MemBufObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    return Py_BuildValue("(ii)", kDLCPU, 0);
}
