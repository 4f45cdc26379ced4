# cython: language_level=3
# A module that forgets import_membuf() at first: the constructors must still
# honour "ownership passes on entry" (the callback runs) and raise RuntimeError;
# import_membuf() must turn a broken membuf into ImportError.

from membuf cimport MemBuf_FromMemory, import_membuf

cdef char block[16]
cdef long callbacks = 0


cdef void count(void *ptr, size_t len, void *ctx) noexcept nogil:
    global callbacks
    callbacks += 1


def wrap():
    return MemBuf_FromMemory(block, sizeof(block), 0, count, NULL)


def do_import():
    return import_membuf()


def callback_count():
    return callbacks
