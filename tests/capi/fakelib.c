/* "A C library" for the tests: hands out malloc'ed memory and counts how
 * often each block is given back.  Written only against membuf.h, the way a
 * downstream extension would be; this file shares the API pointer imported
 * by fakelib_module.c (MEMBUF_UNIQUE_SYMBOL + MEMBUF_NO_IMPORT). */
#define MEMBUF_UNIQUE_SYMBOL fakelib_membuf_api
#define MEMBUF_NO_IMPORT
#include <membuf.h>

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "fakelib.h"

/* Block records: id -> (memory, release count).  Ids are indexes; records
 * are never reused, so a count can be read after the block is gone. */
typedef struct {
    void *memory;
    size_t len;
    long releases;
} block_record;

static block_record *records = NULL;
static Py_ssize_t nrecords = 0, capacity = 0;
static long fail_allocations = 0; /* fakelib_fail_next(): next N allocations fail */

void
fakelib_fail_next(long n)
{
    fail_allocations = n;
}

Py_ssize_t
fakelib_alloc(size_t len, int null_memory)
{
    if (fail_allocations > 0) {
        fail_allocations--;
        PyErr_SetString(PyExc_MemoryError, "fakelib: allocation failed (injected)");
        return -1;
    }
    if (nrecords == capacity) {
        Py_ssize_t newcap = capacity ? capacity * 2 : 64;
        block_record *grown = realloc(records, (size_t)newcap * sizeof(block_record));
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        records = grown;
        capacity = newcap;
    }
    void *memory = NULL;
    if (!null_memory) {
        memory = malloc(len ? len : 1);
        if (memory == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        for (size_t i = 0; i < len; i++) {
            ((unsigned char *)memory)[i] = (unsigned char)(i % 251);
        }
    }
    records[nrecords].memory = memory;
    records[nrecords].len = len;
    records[nrecords].releases = 0;
    return nrecords++;
}

void *
fakelib_memory(Py_ssize_t id)
{
    assert(id >= 0 && id < nrecords);
    return records[id].memory;
}

size_t
fakelib_len(Py_ssize_t id)
{
    assert(id >= 0 && id < nrecords);
    return records[id].len;
}

/* The release callback: ctx is the block id.  The contract says ptr and len
 * are exactly those given at creation: checked with assert (tests build
 * with asserts on). */
void
fakelib_release(void *ptr, size_t len, void *ctx)
{
    Py_ssize_t id = (Py_ssize_t)(intptr_t)ctx;
    assert(id >= 0 && id < nrecords);
    assert(ptr == records[id].memory);
    assert(len == records[id].len);
    (void)ptr;
    (void)len;
    records[id].releases++;
    if (records[id].releases == 1) {
        free(records[id].memory);
    }
    /* A second call would be a double free in a real library: the count
     * records it for the tests, and the memory is not freed twice. */
}

long
fakelib_releases(Py_ssize_t id)
{
    if (id < 0 || id >= nrecords) {
        return -1;
    }
    return records[id].releases;
}

Py_ssize_t
fakelib_outstanding(void)
{
    Py_ssize_t n = 0;
    for (Py_ssize_t i = 0; i < nrecords; i++) {
        n += records[i].releases == 0;
    }
    return n;
}

PyObject *
fakelib_wrap(Py_ssize_t id, int flags)
{
    return MemBuf_FromMemory(records[id].memory, records[id].len, flags, fakelib_release,
                             (void *)(intptr_t)id);
}
