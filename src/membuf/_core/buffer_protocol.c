/* bf_getbuffer / bf_releasebuffer: the PEP 3118 face of a Buffer.
 *
 * Every export points at self->buf (zero-copy), holds a reference to self
 * (view->obj, dropped by PyBuffer_Release after our releasebuffer) and one
 * count in self->exports.  Requests are answered as CPython answers them:
 * plain byte Buffers like bytes (PyBuffer_FillInfo), typed or strided ones
 * like memoryview (Objects/memoryobject.c, memory_getbuf), including the
 * BufferError wording.  Exports never allocate.
 */
#include "core.h"

#define REQ_C_CONTIGUOUS(flags) (((flags) & PyBUF_C_CONTIGUOUS) == PyBUF_C_CONTIGUOUS)
#define REQ_F_CONTIGUOUS(flags) (((flags) & PyBUF_F_CONTIGUOUS) == PyBUF_F_CONTIGUOUS)
#define REQ_ANY_CONTIGUOUS(flags) (((flags) & PyBUF_ANY_CONTIGUOUS) == PyBUF_ANY_CONTIGUOUS)
#define REQ_STRIDES(flags) (((flags) & PyBUF_STRIDES) == PyBUF_STRIDES)
#define REQ_SHAPE(flags) (((flags) & PyBUF_ND) == PyBUF_ND)
#define REQ_WRITABLE(flags) ((flags) & PyBUF_WRITABLE)
#define REQ_FORMAT(flags) ((flags) & PyBUF_FORMAT)

/* The BufferError a request gets from this layout, or NULL.  Reads only
 * what never changes over a Buffer's life. */
static inline const char *
refusal_of(const MemBufObject *self, int flags)
{
    if (REQ_WRITABLE(flags) && !(self->flags & MEMBUF_WRITABLE)) {
        return "membuf.Buffer: underlying memory is read-only";
    }
    if (self->flags & MB_COMPACT) {
        return NULL; /* plain bytes answer every request, as bytes does */
    }
    if (REQ_C_CONTIGUOUS(flags) && !(self->flags & MB_C_CONTIG)) {
        return "membuf.Buffer: underlying buffer is not C-contiguous";
    }
    if (REQ_F_CONTIGUOUS(flags) && !(self->flags & MB_F_CONTIG)) {
        return "membuf.Buffer: underlying buffer is not Fortran contiguous";
    }
    if (REQ_ANY_CONTIGUOUS(flags) && !(self->flags & (MB_C_CONTIG | MB_F_CONTIG))) {
        return "membuf.Buffer: underlying buffer is not contiguous";
    }
    if (!REQ_STRIDES(flags) && !(self->flags & MB_C_CONTIG)) {
        return "membuf.Buffer: underlying buffer is not C-contiguous";
    }
    if (!REQ_SHAPE(flags) && REQ_FORMAT(flags)) {
        /* Without a shape the consumer sees the layout as unsigned bytes,
         * which a format cannot describe; memoryview refuses the same
         * (plain 1-D "B" Buffers never get here: they answer like bytes). */
        return "membuf.Buffer: cannot cast to unsigned bytes if the format flag is present";
    }
    return NULL;
}

int
membuf_getbuffer(MemBufObject *self, Py_buffer *view, int flags)
{
    /* Check and count under the Buffer's lock, so that no release can slip
     * in between (the rest reads fields that never change before release). */
    const char *refusal = NULL;
    int released;
    MB_LOCK(self);
    released = MB_REFUSES_WORK(self);
    if (!released && (refusal = refusal_of(self, flags)) == NULL) {
        MB_ASSERT_FIELDS(self);
        self->exports++;
    }
    MB_UNLOCK();
    if (released) {
        view->obj = NULL;
        return membuf_refuse(self);
    }
    if (refusal != NULL) {
        view->obj = NULL;
        PyErr_SetString(PyExc_BufferError, refusal);
        return -1;
    }
    view->buf = self->buf;
    view->len = self->nbytes;
    view->readonly = !(self->flags & MEMBUF_WRITABLE);
    view->itemsize = self->itemsize;
    view->ndim = self->ndim;
    view->shape = self->shape;
    view->strides = self->strides;
    view->suboffsets = NULL;
    view->internal = NULL;
    view->format = REQ_FORMAT(flags) ? (char *)membuf_format(self) : NULL;
    if (!REQ_STRIDES(flags) || self->ndim == 0) {
        view->strides = NULL; /* ndim 0: shape and strides MUST be NULL */
    }
    if (self->ndim == 0) {
        view->shape = NULL;
    }
    if (!REQ_SHAPE(flags)) {
        /* PyBUF_SIMPLE / PyBUF_WRITABLE: C-contiguous bytes from here on. */
        view->ndim = 1;
        view->shape = NULL;
    }
    /* suboffsets stay NULL: that meets PyBUF_INDIRECT and every other request. */
    view->obj = Py_NewRef((PyObject *)self);
    return 0;
}

void
membuf_releasebuffer(MemBufObject *self, Py_buffer *view)
{
    (void)view;
    membuf_end_export(self);
}
