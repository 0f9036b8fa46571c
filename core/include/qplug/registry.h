/*
 * qplug/registry.h - the plugin registry and loader (dlopen).
 *
 * The registry is one of the two pieces of mutable state qplug has (the
 * other is the log sink); it is an object the host creates, not a global.
 */
#ifndef QPLUG_REGISTRY_H
#define QPLUG_REGISTRY_H

#include "qplug/error.h"
#include "qplug/policy.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qplug_registry qplug_registry;

qplug_status qplug_registry_create(qplug_registry **out, qplug_err *err);
/* dlclose()s every library: call only when no layer built by them lives. */
void qplug_registry_destroy(qplug_registry *reg);

/* Loads one plugin file. Refused with a message naming the file: a file that
 * is not a loadable library, a missing entry symbol, an entry returning
 * NULL, an ABI major mismatch (both versions named), a struct_size too small
 * for the 1.0 slots, missing mandatory slots, a bad or duplicate name. */
qplug_status qplug_registry_load_file(qplug_registry *reg, const char *path, qplug_err *err);
/* Loads every *.so in `dir` in name order; a missing dir is not an error. */
qplug_status qplug_registry_load_dir(qplug_registry *reg, const char *dir, qplug_err *err);
/* The standard search: policy [plugins] dirs, then each entry of
 * $QPLUG_PLUGIN_PATH (colon-separated), then the installed etc/plugins.d
 * (and the build tree's when running from it). */
qplug_status qplug_registry_load_default(qplug_registry *reg, const qplug_policy *pol,
                                         qplug_err *err);
/* Registers a plugin that is linked into the host (tests). */
qplug_status qplug_registry_add(qplug_registry *reg, const qplug_plugin *p, const char *origin,
                                qplug_err *err);

size_t qplug_registry_count(const qplug_registry *reg);
const qplug_plugin *qplug_registry_get(const qplug_registry *reg, size_t i);
/* The file a plugin came from (or the origin given to _add). */
const char *qplug_registry_origin(const qplug_registry *reg, size_t i);
const qplug_plugin *qplug_registry_find(const qplug_registry *reg, const char *name);

#ifdef __cplusplus
}
#endif
#endif
