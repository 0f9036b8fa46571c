/*
 * The DeepSeek V4 layer inventory: which layers exist (from the config),
 * what their tensors hold (from the safetensors headers), and where each
 * official tensor name lives in the checkpoint (official or transformers
 * naming, MTP included, HF stacked experts presented per expert).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "names.h"
#include "qplug/inventory.h"

/* MTP blocks looked for; DeepSeek V4 ships one. */
#define QPLUG__MAX_MTP 8

/* Per-expert views of one HF stacked MoE layer, made on first use. */
typedef struct qplug__views {
    size_t layer;                  /* index into inv->layers */
    int64_t experts;
    qplug_tensor *t;               /* [experts][3]: w1, w3, w2 */
    char (*names)[192];
} qplug__views;

struct qplug__inv_private {
    uint8_t *used;                 /* one flag per checkpoint tensor */
    size_t n_ckpt;
    char mtp_prefix[QPLUG__MAX_MTP][64];
    const char *mtp_ptr[QPLUG__MAX_MTP];
    qplug__views *views;
    size_t n_views;
    size_t cap_layers, cap_tensors;
};

/* ------------------------------------------------------------------ names */

/* Copies a name that may be cut short (names in messages only). */
static void qplug__copy(char *dst, size_t size, const char *src)
{
    size_t n = strlen(src);
    if (n >= size)
        n = size - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

bool qplug_inventory_ckpt_name(const qplug_inventory *inv, const char *official_name, char *buf,
                               size_t size)
{
    if (inv->naming == QPLUG_NAMING_OFFICIAL) {
        int w = snprintf(buf, size, "%s", official_name);
        return w >= 0 && (size_t)w < size;
    }
    return qplug__names_to_hf(official_name, (long)inv->cfg->num_hidden_layers,
                              inv->priv ? inv->priv->mtp_ptr : NULL,
                              inv->priv ? inv->n_mtp : 0, buf, size);
}

/* Checkpoint index of an official tensor name, or -1; ckname receives the
 * checkpoint-side name (for messages). */
static long qplug__lookup(const qplug_inventory *inv, const char *official, char *ckname,
                          size_t size)
{
    if (!qplug_inventory_ckpt_name(inv, official, ckname, size)) {
        if (size)
            snprintf(ckname, size, "%s", official);
        return -1;
    }
    if (!inv->ckpt)
        return -1;
    return qplug_ckpt_lookup(inv->ckpt, ckname);
}

/* ------------------------------------------------------------- building */

static qplug_status qplug__push_layer(qplug_inventory *inv, qplug_err *err,
                                      qplug_inv_layer **out)
{
    qplug__inv_private *p = inv->priv;
    if (inv->n_layers == p->cap_layers) {
        size_t cap = p->cap_layers ? p->cap_layers * 2 : 64;
        qplug_inv_layer *l = realloc(inv->layers, cap * sizeof *l);
        if (!l)
            return qplug_err_set(err, QPLUG_ERR_NOMEM, "inventory: out of memory");
        inv->layers = l;
        p->cap_layers = cap;
    }
    *out = &inv->layers[inv->n_layers++];
    memset(*out, 0, sizeof **out);
    return QPLUG_OK;
}

static qplug_status qplug__add_layer(qplug_inventory *inv, int block, const char *prefix,
                                     const char *path, qplug_layer_kind kind, int64_t n,
                                     int64_t k, qplug_device_kind dev, qplug_err *err)
{
    qplug_inv_layer *l = NULL;
    qplug_status st = qplug__push_layer(inv, err, &l);
    if (st != QPLUG_OK)
        return st;
    int w = snprintf(l->name, sizeof l->name, "%s%s%s", prefix, path[0] ? "." : "", path);
    if (w < 0 || (size_t)w >= sizeof l->name)
        return qplug_err_set(err, QPLUG_ERR_INTERNAL, "inventory: layer name %s.%s too long",
                             prefix, path);
    l->block = block;
    l->desc.struct_size = sizeof l->desc;
    l->desc.kind = kind;
    l->desc.n = n;
    l->desc.k = k;
    l->desc.groups = 1;
    l->desc.device = dev;
    l->desc.weight_dtype = QPLUG_DT_BF16;
    l->desc.scale_dtype = QPLUG_DT_F32;
    return QPLUG_OK;
}

static qplug_status qplug__add_tensor(qplug_inventory *inv, int block, const char *prefix,
                                      const char *path, bool required, qplug_err *err)
{
    qplug__inv_private *p = inv->priv;
    if (inv->n_tensors == p->cap_tensors) {
        size_t cap = p->cap_tensors ? p->cap_tensors * 2 : 128;
        qplug_inv_tensor *t = realloc(inv->tensors, cap * sizeof *t);
        if (!t)
            return qplug_err_set(err, QPLUG_ERR_NOMEM, "inventory: out of memory");
        inv->tensors = t;
        p->cap_tensors = cap;
    }
    qplug_inv_tensor *t = &inv->tensors[inv->n_tensors++];
    memset(t, 0, sizeof *t);
    int w = snprintf(t->name, sizeof t->name, "%s%s%s", prefix, prefix[0] ? "." : "", path);
    if (w < 0 || (size_t)w >= sizeof t->name)
        return qplug_err_set(err, QPLUG_ERR_INTERNAL, "inventory: tensor name %s.%s too long",
                             prefix, path);
    t->block = block;
    t->required = required;
    long idx = qplug__lookup(inv, t->name, t->ckpt_name, sizeof t->ckpt_name);
    t->present = idx >= 0;
    if (inv->ckpt && required && !t->present) {
        if (inv->naming == QPLUG_NAMING_HF)
            return qplug_err_set(err, QPLUG_ERR_NOT_FOUND,
                                 "checkpoint %s: required tensor '%s' (official '%s') is missing",
                                 qplug_ckpt_dir(inv->ckpt), t->ckpt_name, t->name);
        return qplug_err_set(err, QPLUG_ERR_NOT_FOUND,
                             "checkpoint %s: required tensor '%s' is missing",
                             qplug_ckpt_dir(inv->ckpt), t->name);
    }
    return QPLUG_OK;
}

/* A compressor's two shards, `half` rows each: kv first, then the gate
 * (the official tensor names "wkv" and "wgate" under the compressor). */
static void qplug__kvgate_shards(qplug_layer_desc *d, int64_t half)
{
    d->num_shards = 2;
    d->shard_names[0] = "wkv";
    d->shard_names[1] = "wgate";
    d->shard_n[0] = half;
    d->shard_n[1] = half;
}

/* Every layer and non-plugin tensor of one block ("layers.N" or "mtp.i"). */
static qplug_status qplug__add_block(qplug_inventory *inv, int block, bool mtp, int ratio,
                                     bool hash, qplug_device_kind dev, qplug_err *err)
{
    const qplug_model_config *c = inv->cfg;
    char pre[32];
    snprintf(pre, sizeof pre, mtp ? "mtp.%d" : "layers.%d",
             mtp ? block - (int)c->num_hidden_layers : block);
    int64_t D = c->hidden_size, H = c->num_attention_heads, hd = c->head_dim;
    int64_t G = c->o_groups, R = c->o_lora_rank, ql = c->q_lora_rank;
    int64_t I = c->moe_intermediate_size;
    int64_t ihd = c->index_head_dim, inh = c->index_n_heads;
    qplug_status st;

#define QPLUG__L(path, kind, n, k)                                                                 \
    do {                                                                                           \
        st = qplug__add_layer(inv, block, pre, path, kind, n, k, dev, err);                        \
        if (st != QPLUG_OK)                                                                        \
            return st;                                                                             \
    } while (0)
#define QPLUG__T(path, req)                                                                        \
    do {                                                                                           \
        st = qplug__add_tensor(inv, block, pre, path, req, err);                                   \
        if (st != QPLUG_OK)                                                                        \
            return st;                                                                             \
    } while (0)

    QPLUG__L("attn.wq_a", QPLUG_LAYER_LINEAR, ql, D);
    QPLUG__L("attn.wq_b", QPLUG_LAYER_LINEAR, H * hd, ql);
    QPLUG__L("attn.wkv", QPLUG_LAYER_LINEAR, hd, D);
    QPLUG__L("attn.wo_a", QPLUG_LAYER_GROUPED_LINEAR, R, H * hd / G);
    inv->layers[inv->n_layers - 1].desc.groups = (int32_t)G;
    QPLUG__L("attn.wo_b", QPLUG_LAYER_LINEAR, D, G * R);
    QPLUG__L("attn", QPLUG_LAYER_ATTENTION, hd, hd);
    /* Each compressor is one projection [wkv rows | wgate rows] that the
     * checkpoint stores as two tensors; its plugin fuses them, so the
     * forward pass makes one call per compressor. */
    if (ratio == 4 || ratio == 128) {
        int64_t cw = (ratio == 4 ? 2 : 1) * hd;
        QPLUG__L("attn.compressor", QPLUG_LAYER_LINEAR, 2 * cw, D);
        qplug__kvgate_shards(&inv->layers[inv->n_layers - 1].desc, cw);
    }
    if (ratio == 4) {
        QPLUG__L("attn.indexer.wq_b", QPLUG_LAYER_LINEAR, inh * ihd, ql);
        QPLUG__L("attn.indexer.weights_proj", QPLUG_LAYER_LINEAR, inh, D);
        QPLUG__L("attn.indexer.compressor", QPLUG_LAYER_LINEAR, 4 * ihd, D);
        qplug__kvgate_shards(&inv->layers[inv->n_layers - 1].desc, 2 * ihd);
    }
    if (c->n_shared_experts > 0) {
        int64_t si = I * c->n_shared_experts;
        QPLUG__L("ffn.shared_experts.w1", QPLUG_LAYER_LINEAR, si, D);
        QPLUG__L("ffn.shared_experts.w3", QPLUG_LAYER_LINEAR, si, D);
        QPLUG__L("ffn.shared_experts.w2", QPLUG_LAYER_LINEAR, D, si);
    }
    QPLUG__L("ffn.experts", QPLUG_LAYER_FUSED_MOE, I, D);
    {
        qplug_layer_desc *d = &inv->layers[inv->n_layers - 1].desc;
        d->num_experts = (int32_t)c->n_routed_experts;
        d->top_k = (int32_t)c->num_experts_per_tok;
        d->swiglu_limit = (float)c->swiglu_limit;
    }
    if (mtp) {
        QPLUG__L("e_proj", QPLUG_LAYER_LINEAR, D, D);
        QPLUG__L("h_proj", QPLUG_LAYER_LINEAR, D, D);
    }

    QPLUG__T("attn_norm.weight", true);
    QPLUG__T("ffn_norm.weight", true);
    QPLUG__T("hc_attn_fn", true);
    QPLUG__T("hc_attn_base", true);
    QPLUG__T("hc_attn_scale", true);
    QPLUG__T("hc_ffn_fn", true);
    QPLUG__T("hc_ffn_base", true);
    QPLUG__T("hc_ffn_scale", true);
    QPLUG__T("attn.attn_sink", true);
    QPLUG__T("attn.q_norm.weight", true);
    QPLUG__T("attn.kv_norm.weight", true);
    if (ratio == 4 || ratio == 128) {
        QPLUG__T("attn.compressor.ape", true);
        QPLUG__T("attn.compressor.norm.weight", true);
    }
    if (ratio == 4) {
        QPLUG__T("attn.indexer.compressor.ape", true);
        QPLUG__T("attn.indexer.compressor.norm.weight", true);
    }
    QPLUG__T("ffn.gate.weight", true);
    if (hash)
        QPLUG__T("ffn.gate.tid2eid", true);
    else
        QPLUG__T("ffn.gate.bias", true);
    if (mtp) {
        QPLUG__T("enorm.weight", true);
        QPLUG__T("hnorm.weight", true);
        QPLUG__T("norm.weight", true);
        QPLUG__T("hc_head_fn", true);
        QPLUG__T("hc_head_base", true);
        QPLUG__T("hc_head_scale", true);
    }
#undef QPLUG__L
#undef QPLUG__T
    return QPLUG_OK;
}

static qplug_status qplug__check_config(const qplug_model_config *c, qplug_err *err)
{
    const struct {
        const char *key;
        int64_t v;
    } req[] = {
        {"hidden_size", c->hidden_size},
        {"num_hidden_layers", c->num_hidden_layers},
        {"num_attention_heads", c->num_attention_heads},
        {"head_dim", c->head_dim},
        {"q_lora_rank", c->q_lora_rank},
        {"o_groups", c->o_groups},
        {"o_lora_rank", c->o_lora_rank},
        {"n_routed_experts", c->n_routed_experts},
        {"num_experts_per_tok", c->num_experts_per_tok},
        {"moe_intermediate_size", c->moe_intermediate_size},
    };
    for (size_t i = 0; i < sizeof req / sizeof req[0]; i++)
        if (req[i].v <= 0)
            return qplug_err_set(err, QPLUG_ERR_CONFIG, "%s: key %s must be positive (is %lld)",
                                 c->source, req[i].key, (long long)req[i].v);
    if (c->num_hidden_layers + (c->num_nextn_predict_layers > 0 ? c->num_nextn_predict_layers : 0) >
        QPLUG_MAX_LAYERS)
        return qplug_err_set(err, QPLUG_ERR_CONFIG, "%s: key num_hidden_layers: %lld layers (+%lld "
                             "MTP) exceed the limit of %d",
                             c->source, (long long)c->num_hidden_layers,
                             (long long)c->num_nextn_predict_layers, QPLUG_MAX_LAYERS);
    if ((c->num_attention_heads * c->head_dim) % c->o_groups)
        return qplug_err_set(err, QPLUG_ERR_CONFIG,
                             "%s: key o_groups: %lld does not divide num_attention_heads*head_dim",
                             c->source, (long long)c->o_groups);
    /* Each key is bounded by the config parser, but their products size the
     * plugins' allocations: refuse any product above 2^40 / 3 elements
     * (the experts' three matrices of one layer together then stay below
     * 2^40; V4-Pro's largest product, one of its expert matrices, is about
     * 2^33). The parser's bounds (vocab_size below 2^31, the other factors
     * at most 2^20 or 2^16) keep every product below 2^57, so none of them
     * overflows int64. */
    int64_t qdim = c->num_attention_heads * c->head_dim;
    const struct {
        const char *what;
        int64_t elems;
    } big[] = {
        {"vocab_size * hidden_size (embedding)", c->vocab_size * c->hidden_size},
        {"num_attention_heads * head_dim * q_lora_rank (wq_b)", qdim * c->q_lora_rank},
        {"num_attention_heads * head_dim * o_lora_rank (wo_a)", qdim * c->o_lora_rank},
        {"hidden_size * o_groups * o_lora_rank (wo_b)", c->hidden_size * c->o_groups * c->o_lora_rank},
        {"n_routed_experts * moe_intermediate_size * hidden_size (experts)",
         c->n_routed_experts * c->moe_intermediate_size * c->hidden_size},
    };
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++)
        if (big[i].elems > (INT64_C(1) << 40) / 3)
            return qplug_err_set(err, QPLUG_ERR_CONFIG,
                                 "%s: %s = %lld elements exceeds the limit of 2^40 / 3 per layer",
                                 c->source, big[i].what, (long long)big[i].elems);
    if (c->num_experts_per_tok > c->n_routed_experts)
        return qplug_err_set(err, QPLUG_ERR_CONFIG,
                             "%s: key num_experts_per_tok: %lld exceeds n_routed_experts %lld",
                             c->source, (long long)c->num_experts_per_tok,
                             (long long)c->n_routed_experts);
    return QPLUG_OK;
}

