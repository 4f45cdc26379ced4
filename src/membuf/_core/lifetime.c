/* Lifetime: allocation, the free list, creation, slices, release,
 * deallocation and garbage collection of a Buffer.
 *
 * Ownership in one sentence: from the moment membuf_from_spec() is entered,
 * the Buffer machinery owns the duty to call the release callback exactly
 * once -- on failure right away, on success at the first release, deferred
 * release or deallocation -- and it drops `owner` right after that call.
 * release_now() is the only place that duty is discharged (every release,
 * deallocation and the GC included); the invariants of core.h are asserted
 * on every path in and out of it.
 */
#include "core.h"

#include <string.h>

/* An empty Buffer created from NULL exports this address instead, so that no
 * consumer ever sees buf == NULL (memcpy(dst, NULL, 0) is undefined). */
static char membuf_empty[1];

/* A free list of compact Buffers: wrapping plain bytes is the hot path of
 * every user.  Objects on it are untracked, own nothing, and keep the
 * invariant fields of a compact Buffer (see alloc_compact).  In the limited
 * build they also keep their reference to the heap type. */
#define MB_FREELIST_MAX MEMBUF_FREELIST_MAX
static MemBufObject *freelist[MB_FREELIST_MAX > 0 ? MB_FREELIST_MAX : 1];
static int freelist_len = 0;

/* A compact Buffer with its invariant fields set: shape -> &nbytes,
 * strides -> &itemsize == 1, ndim 1, format NULL, exports 0, no weakrefs.
 * The caller sets buf, nbytes, flags, mem, mem_len, release, ctx, owner. */
static MemBufObject *
alloc_compact(void)
{
    MemBufObject *self;
    if (freelist_len > 0) {
        self = freelist[--freelist_len];
        /* A new reference as for a new object (as CPython's own free lists
         * do): refcount 1, the debug counts, and tracemalloc's allocation
         * site.  The GC header is already right (untracked). */
#if !defined(Py_LIMITED_API) && !defined(Py_GIL_DISABLED)
        _Py_NewReference((PyObject *)self); /* what PyObject_Init does, less the type */
#else
        (void)PyObject_Init((PyObject *)self, MEMBUF_TYPE);
#ifdef Py_LIMITED_API
        Py_DECREF(MEMBUF_TYPE); /* it kept its type reference on the free list */
#endif
#endif
        assert(self->exports == 0 && self->weakreflist == NULL && self->format == NULL);
        assert(self->ndim == 1 && self->itemsize == 1);
        assert(self->shape == &self->nbytes && self->strides == &self->itemsize);
        return self;
    }
    self = PyObject_GC_NewVar(MemBufObject, MEMBUF_TYPE, 0);
    if (self != NULL) {
        self->itemsize = 1;
        self->exports = 0;
        self->shape = &self->nbytes;
        self->strides = &self->itemsize;
        self->format = NULL;
        self->ndim = 1;
        self->weakreflist = NULL;
    }
    return self;
}

static void
free_object(MemBufObject *self)
{
    /* A GC-finalized object keeps that mark in its GC header: not reusable. */
    if ((self->flags & MB_COMPACT) && freelist_len < MB_FREELIST_MAX &&
        !((self->flags & MB_TRACKED) && PyObject_GC_IsFinalized((PyObject *)self))) {
        freelist[freelist_len++] = self;
        return;
    }
    PyObject_GC_Del(self);
#ifdef Py_LIMITED_API
    Py_DECREF(MEMBUF_TYPE); /* instances of a heap type own a reference to it */
#endif
}

void
membuf_clear_freelist(void)
{
    while (freelist_len > 0) {
        PyObject_GC_Del(freelist[--freelist_len]);
#ifdef Py_LIMITED_API
        Py_DECREF(MEMBUF_TYPE);
#endif
    }
}

/* Allocate a Buffer with room for ndim shape and stride entries and a copy
 * of format (none of it for a compact "B" buffer).  Every field is set;
 * nothing is owned yet. */
