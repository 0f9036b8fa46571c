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
    if (!layer || layer->n <= 0 || layer->k <= 0 || qplug_layer_num_shards(layer) > 0)
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

static bool shard_name_ok(const char *s)
{
    if (!s || !*s || strlen(s) > 32)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_'))
            return false;
    return true;
}

bool qplug__shards_sane(const qplug_layer_desc *layer)
{
    int32_t ns = layer ? qplug_layer_num_shards(layer) : 0;
    if (ns < 2 || ns > QPLUG_MAX_SHARDS || layer->kind != QPLUG_LAYER_LINEAR || layer->k <= 0)
        return false;
    int64_t sum = 0;
    for (int32_t i = 0; i < ns; i++) {
        if (!shard_name_ok(layer->shard_names[i]) || layer->shard_n[i] <= 0 ||
            layer->shard_n[i] > layer->n)
            return false;
        for (int32_t j = 0; j < i; j++)
            if (!strcmp(layer->shard_names[i], layer->shard_names[j]))
                return false;
        sum += layer->shard_n[i];
    }
    return sum == layer->n;
}

void qplug__shard_slot(char *buf, size_t size, const qplug_layer_desc *layer, int32_t i,
                       const char *slot)
{
    snprintf(buf, size, "%s.%s", layer->shard_names[i], slot);
}

int64_t qplug__out_rows(const qplug_layer_desc *layer)
{
    return layer->kind == QPLUG_LAYER_GROUPED_LINEAR ? (int64_t)layer->groups * layer->n
                                                     : layer->n;
}

void qplug__expert_prefix(char *buf, size_t size, int32_t e, const char *w)
{
    snprintf(buf, size, "experts.%d.%s.", (int)e, w);
}

qplug_status qplug__mxfp4_declare(const qplug_host *host, const char *prefix, int64_t rows,
                                  int64_t cols)
{
    char ws[128], ss[128];
    snprintf(ws, sizeof ws, "%sweight", prefix);
    snprintf(ss, sizeof ss, "%sscale", prefix);
    qplug_status st = qplug__declare2(host, ws, QPLUG__FP4_BYTES_MASK, rows, cols / 2, 0);
    if (!st)
        st = qplug__declare2(host, ss, QPLUG_DT_BIT(QPLUG_DT_F8_E8M0), rows, cols / 32, 0);
    return st;
}

qplug_status qplug__mxfp4_view(const qplug_host *host, const char *prefix, int64_t rows,
                               int64_t cols, qplug__wmat *out)
{
    char wslot[128], sslot[128];
    snprintf(wslot, sizeof wslot, "%sweight", prefix);
    snprintf(sslot, sizeof sslot, "%sscale", prefix);
    const qplug_tensor *w, *s;
    qplug_status st = qplug__need(host, wslot, &w);
    if (!st)
        st = qplug__need(host, sslot, &s);
    if (!st)
        st = qplug__wmat_from_tensor(host, wslot, w, QPLUG__W_MXFP4, rows, cols, out);
    if (st)
        return st;
    if (s->dtype != QPLUG_DT_F8_E8M0 || s->ndim != 2 || s->shape[0] != rows ||
        s->shape[1] != cols / 32)
        return host->api->error(host->ctx, QPLUG_ERR_SHAPE,
                                "tensor '%s' (slot %s) must be F8_E8M0 [%lld, %lld]",
                                s->name ? s->name : sslot, sslot, (long long)rows,
                                (long long)(cols / 32));
    out->scale = s->data;
    return QPLUG_OK;
}

/* The four tensors of one NVFP4 module; `prefix` is "" or "experts.e.w.". */
qplug_status qplug__nvfp4_declare(const qplug_host *host, const char *prefix, int64_t rows,
                                  int64_t cols)
{
    char slot[128];
    snprintf(slot, sizeof slot, "%sweight", prefix);
    qplug_status st = qplug__declare2(host, slot, QPLUG__FP4_BYTES_MASK, rows, cols / 2, 0);
    snprintf(slot, sizeof slot, "%sweight_scale", prefix);
    if (!st)
        st = qplug__declare2(host, slot, QPLUG_DT_BIT(QPLUG_DT_F8_E4M3), rows, cols / 16, 0);
    snprintf(slot, sizeof slot, "%sweight_scale_2", prefix);
    if (!st)
        st = qplug__declare0(host, slot, QPLUG_DT_BIT(QPLUG_DT_F32), 0);
    snprintf(slot, sizeof slot, "%sinput_scale", prefix);
    if (!st)
        st = qplug__declare0(host, slot, QPLUG_DT_BIT(QPLUG_DT_F32), 0);
    return st;
}

qplug_status qplug__nvfp4_view(const qplug_host *host, const char *prefix, int64_t rows,
                               int64_t cols, qplug__wmat *out)
{
    char ws[128], ss[128], s2[128], is[128];
    snprintf(ws, sizeof ws, "%sweight", prefix);
    snprintf(ss, sizeof ss, "%sweight_scale", prefix);
    snprintf(s2, sizeof s2, "%sweight_scale_2", prefix);
    snprintf(is, sizeof is, "%sinput_scale", prefix);
    const qplug_tensor *w, *s;
    float g, in;
    qplug_status st = qplug__need(host, ws, &w);
    if (!st)
        st = qplug__need(host, ss, &s);
    if (!st)
        st = qplug__scalar(host, s2, &g);
    if (!st)
        st = qplug__scalar(host, is, &in);
    if (!st)
        st = qplug__wmat_from_tensor(host, ws, w, QPLUG__W_NVFP4, rows, cols, out);
    if (st)
        return st;
    if (s->dtype != QPLUG_DT_F8_E4M3 || s->ndim != 2 || s->shape[0] != rows ||
        s->shape[1] != cols / 16)
        return host->api->error(host->ctx, QPLUG_ERR_SHAPE,
                                "tensor '%s' (slot %s) must be F8_E4M3 [%lld, %lld]",
                                s->name ? s->name : ss, ss, (long long)rows,
                                (long long)(cols / 16));
    out->scale = s->data;
    out->global = g;
    out->input_scale = in;
    return QPLUG_OK;
}
