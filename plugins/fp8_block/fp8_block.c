/*
 * plugins/fp8_block/fp8_block.c - DeepSeek FP8: E4M3 weights with one scale
 * per 128x128 tile (F32, or E8M0 kept as raw exponent bytes), for linear,
 * grouped linear (wo_a: the scale tiles follow the full [G*n, k] weight) and
 * fused MoE (Flash-Base experts); ModelOpt FP8 per-tensor linears converted
 * exactly to block form; and the FP8 KV cache (E4M3 with one F32 scale per
 * 128 channels of each entry).
 *
 * Native precision quantizes activations per token in groups of 128 along
 * k (scale amax/448, or the power of two 2^ceil(log2(amax/448)) when the
 * weight scales are E8M0), accumulates the integer-exact E4M3 products of
 * each 128-block in fp32 and scales the block sum by sa * sw. Reference
 * precision multiplies fp32 activations with the exactly dequantized
 * weights.
 */
#include <math.h>
#include <string.h>

#include "fp8_block_internal.h"

#define SCALE_MASK (QPLUG_DT_BIT(QPLUG_DT_F32) | QPLUG_DT_BIT(QPLUG_DT_F8_E8M0))
#define E4M3_MASK QPLUG_DT_BIT(QPLUG_DT_F8_E4M3)

static const char *const W_NAMES[3] = {"w1", "w3", "w2"};

static bool cuda_built(void)
{
#ifdef QPLUG_PLUGIN_CUDA
    return true;
#else
    return false;
#endif
}

static int64_t tiles(int64_t v)
{
    return (v + QPLUG__FP8_BLOCK - 1) / QPLUG__FP8_BLOCK;
}

static int fp8_score(const qplug_layer_desc *l)
{
    if (!qplug__desc_sane(l))
        return 0;
    if (l->device == QPLUG_DEVICE_CUDA && !cuda_built())
        return 0;
    switch (l->kind) {
    case QPLUG_LAYER_LINEAR:
    case QPLUG_LAYER_GROUPED_LINEAR:
        return l->quant == QPLUG_QUANT_FP8_BLOCK || l->quant == QPLUG_QUANT_FP8_TENSOR ? 100 : 0;
    case QPLUG_LAYER_FUSED_MOE:
        return l->quant == QPLUG_QUANT_FP8_BLOCK ? 100 : 0;
    case QPLUG_LAYER_ATTENTION:
        /* The FP8 KV-cache variant. */
        return l->quant == QPLUG_QUANT_FP8_BLOCK || l->quant == QPLUG_QUANT_FP8_TENSOR ? 100 : 0;
    }
    return 0;
}

static uint32_t scale_mask(const qplug_layer_desc *l)
{
    if (l->scale_dtype == QPLUG_DT_F32 || l->scale_dtype == QPLUG_DT_F8_E8M0)
        return QPLUG_DT_BIT(l->scale_dtype);
    return SCALE_MASK;
}

static qplug_status declare_block(const qplug_host *host, const qplug_layer_desc *l,
                                  const char *wslot, const char *sslot, int64_t rows,
                                  int64_t cols)
{
    qplug_status st = qplug__declare2(host, wslot, E4M3_MASK, rows, cols, 0);
    if (!st)
        st = qplug__declare2(host, sslot, scale_mask(l), tiles(rows), tiles(cols), 0);
    return st;
}

static qplug_status fp8_create_weights(const qplug_host *host, const qplug_layer_desc *l)
{
    if (!fp8_score(l))
        return host->api->error(host->ctx, QPLUG_ERR_UNSUPPORTED,
                                "fp8_block cannot handle layer %s (kind %d, scheme %d)",
                                l->name ? l->name : "?", (int)l->kind, (int)l->quant);
    switch (l->kind) {
    case QPLUG_LAYER_ATTENTION:
        return QPLUG_OK;
    case QPLUG_LAYER_LINEAR:
    case QPLUG_LAYER_GROUPED_LINEAR: {
        int64_t rows = qplug__out_rows(l);
        if (l->quant == QPLUG_QUANT_FP8_BLOCK)
            return declare_block(host, l, "weight", "scale", rows, l->k);
        qplug_status st = qplug__declare2(host, "weight", E4M3_MASK, rows, l->k, 0);
        if (!st)
            st = qplug__declare0(host, "weight_scale", QPLUG_DT_BIT(QPLUG_DT_F32), 0);
        /* ModelOpt's static input scale is replaced by dynamic 1x128
         * activation scales, which are at least as precise. */
        if (!st)
            st = qplug__declare0(host, "input_scale", QPLUG_DT_BIT(QPLUG_DT_F32),
                                 QPLUG_DECL_OPTIONAL);
        return st;
    }
    case QPLUG_LAYER_FUSED_MOE: {
        char ws[96], ss[96];
        for (int32_t e = 0; e < l->num_experts; e++)
            for (int w = 0; w < 3; w++) {
                qplug__expert_slot(ws, sizeof ws, e, W_NAMES[w], "weight");
                qplug__expert_slot(ss, sizeof ss, e, W_NAMES[w], "scale");
                qplug_status st = declare_block(host, l, ws, ss, w < 2 ? l->n : l->k,
                                                w < 2 ? l->k : l->n);
                if (st)
                    return st;
            }
        return QPLUG_OK;
    }
    }
    return QPLUG_ERR_UNSUPPORTED;
}

