# cython: language_level=3
# The motivating question: a C function returns `const void *` + `size_t` from
# malloc; hand it to Python zero-copy, and free it exactly once.  The three
# membuf lines are the first import, import_membuf() and the return statement;
# docs/recipes.md shows this file's recipe verbatim (the test checks), and
# tests/test_recipes.py builds the recipe alone, as the page shows it.

cdef extern from "blobsource.h":     # what the tests count (not part of the recipe)
    long blobsource_handed_out()
    long blobsource_freed()
    const void *blobsource_last()

# --- recipe ---
cdef extern from "blobsource.h":     # the C library: tests/cython/blobsource.h
    const void *blobsource_get(size_t n, size_t *len)
    void blobsource_free(void *ptr) nogil

from membuf cimport MemBuf_FromMemory, import_membuf
import_membuf()

cdef void give_back(void *ptr, size_t len, void *ctx) noexcept nogil:
    blobsource_free(ptr)        # exactly once, when Python is done with it

def getbuf(size_t size):
    cdef size_t n = 0
    cdef const void *p = blobsource_get(size, &n)
    return MemBuf_FromMemory(p, n, 0, give_back, NULL)
# --- end recipe ---


def handed_out():
    return blobsource_handed_out()


def freed():
    return blobsource_freed()


def last_address():
    return <size_t>blobsource_last()
