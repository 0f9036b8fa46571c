/*
 * plugins/common/qp_plugin.c - small helpers every plugin's slots use:
 * slot names, declarations, zeroed allocation, descriptor sanity, the
 * expert-module loops, and the plugin skeleton that runs the ABI calls
 * through a plugin's table of hooks.
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

qplug_status qplug__fp4_expert_declare(const qplug_host *host, void *ctx, const char *prefix,
                                       int64_t rows, int64_t cols)
{
    const qplug_layer_desc *layer = ctx;
    if (layer->quant == QPLUG_QUANT_NVFP4)
        return qplug__nvfp4_declare(host, prefix, rows, cols);
    return qplug__mxfp4_declare(host, prefix, rows, cols);
}

qplug_status qplug__fp4_expert_view(const qplug_host *host, void *ctx, const char *prefix,
                                    int which, int64_t rows, int64_t cols, qplug__wmat *out)
{
    const qplug_layer_desc *layer = ctx;
    (void)which;
    if (layer->quant == QPLUG_QUANT_NVFP4)
        return qplug__nvfp4_view(host, prefix, rows, cols, out);
    return qplug__mxfp4_view(host, prefix, rows, cols, out);
}

/* ------------------------------------------------------------------------ */
/* Expert modules                                                           */
/* ------------------------------------------------------------------------ */

static const char *const EXPERT_W[3] = {"w1", "w3", "w2"};

/* w1 and w3 map k to n, w2 maps n back to k. */
static int64_t expert_rows(const qplug_layer_desc *l, int which)
{
    return which < 2 ? l->n : l->k;
}

static int64_t expert_cols(const qplug_layer_desc *l, int which)
{
    return which < 2 ? l->k : l->n;
}

qplug_status qplug__experts_declare(const qplug_host *host, const qplug_layer_desc *layer,
                                    qplug__expert_declare_fn fn, void *ctx)
{
    char prefix[64];
    for (int32_t e = 0; e < layer->num_experts; e++)
        for (int w = 0; w < 3; w++) {
            qplug__expert_prefix(prefix, sizeof prefix, e, EXPERT_W[w]);
            qplug_status st =
                fn(host, ctx, prefix, expert_rows(layer, w), expert_cols(layer, w));
            if (st)
                return st;
        }
    return QPLUG_OK;
}

qplug_status qplug__experts_load(const qplug_host *host, const qplug_layer_desc *layer,
                                 qplug__expert_view_fn fn, void *ctx, qplug__wmat **experts)
{
    int32_t E = layer->num_experts;
    *experts = qplug__zalloc(host, (size_t)(3 * E) * sizeof(qplug__wmat));
    if (!*experts)
        return host->api->error(host->ctx, QPLUG_ERR_NOMEM, "out of memory for %d experts",
                                (int)E);
    char prefix[64];
    for (int w = 0; w < 3; w++)
        for (int32_t e = 0; e < E; e++) {
            qplug__expert_prefix(prefix, sizeof prefix, e, EXPERT_W[w]);
            qplug_status st = fn(host, ctx, prefix, w, expert_rows(layer, w),
                                 expert_cols(layer, w), &(*experts)[w * E + e]);
            if (st)
                return st;
        }
    return QPLUG_OK;
}

/* ------------------------------------------------------------------------ */
/* Plugin skeleton                                                          */
/* ------------------------------------------------------------------------ */

int qplug__skel_score(const qplug__skeleton *sk, const qplug_layer_desc *layer)
{
    if (!layer)
        return 0;
    /* A CUDA layer the CUDA path cannot run must not win the resolver's
     * choice only to fail at load. */
    if (layer->device == QPLUG_DEVICE_CUDA) {
        if (!sk->cuda_prepare)
            return 0;
        if (sk->cuda_supports && !sk->cuda_supports(layer))
            return 0;
    }
    return sk->score(layer);
}

qplug_status qplug__skel_create_weights(const qplug__skeleton *sk, const qplug_host *host,
                                        const qplug_layer_desc *layer)
{
    if (!qplug__skel_score(sk, layer))
        return host->api->error(host->ctx, QPLUG_ERR_UNSUPPORTED,
                                "%s cannot handle layer %s (kind %d, scheme %d)", sk->name,
                                layer && layer->name ? layer->name : "?",
                                layer ? (int)layer->kind : -1, layer ? (int)layer->quant : -1);
    return sk->declare(host, layer);
}

