/*
 * fuzz_membuf.c -- libFuzzer harness for the membuf C API.
 *
 * It embeds CPython (Debian's libpython3.11), with membuf's own C sources
 * compiled into the same binary (fuzz/build.sh) and registered as the
 * built-in module "membuf._membuf"; the package's __init__.py is imported
 * from the repository's src/ (MEMBUF_FUZZ_SRC, baked in at build time and
 * overridable by the environment variable of the same name), and the harness
 * then uses the C API exactly as a downstream extension does: import_membuf()
 * and the inline functions of membuf.h.
 *
 * Every input is a small program (fuzz/README.md documents the encoding):
 * creations through MemBuf_FromMemory / MemBuf_FromSpec / from_address with
 * fuzzed layouts, then exports, memoryviews, slicing, indexing, tobytes, ==,
 * MemBuf_Release, MemBuf_Check, drops, cycles and gc.  Memory handed to
 * membuf is a malloc'ed block filled with a per-block pattern; the release
 * callback frees it, so any access after release is an ASan use-after-free.
 *
 * Invariants, each an abort() with a message (libFuzzer reports a crash):
 *   I1  every callback runs at most once per block (never twice) ...
 *   I2  ... and exactly once by the end of the input (everything dropped, gc);
 *   I3  the callback gets the ptr / len that were given;
 *   I4  a failed creation has already called the callback, and left the
 *       borrowed owner's reference count as it was; a successful one has not;
 *   I5  the owner is still alive when the callback runs and is dropped by the
 *       end; after a completed release membuf holds no reference to it;
 *   I6  every successful export points inside [ptr, ptr+len) of a block whose
 *       memory has not been given back, its layout (shape x strides) stays in
 *       there, len == product(shape) * itemsize, and it honours the PyBUF_*
 *       request (format / shape / strides / contiguity / writable);
 *   I7  bytes read through exports are the block's bytes (pattern), and
 *       tobytes() and == agree with them;
 *   I8  the callback never runs while the harness holds an export of (or a
 *       memoryview over) the block;
 *   I9  a NULL / -1 return has an exception set, a non-NULL / 0 return has
 *       none, and no operation raises SystemError;
 *   I10 MemBuf_Release follows the contract: strict release fails with
 *       BufferError iff exports are alive, succeeds (callback done) otherwise;
 *       deferred release succeeds and runs the callback at once without
 *       exports; unknown flags and non-Buffers fail; MemBuf_Check is exact.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "membuf.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

PyMODINIT_FUNC PyInit__membuf(void); /* src/membuf/_core/module.c */

#ifndef MEMBUF_FUZZ_SRC
#define MEMBUF_FUZZ_SRC "src"
#endif

/* ------------------------------------------------------------------------ */
/* Failure reporting                                                        */
/* ------------------------------------------------------------------------ */

static const char *current_op = "init";
static int trace; /* MEMBUF_FUZZ_TRACE=1: print each operation (for reproducers) */
/* MEMBUF_FUZZ_SKIP_EMPTY_BUF_CHECK=1: do not check where empty exports point
 * (to fuzz past a known bug, see fuzz/README.md). */
static int skip_empty_check;

/* Prints "what: repr(obj)" to stderr when tracing. */
static void
trace_obj(const char *what, PyObject *obj)
{
    if (!trace) {
        return;
    }
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyObject *repr = obj != NULL ? PyObject_Repr(obj) : NULL;
    const char *text = repr != NULL ? PyUnicode_AsUTF8(repr) : NULL;
    fprintf(stderr, "  %s: %s\n", what, text != NULL ? text : "NULL");
    Py_XDECREF(repr);
    PyErr_Clear();
    PyErr_Restore(type, value, tb);
}

static void
fail(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "\n==membuf-fuzz== INVARIANT VIOLATED during op '%s': ", current_op);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    if (PyErr_Occurred()) {
        fprintf(stderr, "==membuf-fuzz== pending Python exception:\n");
        PyErr_Print();
    }
    fflush(stderr);
    abort();
}

#define CHECK(cond, ...)                                                                          \
    do {                                                                                          \
        if (!(cond)) {                                                                            \
            fail(__VA_ARGS__);                                                                    \
        }                                                                                         \
    } while (0)

/* I9 for object results: NULL <=> exception; never SystemError.  Clears. */
static void
check_result(PyObject *res, const char *what)
{
    if (res == NULL) {
        CHECK(PyErr_Occurred() != NULL, "%s returned NULL without an exception", what);
        CHECK(!PyErr_ExceptionMatches(PyExc_SystemError), "%s raised SystemError", what);
        PyErr_Clear();
    }
    else {
        CHECK(PyErr_Occurred() == NULL, "%s returned a value with an exception set", what);
    }
}

/* I9 for int results: -1 <=> exception. */
static void
check_rc(int rc, const char *what)
{
    if (rc < 0) {
        CHECK(rc == -1, "%s returned %d", what, rc);
        CHECK(PyErr_Occurred() != NULL, "%s returned -1 without an exception", what);
        CHECK(!PyErr_ExceptionMatches(PyExc_SystemError), "%s raised SystemError", what);
    }
    else {
        CHECK(PyErr_Occurred() == NULL, "%s returned %d with an exception set", what, rc);
    }
}

/* ------------------------------------------------------------------------ */
/* Input reader                                                             */
/* ------------------------------------------------------------------------ */

typedef struct {
    const uint8_t *p;
    size_t n;
} Reader;

static uint8_t
u8(Reader *r)
{
    if (r->n == 0) {
        return 0;
    }
    r->n--;
    return *r->p++;
}

static uint16_t
u16(Reader *r)
{
    uint16_t lo = u8(r);
    return (uint16_t)(lo | (uint16_t)u8(r) << 8);
}

/* ------------------------------------------------------------------------ */
/* State of one input                                                       */
/* ------------------------------------------------------------------------ */

#define NBLOCKS 8
#define NSLOTS 16
#define NVIEWS 8
#define MAX_ELEMS_READ 4096        /* elements read per export check */
#define MAX_COPY_BYTES (64 * 1024) /* tobytes / == / hex only below this */

typedef struct {
    unsigned char *base; /* malloc'ed, NULL once freed */
    size_t size;
    unsigned char seed;
    int handed;         /* given to a constructor */
    int with_release;   /* a release callback (C or Python) was passed */
    int pycallback;     /* the callback is a Python callable (from_address) */
    int calls;          /* callback runs */
    const void *given_ptr;
    size_t given_len;
    PyObject *owner;    /* the harness's own reference, or NULL */
    int has_owner;
    int owner_alive;
    int owner_deaths;
} Block;

typedef enum { K_NONE, K_BUFFER, K_MEMORYVIEW, K_OTHER } Kind;

typedef struct {
    PyObject *obj;
    int block; /* -1: not over a block's memory */
    int root;  /* the Buffer a constructor returned for `block` */
    Kind kind;
} Slot;

typedef struct {
    Py_buffer view; /* view.obj != NULL while held */
    int block;
} View;

static Block blocks[NBLOCKS];
static int nblocks;
static Slot slots[NSLOTS];
static View views[NVIEWS];
static int made_cycle;

static PyObject *from_address_fn;  /* membuf.from_address */
static PyTypeObject *buffer_type;  /* membuf.Buffer */

static unsigned char
pattern(const Block *b, size_t offset)
{
    return (unsigned char)(offset * 167u + b->seed);
}

