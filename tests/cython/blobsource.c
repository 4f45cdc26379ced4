#include "blobsource.h"

#include <stdlib.h>

/* Only touched with the GIL held (every caller is a Cython module). */
static long handed_out;
static long freed;
static const void *last;

const void *
blobsource_get(size_t n, size_t *len)
{
    unsigned char *p = malloc(n > 0 ? n : 1);
    *len = n;
    if (p == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        p[i] = (unsigned char)i;
    }
    handed_out++;
    last = p;
    return p;
}

void
blobsource_free(void *ptr)
{
    if (ptr != NULL) {
        freed++;
        free(ptr);
    }
}

long blobsource_handed_out(void) { return handed_out; }
long blobsource_freed(void) { return freed; }
const void *blobsource_last(void) { return last; }
