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
#ifdef QPLUG_PLUGIN_CUDA
#include "w4a4_megamoe_cuda.h"
#endif

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
    if (l->quant == QPLUG_QUANT_MXFP4)
        return l->k % 32 == 0 && l->n % 32 == 0 ? 50 : 0;
    if (l->quant == QPLUG_QUANT_NVFP4)
        return l->k % 16 == 0 && l->n % 16 == 0 ? 50 : 0;
    return 0;
}

static qplug_status mm_declare(const qplug_host *host, const qplug_layer_desc *l)
{
    return qplug__experts_declare(host, l, qplug__fp4_expert_declare, (void *)l);
}

/* One expert module in the experts' format; NVFP4 w1/w3 input scales also
 * raise the dispatch scale to the largest of them. */
static qplug_status view_expert(const qplug_host *host, void *ctx, const char *prefix,
                                int which, int64_t rows, int64_t cols, qplug__wmat *out)
{
    qplug_w4a4_megamoe__state *st = ctx;
    qplug_status r = qplug__fp4_expert_view(host, &st->desc, prefix, which, rows, cols, out);
    if (!r && st->nvfp4 && which < 2 && out->input_scale > st->dispatch_gscale)
        st->dispatch_gscale = out->input_scale;
    return r;
}

static qplug_status mm_load(const qplug_host *host, const qplug_layer_desc *layer, void *state)
{
    qplug_w4a4_megamoe__state *st = state;
    st->desc = *layer;
    st->nvfp4 = layer->quant == QPLUG_QUANT_NVFP4;
    st->group = st->nvfp4 ? 16 : 32;
    const char *opt = host->api->option ? host->api->option(host->ctx, "megamoe",
                                                            "fp4_activations")
                                        : NULL;
    st->fp4_activations = (opt && strcmp(opt, "true") == 0) ||
                          (layer->flags & QPLUG_LAYER_FP4_ACTIVATIONS) != 0;
    return qplug__experts_load(host, layer, view_expert, st, &st->experts);
}

static void mm_release(const qplug_host *host, void *state)
{
    qplug_w4a4_megamoe__state *st = state;
    host->api->free(host->ctx, st->experts, QPLUG_DEVICE_CPU);
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
    /* No tokens: nothing to pack or route, and the tensors may have no
     * data to copy from. */
    if (m == 0)
        return QPLUG_OK;
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
        /* Copy only what the caller's struct holds: args from a 1.1 caller
         * end at `stream` (plugin.h), and the fields past it read as zero. */
        qplug_apply_args a;
        memset(&a, 0, sizeof a);
        memcpy(&a, args, args->struct_size < sizeof a ? args->struct_size : sizeof a);
        a.struct_size = sizeof a;
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

static qplug_status mm_cpu_apply(const qplug_host *host, void *state,
                                 const qplug_apply_args *args)
{
    qplug_w4a4_megamoe__state *st = state;
    bool native = args->precision == QPLUG_PRECISION_NATIVE;
    if (native && st->fp4_activations)
        return forward_fp4(host, st, args);
    qplug__cpu_layer c = {
        .experts = st->experts,
        .mode = !native    ? QPLUG__ACT_NONE
                : st->nvfp4 ? QPLUG__ACT_FP8
                            : QPLUG__ACT_FP8_UE8M0,
    };
    return qplug__cpu_forward(host, &st->desc, &c, args);
}

QPLUG__DEFINE_PLUGIN(w4a4_megamoe,
                     "fused MoE with FP4 experts and FP4 activations packed before dispatch "
                     "([megamoe] fp4_activations), else W4A8",
                     NULL, .score = mm_score, .declare = mm_declare,
                     .load = mm_load, .cpu_apply = mm_cpu_apply, .release = mm_release)