static MemBufObject *
membuf_alloc(int compact, int ndim, const char *format)
{
    MemBufObject *self;
    if (compact) {
        self = alloc_compact();
        if (self == NULL) {
            return NULL;
        }
    }
    else {
        size_t format_size = format != NULL ? strlen(format) + 1 : 0;
        Py_ssize_t extra = (Py_ssize_t)(2 * (size_t)ndim * sizeof(Py_ssize_t) + format_size);
        self = PyObject_GC_NewVar(MemBufObject, MEMBUF_TYPE, extra);
        if (self == NULL) {
            return NULL;
        }
        self->itemsize = 1;
        self->exports = 0;
        self->ndim = ndim;
        self->weakreflist = NULL;
        Py_ssize_t *storage = (Py_ssize_t *)(self + 1);
        self->shape = storage;
        self->strides = storage + ndim;
        if (format != NULL) {
            self->format = (char *)(storage + 2 * ndim);
            memcpy(self->format, format, format_size);
        }
        else {
            self->format = NULL;
        }
    }
    self->buf = NULL;
    self->nbytes = 0;
    self->flags = 0;
    self->mem = NULL;
    self->mem_len = 0;
    self->release = NULL;
    self->ctx = NULL;
    self->owner = NULL;
    return self;
}

/* Call the release duty for memory that never became a Buffer (contract 3). */
/* Call a Python on_release; -1 with its exception set (raise mode), or its
 * exception reported as unraisable (unraisable mode, which also keeps any
 * exception already set).  Consumes the reference to callable; re-tracks it
 * first if finalize untracked it (see membuf_finalize). */
static int
call_python_release(PyObject *callable, int unraisable, int retrack)
{
    int rc = 0;
    PyObject *type = NULL, *value = NULL, *tb = NULL;
    if (unraisable && PyErr_Occurred()) {
        PyErr_Fetch(&type, &value, &tb); /* kept aside while the callable runs */
    }
    PyObject *res = PyObject_CallNoArgs(callable);
    if (res == NULL) {
        if (unraisable) {
            PyErr_WriteUnraisable(callable);
        }
        else {
            rc = -1;
        }
    }
    Py_XDECREF(res);
    if (type != NULL) {
        PyErr_Restore(type, value, tb);
    }
    if (retrack && !PyObject_GC_IsTracked(callable)) {
        PyObject_GC_Track(callable); /* its dealloc expects a tracked object */
    }
    Py_DECREF(callable);
    return rc;
}

void
membuf_release_unwrapped(const MemBuf_Spec *spec, int pycallback)
{
    if (pycallback) {
        (void)call_python_release((PyObject *)spec->ctx, 1, 0);
    }
    else if (spec->release != NULL) {
        spec->release((void *)spec->ptr, spec->len, spec->ctx);
    }
}

/* The fields of a compact Buffer over plain bytes (alloc_compact set the
 * layout fields); the caller sets owner. */
static inline void
set_plain(MemBufObject *self, const void *ptr, size_t len, int flags, MemBuf_ReleaseFunc release,
          void *ctx)
{
    self->buf = ptr != NULL ? (char *)ptr : membuf_empty;
    self->nbytes = (Py_ssize_t)len;
    self->flags = MB_C_CONTIG | MB_F_CONTIG | MB_COMPACT | flags;
    self->mem = (void *)ptr;
    self->mem_len = len;
    self->release = release;
    self->ctx = ctx;
}

PyObject *
membuf_from_memory(const void *ptr, size_t len, int flags, MemBuf_ReleaseFunc release, void *ctx)
{
    if ((flags & ~MB_PUBLIC_CREATION_FLAGS) || len > (size_t)PY_SSIZE_T_MAX ||
        (ptr == NULL && len > 0)) {
        MemBuf_Spec spec = {0}; /* let the general path raise the precise error */
        spec.ptr = ptr;
        spec.len = len;
        spec.flags = flags;
        spec.release = release;
        spec.ctx = ctx;
        return membuf_from_spec(&spec, 0);
    }
    MemBufObject *self = alloc_compact();
    if (self == NULL) {
        if (release != NULL) {
            release((void *)ptr, len, ctx);
        }
        return NULL;
    }
    set_plain(self, ptr, len, flags, release, ctx);
    self->owner = NULL;
    return (PyObject *)self;
}

