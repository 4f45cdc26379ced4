/* The Buffer type: one list of slot functions, two definitions (a static
 * type in the default build, a heap type from a spec in the stable-ABI
 * build).  The slot functions live with their concern: lifetime.c (dealloc,
 * GC), buffer_protocol.c (exports), buffer_methods.c (what Python sees). */
#include "core.h"

#ifndef Py_T_PYSSIZET /* before 3.12, the member types are structmember.h's */
#include <structmember.h>
#define Py_T_PYSSIZET T_PYSSIZET
#define Py_T_INT T_INT
#define Py_READONLY READONLY
#endif

static const char membuf_type_doc[] =
    "Buffer: a zero-copy, lifetime-managed view of memory owned by C code.\n"
    "\n"
    "Created by membuf.from_address() or, from C, MemBuf_FromMemory() /\n"
    "MemBuf_FromSpec().  Speaks the buffer protocol; release() gives the memory\n"
    "back (refused with BufferError while exports are alive).  `with buf:` releases\n"
    "at the end of the block: strictly on a clean exit; when the block raises, at\n"
    "once or when the last view ends, never hiding the block's exception.";

/* ------------------------------------------------------------------------ */
/* Attributes: none of them touch the memory, so all answer after release.  */
/* ------------------------------------------------------------------------ */

static PyMemberDef membuf_members[] = {
    {"nbytes", Py_T_PYSSIZET, offsetof(MemBufObject, nbytes), Py_READONLY,
     "Size of the contents in bytes."},
    {"exports", Py_T_INT, offsetof(MemBufObject, exports), Py_READONLY,
     "Number of live buffer exports."},
#ifdef Py_LIMITED_API /* a heap type says where its weak references live here */
    {"__weaklistoffset__", Py_T_PYSSIZET, offsetof(MemBufObject, weakreflist), Py_READONLY, NULL},
#endif
    {NULL, 0, 0, 0, NULL},
};

static PyObject *
get_address(MemBufObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromVoidPtr(self->buf);
}

/* A bit of flags as a bool: the closure is the mask. */
static PyObject *
get_flag(MemBufObject *self, void *closure)
{
    return PyBool_FromLong((self->flags & (int)(Py_intptr_t)closure) != 0);
}

static PyObject *
get_readonly(MemBufObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(!(self->flags & MEMBUF_WRITABLE));
}

static PyObject *
get_itemsize(MemBufObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromSsize_t(membuf_itemsize(self));
}

static PyObject *
get_ndim(MemBufObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromLong(membuf_ndim(self));
}

static PyObject *
get_format(MemBufObject *self, void *closure)
{
    (void)closure;
    return PyUnicode_FromString(membuf_format(self));
}

static PyObject *
get_shape(MemBufObject *self, void *closure)
{
    (void)closure;
    return membuf_ssize_tuple(membuf_ndim(self), membuf_shape(self));
}

static PyObject *
get_strides(MemBufObject *self, void *closure)
{
    (void)closure;
    return membuf_ssize_tuple(membuf_ndim(self), membuf_strides(self));
}

static PyObject *
get_owner(MemBufObject *self, void *closure)
{
    (void)closure;
    return Py_NewRef(membuf_owner(self) != NULL ? membuf_owner(self) : Py_None);
}

#define MB_FLAG_CLOSURE(mask) ((void *)(Py_intptr_t)(mask))

static PyGetSetDef membuf_getset[] = {
    {"address", (getter)get_address, NULL,
     "Address of the first element, as an int: what every export sees.", NULL},
    {"readonly", (getter)get_readonly, NULL, "True unless created writable.", NULL},
    {"released", (getter)get_flag, NULL, "True once the memory has been given back.",
     MB_FLAG_CLOSURE(MB_RELEASED)},
    {"itemsize", (getter)get_itemsize, NULL, "Size of one item in bytes.", NULL},
    {"ndim", (getter)get_ndim, NULL, "Number of dimensions.", NULL},
    {"format", (getter)get_format, NULL, "struct-module format of one item.", NULL},
    {"shape", (getter)get_shape, NULL, "Tuple of ndim lengths.", NULL},
    {"strides", (getter)get_strides, NULL, "Tuple of ndim strides in bytes.", NULL},
    {"owner", (getter)get_owner, NULL,
     "Object kept alive until release (None after release, or if none).", NULL},
    {"c_contiguous", (getter)get_flag, NULL, "True if the layout is C-contiguous.",
     MB_FLAG_CLOSURE(MB_C_CONTIG)},
    {"f_contiguous", (getter)get_flag, NULL, "True if the layout is Fortran-contiguous.",
     MB_FLAG_CLOSURE(MB_F_CONTIG)},
    {"contiguous", (getter)get_flag, NULL, "True if C- or Fortran-contiguous.",
     MB_FLAG_CLOSURE(MB_C_CONTIG | MB_F_CONTIG)},
    {NULL, NULL, NULL, NULL, NULL},
};