/* One E4M3 weight with its block-scale tensor. */
static qplug_status block_view(const qplug_host *host, const char *wslot, const char *sslot,
                               int64_t rows, int64_t cols, qplug__wmat *out)
{
    const qplug_tensor *w, *s;
    qplug_status st = qplug__need(host, wslot, &w);
    if (!st)
        st = qplug__need(host, sslot, &s);
    if (!st)
        st = qplug__wmat_from_tensor(host, wslot, w, QPLUG__W_FP8_BLOCK, rows, cols, out);
    if (st)
        return st;
    if ((s->dtype != QPLUG_DT_F32 && s->dtype != QPLUG_DT_F8_E8M0) || s->ndim != 2 ||
        s->shape[0] != tiles(rows) || s->shape[1] != tiles(cols))
        return host->api->error(host->ctx, QPLUG_ERR_SHAPE,
                                "tensor '%s' (slot %s) must be F32 or F8_E8M0 [%lld, %lld]",
                                s->name ? s->name : sslot, sslot, (long long)tiles(rows),
                                (long long)tiles(cols));
    out->scale = s->data;
    out->scale_e8m0 = s->dtype == QPLUG_DT_F8_E8M0;
    return QPLUG_OK;
}

/* ModelOpt FP8 per-tensor: every tile takes the tensor's scale, which is
 * exactly the same dequantization in block form. */
static qplug_status tensor_view(const qplug_host *host, qplug_fp8_block__state *st)
{
    const qplug_layer_desc *l = &st->desc;
    int64_t rows = qplug__out_rows(l);
    const qplug_tensor *w;
    float s;
    qplug_status r = qplug__need(host, "weight", &w);
    if (!r)
        r = qplug__wmat_from_tensor(host, "weight", w, QPLUG__W_FP8_BLOCK, rows, l->k, &st->w);
    if (!r)
        r = qplug__scalar(host, "weight_scale", &s);
    if (r)
        return r;
    size_t n = (size_t)(tiles(rows) * tiles(l->k));
    st->owned_scale = host->api->alloc(host->ctx, n * sizeof(float), QPLUG_DEVICE_CPU);
    if (!st->owned_scale)
        return host->api->error(host->ctx, QPLUG_ERR_NOMEM, "out of memory for block scales");
    for (size_t i = 0; i < n; i++)
        st->owned_scale[i] = s;
    st->w.scale = st->owned_scale;
    st->w.scale_e8m0 = false;
    return QPLUG_OK;
}

static void fp8_destroy(const qplug_host *host, void *state)
{
    qplug_fp8_block__state *st = state;
    if (!st)
        return;
#ifdef QPLUG_PLUGIN_CUDA
    if (st->cuda)
        qplug_fp8_block__cuda_release(host, st);
#endif
    host->api->free(host->ctx, st->experts, QPLUG_DEVICE_CPU);
    host->api->free(host->ctx, st->owned_scale, QPLUG_DEVICE_CPU);
    host->api->free(host->ctx, st, QPLUG_DEVICE_CPU);
}

static qplug_status fp8_load(const qplug_host *host, qplug_fp8_block__state *st)
{
    const qplug_layer_desc *l = &st->desc;
    switch (l->kind) {
    case QPLUG_LAYER_ATTENTION:
        return QPLUG_OK;
    case QPLUG_LAYER_LINEAR:
    case QPLUG_LAYER_GROUPED_LINEAR: {
        if (l->quant == QPLUG_QUANT_FP8_TENSOR)
            return tensor_view(host, st);
        qplug_status r = block_view(host, "weight", "scale", qplug__out_rows(l), l->k, &st->w);
        st->ue8m0 = st->w.scale_e8m0;
        return r;
    }
    case QPLUG_LAYER_FUSED_MOE: {
        int32_t E = l->num_experts;
        st->experts = qplug__zalloc(host, (size_t)(3 * E) * sizeof(qplug__wmat));
        if (!st->experts)
            return host->api->error(host->ctx, QPLUG_ERR_NOMEM, "out of memory for %d experts",
                                    (int)E);
        char ws[96], ss[96];
        for (int w = 0; w < 3; w++)
            for (int32_t e = 0; e < E; e++) {
                qplug__expert_slot(ws, sizeof ws, e, W_NAMES[w], "weight");
                qplug__expert_slot(ss, sizeof ss, e, W_NAMES[w], "scale");
                qplug__wmat *v = &st->experts[w * E + e];
                qplug_status r = block_view(host, ws, ss, w < 2 ? l->n : l->k,
                                            w < 2 ? l->k : l->n, v);
                if (r)
                    return r;
                if (v->scale_e8m0 != st->experts[0].scale_e8m0)
                    return host->api->error(host->ctx, QPLUG_ERR_DTYPE,
                                            "tensor for slot %s: experts mix F32 and E8M0 "
                                            "scales",
                                            ss);
            }
        st->ue8m0 = st->experts[0].scale_e8m0;
        return QPLUG_OK;
    }
    }
    return QPLUG_ERR_UNSUPPORTED;
}

