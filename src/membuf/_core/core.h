/* The map of membuf._membuf's C core: what each file owns, the object, its
 * invariants, and the declarations the files share.
 *
 * One concern a file:
 *   lifetime.c         allocation and free list, creation, slices, release,
 *                      deallocation, GC -- the exactly-once duty (release_now)
 *   layout.c           the one format / shape / stride parser and validator
 *   buffer_protocol.c  bf_getbuffer / bf_releasebuffer (export counting)
 *   buffer_methods.c   what Python sees: len/index/slice, ==, repr, tobytes,
 *                      hex, release(), the context manager
 *   buffer_type.c      the type: slots, attributes, two definitions (static
 *                      and, for abi3, from a spec)
 *   errors.c           the shared errors and the house style of messages
 *   capi.c             the versioned C API table behind the capsule
 *   pickle.c           __reduce_ex__ and _rebuild (pickle protocol 5 out-of-band)
 *   dlpack.c           __dlpack__ and __dlpack_device__ (DLPack 1.x and legacy)
 *   module.c           module init (multi-phase) and from_address()
 */
#ifndef MEMBUF_CORE_H
#define MEMBUF_CORE_H

#define PY_SSIZE_T_CLEAN
#define MEMBUF_BUILDING_CORE
#include <Python.h>
#include <assert.h> /* on in the debug, sanitizer, valgrind and fuzz builds */
#include <string.h>
#include "membuf.h"

/* Internal state bits live in MemBufObject.flags above the public ones. */
#define MB_PUBLIC_CREATION_FLAGS MEMBUF_WRITABLE
#define MB_RELEASED 0x100    /* memory given back; owner dropped */
#define MB_PENDING 0x200     /* release(defer=True) seen; waits for exports == 0 */
#define MB_PYCALLBACK 0x400  /* ctx is a strong reference to a Python callable */
#define MB_C_CONTIG 0x800    /* layout is C-contiguous */
#define MB_F_CONTIG 0x1000   /* layout is Fortran-contiguous */
#define MB_COMPACT 0x2000    /* 1-D contiguous "B": the layout is implied (see below) */
#define MB_SLICE 0x4000      /* owner is the parent Buffer, whose export we hold */
#define MB_UNTRACKED_CALLABLE 0x8000 /* finalize untracked the Python callable in ctx */
#define MB_TRACKED 0x10000   /* we called PyObject_GC_Track on this Buffer */
#define MB_GC_DEFERRED 0x20000 /* with MB_PENDING: the GC finalized us under a live export */
#define MB_HELD_EXPORT 0x40000 /* ctx is a membuf_held_export (traversed: view.obj, on_release) */
#define MB_EXTENDED 0x80000  /* the object is a MemBufExtended (fixed at creation) */
#define MB_GC_HEAD 0x100000  /* allocated with a GC header (fixed at creation; tp_is_gc) */

/* Branch hints and a no-inline mark for the cold halves of hot functions. */
#if defined(__GNUC__) || defined(__clang__)
#define MB_LIKELY(x) __builtin_expect(!!(x), 1)
#define MB_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define MB_LIKELY(x) (x)
#define MB_UNLIKELY(x) (x)
#endif
#define MB_NOINLINE Py_NO_INLINE

