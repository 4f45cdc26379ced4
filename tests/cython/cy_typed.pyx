# cython: language_level=3
# Typed memory both ways: a writable 2-D matrix of doubles made with
# MemBuf_FromSpec, and functions taking typed memoryviews of any Buffer.
# docs/recipes.md shows the recipe part verbatim (the test checks).

# --- recipe ---
from libc.stdlib cimport calloc, free
from libc.string cimport memset
from membuf cimport MemBuf_Spec, MemBuf_FromSpec, MEMBUF_WRITABLE, import_membuf
import_membuf()

cdef void free_matrix(void *ptr, size_t len, void *ctx) noexcept nogil:
    free(ptr)

def zeros(size_t rows, size_t cols):
    """A writable rows x cols C-contiguous matrix of doubles, zero-filled."""
    cdef Py_ssize_t shape[2]
    cdef MemBuf_Spec spec
    shape[0] = rows
    shape[1] = cols
    memset(&spec, 0, sizeof(spec))
    spec.ptr = calloc(rows * cols, sizeof(double))
    spec.len = rows * cols * sizeof(double)
    if spec.ptr == NULL and spec.len > 0:
        raise MemoryError()
    spec.flags = MEMBUF_WRITABLE
    spec.ndim = 2
    spec.format = "d"
    spec.shape = shape
    spec.release = free_matrix
    return MemBuf_FromSpec(&spec)   # strides NULL: C order

def checksum(const unsigned char[:] data):     # any bytes-like, read-only too
    cdef unsigned long total = 0
    cdef Py_ssize_t i
    for i in range(data.shape[0]):
        total += data[i]
    return total

def fill(double[:, :] m):                       # needs a writable export
    cdef Py_ssize_t i, j
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            m[i, j] = i * 1000.0 + j
# --- end recipe ---


def total(const double[:, :] m):
    cdef double s = 0.0
    cdef Py_ssize_t i, j
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            s += m[i, j]
    return s


def first_address(const unsigned char[:] data):
    """Where the typed memoryview points: proves it is the Buffer's memory."""
    return <size_t>&data[0]


def matrix_address(const double[:, :] m):
    return <size_t>&m[0, 0]


def zero_first(unsigned char[:] data):
    """A non-const typed view: asks for a writable export."""
    data[0] = 0