/* ------------------------------------------------------------------------ */
/* The release callbacks                                                    */
/* ------------------------------------------------------------------------ */

static int
block_index(const Block *b)
{
    long i = (long)(b - blocks);
    CHECK(i >= 0 && i < NBLOCKS, "release callback with a foreign ctx %p", (const void *)b);
    return (int)i;
}

/* I8: the harness holds no export of / memoryview over the block. */
static void
check_no_live_export(int bi)
{
    for (int v = 0; v < NVIEWS; v++) {
        CHECK(!(views[v].view.obj != NULL && views[v].block == bi),
              "block %d given back while the harness holds export #%d of it", bi, v);
    }
    for (int s = 0; s < NSLOTS; s++) {
        CHECK(!(slots[s].obj != NULL && slots[s].block == bi && slots[s].kind == K_MEMORYVIEW),
              "block %d given back while memoryview slot %d over it is alive", bi, s);
    }
}

static void
block_released(Block *b)
{
    int bi = block_index(b);
    CHECK(b->handed && b->with_release, "callback for block %d, which has none", bi);
    CHECK(b->calls == 0, "I1: release callback of block %d runs a second time", bi);
    b->calls++;
    CHECK(!b->has_owner || b->owner_alive,
          "I5: owner of block %d was dropped before the release callback", bi);
    check_no_live_export(bi);
    free(b->base); /* later accesses are heap-use-after-free */
    b->base = NULL;
}

static void
release_cb(void *ptr, size_t len, void *ctx)
{
    Block *b = (Block *)ctx;
    int bi = block_index(b);
    CHECK(!b->pycallback, "C callback for block %d, which has a Python one", bi);
    CHECK(ptr == b->given_ptr && len == b->given_len,
          "I3: block %d released with ptr=%p len=%zu, given ptr=%p len=%zu", bi, ptr, len,
          b->given_ptr, b->given_len);
    block_released(b);
}

/* Python on_release for from_address(): self is the block index (an int). */
static PyObject *
py_release_cb(PyObject *self, PyObject *unused)
{
    (void)unused;
    long bi = PyLong_AsLong(self);
    CHECK(bi >= 0 && bi < NBLOCKS, "python callback with bad block %ld", bi);
    CHECK(blocks[bi].pycallback, "Python callback for block %ld, which has a C one", bi);
    block_released(&blocks[bi]);
    Py_RETURN_NONE;
}

static PyMethodDef py_release_def = {"on_release", py_release_cb, METH_NOARGS, NULL};

/* ------------------------------------------------------------------------ */
/* The owner type: tells the harness when it dies; may point at a Buffer    */
/* (cycles through the owner).                                              */
/* ------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    int block;
    PyObject *ref;
} OwnerObject;

static int
owner_traverse(OwnerObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->ref);
    return 0;
}

static int
owner_clear(OwnerObject *self)
{
    Py_CLEAR(self->ref);
    return 0;
}

static void
owner_dealloc(OwnerObject *self)
{
    PyObject_GC_UnTrack(self);
    Block *b = &blocks[self->block];
    b->owner_alive = 0;
    b->owner_deaths++;
    CHECK(b->owner_deaths == 1, "owner of block %d deallocated twice", self->block);
    Py_CLEAR(self->ref);
    PyObject_GC_Del(self);
}

static PyTypeObject Owner_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "fuzz.Owner",
    .tp_basicsize = sizeof(OwnerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = (traverseproc)owner_traverse,
    .tp_clear = (inquiry)owner_clear,
    .tp_dealloc = (destructor)owner_dealloc,
};

static PyObject *
new_owner(int bi)
{
    OwnerObject *o = PyObject_GC_New(OwnerObject, &Owner_Type);
    CHECK(o != NULL, "cannot allocate an owner");
    o->block = bi;
    o->ref = NULL;
    PyObject_GC_Track(o);
    blocks[bi].owner = (PyObject *)o;
    blocks[bi].has_owner = 1;
    blocks[bi].owner_alive = 1;
    return (PyObject *)o;
}

/* ------------------------------------------------------------------------ */
/* Slots                                                                    */
/* ------------------------------------------------------------------------ */

static void
slot_drop(int s)
{
    PyObject *obj = slots[s].obj;
    slots[s].obj = NULL;
    slots[s].kind = K_NONE;
    Py_XDECREF(obj); /* may run callbacks, which look at the slots */
    CHECK(!PyErr_Occurred(), "dropping slot %d left an exception set", s);
}

/* Store a new reference; the slot's previous object is dropped. */
static void
slot_store(int s, PyObject *obj, int block, int root)
{
    slot_drop(s);
    slots[s].block = block;
    slots[s].root = root;
    if (Py_IS_TYPE(obj, buffer_type)) {
        slots[s].kind = K_BUFFER;
    }
    else if (PyMemoryView_Check(obj)) {
        slots[s].kind = K_MEMORYVIEW;
    }
    else {
        slots[s].kind = K_OTHER;
        slots[s].block = -1;
        slots[s].root = 0;
    }
    slots[s].obj = obj;
}

/* ------------------------------------------------------------------------ */
/* Export checks (I6, I7)                                                   */
/* ------------------------------------------------------------------------ */

typedef __int128 i128;

/* Checks a successful export of an object over block bi (or -1); appends up
 * to `cap` bytes of its contents in C order to out (if not NULL). Returns the
 * number of bytes gathered, or -1 if the export is larger than cap. */