static qplug_status fp8_process(const qplug_host *host, const qplug_layer_desc *layer,
                                void **state)
{
    *state = NULL;
    if (!fp8_score(layer))
        return host->api->error(host->ctx, QPLUG_ERR_UNSUPPORTED,
                                "fp8_block cannot handle layer %s",
                                layer->name ? layer->name : "?");
    qplug_fp8_block__state *st = qplug__zalloc(host, sizeof *st);
    if (!st)
        return host->api->error(host->ctx, QPLUG_ERR_NOMEM, "out of memory for layer state");
    st->desc = *layer;
    qplug_status r = fp8_load(host, st);
    if (!r && layer->device == QPLUG_DEVICE_CUDA) {
#ifdef QPLUG_PLUGIN_CUDA
        r = qplug_fp8_block__cuda_prepare(host, st);
#else
        r = host->api->error(host->ctx, QPLUG_ERR_UNSUPPORTED, "fp8_block was built without CUDA");
#endif
    }
    if (r) {
        fp8_destroy(host, st);
        return r;
    }
    *state = st;
    return QPLUG_OK;
}

static qplug_status fp8_apply(const qplug_host *host, void *state, const qplug_apply_args *args)
{
    qplug_fp8_block__state *st = state;
    if (!st || !args)
        return host->api->error(host->ctx, QPLUG_ERR_ARGUMENT, "apply: no state or arguments");
    if ((args->x && args->x->device == QPLUG_DEVICE_CUDA) ||
        (args->y && args->y->device == QPLUG_DEVICE_CUDA)) {
#ifdef QPLUG_PLUGIN_CUDA
        if (st->cuda)
            return qplug_fp8_block__cuda_apply(host, st, args);
#endif
        return host->api->error(host->ctx, QPLUG_ERR_UNSUPPORTED,
                                "apply: CUDA tensors given to a layer loaded without a CUDA path");
    }
    const qplug_layer_desc *l = &st->desc;
    bool native = args->precision == QPLUG_PRECISION_NATIVE;
    qplug__act_mode mode = !native ? QPLUG__ACT_NONE
                           : st->ue8m0 ? QPLUG__ACT_FP8_UE8M0
                                       : QPLUG__ACT_FP8;
    switch (l->kind) {
    case QPLUG_LAYER_ATTENTION:
        return qplug__kv_apply(host, l, true, args);
    case QPLUG_LAYER_LINEAR:
    case QPLUG_LAYER_GROUPED_LINEAR:
        return qplug__linear_forward(host, l, &st->w, mode, native, args);
    case QPLUG_LAYER_FUSED_MOE: {
        int32_t E = l->num_experts;
        qplug__moe moe = {st->experts, st->experts + E, st->experts + 2 * E, mode, mode, native,
                          NULL, NULL, 0.0f};
        return qplug__moe_forward(host, l, &moe, args);
    }
    }
    return QPLUG_ERR_UNSUPPORTED;
}

static size_t fp8_kv_entry_bytes(const qplug_layer_desc *layer)
{
    return qplug__kv_bytes_fp8(layer->k);
}

static const qplug_plugin fp8_plugin = {
    .abi_version = QPLUG_ABI_VERSION,
    .struct_size = sizeof(qplug_plugin),
    .name = "fp8_block",
    .description = "FP8 E4M3 with 128x128 weight scales (F32 or E8M0), 1x128 activation scales, "
                   "FP8 KV cache",
#ifdef QPLUG_PLUGIN_CUDA
    .devices = (1u << QPLUG_DEVICE_CPU) | (1u << QPLUG_DEVICE_CUDA),
#else
    .devices = 1u << QPLUG_DEVICE_CPU,
#endif
    .score = fp8_score,
    .create_weights = fp8_create_weights,
    .process_after_loading = fp8_process,
    .apply = fp8_apply,
    .destroy = fp8_destroy,
    .kv_entry_bytes = fp8_kv_entry_bytes,
};

QPLUG_EXPORT const qplug_plugin *qplug_plugin_entry(void)
{
    return &fp8_plugin;
}
