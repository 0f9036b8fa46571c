/*
 * plugins/mxfp4/mxfp4.c - MXFP4 (DeepSeek V4 Flash/Pro experts): packed
 * E2M1 weights with one E8M0 scale per 32 along k, for linear layers and
 * fused MoE.
 *
 * Native precision is W4A8 like the released kernels: activations are
 * quantized to E4M3 per token in groups of 128 with power-of-two (ue8m0)
 * scales, and the FP4 weight enters the product exactly (e2m1 * 2^e is an
 * E4M3-representable value times a power of two, so decoding it to fp32 is
 * the same exact cast). Reference precision uses fp32 activations.
 */
#include "mxfp4_internal.h"
#ifdef QPLUG_PLUGIN_CUDA
#include "mxfp4_cuda.h"
#endif

static int mx_score(const qplug_layer_desc *l)
{
    if (!qplug__desc_sane(l) || l->quant != QPLUG_QUANT_MXFP4)
        return 0;
    if (l->kind == QPLUG_LAYER_LINEAR)
        return l->k % 32 == 0 ? 100 : 0;
    if (l->kind == QPLUG_LAYER_FUSED_MOE)
        return l->k % 32 == 0 && l->n % 32 == 0 ? 100 : 0;
    return 0;
}

static qplug_status mx_declare(const qplug_host *host, const qplug_layer_desc *l)
{
    if (l->kind == QPLUG_LAYER_LINEAR)
        return qplug__mxfp4_declare(host, "", l->n, l->k);
    return qplug__experts_declare(host, l, qplug__fp4_expert_declare, (void *)l);
}

static qplug_status mx_load(const qplug_host *host, const qplug_layer_desc *layer, void *state)
{
    qplug_mxfp4__state *st = state;
    st->desc = *layer;
    if (layer->kind == QPLUG_LAYER_LINEAR)
        return qplug__mxfp4_view(host, "", layer->n, layer->k, &st->w);
    return qplug__experts_load(host, layer, qplug__fp4_expert_view, &st->desc, &st->experts);
}

static void mx_release(const qplug_host *host, void *state)
{
    qplug_mxfp4__state *st = state;
    host->api->free(host->ctx, st->experts, QPLUG_DEVICE_CPU);
}

static qplug_status mx_cpu_apply(const qplug_host *host, void *state,
                                 const qplug_apply_args *args)
{
    qplug_mxfp4__state *st = state;
    qplug__cpu_layer c = {
        .w = &st->w,
        .experts = st->experts,
        .mode = args->precision == QPLUG_PRECISION_NATIVE ? QPLUG__ACT_FP8_UE8M0 : QPLUG__ACT_NONE,
    };
    return qplug__cpu_forward(host, &st->desc, &c, args);
}

/* The W4A8 linear takes x pre-quantized with power-of-two scales, the rule
 * of its own activation quantization on CPU and CUDA. */
static qplug_act_format mx_act_format(const void *state)
{
    const qplug_mxfp4__state *st = state;
    return qplug__linear_act_format(&st->desc, QPLUG_ACT_FORMAT_E4M3_1X128_UE8M0);
}

QPLUG__DEFINE_PLUGIN(mxfp4,
                     "MXFP4: E2M1 weights with E8M0 scales per 32; W4A8 (FP8 1x128 activations)",
                     NULL, .score = mx_score, .declare = mx_declare,
                     .load = mx_load, .cpu_apply = mx_cpu_apply, .release = mx_release,
                     .act_format = mx_act_format)