static Py_ssize_t
check_export(const Py_buffer *v, int flags, int bi, int root, unsigned char *out, Py_ssize_t cap)
{
    /* The PyBUF_* request (contract 8). */
    CHECK(v->buf != NULL, "I6: export with buf NULL");
    CHECK(v->len >= 0, "I6: export with len %zd", v->len);
    CHECK(v->itemsize > 0, "I6: export with itemsize %zd", v->itemsize);
    CHECK(v->suboffsets == NULL, "I6: export with suboffsets");
    if ((flags & PyBUF_WRITABLE) != 0) {
        CHECK(!v->readonly, "I6: PyBUF_WRITABLE answered with a read-only export");
    }
    if ((flags & PyBUF_FORMAT) != 0) {
        CHECK(v->format != NULL, "I6: PyBUF_FORMAT answered without a format");
    }
    else {
        CHECK(v->format == NULL, "I6: format '%s' without PyBUF_FORMAT", v->format);
    }
    if ((flags & PyBUF_ND) != PyBUF_ND) {
        CHECK(v->shape == NULL, "I6: shape without PyBUF_ND");
    }
    if ((flags & PyBUF_STRIDES) != PyBUF_STRIDES) {
        CHECK(v->strides == NULL, "I6: strides without PyBUF_STRIDES");
    }
    CHECK(v->ndim >= 0 && v->ndim <= MEMBUF_MAX_NDIM, "I6: export with ndim %d", v->ndim);
    if (v->ndim == 0) {
        CHECK(v->shape == NULL && v->strides == NULL, "I6: 0-dim export with shape/strides");
    }
    if (v->strides != NULL) {
        CHECK(v->shape != NULL, "I6: strides without shape");
    }
    if ((flags & PyBUF_C_CONTIGUOUS) == PyBUF_C_CONTIGUOUS) {
        CHECK(PyBuffer_IsContiguous(v, 'C'), "I6: PyBUF_C_CONTIGUOUS not honoured");
    }
    if ((flags & PyBUF_F_CONTIGUOUS) == PyBUF_F_CONTIGUOUS) {
        CHECK(PyBuffer_IsContiguous(v, 'F'), "I6: PyBUF_F_CONTIGUOUS not honoured");
    }
    if ((flags & PyBUF_ANY_CONTIGUOUS) == PyBUF_ANY_CONTIGUOUS) {
        CHECK(PyBuffer_IsContiguous(v, 'A'), "I6: PyBUF_ANY_CONTIGUOUS not honoured");
    }
    if (v->format != NULL) {
        Py_ssize_t size = PyBuffer_SizeFromFormat(v->format);
        if (size < 0) {
            fail("I6: export format '%s' is not valid", v->format);
        }
        CHECK(size == v->itemsize, "I6: format '%s' has size %zd, itemsize %zd", v->format, size,
              v->itemsize);
    }

    /* The layout: elements, extent, len. */
    int ndim;
    Py_ssize_t one_shape, one_stride;
    const Py_ssize_t *shape, *strides;
    Py_ssize_t itemsize = v->itemsize;
    Py_ssize_t cstrides[MEMBUF_MAX_NDIM];
    if (v->shape == NULL) {
        /* PyBUF_SIMPLE and friends: len contiguous bytes. */
        ndim = 1;
        one_shape = v->len;
        one_stride = 1;
        shape = &one_shape;
        strides = &one_stride;
        itemsize = 1;
    }
    else {
        ndim = v->ndim;
        shape = v->shape;
        if (v->strides != NULL) {
            strides = v->strides;
        }
        else {
            i128 s = itemsize;
            for (int i = ndim - 1; i >= 0; i--) {
                cstrides[i] = (Py_ssize_t)s;
                s *= shape[i] > 0 ? shape[i] : 1;
                if (s > PY_SSIZE_T_MAX) {
                    s = PY_SSIZE_T_MAX; /* only if a later dim is 0 */
                }
            }
            strides = cstrides;
        }
    }
    i128 nitems = 1, lo = 0, hi = 0;
    for (int i = 0; i < ndim; i++) {
        CHECK(shape[i] >= 0, "I6: shape[%d] = %zd", i, shape[i]);
        nitems *= shape[i];
        if (nitems > ((i128)1 << 64)) {
            nitems = ((i128)1 << 64); /* saturate: only compared below */
        }
    }
    if (nitems != 0) {
        for (int i = 0; i < ndim; i++) {
            i128 span = (i128)(shape[i] - 1) * strides[i];
            if (span < 0) {
                lo += span;
            }
            else {
                hi += span;
            }
        }
        hi += itemsize;
    }
    CHECK(nitems * itemsize == v->len, "I6: len %zd != product(shape) * itemsize (%lld * %zd)",
          v->len, (long long)nitems, itemsize);
    if (nitems == 0) {
        /* No element is addressed, but a Buffer's address still lies in
         * [ptr, ptr+len]: computing one outside is undefined behaviour. */
        if (bi >= 0 && v->obj != NULL && Py_IS_TYPE(v->obj, buffer_type) && !skip_empty_check) {
            uintptr_t at = (uintptr_t)v->buf, start = (uintptr_t)blocks[bi].given_ptr;
            CHECK(at >= start && at - start <= blocks[bi].given_len,
                  "I6: empty export of a Buffer over block %d points at %p, outside [%p, +%zu]",
                  bi, v->buf, blocks[bi].given_ptr, blocks[bi].given_len);
        }
        return 0;
    }
    if (bi >= 0) {
        Block *b = &blocks[bi];
        CHECK(b->base != NULL && b->calls == 0,
              "I6: export of block %d whose memory was given back", bi);
        const char *start = (const char *)b->given_ptr;
        i128 first = (i128)((const char *)v->buf - start) + lo;
        i128 end = (i128)((const char *)v->buf - start) + hi;
        CHECK(start != NULL && first >= 0 && end <= (i128)b->given_len,
              "I6: export of block %d reaches [%lld, %lld) outside its %zu bytes (buf at +%lld)",
              bi, (long long)first, (long long)end, b->given_len,
              (long long)((const char *)v->buf - start));
        if (root) {
            CHECK(v->buf == b->given_ptr, "I6: export of a root Buffer does not start at ptr");
        }
    }

    /* The contents, in C order. */
    Py_ssize_t gathered = 0;
    int too_big = nitems * itemsize > cap;
    Py_ssize_t idx[MEMBUF_MAX_NDIM] = {0};
    long long reads = 0;
    for (;;) {
        i128 off = 0;
        for (int i = 0; i < ndim; i++) {
            off += (i128)idx[i] * strides[i];
        }
        const unsigned char *item = (const unsigned char *)v->buf + (Py_ssize_t)off;
        if (bi >= 0) {
            const Block *b = &blocks[bi];
            for (Py_ssize_t k = 0; k < itemsize; k++) {
                size_t at = (size_t)(item + k - b->base);
                CHECK(item[k] == pattern(b, at), "I7: byte at block %d offset %zu is %u, not %u",
                      bi, at, item[k], pattern(b, at));
            }
        }
        else {
            volatile unsigned char sink = 0;
            for (Py_ssize_t k = 0; k < itemsize; k++) {
                sink ^= item[k]; /* ASan checks the read */
            }
            (void)sink;
        }
        if (out != NULL && !too_big) {
            memcpy(out + gathered, item, (size_t)itemsize);
            gathered += itemsize;
        }
        if (++reads >= MAX_ELEMS_READ && (out == NULL || too_big)) {
            break;
        }
        int i = ndim - 1;
        while (i >= 0 && ++idx[i] == shape[i]) {
            idx[i] = 0;
            i--;
        }
        if (i < 0) {
            break;
        }
    }
    return too_big ? -1 : gathered;
}

/* ------------------------------------------------------------------------ */
/* Fuzzed values                                                            */
/* ------------------------------------------------------------------------ */

static const char *const formats[] = {
    NULL, "B", "b", "c", "?", "h", "H", "i", "I", "l", "L", "q", "Q", "n", "N", "e", "f", "d",
    "P", "@B", "@i", "<i", ">d", "=h", "!q", "2i", "3s", "0s", "4x", "xi", "", "zz", "O", "T{i:x:}",
    "(2,3)i", "i i", " B", "@", "<", "Z", "99999999999999999999s", "1000000000000000000d",
    "2147483647s", "B\xff",
};
#define NFORMATS ((int)(sizeof(formats) / sizeof(formats[0])))

static const Py_ssize_t special_values[16] = {
    -1, -2, PY_SSIZE_T_MAX, PY_SSIZE_T_MIN, (Py_ssize_t)1 << 32, (Py_ssize_t)1 << 62,
    ((Py_ssize_t)1 << 62) + 1, (Py_ssize_t)1 << 31, PY_SSIZE_T_MAX / 2, PY_SSIZE_T_MAX / 3,
    65536, 255, PY_SSIZE_T_MIN + 1, -((Py_ssize_t)1 << 32), ((Py_ssize_t)1 << 61) - 1, 1000003,
};

static Py_ssize_t
shape_value(uint8_t v)
{
    if (v < 0xC0) {
        return v & 7;
    }
    if (v < 0xF0) {
        return v - 0xC0;
    }
    return special_values[v - 0xF0];
}

/* Multiples of the item size wrap around (huge item sizes make huge strides). */
static Py_ssize_t
stride_value(uint8_t v, Py_ssize_t itemsize)
{
    if (v < 0x80) {
        return (Py_ssize_t)((uint64_t)((int64_t)(v & 15) - 8) * (uint64_t)itemsize);
    }
    if (v < 0xC0) {
        return (Py_ssize_t)(v & 63) - 32;
    }
    if (v < 0xF0) {
        return (Py_ssize_t)((uint64_t)(v - 0xC0) * (uint64_t)itemsize);
    }
    return special_values[v - 0xF0];
}

