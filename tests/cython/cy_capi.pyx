# cython: language_level=3
# Every declaration of membuf/__init__.pxd, used through `cimport membuf`
# (cy_getbuf and cy_typed use `from membuf cimport ...`).  The Python package
# is imported under the same name: what the .pxd does not declare
# (membuf.Buffer, membuf.address_of) comes from the Python module.

from libc.string cimport memset
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF

cimport membuf
import membuf
from struct import calcsize

cdef extern from "blobsource.h":
    const void *blobsource_get(size_t n, size_t *len)
    void blobsource_free(void *ptr) nogil
    long blobsource_freed()
    const void *blobsource_last()

membuf.import_membuf()

# Calls of give_back, including those for NULL (which blobsource does not count).
cdef long callbacks = 0


cdef void give_back(void *ptr, size_t len, void *ctx) noexcept nogil:
    global callbacks
    callbacks += 1
    blobsource_free(ptr)


# A callback that needs the GIL (which it has): `noexcept`, not nogil.  ctx is
# a Python object whose reference the Buffer owns: the C spelling of "keep a
# Python object alive" (MemBuf_Spec.owner is the other one).
cdef void drop_ref(void *ptr, size_t len, void *ctx) noexcept:
    Py_XDECREF(<PyObject *>ctx)


def constants():
    return {
        "MEMBUF_CAPSULE_NAME": membuf.MEMBUF_CAPSULE_NAME.decode(),
        "MEMBUF_ABI_VERSION": membuf.MEMBUF_ABI_VERSION,
        "MEMBUF_API_VERSION": membuf.MEMBUF_API_VERSION,
        "MEMBUF_TARGET_API_VERSION": membuf.MEMBUF_TARGET_API_VERSION,
        "MEMBUF_WRITABLE": membuf.MEMBUF_WRITABLE,
        "MEMBUF_DEFER": membuf.MEMBUF_DEFER,
        "MEMBUF_MAX_NDIM": membuf.MEMBUF_MAX_NDIM,
    }


def buffer_type():
    return membuf.Buffer            # the Python module's attribute


def from_memory(size_t size, int flags=0):
    """A Buffer over `size` fresh bytes from blobsource."""
    cdef size_t n = 0
    cdef const void *p = blobsource_get(size, &n)
    return membuf.MemBuf_FromMemory(p, n, flags, give_back, NULL)


def from_null(size_t size):
    """MemBuf_FromMemory(NULL, size, ...): ValueError unless size is 0."""
    return membuf.MemBuf_FromMemory(NULL, size, 0, give_back, NULL)


def wrap_bytes(bytes data, int flags=0):
    """A Buffer over the bytes object's own storage, holding a reference to it
    through ctx until the memory is released."""
    Py_INCREF(data)
    return membuf.MemBuf_FromMemory(<const char *>data, len(data), flags, drop_ref,
                                    <void *>data)


def from_spec(format, shape, strides=None, int flags=0, owner=None, size=None, ndim=None):
    """A Buffer over fresh blobsource memory described by a MemBuf_Spec.
    format None: NULL ("B"); shape None: NULL; size None: the bytes a
    C-contiguous layout needs; ndim None: len(shape)."""
    cdef membuf.MemBuf_Spec spec
    cdef Py_ssize_t c_shape[membuf.MEMBUF_MAX_NDIM + 1]
    cdef Py_ssize_t c_strides[membuf.MEMBUF_MAX_NDIM + 1]
    cdef Py_ssize_t i
    cdef size_t n = 0
    cdef bytes fmt = format.encode() if format is not None else None
    if shape is not None and len(shape) > membuf.MEMBUF_MAX_NDIM + 1:
        raise ValueError("test helper: at most 65 dimensions")
    if size is None:
        size = calcsize(format or "B")
        for extent in shape or ():
            size *= extent
    memset(&spec, 0, sizeof(spec))
    spec.ptr = blobsource_get(size, &n)
    spec.len = n
    spec.flags = flags
    if ndim is not None:
        spec.ndim = ndim
    elif shape is not None:
        spec.ndim = len(shape)
    if fmt is not None:
        spec.format = fmt               # fmt outlives the call; the spec is copied
    if shape is not None:
        for i in range(len(shape)):
            c_shape[i] = shape[i]
        spec.shape = c_shape
    if strides is not None:
        for i in range(len(strides)):
            c_strides[i] = strides[i]
        spec.strides = c_strides
    spec.release = give_back
    if owner is not None:
        spec.owner = <PyObject *>owner  # borrowed; the Buffer takes its own reference
    return membuf.MemBuf_FromSpec(&spec)


def release(buf, int flags=0):
    return membuf.MemBuf_Release(buf, flags)


def release_defer(buf):
    return membuf.MemBuf_Release(buf, membuf.MEMBUF_DEFER)


def check(obj):
    return membuf.MemBuf_Check(obj)


def callback_count():
    return callbacks


def freed():
    return blobsource_freed()


def last_address():
    return <size_t>blobsource_last()