/* True if some checkpoint tensor name starts with `prefix`. */
static bool qplug__has_prefix(const qplug_ckpt *ck, const char *prefix)
{
    size_t n = qplug_ckpt_count(ck), len = strlen(prefix);
    for (size_t i = 0; i < n; i++) {
        const qplug_tensor *t = qplug_ckpt_tensor(ck, i);
        if (t && t->name && !strncmp(t->name, prefix, len))
            return true;
    }
    return false;
}

static qplug_status qplug__detect_naming(qplug_inventory *inv, qplug_err *err)
{
    const qplug_ckpt *ck = inv->ckpt;
    size_t n = qplug_ckpt_count(ck), hf = 0, off = 0;
    const char *first_hf = NULL, *first_off = NULL;
    for (size_t i = 0; i < n; i++) {
        const char *name = qplug_ckpt_tensor(ck, i)->name;
        if (!name)
            continue;
        if (!strncmp(name, "model.", 6) || !strncmp(name, "lm_head.", 8)) {
            hf++;
            first_hf = first_hf ? first_hf : name;
        } else if (!strncmp(name, "layers.", 7) || !strncmp(name, "embed.", 6) ||
                   !strncmp(name, "head.", 5)) {
            off++;
            first_off = first_off ? first_off : name;
        }
    }
    if (hf && off)
        return qplug_err_set(err, QPLUG_ERR_FORMAT,
                             "checkpoint %s: mixes transformers names ('%s') with official names "
                             "('%s')",
                             qplug_ckpt_dir(ck), first_hf, first_off);
    if (!hf && !off)
        return qplug_err_set(err, QPLUG_ERR_FORMAT,
                             "checkpoint %s: no tensor follows the official ('layers.N.') or the "
                             "transformers ('model.') naming",
                             qplug_ckpt_dir(ck));
    inv->naming = hf ? QPLUG_NAMING_HF : QPLUG_NAMING_OFFICIAL;
    return QPLUG_OK;
}