static const int buffer_flags[] = {
    PyBUF_SIMPLE,       PyBUF_WRITABLE,     PyBUF_FORMAT,        PyBUF_ND,
    PyBUF_STRIDES,      PyBUF_C_CONTIGUOUS, PyBUF_F_CONTIGUOUS,  PyBUF_ANY_CONTIGUOUS,
    PyBUF_INDIRECT,     PyBUF_CONTIG,       PyBUF_CONTIG_RO,     PyBUF_STRIDED,
    PyBUF_STRIDED_RO,   PyBUF_RECORDS,      PyBUF_RECORDS_RO,    PyBUF_FULL,
    PyBUF_FULL_RO,      PyBUF_ND | PyBUF_FORMAT, PyBUF_SIMPLE | PyBUF_FORMAT,
    PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE,
};
#define NBUFFER_FLAGS ((int)(sizeof(buffer_flags) / sizeof(buffer_flags[0])))

static int
fuzz_buffer_flags(Reader *r)
{
    uint8_t v = u8(r);
    if (v < 0xF0) {
        return buffer_flags[v % NBUFFER_FLAGS];
    }
    return (int)u16(r) & 0x3FF; /* any combination of the defined bits */
}

/* A fresh block of memory, filled with its pattern.  -1 if none is left. */
static int
new_block(Reader *r)
{
    if (nblocks >= NBLOCKS) {
        return -1;
    }
    int bi = nblocks++;
    Block *b = &blocks[bi];
    uint8_t s = u8(r);
    b->size = s < 200 ? s : (size_t)256 << (s % 5);
    b->seed = u8(r);
    b->base = malloc(b->size > 0 ? b->size : 1);
    CHECK(b->base != NULL, "out of memory");
    for (size_t i = 0; i < b->size; i++) {
        b->base[i] = pattern(b, i);
    }
    return bi;
}

/* ptr and len for block bi from the input: the block, a part of it, NULL,
 * or a length no valid spec may have.  Sets given_ptr / given_len. */
static void
fuzz_region(Reader *r, int bi)
{
    Block *b = &blocks[bi];
    uint8_t mode = u8(r);
    size_t off = 0;
    const void *ptr = b->base;
    if ((mode & 3) == 1) {
        off = u8(r) % (b->size + 1);
        ptr = b->base + off;
    }
    else if ((mode & 3) == 2) {
        ptr = NULL;
    }
    size_t avail = b->size - off;
    size_t len;
    switch ((mode >> 2) & 3) {
    case 0: len = avail; break;
    case 1: len = u8(r) % (avail + 1); break;
    case 2: len = 0; break;
    default: len = (mode & 0x10) ? SIZE_MAX : (size_t)PY_SSIZE_T_MAX + 1 + u8(r); break;
    }
    b->given_ptr = ptr;
    b->given_len = len;
}

static int
fuzz_creation_flags(Reader *r)
{
    uint8_t v = u8(r);
    if (v < 0xE0) {
        return v & MEMBUF_WRITABLE;
    }
    return (int)(v << 1) | (v & 1); /* unknown bits */
}

/* ------------------------------------------------------------------------ */
/* Creation checks (I4)                                                     */
/* ------------------------------------------------------------------------ */

static void
after_creation(PyObject *res, int bi, Py_ssize_t owner_refs_before, int slot, const char *what)
{
    Block *b = &blocks[bi];
    if (trace) {
        fprintf(stderr, "  block %d: %zu bytes at %p; given ptr=%p len=%zu -> slot %d\n", bi,
                b->size, (void *)b->base, b->given_ptr, b->given_len, slot);
        if (res == NULL) {
            PyObject *type, *value, *tb;
            PyErr_Fetch(&type, &value, &tb);
            trace_obj("failed", value);
            PyErr_Restore(type, value, tb);
        }
        else {
            PyObject *st = PyObject_GetAttrString(res, "strides");
            trace_obj("created", res);
            trace_obj("strides", st);
            Py_XDECREF(st);
        }
    }
    if (res == NULL) {
        CHECK(PyErr_Occurred() != NULL, "%s returned NULL without an exception", what);
        CHECK(PyErr_ExceptionMatches(PyExc_ValueError) ||
                  PyErr_ExceptionMatches(PyExc_OverflowError) ||
                  PyErr_ExceptionMatches(PyExc_MemoryError) ||
                  (b->pycallback && PyErr_ExceptionMatches(PyExc_TypeError)),
              "%s failed with an unexpected exception type", what);
        PyErr_Clear();
        CHECK(!b->with_release || b->calls == 1,
              "I4: %s failed without calling the release callback", what);
        if (b->owner != NULL) {
            CHECK(Py_REFCNT(b->owner) == owner_refs_before,
                  "I4: failed %s changed the owner's refcount (%zd -> %zd)", what,
                  owner_refs_before, Py_REFCNT(b->owner));
        }
        return;
    }
    CHECK(!PyErr_Occurred(), "%s succeeded with an exception set", what);
    CHECK(MemBuf_Check(res), "%s returned something that is not a Buffer", what);
    CHECK(b->calls == 0, "I4: %s succeeded but called the release callback", what);
    CHECK(b->given_len <= (size_t)PY_SSIZE_T_MAX, "%s accepted len %zu", what, b->given_len);
    CHECK(b->given_ptr != NULL || b->given_len == 0, "%s accepted NULL with len %zu", what,
          b->given_len);
    if (b->owner != NULL) {
        CHECK(Py_REFCNT(b->owner) == owner_refs_before + 1,
              "%s did not take one reference to the owner", what);
    }
    /* A fresh Buffer answers PyBUF_FULL_RO with a layout inside the block. */
    Py_buffer v;
    int rc = PyObject_GetBuffer(res, &v, PyBUF_FULL_RO);
    check_rc(rc, "PyObject_GetBuffer(fresh Buffer, FULL_RO)");
    CHECK(rc == 0, "a fresh Buffer refuses PyBUF_FULL_RO");
    check_export(&v, PyBUF_FULL_RO, b->given_ptr != NULL ? bi : -1, 1, NULL, 0);
    PyBuffer_Release(&v);
    slot_store(slot, res, b->given_ptr != NULL ? bi : -1, 1);
    if (b->given_ptr == NULL && b->with_release) {
        /* A NULL, empty Buffer: remember the block for the exactly-once check
         * but it has no memory to verify. */
        slots[slot].block = -1;
    }
}

/* ------------------------------------------------------------------------ */
/* Operations                                                               */
/* ------------------------------------------------------------------------ */

enum {
    OP_FROM_MEMORY,
    OP_FROM_SPEC,
    OP_FROM_ADDRESS,
    OP_GETBUFFER,
    OP_RELEASE_VIEW,
    OP_MEMORYVIEW,
    OP_SLICE,
    OP_INDEX,
    OP_TOBYTES,
    OP_COMPARE,
    OP_MEMBUF_RELEASE,
    OP_CHECK,
    OP_DROP,
    OP_GC,
    OP_METADATA,
    OP_CYCLE,
    OP_DROP_OWNER,
    OP_PY_RELEASE,
    NOPS
};

