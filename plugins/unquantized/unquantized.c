/*
 * plugins/unquantized/unquantized.c - the resolver's default method:
 * BF16/F16/F32 weights for linear, grouped linear and fused MoE, and an F32
 * KV cache for attention. ModelOpt FP8 per-tensor and per-channel linears
 * are accepted too and dequantized to F32 at load (fp8_block scores higher
 * for per-tensor FP8 and keeps it in FP8).
 *
 * There is nothing to quantize on the activation side, so native and
 * reference precision compute the same thing: fp32 products of the exact
 * weights.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "qplug/codec.h"
#include "unquantized_internal.h"

#define UNQ_FLOAT_MASK                                                                     \
    (QPLUG_DT_BIT(QPLUG_DT_BF16) | QPLUG_DT_BIT(QPLUG_DT_F16) | QPLUG_DT_BIT(QPLUG_DT_F32))

static bool cuda_built(void)
{
#ifdef QPLUG_PLUGIN_CUDA
    return true;
#else
    return false;
#endif
}

static bool is_fp8_modelopt(const qplug_layer_desc *l)
{
    return l->quant == QPLUG_QUANT_FP8_TENSOR || l->quant == QPLUG_QUANT_FP8_CHANNEL;
}

static int unq_score(const qplug_layer_desc *l)
{
    /* Sharded linears (the compressors' wkv + wgate) are fused at load
     * when their shards are unquantized. */
    if (qplug_layer_num_shards(l) > 0) {
        if (!qplug__shards_sane(l) || l->quant != QPLUG_QUANT_NONE)
            return 0;
        return l->device == QPLUG_DEVICE_CUDA && !cuda_built() ? 0 : 10;
    }
    if (!qplug__desc_sane(l))
        return 0;
    if (l->device == QPLUG_DEVICE_CUDA && !cuda_built())
        return 0;
    if (l->quant == QPLUG_QUANT_NONE)
        return 10;
    /* A fallback for ModelOpt FP8 linears: dequantized at load. */
    if (is_fp8_modelopt(l) &&
        (l->kind == QPLUG_LAYER_LINEAR || l->kind == QPLUG_LAYER_GROUPED_LINEAR))
        return 5;
    return 0;
}

static uint32_t float_mask(const qplug_layer_desc *l)
{
    if (l->weight_dtype == QPLUG_DT_BF16 || l->weight_dtype == QPLUG_DT_F16 ||
        l->weight_dtype == QPLUG_DT_F32)
        return QPLUG_DT_BIT(l->weight_dtype);
    return UNQ_FLOAT_MASK;
}

static qplug_status unq_create_weights(const qplug_host *host, const qplug_layer_desc *l)
{
    if (!unq_score(l))
        return host->api->error(host->ctx, QPLUG_ERR_UNSUPPORTED,
                                "unquantized cannot handle layer %s (kind %d, scheme %d)",
                                l->name ? l->name : "?", (int)l->kind, (int)l->quant);
    switch (l->kind) {
    case QPLUG_LAYER_ATTENTION:
        return QPLUG_OK;
    case QPLUG_LAYER_LINEAR:
    case QPLUG_LAYER_GROUPED_LINEAR: {
        int64_t rows = qplug__out_rows(l);
        if (qplug_layer_num_shards(l) > 0) {
            char slot[96];
            for (int32_t i = 0; i < l->num_shards; i++) {
                qplug__shard_slot(slot, sizeof slot, l, i, "weight");
                qplug_status st = qplug__declare2(host, slot, float_mask(l), l->shard_n[i], l->k, 0);
                if (st)
                    return st;
            }
            return QPLUG_OK;
        }
        if (!is_fp8_modelopt(l))
            return qplug__declare2(host, "weight", float_mask(l), rows, l->k, 0);
        qplug_status st =
            qplug__declare2(host, "weight", QPLUG_DT_BIT(QPLUG_DT_F8_E4M3), rows, l->k, 0);
        if (!st && l->quant == QPLUG_QUANT_FP8_TENSOR)
            st = qplug__declare0(host, "weight_scale", QPLUG_DT_BIT(QPLUG_DT_F32), 0);
        if (!st && l->quant == QPLUG_QUANT_FP8_CHANNEL)
            st = qplug__declare2(host, "weight_scale", QPLUG_DT_BIT(QPLUG_DT_F32), rows, 1, 0);
        /* The static activation scale is not used: activations stay fp32. */
        if (!st)
            st = qplug__declare0(host, "input_scale", QPLUG_DT_BIT(QPLUG_DT_F32),
                                 QPLUG_DECL_OPTIONAL);
        return st;
    }
    case QPLUG_LAYER_FUSED_MOE: {
        static const char *const names[3] = {"w1", "w3", "w2"};
        char slot[96];
        for (int32_t e = 0; e < l->num_experts; e++)
            for (int w = 0; w < 3; w++) {
                qplug__expert_slot(slot, sizeof slot, e, names[w], "weight");
                qplug_status st = qplug__declare2(host, slot, float_mask(l),
                                                  w < 2 ? l->n : l->k, w < 2 ? l->k : l->n, 0);
                if (st)
                    return st;
            }
        return QPLUG_OK;
    }
    }
    return QPLUG_ERR_UNSUPPORTED;
}

