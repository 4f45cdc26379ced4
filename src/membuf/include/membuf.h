/*
 * membuf.h -- zero-copy Python buffers over memory a C library hands out.
 *
 * ======================================================================
 *  THE WHOLE API IN ONE SCREEN
 * ======================================================================
 *
 *    #include <membuf.h>        // compile with -I$(python -m membuf --include)
 *
 *    static void give_back(void *ptr, size_t len, void *ctx) { lib_free(ctx); }
 *
 *    PyMODINIT_FUNC PyInit_mymod(void) {         // or your Py_mod_exec slot
 *        if (import_membuf() < 0) return NULL;   // once per extension module
 *        ...
 *    }
 *
 *    static PyObject *get_blob(PyObject *self, PyObject *arg) {
 *        lib_blob *b = lib_get_blob(...);                   // C library memory
 *        return MemBuf_FromMemory(b->data, b->size, 0,      // read-only view
 *                                 give_back, b);            // runs exactly once
 *    }   // NULL return: give_back(b) has ALREADY run; nothing to clean up.
 *
 *    MemBuf_Release(buf, 0);              // give memory back now, or BufferError
 *    MemBuf_Release(buf, MEMBUF_DEFER);   // ... or as soon as the last view ends
 *
 *  For typed / multi-dimensional memory, zero a MemBuf_Spec, fill it, and
 *  call MemBuf_FromSpec(&spec).  MemBuf_Check(obj) tells a Buffer apart.
 *
 * ======================================================================
 *  THE CONTRACT (every line is tested; see README.md "Lifetime contract")
 * ======================================================================
 *
 *  1. Zero-copy.  Every buffer export (memoryview, NumPy, bytes(), hashlib,
 *     ...) points at `ptr` itself.  Nothing is ever copied.
 *
 *  2. Exactly once.  The release callback runs exactly once, and the owner
 *     reference is dropped exactly once (after the callback), at the first of:
 *       - a successful MemBuf_Release() / Buffer.release() / end of `with buf:`
 *       - the end of the last export after a deferred release (MEMBUF_DEFER)
 *       - deallocation of the Buffer, which cannot happen while an export lives.
 *     The callback runs with the GIL held, in whichever thread triggers it.
 *     It must not raise a Python exception (it returns void); if it calls
 *     into Python it must save and restore any exception that is set.
 *     The Buffer is marked released BEFORE the callback runs, so a callback
 *     that touches the Buffer again sees a released Buffer.
 *
 *  3. !!! OWNERSHIP PASSES ON ENTRY !!!
 *     MemBuf_FromMemory() and MemBuf_FromSpec() own the memory from the moment
 *     they are called.  If they fail (return NULL with an exception set), the
 *     release callback HAS ALREADY BEEN CALLED for that memory.  Never free
 *     the memory yourself after a failed call; you need no cleanup code.
 *     (The same rule as CPython's PyModule_Add().)
 *
 *  4. Strict release.  MemBuf_Release(buf, 0) while exports are alive raises
 *     BufferError naming their number and changes nothing.  Releasing a
 *     released Buffer is a no-op that returns 0.
 *
 *  5. Deferred release.  MemBuf_Release(buf, MEMBUF_DEFER) refuses new
 *     exports at once and releases the memory when the last export ends
 *     (at once if there is none).
 *
 *  6. No use after release.  After release every Python operation that
 *     would touch the memory (exports, indexing, slicing, len, tobytes, ...)
 *     raises ValueError.  Metadata (address, nbytes, format, shape, ...) and
 *     `released` still answer.
 *
 *  7. Read-only by default.  A writable export of a read-only Buffer raises
 *     BufferError.  Pass MEMBUF_WRITABLE to allow writes.
 *
 *  8. Every PyBUF_* request is answered as CPython's own exporters answer it
 *     (bytes for plain byte buffers, memoryview for typed ones).
 *
 *  9. Slices share.  buf[i:j] is a Buffer over the same memory holding an
 *     export of its parent: the parent cannot be strictly released while a
 *     slice lives; the memory goes back when parent and slices are all gone.
 *
 * 10. Owners and GC.  A Buffer holding an owner (or a Python on_release
 *     callable) takes part in cyclic GC; a cycle through the owner is
 *     collected and the callback runs once.  Every reference a Buffer holds
 *     (owner, callable, the export a slice or an unpickled Buffer holds) is
 *     visible to the GC.
 *
 * ======================================================================
 *  THE FUNCTIONS
 * ======================================================================
 *
 *  PyObject *MemBuf_FromMemory(const void *ptr, size_t len, int flags,
 *                              MemBuf_ReleaseFunc release, void *ctx);
 *      New reference to a 1-D unsigned-byte ("B") Buffer over [ptr, ptr+len).
 *      flags: 0 (read-only) or MEMBUF_WRITABLE.  release may be NULL (memory
 *      that outlives the Buffer, e.g. static data); ctx is passed through.
 *      NULL ptr with len 0 is a valid empty Buffer.
 *
 *  PyObject *MemBuf_FromSpec(const MemBuf_Spec *spec);
 *      Like MemBuf_FromMemory, with a format, a shape, strides and an owner.
 *      A zeroed spec with only ptr and len set equals MemBuf_FromMemory(ptr,
 *      len, 0, NULL, NULL).  The spec and the arrays it points to are only
 *      read during the call (they are copied); `owner` is borrowed and the
 *      Buffer takes its own reference.
 *
 *  int MemBuf_Release(PyObject *buf, int flags);
 *      0 on success (or if already released); -1 with an exception set:
 *      BufferError (exports alive, strict), TypeError (not a Buffer),
 *      ValueError (unknown flags).
 *
 *  int MemBuf_Check(PyObject *obj);
 *      1 if obj is a membuf.Buffer, else 0.  Never fails.
 *
 *  int MemBuf_IsReleased(PyObject *buf);                   (API version 2)
 *      1 if the Buffer's memory has been given back (or a deferred release
 *      is pending: no new export can be made), 0 if it is live; -1 with
 *      TypeError if buf is not a Buffer.  Lets a "valid until the next
 *      call" wrapper see whether a Buffer it handed out still holds views.
 *
 *  Errors from the constructors (the release callback has run in each case):
 *      ValueError     NULL ptr with len > 0; unknown flag bits; invalid or
 *                     zero-sized format; ndim outside 0..64; shape NULL with
 *                     ndim > 1; negative shape entry; a layout that reaches
 *                     outside [ptr, ptr+len) or, without strides, does not
 *                     cover exactly len bytes.
 *      OverflowError  len > PY_SSIZE_T_MAX, or a layout whose size overflows.
 *      MemoryError    allocation failure.
 *
 * ======================================================================
 *  USING THE API FROM SEVERAL C FILES (numpy's NO_IMPORT pattern)
 * ======================================================================
 *
 *  By default every file that includes membuf.h gets its own static API
 *  pointer and must call import_membuf() itself.  To share one import:
 *
 *      // in every file, before #include <membuf.h>:
 *      #define MEMBUF_UNIQUE_SYMBOL mymod_membuf_api
 *      // in every file EXCEPT the one that calls import_membuf():
 *      #define MEMBUF_NO_IMPORT
 *
 *  The shared pointer is a hidden symbol (visible to the files of one
 *  shared object only, as NumPy's PY_ARRAY_UNIQUE_SYMBOL): define
 *  MEMBUF_API_SYMBOL_ATTRIBUTE (e.g. empty) to choose another visibility.
 *
 * ======================================================================
 *  VERSIONS
 * ======================================================================
 *
 *  The API table travels in the capsule "membuf._membuf._C_API".  Its ABI
 *  version must equal MEMBUF_ABI_VERSION (bumped only when the table or the
 *  spec struct changes incompatibly); its API version must be at least the
 *  version the extension targets (bumped when entries are appended; the
 *  table is append-only).  import_membuf() checks both and raises
 *  ImportError naming the numbers and the fix.  The pointer it stores stays
 *  valid for the life of the process.
 *
 *  An extension targets the newest API version this header knows
 *  (MEMBUF_API_VERSION) unless it says otherwise, as NumPy's
 *  NPY_TARGET_VERSION: to run against an older membuf too, define
 *
 *      #define MEMBUF_TARGET_API_VERSION 1   // before #include <membuf.h>
 *
 *  and only the functions of that version are declared; import_membuf()
 *  then accepts any membuf whose API version is at least 1.
 */
