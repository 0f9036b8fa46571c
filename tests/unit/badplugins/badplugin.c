/*
 * One plugin source compiled into several modules (tests/unit/loader.cmake),
 * each with macros that break one rule of the ABI, so test_loader.c can
 * check that the loader refuses it with the right status and message.
 *
 *   BP_NAME          the plugin name (default "good_a")
 *   BP_ABI           abi_version (default QPLUG_ABI_VERSION)
 *   BP_STRUCT_SIZE   struct_size (default sizeof(qplug_plugin))
 *   BP_NULL_APPLY    leave the mandatory apply slot NULL
 *   BP_NO_ENTRY      export a misspelt entry symbol instead
 *   BP_NULL_ENTRY    the entry point returns NULL
 *   BP_LEAK_SYMBOL   export a second symbol (for the export check's own test)
 */
#include <stddef.h>

#include "qplug/plugin.h"

#ifndef BP_NAME
#define BP_NAME "good_a"
#endif
#ifndef BP_ABI
#define BP_ABI QPLUG_ABI_VERSION
#endif
#ifndef BP_STRUCT_SIZE
#define BP_STRUCT_SIZE sizeof(qplug_plugin)
#endif

static int bp_score(const qplug_layer_desc *layer)
{
    (void)layer;
    return 0;
}

static qplug_status bp_create_weights(const qplug_host *host, const qplug_layer_desc *layer)
{
    (void)host;
    (void)layer;
    return QPLUG_OK;
}

static qplug_status bp_process(const qplug_host *host, const qplug_layer_desc *layer, void **state)
{
    (void)host;
    (void)layer;
    *state = NULL;
    return QPLUG_OK;
}

#ifndef BP_NULL_APPLY
static qplug_status bp_apply(const qplug_host *host, void *state, const qplug_apply_args *args)
{
    (void)state;
    (void)args;
    return host->api->error(host->ctx, QPLUG_ERR_UNSUPPORTED, "test plugin computes nothing");
}
#endif

static void bp_destroy(const qplug_host *host, void *state)
{
    (void)host;
    (void)state;
}

/* Set even where struct_size excludes it: the loader must not see it. */
static size_t bp_kv_entry_bytes(const qplug_layer_desc *layer)
{
    return (size_t)layer->k;
}

static const qplug_plugin bp_plugin = {
    .abi_version = BP_ABI,
    .struct_size = BP_STRUCT_SIZE,
    .name = BP_NAME,
    .description = "loader test plugin",
    .devices = 1u << QPLUG_DEVICE_CPU,
    .score = bp_score,
    .create_weights = bp_create_weights,
    .process_after_loading = bp_process,
#ifndef BP_NULL_APPLY
    .apply = bp_apply,
#endif
    .destroy = bp_destroy,
    .kv_entry_bytes = bp_kv_entry_bytes,
};

#if defined(BP_NO_ENTRY)
QPLUG_EXPORT const qplug_plugin *qplug_plugin_entri(void)
{
    return &bp_plugin;
}
#elif defined(BP_NULL_ENTRY)
QPLUG_EXPORT const qplug_plugin *qplug_plugin_entry(void)
{
    return NULL;
}
/* Referenced so the unused vtable does not warn. */
QPLUG_EXPORT const void *bp_unused(void);
const void *bp_unused(void)
{
    return &bp_plugin;
}
#else
QPLUG_EXPORT const qplug_plugin *qplug_plugin_entry(void)
{
    return &bp_plugin;
}
#endif

#ifdef BP_LEAK_SYMBOL
QPLUG_EXPORT int bp_leaked_symbol(void);
int bp_leaked_symbol(void)
{
    return 1;
}
#endif