static const char *const op_names[NOPS] = {
    "from_memory", "from_spec", "from_address", "getbuffer", "release_view", "memoryview",
    "slice", "index", "tobytes", "compare", "membuf_release", "check", "drop", "gc",
    "metadata", "cycle", "drop_owner", "py_release",
};

static void
op_from_memory(Reader *r)
{
    int slot = u8(r) % NSLOTS;
    int bi = new_block(r);
    if (bi < 0) {
        return;
    }
    Block *b = &blocks[bi];
    fuzz_region(r, bi);
    int flags = fuzz_creation_flags(r);
    b->handed = 1;
    b->with_release = (u8(r) & 7) != 7;
    PyObject *res = MemBuf_FromMemory(b->given_ptr, b->given_len, flags,
                                      b->with_release ? release_cb : NULL, b);
    if (res != NULL) {
        CHECK((flags & ~MEMBUF_WRITABLE) == 0, "FromMemory accepted flags 0x%x", flags);
    }
    after_creation(res, bi, 0, slot, "MemBuf_FromMemory");
}

static void
op_from_spec(Reader *r)
{
    int slot = u8(r) % NSLOTS;
    int bi = new_block(r);
    if (bi < 0) {
        return;
    }
    Block *b = &blocks[bi];
    MemBuf_Spec spec;
    memset(&spec, 0, sizeof spec);
    fuzz_region(r, bi);
    spec.ptr = b->given_ptr;
    spec.len = b->given_len;
    spec.flags = fuzz_creation_flags(r);

    char rawfmt[9];
    uint8_t f = u8(r);
    if (f % (NFORMATS + 1) == NFORMATS) {
        int n = u8(r) % 8;
        for (int i = 0; i < n; i++) {
            rawfmt[i] = (char)u8(r);
        }
        rawfmt[n] = '\0';
        spec.format = rawfmt;
    }
    else {
        spec.format = formats[f % (NFORMATS + 1)];
    }
    Py_ssize_t itemsize = 1;
    if (spec.format != NULL) {
        itemsize = PyBuffer_SizeFromFormat(spec.format);
        if (itemsize <= 0) {
            PyErr_Clear();
            itemsize = 1;
        }
    }
    spec.ndim = (int)(u8(r) % 73) - 2; /* -2 .. 70 */
    uint8_t arrays = u8(r);
    /* Exactly ndim entries, so that ASan sees any read past them. */
    size_t n = spec.ndim > 0 ? (size_t)spec.ndim : 0;
    Py_ssize_t *shape = NULL, *strides = NULL;
    if (arrays & 1) {
        shape = malloc(n * sizeof(Py_ssize_t) + 1);
        for (size_t i = 0; i < n; i++) {
            shape[i] = shape_value(u8(r));
        }
        spec.shape = shape;
    }
    if (arrays & 2) {
        strides = malloc(n * sizeof(Py_ssize_t) + 1);
        for (size_t i = 0; i < n; i++) {
            strides[i] = stride_value(u8(r), itemsize);
        }
        spec.strides = strides;
    }
    b->handed = 1;
    b->with_release = (arrays & 0x70) != 0x70;
    spec.release = b->with_release ? release_cb : NULL;
    spec.ctx = b;
    Py_ssize_t owner_refs = 0;
    if (arrays & 0x80) {
        spec.owner = new_owner(bi);
        owner_refs = Py_REFCNT(spec.owner);
    }
    PyObject *res = MemBuf_FromSpec(&spec);
    free(shape);
    free(strides);
    after_creation(res, bi, owner_refs, slot, "MemBuf_FromSpec");
}

static void
op_from_address(Reader *r)
{
    int slot = u8(r) % NSLOTS;
    int bi = new_block(r);
    if (bi < 0) {
        return;
    }
    Block *b = &blocks[bi];
    fuzz_region(r, bi);
    uint8_t opts = u8(r);
    b->handed = 1;
    b->with_release = 1;
    b->pycallback = 1;
    PyObject *address = PyLong_FromVoidPtr((void *)b->given_ptr);
    PyObject *size = (opts & 3) == 3 ? PyLong_FromLong(-1 - (long)u8(r))
                                      : PyLong_FromSize_t(b->given_len);
    PyObject *readonly = (opts & 0xC) == 0   ? Py_True
                         : (opts & 0xC) == 4 ? Py_False
                         : (opts & 0xC) == 8 ? Py_True
                                             : PyLong_FromLong(1); /* TypeError */
    if (readonly == Py_True || readonly == Py_False) {
        Py_INCREF(readonly);
    }
    PyObject *index = PyLong_FromLong(bi);
    PyObject *callback = PyCFunction_New(&py_release_def, index);
    Py_ssize_t owner_refs = 0;
    PyObject *owner = Py_None;
    if (opts & 0x10) {
        owner = new_owner(bi);
        owner_refs = Py_REFCNT(owner);
    }
    CHECK(address && size && readonly && index && callback, "out of memory");
    PyObject *args = PyTuple_Pack(2, address, size);
    PyObject *kwargs = Py_BuildValue("{sOsOsO}", "readonly", readonly, "owner", owner,
                                     "on_release", callback);
    CHECK(args && kwargs, "out of memory");
    Py_DECREF(address);
    Py_DECREF(size);
    Py_DECREF(readonly);
    Py_DECREF(index);
    Py_DECREF(callback); /* now only kwargs (and membuf, if it keeps it) hold it */
    PyObject *res = PyObject_Call(from_address_fn, args, kwargs);
    Py_DECREF(args);
    Py_DECREF(kwargs);
    after_creation(res, bi, owner_refs, slot, "from_address");
}

static int
pick_slot(Reader *r)
{
    return u8(r) % NSLOTS;
}

static void
op_getbuffer(Reader *r)
{
    int s = pick_slot(r);
    int vi = u8(r) % NVIEWS;
    int flags = fuzz_buffer_flags(r);
    if (slots[s].obj == NULL || views[vi].view.obj != NULL) {
        return;
    }
    int rc = PyObject_GetBuffer(slots[s].obj, &views[vi].view, flags);
    check_rc(rc, "PyObject_GetBuffer");
    if (rc < 0) {
        if (slots[s].kind == K_BUFFER || slots[s].kind == K_MEMORYVIEW) {
            CHECK(PyErr_ExceptionMatches(PyExc_BufferError) ||
                      PyErr_ExceptionMatches(PyExc_ValueError),
                  "export refused with an unexpected exception type");
        }
        PyErr_Clear();
        views[vi].view.obj = NULL;
        return;
    }
    CHECK(views[vi].view.obj != NULL, "export without view.obj");
    views[vi].block = slots[s].block;
    check_export(&views[vi].view, flags, slots[s].block, slots[s].root, NULL, 0);
}

/* The harness no longer holds the export when it is ended: the release
 * callback a deferred release runs from here must not see it (I8). */
static void
view_release(int vi)
{
    if (views[vi].view.obj != NULL) {
        Py_buffer view = views[vi].view;
        views[vi].view.obj = NULL;
        PyBuffer_Release(&view); /* may run a deferred release */
        CHECK(view.obj == NULL, "PyBuffer_Release left view.obj");
        CHECK(!PyErr_Occurred(), "PyBuffer_Release left an exception set");
    }
}

static void
op_release_view(Reader *r)
{
    view_release(u8(r) % NVIEWS);
}

static void
op_memoryview(Reader *r)
{
    int s = pick_slot(r);
    int d = pick_slot(r);
    if (slots[s].obj == NULL) {
        return;
    }
    PyObject *res = PyMemoryView_FromObject(slots[s].obj);
    check_result(res, "PyMemoryView_FromObject");
    if (res != NULL) {
        slot_store(d, res, slots[s].block, 0);
    }
}

