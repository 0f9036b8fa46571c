/*
 * plugins/w4a4_megamoe/w4a4_megamoe.c - fused MoE with FP4 experts (MXFP4
 * or NVFP4) and, when the deployment asks for it ([megamoe]
 * fp4_activations = true), FP4 activations packed before dispatch.
 *
 * It scores below mxfp4 and nvfp4, so only a policy rule selects it.
 *
 * FP4 mode: each token's hidden vector is quantized once to E2M1 in
 * groups (32 with E8M0 scales for MXFP4 experts, 16 with E4M3 scales
 * against one global for NVFP4) and packed into hidden/2 + hidden/group
 * bytes; the top-k ids travel as int32 beside it. The expert GEMMs read
 * their tokens' rows straight from that buffer. The SwiGLU output feeding
 * w2 is quantized the same way (NVFP4: against w2's input_scale).
 * MXFP4 activation groups take the smallest power-of-two scale with
 * amax/scale <= 6, so a group never saturates.
 *
 * Otherwise (the default) it computes exactly like the W4A8 path: FP8 1x128
 * activations with ue8m0 scales for MXFP4, F32 scales for NVFP4.
 */
#include <string.h>

#include "w4a4_megamoe_internal.h"

static const char *const W_NAMES[3] = {"w1", "w3", "w2"};

static bool cuda_built(void)
{
#ifdef QPLUG_PLUGIN_CUDA
    return true;
#else
    return false;
#endif
}

size_t qplug_w4a4_megamoe__dispatch_bytes(int64_t m, int64_t hidden, int32_t top_k, int group)
{
    size_t bpt = qplug__fp4_packed_bytes_per_token(hidden, group);
    if (!bpt || m < 0 || top_k < 1)
        return 0;
    return (size_t)m * (bpt + (size_t)top_k * (sizeof(int32_t) + sizeof(float)));
}

static int mm_score(const qplug_layer_desc *l)
{
    if (!qplug__desc_sane(l) || l->kind != QPLUG_LAYER_FUSED_MOE)
        return 0;
    if (l->device == QPLUG_DEVICE_CUDA && !cuda_built())
        return 0;
    if (l->quant == QPLUG_QUANT_MXFP4)
        return l->k % 32 == 0 && l->n % 32 == 0 ? 50 : 0;
    if (l->quant == QPLUG_QUANT_NVFP4)
        return l->k % 16 == 0 && l->n % 16 == 0 ? 50 : 0;
    return 0;
}

static qplug_status mm_create_weights(const qplug_host *host, const qplug_layer_desc *l)
{
    if (!mm_score(l))
        return host->api->error(host->ctx, QPLUG_ERR_UNSUPPORTED,
                                "w4a4_megamoe cannot handle layer %s (kind %d, scheme %d)",
                                l->name ? l->name : "?", (int)l->kind, (int)l->quant);
    char prefix[64];
    for (int32_t e = 0; e < l->num_experts; e++)
        for (int w = 0; w < 3; w++) {
            qplug__expert_prefix(prefix, sizeof prefix, e, W_NAMES[w]);
            int64_t rows = w < 2 ? l->n : l->k, cols = w < 2 ? l->k : l->n;
            qplug_status st = l->quant == QPLUG_QUANT_NVFP4
                                  ? qplug__nvfp4_declare(host, prefix, rows, cols)
                                  : qplug__mxfp4_declare(host, prefix, rows, cols);
            if (st)
                return st;
        }
    return QPLUG_OK;
}

static void mm_destroy(const qplug_host *host, void *state)
{
    qplug_w4a4_megamoe__state *st = state;
    if (!st)
        return;
#ifdef QPLUG_PLUGIN_CUDA
    if (st->cuda)
        qplug_w4a4_megamoe__cuda_release(host, st);
#endif
    host->api->free(host->ctx, st->experts, QPLUG_DEVICE_CPU);
    host->api->free(host->ctx, st, QPLUG_DEVICE_CPU);
}

