/* Lifetime: allocation, the free list, creation, slices, release,
 * deallocation and garbage collection of a Buffer.
 *
 * Ownership in one sentence: from the moment membuf_from_spec() is entered,
 * the Buffer machinery owns the duty to call the release callback exactly
 * once -- on failure right away, on success at the first release, deferred
 * release or deallocation -- and it drops `owner` right after that call.
 * release_now() is the only place that duty is discharged (every release,
 * deallocation and the GC included) but for one fused fast path of
 * membuf_dealloc (a plain Buffer nothing can reach any more); the
 * invariants of core.h are asserted on every path in and out of it.
 */
#include "core.h"

#include <string.h>

/* An empty Buffer created from NULL exports this address instead, so that no
 * consumer ever sees buf == NULL (memcpy(dst, NULL, 0) is undefined). */
static char membuf_empty[1];

const Py_ssize_t membuf_unit_stride = 1;

/* ------------------------------------------------------------------------ */
/* Allocation and the free list                                             */
/* ------------------------------------------------------------------------ */

/* Free lists of compact Buffers, one per form: the head alone or extended
 * (then with an owner), each with or without a GC header (core.h).  Every
 * compact object of a form has the same size.  Wrapping plain bytes is the
 * hot path of every user (form 0, the head alone, no GC header); an owner
 * or a Python on_release are the next ones.  Objects on a list own
 * nothing, have exports 0 and no weak reference, are untracked, and their
 * flags say released (release and ctx may be stale: whoever revives one
 * sets them).  In the limited build they also keep their reference
 * to the heap type. */
#define MB_FREELIST_MAX MEMBUF_FREELIST_MAX
#define MB_FORMS 4
#define MB_FORM(extended, gc) (((extended) ? 1 : 0) | ((gc) ? 2 : 0))
/* Whether a Buffer that needs a GC header for cycles (`gc`) gets one:
 * always in the free-threaded build (core.h). */
#ifdef Py_GIL_DISABLED
#define MB_WITH_GC_HEAD(gc) 1
#else
#define MB_WITH_GC_HEAD(gc) (gc)
#endif
#define MB_FORM_OF(flags) MB_FORM((flags) & MB_EXTENDED, (flags) & MB_GC_HEAD)
static MemBufObject *freelist[MB_FORMS][MB_FREELIST_MAX > 0 ? MB_FREELIST_MAX : 1];
static int freelist_len[MB_FORMS];

/* A compact Buffer of a form, taken off its free list; then revived by
 * new_reference() once its fields are set. */
static inline MemBufObject *
freelist_pop(int form)
{
    assert(freelist_len[form] > 0);
    MemBufObject *self = freelist[form][--freelist_len[form]];
    assert(self->exports == 0 && self->weakreflist == NULL);
    assert(MB_FORM_OF(self->flags) == form && (self->flags & MB_COMPACT));
    assert(!(self->flags & MB_TRACKED) || !PyObject_GC_IsTracked((PyObject *)self));
    return self;
}

/* A new reference to an object from a free list, as for a new object (as
 * CPython's own free lists do: refcount 1, the debug counts, and what
 * tracemalloc keeps).  Returns it. */
static inline PyObject *
new_reference(MemBufObject *self)
{
#if !defined(Py_LIMITED_API) && !defined(Py_GIL_DISABLED)
    _Py_NewReference((PyObject *)self); /* what PyObject_Init does, less the type */
#else
    (void)PyObject_Init((PyObject *)self, MEMBUF_TYPE);
#ifdef Py_LIMITED_API
    Py_DECREF(MEMBUF_TYPE); /* it kept its type reference on the free list */
#endif
#endif
    return (PyObject *)self;
}

/* new_reference() for a head-only Buffer without a GC header.  Before
 * 3.13, in a release build, _Py_NewReference only sets the refcount and
 * offers the object to tracemalloc, which looks for it a GC header's size
 * before the object (by type), where an object without one has no trace:
 * setting the refcount is all it does.  3.13 adds reference tracers
 * (PyRefTracer_SetTracer), which must see every new object: the call stays. */
static inline PyObject *
new_reference_plain(MemBufObject *self)
{
    assert(!(self->flags & MB_GC_HEAD));
#if !defined(Py_LIMITED_API) && PY_VERSION_HEX < 0x030D0000 && !defined(Py_REF_DEBUG) && \
    !defined(Py_TRACE_REFS)
    Py_SET_REFCNT((PyObject *)self, 1);
    return (PyObject *)self;
#else
    return new_reference(self);
#endif
}