PyObject *
membuf_new_plain(const void *ptr, size_t len, int flags, PyObject *owner, PyObject *callable)
{
    assert(!(flags & ~MB_PUBLIC_CREATION_FLAGS) && len <= (size_t)PY_SSIZE_T_MAX);
    assert(ptr != NULL || len == 0);
    MemBufObject *self = alloc_compact();
    if (self == NULL) {
        if (callable != NULL) {
            (void)call_python_release(callable, 1, 0);
        }
        return NULL;
    }
    set_plain(self, ptr, len, flags, NULL, callable);
    self->owner = Py_XNewRef(owner);
    if (callable != NULL) {
        self->flags |= MB_PYCALLBACK;
    }
    if (callable != NULL || MB_MAY_CYCLE(owner)) {
        self->flags |= MB_TRACKED;
        PyObject_GC_Track(self);
    }
    return (PyObject *)self;
}

PyObject *
membuf_from_spec(const MemBuf_Spec *spec, int pycallback)
{
    return membuf_from_spec_at(spec, pycallback, 0);
}

PyObject *
membuf_from_spec_at(const MemBuf_Spec *spec, int pycallback, Py_ssize_t offset)
{
    Py_ssize_t shape[MEMBUF_MAX_NDIM], strides[MEMBUF_MAX_NDIM];
    Py_ssize_t itemsize, nbytes;
    int ndim;
    const char *format;
    MemBufObject *self;

    if (spec->flags & ~MB_PUBLIC_CREATION_FLAGS) {
        PyErr_Format(PyExc_ValueError, "unknown creation flags 0x%x (known: MEMBUF_WRITABLE)",
                     (unsigned int)(spec->flags & ~MB_PUBLIC_CREATION_FLAGS));
        goto fail;
    }
    if (spec->len > (size_t)PY_SSIZE_T_MAX) {
        PyErr_Format(PyExc_OverflowError, "len %zu is larger than PY_SSIZE_T_MAX", spec->len);
        goto fail;
    }
    if (spec->ptr == NULL && spec->len > 0) {
        PyErr_Format(PyExc_ValueError, "ptr is NULL but len is %zu", spec->len);
        goto fail;
    }
    format = spec->format;
    if (format != NULL && strcmp(format, "B") == 0) {
        format = NULL;
    }

    if (format == NULL && spec->shape == NULL && spec->strides == NULL &&
        (spec->ndim == 0 || spec->ndim == 1) && offset == 0) {
        /* The common case: plain bytes. */
        self = membuf_alloc(1, 1, NULL);
        if (self == NULL) {
            goto fail;
        }
        self->nbytes = (Py_ssize_t)spec->len;
        self->flags = MB_C_CONTIG | MB_F_CONTIG | MB_COMPACT;
    }
    else {
        if (membuf_check_layout(spec, format, offset, &ndim, shape, strides, &itemsize,
                                &nbytes) < 0) {
            goto fail;
        }
        int compact = format == NULL && ndim == 1 && (strides[0] == 1 || shape[0] <= 1);
        self = membuf_alloc(compact, ndim, format);
        if (self == NULL) {
            goto fail;
        }
        self->itemsize = itemsize;
        self->nbytes = nbytes;
        if (compact) {
            self->flags = MB_C_CONTIG | MB_F_CONTIG | MB_COMPACT;
        }
        else {
            memcpy(self->shape, shape, (size_t)ndim * sizeof(Py_ssize_t));
            memcpy(self->strides, strides, (size_t)ndim * sizeof(Py_ssize_t));
            self->flags = membuf_layout_flags(ndim, shape, strides, itemsize);
        }
    }
    self->flags |= spec->flags;
    self->mem = (void *)spec->ptr;
    self->mem_len = spec->len;
    self->buf = spec->ptr != NULL ? (char *)spec->ptr + offset : membuf_empty;
    self->release = spec->release;
    self->ctx = spec->ctx;
    if (pycallback) {
        self->flags |= MB_PYCALLBACK;
    }
    self->owner = Py_XNewRef(spec->owner);
    if (pycallback || MB_MAY_CYCLE(self->owner)) {
        self->flags |= MB_TRACKED;
        PyObject_GC_Track(self);
    }
    return (PyObject *)self;

fail:
    membuf_release_unwrapped(spec, pycallback);
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Slices                                                                   */
/* ------------------------------------------------------------------------ */

PyObject *
membuf_new_view(MemBufObject *parent, char *buf, int ndim, const Py_ssize_t *shape,
                const Py_ssize_t *strides)
{
    int compact = parent->format == NULL && ndim == 1 && (strides[0] == 1 || shape[0] <= 1);
    MemBufObject *self = membuf_alloc(compact, ndim, parent->format);
    if (self == NULL) {
        return NULL;
    }
    /* Allocating may have run a collection, and finalizers that released the
     * parent: check again, in the same locked step that takes the export. */
    int refused;
    MB_LOCK(parent);
    refused = MB_REFUSES_WORK(parent);
    if (!refused) {
        parent->exports++; /* this slice's, ended by its release */
    }
    MB_UNLOCK();
    if (refused) {
        self->flags = (compact ? MB_COMPACT : 0) | MB_RELEASED; /* owns nothing */
        Py_DECREF(self);
        membuf_refuse(parent);
        return NULL;
    }
    /* A sub-layout of a valid layout: the product of a non-empty shape is
     * bounded by the memory; an empty one may overflow before its 0. */
    Py_ssize_t nitems = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] == 0) {
            nitems = 0;
            break;
        }
    }
    for (int i = 0; i < ndim && nitems != 0; i++) {
        nitems *= shape[i];
    }
    self->buf = buf;
    self->itemsize = parent->itemsize;
    self->nbytes = nitems * parent->itemsize;
    if (compact) {
        self->flags = MB_C_CONTIG | MB_F_CONTIG | MB_COMPACT;
    }
    else {
        memcpy(self->shape, shape, (size_t)ndim * sizeof(Py_ssize_t));
        memcpy(self->strides, strides, (size_t)ndim * sizeof(Py_ssize_t));
        self->flags = membuf_layout_flags(ndim, shape, strides, parent->itemsize);
    }
    self->flags |= parent->flags & MEMBUF_WRITABLE;
    self->flags |= MB_SLICE;
    self->mem = buf;
    self->mem_len = (size_t)self->nbytes;
    self->owner = Py_NewRef((PyObject *)parent);
    self->flags |= MB_TRACKED;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