#ifndef MEMBUF_H
#define MEMBUF_H

#ifndef PY_SSIZE_T_CLEAN
#define PY_SSIZE_T_CLEAN
#endif
#include <Python.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MEMBUF_ABI_VERSION 2 /* must match exactly */
#define MEMBUF_API_VERSION 2 /* the newest API version this header knows */

/* The API version an extension is built for (see VERSIONS above): the
 * installed membuf must provide at least this one. */
#ifndef MEMBUF_TARGET_API_VERSION
#define MEMBUF_TARGET_API_VERSION MEMBUF_API_VERSION
#endif
#if MEMBUF_TARGET_API_VERSION < 1 || MEMBUF_TARGET_API_VERSION > MEMBUF_API_VERSION
#error "MEMBUF_TARGET_API_VERSION must be between 1 and MEMBUF_API_VERSION"
#endif

/* Creation flags (MemBuf_FromMemory, MemBuf_Spec.flags). */
#define MEMBUF_WRITABLE 0x1 /* exports may be writable; default is read-only */

/* Release flags (MemBuf_Release). */
#define MEMBUF_DEFER 0x1 /* release when the last export ends */

/* Largest ndim a spec may have (the same limit as memoryview: PyBUF_MAX_NDIM). */
#define MEMBUF_MAX_NDIM 64

