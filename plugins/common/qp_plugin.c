/*
 * plugins/common/qp_plugin.c - small helpers every plugin's slots use:
 * slot names, declarations, zeroed allocation, descriptor sanity.
 */
#include <stdio.h>
#include <string.h>

#include "qp_common.h"

void qplug__expert_slot(char *buf, size_t size, int32_t e, const char *w, const char *slot)
{
    snprintf(buf, size, "experts.%d.%s.%s", (int)e, w, slot);
}

qplug_status qplug__declare2(const qplug_host *host, const char *slot, uint32_t mask,
                             int64_t rows, int64_t cols, uint32_t flags)
{
    int64_t shape[2] = {rows, cols};
    return host->api->declare(host->ctx, slot, mask, 2, shape, flags);
}

qplug_status qplug__declare0(const qplug_host *host, const char *slot, uint32_t mask,
                             uint32_t flags)
{
    return host->api->declare(host->ctx, slot, mask, 0, NULL, flags);
}

void *qplug__zalloc(const qplug_host *host, size_t bytes)
{
    void *p = host->api->alloc(host->ctx, bytes, QPLUG_DEVICE_CPU);
    if (p)
        memset(p, 0, bytes);
    return p;
}

bool qplug__desc_sane(const qplug_layer_desc *layer)
{
    if (!layer || layer->n <= 0 || layer->k <= 0)
        return false;
    switch (layer->kind) {
    case QPLUG_LAYER_LINEAR:
        return true;
    case QPLUG_LAYER_GROUPED_LINEAR:
        return layer->groups >= 1;
    case QPLUG_LAYER_ATTENTION:
        return true;
    case QPLUG_LAYER_FUSED_MOE:
        return layer->num_experts >= 1 && layer->top_k >= 1 &&
               layer->top_k <= layer->num_experts && layer->swiglu_limit >= 0.0f;
    }
    return false;
}

int64_t qplug__out_rows(const qplug_layer_desc *layer)
{
    return layer->kind == QPLUG_LAYER_GROUPED_LINEAR ? (int64_t)layer->groups * layer->n
                                                     : layer->n;
}