/*
 * MTP blocks present. Official checkpoints use "mtp.i."; transformers
 * itself drops MTP weights, so exports name them either as an appended
 * layer "model.layers.{L+i}." (as engines do) or keep "model.mtp.i." /
 * "mtp.i."; the first that exists wins.
 */
static void qplug__detect_mtp(qplug_inventory *inv)
{
    const qplug_model_config *c = inv->cfg;
    qplug__inv_private *p = inv->priv;
    long want = c->num_nextn_predict_layers > QPLUG__MAX_MTP ? QPLUG__MAX_MTP
                                                             : (long)c->num_nextn_predict_layers;
    inv->n_mtp = 0;
    for (long i = 0; i < want; i++) {
        /* Candidates carry their trailing dot for the prefix scan. */
        char cand[3][48];
        int nc = 0;
        if (inv->naming == QPLUG_NAMING_OFFICIAL) {
            snprintf(cand[nc++], sizeof cand[0], "mtp.%ld.", i);
        } else {
            snprintf(cand[nc++], sizeof cand[0], "model.layers.%ld.",
                     (long)c->num_hidden_layers + i);
            snprintf(cand[nc++], sizeof cand[0], "model.mtp.%ld.", i);
            snprintf(cand[nc++], sizeof cand[0], "mtp.%ld.", i);
        }
        int found = -1;
        for (int j = 0; j < nc && found < 0; j++)
            if (!inv->ckpt || qplug__has_prefix(inv->ckpt, cand[j]))
                found = j;
        if (found < 0)
            break;
        size_t len = strlen(cand[found]) - 1;
        memcpy(p->mtp_prefix[i], cand[found], len);
        p->mtp_prefix[i][len] = '\0';
        p->mtp_ptr[i] = p->mtp_prefix[i];
        inv->n_mtp = (int)i + 1;
    }
    inv->has_mtp = inv->n_mtp > 0;
}

