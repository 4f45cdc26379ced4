/* blobsource -- a stand-in for "a C library that gave me a pointer".
 *
 * blobsource_get() returns malloc'ed memory the caller owns: give it back with
 * blobsource_free(), exactly once.  The library counts what it handed out and
 * what came back, so the tests can prove "exactly once" and "zero-copy". */
#ifndef BLOBSOURCE_H
#define BLOBSOURCE_H

#include <stddef.h>

/* n bytes 0, 1, 2, ... (mod 256), or NULL if malloc fails; *len = n. */
const void *blobsource_get(size_t n, size_t *len);

/* Frees memory from blobsource_get (NULL is ignored, as by free()). */
void blobsource_free(void *ptr);

long blobsource_handed_out(void);  /* successful blobsource_get() calls */
long blobsource_freed(void);       /* non-NULL blobsource_free() calls */
const void *blobsource_last(void); /* the pointer blobsource_get() returned last */

#endif