static PyObject *
index_value(Reader *r)
{
    uint8_t v = u8(r);
    if (v < 0xC0) {
        return PyLong_FromLong((long)(v & 31) - 16);
    }
    if (v < 0xF0) {
        return Py_NewRef(Py_None);
    }
    return PyLong_FromSsize_t(special_values[v - 0xF0]);
}

/* The result of indexing / slicing goes to a slot; if it is a Buffer or a
 * memoryview, it is over the same block. */
static void
store_derived(int d, PyObject *res, int block)
{
    if (Py_IS_TYPE(res, buffer_type) || PyMemoryView_Check(res)) {
        slot_store(d, res, block, 0);
    }
    else {
        slot_store(d, res, -1, 0);
    }
}

/* Item sizes above this are legal (format "2147483647s"), but memoryview's
 * item access (which typed Buffers delegate to) mallocs one item, and
 * libFuzzer counts a malloc of gigabytes as a crash: such Buffers are only
 * created, exported, sliced and released, never indexed or compared. */
#define MAX_ITEMSIZE_ACCESSED (64 * 1024)

/* 1 if obj exports an item size or (with max_len >= 0) a length above the
 * limits; refused exports count as light (the operation will fail fast). */
static int
too_heavy(PyObject *obj, Py_ssize_t max_len)
{
    Py_buffer v;
    if (PyObject_GetBuffer(obj, &v, PyBUF_FULL_RO) < 0) {
        PyErr_Clear();
        return 0;
    }
    int heavy = v.itemsize > MAX_ITEMSIZE_ACCESSED || (max_len >= 0 && v.len > max_len);
    /* memoryview walks every sub-array, even of an empty layout: shape
     * (2**62, 0) is empty but 2**62 steps long.  Count the steps. */
    double steps = 0, prefix = 1;
    for (int i = 0; i < v.ndim && v.shape != NULL; i++) {
        prefix *= (double)v.shape[i];
        steps += prefix;
    }
    heavy |= steps > (double)(1 << 20);
    PyBuffer_Release(&v);
    return heavy;
}

static void
op_slice(Reader *r)
{
    int s = pick_slot(r);
    int d = pick_slot(r);
    PyObject *start = index_value(r), *stop = index_value(r), *step = index_value(r);
    CHECK(start && stop && step, "out of memory");
    PyObject *key = PySlice_New(start, stop, step);
    Py_DECREF(start);
    Py_DECREF(stop);
    Py_DECREF(step);
    CHECK(key != NULL, "out of memory");
    if (slots[s].obj != NULL) {
        trace_obj("object", slots[s].obj);
        trace_obj("key", key);
        PyObject *res = PyObject_GetItem(slots[s].obj, key);
        trace_obj("result", res);
        check_result(res, "slicing");
        if (res != NULL) {
            store_derived(d, res, slots[s].block);
        }
    }
    Py_DECREF(key);
}

static void
op_index(Reader *r)
{
    int s = pick_slot(r);
    int d = pick_slot(r);
    uint8_t kind = u8(r);
    PyObject *key;
    if (kind < 0xC0) {
        key = index_value(r);
    }
    else if (kind < 0xE0) {
        key = Py_NewRef(Py_Ellipsis);
    }
    else {
        int n = kind & 3;
        key = PyTuple_New(n);
        CHECK(key != NULL, "out of memory");
        for (int i = 0; i < n; i++) {
            PyTuple_SET_ITEM(key, i, index_value(r));
        }
    }
    CHECK(key != NULL, "out of memory");
    if (slots[s].obj != NULL && !too_heavy(slots[s].obj, -1)) {
        trace_obj("object", slots[s].obj);
        trace_obj("key", key);
        PyObject *res = PyObject_GetItem(slots[s].obj, key);
        trace_obj("result", res);
        check_result(res, "indexing");
        if (res != NULL) {
            store_derived(d, res, slots[s].block);
        }
    }
    Py_DECREF(key);
}

static unsigned char copy_a[MAX_COPY_BYTES + 1];

static void
op_tobytes(Reader *r)
{
    int s = pick_slot(r);
    int d = pick_slot(r);
    int hex = u8(r) & 1;
    PyObject *obj = slots[s].obj;
    if (obj == NULL || (slots[s].kind != K_BUFFER && slots[s].kind != K_MEMORYVIEW)) {
        return;
    }
    if (too_heavy(obj, -1)) {
        return;
    }
    Py_buffer v;
    int rc = PyObject_GetBuffer(obj, &v, PyBUF_FULL_RO);
    check_rc(rc, "PyObject_GetBuffer(FULL_RO)");
    Py_ssize_t n = -1;
    if (rc == 0) {
        n = check_export(&v, PyBUF_FULL_RO, slots[s].block, slots[s].root, copy_a,
                         MAX_COPY_BYTES);
        if (n < 0) {
            PyBuffer_Release(&v);
            return; /* too big to copy */
        }
    }
    else {
        PyErr_Clear();
    }
    PyObject *res = PyObject_CallMethod(obj, hex ? "hex" : "tobytes", NULL);
    check_result(res, hex ? "hex()" : "tobytes()");
    if (rc < 0) {
        CHECK(res == NULL, "tobytes() / hex() succeeds where an export is refused");
    }
    else if (res != NULL && !hex) {
        CHECK(PyBytes_Check(res) && PyBytes_GET_SIZE(res) == n &&
                  memcmp(PyBytes_AS_STRING(res), copy_a, (size_t)n) == 0,
              "I7: tobytes() differs from the exported contents");
    }
    if (rc == 0) {
        PyBuffer_Release(&v);
    }
    if (res != NULL) {
        slot_store(d, res, -1, 0);
    }
}

static void
op_compare(Reader *r)
{
    int a = pick_slot(r);
    int b = pick_slot(r);
    uint8_t mode = u8(r);
    PyObject *x = slots[a].obj;
    if (x == NULL) {
        return;
    }
    int op = (mode & 1) ? Py_NE : Py_EQ;
    if (mode & 2) {
        /* Against bytes of the exported contents: a 1-D unsigned-byte
         * export must then compare equal (memoryview's rule). */
        Py_buffer v;
        if (PyObject_GetBuffer(x, &v, PyBUF_FULL_RO) < 0) {
            PyErr_Clear();
            return;
        }
        Py_ssize_t n = check_export(&v, PyBUF_FULL_RO, slots[a].block, slots[a].root, copy_a,
                                    MAX_COPY_BYTES);
        int bytes_like = v.ndim == 1 && (strcmp(v.format, "B") == 0 || strcmp(v.format, "@B") == 0);
        Py_ssize_t itemsize = v.itemsize;
        PyBuffer_Release(&v);
        if (n < 0 || itemsize > MAX_ITEMSIZE_ACCESSED) {
            return;
        }
        int extra = (mode & 4) != 0;
        copy_a[n] = 0x5A;
        PyObject *other = PyBytes_FromStringAndSize((const char *)copy_a, n + extra);
        CHECK(other != NULL, "out of memory");
        PyObject *res = PyObject_RichCompare(x, other, op);
        check_result(res, "==");
        if (res != NULL && bytes_like) {
            int truth = PyObject_IsTrue(res);
            int expect = extra ? 0 : 1;
            if (op == Py_NE) {
                expect = !expect;
            }
            CHECK(truth == expect, "I7: Buffer %s bytes of its own contents%s is %d",
                  op == Py_EQ ? "==" : "!=", extra ? " plus one byte" : "", truth);
        }
        Py_XDECREF(res);
        Py_DECREF(other);
        return;
    }
    PyObject *y = slots[b].obj;
    if (y == NULL) {
        return;
    }
    /* Elementwise comparisons of huge stride-0 layouts would take forever. */
    if (too_heavy(x, MAX_COPY_BYTES) || too_heavy(y, MAX_COPY_BYTES)) {
        return;
    }
    PyObject *res = PyObject_RichCompare(x, y, op);
    check_result(res, "==");
    if (res != NULL && x == y && Py_IS_TYPE(x, buffer_type)) {
        CHECK(PyObject_IsTrue(res) == (op == Py_EQ), "a Buffer is not equal to itself");
    }
    Py_XDECREF(res);
}

