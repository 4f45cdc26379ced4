# cython: language_level=3, boundscheck=False, wraparound=False
"""The classic answer to "wrap C memory for Python": a hand-written Cython
cdef class with __getbuffer__ and a release callback run in __dealloc__.

Written the way a careful user writes it (read-only, export counting, the
callback runs once at deallocation), so that membuf is compared with a fair
peer.  `wrap_loop(n)` creates and drops the object n times in C and returns
ns/op, like benchmarks/capi/bench_capi.c does for membuf.
"""

from cpython.buffer cimport PyBUF_FORMAT, PyBUF_ND, PyBUF_STRIDES, PyBUF_WRITABLE
cimport cython


cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    cdef struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk_id, timespec *tp)
    int CLOCK_MONOTONIC


ctypedef void (*release_fn)(void *ptr, size_t size, void *ctx) noexcept


cdef char block[4096]
cdef long releases = 0


cdef void count_release(void *ptr, size_t size, void *ctx) noexcept:
    global releases
    releases += 1


cdef inline double now_ns() noexcept:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec * 1e9 + <double>ts.tv_nsec


cdef class CBuffer:
    """Read-only bytes over foreign memory; release(ptr, size, ctx) at dealloc."""

    cdef char *ptr
    cdef Py_ssize_t size
    cdef Py_ssize_t itemsize
    cdef Py_ssize_t exports
    cdef release_fn release
    cdef void *ctx

    def __getbuffer__(self, Py_buffer *view, int flags):
        if flags & PyBUF_WRITABLE:
            raise BufferError("CBuffer is read-only")
        view.buf = self.ptr
        view.obj = self
        view.len = self.size
        view.readonly = 1
        view.itemsize = 1
        view.format = NULL
        if flags & PyBUF_FORMAT:
            view.format = b"B"
        view.ndim = 1
        view.shape = NULL
        if (flags & PyBUF_ND) == PyBUF_ND:
            view.shape = &self.size
        view.strides = NULL
        if (flags & PyBUF_STRIDES) == PyBUF_STRIDES:
            view.strides = &self.itemsize
        view.suboffsets = NULL
        view.internal = NULL
        self.exports += 1

    def __releasebuffer__(self, Py_buffer *view):
        self.exports -= 1

    def __len__(self):
        return self.size

    def __dealloc__(self):
        if self.release is not NULL:
            self.release(self.ptr, <size_t>self.size, self.ctx)
            self.release = NULL


@cython.freelist(32)
cdef class CBufferFreelist(CBuffer):
    """The same class with Cython's @freelist(32), as membuf keeps one."""
    pass


cdef CBuffer make_cbuffer(char *ptr, Py_ssize_t size, release_fn release, void *ctx):
    cdef CBuffer b = CBuffer.__new__(CBuffer)
    b.ptr = ptr
    b.size = size
    b.itemsize = 1
    b.release = release
    b.ctx = ctx
    return b


cdef CBuffer make_cbuffer_fl(char *ptr, Py_ssize_t size, release_fn release, void *ctx):
    cdef CBufferFreelist b = CBufferFreelist.__new__(CBufferFreelist)
    b.ptr = ptr
    b.size = size
    b.itemsize = 1
    b.release = release
    b.ctx = ctx
    return b


def wrap_loop(Py_ssize_t n):
    """Create + drop a CBuffer (with a release callback) n times; ns/op."""
    cdef Py_ssize_t i
    cdef object b
    if n <= 0:
        raise ValueError("n must be positive")
    cdef double start = now_ns()
    for i in range(n):
        b = make_cbuffer(block, sizeof(block), count_release, NULL)
        b = None
    return (now_ns() - start) / n


def wrap_loop_freelist(Py_ssize_t n):
    """The same with @cython.freelist(32); ns/op."""
    cdef Py_ssize_t i
    cdef object b
    if n <= 0:
        raise ValueError("n must be positive")
    cdef double start = now_ns()
    for i in range(n):
        b = make_cbuffer_fl(block, sizeof(block), count_release, NULL)
        b = None
    return (now_ns() - start) / n


def make(Py_ssize_t size=4096):
    """One CBuffer over the static block (for export-cycle and memory rows)."""
    if size < 0 or size > sizeof(block):
        raise ValueError("size out of range")
    return make_cbuffer(block, size, count_release, NULL)


def release_count():
    return releases