void
membuf_mark_held_export(MemBufObject *self)
{
    assert(!MB_IS_RELEASED(self) && self->ctx != NULL);
    assert(!(self->flags & (MB_PYCALLBACK | MB_SLICE)));
    assert(self->owner != NULL); /* the exporter is the owner */
    assert(self->release == membuf_held_export_release);
    self->flags |= MB_HELD_EXPORT;
    /* A cycle may also run through the Python on_release it holds. */
    if (!(self->flags & MB_TRACKED) && ((membuf_held_export *)self->ctx)->on_release != NULL) {
        self->flags |= MB_TRACKED;
        PyObject_GC_Track(self);
    }
}

/* The duty of a held export: end it, free the struct, then call on_release
 * (raise or unraisable mode, as call_python_release). */
static int
end_held_export(membuf_held_export *held, int unraisable, int retrack)
{
    PyObject *on_release = held->on_release;
    PyBuffer_Release(&held->view); /* may run the exporter's Python code */
    PyMem_Free(held);
    return on_release != NULL ? call_python_release(on_release, unraisable, retrack) : 0;
}

void
membuf_held_export_release(void *ptr, size_t len, void *ctx)
{
    (void)ptr;
    (void)len;
    (void)end_held_export(ctx, 1, 0);
}

/* ------------------------------------------------------------------------ */
/* Release                                                                  */
/* ------------------------------------------------------------------------ */

/* What a release owes, taken out of a Buffer in one step.  Releasing is two
 * steps, so that no lock is held and no decision is trusted across a
 * call-out:
 *   take_duty()  under the Buffer's lock (a critical section in the
 *                free-threaded build): checks nothing is left to wait for,
 *                marks the Buffer released and moves the callback, its
 *                context and the owner into a release_duty;
 *   do_duty()    without any lock: calls the callback, then drops the owner.
 *                Either may run any Python code (a weakref callback, a
 *                __del__, a finalizer) that releases, exports or drops any
 *                Buffer -- which can no longer reach this duty.
 * A slice's duty is to end its export of the parent; if the parent's
 * deferred release waited for that, do_duty() takes the parent's duty
 * (take_if_owed(), checked and taken in one locked step) and loops on it:
 * chains of slices may be arbitrarily long.  (Before this two-step design, a
 * walk that decided to release a parent, then dropped a reference that ran
 * a weakref callback releasing that parent, released it twice.) */
