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
#include <string.h>

#include "mxfp4_internal.h"

static const char *const W_NAMES[3] = {"w1", "w3", "w2"};

static bool cuda_built(void)
{
#ifdef QPLUG_PLUGIN_CUDA
    return true;
#else
    return false;
#endif
}

static int mx_score(const qplug_layer_desc *l)
{
    if (!qplug__desc_sane(l) || l->quant != QPLUG_QUANT_MXFP4)
        return 0;
    if (l->device == QPLUG_DEVICE_CUDA && !cuda_built())
        return 0;
    if (l->kind == QPLUG_LAYER_LINEAR)
        return l->k % 32 == 0 ? 100 : 0;
    if (l->kind == QPLUG_LAYER_FUSED_MOE)
        return l->k % 32 == 0 && l->n % 32 == 0 ? 100 : 0;
    return 0;
}

static qplug_status mx_create_weights(const qplug_host *host, const qplug_layer_desc *l)
{
    if (!mx_score(l))
        return host->api->error(host->ctx, QPLUG_ERR_UNSUPPORTED,
                                "mxfp4 cannot handle layer %s (kind %d, scheme %d)",
                                l->name ? l->name : "?", (int)l->kind, (int)l->quant);
    if (l->kind == QPLUG_LAYER_LINEAR)
        return qplug__mxfp4_declare(host, "", l->n, l->k);
    char prefix[64];
    for (int32_t e = 0; e < l->num_experts; e++)
        for (int w = 0; w < 3; w++) {
            qplug__expert_prefix(prefix, sizeof prefix, e, W_NAMES[w]);
            qplug_status st =
                qplug__mxfp4_declare(host, prefix, w < 2 ? l->n : l->k, w < 2 ? l->k : l->n);
            if (st)
                return st;
        }
    return QPLUG_OK;
}

static void mx_destroy(const qplug_host *host, void *state)
{
    qplug_mxfp4__state *st = state;
    if (!st)
        return;
#ifdef QPLUG_PLUGIN_CUDA
    if (st->cuda)
        qplug_mxfp4__cuda_release(host, st);
#endif
    host->api->free(host->ctx, st->experts, QPLUG_DEVICE_CPU);
    host->api->free(host->ctx, st, QPLUG_DEVICE_CPU);
}

static qplug_status mx_load(const qplug_host *host, qplug_mxfp4__state *st)
{
    const qplug_layer_desc *l = &st->desc;
    if (l->kind == QPLUG_LAYER_LINEAR)
        return qplug__mxfp4_view(host, "", l->n, l->k, &st->w);
    int32_t E = l->num_experts;
    st->experts = qplug__zalloc(host, (size_t)(3 * E) * sizeof(qplug__wmat));
    if (!st->experts)
        return host->api->error(host->ctx, QPLUG_ERR_NOMEM, "out of memory for %d experts",
                                (int)E);
    char prefix[64];
    for (int w = 0; w < 3; w++)
        for (int32_t e = 0; e < E; e++) {
            qplug__expert_prefix(prefix, sizeof prefix, e, W_NAMES[w]);
            qplug_status r = qplug__mxfp4_view(host, prefix, w < 2 ? l->n : l->k,
                                               w < 2 ? l->k : l->n, &st->experts[w * E + e]);
            if (r)
                return r;
        }
    return QPLUG_OK;
}

static qplug_status mx_process(const qplug_host *host, const qplug_layer_desc *layer,
                               void **state)
{
    *state = NULL;
    if (!mx_score(layer))
        return host->api->error(host->ctx, QPLUG_ERR_UNSUPPORTED, "mxfp4 cannot handle layer %s",
                                layer->name ? layer->name : "?");
    qplug_mxfp4__state *st = qplug__zalloc(host, sizeof *st);
    if (!st)
        return host->api->error(host->ctx, QPLUG_ERR_NOMEM, "out of memory for layer state");
    st->desc = *layer;
    qplug_status r = mx_load(host, st);
    if (!r && layer->device == QPLUG_DEVICE_CUDA) {
#ifdef QPLUG_PLUGIN_CUDA
        r = qplug_mxfp4__cuda_prepare(host, st);
#else
        r = host->api->error(host->ctx, QPLUG_ERR_UNSUPPORTED, "mxfp4 was built without CUDA");
#endif
    }
    if (r) {
        mx_destroy(host, st);
        return r;
    }
    *state = st;
    return QPLUG_OK;
}

static qplug_status mx_apply(const qplug_host *host, void *state, const qplug_apply_args *args)
{
    qplug_mxfp4__state *st = state;
    if (!st || !args)
        return host->api->error(host->ctx, QPLUG_ERR_ARGUMENT, "apply: no state or arguments");
    if ((args->x && args->x->device == QPLUG_DEVICE_CUDA) ||
        (args->y && args->y->device == QPLUG_DEVICE_CUDA)) {
#ifdef QPLUG_PLUGIN_CUDA
        if (st->cuda)
            return qplug_mxfp4__cuda_apply(host, st, args);
#endif
        return host->api->error(host->ctx, QPLUG_ERR_UNSUPPORTED,
                                "apply: CUDA tensors given to a layer loaded without a CUDA path");
    }
    const qplug_layer_desc *l = &st->desc;
    qplug__act_mode mode =
        args->precision == QPLUG_PRECISION_NATIVE ? QPLUG__ACT_FP8_UE8M0 : QPLUG__ACT_NONE;
    if (l->kind == QPLUG_LAYER_LINEAR)
        return qplug__linear_forward(host, l, &st->w, mode, false, args);
    int32_t E = l->num_experts;
    qplug__moe moe = {st->experts, st->experts + E, st->experts + 2 * E, mode, mode, false,
                      NULL, NULL, 0.0f};
    return qplug__moe_forward(host, l, &moe, args);
}

static const qplug_plugin mx_plugin = {
    .abi_version = QPLUG_ABI_VERSION,
    .struct_size = sizeof(qplug_plugin),
    .name = "mxfp4",
    .description = "MXFP4: E2M1 weights with E8M0 scales per 32; W4A8 (FP8 1x128 activations)",
#ifdef QPLUG_PLUGIN_CUDA
    .devices = (1u << QPLUG_DEVICE_CPU) | (1u << QPLUG_DEVICE_CUDA),
#else
    .devices = 1u << QPLUG_DEVICE_CPU,
#endif
    .score = mx_score,
    .create_weights = mx_create_weights,
    .process_after_loading = mx_process,
    .apply = mx_apply,
    .destroy = mx_destroy,
    .kv_entry_bytes = NULL,
};

QPLUG_EXPORT const qplug_plugin *qplug_plugin_entry(void)
{
    return &mx_plugin;
}
