# Cython declarations of membuf's C API: the whole of membuf.h.
#
#     from membuf cimport MemBuf_FromMemory, import_membuf
#     import_membuf()                    # once, at module level
#
#     cdef void give_back(void *ptr, size_t len, void *ctx) noexcept nogil:
#         free(ptr)                      # runs exactly once, with the GIL held
#
#     def getbuf():
#         cdef size_t n
#         cdef const void *p = lib_get(&n)
#         return MemBuf_FromMemory(p, n, 0, give_back, NULL)
#
# Build the module with include_dirs=[membuf.get_include()]; Cython finds this
# file through sys.path (`cimport membuf` works too).  docs/recipes.md has more.
#
# One Cython module is one C file, so the header's default applies: the module
# has its own static API pointer, set by import_membuf().  Before that call the
# constructors run the release callback and raise RuntimeError, and
# MemBuf_Check aborts the process: call import_membuf() at module level, as
# NumPy's import_array().
#
# Errors propagate: the constructors return `object` (NULL means an exception
# is set, and the release callback has ALREADY run: ownership passes on entry),
# MemBuf_Release and import_membuf are `except -1`.  None of them is nogil:
# they create, release or raise Python objects.

from cpython.object cimport PyObject


cdef extern from "membuf.h":
    const char *MEMBUF_CAPSULE_NAME     # "membuf._membuf._C_API"
    enum:
        MEMBUF_ABI_VERSION   # must equal membuf.ABI_VERSION (import_membuf checks)
        MEMBUF_API_VERSION   # the newest API version the header knows
        MEMBUF_TARGET_API_VERSION  # at most membuf.API_VERSION (import_membuf checks)
        MEMBUF_WRITABLE      # creation flag: exports may be writable
        MEMBUF_DEFER         # release flag: release when the last export ends
        MEMBUF_MAX_NDIM      # 64, as memoryview

    # Gives memory back: ptr and len as given at creation, ctx passed through.
    # Called exactly once, with the GIL held, possibly while an exception is
    # set (e.g. during deallocation).  It must not raise, hence `noexcept`.
    # Not declared nogil, so both kinds of callback fit:
    #   noexcept nogil  -- pure C (free(), lib_release()): the usual case;
    #   noexcept        -- touches Python objects (the GIL is held); it must
    #                      save and restore a pending exception itself.
    # To run Python code at release, prefer an owner object (MemBuf_Spec.owner)
    # or membuf.from_address(..., on_release=...).
    ctypedef void (*MemBuf_ReleaseFunc)(void *ptr, size_t len, void *ctx) noexcept

    # Zero it first (memset(&spec, 0, sizeof(spec))), then set what you need.
    # The spec and its arrays are only read during MemBuf_FromSpec (copied).
    ctypedef struct MemBuf_Spec:
        const void *ptr             # first byte; element [0, ..., 0]
        size_t len                  # bytes valid at ptr; passed back to release
        int flags                   # 0 or MEMBUF_WRITABLE
        int ndim                    # shape NULL: 0 or 1 (1-D); else 0..64
        const char *format          # struct syntax; NULL means "B"
        const Py_ssize_t *shape     # ndim entries >= 0, or NULL
        const Py_ssize_t *strides   # ndim entries in bytes; NULL: C-contiguous
        MemBuf_ReleaseFunc release  # may be NULL
        void *ctx                   # passed to release
        PyObject *owner             # borrowed (<PyObject *>obj); the Buffer
                                    # holds its own reference until release

    # New Buffer over [ptr, ptr+len), 1-D unsigned bytes ("B").  flags: 0
    # (read-only) or MEMBUF_WRITABLE.  On error (ValueError, OverflowError,
    # MemoryError) release(ptr, len, ctx) has already run.
    object MemBuf_FromMemory(const void *ptr, size_t len, int flags,
                             MemBuf_ReleaseFunc release, void *ctx)

    # Typed / multi-dimensional Buffer; the same ownership rule.
    object MemBuf_FromSpec(const MemBuf_Spec *spec)

    # 0, or -1 and raises: BufferError (exports alive, strict release),
    # TypeError (not a Buffer), ValueError (unknown flags).  flags: 0 (strict)
    # or MEMBUF_DEFER.  Releasing a released Buffer returns 0.
    int MemBuf_Release(object buf, int flags) except -1

    # True if obj is a membuf.Buffer.  Never fails (after import_membuf()).
    bint MemBuf_Check(object obj) noexcept

    # API version 2: 1 if the memory was given back (or a deferred release is
    # pending), 0 if live; -1 and raises TypeError if buf is not a Buffer.
    int MemBuf_IsReleased(object buf) except -1

    # The header's import function, under another Cython name so that the
    # wrapper below can be called import_membuf.  Sets ImportError on failure.
    int _membuf_import_c_api "import_membuf"() except -1


# Import membuf's C API into this module: 0, or raises ImportError (membuf
# missing, or its ABI / API version does not fit the header compiled in).
cdef inline int import_membuf() except -1:
    return _membuf_import_c_api()