typedef struct {
    int flags; /* the Buffer's flags before release: MB_SLICE, MB_PYCALLBACK, ... */
    MemBuf_ReleaseFunc release;
    void *mem;
    size_t mem_len;
    void *ctx;
    PyObject *owner; /* a strong reference; for a slice, the parent */
} release_duty;

/* A Buffer's flags once released: MB_RELEASED set, and the states that
 * only a live Buffer has (a pending release, a held export's mark, an
 * untracked callable) cleared. */
#define MB_RELEASED_FLAGS(flags)                                                             \
    (((flags) | MB_RELEASED) &                                                               \
     ~(MB_PENDING | MB_GC_DEFERRED | MB_UNTRACKED_CALLABLE | MB_HELD_EXPORT))

/* Precondition: the caller holds self's lock (or the only reference), self
 * is not released and has no export. */
static void
take_duty(MemBufObject *self, release_duty *duty)
{
    assert(!MB_IS_RELEASED(self));
    assert(self->exports == 0);
    MB_ASSERT_FIELDS(self);
    duty->flags = self->flags;
    duty->release = self->release;
    duty->mem = self->mem;
    duty->mem_len = self->mem_len;
    duty->ctx = self->ctx;
    duty->owner = self->owner;
    /* Mark first: whatever the callback does, it sees a released Buffer. */
    self->flags = MB_RELEASED_FLAGS(self->flags);
    self->release = NULL;
    self->ctx = NULL;
    self->owner = NULL;
}

/* If self's deferred release waits for nothing any more, take its duty
 * into *duty (returns 1) in the same locked step that checks it. */
static int
take_if_owed_locked(MemBufObject *self, release_duty *duty)
{
    if (!MB_IS_RELEASED(self) && self->exports == 0 && (self->flags & MB_PENDING)) {
        take_duty(self, duty);
        return 1;
    }
    return 0;
}

static int
take_if_owed(MemBufObject *self, release_duty *duty)
{
    int owed;
    MB_LOCK(self);
    owed = take_if_owed_locked(self, duty);
    MB_UNLOCK();
    return owed;
}

static void
count_export_end(MemBufObject *self)
{
    MB_LOCK(self);
    assert(self->exports > 0);
    self->exports--;
    MB_UNLOCK();
}

/* Do a duty taken by take_duty(), and the duties of the parents it lets go.
 * Returns -1 only when a Python on_release raised (raise mode); the
 * exception is then set.  Deferred releases of parents have nobody to raise
 * to: their errors are unraisable.
 *
 * Order, for a chain slice -> parent -> grandparent: the slice's export of
 * the parent ends; the reference that kept the slice alive (if it was itself
 * let go by its own slice) is dropped, which may run any code -- code that
 * sees the export already ended and the parent not yet released; only then
 * is the parent's duty taken, if it is still owed (that code may have
 * released the parent itself, or the parent may have more exports now). */
static int
do_duty(release_duty *duty, int unraisable)
{
    int rc = 0;
    release_duty next;
    PyObject *held = NULL; /* the reference to the Buffer whose duty this is */
    for (;;) {
        MemBufObject *parent = NULL;
        if (duty->flags & MB_SLICE) {
            parent = (MemBufObject *)duty->owner;
            count_export_end(parent);
        }
        else if (duty->flags & MB_PYCALLBACK) {
            rc = call_python_release((PyObject *)duty->ctx, unraisable,
                                     (duty->flags & MB_UNTRACKED_CALLABLE) != 0);
        }
        else if (duty->flags & MB_HELD_EXPORT) {
            rc = end_held_export(duty->ctx, unraisable,
                                 (duty->flags & MB_UNTRACKED_CALLABLE) != 0);
        }
        else if (duty->release != NULL) {
            duty->release(duty->mem, duty->mem_len, duty->ctx);
        }
        Py_XDECREF(held); /* may run any code */
        if (parent == NULL || !take_if_owed(parent, &next)) {
            Py_XDECREF(duty->owner);
            return rc;
        }
        held = duty->owner; /* the parent: alive until its own duty is done */
        *duty = next;
        unraisable = 1;
    }
}