static PyObject *
get_attr(PyObject *obj, const char *name)
{
    PyObject *res = PyObject_GetAttrString(obj, name);
    check_result(res, name);
    CHECK(res != NULL, "Buffer attribute %s raised", name);
    return res;
}

static void
op_membuf_release(Reader *r)
{
    int s = pick_slot(r);
    uint8_t how = u8(r);
    int flags = (how & 3) == 3 ? (int)(u8(r) | 2) : (how & 1);
    PyObject *obj = slots[s].obj;
    if ((how & 0xF0) == 0xF0) {
        int rc = MemBuf_Release(NULL, flags);
        check_rc(rc, "MemBuf_Release(NULL)");
        CHECK(rc == -1 && PyErr_ExceptionMatches(PyExc_TypeError),
              "MemBuf_Release(NULL) is not a TypeError");
        PyErr_Clear();
        return;
    }
    if (obj == NULL) {
        return;
    }
    if (!MemBuf_Check(obj)) {
        int rc = MemBuf_Release(obj, flags);
        check_rc(rc, "MemBuf_Release(non-Buffer)");
        CHECK(rc == -1 && PyErr_ExceptionMatches(PyExc_TypeError),
              "MemBuf_Release of a non-Buffer is not a TypeError");
        PyErr_Clear();
        return;
    }
    PyObject *released = get_attr(obj, "released");
    PyObject *exports = get_attr(obj, "exports");
    int was_released = released == Py_True;
    Py_ssize_t n_exports = PyLong_AsSsize_t(exports);
    Py_DECREF(released);
    Py_DECREF(exports);
    int bi = slots[s].root ? slots[s].block : -1;
    int calls_before = bi >= 0 ? blocks[bi].calls : 0;

    Py_INCREF(obj); /* keep it for the checks below, whatever the callback does */
    int rc = MemBuf_Release(obj, flags);
    check_rc(rc, "MemBuf_Release");
    if (flags & ~MEMBUF_DEFER) {
        CHECK(rc == -1 && PyErr_ExceptionMatches(PyExc_ValueError),
              "I10: MemBuf_Release accepted flags 0x%x", flags);
        CHECK(bi < 0 || blocks[bi].calls == calls_before, "I10: bad flags released memory");
    }
    else if (was_released) {
        CHECK(rc == 0, "I10: releasing a released Buffer fails");
    }
    else if (flags == 0 && n_exports > 0) {
        CHECK(rc == -1 && PyErr_ExceptionMatches(PyExc_BufferError),
              "I10: strict release with %zd exports did not raise BufferError", n_exports);
        CHECK(bi < 0 || blocks[bi].calls == calls_before, "I10: refused release released memory");
    }
    else {
        CHECK(rc == 0, "I10: release without exports (or deferred) failed");
        PyObject *now = get_attr(obj, "released");
        if (n_exports == 0) {
            CHECK(now == Py_True, "I10: released is not True after a completed release");
            CHECK(bi < 0 || !blocks[bi].with_release || blocks[bi].calls == 1,
                  "I10: completed release did not call the callback");
            if (bi >= 0 && blocks[bi].owner != NULL) {
                CHECK(Py_REFCNT(blocks[bi].owner) == 1,
                      "I5: the owner is still referenced after release (refcnt %zd)",
                      Py_REFCNT(blocks[bi].owner));
            }
            /* No use after release: exports are refused with ValueError. */
            Py_buffer v;
            int grc = PyObject_GetBuffer(obj, &v, PyBUF_SIMPLE);
            check_rc(grc, "PyObject_GetBuffer(released)");
            CHECK(grc == -1 && PyErr_ExceptionMatches(PyExc_ValueError),
                  "I10: a released Buffer still exports");
        }
        else {
            CHECK(now == Py_False, "I10: deferred release with exports completed at once");
            CHECK(bi < 0 || blocks[bi].calls == calls_before,
                  "I10: deferred release with exports called the callback");
        }
        Py_DECREF(now);
    }
    PyErr_Clear();
    Py_DECREF(obj);
}

static void
op_check(Reader *r)
{
    int s = pick_slot(r);
    PyObject *obj = slots[s].obj;
    CHECK(MemBuf_Check(NULL) == 0, "MemBuf_Check(NULL) is not 0");
    if (obj != NULL) {
        CHECK(MemBuf_Check(obj) == (slots[s].kind == K_BUFFER), "I10: MemBuf_Check is wrong");
        CHECK(!PyErr_Occurred(), "MemBuf_Check set an exception");
    }
}

static void
op_drop(Reader *r)
{
    slot_drop(pick_slot(r));
}

static void
op_gc(Reader *r)
{
    (void)r;
    PyGC_Collect();
    CHECK(!PyErr_Occurred(), "gc left an exception set");
}

static void
op_metadata(Reader *r)
{
    static const char *const names[] = {
        "address", "nbytes", "readonly", "released", "exports", "format", "itemsize", "ndim",
        "shape", "strides", "owner", "c_contiguous", "f_contiguous", "contiguous",
    };
    int s = pick_slot(r);
    uint8_t which = u8(r);
    PyObject *obj = slots[s].obj;
    if (obj == NULL) {
        return;
    }
    PyObject *res;
    if (which < 0x80) {
        res = PyObject_GetAttrString(obj, names[which % 14]);
        check_result(res, names[which % 14]);
        CHECK(res != NULL || slots[s].kind != K_BUFFER, "Buffer attribute %s raised",
              names[which % 14]);
    }
    else if (which < 0xC0) {
        res = PyObject_Repr(obj);
        check_result(res, "repr");
    }
    else {
        Py_ssize_t n = PyObject_Length(obj);
        CHECK(n >= -1, "len() returned %zd", n);
        check_rc(n < 0 ? -1 : 0, "len()");
        PyErr_Clear();
        return;
    }
    Py_XDECREF(res);
}

static void
op_cycle(Reader *r)
{
    int bi = u8(r) % NBLOCKS;
    int s = pick_slot(r);
    if (bi >= nblocks || blocks[bi].owner == NULL) {
        return;
    }
    OwnerObject *o = (OwnerObject *)blocks[bi].owner;
    PyObject *old = o->ref;
    o->ref = Py_XNewRef(slots[s].obj);
    made_cycle = 1;
    Py_XDECREF(old);
    CHECK(!PyErr_Occurred(), "dropping an owner's reference left an exception set");
}

static void
op_drop_owner(Reader *r)
{
    int bi = u8(r) % NBLOCKS;
    if (bi < nblocks) {
        PyObject *o = blocks[bi].owner;
        blocks[bi].owner = NULL;
        Py_XDECREF(o);
        CHECK(!PyErr_Occurred(), "dropping an owner left an exception set");
    }
}

