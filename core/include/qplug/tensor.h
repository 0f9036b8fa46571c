/*
 * qplug/tensor.h - data types and the tensor descriptor shared by the core
 * and the plugins. Part of the plugin ABI: enum values are append-only and
 * the struct layout only grows at the end.
 */
#ifndef QPLUG_TENSOR_H
#define QPLUG_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * X(NAME, safetensors name, bits per element).
 * E2M1 is FP4 packed two per byte: element 2j in the low nibble, 2j+1 in the
 * high nibble. A qplug tensor of dtype E2M1 counts *elements* in its shape;
 * checkpoints usually store the same bytes as I8 or U8 with the last
 * dimension halved, and the loader presents whichever the plugin declared.
 */
#define QPLUG_DTYPE_LIST(X)                                                    \
    X(BF16, "BF16", 16)                                                        \
    X(F16, "F16", 16)                                                          \
    X(F32, "F32", 32)                                                          \
    X(I8, "I8", 8)                                                             \
    X(U8, "U8", 8)                                                             \
    X(I32, "I32", 32)                                                          \
    X(I64, "I64", 64)                                                          \
    X(F8_E4M3, "F8_E4M3", 8)                                                   \
    X(F8_E8M0, "F8_E8M0", 8)                                                   \
    X(E2M1, "F4", 4)                                                           \
    X(F64, "F64", 64)

typedef enum qplug_dtype {
#define QPLUG_X_DT(name, st, bits) QPLUG_DT_##name,
    QPLUG_DTYPE_LIST(QPLUG_X_DT)
#undef QPLUG_X_DT
    QPLUG_DT_COUNT
} qplug_dtype;

/* A bit per dtype, for declarations that accept several (packed FP4 is
 * found as I8, U8 or F4 in the wild). */
#define QPLUG_DT_BIT(dt) (1u << (unsigned)(dt))

typedef enum qplug_device_kind {
    QPLUG_DEVICE_CPU = 0,
    QPLUG_DEVICE_CUDA = 1
} qplug_device_kind;

#define QPLUG_MAX_DIMS 4

/*
 * A dense, row-major, contiguous tensor. The descriptor never owns `data`:
 * whoever created the tensor frees it. `name` may be NULL for temporaries.
 */
typedef struct qplug_tensor {
    const char *name;
    qplug_dtype dtype;
    int32_t ndim;
    int64_t shape[QPLUG_MAX_DIMS];
    void *data;
    qplug_device_kind device;
} qplug_tensor;

static inline unsigned qplug_dtype_bits(qplug_dtype dt)
{
    switch (dt) {
#define QPLUG_X_BITS(name, st, bits) case QPLUG_DT_##name: return bits;
        QPLUG_DTYPE_LIST(QPLUG_X_BITS)
#undef QPLUG_X_BITS
    default: return 0;
    }
}

static inline const char *qplug_dtype_name(qplug_dtype dt)
{
    switch (dt) {
#define QPLUG_X_NAME(name, st, bits) case QPLUG_DT_##name: return st;
        QPLUG_DTYPE_LIST(QPLUG_X_NAME)
#undef QPLUG_X_NAME
    default: return "?";
    }
}

static inline int64_t qplug_tensor_numel(const qplug_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

/* Bytes of the payload; packed FP4 rounds an odd element count up. */
static inline size_t qplug_tensor_nbytes(const qplug_tensor *t)
{
    return (size_t)((qplug_tensor_numel(t) * qplug_dtype_bits(t->dtype) + 7) / 8);
}

#ifdef __cplusplus
}
#endif
#endif