static PyObject *
membuf_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    (void)type;
    (void)args;
    (void)kwargs;
    PyErr_SetString(PyExc_TypeError,
                    "cannot create 'membuf.Buffer' instances directly; use "
                    "membuf.from_address() from Python, or MemBuf_FromMemory() / "
                    "MemBuf_FromSpec() from C");
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* The type: one list of slot functions, two definitions                    */
/* ------------------------------------------------------------------------ */

#ifndef Py_LIMITED_API

static PySequenceMethods membuf_as_sequence = {
    .sq_length = (lenfunc)membuf_length,
    .sq_item = (ssizeargfunc)membuf_item,
};

static PyMappingMethods membuf_as_mapping = {
    .mp_length = (lenfunc)membuf_length,
    .mp_subscript = (binaryfunc)membuf_subscript,
    .mp_ass_subscript = (objobjargproc)membuf_ass_subscript,
};

static PyBufferProcs membuf_as_buffer = {
    .bf_getbuffer = (getbufferproc)membuf_getbuffer,
    .bf_releasebuffer = (releasebufferproc)membuf_releasebuffer,
};

PyTypeObject MemBuf_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "membuf.Buffer",
    .tp_basicsize = sizeof(MemBufObject),
    .tp_itemsize = 1,
    .tp_dealloc = (destructor)membuf_dealloc,
    .tp_repr = (reprfunc)membuf_repr,
    .tp_as_sequence = &membuf_as_sequence,
    .tp_as_mapping = &membuf_as_mapping,
    .tp_hash = PyObject_HashNotImplemented,
    .tp_as_buffer = &membuf_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = membuf_type_doc,
    .tp_traverse = (traverseproc)membuf_traverse,
    .tp_clear = (inquiry)membuf_clear,
    .tp_richcompare = membuf_richcompare,
    .tp_weaklistoffset = offsetof(MemBufObject, weakreflist),
    .tp_members = membuf_members,
    .tp_methods = membuf_methods,
    .tp_getset = membuf_getset,
    .tp_new = membuf_new,
    .tp_finalize = (destructor)membuf_finalize,
#ifndef Py_GIL_DISABLED
    .tp_is_gc = membuf_is_gc, /* a GC header only where a cycle is possible (core.h) */
#endif
};

int
membuf_type_ready(void)
{
    return PyType_Ready(&MemBuf_Type);
}

#else /* Py_LIMITED_API: the same type, created from a spec */

PyTypeObject *membuf_heap_type = NULL; /* one per process, never freed */

static PyType_Slot membuf_slots[] = {
    {Py_tp_dealloc, (void *)membuf_dealloc},
    {Py_tp_repr, (void *)membuf_repr},
    {Py_sq_length, (void *)membuf_length},
    {Py_sq_item, (void *)membuf_item},
    {Py_mp_length, (void *)membuf_length},
    {Py_mp_subscript, (void *)membuf_subscript},
    {Py_mp_ass_subscript, (void *)membuf_ass_subscript},
    {Py_tp_hash, (void *)PyObject_HashNotImplemented},
    {Py_bf_getbuffer, (void *)membuf_getbuffer},
    {Py_bf_releasebuffer, (void *)membuf_releasebuffer},
    {Py_tp_doc, (void *)membuf_type_doc},
    {Py_tp_traverse, (void *)membuf_traverse},
    {Py_tp_clear, (void *)membuf_clear},
    {Py_tp_richcompare, (void *)membuf_richcompare},
    {Py_tp_members, membuf_members},
    {Py_tp_methods, membuf_methods},
    {Py_tp_getset, membuf_getset},
    {Py_tp_new, (void *)membuf_new},
    {Py_tp_finalize, (void *)membuf_finalize},
    {Py_tp_is_gc, (void *)membuf_is_gc},
    {0, NULL},
};

static PyType_Spec membuf_spec = {
    .name = "membuf.Buffer",
    .basicsize = sizeof(MemBufObject),
    .itemsize = 1,
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = membuf_slots,
};

int
membuf_type_ready(void)
{
    if (membuf_heap_type != NULL) {
        return 0; /* a second interpreter or a re-import: the type is shared */
    }
    membuf_heap_type = (PyTypeObject *)PyType_FromSpec(&membuf_spec);
    if (membuf_heap_type == NULL) {
        return -1;
    }
    membuf_capi.Buffer_Type = membuf_heap_type;
    return 0;
}

#endif /* Py_LIMITED_API */