/*
 * A Buffer: two layouts of one type.
 *
 * Every Buffer starts with MemBufObject, the head: 64 bytes on a 64-bit
 * build with the GIL (header 16, buf, nbytes, flags + exports, release,
 * ctx, weakreflist).  A plain Buffer -- 1-D bytes over a non-NULL pointer,
 * no owner, released as release(buf, nbytes, ctx) -- is the head alone.
 * Everything else (an owner, a slice, a typed or strided layout, a held
 * export, memory wider than the view, a NULL pointer) is a MemBufExtended
 * (MB_EXTENDED), the head followed by the rest, then the shape and strides
 * and the format.
 *
 * A GC header only where a cycle is possible (MB_GC_HEAD, answered by
 * tp_is_gc): a Python callable in ctx, a held export with a Python
 * on_release, or an owner of a GC type (MB_MAY_CYCLE; slices included, their
 * owner is a Buffer).  An object of a type without GC support holds no
 * reference back, by CPython's convention, so an owner such as bytes, an
 * int, a NumPy array or object() needs none.  The free-threaded build gives
 * every Buffer a GC header (its collector finds objects by their heap).
 * MB_EXTENDED and MB_GC_HEAD never change after creation.  Buffers that can
 * close a cycle are tracked (MB_TRACKED) while they live (with the GIL,
 * exactly those with a GC header; in the free-threaded build, where every
 * Buffer has one, only those).  Objects with a GC header are freed with
 * PyObject_GC_Del, the others with PyObject_Free; the free lists keep
 * compact objects of each form (lifetime.c).
 *
 * Invariants:
 *   - buf is element [0, ..., 0]; the layout (ndim, shape, strides, itemsize)
 *     only reaches [mem, mem + mem_len) of the memory the creator passed
 *     (a head-only Buffer: mem == buf != NULL, mem_len == nbytes).
 *   - nbytes == product(shape) * itemsize.
 *   - MB_COMPACT: format "B", ndim 1, shape {nbytes}, strides {1},
 *     itemsize 1: the accessors below answer that from the head (shape is
 *     &nbytes, strides is &membuf_unit_stride).  Every head-only Buffer is
 *     compact.  Otherwise shape and strides point into the extended
 *     object's own trailing storage, followed by a NUL-terminated copy of
 *     format (NULL means "B").
 *   - exports counts live Py_buffer exports (each holds a reference to us,
 *     so dealloc never sees exports > 0); at most MB_EXPORTS_MAX.
 *   - Ownership: until MB_RELEASED, we own `owner` (strong ref, may be NULL)
 *     and the duty to call release(mem, mem_len, ctx) once; with
 *     MB_PYCALLBACK, ctx is a strong ref to a Python callable instead; with
 *     MB_SLICE, the duty is to end one export of the parent (= owner);
 *     with MB_HELD_EXPORT, ctx is a membuf_held_export: an export of
 *     another object (the owner) that release ends, then calls the Python
 *     on_release it may hold (from_buffer(), and Buffers rebuilt by pickle).
 *     Release clears all four fields *before* the callback runs.
 *   - Every reference we hold is visited by tp_traverse, including the
 *     exporter behind a held export (view->obj): a cycle through any of them
 *     is collected like a cycle through a memoryview.
 *   - MB_PENDING: release() is owed as soon as exports drops to 0, either
 *     because release(defer=True) was called or (with MB_GC_DEFERRED) because
 *     the garbage collector finalized the Buffer while an export was alive.
 *
 * Threads: `exports` and the state bits of `flags` change together, under
 * the Buffer's lock (MB_LOCK: a critical section in the free-threaded
 * build, the GIL elsewhere): taking an export, ending one, and taking the
 * release duty (lifetime.c).  Callbacks run outside any lock.  The free
 * list is off in the free-threaded build.
 */
typedef struct {
    PyObject_HEAD
    char *buf;
    Py_ssize_t nbytes;
    int flags;
    int exports;
    MemBuf_ReleaseFunc release;
    void *ctx;
    PyObject *weakreflist;
} MemBufObject;

/* The rest of a Buffer that is more than plain bytes (MB_EXTENDED).  The
 * type's tp_itemsize is 1: PyObject_GC_NewVar allocates these bytes after
 * the head (it writes their count where a PyVarObject keeps ob_size, i.e.
 * into buf, before the creator sets buf; nothing reads it back:
 * __sizeof__ is ours). */
typedef struct {
    MemBufObject head;
    PyObject *owner;
    void *mem;
    size_t mem_len;
    Py_ssize_t itemsize;
    Py_ssize_t *shape;
    Py_ssize_t *strides;
    char *format;
    int ndim;
} MemBufExtended;

#define MB_EXPORTS_MAX INT_MAX

/* The stride of every compact Buffer: read-only, shared. */
extern const Py_ssize_t membuf_unit_stride;

static inline MemBufExtended *
membuf_ext(const MemBufObject *self)
{
    assert(self->flags & MB_EXTENDED);
    return (MemBufExtended *)self;
}

#define MB_IS_EXTENDED(self) (((self)->flags & MB_EXTENDED) != 0)