void qplug__skel_destroy(const qplug__skeleton *sk, const qplug_host *host, void *state)
{
    if (!state)
        return;
    if (sk->cuda_release)
        sk->cuda_release(host, state);
    if (sk->release)
        sk->release(host, state);
    host->api->free(host->ctx, state, QPLUG_DEVICE_CPU);
}

qplug_status qplug__skel_process(const qplug__skeleton *sk, const qplug_host *host,
                                 const qplug_layer_desc *layer, void **state)
{
    *state = NULL;
    if (!qplug__skel_score(sk, layer))
        return host->api->error(host->ctx, QPLUG_ERR_UNSUPPORTED, "%s cannot handle layer %s",
                                sk->name, layer && layer->name ? layer->name : "?");
    void *st = qplug__zalloc(host, sk->state_size);
    if (!st)
        return host->api->error(host->ctx, QPLUG_ERR_NOMEM, "out of memory for layer state");
    qplug_status r = sk->load(host, layer, st);
    if (!r && layer->device == QPLUG_DEVICE_CUDA)
        r = sk->cuda_prepare ? sk->cuda_prepare(host, st)
                             : host->api->error(host->ctx, QPLUG_ERR_UNSUPPORTED,
                                                "%s was built without CUDA", sk->name);
    if (r) {
        qplug__skel_destroy(sk, host, st);
        return r;
    }
    *state = st;
    return QPLUG_OK;
}

qplug_act_format qplug__skel_act_format(const qplug__skeleton *sk, const void *state)
{
    if (!state || !sk->act_format)
        return QPLUG_ACT_FORMAT_NONE;
    return sk->act_format(state);
}

qplug_act_format qplug__linear_act_format(const qplug_layer_desc *layer, qplug_act_format fmt)
{
    if (layer->kind != QPLUG_LAYER_LINEAR && layer->kind != QPLUG_LAYER_GROUPED_LINEAR)
        return QPLUG_ACT_FORMAT_NONE;
    return layer->k % QPLUG__FP8_BLOCK == 0 ? fmt : QPLUG_ACT_FORMAT_NONE;
}

qplug_status qplug__no_cuda_path(const qplug_host *host)
{
    return host->api->error(host->ctx, QPLUG_ERR_UNSUPPORTED,
                            "apply: CUDA tensors given to a layer loaded without a CUDA path");
}

qplug_status qplug__skel_apply(const qplug__skeleton *sk, const qplug_host *host, void *state,
                               const qplug_apply_args *args)
{
    if (!state || !args)
        return host->api->error(host->ctx, QPLUG_ERR_ARGUMENT, "apply: no state or arguments");
    /* The core refuses these already; a host that does not must not get a
     * pre-quantized x read as BF16/F32. */
    if (qplug_apply_x_scale(args) && qplug__skel_act_format(sk, state) == QPLUG_ACT_FORMAT_NONE)
        return host->api->error(host->ctx, QPLUG_ERR_UNSUPPORTED,
                                "apply: %s takes no pre-quantized activations (x_scale) for "
                                "this layer",
                                sk->name);
    if ((args->x && args->x->device == QPLUG_DEVICE_CUDA) ||
        (args->y && args->y->device == QPLUG_DEVICE_CUDA))
        return sk->cuda_apply ? sk->cuda_apply(host, state, args) : qplug__no_cuda_path(host);
    return sk->cpu_apply(host, state, args);
}

qplug_status qplug__cpu_forward(const qplug_host *host, const qplug_layer_desc *layer,
                                const qplug__cpu_layer *c, const qplug_apply_args *args)
{
    switch (layer->kind) {
    case QPLUG_LAYER_ATTENTION:
        return qplug__kv_apply(host, layer, c->kv_fp8, args);
    case QPLUG_LAYER_LINEAR:
    case QPLUG_LAYER_GROUPED_LINEAR:
        return qplug__linear_forward(host, layer, c->w, c->mode, c->fp8_split, args);
    case QPLUG_LAYER_FUSED_MOE: {
        int32_t E = layer->num_experts;
        qplug__moe moe = {c->experts, c->experts + E, c->experts + 2 * E, c->mode, c->mode,
                          c->fp8_split, NULL, NULL, 0.0f};
        return qplug__moe_forward(host, layer, &moe, args);
    }
    }
    return QPLUG_ERR_UNSUPPORTED;
}
