/* The fake C library's interface, shared by fakelib.c and fakelib_module.c. */
#ifndef FAKELIB_H
#define FAKELIB_H

#include <Python.h>

/* Allocate a block of len bytes filled with i % 251 (no memory at all if
 * null_memory): its id, or -1 with MemoryError (also when injected). */
Py_ssize_t fakelib_alloc(size_t len, int null_memory);
/* Make the next n fakelib_alloc() calls fail. */
void fakelib_fail_next(long n);
void *fakelib_memory(Py_ssize_t id);
size_t fakelib_len(Py_ssize_t id);
/* The membuf release callback; ctx is the block id. */
void fakelib_release(void *ptr, size_t len, void *ctx);
/* How often block id was given back (-1 for an unknown id). */
long fakelib_releases(Py_ssize_t id);
/* Blocks handed out and not given back yet. */
Py_ssize_t fakelib_outstanding(void);
/* MemBuf_FromMemory over block id (from this second C file, through the
 * shared API pointer). */
PyObject *fakelib_wrap(Py_ssize_t id, int flags);

#endif
