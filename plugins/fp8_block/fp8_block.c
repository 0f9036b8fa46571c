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
#include <stdio.h>

#include "fp8_block_internal.h"
#ifdef QPLUG_PLUGIN_CUDA
#include "fp8_block_cuda.h"
#endif

#define SCALE_MASK (QPLUG_DT_BIT(QPLUG_DT_F32) | QPLUG_DT_BIT(QPLUG_DT_F8_E8M0))
#define E4M3_MASK QPLUG_DT_BIT(QPLUG_DT_F8_E4M3)

static int64_t tiles(int64_t v)
{
    return (v + QPLUG__FP8_BLOCK - 1) / QPLUG__FP8_BLOCK;
}

static int fp8_score(const qplug_layer_desc *l)
{
    if (!qplug__desc_sane(l))
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

/* One expert module: <prefix>weight and <prefix>scale. */
static qplug_status declare_expert(const qplug_host *host, void *ctx, const char *prefix,
                                   int64_t rows, int64_t cols)
{
    char ws[96], ss[96];
    snprintf(ws, sizeof ws, "%sweight", prefix);
    snprintf(ss, sizeof ss, "%sscale", prefix);
    return declare_block(host, ctx, ws, ss, rows, cols);
}

static qplug_status fp8_declare(const qplug_host *host, const qplug_layer_desc *l)
{
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
    case QPLUG_LAYER_FUSED_MOE:
        return qplug__experts_declare(host, l, declare_expert, (void *)l);
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

/* One expert module through block_view; every expert must use the same
 * scale kind as the first one, since one activation mode serves them all. */
static qplug_status view_expert(const qplug_host *host, void *ctx, const char *prefix,
                                int which, int64_t rows, int64_t cols, qplug__wmat *out)
{
    const qplug_fp8_block__state *st = ctx;
    char ws[96], ss[96];
    (void)which;
    snprintf(ws, sizeof ws, "%sweight", prefix);
    snprintf(ss, sizeof ss, "%sscale", prefix);
    qplug_status r = block_view(host, ws, ss, rows, cols, out);
    if (!r && out->scale_e8m0 != st->experts[0].scale_e8m0)
        r = host->api->error(host->ctx, QPLUG_ERR_DTYPE,
                             "tensor for slot %s: experts mix F32 and E8M0 scales", ss);
    return r;
}

static qplug_status fp8_load(const qplug_host *host, const qplug_layer_desc *layer,
                             void *state)
{
    qplug_fp8_block__state *st = state;
    st->desc = *layer;
    switch (layer->kind) {
    case QPLUG_LAYER_ATTENTION:
        return QPLUG_OK;
    case QPLUG_LAYER_LINEAR:
    case QPLUG_LAYER_GROUPED_LINEAR: {
        if (layer->quant == QPLUG_QUANT_FP8_TENSOR)
            return tensor_view(host, st);
        qplug_status r =
            block_view(host, "weight", "scale", qplug__out_rows(layer), layer->k, &st->w);
        st->ue8m0 = st->w.scale_e8m0;
        return r;
    }
    case QPLUG_LAYER_FUSED_MOE: {
        qplug_status r = qplug__experts_load(host, layer, view_expert, st, &st->experts);
        if (!r)
            st->ue8m0 = st->experts[0].scale_e8m0;
        return r;
    }
    }
    return QPLUG_ERR_UNSUPPORTED;
}

static void fp8_release(const qplug_host *host, void *state)
{
    qplug_fp8_block__state *st = state;
    host->api->free(host->ctx, st->experts, QPLUG_DEVICE_CPU);
    host->api->free(host->ctx, st->owned_scale, QPLUG_DEVICE_CPU);
}

static qplug_status fp8_cpu_apply(const qplug_host *host, void *state,
                                  const qplug_apply_args *args)
{
    qplug_fp8_block__state *st = state;
    bool native = args->precision == QPLUG_PRECISION_NATIVE;
    qplug__cpu_layer c = {
        .w = &st->w,
        .experts = st->experts,
        .mode = !native    ? QPLUG__ACT_NONE
                : st->ue8m0 ? QPLUG__ACT_FP8_UE8M0
                            : QPLUG__ACT_FP8,
        .fp8_split = native,
        .kv_fp8 = true,
    };
    return qplug__cpu_forward(host, &st->desc, &c, args);
}

/* Linear and grouped linear take x pre-quantized with the scale rule of
 * their own activation quantization: power-of-two scales next to E8M0
 * weight scales, amax/448 otherwise. */
static qplug_act_format fp8_act_format(const void *state)
{
    const qplug_fp8_block__state *st = state;
    return qplug__linear_act_format(&st->desc, st->ue8m0 ? QPLUG_ACT_FORMAT_E4M3_1X128_UE8M0
                                                         : QPLUG_ACT_FORMAT_E4M3_1X128_F32);
}

static size_t fp8_kv_entry_bytes(const qplug_layer_desc *layer)
{
    return qplug__kv_bytes_fp8(layer->k);
}

QPLUG__DEFINE_PLUGIN(fp8_block,
                     "FP8 E4M3 with 128x128 weight scales (F32 or E8M0), 1x128 activation "
                     "scales, FP8 KV cache",
                     fp8_kv_entry_bytes, .score = fp8_score, .declare = fp8_declare,
                     .load = fp8_load, .cpu_apply = fp8_cpu_apply, .release = fp8_release,
                     .act_format = fp8_act_format)