/* Buffer.release(defer=...) and the context manager, from Python. */
static void
op_py_release(Reader *r)
{
    int s = pick_slot(r);
    uint8_t how = u8(r);
    PyObject *obj = slots[s].obj;
    if (obj == NULL || slots[s].kind != K_BUFFER) {
        return;
    }
    PyObject *res;
    switch (how & 3) {
    case 0: res = PyObject_CallMethod(obj, "release", NULL); break;
    case 1: res = PyObject_CallMethod(obj, "release", "O", (how & 4) ? Py_True : Py_False); break;
    case 2: res = PyObject_CallMethod(obj, "__enter__", NULL); break;
    default: res = PyObject_CallMethod(obj, "__exit__", "OOO", Py_None, Py_None, Py_None); break;
    }
    check_result(res, "Buffer.release / __enter__ / __exit__");
    Py_XDECREF(res);
}

typedef void (*OpFunc)(Reader *);
static const OpFunc ops[NOPS] = {
    op_from_memory, op_from_spec,  op_from_address,   op_getbuffer, op_release_view,
    op_memoryview,  op_slice,      op_index,          op_tobytes,   op_compare,
    op_membuf_release, op_check,   op_drop,           op_gc,        op_metadata,
    op_cycle,       op_drop_owner, op_py_release,
};

/* ------------------------------------------------------------------------ */
/* libFuzzer entry points                                                   */
/* ------------------------------------------------------------------------ */

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    PyStatus status;
    /* Plain malloc for Python objects, so ASan sees every object (and a
     * Buffer's trailing shape/strides/format storage) with exact bounds. */
    PyPreConfig preconfig;
    PyPreConfig_InitIsolatedConfig(&preconfig);
    preconfig.allocator = PYMEM_ALLOCATOR_MALLOC;
    status = Py_PreInitialize(&preconfig);
    if (PyStatus_Exception(status)) {
        Py_ExitStatusException(status);
    }
    if (PyImport_AppendInittab("membuf._membuf", PyInit__membuf) < 0) {
        fprintf(stderr, "PyImport_AppendInittab failed\n");
        abort();
    }
    PyConfig config;
    PyConfig_InitIsolatedConfig(&config);
    config.site_import = 0;
    config.install_signal_handlers = 0; /* libFuzzer owns the signals */
    config.write_bytecode = 0;
    status = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status)) {
        Py_ExitStatusException(status);
    }

    const char *src = getenv("MEMBUF_FUZZ_SRC");
    if (src == NULL || src[0] == '\0') {
        src = MEMBUF_FUZZ_SRC;
    }
    PyObject *path = PySys_GetObject("path"); /* borrowed */
    PyObject *dir = PyUnicode_FromString(src);
    if (path == NULL || dir == NULL || PyList_Insert(path, 0, dir) < 0) {
        PyErr_Print();
        abort();
    }
    Py_DECREF(dir);
    /* In 3.11 BuiltinImporter finds no submodules (it ignores any import
     * with a package path), so a finder sends "membuf._membuf" to the
     * inittab entry; the package's __init__.py imports it as usual. */
    if (PyRun_SimpleString(
            "import sys, importlib.machinery as _m\n"
            "class _MembufBuiltinFinder:\n"
            "    @staticmethod\n"
            "    def find_spec(name, path=None, target=None, _m=_m):\n"
            "        if name == 'membuf._membuf':\n"
            "            return _m.ModuleSpec(name, _m.BuiltinImporter, origin='built-in')\n"
            "        return None\n"
            "sys.meta_path.insert(0, _MembufBuiltinFinder)\n"
            "del sys, _m, _MembufBuiltinFinder\n") < 0) {
        abort();
    }
    PyObject *package = PyImport_ImportModule("membuf"); /* the real error, if any */
    if (package == NULL) {
        fprintf(stderr, "cannot import membuf from %s:\n", src);
        PyErr_Print();
        abort();
    }
    Py_DECREF(package);
    if (import_membuf() < 0) {
        fprintf(stderr, "import_membuf() failed (MEMBUF_FUZZ_SRC=%s):\n", src);
        PyErr_Print();
        abort();
    }
    PyObject *mod = PyImport_ImportModule("membuf._membuf");
    if (mod == NULL) {
        PyErr_Print();
        abort();
    }
    /* The built-in module, not some installed extension. */
    PyObject *file = PyObject_GetAttrString(mod, "__file__");
    if (file != NULL) {
        fprintf(stderr, "membuf._membuf was imported from a file, not the fuzzed sources\n");
        abort();
    }
    PyErr_Clear();
    from_address_fn = PyObject_GetAttrString(mod, "from_address");
    buffer_type = (PyTypeObject *)PyObject_GetAttrString(mod, "Buffer");
    Py_DECREF(mod);
    if (from_address_fn == NULL || buffer_type == NULL || PyType_Ready(&Owner_Type) < 0) {
        PyErr_Print();
        abort();
    }
    CHECK(MemBuf_Check(NULL) == 0, "MemBuf_Check(NULL)");
    trace = getenv("MEMBUF_FUZZ_TRACE") != NULL;
    skip_empty_check = getenv("MEMBUF_FUZZ_SKIP_EMPTY_BUF_CHECK") != NULL;
    return 0;
}

static void
finish_input(void)
{
    current_op = "end of input";
    for (int v = 0; v < NVIEWS; v++) {
        view_release(v);
    }
    for (int s = 0; s < NSLOTS; s++) {
        slot_drop(s);
    }
    for (int b = 0; b < nblocks; b++) {
        PyObject *o = blocks[b].owner;
        blocks[b].owner = NULL;
        Py_XDECREF(o);
    }
    CHECK(!PyErr_Occurred(), "an exception is left set");
    int pending = made_cycle;
    for (int b = 0; b < nblocks; b++) {
        const Block *bl = &blocks[b];
        pending |= (bl->handed && bl->with_release && bl->calls == 0) ||
                   (bl->has_owner && bl->owner_deaths == 0);
    }
    if (pending) {
        PyGC_Collect(); /* cycles through owners */
        CHECK(!PyErr_Occurred(), "gc left an exception set");
    }
    for (int b = 0; b < nblocks; b++) {
        Block *bl = &blocks[b];
        if (bl->handed && bl->with_release) {
            CHECK(bl->calls == 1,
                  "I2: block %d (%zu bytes given at %p) was never released: a Buffer leaked", b,
                  bl->given_len, bl->given_ptr);
        }
        if (bl->has_owner) {
            CHECK(bl->owner_deaths == 1, "I5: owner of block %d leaked", b);
        }
        free(bl->base); /* blocks without a callback (or never handed) */
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    Reader r = {data, size};
    memset(blocks, 0, sizeof blocks);
    memset(slots, 0, sizeof slots);
    memset(views, 0, sizeof views);
    nblocks = 0;
    made_cycle = 0;
    for (int s = 0; s < NSLOTS; s++) {
        slots[s].block = -1;
    }
    int steps = 0;
    while (r.n > 0 && steps++ < 256) {
        int op = u8(&r) % NOPS;
        current_op = op_names[op];
        if (trace) {
            fprintf(stderr, "op %s\n", current_op);
        }
        ops[op](&r);
        CHECK(!PyErr_Occurred(), "an operation left an exception set");
    }
    finish_input();
    return 0;
}