/* A new object of `size` bytes (the head, or more for an extended one),
 * with a GC header if `gc`.  Sets exports, weakreflist and the two form
 * bits of flags; nothing else. */
static MemBufObject *
alloc_object(size_t size, int gc)
{
    MemBufObject *self;
    assert(size >= sizeof(MemBufObject));
    gc = MB_WITH_GC_HEAD(gc);
    if (gc) {
        /* tp_itemsize is 1: the bytes after the head. */
        self = PyObject_GC_NewVar(MemBufObject, MEMBUF_TYPE,
                                  (Py_ssize_t)(size - sizeof(MemBufObject)));
        if (self == NULL) {
            return NULL;
        }
    }
    else {
        self = PyObject_Malloc(size);
        if (self == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        (void)PyObject_Init((PyObject *)self, MEMBUF_TYPE);
    }
    self->exports = 0;
    self->weakreflist = NULL;
    self->flags = (size > sizeof(MemBufObject) ? MB_EXTENDED : 0) | (gc ? MB_GC_HEAD : 0);
    return self;
}

/* Free an object for good, as it was allocated (alloc_object): with or
 * without a GC header. */
static void
give_back_object(MemBufObject *self, int gc)
{
    if (gc) {
        PyObject_GC_Del(self);
    }
    else {
        PyObject_Free(self);
    }
#ifdef Py_LIMITED_API
    Py_DECREF(MEMBUF_TYPE); /* instances of a heap type own a reference to it */
#endif
}

/* Give an object's memory back (its fields are done with): onto its free
 * list if it is compact and there is room (and, with a GC header, the GC
 * never finalized it: that mark stays in the header). */
static void
free_object(MemBufObject *self)
{
    int flags = self->flags;
#if MB_FREELIST_MAX > 0
    if (flags & MB_COMPACT) {
        int form = MB_FORM_OF(flags);
        if (freelist_len[form] < MB_FREELIST_MAX &&
            !((flags & MB_GC_HEAD) && PyObject_GC_IsFinalized((PyObject *)self))) {
            assert(self->exports == 0 && self->weakreflist == NULL && MB_IS_RELEASED(self));
            freelist[form][freelist_len[form]++] = self;
            return;
        }
    }
#endif
    give_back_object(self, flags & MB_GC_HEAD);
}

void
membuf_clear_freelist(void)
{
    for (int form = 0; form < MB_FORMS; form++) {
        while (freelist_len[form] > 0) {
            give_back_object(freelist[form][--freelist_len[form]], form & 2);
        }
    }
}

/* A compact Buffer of a form, from its free list or new, with the layout
 * fields of an extended one set (they never change, and objects on a free
 * list keep them), owner NULL, flags its form and layout bits; the caller
 * sets buf, nbytes, release, ctx (and mem, mem_len, owner if extended). */
static inline MemBufObject *
alloc_compact(int extended, int gc)
{
    MemBufObject *self;
    gc = MB_WITH_GC_HEAD(gc);
#if MB_FREELIST_MAX > 0
    int form = MB_FORM(extended, gc);
    if (freelist_len[form] > 0) {
        self = freelist_pop(form);
        (void)new_reference(self);
        self->flags = (extended ? MB_EXTENDED : 0) | (gc ? MB_GC_HEAD : 0) | MB_C_CONTIG |
                      MB_F_CONTIG | MB_COMPACT;
        assert(!extended || membuf_ext(self)->owner == NULL);
        return self;
    }
#endif
    self = alloc_object(extended ? sizeof(MemBufExtended) : sizeof(MemBufObject), gc);
    if (self == NULL) {
        return NULL;
    }
    self->flags |= MB_C_CONTIG | MB_F_CONTIG | MB_COMPACT;
    if (extended) {
        MemBufExtended *ext = membuf_ext(self);
        ext->owner = NULL;
        ext->itemsize = 1;
        ext->ndim = 1;
        ext->shape = &self->nbytes;
        ext->strides = (Py_ssize_t *)&membuf_unit_stride;
        ext->format = NULL;
    }
    return self;
}

/* A new Buffer with every field set and nothing owned: the head alone
 * (`extended` 0: plain bytes; the caller sets buf, nbytes, release, ctx and
 * the rest of flags), or the extended layout with room for ndim shape and
 * stride entries and a copy of format (none of it for a compact layout,
 * which is set here: the caller sets buf, nbytes, mem, mem_len, owner). */
static MemBufObject *
membuf_alloc(int extended, int gc, int compact, int ndim, const char *format)
{
    MemBufObject *self;
    assert(extended || compact);
    if (compact) {
        self = alloc_compact(extended, gc);
        if (self == NULL) {
            return NULL;
        }
    }
    else {
        size_t format_size = format == NULL ? 0 : strlen(format) + 1;
        self = alloc_object(sizeof(MemBufExtended) + 2 * (size_t)ndim * sizeof(Py_ssize_t) +
                                format_size,
                            gc);
        if (self == NULL) {
            return NULL;
        }
        MemBufExtended *ext = membuf_ext(self);
        Py_ssize_t *trailing = (Py_ssize_t *)(ext + 1);
        ext->owner = NULL;
        ext->mem = NULL;
        ext->mem_len = 0;
        ext->itemsize = 1;
        ext->ndim = ndim;
        ext->shape = trailing;
        ext->strides = trailing + ndim;
        ext->format = NULL;
        if (format != NULL) {
            ext->format = (char *)(trailing + 2 * ndim);
            memcpy(ext->format, format, format_size);
        }
    }
    self->buf = NULL;
    self->nbytes = 0;
    self->release = NULL;
    self->ctx = NULL;
    return self;
}

/* Track a Buffer with a GC header once its fields are set. */
static inline void
track(MemBufObject *self)
{
    assert(self->flags & MB_GC_HEAD);
    self->flags |= MB_TRACKED;
    PyObject_GC_Track(self);
}

/* ------------------------------------------------------------------------ */
/* Creation                                                                 */
/* ------------------------------------------------------------------------ */

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
membuf_release_unwrapped(const MemBuf_Spec *spec, int ctx_kind)
{
    if (ctx_kind == MB_CTX_PYCALLABLE) {
        (void)call_python_release((PyObject *)spec->ctx, 1, 0);
    }
    else if (spec->release != NULL) {
        spec->release((void *)spec->ptr, spec->len, spec->ctx);
    }
}

/* The cold half of membuf_from_memory: anything but "a free-list object
 * over a non-NULL pointer with valid arguments". */
static MB_NOINLINE PyObject *
from_memory_cold(const void *ptr, size_t len, int flags, MemBuf_ReleaseFunc release, void *ctx)
{
    MemBuf_Spec spec = {0};
    spec.ptr = ptr;
    spec.len = len;
    spec.flags = flags;
    spec.release = release;
    spec.ctx = ctx;
    return membuf_from_spec(&spec, MB_CTX_C);
}

/* The hot path of every C user: a free-list object, five stores. */
PyObject *
membuf_from_memory(const void *ptr, size_t len, int flags, MemBuf_ReleaseFunc release, void *ctx)
{
#if MB_FREELIST_MAX > 0
    if (MB_LIKELY(freelist_len[0] > 0 && ptr != NULL && len <= (size_t)PY_SSIZE_T_MAX &&
                  !(flags & ~MB_PUBLIC_CREATION_FLAGS))) {
        MemBufObject *self = freelist_pop(MB_FORM(0, 0));
        self->buf = (char *)ptr;
        self->nbytes = (Py_ssize_t)len;
        self->flags = MB_C_CONTIG | MB_F_CONTIG | MB_COMPACT | flags;
        self->release = release;
        self->ctx = ctx;
        MB_ASSERT_FIELDS(self);
        /* Last, with only self live: the arguments need no saving across it. */
        return new_reference_plain(self);
    }
#endif
    return from_memory_cold(ptr, len, flags, release, ctx);
}

PyObject *
membuf_new_plain(const void *ptr, size_t len, int flags, PyObject *owner, PyObject *callable)
{
    assert(!(flags & ~MB_PUBLIC_CREATION_FLAGS) && len <= (size_t)PY_SSIZE_T_MAX);
    assert(ptr != NULL || len == 0);
    int gc = callable != NULL || MB_MAY_CYCLE(owner);
    int extended = owner != NULL || ptr == NULL;
    MemBufObject *self = alloc_compact(extended, gc);
    if (self == NULL) {
        if (callable != NULL) {
            (void)call_python_release(callable, 1, 0);
        }
        return NULL;
    }
    self->buf = ptr != NULL ? (char *)ptr : membuf_empty;
    self->nbytes = (Py_ssize_t)len;
    self->flags |= flags;
    self->release = NULL;
    self->ctx = callable;
    if (callable != NULL) {
        self->flags |= MB_PYCALLBACK;
    }
    if (extended) {
        MemBufExtended *ext = membuf_ext(self);
        ext->mem = (void *)ptr;
        ext->mem_len = len;
        ext->owner = Py_XNewRef(owner);
    }
    MB_ASSERT_FIELDS(self);
    if (gc) {
        track(self);
    }
    return (PyObject *)self;
}

PyObject *
membuf_from_spec(const MemBuf_Spec *spec, int ctx_kind)
{
    return membuf_from_spec_at(spec, ctx_kind, 0);
}

PyObject *
membuf_from_spec_at(const MemBuf_Spec *spec, int ctx_kind, Py_ssize_t offset)
{
    Py_ssize_t shape[MEMBUF_MAX_NDIM], strides[MEMBUF_MAX_NDIM];
    Py_ssize_t itemsize = 1, nbytes;
    int ndim = 1, compact;
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
        compact = 1;
        nbytes = (Py_ssize_t)spec->len;
    }
    else {
        if (membuf_check_layout(spec, format, offset, &ndim, shape, strides, &itemsize,
                                &nbytes) < 0) {
            goto fail;
        }
        compact = format == NULL && ndim == 1 && (strides[0] == 1 || shape[0] <= 1);
    }
    /* The head alone: plain bytes over all of the memory, nothing held. */
    int extended = !(compact && offset == 0 && nbytes == (Py_ssize_t)spec->len &&
                     spec->ptr != NULL && spec->owner == NULL);
    int gc = ctx_kind == MB_CTX_PYCALLABLE || MB_MAY_CYCLE(spec->owner) ||
             (ctx_kind == MB_CTX_HELD_EXPORT &&
              ((membuf_held_export *)spec->ctx)->on_release != NULL);
    self = membuf_alloc(extended, gc, compact, ndim, format);
    if (self == NULL) {
        goto fail;
    }
    self->nbytes = nbytes;
    if (extended) {
        MemBufExtended *ext = membuf_ext(self);
        if (!compact) {
            ext->itemsize = itemsize;
            memcpy(ext->shape, shape, (size_t)ndim * sizeof(Py_ssize_t));
            memcpy(ext->strides, strides, (size_t)ndim * sizeof(Py_ssize_t));
            self->flags |= membuf_layout_flags(ndim, shape, strides, itemsize);
        }
        ext->mem = (void *)spec->ptr;
        ext->mem_len = spec->len;
        ext->owner = Py_XNewRef(spec->owner);
    }
    self->flags |= spec->flags;
    self->buf = spec->ptr != NULL ? (char *)spec->ptr + offset : membuf_empty;
    self->release = spec->release;
    self->ctx = spec->ctx;
    if (ctx_kind == MB_CTX_PYCALLABLE) {
        self->flags |= MB_PYCALLBACK;
    }
    else if (ctx_kind == MB_CTX_HELD_EXPORT) {
        assert(spec->ctx != NULL && spec->owner != NULL); /* the exporter is the owner */
        assert(spec->release == membuf_held_export_release);
        self->flags |= MB_HELD_EXPORT;
    }
    MB_ASSERT_FIELDS(self);
    if (gc) {
        track(self);
    }
    return (PyObject *)self;

fail:
    membuf_release_unwrapped(spec, ctx_kind);
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Slices                                                                   */
/* ------------------------------------------------------------------------ */

PyObject *
membuf_new_view(MemBufObject *parent, char *buf, int ndim, const Py_ssize_t *shape,
                const Py_ssize_t *strides)
{
    const char *format = membuf_format_or_null(parent);
    Py_ssize_t itemsize = membuf_itemsize(parent);
    int compact = format == NULL && ndim == 1 && (strides[0] == 1 || shape[0] <= 1);
    /* Extended (it holds its parent as owner), with a GC header (the owner
     * is a Buffer: the trashcan of long chains needs it too). */
    MemBufObject *self = membuf_alloc(1, 1, compact, ndim, format);
    if (self == NULL) {
        return NULL;
    }
    /* Allocating may have run a collection, and finalizers that released the
     * parent: check again, in the same locked step that takes the export. */
    int refused, too_many;
    MB_LOCK(parent);
    refused = MB_REFUSES_WORK(parent);
    too_many = parent->exports >= MB_EXPORTS_MAX;
    if (!refused && !too_many) {
        parent->exports++; /* this slice's, ended by its release */
    }
    MB_UNLOCK();
    if (refused || too_many) {
        self->flags |= MB_RELEASED; /* owns nothing */
        Py_DECREF(self);
        if (refused) {
            membuf_refuse(parent);
        }
        else {
            PyErr_SetString(PyExc_BufferError, "membuf.Buffer: too many exports");
        }
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
    MemBufExtended *ext = membuf_ext(self);
    self->buf = buf;
    self->nbytes = nitems * itemsize;
    if (!compact) {
        ext->itemsize = itemsize;
        memcpy(ext->shape, shape, (size_t)ndim * sizeof(Py_ssize_t));
        memcpy(ext->strides, strides, (size_t)ndim * sizeof(Py_ssize_t));
        self->flags |= membuf_layout_flags(ndim, shape, strides, itemsize);
    }
    self->flags |= parent->flags & MEMBUF_WRITABLE;
    self->flags |= MB_SLICE;
    ext->mem = buf;
    ext->mem_len = (size_t)self->nbytes;
    ext->owner = Py_NewRef((PyObject *)parent);
    MB_ASSERT_FIELDS(self);
    track(self);
    return (PyObject *)self;
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
    duty->mem = membuf_mem(self);
    duty->mem_len = membuf_mem_len(self);
    duty->ctx = self->ctx;
    duty->owner = NULL;
    /* Mark first: whatever the callback does, it sees a released Buffer. */
    self->flags = MB_RELEASED_FLAGS(self->flags);
    self->release = NULL;
    self->ctx = NULL;
    if (MB_IS_EXTENDED(self)) {
        duty->owner = membuf_ext(self)->owner;
        membuf_ext(self)->owner = NULL;
    }
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
        void *mem = membuf_mem(self);
        size_t mem_len = membuf_mem_len(self);
        PyObject *owner = NULL;
        self->flags = MB_RELEASED_FLAGS(flags);
        self->release = NULL;
        self->ctx = NULL;
        if (flags & MB_EXTENDED) {
            owner = membuf_ext(self)->owner;
            membuf_ext(self)->owner = NULL;
        }
        int rc = 0;
        if (flags & MB_PYCALLBACK) {
            rc = call_python_release(ctx, unraisable, (flags & MB_UNTRACKED_CALLABLE) != 0);
        }
        else if (release != NULL) {
            release(mem, mem_len, ctx);
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
                         "membuf.Buffer has %d exported buffer%s; release %s first, "
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

/* Everything but the fast path of membuf_dealloc. */
static MB_NOINLINE void
dealloc_cold(MemBufObject *self)
{
    if (self->flags & MB_TRACKED) {
        PyObject_GC_UnTrack(self);
    }
    PyObject *owner = membuf_owner(self);
    if (owner == NULL || !MemBuf_CheckExact(owner)) {
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

void
membuf_dealloc(MemBufObject *self)
{
    int flags = self->flags;
    /* The fused fast path: a head-only Buffer without a GC header (so with a
     * C callback or none: core.h), not released, no weak reference.  Nothing
     * can reach it any more -- refcount 0, no weak reference, no collector
     * sees it -- so the duty is done without marking it first (what
     * release_now would do), and the object goes back to the free list
     * marked released. */
    if (MB_LIKELY(!(flags & (MB_EXTENDED | MB_GC_HEAD | MB_RELEASED)) &&
                  self->weakreflist == NULL)) {
        assert(self->exports == 0); /* every export holds a reference to us */
        assert(!(flags & (MB_PYCALLBACK | MB_PENDING | MB_SLICE | MB_HELD_EXPORT)));
        MB_ASSERT_FIELDS(self);
        MemBuf_ReleaseFunc release = self->release;
        if (release != NULL) {
            release(self->buf, (size_t)self->nbytes, self->ctx);
        }
        self->flags = MB_RELEASED | MB_COMPACT; /* release and ctx: set by whoever revives it */
#if MB_FREELIST_MAX > 0
        if (freelist_len[0] < MB_FREELIST_MAX) {
            freelist[0][freelist_len[0]++] = self;
            return;
        }
#endif
        free_object(self);
        return;
    }
    dealloc_cold(self);
}

/* tp_is_gc: whether this object has a GC header (core.h). */
int
membuf_is_gc(PyObject *self)
{
    return (((MemBufObject *)self)->flags & MB_GC_HEAD) != 0;
}

int
membuf_traverse(MemBufObject *self, visitproc visit, void *arg)
{
#ifdef Py_LIMITED_API
    Py_VISIT(Py_TYPE((PyObject *)self)); /* instances of a heap type visit it */
#endif
    Py_VISIT(membuf_owner(self));
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
