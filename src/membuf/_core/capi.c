/* The C API table handed to other extensions through the capsule
 * MEMBUF_CAPSULE_NAME.  It is static and append-only: consumers cache the
 * pointer for the life of the process (see membuf.h, "VERSIONS"). */
#include "core.h"

static PyObject *
capi_from_spec(const MemBuf_Spec *spec)
{
    if (spec == NULL) {
        PyErr_SetString(PyExc_ValueError, "MemBuf_FromSpec: spec is NULL");
        return NULL;
    }
    return membuf_from_spec(spec, 0);
}

/* 0 if obj is a Buffer; -1 with TypeError naming the C function if not. */
static int
expect_buffer(PyObject *obj, const char *function)
{
    if (obj == NULL) {
        PyErr_Format(PyExc_TypeError, "%s: expected a membuf.Buffer, not NULL", function);
        return -1;
    }
    if (!MemBuf_CheckExact(obj)) {
        return membuf_type_error(PyExc_TypeError, obj, "%s: expected a membuf.Buffer", function);
    }
    return 0;
}

static int
capi_release(PyObject *obj, int flags)
{
    if (expect_buffer(obj, "MemBuf_Release") < 0) {
        return -1;
    }
    if (flags & ~MEMBUF_DEFER) {
        PyErr_Format(PyExc_ValueError, "MemBuf_Release: unknown flags 0x%x (known: MEMBUF_DEFER)",
                     (unsigned int)(flags & ~MEMBUF_DEFER));
        return -1;
    }
    return membuf_release((MemBufObject *)obj, (flags & MEMBUF_DEFER) != 0);
}

static int
capi_is_released(PyObject *obj)
{
    if (expect_buffer(obj, "MemBuf_IsReleased") < 0) {
        return -1;
    }
    return MB_REFUSES_WORK((MemBufObject *)obj);
}

/* In the limited build, Buffer_Type is set by membuf_type_ready(). */
MB_CAPI_CONST MemBuf_CAPI membuf_capi = {
    .abi_version = MEMBUF_ABI_VERSION,
    .api_version = MEMBUF_API_VERSION,
#ifndef Py_LIMITED_API
    .Buffer_Type = &MemBuf_Type,
#endif
    .FromMemory = membuf_from_memory,
    .FromSpec = capi_from_spec,
    .Release = capi_release,
    .IsReleased = capi_is_released,
};