/* --------------------------------------------------------- storage scan */

static int64_t qplug__cdiv(int64_t a, int64_t b)
{
    return (a + b - 1) / b;
}

static bool qplug__shape2(const qplug_tensor *t, int64_t a, int64_t b)
{
    return t->ndim == 2 && t->shape[0] == a && t->shape[1] == b;
}

static const qplug_tensor *qplug__find(const qplug_inventory *inv, const char *official,
                                       char *ckname, size_t size)
{
    long idx = qplug__lookup(inv, official, ckname, size);
    return idx < 0 ? NULL : qplug_ckpt_tensor(inv->ckpt, (size_t)idx);
}

/* The scale tensor of a weight: "<base>.scale", or transformers'
 * "<base>.weight_scale_inv". */
static const qplug_tensor *qplug__find_scale(const qplug_inventory *inv, const char *base,
                                             char *ckname, size_t size)
{
    char off[192];
    snprintf(off, sizeof off, "%s.scale", base);
    const qplug_tensor *t = qplug__find(inv, off, ckname, size);
    if (t)
        return t;
    snprintf(off, sizeof off, "%s.weight_scale_inv", base);
    return qplug__find(inv, off, ckname, size);
}

/*
 * Reads what one weight holds: `base` is the official module path
 * ("layers.0.attn.wq_a", "layers.3.ffn.experts.7.w1"), rows x cols the full
 * weight shape (all groups).
 */
