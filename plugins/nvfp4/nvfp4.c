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
#include <stdio.h>
#include <string.h>

#include "nvfp4_internal.h"

static const char *const W_NAMES[3] = {"w1", "w3", "w2"};

static bool cuda_built(void)
{
#ifdef QPLUG_PLUGIN_CUDA
    return true;
#else
    return false;
#endif
}

static int nv_score(const qplug_layer_desc *l)
{
    /* BF16 layers left inside an NVFP4 checkpoint go to unquantized. */
    if (!qplug__desc_sane(l) || l->quant != QPLUG_QUANT_NVFP4)
        return 0;
    if (l->device == QPLUG_DEVICE_CUDA && !cuda_built())
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

static qplug_status nv_create_weights(const qplug_host *host, const qplug_layer_desc *l)
{
    if (!nv_score(l))
        return host->api->error(host->ctx, QPLUG_ERR_UNSUPPORTED,
                                "nvfp4 cannot handle layer %s (kind %d, scheme %d)",
                                l->name ? l->name : "?", (int)l->kind, (int)l->quant);
    if (l->kind != QPLUG_LAYER_FUSED_MOE)
        return qplug__nvfp4_declare(host, "", qplug__out_rows(l), l->k);
    char prefix[64];
    for (int32_t e = 0; e < l->num_experts; e++)
        for (int w = 0; w < 3; w++) {
            qplug__expert_prefix(prefix, sizeof prefix, e, W_NAMES[w]);
            qplug_status st = qplug__nvfp4_declare(host, prefix, w < 2 ? l->n : l->k, w < 2 ? l->k : l->n);
            if (st)
                return st;
        }
    return QPLUG_OK;
}

static void nv_destroy(const qplug_host *host, void *state)
{
    qplug_nvfp4__state *st = state;
    if (!st)
        return;
#ifdef QPLUG_PLUGIN_CUDA
    if (st->cuda)
        qplug_nvfp4__cuda_release(host, st);
#endif
    host->api->free(host->ctx, st->experts, QPLUG_DEVICE_CPU);
    host->api->free(host->ctx, st, QPLUG_DEVICE_CPU);
}

static qplug_status nv_load(const qplug_host *host, qplug_nvfp4__state *st)
{
    const qplug_layer_desc *l = &st->desc;
    if (l->kind != QPLUG_LAYER_FUSED_MOE)
        return qplug__nvfp4_view(host, "", qplug__out_rows(l), l->k, &st->w);
    int32_t E = l->num_experts;
    st->experts = qplug__zalloc(host, (size_t)(3 * E) * sizeof(qplug__wmat));
    if (!st->experts)
        return host->api->error(host->ctx, QPLUG_ERR_NOMEM, "out of memory for %d experts",
                                (int)E);
    char prefix[64];
    for (int w = 0; w < 3; w++)
        for (int32_t e = 0; e < E; e++) {
            qplug__expert_prefix(prefix, sizeof prefix, e, W_NAMES[w]);
            qplug_status r = qplug__nvfp4_view(host, prefix, w < 2 ? l->n : l->k, w < 2 ? l->k : l->n,
                                     &st->experts[w * E + e]);
            if (r)
                return r;
        }
    return QPLUG_OK;
}

static qplug_status nv_process(const qplug_host *host, const qplug_layer_desc *layer,
                               void **state)
{
    *state = NULL;
    if (!nv_score(layer))
        return host->api->error(host->ctx, QPLUG_ERR_UNSUPPORTED, "nvfp4 cannot handle layer %s",
                                layer->name ? layer->name : "?");
    qplug_nvfp4__state *st = qplug__zalloc(host, sizeof *st);
    if (!st)
        return host->api->error(host->ctx, QPLUG_ERR_NOMEM, "out of memory for layer state");
    st->desc = *layer;
    qplug_status r = nv_load(host, st);
    if (!r && layer->device == QPLUG_DEVICE_CUDA) {
#ifdef QPLUG_PLUGIN_CUDA
        r = qplug_nvfp4__cuda_prepare(host, st);
#else
        r = host->api->error(host->ctx, QPLUG_ERR_UNSUPPORTED, "nvfp4 was built without CUDA");
#endif
    }
    if (r) {
        nv_destroy(host, st);
        return r;
    }
    *state = st;
    return QPLUG_OK;
}

static qplug_status nv_apply(const qplug_host *host, void *state, const qplug_apply_args *args)
{
    qplug_nvfp4__state *st = state;
    if (!st || !args)
        return host->api->error(host->ctx, QPLUG_ERR_ARGUMENT, "apply: no state or arguments");
    if ((args->x && args->x->device == QPLUG_DEVICE_CUDA) ||
        (args->y && args->y->device == QPLUG_DEVICE_CUDA)) {
#ifdef QPLUG_PLUGIN_CUDA
        if (st->cuda)
            return qplug_nvfp4__cuda_apply(host, st, args);
#endif
        return host->api->error(host->ctx, QPLUG_ERR_UNSUPPORTED,
                                "apply: CUDA tensors given to a layer loaded without a CUDA path");
    }
    const qplug_layer_desc *l = &st->desc;
    qplug__act_mode mode =
        args->precision == QPLUG_PRECISION_NATIVE ? QPLUG__ACT_NVFP4 : QPLUG__ACT_NONE;
    if (l->kind != QPLUG_LAYER_FUSED_MOE)
        return qplug__linear_forward(host, l, &st->w, mode, false, args);
    int32_t E = l->num_experts;
    qplug__moe moe = {st->experts, st->experts + E, st->experts + 2 * E, mode, mode, false,
                      NULL, NULL, 0.0f};
    return qplug__moe_forward(host, l, &moe, args);
}

static const qplug_plugin nv_plugin = {
    .abi_version = QPLUG_ABI_VERSION,
    .struct_size = sizeof(qplug_plugin),
    .name = "nvfp4",
    .description = "ModelOpt NVFP4: E2M1 weights, E4M3 scales per 16, F32 global; FP4 "
                   "activations against input_scale",
#ifdef QPLUG_PLUGIN_CUDA
    .devices = (1u << QPLUG_DEVICE_CPU) | (1u << QPLUG_DEVICE_CUDA),
#else
    .devices = 1u << QPLUG_DEVICE_CPU,
#endif
    .score = nv_score,
    .create_weights = nv_create_weights,
    .process_after_loading = nv_process,
    .apply = nv_apply,
    .destroy = nv_destroy,
    .kv_entry_bytes = NULL,
};

QPLUG_EXPORT const qplug_plugin *qplug_plugin_entry(void)
{
    return &nv_plugin;
}
