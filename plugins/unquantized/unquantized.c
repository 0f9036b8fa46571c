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
#include <stdio.h>

#include "qplug/codec.h"
#include "unquantized_internal.h"
#ifdef QPLUG_PLUGIN_CUDA
#include "unquantized_cuda.h"
#endif

#define UNQ_FLOAT_MASK                                                                     \
    (QPLUG_DT_BIT(QPLUG_DT_BF16) | QPLUG_DT_BIT(QPLUG_DT_F16) | QPLUG_DT_BIT(QPLUG_DT_F32))

static bool is_fp8_modelopt(const qplug_layer_desc *l)
{
    return l->quant == QPLUG_QUANT_FP8_TENSOR || l->quant == QPLUG_QUANT_FP8_CHANNEL;
}

static int unq_score(const qplug_layer_desc *l)
{
    /* Sharded linears (the compressors' wkv + wgate) are fused at load
     * when their shards are unquantized. */
    if (qplug_layer_num_shards(l) > 0) {
        return qplug__shards_sane(l) && l->quant == QPLUG_QUANT_NONE ? 10 : 0;
    }
    if (!qplug__desc_sane(l))
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

/* One expert module: <prefix>weight. */
static qplug_status declare_expert(const qplug_host *host, void *ctx, const char *prefix,
                                   int64_t rows, int64_t cols)
{
    char slot[96];
    snprintf(slot, sizeof slot, "%sweight", prefix);
    return qplug__declare2(host, slot, float_mask(ctx), rows, cols, 0);
}

static qplug_status unq_declare(const qplug_host *host, const qplug_layer_desc *l)
{
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
    case QPLUG_LAYER_FUSED_MOE:
        return qplug__experts_declare(host, l, declare_expert, (void *)l);
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

/* One expert module: <prefix>weight in its own float dtype. */
static qplug_status view_expert(const qplug_host *host, void *ctx, const char *prefix,
                                int which, int64_t rows, int64_t cols, qplug__wmat *out)
{
    char slot[96];
    (void)ctx;
    (void)which;
    snprintf(slot, sizeof slot, "%sweight", prefix);
    return float_view(host, slot, rows, cols, out);
}

static qplug_status unq_load(const qplug_host *host, const qplug_layer_desc *layer, void *state)
{
    qplug_unquantized__state *st = state;
    st->desc = *layer;
    switch (layer->kind) {
    case QPLUG_LAYER_ATTENTION:
        return QPLUG_OK;
    case QPLUG_LAYER_LINEAR:
    case QPLUG_LAYER_GROUPED_LINEAR:
        if (qplug_layer_num_shards(layer) > 0)
            return qplug__fuse_float_shards(host, layer, &st->owned, &st->w);
        if (is_fp8_modelopt(layer))
            return load_modelopt_fp8(host, st);
        return float_view(host, "weight", qplug__out_rows(layer), layer->k, &st->w);
    case QPLUG_LAYER_FUSED_MOE:
        return qplug__experts_load(host, layer, view_expert, NULL, &st->experts);
    }
    return QPLUG_ERR_UNSUPPORTED;
}

static void unq_release(const qplug_host *host, void *state)
{
    qplug_unquantized__state *st = state;
    host->api->free(host->ctx, st->experts, QPLUG_DEVICE_CPU);
    host->api->free(host->ctx, st->owned, QPLUG_DEVICE_CPU);
}

/* Nothing to quantize: both precisions compute with the exact weights. */
static qplug_status unq_cpu_apply(const qplug_host *host, void *state,
                                  const qplug_apply_args *args)
{
    qplug_unquantized__state *st = state;
    qplug__cpu_layer c = {.w = &st->w, .experts = st->experts, .mode = QPLUG__ACT_NONE};
    return qplug__cpu_forward(host, &st->desc, &c, args);
}

static size_t unq_kv_entry_bytes(const qplug_layer_desc *layer)
{
    return qplug__kv_bytes_f32(layer->k);
}

QPLUG__DEFINE_PLUGIN(unquantized,
                     "BF16/F16/F32 weights (and ModelOpt FP8 dequantized to F32), F32 KV cache",
                     unq_kv_entry_bytes, .score = unq_score, .declare = unq_declare,
                     .load = unq_load, .cpu_apply = unq_cpu_apply, .release = unq_release)