/* The layout, whichever the object's form (fields that never change). */
static inline int
membuf_ndim(const MemBufObject *self)
{
    return (self->flags & MB_COMPACT) ? 1 : membuf_ext(self)->ndim;
}

static inline Py_ssize_t
membuf_itemsize(const MemBufObject *self)
{
    return (self->flags & MB_COMPACT) ? 1 : membuf_ext(self)->itemsize;
}

static inline Py_ssize_t *
membuf_shape(MemBufObject *self)
{
    return (self->flags & MB_COMPACT) ? &self->nbytes : membuf_ext(self)->shape;
}

static inline Py_ssize_t *
membuf_strides(MemBufObject *self)
{
    return (self->flags & MB_COMPACT) ? (Py_ssize_t *)&membuf_unit_stride
                                      : membuf_ext(self)->strides;
}

/* The format as stored: NULL for "B". */
static inline const char *
membuf_format_or_null(const MemBufObject *self)
{
    return (self->flags & MB_COMPACT) ? NULL : membuf_ext(self)->format;
}

/* The memory the release callback gets back: release(mem, mem_len, ctx). */
static inline void *
membuf_mem(const MemBufObject *self)
{
    return MB_IS_EXTENDED(self) ? membuf_ext(self)->mem : self->buf;
}

static inline size_t
membuf_mem_len(const MemBufObject *self)
{
    return MB_IS_EXTENDED(self) ? membuf_ext(self)->mem_len : (size_t)self->nbytes;
}

/* The owner (borrowed; NULL if none or released). */
static inline PyObject *
membuf_owner(const MemBufObject *self)
{
    return MB_IS_EXTENDED(self) ? membuf_ext(self)->owner : NULL;
}

/*
 * The type.  The default build defines it as a static PyTypeObject (the
 * fastest: no type reference per object).  The stable-ABI build
 * (Py_LIMITED_API, `-Dpython.allow_limited_api=true`, an abi3 wheel) cannot
 * see PyTypeObject's fields, so membuf_type_ready() creates it once per
 * process with PyType_FromSpec from the same slot functions; every object,
 * live or on the free list, then holds a reference to it, and the type is
 * never destroyed (C API users cache Buffer_Type for the life of the
 * process).  MEMBUF_TYPE is the PyTypeObject * in both builds.
 */
#ifdef Py_LIMITED_API
extern PyTypeObject *membuf_heap_type;
#define MEMBUF_TYPE membuf_heap_type
#define MB_CAPI_CONST /* Buffer_Type is filled in by membuf_type_ready() */
#else
extern PyTypeObject MemBuf_Type;
#define MEMBUF_TYPE (&MemBuf_Type)
#define MB_CAPI_CONST const
#endif

/* Ready the type (create it, in the limited build) and fill in the C API
 * table.  Idempotent; 0, or -1 with an exception set. */
int membuf_type_ready(void);

extern MB_CAPI_CONST MemBuf_CAPI membuf_capi;
extern PyMethodDef membuf_methods[];

/* The slot functions (buffer_protocol.c, buffer_methods.c), listed in both
 * type definitions in buffer_type.c. */
int membuf_getbuffer(MemBufObject *self, Py_buffer *view, int flags);
void membuf_releasebuffer(MemBufObject *self, Py_buffer *view);
Py_ssize_t membuf_length(MemBufObject *self);
PyObject *membuf_item(MemBufObject *self, Py_ssize_t i);
PyObject *membuf_subscript(MemBufObject *self, PyObject *key);
int membuf_ass_subscript(MemBufObject *self, PyObject *key, PyObject *value);
PyObject *membuf_repr(MemBufObject *self);
PyObject *membuf_richcompare(PyObject *self, PyObject *other, int op);

/* The limited API has no tuple access macros. */
#ifdef Py_LIMITED_API
#define MB_TUPLE_SIZE(t) PyTuple_Size(t)
#define MB_TUPLE_ITEM(t, i) PyTuple_GetItem((t), (i))
#else
#define MB_TUPLE_SIZE(t) PyTuple_GET_SIZE(t)
#define MB_TUPLE_ITEM(t, i) PyTuple_GET_ITEM((t), (i))
#endif

#define MemBuf_CheckExact(op) Py_IS_TYPE((op), MEMBUF_TYPE)

