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

static int
capi_release(PyObject *obj, int flags)
{
    if (obj == NULL || !MemBuf_CheckExact(obj)) {
        if (obj == NULL) {
            PyErr_SetString(PyExc_TypeError,
                            "MemBuf_Release: expected a membuf.Buffer, not NULL");
            return -1;
        }
        return membuf_type_error(PyExc_TypeError, obj,
                                 "MemBuf_Release: expected a membuf.Buffer");
    }
    if (flags & ~MEMBUF_DEFER) {
        PyErr_Format(PyExc_ValueError, "MemBuf_Release: unknown flags 0x%x (known: MEMBUF_DEFER)",
                     (unsigned int)(flags & ~MEMBUF_DEFER));
        return -1;
    }
    return membuf_release((MemBufObject *)obj, (flags & MEMBUF_DEFER) != 0);
}

static int
capi_check(PyObject *obj)
{
    return obj != NULL && MemBuf_CheckExact(obj);
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
    .Check = capi_check,
};
