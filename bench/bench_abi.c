/* bench_abi.c - the plugin side of `qplug bench`: layers built through the
 * real loader and host (qplug_registry_load_default, qplug_layer_create with
 * synthetic checkpoint tensors) and timed through qplug_layer_apply, so that
 * what is measured is exactly what a model's forward pass calls. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_abi.h"
#include "qplug/host.h"
#include "qplug/registry.h"

/* The host tensors of a synthetic MoE layer: one tensor per (matrix,
 * slot), shared by all experts (the plugin makes each expert its own device
 * copy, so the bytes read per expert are still distinct). */
typedef struct moe_src {
    qplug_tensor t[3][5];
    bool made[3][5];
    unsigned seed;
} moe_src;

static uint32_t xs32(uint32_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

/* Random bytes of one kind: E4M3 without NaN, E8M0 near 2^0, small
 * positive E4M3 scales, packed E2M1 (every byte is valid). */
static void fill_bytes(uint8_t *p, size_t n, qplug_dtype dt, const char *slot, unsigned seed)
{
    uint32_t s = seed * 2654435761u + 1u;
    bool scale = strstr(slot, "scale") != NULL;
    for (size_t i = 0; i < n; i++) {
        uint32_t r = xs32(&s);
        uint8_t b = (uint8_t)r;
        if (dt == QPLUG_DT_F8_E8M0)
            b = (uint8_t)(120 + r % 8);
        else if (dt == QPLUG_DT_F8_E4M3 && scale)
            b = (uint8_t)(0x30 + r % 16);
        else if (dt == QPLUG_DT_F8_E4M3 && (b & 0x7f) == 0x7f)
            b ^= 1;
        p[i] = b;
    }
}

/* One synthetic tensor for `slot` (weight, scale, weight_scale,
 * weight_scale_2, input_scale) of a rows x cols weight in scheme q, with
 * random contents drawn from seed (input_scale 1, weight_scale_2 0.0123).
 * False for a slot the scheme does not have, or no memory. */
static bool synth_tensor(qplug_quant_scheme q, const char *slot, int64_t rows, int64_t cols,
                         unsigned seed, qplug_tensor *out)
{
    qplug_tensor t;
    memset(&t, 0, sizeof t);
    t.ndim = 2;
    t.shape[0] = rows;
    t.device = QPLUG_DEVICE_CPU;
    bool nv = q == QPLUG_QUANT_NVFP4;
    if (!strcmp(slot, "weight")) {
        t.dtype = q == QPLUG_QUANT_FP8_BLOCK ? QPLUG_DT_F8_E4M3 : QPLUG_DT_U8;
        t.shape[1] = q == QPLUG_QUANT_FP8_BLOCK ? cols : cols / 2;
    } else if (!strcmp(slot, "scale") && q == QPLUG_QUANT_FP8_BLOCK) {
        t.dtype = QPLUG_DT_F8_E8M0;
        t.shape[0] = (rows + 127) / 128;
        t.shape[1] = (cols + 127) / 128;
    } else if (!strcmp(slot, "scale") && q == QPLUG_QUANT_MXFP4) {
        t.dtype = QPLUG_DT_F8_E8M0;
        t.shape[1] = cols / 32;
    } else if (nv && !strcmp(slot, "weight_scale")) {
        t.dtype = QPLUG_DT_F8_E4M3;
        t.shape[1] = cols / 16;
    } else if (nv && (!strcmp(slot, "weight_scale_2") || !strcmp(slot, "input_scale"))) {
        t.dtype = QPLUG_DT_F32;
        t.ndim = 0;
    } else {
        return false;
    }
    size_t bytes = t.ndim == 0 ? 4 : (size_t)(t.shape[0] * t.shape[1]);
    t.data = malloc(bytes);
    if (!t.data)
        return false;
    if (t.ndim == 0)
        *(float *)t.data = !strcmp(slot, "input_scale") ? 1.0f : 0.0123f;
    else
        fill_bytes(t.data, bytes, t.dtype, slot, seed);
    *out = t;
    return true;
}

const qplug_tensor *bench_synth_source(void *user, const qplug_layer_desc *l, const char *slot,
                                       const char **file)
{
    bench_synth *src = user;
    *file = "synthetic";
    for (int i = 0; i < src->count; i++)
        if (!strcmp(src->names[i], slot))
            return &src->t[i];
    if (src->count == 4)
        return NULL;
    int64_t rows = l->n * (l->kind == QPLUG_LAYER_GROUPED_LINEAR ? l->groups : 1);
    qplug_tensor t;
    if (!synth_tensor(l->quant, slot, rows, l->k, src->seed + (unsigned)src->count, &t))
        return NULL;
    snprintf(src->names[src->count], sizeof src->names[0], "%s", slot);
    t.name = src->names[src->count];
    src->t[src->count] = t;
    return &src->t[src->count++];
}

void bench_synth_free(bench_synth *src)
{
    for (int i = 0; i < src->count; i++)
        free(src->t[i].data);
    src->count = 0;
}

struct bench_abi {
    qplug_registry *reg;
    qplug_runtime *rt;
};

bench_abi *bench_abi_open(char *msg, size_t msg_size)
{
    bench_abi *b = calloc(1, sizeof *b);
    qplug_err err;
    memset(&err, 0, sizeof err);
    if (!b) {
        snprintf(msg, msg_size, "out of memory");
        return NULL;
    }
    if (qplug_registry_create(&b->reg, &err) || qplug_registry_load_default(b->reg, NULL, &err) ||
        qplug_runtime_create(NULL, QPLUG_DEVICE_CUDA, 0, &b->rt, &err)) {
        snprintf(msg, msg_size, "%s", err.msg);
        bench_abi_close(b);
        return NULL;
    }
    return b;
}

void bench_abi_close(bench_abi *b)
{
    if (!b)
        return;
    if (b->rt)
        qplug_runtime_destroy(b->rt);
    if (b->reg)
        qplug_registry_destroy(b->reg);
    free(b);
}

struct bench_abi_layers {
    qplug_layer_inst **l;
    int count;
    bench_synth src;
    struct moe_src *moe; /* MoE layers: their shared host tensors */
};

bench_abi_layers *bench_abi_create(bench_abi *b, const char *plugin, int64_t n, int64_t k,
                                   int64_t groups, int count, char *msg, size_t msg_size)
{
    const qplug_plugin *p = qplug_registry_find(b->reg, plugin);
    if (!p) {
        snprintf(msg, msg_size, "plugin %s is not in the plugin search path", plugin);
        return NULL;
    }
    bench_abi_layers *L = calloc(1, sizeof *L);
    if (!L || !(L->l = calloc((size_t)count, sizeof *L->l))) {
        free(L);
        snprintf(msg, msg_size, "out of memory");
        return NULL;
    }
    L->src.seed = 77;
    qplug_layer_desc d;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    d.name = groups > 1 ? "layers.0.attn.wo_a" : "layers.0.bench.linear";
    d.kind = groups > 1 ? QPLUG_LAYER_GROUPED_LINEAR : QPLUG_LAYER_LINEAR;
    d.quant = !strcmp(plugin, "fp8_block") ? QPLUG_QUANT_FP8_BLOCK
              : !strcmp(plugin, "mxfp4")   ? QPLUG_QUANT_MXFP4
                                           : QPLUG_QUANT_NVFP4;
    d.weight_dtype = d.quant == QPLUG_QUANT_FP8_BLOCK ? QPLUG_DT_F8_E4M3 : QPLUG_DT_U8;
    d.scale_dtype = d.quant == QPLUG_QUANT_NVFP4 ? QPLUG_DT_F8_E4M3 : QPLUG_DT_F8_E8M0;
    d.device = QPLUG_DEVICE_CUDA;
    d.n = n;
    d.k = k;
    d.groups = (int32_t)groups;
    if (p->score(&d) <= 0) {
        /* Not an error: e.g. mxfp4 claims no grouped linear (wo_a). */
        snprintf(msg, msg_size, "not claimed");
        bench_abi_destroy(L);
        return NULL;
    }
    for (int i = 0; i < count; i++) {
        qplug_err err;
        memset(&err, 0, sizeof err);
        if (qplug_layer_create(b->rt, p, &d, bench_synth_source, &L->src, &L->l[i], &err)) {
            snprintf(msg, msg_size, "%s", err.msg);
            bench_abi_destroy(L);
            return NULL;
        }
        L->count = i + 1;
    }
    return L;
}

void bench_abi_destroy(bench_abi_layers *L)
{
    if (!L)
        return;
    for (int i = 0; i < L->count; i++)
        qplug_layer_destroy(L->l[i]);
    bench_synth_free(&L->src);
    if (L->moe)
        for (int j = 0; j < 3; j++)
            for (int si = 0; si < 5; si++)
                if (L->moe->made[j][si])
                    free(L->moe->t[j][si].data);
    free(L->moe);
    free(L->l);
    free(L);
}

int bench_abi_apply(bench_abi_layers *L, int i, int64_t m, void *x, void *y, bool reference,
                    char *msg, size_t msg_size)
{
    const qplug_layer_desc *d = qplug_layer_desc_of(L->l[i % L->count]);
    int64_t G = d->kind == QPLUG_LAYER_GROUPED_LINEAR ? d->groups : 1;
    qplug_tensor tx, ty;
    memset(&tx, 0, sizeof tx);
    memset(&ty, 0, sizeof ty);
    tx.dtype = ty.dtype = QPLUG_DT_BF16;
    tx.ndim = ty.ndim = 2;
    tx.device = ty.device = QPLUG_DEVICE_CUDA;
    tx.shape[0] = ty.shape[0] = m;
    tx.shape[1] = G * d->k;
    ty.shape[1] = G * d->n;
    tx.data = x;
    ty.data = y;
    qplug_apply_args a;
    memset(&a, 0, sizeof a);
    a.struct_size = sizeof a;
    a.op = QPLUG_OP_FORWARD;
    a.precision = reference ? QPLUG_PRECISION_REFERENCE : QPLUG_PRECISION_NATIVE;
    a.x = &tx;
    a.y = &ty;
    qplug_err err;
    memset(&err, 0, sizeof err);
    if (qplug_layer_apply(L->l[i % L->count], &a, &err)) {
        snprintf(msg, msg_size, "%s", err.msg);
        return -1;
    }
    return 0;
}

/* The index of an expert slot name's tail, or -1. */
static int moe_slot_index(const char *tail)
{
    static const char *const names[5] = {"weight", "scale", "weight_scale", "weight_scale_2",
                                         "input_scale"};
    for (int i = 0; i < 5; i++)
        if (!strcmp(tail, names[i]))
            return i;
    return -1;
}

static const qplug_tensor *moe_source(void *user, const qplug_layer_desc *l, const char *slot,
                                      const char **file)
{
    moe_src *src = user;
    *file = "synthetic";
    int e = 0, wi = 0, off = 0;
    if (sscanf(slot, "experts.%d.w%d.%n", &e, &wi, &off) != 2 || off == 0 || wi < 1 || wi > 3)
        return NULL;
    const char *tail = slot + off;
    int j = wi == 1 ? 0 : wi == 3 ? 1 : 2;
    int si = moe_slot_index(tail);
    if (si < 0)
        return NULL;
    if (src->made[j][si])
        return &src->t[j][si];
    int64_t rows = j < 2 ? l->n : l->k, cols = j < 2 ? l->k : l->n;
    qplug_tensor t;
    if (!synth_tensor(l->quant, tail, rows, cols, src->seed + (unsigned)(4 * j + si), &t))
        return NULL;
    t.name = "synthetic expert tensor";
    src->t[j][si] = t;
    src->made[j][si] = true;
    return &src->t[j][si];
}

bench_abi_layers *bench_abi_moe_create(bench_abi *b, const char *plugin, bool nvfp4, int32_t E,
                                       int32_t top_k, int64_t D, int64_t I, bool fp4_act,
                                       size_t *expert_bytes, char *msg, size_t msg_size)
{
    const qplug_plugin *p = qplug_registry_find(b->reg, plugin);
    if (!p) {
        snprintf(msg, msg_size, "plugin %s is not in the plugin search path", plugin);
        return NULL;
    }
    bench_abi_layers *L = calloc(1, sizeof *L);
    moe_src *src = calloc(1, sizeof *src);
    if (!L || !src || !(L->l = calloc(1, sizeof *L->l))) {
        free(L ? L->l : NULL);
        free(L);
        free(src);
        snprintf(msg, msg_size, "out of memory");
        return NULL;
    }
    L->moe = src;
    src->seed = 91;
    qplug_layer_desc d;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    d.name = "layers.3.ffn.experts";
    d.kind = QPLUG_LAYER_FUSED_MOE;
    d.quant = !strcmp(plugin, "fp8_block") ? QPLUG_QUANT_FP8_BLOCK
              : !strcmp(plugin, "nvfp4") || nvfp4 ? QPLUG_QUANT_NVFP4
                                                  : QPLUG_QUANT_MXFP4;
    d.weight_dtype = d.quant == QPLUG_QUANT_FP8_BLOCK ? QPLUG_DT_F8_E4M3 : QPLUG_DT_U8;
    d.scale_dtype = d.quant == QPLUG_QUANT_NVFP4 ? QPLUG_DT_F8_E4M3 : QPLUG_DT_F8_E8M0;
    d.device = QPLUG_DEVICE_CUDA;
    d.n = I;
    d.k = D;
    d.groups = 1;
    d.num_experts = E;
    d.top_k = top_k;
    d.swiglu_limit = 10.0f;
    d.flags = fp4_act ? QPLUG_LAYER_FP4_ACTIVATIONS : 0;
    size_t per = (size_t)(3 * D * I);
    *expert_bytes = d.quant == QPLUG_QUANT_FP8_BLOCK ? per + per / (128 * 128) * 4
                    : d.quant == QPLUG_QUANT_MXFP4   ? per / 2 + per / 32
                                                     : per / 2 + per / 16 + 12;
    if (p->score(&d) <= 0) {
        snprintf(msg, msg_size, "not claimed");
        bench_abi_destroy(L);
        return NULL;
    }
    qplug_err err;
    memset(&err, 0, sizeof err);
    if (qplug_layer_create(b->rt, p, &d, moe_source, src, &L->l[0], &err)) {
        snprintf(msg, msg_size, "%s", err.msg);
        bench_abi_destroy(L);
        return NULL;
    }
    L->count = 1;
    return L;
}

int bench_abi_moe_apply(bench_abi_layers *L, int64_t m, void *x, void *y, void *ids,
                        void *weights, char *msg, size_t msg_size)
{
    const qplug_layer_desc *d = qplug_layer_desc_of(L->l[0]);
    qplug_tensor tx, ty, ti, tw;
    memset(&tx, 0, sizeof tx);
    tx.dtype = QPLUG_DT_BF16;
    tx.ndim = 2;
    tx.device = QPLUG_DEVICE_CUDA;
    tx.shape[0] = m;
    tx.shape[1] = d->k;
    ty = tx;
    tx.data = x;
    ty.data = y;
    ti = tx;
    ti.dtype = QPLUG_DT_I32;
    ti.shape[1] = d->top_k;
    ti.data = ids;
    tw = ti;
    tw.dtype = QPLUG_DT_F32;
    tw.data = weights;
    qplug_apply_args a;
    memset(&a, 0, sizeof a);
    a.struct_size = sizeof a;
    a.op = QPLUG_OP_FORWARD;
    a.precision = QPLUG_PRECISION_NATIVE;
    a.x = &tx;
    a.y = &ty;
    a.topk_ids = &ti;
    a.topk_weights = &tw;
    qplug_err err;
    memset(&err, 0, sizeof err);
    if (qplug_layer_apply(L->l[0], &a, &err)) {
        snprintf(msg, msg_size, "%s", err.msg);
        return -1;
    }
    return 0;
}