static qplug_status mm_load(const qplug_host *host, qplug_w4a4_megamoe__state *st)
{
    const qplug_layer_desc *l = &st->desc;
    int32_t E = l->num_experts;
    st->experts = qplug__zalloc(host, (size_t)(3 * E) * sizeof(qplug__wmat));
    if (!st->experts)
        return host->api->error(host->ctx, QPLUG_ERR_NOMEM, "out of memory for %d experts",
                                (int)E);
    char prefix[64];
    for (int w = 0; w < 3; w++)
        for (int32_t e = 0; e < E; e++) {
            qplug__expert_prefix(prefix, sizeof prefix, e, W_NAMES[w]);
            int64_t rows = w < 2 ? l->n : l->k, cols = w < 2 ? l->k : l->n;
            qplug__wmat *v = &st->experts[w * E + e];
            qplug_status r = st->nvfp4 ? qplug__nvfp4_view(host, prefix, rows, cols, v)
                                       : qplug__mxfp4_view(host, prefix, rows, cols, v);
            if (r)
                return r;
            if (st->nvfp4 && w < 2 && v->input_scale > st->dispatch_gscale)
                st->dispatch_gscale = v->input_scale;
        }
    return QPLUG_OK;
}

static qplug_status mm_process(const qplug_host *host, const qplug_layer_desc *layer,
                               void **state)
{
    *state = NULL;
    if (!mm_score(layer))
        return host->api->error(host->ctx, QPLUG_ERR_UNSUPPORTED,
                                "w4a4_megamoe cannot handle layer %s",
                                layer->name ? layer->name : "?");
    qplug_w4a4_megamoe__state *st = qplug__zalloc(host, sizeof *st);
    if (!st)
        return host->api->error(host->ctx, QPLUG_ERR_NOMEM, "out of memory for layer state");
    st->desc = *layer;
    st->nvfp4 = layer->quant == QPLUG_QUANT_NVFP4;
    st->group = st->nvfp4 ? 16 : 32;
    const char *opt = host->api->option ? host->api->option(host->ctx, "megamoe",
                                                            "fp4_activations")
                                        : NULL;
    st->fp4_activations = (opt && strcmp(opt, "true") == 0) ||
                          (layer->flags & QPLUG_LAYER_FP4_ACTIVATIONS) != 0;
    qplug_status r = mm_load(host, st);
    if (!r && layer->device == QPLUG_DEVICE_CUDA) {
#ifdef QPLUG_PLUGIN_CUDA
        r = qplug_w4a4_megamoe__cuda_prepare(host, st);
#else
        r = host->api->error(host->ctx, QPLUG_ERR_UNSUPPORTED,
                             "w4a4_megamoe was built without CUDA");
#endif
    }
    if (r) {
        mm_destroy(host, st);
        return r;
    }
    *state = st;
    return QPLUG_OK;
}

/* The expert GEMMs' view of the dispatch buffer: rows are decoded from the
 * packed bytes of exactly the tokens routed to the expert. */
typedef struct packed_input {
    const qplug_w4a4_megamoe__state *st;
    const uint8_t *packed;
    size_t bpt;
} packed_input;

static qplug_status gather_packed(void *ctx, const int32_t *tok, int64_t cnt, float *v)
{
    const packed_input *p = ctx;
    int64_t D = p->st->desc.k;
    for (int64_t r = 0; r < cnt; r++)
        qplug__fp4_unpack_row(p->st->group, p->packed + (size_t)tok[r] * p->bpt, D, v + r * D);
    return QPLUG_OK;
}