/* Whether owner (may be NULL) can be part of a reference cycle: a Buffer
 * holding it gets a GC header and is tracked. */
#define MB_MAY_CYCLE(owner) ((owner) != NULL && PyType_IS_GC(Py_TYPE(owner)))

/* A Buffer's lock: a per-object critical section in the free-threaded build
 * (3.13+), nothing where the GIL serializes everything.  Held only around
 * state changes that make no call-out (lifetime.c: take_duty() and its
 * callers, count_export_end(), membuf_end_export_locked(); buffer_protocol.c:
 * taking an export), never while a
 * callback or other Python code runs. */
#if defined(Py_BEGIN_CRITICAL_SECTION) && !defined(Py_LIMITED_API)
#define MB_LOCK(self) Py_BEGIN_CRITICAL_SECTION((PyObject *)(self))
#define MB_UNLOCK() Py_END_CRITICAL_SECTION()
#else
#define MB_LOCK(self) {
#define MB_UNLOCK() }
#endif

/* The invariants above that one look at the fields can check (asserts are
 * on in the debug, sanitizer, valgrind and fuzz builds). */
#define MB_ASSERT_FIELDS(self) membuf_assert_fields(self)
static inline void
membuf_assert_fields(const MemBufObject *self)
{
#ifndef NDEBUG
    int flags = self->flags;
    assert(self->exports >= 0);
    assert(MB_IS_EXTENDED(self) || ((flags & MB_COMPACT) && self->buf != NULL));
#ifndef Py_GIL_DISABLED
    assert(MB_IS_EXTENDED(self) || !(flags & MB_GC_HEAD) || (flags & MB_PYCALLBACK) ||
           (flags & MB_RELEASED));
    assert(!(flags & MB_TRACKED) || (flags & MB_GC_HEAD));
#endif
    if (MB_IS_EXTENDED(self)) {
        const MemBufExtended *ext = (const MemBufExtended *)self;
        assert(!(flags & MB_COMPACT) ||
               (ext->format == NULL && ext->ndim == 1 && ext->itemsize == 1 &&
                ext->shape == &self->nbytes && ext->strides == &membuf_unit_stride));
        assert(!(flags & MB_RELEASED) || ext->owner == NULL);
        assert((flags & MB_RELEASED) || !(flags & MB_SLICE) ||
               (ext->owner != NULL && Py_IS_TYPE(ext->owner, Py_TYPE(self))));
        assert((flags & MB_RELEASED) || !(flags & MB_HELD_EXPORT) || ext->owner != NULL);
    }
    else {
        assert(!(flags & (MB_SLICE | MB_HELD_EXPORT)));
    }
    assert(!(flags & MB_RELEASED) ||
           (self->release == NULL && self->ctx == NULL &&
            !(flags & (MB_PENDING | MB_GC_DEFERRED))));
    assert(!(flags & MB_GC_DEFERRED) || (flags & MB_PENDING));
    assert((flags & MB_RELEASED) || !(flags & (MB_PYCALLBACK | MB_HELD_EXPORT)) ||
           self->ctx != NULL);
#else
    (void)self;
#endif
}
#define MB_IS_RELEASED(self) (((self)->flags & MB_RELEASED) != 0)
#define MB_REFUSES_WORK(self) (((self)->flags & (MB_RELEASED | MB_PENDING)) != 0)

/* The rule for every operation that touches the memory (CPython's
 * CHECK_RELEASED): refuse a released or release-pending Buffer with
 * ValueError, returning `error` -- and check again after anything that can
 * run Python code (__index__, another object's export, an allocation that
 * may collect), because that code may have released the Buffer. */
#define MB_CHECK_RELEASED(self, error)                                                       \
    do {                                                                                     \
        if (MB_REFUSES_WORK(self)) {                                                         \
            membuf_refuse(self);                                                             \
            return (error);                                                                  \
        }                                                                                    \
    } while (0)

/* layout.c */

/* Item size of a struct-module format (or NumPy's Zf/Zd), or -1 with
 * ValueError set. */
Py_ssize_t membuf_itemsize_of_format(const char *format);

