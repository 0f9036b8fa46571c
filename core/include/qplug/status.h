/*
 * qplug/status.h - the one status enum of qplug, generated from one X-macro.
 *
 * Every function in the core and every plugin slot returns a qplug_status.
 * QPLUG_OK is zero; every other value is a failure whose short name and
 * default message come from the same table, so they can never drift apart.
 *
 * This header is part of the plugin ABI: values are append-only (a value
 * once shipped keeps its number), because plugins built against an older
 * header return them across the dlopen boundary.
 */
#ifndef QPLUG_STATUS_H
#define QPLUG_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

/* X(NAME, message). Append new entries at the end only. */
#define QPLUG_STATUS_LIST(X)                                                   \
    X(OK, "success")                                                           \
    X(ERR_IO, "input/output error")                                            \
    X(ERR_FORMAT, "malformed file")                                            \
    X(ERR_NOT_FOUND, "not found")                                              \
    X(ERR_DTYPE, "wrong data type")                                            \
    X(ERR_SHAPE, "wrong shape")                                                \
    X(ERR_CONFIG, "invalid configuration")                                     \
    X(ERR_POLICY, "invalid deployment policy")                                 \
    X(ERR_ABI, "plugin ABI mismatch")                                          \
    X(ERR_PLUGIN, "plugin error")                                              \
    X(ERR_DUPLICATE, "duplicate name")                                         \
    X(ERR_UNSUPPORTED, "unsupported")                                          \
    X(ERR_NOMEM, "out of memory")                                              \
    X(ERR_ARGUMENT, "invalid argument")                                        \
    X(ERR_NUMERIC, "non-finite value")                                         \
    X(ERR_DEVICE, "device error")                                              \
    X(ERR_RESOLVE, "no plugin can handle the layer")                           \
    X(ERR_INTERNAL, "internal error")

typedef enum qplug_status {
#define QPLUG_X_ENUM(name, msg) QPLUG_##name,
    QPLUG_STATUS_LIST(QPLUG_X_ENUM)
#undef QPLUG_X_ENUM
    QPLUG_STATUS_COUNT
} qplug_status;

/* "ERR_IO" etc.; "UNKNOWN" for values outside the table. Header-only so
 * that plugins, which never link the core, can use it too. */
static inline const char *qplug_status_name(qplug_status s)
{
    switch (s) {
#define QPLUG_X_NAME(name, msg) case QPLUG_##name: return #name;
        QPLUG_STATUS_LIST(QPLUG_X_NAME)
#undef QPLUG_X_NAME
    default: return "UNKNOWN";
    }
}

/* The default message of the table. */
static inline const char *qplug_status_message(qplug_status s)
{
    switch (s) {
#define QPLUG_X_MSG(name, msg) case QPLUG_##name: return msg;
        QPLUG_STATUS_LIST(QPLUG_X_MSG)
#undef QPLUG_X_MSG
    default: return "unknown status";
    }
}

#ifdef __cplusplus
}
#endif
#endif