static qplug_status qplug__storage_of(const qplug_inventory *inv, const char *base, int64_t rows,
                                      int64_t cols, qplug_layer_storage *st, qplug_err *err)
{
    char off[192], wname[192], sname[192], s2name[192];
    const char *dir = qplug_ckpt_dir(inv->ckpt);
    memset(st, 0, sizeof *st);
    snprintf(off, sizeof off, "%s.weight", base);
    const qplug_tensor *w = qplug__find(inv, off, wname, sizeof wname);
    qplug__copy(st->tensor, sizeof st->tensor, wname);
    if (!w)
        return qplug_err_set(err, QPLUG_ERR_NOT_FOUND, "checkpoint %s: tensor '%s' is missing",
                             dir, wname);
    st->present = true;
    st->weight_dtype = w->dtype;
    st->scale_dtype = QPLUG_DT_F32;
    int64_t br = qplug__cdiv(rows, 128), bc = qplug__cdiv(cols, 128);

    switch (w->dtype) {
    case QPLUG_DT_BF16:
    case QPLUG_DT_F16:
    case QPLUG_DT_F32:
        st->scheme = QPLUG_QUANT_NONE;
        if (!qplug__shape2(w, rows, cols))
            goto bad_weight_shape;
        return QPLUG_OK;
    case QPLUG_DT_F8_E4M3: {
        if (!qplug__shape2(w, rows, cols))
            goto bad_weight_shape;
        const qplug_tensor *s = qplug__find_scale(inv, base, sname, sizeof sname);
        if (s) {
            st->scheme = QPLUG_QUANT_FP8_BLOCK;
            st->scale_dtype = s->dtype;
            if (s->dtype != QPLUG_DT_F32 && s->dtype != QPLUG_DT_F8_E8M0)
                return qplug_err_set(err, QPLUG_ERR_DTYPE,
                                     "checkpoint %s: FP8 block scale '%s' is %s, expected F32 or "
                                     "F8_E8M0",
                                     dir, sname, qplug_dtype_name(s->dtype));
            if (!qplug__shape2(s, br, bc))
                return qplug_err_set(err, QPLUG_ERR_SHAPE,
                                     "checkpoint %s: FP8 block scale '%s' is not [%lld, %lld]", dir,
                                     sname, (long long)br, (long long)bc);
            return QPLUG_OK;
        }
        snprintf(off, sizeof off, "%s.weight_scale", base);
        s = qplug__find(inv, off, sname, sizeof sname);
        if (!s)
            return qplug_err_set(err, QPLUG_ERR_NOT_FOUND,
                                 "checkpoint %s: F8_E4M3 weight '%s' has no scale tensor", dir,
                                 wname);
        st->scale_dtype = s->dtype;
        if (qplug_tensor_numel(s) == 1)
            st->scheme = QPLUG_QUANT_FP8_TENSOR;
        else if (qplug__shape2(s, br, bc))
            st->scheme = QPLUG_QUANT_FP8_BLOCK;
        else if (qplug_tensor_numel(s) == rows && s->shape[0] == rows)
            st->scheme = QPLUG_QUANT_FP8_CHANNEL;
        else
            return qplug_err_set(err, QPLUG_ERR_SHAPE,
                                 "checkpoint %s: weight_scale '%s' fits no FP8 layout for a "
                                 "[%lld, %lld] weight",
                                 dir, sname, (long long)rows, (long long)cols);
        return QPLUG_OK;
    }
    case QPLUG_DT_I8:
    case QPLUG_DT_U8:
    case QPLUG_DT_E2M1: {
        int64_t pc = w->dtype == QPLUG_DT_E2M1 ? cols : cols / 2;
        if (cols % 32 || !qplug__shape2(w, rows, pc))
            goto bad_weight_shape;
        const qplug_tensor *s = qplug__find_scale(inv, base, sname, sizeof sname);
        if (s) {
            if (s->dtype != QPLUG_DT_F8_E8M0 || !qplug__shape2(s, rows, cols / 32))
                return qplug_err_set(err, QPLUG_ERR_SHAPE,
                                     "checkpoint %s: MXFP4 scale '%s' is %s, expected F8_E8M0 "
                                     "[%lld, %lld]",
                                     dir, sname, qplug_dtype_name(s->dtype), (long long)rows,
                                     (long long)(cols / 32));
            st->scheme = QPLUG_QUANT_MXFP4;
            st->scale_dtype = QPLUG_DT_F8_E8M0;
            return QPLUG_OK;
        }
        snprintf(off, sizeof off, "%s.weight_scale", base);
        s = qplug__find(inv, off, sname, sizeof sname);
        snprintf(off, sizeof off, "%s.weight_scale_2", base);
        const qplug_tensor *s2 = qplug__find(inv, off, s2name, sizeof s2name);
        if (!s)
            return qplug_err_set(err, QPLUG_ERR_NOT_FOUND,
                                 "checkpoint %s: packed FP4 weight '%s' has no scale tensor", dir,
                                 wname);
        if (s->dtype != QPLUG_DT_F8_E4M3 || !qplug__shape2(s, rows, cols / 16))
            return qplug_err_set(err, QPLUG_ERR_SHAPE,
                                 "checkpoint %s: NVFP4 weight_scale '%s' is %s, expected F8_E4M3 "
                                 "[%lld, %lld]",
                                 dir, sname, qplug_dtype_name(s->dtype), (long long)rows,
                                 (long long)(cols / 16));
        if (!s2)
            return qplug_err_set(err, QPLUG_ERR_NOT_FOUND,
                                 "checkpoint %s: NVFP4 weight '%s' has no weight_scale_2 ('%s')",
                                 dir, wname, s2name);
        st->scheme = QPLUG_QUANT_NVFP4;
        st->scale_dtype = QPLUG_DT_F8_E4M3;
        return QPLUG_OK;
    }
    default:
        return qplug_err_set(err, QPLUG_ERR_DTYPE,
                             "checkpoint %s: weight '%s' has dtype %s, which no scheme stores", dir,
                             wname, qplug_dtype_name(w->dtype));
    }

bad_weight_shape:
    return qplug_err_set(err, QPLUG_ERR_SHAPE,
                         "checkpoint %s: weight '%s' (%s) has the wrong shape for [%lld, %lld]", dir,
                         wname, qplug_dtype_name(w->dtype), (long long)rows, (long long)cols);
}

static bool qplug__same_storage(const qplug_layer_storage *a, const qplug_layer_storage *b)
{
    return a->scheme == b->scheme &&
           (a->scheme == QPLUG_QUANT_NONE || a->scale_dtype == b->scale_dtype);
}

/* A sharded linear: every shard "<layer>.<shard>" is read on its own and
 * all must store the same scheme, weight dtype and scale dtype, because one
 * plugin fuses them into one weight. */
static qplug_status qplug__storage_sharded(const qplug_inventory *inv, const qplug_inv_layer *l,
                                           qplug_layer_storage *st, qplug_err *err)
{
    char base[192];
    for (int32_t i = 0; i < l->desc.num_shards; i++) {
        qplug_layer_storage cur;
        snprintf(base, sizeof base, "%s.%s", l->name, l->desc.shard_names[i]);
        qplug_status s = qplug__storage_of(inv, base, l->desc.shard_n[i], l->desc.k, &cur, err);
        if (s != QPLUG_OK)
            return s;
        if (i == 0) {
            *st = cur;
        } else if (!qplug__same_storage(st, &cur) || st->weight_dtype != cur.weight_dtype) {
            return qplug_err_set(
                err, QPLUG_ERR_FORMAT,
                "layer %s: fused shards disagree: '%s' stores %s (%s), '%s' stores %s (%s)",
                l->name, st->tensor, qplug_quant_scheme_name(st->scheme),
                qplug_dtype_name(st->weight_dtype), cur.tensor,
                qplug_quant_scheme_name(cur.scheme), qplug_dtype_name(cur.weight_dtype));
        }
    }
    return QPLUG_OK;
}