/* Gives memory back.  ptr and len are those given at creation; ctx is passed
 * through untouched.  Called exactly once, with the GIL held. */
typedef void (*MemBuf_ReleaseFunc)(void *ptr, size_t len, void *ctx);

/* Zero-initialise (MemBuf_Spec spec = {0};), then set what you need. */
typedef struct MemBuf_Spec {
    const void *ptr; /* first byte; also element [0, ..., 0] of the layout */
    size_t len;      /* bytes valid at ptr; passed back to release */
    int flags;       /* 0 or MEMBUF_WRITABLE */
    int ndim;        /* shape NULL: 0 or 1, meaning 1-D of len/itemsize items.
                        shape set: 0..64 dimensions (0: a single item). */
    const char *format;        /* struct-module syntax; NULL means "B" */
    const Py_ssize_t *shape;   /* ndim entries, each >= 0; may be NULL (above) */
    const Py_ssize_t *strides; /* ndim entries in bytes; NULL: C-contiguous,
                                  covering exactly len bytes */
    MemBuf_ReleaseFunc release; /* may be NULL */
    void *ctx;                  /* passed to release */
    PyObject *owner;            /* borrowed; kept alive until the memory is
                                   released, then dropped; may be NULL */
} MemBuf_Spec;

/* The table behind the capsule.  Its layout rules hold forever:
 *   - abi_version and api_version are the first two fields: import_membuf()
 *     of every version reads them before anything else;
 *   - append-only: a new entry goes at the end and bumps MEMBUF_API_VERSION,
 *     so an extension built for an older API version never reads past the
 *     entries that version had;
 *   - changing or removing an entry bumps MEMBUF_ABI_VERSION (every
 *     extension must then be rebuilt). */
typedef struct MemBuf_CAPI {
    unsigned int abi_version;
    unsigned int api_version;
    /* API version 1 */
    PyTypeObject *Buffer_Type; /* MemBuf_Check() compares with it inline */
    PyObject *(*FromMemory)(const void *ptr, size_t len, int flags, MemBuf_ReleaseFunc release,
                            void *ctx);
    PyObject *(*FromSpec)(const MemBuf_Spec *spec);
    int (*Release)(PyObject *buf, int flags);
    /* API version 2 */
    int (*IsReleased)(PyObject *buf);
} MemBuf_CAPI;

#define MEMBUF_CAPSULE_NAME "membuf._membuf._C_API"

#ifndef MEMBUF_BUILDING_CORE /* consumers only; the core defines its own */

#if defined(MEMBUF_UNIQUE_SYMBOL)
#define MemBuf_API MEMBUF_UNIQUE_SYMBOL
#ifndef MEMBUF_API_SYMBOL_ATTRIBUTE /* hidden: shared by one extension's files only */
#if defined(__GNUC__) && !defined(_WIN32)
#define MEMBUF_API_SYMBOL_ATTRIBUTE __attribute__((visibility("hidden")))
#else
#define MEMBUF_API_SYMBOL_ATTRIBUTE
#endif
#endif
#if defined(MEMBUF_NO_IMPORT)
extern MEMBUF_API_SYMBOL_ATTRIBUTE const MemBuf_CAPI *MemBuf_API;
#else
MEMBUF_API_SYMBOL_ATTRIBUTE const MemBuf_CAPI *MemBuf_API = NULL;
#endif
#else
#if defined(MEMBUF_NO_IMPORT)
#error "MEMBUF_NO_IMPORT needs MEMBUF_UNIQUE_SYMBOL (the shared pointer's name)"
#endif
static const MemBuf_CAPI *MemBuf_API = NULL;
#endif

