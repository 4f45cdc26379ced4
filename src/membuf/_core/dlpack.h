/* The DLPack 1.0 structures membuf exports, written from the DLPack
 * specification (https://dmlc.github.io/dlpack/latest/c_api.html): only what
 * a CPU producer needs.  The layouts below are the ABI every consumer
 * (NumPy, PyTorch, JAX, CuPy) reads; they must never change. */
#ifndef MEMBUF_DLPACK_H
#define MEMBUF_DLPACK_H

#include <stdint.h>

/* The DLPack version membuf produces (DLManagedTensorVersioned.version). */
#define MB_DLPACK_MAJOR 1
#define MB_DLPACK_MINOR 0

/* DLDeviceType: a C enum (int-sized); membuf only produces kDLCPU. */
typedef enum { kDLCPU = 1 } DLDeviceType;

typedef struct {
    DLDeviceType device_type;
    int32_t device_id;
} DLDevice;

/* DLDataTypeCode values (stored in DLDataType.code as uint8_t). */
enum { kDLInt = 0, kDLUInt = 1, kDLFloat = 2, kDLComplex = 5, kDLBool = 6 };

typedef struct {
    uint8_t code;   /* a DLDataTypeCode */
    uint8_t bits;   /* bits of one lane: 8 for bool */
    uint16_t lanes; /* 1: membuf has no vector types */
} DLDataType;

typedef struct {
    void *data;
    DLDevice device;
    int32_t ndim;
    DLDataType dtype;
    int64_t *shape;   /* ndim entries */
    int64_t *strides; /* ndim entries, in items (not bytes) */
    uint64_t byte_offset;
} DLTensor;

/* Legacy (pre-1.0) managed tensor: capsule "dltensor". */
typedef struct DLManagedTensor {
    DLTensor dl_tensor;
    void *manager_ctx;
    void (*deleter)(struct DLManagedTensor *self);
} DLManagedTensor;

typedef struct {
    uint32_t major;
    uint32_t minor;
} DLPackVersion;

#define DLPACK_FLAG_BITMASK_READ_ONLY (UINT64_C(1) << 0)
#define DLPACK_FLAG_BITMASK_IS_COPIED (UINT64_C(1) << 1)

/* Versioned (1.x) managed tensor: capsule "dltensor_versioned". */
typedef struct DLManagedTensorVersioned {
    DLPackVersion version;
    void *manager_ctx;
    void (*deleter)(struct DLManagedTensorVersioned *self);
    uint64_t flags;
    DLTensor dl_tensor;
} DLManagedTensorVersioned;

#endif /* MEMBUF_DLPACK_H */