/* HF stacked experts: gate_up_proj [E, 2I, D] and down_proj [E, D, I]. */
static qplug_status qplug__storage_stacked(const qplug_inventory *inv, const qplug_inv_layer *l,
                                           qplug_layer_storage *st, qplug_err *err)
{
    char name[192];
    const char *dir = qplug_ckpt_dir(inv->ckpt);
    int64_t E = l->desc.num_experts, I = l->desc.n, D = l->desc.k;
    const char *parts[2] = {"gate_up_proj", "down_proj"};
    memset(st, 0, sizeof *st);
    for (int j = 0; j < 2; j++) {
        snprintf(name, sizeof name, "%s.%s", l->hf_name, parts[j]);
        long idx = qplug_ckpt_lookup(inv->ckpt, name);
        if (idx < 0)
            return qplug_err_set(err, QPLUG_ERR_NOT_FOUND, "checkpoint %s: tensor '%s' is missing",
                                 dir, name);
        const qplug_tensor *t = qplug_ckpt_tensor(inv->ckpt, (size_t)idx);
        int64_t a = j == 0 ? 2 * I : D, b = j == 0 ? D : I;
        if (t->dtype != QPLUG_DT_BF16 && t->dtype != QPLUG_DT_F16 && t->dtype != QPLUG_DT_F32)
            return qplug_err_set(err, QPLUG_ERR_UNSUPPORTED,
                                 "checkpoint %s: stacked experts '%s' are %s; only unquantized "
                                 "stacked experts are supported",
                                 dir, name, qplug_dtype_name(t->dtype));
        if (t->ndim != 3 || t->shape[0] != E || t->shape[1] != a || t->shape[2] != b)
            return qplug_err_set(err, QPLUG_ERR_SHAPE,
                                 "checkpoint %s: stacked experts '%s' are not [%lld, %lld, %lld]",
                                 dir, name, (long long)E, (long long)a, (long long)b);
        if (j == 0) {
            st->weight_dtype = t->dtype;
            qplug__copy(st->tensor, sizeof st->tensor, name);
        } else if (t->dtype != st->weight_dtype) {
            return qplug_err_set(err, QPLUG_ERR_FORMAT,
                                 "checkpoint %s: fused shards disagree: '%s' is %s, '%s' is %s",
                                 dir, st->tensor, qplug_dtype_name(st->weight_dtype), name,
                                 qplug_dtype_name(t->dtype));
        }
    }
    st->present = true;
    st->scheme = QPLUG_QUANT_NONE;
    st->scale_dtype = QPLUG_DT_F32;
    return QPLUG_OK;
}

/* Routed experts: every expert's w1, w3 and w2 must share one scheme (one
 * plugin handles the layer; w1/w3 are fused into gate_up). */
static qplug_status qplug__storage_moe(const qplug_inventory *inv, const qplug_inv_layer *l,
                                       qplug_layer_storage *st, qplug_err *err)
{
    static const char *const ws[3] = {"w1", "w3", "w2"};
    char parent[96], base[160];
    size_t plen = strlen(l->name) - strlen(".experts");
    memcpy(parent, l->name, plen);
    parent[plen] = '\0';
    for (int64_t e = 0; e < l->desc.num_experts; e++) {
        for (int j = 0; j < 3; j++) {
            qplug_layer_storage cur;
            bool down = j == 2;
            snprintf(base, sizeof base, "%s.experts.%lld.%s", parent, (long long)e, ws[j]);
            qplug_status s = qplug__storage_of(inv, base, down ? l->desc.k : l->desc.n,
                                               down ? l->desc.n : l->desc.k, &cur, err);
            if (s != QPLUG_OK)
                return s;
            if (e == 0 && j == 0) {
                *st = cur;
            } else if (!qplug__same_storage(st, &cur)) {
                return qplug_err_set(
                    err, QPLUG_ERR_FORMAT,
                    "layer %s: fused shards disagree: '%s' stores %s (%s), '%s' stores %s (%s)",
                    l->name, st->tensor, qplug_quant_scheme_name(st->scheme),
                    qplug_dtype_name(st->weight_dtype), cur.tensor,
                    qplug_quant_scheme_name(cur.scheme), qplug_dtype_name(cur.weight_dtype));
            }
        }
    }
    return QPLUG_OK;
}

static qplug_status qplug__scan_storage(qplug_inventory *inv, qplug_err *err)
{
    for (size_t i = 0; i < inv->n_layers; i++) {
        qplug_inv_layer *l = &inv->layers[i];
        qplug_status st = QPLUG_OK;
        switch (l->desc.kind) {
        case QPLUG_LAYER_ATTENTION:
            break; /* a KV cache has no checkpoint tensors */
        case QPLUG_LAYER_FUSED_MOE:
            st = inv->hf_stacked_experts ? qplug__storage_stacked(inv, l, &l->stored, err)
                                         : qplug__storage_moe(inv, l, &l->stored, err);
            break;
        case QPLUG_LAYER_LINEAR:
        case QPLUG_LAYER_GROUPED_LINEAR:
            if (qplug_layer_num_shards(&l->desc) > 0)
                st = qplug__storage_sharded(inv, l, &l->stored, err);
            else
                st = qplug__storage_of(inv, l->name, l->desc.groups * l->desc.n, l->desc.k,
                                       &l->stored, err);
            break;
        }
        if (st != QPLUG_OK)
            return st;
    }
    return QPLUG_OK;
}