static qplug__wfmt float_fmt(qplug_dtype dt)
{
    return dt == QPLUG_DT_BF16 ? QPLUG__W_BF16 : dt == QPLUG_DT_F16 ? QPLUG__W_F16 : QPLUG__W_F32;
}

static qplug_status float_view(const qplug_host *host, const char *slot, int64_t rows,
                               int64_t cols, qplug__wmat *out)
{
    const qplug_tensor *t;
    qplug_status st = qplug__need(host, slot, &t);
    if (st)
        return st;
    return qplug__wmat_from_tensor(host, slot, t, float_fmt(t->dtype), rows, cols, out);
}

/* ModelOpt FP8 -> F32 at load: e4m3(q) * scale, one fp32 product each. */
static qplug_status load_modelopt_fp8(const qplug_host *host, qplug_unquantized__state *st)
{
    const qplug_layer_desc *l = &st->desc;
    int64_t rows = qplug__out_rows(l), k = l->k;
    const qplug_tensor *wt, *sc;
    qplug_status s = qplug__need(host, "weight", &wt);
    if (s)
        return s;
    if (wt->dtype != QPLUG_DT_F8_E4M3 || wt->ndim != 2 || wt->shape[0] != rows ||
        wt->shape[1] != k)
        return host->api->error(host->ctx, QPLUG_ERR_SHAPE,
                                "tensor '%s' (slot weight) is not F8_E4M3 [%lld, %lld]",
                                wt->name ? wt->name : "weight", (long long)rows, (long long)k);
    s = qplug__need(host, "weight_scale", &sc);
    if (s)
        return s;
    int64_t want = l->quant == QPLUG_QUANT_FP8_TENSOR ? 1 : rows;
    if (sc->dtype != QPLUG_DT_F32 || qplug_tensor_numel(sc) != want)
        return host->api->error(host->ctx, QPLUG_ERR_SHAPE,
                                "tensor '%s' (slot weight_scale) must hold %lld F32 values",
                                sc->name ? sc->name : "weight_scale", (long long)want);
    st->owned = host->api->alloc(host->ctx, (size_t)(rows * k) * sizeof(float), QPLUG_DEVICE_CPU);
    if (!st->owned)
        return host->api->error(host->ctx, QPLUG_ERR_NOMEM,
                                "out of memory dequantizing '%s' to F32",
                                wt->name ? wt->name : "weight");
    const uint8_t *q = wt->data;
    const float *s32 = sc->data;
    for (int64_t r = 0; r < rows; r++) {
        float scale = s32[want == 1 ? 0 : r];
        for (int64_t c = 0; c < k; c++)
            st->owned[r * k + c] = qplug_e4m3_to_f32(q[r * k + c]) * scale;
    }
    st->w.fmt = QPLUG__W_F32;
    st->w.rows = rows;
    st->w.cols = k;
    st->w.data = st->owned;
    return QPLUG_OK;
}

static void unq_destroy(const qplug_host *host, void *state)
{
    qplug_unquantized__state *st = state;
    if (!st)
        return;
#ifdef QPLUG_PLUGIN_CUDA
    if (st->cuda)
        qplug_unquantized__cuda_release(host, st);
#endif
    host->api->free(host->ctx, st->experts, QPLUG_DEVICE_CPU);
    host->api->free(host->ctx, st->owned, QPLUG_DEVICE_CPU);
    host->api->free(host->ctx, st, QPLUG_DEVICE_CPU);
}

