# cython: language_level=3
"""Cython's built-in answer: cython.view.array over existing memory
(allocate_buffer=False) with callback_free_data as the release callback.

`wrap_loop(n)` creates and drops one such array n times in C; ns/op.
"""

from cython cimport view


cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    cdef struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk_id, timespec *tp)
    int CLOCK_MONOTONIC


cdef char block[4096]
cdef long releases = 0


cdef void free_data(void *data) noexcept:
    global releases
    releases += 1


cdef inline double now_ns() noexcept:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec * 1e9 + <double>ts.tv_nsec


cdef view.array make_array(char *ptr, Py_ssize_t size):
    cdef view.array a = view.array(shape=(size,), itemsize=1, format="B", mode="c",
                                   allocate_buffer=False)
    a.data = ptr
    a.callback_free_data = free_data
    return a


def wrap_loop(Py_ssize_t n):
    """Create + drop a view.array with callback_free_data n times; ns/op."""
    cdef Py_ssize_t i
    cdef object a
    if n <= 0:
        raise ValueError("n must be positive")
    cdef double start = now_ns()
    for i in range(n):
        a = make_array(block, sizeof(block))
        a = None
    return (now_ns() - start) / n


def make():
    """One live array over the static block (for the per-object memory row)."""
    return make_array(block, sizeof(block))


def release_count():
    return releases