qplug_status qplug_inventory_build(const qplug_model_config *cfg, const qplug_ckpt *ckpt,
                                   qplug_device_kind dev, qplug_inventory *inv, qplug_err *err)
{
    if (!inv)
        return qplug_err_set(err, QPLUG_ERR_ARGUMENT, "qplug_inventory_build: NULL inventory");
    memset(inv, 0, sizeof *inv);
    if (!cfg)
        return qplug_err_set(err, QPLUG_ERR_ARGUMENT, "qplug_inventory_build: NULL config");
    qplug_status st = qplug__check_config(cfg, err);
    if (st != QPLUG_OK)
        return st;

    inv->cfg = cfg;
    inv->ckpt = ckpt;
    inv->priv = calloc(1, sizeof *inv->priv);
    if (!inv->priv)
        return qplug_err_set(err, QPLUG_ERR_NOMEM, "inventory: out of memory");
    if (ckpt) {
        inv->priv->n_ckpt = qplug_ckpt_count(ckpt);
        inv->priv->used = calloc(inv->priv->n_ckpt ? inv->priv->n_ckpt : 1, 1);
        if (!inv->priv->used) {
            st = qplug_err_set(err, QPLUG_ERR_NOMEM, "inventory: out of memory");
            goto fail;
        }
        st = qplug__detect_naming(inv, err);
        if (st != QPLUG_OK)
            goto fail;
    } else {
        inv->naming = cfg->hf_style ? QPLUG_NAMING_HF : QPLUG_NAMING_OFFICIAL;
    }
    qplug__detect_mtp(inv);

    const char *globals[] = {"embed.weight", "head.weight", "norm.weight",
                             "hc_head_fn", "hc_head_base", "hc_head_scale"};
    for (size_t i = 0; i < sizeof globals / sizeof globals[0]; i++) {
        st = qplug__add_tensor(inv, -1, "", globals[i], true, err);
        if (st != QPLUG_OK)
            goto fail;
    }
    int L = (int)cfg->num_hidden_layers;
    for (int b = 0; b < L + inv->n_mtp; b++) {
        bool mtp = b >= L;
        int ratio = cfg->compress_ratios[b];
        if (ratio != 0 && ratio != 4 && ratio != 128) {
            st = qplug_err_set(err, QPLUG_ERR_CONFIG,
                               "%s: key compress_ratios: layer %d has ratio %d (allowed: 0, 4, 128)",
                               cfg->source, b, ratio);
            goto fail;
        }
        st = qplug__add_block(inv, b, mtp, ratio, !mtp && cfg->hash_moe[b], dev, err);
        if (st != QPLUG_OK)
            goto fail;
    }

    /* desc.name points into the array, so it is set once the array no
     * longer moves. */
    for (size_t i = 0; i < inv->n_layers; i++) {
        qplug_inv_layer *l = &inv->layers[i];
        l->desc.name = l->name;
        bool hf = inv->naming == QPLUG_NAMING_HF;
        qplug__names_to_hf(l->name, L, hf ? inv->priv->mtp_ptr : NULL, hf ? inv->n_mtp : 0,
                           l->hf_name, sizeof l->hf_name);
    }

    if (ckpt) {
        if (inv->naming == QPLUG_NAMING_HF) {
            char probe[192];
            snprintf(probe, sizeof probe, "model.layers.0.mlp.experts.gate_up_proj");
            inv->hf_stacked_experts = qplug_ckpt_lookup(ckpt, probe) >= 0;
        }
        st = qplug__scan_storage(inv, err);
        if (st != QPLUG_OK)
            goto fail;
    }
    return QPLUG_OK;

fail:
    qplug_inventory_free(inv);
    return st;
}

/* ------------------------------------------------------------ resolving */

qplug_status qplug_inventory_resolve(qplug_inventory *inv, const qplug_registry *reg,
                                     const qplug_policy *pol, qplug_err *err)
{
    for (size_t i = 0; i < inv->n_layers; i++) {
        qplug_inv_layer *l = &inv->layers[i];
        if (l->desc.kind == QPLUG_LAYER_FUSED_MOE && pol && pol->fp4_activations)
            l->desc.flags |= QPLUG_LAYER_FP4_ACTIVATIONS;
        qplug_status st = qplug_resolve(reg, pol, inv->cfg, &l->desc, l->hf_name, &l->stored,
                                        &l->decision, err);
        if (st != QPLUG_OK)
            return st;
    }
    return QPLUG_OK;
}

const qplug_inv_layer *qplug_inventory_find(const qplug_inventory *inv, const char *official_name)
{
    for (size_t i = 0; inv && official_name && i < inv->n_layers; i++)
        if (!strcmp(inv->layers[i].name, official_name))
            return &inv->layers[i];
    return NULL;
}

/* ------------------------------------------------------------- tensors */

static const qplug_tensor *qplug__take(qplug_inventory *inv, long idx, const char **file)
{
    if (idx < 0 || !inv->ckpt)
        return NULL;
    if ((size_t)idx < inv->priv->n_ckpt)
        inv->priv->used[idx] = 1;
    if (file)
        *file = qplug_ckpt_tensor_file(inv->ckpt, (size_t)idx);
    return qplug_ckpt_tensor(inv->ckpt, (size_t)idx);
}

const qplug_tensor *qplug_inventory_tensor(qplug_inventory *inv, const char *official_name,
                                           const char **file)
{
    char ck[192];
    if (!inv || !official_name || !inv->ckpt)
        return NULL;
    return qplug__take(inv, qplug__lookup(inv, official_name, ck, sizeof ck), file);
}

/* Parses "experts.<e>.<w>.weight" into e and the part 0 (w1), 1 (w3), 2 (w2). */
static bool qplug__expert_slot(const char *slot, int64_t *e, int *part, const char **rest)
{
    char *end;
    if (strncmp(slot, "experts.", 8) || slot[8] < '0' || slot[8] > '9')
        return false;
    long long v = strtoll(slot + 8, &end, 10);
    if (end[0] != '.' || end[1] != 'w' || !end[2] || end[3] != '.')
        return false;
    switch (end[2]) {
    case '1': *part = 0; break;
    case '3': *part = 1; break;
    case '2': *part = 2; break;
    default: return false;
    }
    *e = v;
    *rest = end + 4;
    return true;
}