/* Give the memory back now: take the duty and do it.  Precondition: self
 * is not released, has no export, and the caller may take its duty (holds
 * its lock, or the only reference).  A Buffer that lets no parent go (not a
 * slice, no held export: what deallocating a plain Buffer is) is inline. */
static inline int
release_now(MemBufObject *self, int unraisable)
{
    int flags = self->flags;
    if (!(flags & (MB_SLICE | MB_HELD_EXPORT))) {
        /* take_duty() and do_duty() of a Buffer that lets no parent go: a C
         * callback or a Python on_release, then the owner, in that order,
         * with the Buffer marked released before either runs. */
        assert(!MB_IS_RELEASED(self) && self->exports == 0);
        MB_ASSERT_FIELDS(self);
        MemBuf_ReleaseFunc release = self->release;
        void *ctx = self->ctx;
        PyObject *owner = self->owner;
        self->flags = MB_RELEASED_FLAGS(flags);
        self->release = NULL;
        self->ctx = NULL;
        self->owner = NULL;
        int rc = 0;
        if (flags & MB_PYCALLBACK) {
            rc = call_python_release(ctx, unraisable, (flags & MB_UNTRACKED_CALLABLE) != 0);
        }
        else if (release != NULL) {
            release(self->mem, self->mem_len, ctx);
        }
        Py_XDECREF(owner); /* may run any code: the Buffer is released already */
        return rc;
    }
    release_duty duty;
    take_duty(self, &duty);
    return do_duty(&duty, unraisable);
}

int
membuf_release(MemBufObject *self, int defer)
{
    release_duty duty;
    int owed = 0, rc = 0;
    MB_LOCK(self);
    if (MB_IS_RELEASED(self)) {
        /* nothing to do */
    }
    else if (self->exports > 0) {
        if (defer) {
            self->flags |= MB_PENDING;
        }
        else {
            PyErr_Format(PyExc_BufferError,
                         "membuf.Buffer has %zd exported buffer%s; release %s first, "
                         "or call release(defer=True)",
                         self->exports, self->exports == 1 ? "" : "s",
                         self->exports == 1 ? "it" : "them");
            rc = -1;
        }
    }
    else {
        take_duty(self, &duty);
        owed = 1;
    }
    MB_UNLOCK();
    return owed ? do_duty(&duty, 0) : rc;
}

void
membuf_end_export_locked(MemBufObject *self)
{
    release_duty duty;
    int owed;
    MB_LOCK(self);
    assert(self->exports > 0);
    self->exports--;
    owed = take_if_owed_locked(self, &duty);
    MB_UNLOCK();
    if (owed) {
        (void)do_duty(&duty, 1);
    }
}

/* ------------------------------------------------------------------------ */
/* Type slots: lifetime and GC                                              */
/* ------------------------------------------------------------------------ */

static void
dealloc_body(MemBufObject *self)
{
    assert(self->exports == 0); /* every export holds a reference to us */
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    assert(self->exports == 0); /* weakref callbacks see only a dead reference */
    MB_ASSERT_FIELDS(self);
    if (!MB_IS_RELEASED(self)) {
        release_now(self, 1);
    }
    free_object(self);
}

#ifdef Py_LIMITED_API
/* The limited API has no trashcan, so this build keeps its own for Buffers:
 * past MB_MAX_DEALLOC_DEPTH nested deallocations, a Buffer (refcount 0,
 * untracked, fields intact) is pushed on `postponed` and deallocated by the
 * outermost membuf_dealloc of the same thread before it returns.  If the
 * stack cannot grow, we recurse as before.  GIL held throughout. */
#define MB_MAX_DEALLOC_DEPTH 50
/* Per thread, as CPython's trashcan: a thread whose callback waits with the
 * GIL released must not hold up deallocations in other threads. */
static _Thread_local int dealloc_depth = 0;
static _Thread_local MemBufObject **postponed = NULL;
static _Thread_local Py_ssize_t postponed_len = 0, postponed_cap = 0;

