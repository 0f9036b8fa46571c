/*
 * plugins/nvfp4/nvfp4.c - ModelOpt NVFP4: packed E2M1 weights, one E4M3
 * scale per 16 along k, an F32 global weight_scale_2 and an F32
 * input_scale, for linear, grouped linear and fused MoE (per-expert
 * tensors). Every shard keeps its own weight_scale_2 and input_scale, so
 * gate and up projections with different globals are each exact.
 *
 * Dequantization is w = e2m1 * weight_scale * weight_scale_2; input_scale
 * never touches the weights. Native precision quantizes activations to
 * E2M1 in groups of 16 with E4M3 scales against the global 1/input_scale
 * and multiplies the product by input_scale (the weights already carry
 * weight_scale_2, so the total factor is alpha = input_scale *
 * weight_scale_2). Reference precision uses fp32 activations.
 */
#include "nvfp4_internal.h"
#ifdef QPLUG_PLUGIN_CUDA
#include "nvfp4_cuda.h"
#endif

static int nv_score(const qplug_layer_desc *l)
{
    /* BF16 layers left inside an NVFP4 checkpoint go to unquantized. */
    if (!qplug__desc_sane(l) || l->quant != QPLUG_QUANT_NVFP4)
        return 0;
    switch (l->kind) {
    case QPLUG_LAYER_LINEAR:
    case QPLUG_LAYER_GROUPED_LINEAR:
        return l->k % 16 == 0 ? 100 : 0;
    case QPLUG_LAYER_FUSED_MOE:
        return l->k % 16 == 0 && l->n % 16 == 0 ? 100 : 0;
    case QPLUG_LAYER_ATTENTION:
        return 0;
    }
    return 0;
}

static qplug_status nv_declare(const qplug_host *host, const qplug_layer_desc *l)
{
    if (l->kind != QPLUG_LAYER_FUSED_MOE)
        return qplug__nvfp4_declare(host, "", qplug__out_rows(l), l->k);
    return qplug__experts_declare(host, l, qplug__fp4_expert_declare, (void *)l);
}

static qplug_status nv_load(const qplug_host *host, const qplug_layer_desc *layer, void *state)
{
    qplug_nvfp4__state *st = state;
    st->desc = *layer;
    if (layer->kind != QPLUG_LAYER_FUSED_MOE)
        return qplug__nvfp4_view(host, "", qplug__out_rows(layer), layer->k, &st->w);
    return qplug__experts_load(host, layer, qplug__fp4_expert_view, &st->desc, &st->experts);
}

static void nv_release(const qplug_host *host, void *state)
{
    qplug_nvfp4__state *st = state;
    host->api->free(host->ctx, st->experts, QPLUG_DEVICE_CPU);
}

static qplug_status nv_cpu_apply(const qplug_host *host, void *state,
                                 const qplug_apply_args *args)
{
    qplug_nvfp4__state *st = state;
    qplug__cpu_layer c = {
        .w = &st->w,
        .experts = st->experts,
        .mode = args->precision == QPLUG_PRECISION_NATIVE ? QPLUG__ACT_NVFP4 : QPLUG__ACT_NONE,
    };
    return qplug__cpu_forward(host, &st->desc, &c, args);
}

/* Linear and grouped linear take x pre-quantized to E4M3 with amax/448
 * scales: the activations of the CUDA path (W4A8 on Hopper, which has no
 * FP4 tensor cores), so there the result is bit-identical to the layer
 * quantizing x itself. The CPU native path quantizes activations to FP4
 * against input_scale instead; given x_scale it runs the W4A8 product of
 * the given codes (exact FP4 weights, fp32 sums per 128-block), which is
 * not its FP4-activation result. */
static qplug_act_format nv_act_format(const void *state)
{
    const qplug_nvfp4__state *st = state;
    return qplug__linear_act_format(&st->desc, QPLUG_ACT_FORMAT_E4M3_1X128_F32);
}

QPLUG__DEFINE_PLUGIN(nvfp4,
                     "ModelOpt NVFP4: E2M1 weights, E4M3 scales per 16, F32 global; FP4 "
                     "activations against input_scale",
                     NULL, .score = nv_score, .declare = nv_declare,
                     .load = nv_load, .cpu_apply = nv_cpu_apply, .release = nv_release,
                     .act_format = nv_act_format)