/* The per-expert view of an HF stacked tensor (made once per layer). */
static const qplug_tensor *qplug__stacked_view(qplug_inventory *inv, size_t li, int64_t e,
                                               int part, const char **file)
{
    qplug__inv_private *p = inv->priv;
    const qplug_inv_layer *l = &inv->layers[li];
    qplug__views *v = NULL;
    for (size_t i = 0; i < p->n_views; i++)
        if (p->views[i].layer == li)
            v = &p->views[i];
    char gu[192], dn[192];
    snprintf(gu, sizeof gu, "%s.gate_up_proj", l->hf_name);
    snprintf(dn, sizeof dn, "%s.down_proj", l->hf_name);
    long igu = qplug_ckpt_lookup(inv->ckpt, gu), idn = qplug_ckpt_lookup(inv->ckpt, dn);
    if (igu < 0 || idn < 0)
        return NULL;
    const qplug_tensor *tgu = qplug_ckpt_tensor(inv->ckpt, (size_t)igu);
    const qplug_tensor *tdn = qplug_ckpt_tensor(inv->ckpt, (size_t)idn);
    int64_t E = l->desc.num_experts, I = l->desc.n, D = l->desc.k;
    /* The build checked the shapes; check again because the views index
     * raw memory. */
    if (tgu->ndim != 3 || tgu->shape[0] != E || tgu->shape[1] != 2 * I || tgu->shape[2] != D ||
        tdn->ndim != 3 || tdn->shape[0] != E || tdn->shape[1] != D || tdn->shape[2] != I ||
        tgu->dtype != tdn->dtype)
        return NULL;
    if (!v) {
        qplug__views *nv = realloc(p->views, (p->n_views + 1) * sizeof *nv);
        if (!nv)
            return NULL;
        p->views = nv;
        v = &p->views[p->n_views];
        memset(v, 0, sizeof *v);
        v->layer = li;
        v->experts = E;
        v->t = calloc((size_t)E * 3, sizeof *v->t);
        v->names = calloc((size_t)E * 3, sizeof *v->names);
        if (!v->t || !v->names) {
            free(v->t);
            free(v->names);
            return NULL;
        }
        p->n_views++;
        size_t esz = qplug_dtype_bits(tgu->dtype) / 8;
        for (int64_t x = 0; x < E; x++) {
            for (int j = 0; j < 3; j++) {
                qplug_tensor *t = &v->t[x * 3 + j];
                char *nm = v->names[x * 3 + j];
                const qplug_tensor *src = j == 2 ? tdn : tgu;
                int64_t rows = j == 2 ? D : I, cols = j == 2 ? I : D;
                /* gate rows [0, I) come first in gate_up_proj[x], up rows [I, 2I) next. */
                int64_t off_rows = j == 2 ? x * D : x * 2 * I + (j == 1 ? I : 0);
                snprintf(nm, sizeof v->names[0], "%s[%lld, %s]", src->name, (long long)x,
                         j == 0 ? "gate" : j == 1 ? "up" : "down");
                t->name = nm;
                t->dtype = src->dtype;
                t->ndim = 2;
                t->shape[0] = rows;
                t->shape[1] = cols;
                t->device = src->device;
                t->data = (uint8_t *)src->data + (size_t)(off_rows * cols) * esz;
            }
        }
    }
    if (e < 0 || e >= v->experts)
        return NULL;
    qplug__take(inv, part == 2 ? idn : igu, file);
    return &v->t[e * 3 + part];
}

/*
 * Whether `slot` is "<shard>.<leaf>" for one of the layer's shards, with a
 * leaf of one component. Anything else could walk out of the layer: in
 * transformers naming the main compressor's module path is a prefix of the
 * indexer compressor's ("self_attn.compressor.indexer.kv_proj"), and
 * handing the indexer's tensors to the main compressor is a known field
 * bug.
 */
static bool qplug__shard_slot(const qplug_layer_desc *d, const char *slot)
{
    for (int32_t i = 0; i < d->num_shards; i++) {
        const char *nm = d->shard_names[i];
        size_t len = nm ? strlen(nm) : 0;
        if (len && !strncmp(slot, nm, len) && slot[len] == '.' && slot[len + 1] &&
            !strchr(slot + len + 1, '.'))
            return true;
    }
    return false;
}

const qplug_tensor *qplug_inventory_source(void *user, const qplug_layer_desc *layer,
                                           const char *slot, const char **file)
{
    qplug_inventory *inv = user;
    if (!inv || !layer || !layer->name || !slot || !inv->ckpt)
        return NULL;
    const qplug_inv_layer *l = qplug_inventory_find(inv, layer->name);
    if (!l)
        return NULL;
    size_t li = (size_t)(l - inv->layers);

    char official[256];
    if (l->desc.kind == QPLUG_LAYER_FUSED_MOE) {
        int64_t e;
        int part;
        const char *rest;
        if (inv->hf_stacked_experts) {
            if (qplug__expert_slot(slot, &e, &part, &rest) && !strcmp(rest, "weight"))
                return qplug__stacked_view(inv, li, e, part, file);
            return NULL;
        }
        /* "layers.3.ffn.experts" + "experts.17.w1.weight" -> "layers.3.ffn.experts.17.w1.weight" */
        size_t plen = strlen(l->name) - strlen("experts");
        snprintf(official, sizeof official, "%.*s%s", (int)plen, l->name, slot);
    } else {
        if (qplug_layer_num_shards(&l->desc) > 0 && !qplug__shard_slot(&l->desc, slot))
            return NULL;
        snprintf(official, sizeof official, "%s.%s", l->name, slot);
    }
    char ck[256];
    long idx = qplug__lookup(inv, official, ck, sizeof ck);
    size_t olen = strlen(official);
    if (idx < 0 && olen >= 6 && !strcmp(official + olen - 6, ".scale")) {
        /* transformers calls the FP8 block scale "weight_scale_inv". */
        snprintf(official + olen - 5, sizeof official - (olen - 5), "weight_scale_inv");
        idx = qplug__lookup(inv, official, ck, sizeof ck);
    }
    return qplug__take(inv, idx, file);
}

/* ------------------------------------------------------------ bookkeeping */

size_t qplug_inventory_unused_count(const qplug_inventory *inv)
{
    size_t n = 0;
    for (size_t i = 0; inv && inv->priv && i < inv->priv->n_ckpt; i++)
        n += !inv->priv->used[i];
    return n;
}

long qplug_inventory_next_unused(const qplug_inventory *inv, size_t from)
{
    for (size_t i = from; inv && inv->priv && i < inv->priv->n_ckpt; i++)
        if (!inv->priv->used[i])
            return (long)i;
    return -1;
}

void qplug_inventory_free(qplug_inventory *inv)
{
    if (!inv)
        return;
    if (inv->priv) {
        for (size_t i = 0; i < inv->priv->n_views; i++) {
            free(inv->priv->views[i].t);
            free(inv->priv->views[i].names);
        }
        free(inv->priv->views);
        free(inv->priv->used);
        free(inv->priv);
    }
    free(inv->layers);
    free(inv->tensors);
    memset(inv, 0, sizeof *inv);
}
