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
/* Loads every *.so in `dir` in name order; a missing dir is not an error.
 * The first file refused stops the scan and is the error returned; the
 * plugins loaded before it stay registered. */
qplug_status qplug_registry_load_dir(qplug_registry *reg, const char *dir, qplug_err *err);
/* The standard search: policy [plugins] dirs, then each entry of
 * $QPLUG_PLUGIN_PATH (colon-separated), then ../etc/plugins.d next to the
 * running executable's directory (the build tree mirrors the install
 * tree), then the compiled-in install directory. A directory reached by
 * several spellings (same realpath) is scanned once; a plugin name found
 * again later in the search is a duplicate, hence an error. */
qplug_status qplug_registry_load_default(qplug_registry *reg, const qplug_policy *pol,
                                         qplug_err *err);
/* Registers a plugin that is linked into the host (tests), with the same
 * checks as a loaded file; `p` must outlive the registry. */
qplug_status qplug_registry_add(qplug_registry *reg, const qplug_plugin *p, const char *origin,
                                qplug_err *err);

/* The vtables handed out are the registry's zero-filled copies: a slot
 * beyond the plugin's struct_size reads as NULL. They stay valid until
 * qplug_registry_destroy. */
size_t qplug_registry_count(const qplug_registry *reg);
const qplug_plugin *qplug_registry_get(const qplug_registry *reg, size_t i);
/* The file a plugin came from (or the origin given to _add). */
const char *qplug_registry_origin(const qplug_registry *reg, size_t i);
const qplug_plugin *qplug_registry_find(const qplug_registry *reg, const char *name);

#ifdef __cplusplus
}
#endif
#endif