/* Calling the API before import_membuf() is a programming error: the
 * constructors honour contract 3 and raise RuntimeError; MemBuf_Check aborts. */
static inline int
_MemBuf_NotImported(void)
{
    PyErr_SetString(PyExc_RuntimeError,
                    "membuf C API used before import_membuf() was called in this module");
    return -1;
}

static inline PyObject *
MemBuf_FromMemory(const void *ptr, size_t len, int flags, MemBuf_ReleaseFunc release, void *ctx)
{
    if (MemBuf_API == NULL) {
        if (release != NULL) {
            release((void *)ptr, len, ctx);
        }
        _MemBuf_NotImported();
        return NULL;
    }
    return MemBuf_API->FromMemory(ptr, len, flags, release, ctx);
}

static inline PyObject *
MemBuf_FromSpec(const MemBuf_Spec *spec)
{
    if (MemBuf_API == NULL) {
        if (spec != NULL && spec->release != NULL) {
            spec->release((void *)spec->ptr, spec->len, spec->ctx);
        }
        _MemBuf_NotImported();
        return NULL;
    }
    return MemBuf_API->FromSpec(spec);
}

static inline int
MemBuf_Release(PyObject *buf, int flags)
{
    if (MemBuf_API == NULL) {
        return _MemBuf_NotImported();
    }
    return MemBuf_API->Release(buf, flags);
}

static inline int
MemBuf_Check(PyObject *obj)
{
    if (MemBuf_API == NULL) {
        Py_FatalError("MemBuf_Check() called before import_membuf()");
    }
    return obj != NULL && Py_IS_TYPE(obj, MemBuf_API->Buffer_Type);
}

#if MEMBUF_TARGET_API_VERSION >= 2
static inline int
MemBuf_IsReleased(PyObject *buf)
{
    if (MemBuf_API == NULL) {
        return _MemBuf_NotImported();
    }
    return MemBuf_API->IsReleased(buf);
}
#endif

/* Import the C API: 0 on success, -1 with ImportError set. */
static inline int
import_membuf(void)
{
    const MemBuf_CAPI *api;
    if (MemBuf_API != NULL) {
        return 0;
    }
    api = (const MemBuf_CAPI *)PyCapsule_Import(MEMBUF_CAPSULE_NAME, 0);
    if (api == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_ImportError)) {
            /* e.g. AttributeError from a broken install: raise ImportError
             * with the original error as its __cause__. */
            PyObject *type, *value, *tb, *itype, *ivalue, *itb;
            PyErr_Fetch(&type, &value, &tb);
            PyErr_NormalizeException(&type, &value, &tb);
            PyErr_Format(PyExc_ImportError, "could not import the membuf C API %s: %S",
                         MEMBUF_CAPSULE_NAME, value);
            PyErr_Fetch(&itype, &ivalue, &itb);
            PyErr_NormalizeException(&itype, &ivalue, &itb);
            if (tb != NULL) {
                PyException_SetTraceback(value, tb);
            }
            PyException_SetCause(ivalue, value); /* steals value */
            Py_XDECREF(type);
            Py_XDECREF(tb);
            PyErr_Restore(itype, ivalue, itb);
        }
        return -1;
    }
    if (api->abi_version != MEMBUF_ABI_VERSION) {
        PyErr_Format(PyExc_ImportError,
                     "membuf C API ABI version mismatch: the installed membuf has ABI version %u, "
                     "this extension was compiled against ABI version %u; rebuild the extension "
                     "against the installed membuf (membuf.get_include())",
                     api->abi_version, (unsigned int)MEMBUF_ABI_VERSION);
        return -1;
    }
    if (api->api_version < MEMBUF_TARGET_API_VERSION) {
        PyErr_Format(PyExc_ImportError,
                     "membuf C API version too old: the installed membuf provides API version %u, "
                     "this extension needs API version %u or newer; upgrade membuf "
                     "(pip install -U membuf)",
                     api->api_version, (unsigned int)MEMBUF_TARGET_API_VERSION);
        return -1;
    }
    MemBuf_API = api;
    return 0;
}

#endif /* !MEMBUF_BUILDING_CORE */

#ifdef __cplusplus
}
#endif
#endif /* MEMBUF_H */
