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

/* Every request but the fast path of membuf_getbuffer. */
static MB_NOINLINE int
getbuffer_cold(MemBufObject *self, Py_buffer *view, int flags)
{
    /* Check and count under the Buffer's lock, so that no release can slip
     * in between (the rest reads fields that never change before release). */
    const char *refusal = NULL;
    int released;
    MB_LOCK(self);
    released = MB_REFUSES_WORK(self);
    if (!released && (refusal = refusal_of(self, flags)) == NULL) {
        MB_ASSERT_FIELDS(self);
        if (self->exports < MB_EXPORTS_MAX) {
            self->exports++;
        }
        else {
            refusal = "membuf.Buffer: too many exports";
        }
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
    int ndim = membuf_ndim(self);
    view->buf = self->buf;
    view->len = self->nbytes;
    view->readonly = !(self->flags & MEMBUF_WRITABLE);
    view->itemsize = membuf_itemsize(self);
    view->ndim = ndim;
    view->shape = membuf_shape(self);
    view->strides = membuf_strides(self);
    view->suboffsets = NULL;
    view->internal = NULL;
    view->format = REQ_FORMAT(flags) ? (char *)membuf_format(self) : NULL;
    if (!REQ_STRIDES(flags) || ndim == 0) {
        view->strides = NULL; /* ndim 0: shape and strides MUST be NULL */
    }
    if (ndim == 0) {
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

int
membuf_getbuffer(MemBufObject *self, Py_buffer *view, int flags)
{
#ifndef Py_GIL_DISABLED
    /* The fast path: compact bytes, live, a request it meets (any but a
     * writable one of read-only memory), answered as bytes answers
     * (PyBuffer_FillInfo).  The GIL makes the check and the count one step. */
    int state = self->flags;
    if (MB_LIKELY((state & (MB_COMPACT | MB_RELEASED | MB_PENDING)) == MB_COMPACT &&
                  (!REQ_WRITABLE(flags) || (state & MEMBUF_WRITABLE)) &&
                  self->exports < MB_EXPORTS_MAX)) {
        self->exports++;
        view->obj = Py_NewRef((PyObject *)self);
        view->buf = self->buf;
        view->len = self->nbytes;
        view->readonly = !(state & MEMBUF_WRITABLE);
        view->itemsize = 1;
        view->format = REQ_FORMAT(flags) ? "B" : NULL;
        view->ndim = 1;
        view->shape = REQ_SHAPE(flags) ? &self->nbytes : NULL;
        view->strides = REQ_STRIDES(flags) ? (Py_ssize_t *)&membuf_unit_stride : NULL;
        view->suboffsets = NULL;
        view->internal = NULL;
        return 0;
    }
#endif
    return getbuffer_cold(self, view, flags);
}

void
membuf_releasebuffer(MemBufObject *self, Py_buffer *view)
{
    (void)view;
    membuf_end_export(self);
}