/* Check a spec's layout with format (NULL for "B"), element [0, ..., 0] at
 * ptr + offset (0 for the C API; explicit strides only otherwise); on
 * success fill *ndim_out, shape_out, strides_out (C order when the spec has
 * none), *itemsize_out and *nbytes_out.  -1 with ValueError/OverflowError
 * set otherwise. */
int membuf_check_layout(const MemBuf_Spec *spec, const char *format, Py_ssize_t offset,
                        int *ndim_out, Py_ssize_t *shape_out, Py_ssize_t *strides_out,
                        Py_ssize_t *itemsize_out, Py_ssize_t *nbytes_out);

/* MB_C_CONTIG | MB_F_CONTIG as they apply to a layout. */
int membuf_layout_flags(int ndim, const Py_ssize_t *shape, const Py_ssize_t *strides,
                        Py_ssize_t itemsize);

/* The type code of a format that describes one item in native byte order
 * ("d", "@d", "=d", or "<d" / ">d" in the machine's own order; NumPy's
 * "Zf"/"Zd" complex too), or NULL for anything else. */
const char *membuf_native_code(const char *format);

/* A tuple of n Python ints, or NULL with an exception set. */
PyObject *membuf_ssize_tuple(int n, const Py_ssize_t *values);

/* lifetime.c: the type slots */
void membuf_dealloc(MemBufObject *self);
int membuf_is_gc(PyObject *self);
int membuf_traverse(MemBufObject *self, visitproc visit, void *arg);
int membuf_clear(MemBufObject *self);
void membuf_finalize(MemBufObject *self);

/* lifetime.c */

/* Capacity of the free list of plain Buffers (lifetime.c); 0: none.  Also
 * membuf._membuf._FREELIST_MAX, for the tests. */
#ifndef MEMBUF_FREELIST_MAX /* sanitizer and fuzz builds set 0: ASan then sees every object */
#ifdef Py_GIL_DISABLED
#define MEMBUF_FREELIST_MAX 0 /* one shared list would need a lock; the allocator is per thread */
#else
#define MEMBUF_FREELIST_MAX 32
#endif
#endif

/* The one constructor.  Steals the duty to release (contract 3): on failure
 * the release callback (or the Python callable, for MB_PYCALLBACK) has been
 * called and `owner` is untouched (borrowed).  Takes a new ref to owner. */
PyObject *membuf_from_spec(const MemBuf_Spec *spec, int ctx_kind);

/* MemBuf_FromMemory: the same as membuf_from_spec over a zeroed spec with
 * these fields, on a shorter path. */
PyObject *membuf_from_memory(const void *ptr, size_t len, int flags, MemBuf_ReleaseFunc release,
                             void *ctx);

/* from_address()'s short path: a plain byte Buffer over checked ptr/len
 * (ptr NULL only with len 0; flags public), with an owner (borrowed, a new
 * reference is taken; may be NULL) and a Python on_release (stolen; may be
 * NULL: on failure it has been called). */
PyObject *membuf_new_plain(const void *ptr, size_t len, int flags, PyObject *owner,
                           PyObject *callable);

/* Give back the memory of the free list of Buffer objects (module teardown). */
void membuf_clear_freelist(void);

/* The release duty for memory that never became a Buffer: calls
 * spec->release (or the Python callable in spec->ctx, reporting its error as
 * unraisable and dropping the reference).  Keeps any exception set. */
void membuf_release_unwrapped(const MemBuf_Spec *spec, int ctx_kind);

/* A Buffer over elements of `parent` (a slice): holds an export of parent
 * and a reference to it, given back when the slice is released. */
PyObject *membuf_new_view(MemBufObject *parent, char *buf, int ndim, const Py_ssize_t *shape,
                          const Py_ssize_t *strides);

/* ctx of a Buffer with MB_HELD_EXPORT.  Ownership: the Buffer owns the
 * struct (PyMem), the export in view (ended with PyBuffer_Release) and the
 * strong reference on_release (or NULL); its release duty ends the export,
 * frees the struct, then calls on_release (lifetime.c, do_duty). */
typedef struct {
    Py_buffer view; /* filled in place: exporters may point view.shape into it */
    PyObject *on_release;
} membuf_held_export;

/* The release callback of a spec whose ctx is a membuf_held_export, for the
 * paths that never made a Buffer (creation failed): ends the export, calls
 * on_release reporting its error as unraisable, frees the struct. */