static qplug_status forward_fp4(const qplug_host *host, qplug_w4a4_megamoe__state *st,
                                const qplug_apply_args *args)
{
    const qplug_layer_desc *l = &st->desc;
    qplug_status r = qplug__check_forward(host, l, args);
    if (r)
        return r;
    int64_t m = args->x->shape[0], D = l->k;
    int32_t K = l->top_k, E = l->num_experts;
    size_t bytes = qplug_w4a4_megamoe__dispatch_bytes(m, D, K, st->group);
    size_t bpt = qplug__fp4_packed_bytes_per_token(D, st->group);
    uint8_t *buf = host->api->alloc(host->ctx, bytes ? bytes : 1, QPLUG_DEVICE_CPU);
    if (!buf)
        return host->api->error(host->ctx, QPLUG_ERR_NOMEM,
                                "out of memory for the dispatch buffer of %lld tokens",
                                (long long)m);
    /* Pre-dispatch: packed activations, then int32 ids and the weights. */
    int32_t *ids = (int32_t *)(buf + (size_t)m * bpt);
    float *wts = (float *)(ids + m * K);
    r = qplug__fp4_pack(host, st->group, st->dispatch_gscale, args->x->data, m, D, D, buf);
    if (!r) {
        memcpy(ids, args->topk_ids->data, (size_t)(m * K) * sizeof(int32_t));
        memcpy(wts, args->topk_weights->data, (size_t)(m * K) * sizeof(float));
        qplug_tensor tid = *args->topk_ids, twt = *args->topk_weights;
        tid.data = ids;
        twt.data = wts;
        qplug_apply_args a = *args;
        a.topk_ids = &tid;
        a.topk_weights = &twt;
        packed_input pin = {st, buf, bpt};
        qplug__act_mode mode = st->nvfp4 ? QPLUG__ACT_NVFP4 : QPLUG__ACT_MXFP4;
        qplug__moe moe = {st->experts, st->experts + E, st->experts + 2 * E, mode, mode, false,
                          gather_packed, &pin, st->nvfp4 ? st->dispatch_gscale : 1.0f};
        r = qplug__moe_forward(host, l, &moe, &a);
    }
    host->api->free(host->ctx, buf, QPLUG_DEVICE_CPU);
    return r;
}

static qplug_status mm_apply(const qplug_host *host, void *state, const qplug_apply_args *args)
{
    qplug_w4a4_megamoe__state *st = state;
    if (!st || !args)
        return host->api->error(host->ctx, QPLUG_ERR_ARGUMENT, "apply: no state or arguments");
    if ((args->x && args->x->device == QPLUG_DEVICE_CUDA) ||
        (args->y && args->y->device == QPLUG_DEVICE_CUDA)) {
#ifdef QPLUG_PLUGIN_CUDA
        if (st->cuda)
            return qplug_w4a4_megamoe__cuda_apply(host, st, args);
#endif
        return host->api->error(host->ctx, QPLUG_ERR_UNSUPPORTED,
                                "apply: CUDA tensors given to a layer loaded without a CUDA path");
    }
    const qplug_layer_desc *l = &st->desc;
    int32_t E = l->num_experts;
    bool native = args->precision == QPLUG_PRECISION_NATIVE;
    if (native && st->fp4_activations)
        return forward_fp4(host, st, args);
    qplug__act_mode mode = !native     ? QPLUG__ACT_NONE
                           : st->nvfp4 ? QPLUG__ACT_FP8
                                       : QPLUG__ACT_FP8_UE8M0;
    qplug__moe moe = {st->experts, st->experts + E, st->experts + 2 * E, mode, mode, false,
                      NULL, NULL, 0.0f};
    return qplug__moe_forward(host, l, &moe, args);
}

static const qplug_plugin mm_plugin = {
    .abi_version = QPLUG_ABI_VERSION,
    .struct_size = sizeof(qplug_plugin),
    .name = "w4a4_megamoe",
    .description = "fused MoE with FP4 experts and FP4 activations packed before dispatch "
                   "([megamoe] fp4_activations), else W4A8",
#ifdef QPLUG_PLUGIN_CUDA
    .devices = (1u << QPLUG_DEVICE_CPU) | (1u << QPLUG_DEVICE_CUDA),
#else
    .devices = 1u << QPLUG_DEVICE_CPU,
#endif
    .score = mm_score,
    .create_weights = mm_create_weights,
    .process_after_loading = mm_process,
    .apply = mm_apply,
    .destroy = mm_destroy,
    .kv_entry_bytes = NULL,
};

QPLUG_EXPORT const qplug_plugin *qplug_plugin_entry(void)
{
    return &mm_plugin;
}