static int
postpone_dealloc(MemBufObject *self)
{
    if (postponed_len == postponed_cap) {
        Py_ssize_t cap = postponed_cap > 0 ? 2 * postponed_cap : 64;
        MemBufObject **grown = PyMem_Realloc(postponed, (size_t)cap * sizeof(*postponed));
        if (grown == NULL) {
            return 0;
        }
        postponed = grown;
        postponed_cap = cap;
    }
    postponed[postponed_len++] = self;
    return 1;
}
#endif

void
membuf_dealloc(MemBufObject *self)
{
    if (self->flags & MB_TRACKED) {
        PyObject_GC_UnTrack(self);
    }
    if (self->owner == NULL || !MemBuf_CheckExact(self->owner)) {
        /* Drops no Buffer directly: an owner that holds Buffers in turn
         * deallocates through its own type's trashcan, if it is a container. */
        dealloc_body(self);
        return;
    }
    /* Dropping owner may free a parent, its parent, ...: the trashcan keeps
     * long chains of slices from exhausting the C stack. */
#ifndef Py_LIMITED_API
    Py_TRASHCAN_BEGIN(self, membuf_dealloc)
    dealloc_body(self);
    Py_TRASHCAN_END
#else
    if (dealloc_depth >= MB_MAX_DEALLOC_DEPTH && postpone_dealloc(self)) {
        return;
    }
    dealloc_depth++;
    dealloc_body(self);
    if (dealloc_depth == 1) {
        while (postponed_len > 0) {
            dealloc_body(postponed[--postponed_len]); /* may postpone more */
        }
        PyMem_Free(postponed);
        postponed = NULL;
        postponed_cap = 0;
    }
    dealloc_depth--;
#endif
}

int
membuf_traverse(MemBufObject *self, visitproc visit, void *arg)
{
#ifdef Py_LIMITED_API
    Py_VISIT(Py_TYPE((PyObject *)self)); /* instances of a heap type visit it */
#endif
    Py_VISIT(self->owner);
    if (self->flags & MB_PYCALLBACK) {
        Py_VISIT((PyObject *)self->ctx);
    }
    else if ((self->flags & MB_HELD_EXPORT) && self->ctx != NULL) {
        membuf_held_export *held = self->ctx;
        Py_VISIT(held->view.obj); /* the export's own reference */
        Py_VISIT(held->on_release);
    }
    return 0;
}

/* Cyclic garbage: the GC finalizes every object of the cycle before it
 * clears any, so the callback runs while everything it may use is intact.
 * With exports alive (their holders are garbage too), release is deferred to
 * the moment the GC clears them: exports are never outlived. */
void
membuf_finalize(MemBufObject *self)
{
    release_duty duty;
    int owed = 0;
    MB_LOCK(self);
    if (MB_IS_RELEASED(self)) {
        /* nothing to do */
    }
    else if (self->exports == 0) {
        take_duty(self, &duty);
        owed = 1;
    }
    else {
        /* Defer to the end of the last export.  That happens while the GC
         * clears the cycle, possibly after it has cleared a Python
         * on_release that is garbage too (a cleared function crashes when
         * called).  Untracking the callable keeps the GC from clearing it;
         * it is tracked again just before we drop it (call_python_release). */
        self->flags |= MB_PENDING | MB_GC_DEFERRED;
        PyObject *callable = NULL;
        if (self->flags & MB_PYCALLBACK) {
            callable = self->ctx;
        }
        else if (self->flags & MB_HELD_EXPORT) {
            callable = ((membuf_held_export *)self->ctx)->on_release;
        }
        if (callable != NULL && PyObject_GC_IsTracked(callable)) {
            PyObject_GC_UnTrack(callable);
            self->flags |= MB_UNTRACKED_CALLABLE;
        }
    }
    MB_UNLOCK();
    if (owed) {
        (void)do_duty(&duty, 1);
    }
}

/* References are dropped only by release (owner must outlive the memory);
 * finalize has released or deferred already.  Nothing else to break. */
int
membuf_clear(MemBufObject *self)
{
    release_duty duty;
    int owed = 0;
    MB_LOCK(self);
    if (!MB_IS_RELEASED(self) && self->exports == 0) {
        take_duty(self, &duty);
        owed = 1;
    }
    MB_UNLOCK();
    if (owed) {
        (void)do_duty(&duty, 1);
    }
    return 0;
}