void membuf_held_export_release(void *ptr, size_t len, void *ctx);

/* What ctx of a spec is, for membuf_from_spec_at(). */
enum {
    MB_CTX_C = 0,           /* the context of a C release callback */
    MB_CTX_PYCALLABLE = 1,  /* a strong reference to a Python callable (MB_PYCALLBACK) */
    MB_CTX_HELD_EXPORT = 2, /* a membuf_held_export; spec->owner is its exporter */
};

/* membuf_from_spec with element [0, ..., 0] at spec->ptr + offset (only
 * with explicit strides; membuf_check_layout), ctx of the given kind. */
PyObject *membuf_from_spec_at(const MemBuf_Spec *spec, int ctx_kind, Py_ssize_t offset);

/* release() semantics shared by Python and C: strict or deferred. */
int membuf_release(MemBufObject *self, int defer);

/* One export ended (bf_releasebuffer): count it, and finish a deferred
 * release at zero, under the Buffer's lock. */
void membuf_end_export_locked(MemBufObject *self);

static inline void
membuf_end_export(MemBufObject *self)
{
#ifndef Py_GIL_DISABLED
    /* The GIL serializes every state change: with no release pending (the
     * common case, and pending never clears without a release) count here. */
    if (!(self->flags & MB_PENDING)) {
        assert(self->exports > 0);
        self->exports--;
        return;
    }
#endif
    membuf_end_export_locked(self);
}

/* errors.c */

/* Raise ValueError for a released / release-pending Buffer; returns -1. */
int membuf_refuse(MemBufObject *self);

/* Raise exc with the message "<format % ...>, not <name of obj's type>";
 * returns -1.  (The limited API cannot read tp_name: it uses __name__.) */
int membuf_type_error(PyObject *exc, PyObject *obj, const char *format, ...);

/* constructors.c */

/* readonly_mode of membuf_from_exporter() */
enum { MB_FOLLOW_EXPORTER, MB_FORCE_READONLY, MB_REQUIRE_WRITABLE };

/* A Buffer over obj's memory, holding one export of obj (and obj as owner)
 * until released: from_buffer() and _rebuild().  With layout == NULL the
 * exporter's own layout (any strides); otherwise layout's format (NULL:
 * the exporter's), shape and strides over a C-contiguous export, checked
 * against its size.  Ownership of on_release (a new reference, may be
 * NULL) passes on entry: on failure it has been called. */
PyObject *membuf_from_exporter(PyObject *obj, int readonly_mode, const MemBuf_Spec *layout,
                               PyObject *on_release);

/* Interned keyword names, one set per module object (per interpreter). */
enum {
    MB_KW_ADDRESS, MB_KW_SIZE, MB_KW_FORMAT, MB_KW_SHAPE, MB_KW_STRIDES, MB_KW_READONLY,
    MB_KW_OWNER, MB_KW_ON_RELEASE, MB_KW_COUNT
};
typedef struct {
    PyObject *kw[MB_KW_COUNT];
} membuf_module_state;
int membuf_module_state_init(PyObject *module);
void membuf_module_state_clear(PyObject *module);
PyObject *membuf_py_from_address(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                                 PyObject *kwnames);
PyObject *membuf_py_from_buffer(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                                PyObject *kwnames);
PyObject *membuf_py_address_of(PyObject *module, PyObject *obj);

/* The name of obj's type (tp_name; __name__ in the limited API), a new
 * reference, for messages ("%.200U"); NULL with an exception set. */
PyObject *membuf_type_name(PyObject *obj);

/* pickle.c */
PyObject *membuf_reduce_ex(MemBufObject *self, PyObject *protocol);
PyObject *membuf_rebuild(PyObject *module, PyObject *args);

/* dlpack.c */
PyObject *membuf_dlpack(MemBufObject *self, PyObject *args, PyObject *kwargs);
PyObject *membuf_dlpack_device(MemBufObject *self, PyObject *unused);

/* Format string for exports and attributes. */
static inline const char *
membuf_format(const MemBufObject *self)
{
    const char *format = membuf_format_or_null(self);
    return format != NULL ? format : "B";
}

#endif /* MEMBUF_CORE_H */