static qplug_status unq_load(const qplug_host *host, qplug_unquantized__state *st)
{
    const qplug_layer_desc *l = &st->desc;
    switch (l->kind) {
    case QPLUG_LAYER_ATTENTION:
        return QPLUG_OK;
    case QPLUG_LAYER_LINEAR:
    case QPLUG_LAYER_GROUPED_LINEAR:
        if (qplug_layer_num_shards(l) > 0)
            return qplug__fuse_float_shards(host, l, &st->owned, &st->w);
        if (is_fp8_modelopt(l))
            return load_modelopt_fp8(host, st);
        return float_view(host, "weight", qplug__out_rows(l), l->k, &st->w);
    case QPLUG_LAYER_FUSED_MOE: {
        int32_t E = l->num_experts;
        st->experts = qplug__zalloc(host, (size_t)(3 * E) * sizeof(qplug__wmat));
        if (!st->experts)
            return host->api->error(host->ctx, QPLUG_ERR_NOMEM, "out of memory for %d experts",
                                    (int)E);
        static const char *const names[3] = {"w1", "w3", "w2"};
        char slot[96];
        for (int w = 0; w < 3; w++)
            for (int32_t e = 0; e < E; e++) {
                qplug__expert_slot(slot, sizeof slot, e, names[w], "weight");
                qplug_status s = float_view(host, slot, w < 2 ? l->n : l->k,
                                            w < 2 ? l->k : l->n, &st->experts[w * E + e]);
                if (s)
                    return s;
            }
        return QPLUG_OK;
    }
    }
    return QPLUG_ERR_UNSUPPORTED;
}

static qplug_status unq_process(const qplug_host *host, const qplug_layer_desc *layer,
                                void **state)
{
    *state = NULL;
    if (!unq_score(layer))
        return host->api->error(host->ctx, QPLUG_ERR_UNSUPPORTED,
                                "unquantized cannot handle layer %s",
                                layer->name ? layer->name : "?");
    qplug_unquantized__state *st = qplug__zalloc(host, sizeof *st);
    if (!st)
        return host->api->error(host->ctx, QPLUG_ERR_NOMEM, "out of memory for layer state");
    st->desc = *layer;
    qplug_status s = unq_load(host, st);
    if (!s && layer->device == QPLUG_DEVICE_CUDA) {
#ifdef QPLUG_PLUGIN_CUDA
        s = qplug_unquantized__cuda_prepare(host, st);
#else
        s = host->api->error(host->ctx, QPLUG_ERR_UNSUPPORTED,
                             "unquantized was built without CUDA");
#endif
    }
    if (s) {
        unq_destroy(host, st);
        return s;
    }
    *state = st;
    return QPLUG_OK;
}

static bool on_cuda(const qplug_apply_args *a)
{
    return (a->x && a->x->device == QPLUG_DEVICE_CUDA) ||
           (a->y && a->y->device == QPLUG_DEVICE_CUDA);
}

static qplug_status unq_apply(const qplug_host *host, void *state, const qplug_apply_args *args)
{
    qplug_unquantized__state *st = state;
    if (!st || !args)
        return host->api->error(host->ctx, QPLUG_ERR_ARGUMENT, "apply: no state or arguments");
    if (on_cuda(args)) {
#ifdef QPLUG_PLUGIN_CUDA
        if (st->cuda)
            return qplug_unquantized__cuda_apply(host, st, args);
#endif
        return host->api->error(host->ctx, QPLUG_ERR_UNSUPPORTED,
                                "apply: CUDA tensors given to a layer loaded without a CUDA path");
    }
    const qplug_layer_desc *l = &st->desc;
    switch (l->kind) {
    case QPLUG_LAYER_ATTENTION:
        return qplug__kv_apply(host, l, false, args);
    case QPLUG_LAYER_LINEAR:
    case QPLUG_LAYER_GROUPED_LINEAR:
        return qplug__linear_forward(host, l, &st->w, QPLUG__ACT_NONE, false, args);
    case QPLUG_LAYER_FUSED_MOE: {
        int32_t E = l->num_experts;
        qplug__moe moe = {st->experts, st->experts + E, st->experts + 2 * E, QPLUG__ACT_NONE,
                          QPLUG__ACT_NONE, false, NULL, NULL, 0.0f};
        return qplug__moe_forward(host, l, &moe, args);
    }
    }
    return QPLUG_ERR_UNSUPPORTED;
}

static size_t unq_kv_entry_bytes(const qplug_layer_desc *layer)
{
    return qplug__kv_bytes_f32(layer->k);
}

static const qplug_plugin unq_plugin = {
    .abi_version = QPLUG_ABI_VERSION,
    .struct_size = sizeof(qplug_plugin),
    .name = "unquantized",
    .description = "BF16/F16/F32 weights (and ModelOpt FP8 dequantized to F32), F32 KV cache",
#ifdef QPLUG_PLUGIN_CUDA
    .devices = (1u << QPLUG_DEVICE_CPU) | (1u << QPLUG_DEVICE_CUDA),
#else
    .devices = 1u << QPLUG_DEVICE_CPU,
#endif
    .score = unq_score,
    .create_weights = unq_create_weights,
    .process_after_loading = unq_process,
    .apply = unq_apply,
    .destroy = unq_destroy,
    .kv_entry_bytes = unq_kv_entry_bytes,
};

QPLUG_EXPORT const qplug_plugin *qplug_plugin_entry(void)
{
    return &unq_plugin;
}
