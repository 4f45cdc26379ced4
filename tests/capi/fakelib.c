/* "A C library" for the tests: hands out malloc'ed memory and counts how
 * often each block is given back.  Written only against membuf.h, the way a
 * downstream extension would be; this file shares the API pointer imported
 * by fakelib_module.c (MEMBUF_UNIQUE_SYMBOL + MEMBUF_NO_IMPORT). */
#define MEMBUF_UNIQUE_SYMBOL fakelib_membuf_api
#define MEMBUF_NO_IMPORT
#include <membuf.h>

#include <assert.h>
#include <pthread.h>
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
/* Guards all of the above: free-threaded CPython calls in from many threads
 * at once (and a real C library would be thread-safe too). */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
#define LOCK() pthread_mutex_lock(&lock)
#define UNLOCK() pthread_mutex_unlock(&lock)

void
fakelib_fail_next(long n)
{
    LOCK();
    fail_allocations = n;
    UNLOCK();
}

Py_ssize_t
fakelib_alloc(size_t len, int null_memory)
{
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
    LOCK();
    if (fail_allocations > 0) {
        fail_allocations--;
        UNLOCK();
        free(memory);
        PyErr_SetString(PyExc_MemoryError, "fakelib: allocation failed (injected)");
        return -1;
    }
    if (nrecords == capacity) {
        Py_ssize_t newcap = capacity ? capacity * 2 : 64;
        block_record *grown = realloc(records, (size_t)newcap * sizeof(block_record));
        if (grown == NULL) {
            UNLOCK();
            free(memory);
            PyErr_NoMemory();
            return -1;
        }
        records = grown;
        capacity = newcap;
    }
    Py_ssize_t id = nrecords++;
    records[id].memory = memory;
    records[id].len = len;
    records[id].releases = 0;
    UNLOCK();
    return id;
}

void *
fakelib_memory(Py_ssize_t id)
{
    LOCK();
    assert(id >= 0 && id < nrecords);
    void *memory = records[id].memory;
    UNLOCK();
    return memory;
}

size_t
fakelib_len(Py_ssize_t id)
{
    LOCK();
    assert(id >= 0 && id < nrecords);
    size_t len = records[id].len;
    UNLOCK();
    return len;
}

/* The release callback: ctx is the block id.  The contract says ptr and len
 * are exactly those given at creation: checked with assert (tests build
 * with asserts on). */
void
fakelib_release(void *ptr, size_t len, void *ctx)
{
    Py_ssize_t id = (Py_ssize_t)(intptr_t)ctx;
    void *to_free = NULL;
    LOCK();
    assert(id >= 0 && id < nrecords);
    assert(ptr == records[id].memory);
    assert(len == records[id].len);
    (void)ptr;
    (void)len;
    if (++records[id].releases == 1) {
        to_free = records[id].memory;
    }
    /* A second call would be a double free in a real library: the count
     * records it for the tests, and the memory is not freed twice. */
    UNLOCK();
    free(to_free);
}

long
fakelib_releases(Py_ssize_t id)
{
    long releases = -1;
    LOCK();
    if (id >= 0 && id < nrecords) {
        releases = records[id].releases;
    }
    UNLOCK();
    return releases;
}

Py_ssize_t
fakelib_outstanding(void)
{
    Py_ssize_t n = 0;
    LOCK();
    for (Py_ssize_t i = 0; i < nrecords; i++) {
        n += records[i].releases == 0;
    }
    UNLOCK();
    return n;
}

PyObject *
fakelib_wrap(Py_ssize_t id, int flags)
{
    return MemBuf_FromMemory(fakelib_memory(id), fakelib_len(id), flags, fakelib_release,
                             (void *)(intptr_t)id);
}
