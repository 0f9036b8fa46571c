/*
 * The resolver (architecture.md "Resolver", contract): for one layer, decide
 * what the checkpoint stores (its quant config, reconciled with the tensors
 * actually present) and which plugin handles it. Policy rules come first
 * (first match wins), then the best-scoring plugin for the checkpoint's
 * scheme. Every decision carries a one-line reason naming its source.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "qplug/resolver.h"

/* Reasons are one line and may be cut short: a truncated reason is still
 * useful, so truncation is intended here and not an error. */
static void qplug__reason(char *buf, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void qplug__reason(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, size, fmt, ap);
    va_end(ap);
}

const char *qplug_layer_kind_name(qplug_layer_kind kind)
{
    switch (kind) {
    case QPLUG_LAYER_LINEAR: return "linear";
    case QPLUG_LAYER_GROUPED_LINEAR: return "grouped_linear";
    case QPLUG_LAYER_ATTENTION: return "attention";
    case QPLUG_LAYER_FUSED_MOE: return "fused_moe";
    }
    return "?";
}

const char *qplug_quant_scheme_name(qplug_quant_scheme q)
{
    switch (q) {
    case QPLUG_QUANT_NONE: return "none";
    case QPLUG_QUANT_FP8_BLOCK: return "fp8_block";
    case QPLUG_QUANT_MXFP4: return "mxfp4";
    case QPLUG_QUANT_NVFP4: return "nvfp4";
    case QPLUG_QUANT_FP8_TENSOR: return "fp8_tensor";
    case QPLUG_QUANT_FP8_CHANNEL: return "fp8_channel";
    }
    return "?";
}

/* The last path component, so reasons say "config.json", not a long path. */
static const char *qplug__base(const char *path)
{
    const char *s = strrchr(path, '/');
    if (!path[0])
        return "config.json";
    return s ? s + 1 : path;
}

static const char *qplug__modelopt_algo_name(qplug_modelopt_algo a)
{
    switch (a) {
    case QPLUG_MO_NONE: return "none";
    case QPLUG_MO_FP8: return "FP8";
    case QPLUG_MO_FP8_PER_CHANNEL_PER_TOKEN: return "FP8_PER_CHANNEL_PER_TOKEN";
    case QPLUG_MO_FP8_PB_WO: return "FP8_PB_WO";
    case QPLUG_MO_NVFP4: return "NVFP4";
    }
    return "?";
}

/*
 * Compressor and indexer-scorer projections stay in whatever form the
 * checkpoint gives them: the DeepSeek FP8 release ships them in BF16 while
 * its neighbours are FP8, and no config lists them.
 */
static bool qplug__follows_storage(const char *name)
{
    size_t n = strlen(name), c = strlen(".compressor");
    bool compressor = n >= c && !strcmp(name + n - c, ".compressor");
    return compressor || strstr(name, ".compressor.") != NULL ||
           strstr(name, ".indexer.weights_proj") != NULL;
}

/* The checkpoint's own answer for a layer: its scheme, scale dtype and why. */
typedef struct qplug__expect {
    qplug_quant_scheme scheme;
    qplug_dtype scale;
    char why[200];
} qplug__expect;

/* The first exclude pattern covering the layer, or NULL. DeepSeek's
 * ignored_layers may be written in either naming, so both are tried. */
static const char *qplug__excluded_by(const qplug_quant_config *q, const char *name,
                                      const char *hf_name)
{
    for (size_t i = 0; i < q->n_exclude; i++) {
        char *const *pat = &q->exclude[i];
        if (qplug_glob_match(*pat, name) || (hf_name && qplug_modelopt_excluded(pat, 1, hf_name)))
            return *pat;
    }
    return NULL;
}

static void qplug__expect_deepseek(const qplug_model_config *cfg, const qplug_layer_desc *layer,
                                   const char *src, qplug__expect *e)
{
    const qplug_quant_config *q = &cfg->quant;
    bool fp4 = q->expert_dtype == QPLUG_EXPERT_FP4;
    switch (layer->kind) {
    case QPLUG_LAYER_FUSED_MOE:
        if (fp4 && q->moe_nvfp4) {
            e->scheme = QPLUG_QUANT_NVFP4;
            e->scale = QPLUG_DT_F8_E4M3;
            qplug__reason(e->why, sizeof e->why,
                     "%s quantization_config moe_quant_algo=NVFP4: NVFP4 experts", src);
        } else if (fp4) {
            e->scheme = QPLUG_QUANT_MXFP4;
            e->scale = QPLUG_DT_F8_E8M0;
            qplug__reason(e->why, sizeof e->why,
                     "%s quantization_config expert_dtype=fp4: MXFP4 experts", src);
        } else {
            e->scheme = QPLUG_QUANT_FP8_BLOCK;
            e->scale = QPLUG_DT_F32;
            qplug__reason(e->why, sizeof e->why,
                     "%s quantization_config expert_dtype=fp8: FP8 block experts, F32 scales", src);
        }
        return;
    case QPLUG_LAYER_ATTENTION:
        e->scheme = QPLUG_QUANT_NONE;
        e->scale = QPLUG_DT_F32;
        qplug__reason(e->why, sizeof e->why, "%s quantization_config has no KV-cache scheme", src);
        return;
    case QPLUG_LAYER_LINEAR:
    case QPLUG_LAYER_GROUPED_LINEAR:
        e->scheme = QPLUG_QUANT_FP8_BLOCK;
        e->scale = (fp4 || q->scale_ue8m0) ? QPLUG_DT_F8_E8M0 : QPLUG_DT_F32;
        qplug__reason(e->why, sizeof e->why, "%s quantization_config fp8: FP8 block, %s scales", src,
                 e->scale == QPLUG_DT_F8_E8M0 ? "E8M0" : "F32");
        return;
    }
}

static void qplug__expect_modelopt(const qplug_model_config *cfg, const qplug_layer_desc *layer,
                                   const char *src, qplug__expect *e)
{
    const qplug_quant_config *q = &cfg->quant;
    const char *algo = qplug__modelopt_algo_name(q->algo);
    if (layer->kind == QPLUG_LAYER_ATTENTION) {
        if (q->kv_cache_algo[0] && !strcmp(q->kv_cache_algo, "FP8")) {
            e->scheme = QPLUG_QUANT_FP8_TENSOR;
            e->scale = QPLUG_DT_F32;
            qplug__reason(e->why, sizeof e->why, "%s kv_cache_quant_algo=FP8: FP8 KV cache", src);
        } else {
            e->scheme = QPLUG_QUANT_NONE;
            e->scale = QPLUG_DT_F32;
            qplug__reason(e->why, sizeof e->why, "%s kv_cache_quant_algo=%s: unquantized KV cache", src,
                     q->kv_cache_algo[0] ? q->kv_cache_algo : "null");
        }
        return;
    }
    switch (q->algo) {
    case QPLUG_MO_FP8:
        e->scheme = QPLUG_QUANT_FP8_TENSOR;
        e->scale = QPLUG_DT_F32;
        break;
    case QPLUG_MO_FP8_PER_CHANNEL_PER_TOKEN:
        e->scheme = QPLUG_QUANT_FP8_CHANNEL;
        e->scale = QPLUG_DT_F32;
        break;
    case QPLUG_MO_FP8_PB_WO:
        e->scheme = QPLUG_QUANT_FP8_BLOCK;
        e->scale = QPLUG_DT_F32;
        break;
    case QPLUG_MO_NVFP4:
        e->scheme = QPLUG_QUANT_NVFP4;
        e->scale = QPLUG_DT_F8_E4M3;
        break;
    case QPLUG_MO_NONE:
        e->scheme = QPLUG_QUANT_NONE;
        e->scale = QPLUG_DT_F32;
        break;
    }
    qplug__reason(e->why, sizeof e->why, "%s %s", src, algo);
}

/* Step 1: what the checkpoint's config says the layer holds. */
static void qplug__expect_config(const qplug_model_config *cfg, const qplug_layer_desc *layer,
                                 const char *hf_name, const qplug_layer_storage *stored,
                                 qplug__expect *e)
{
    const qplug_quant_config *q = &cfg->quant;
    const char *src = qplug__base(q->source[0] ? q->source : cfg->source);
    memset(e, 0, sizeof *e);
    e->scale = QPLUG_DT_F32;
    if (q->method == QPLUG_QM_NONE) {
        e->scheme = QPLUG_QUANT_NONE;
        qplug__reason(e->why, sizeof e->why, "%s has no quantization_config: unquantized", src);
        return;
    }
    const char *pat = qplug__excluded_by(q, layer->name, hf_name);
    if (pat) {
        e->scheme = QPLUG_QUANT_NONE;
        if (q->method == QPLUG_QM_MODELOPT)
            qplug__reason(e->why, sizeof e->why, "%s %s, excluded by '%s'", src,
                     qplug__modelopt_algo_name(q->algo), pat);
        else
            qplug__reason(e->why, sizeof e->why, "%s quantization_config ignored_layers '%s'", src, pat);
        return;
    }
    if (layer->kind != QPLUG_LAYER_ATTENTION && qplug__follows_storage(layer->name)) {
        if (stored && stored->present) {
            e->scheme = stored->scheme;
            e->scale = stored->scale_dtype;
            qplug__reason(e->why, sizeof e->why, "compressor/indexer projection: checkpoint stores %s",
                     stored->scheme == QPLUG_QUANT_NONE ? qplug_dtype_name(stored->weight_dtype)
                                                        : qplug_quant_scheme_name(stored->scheme));
        } else {
            e->scheme = QPLUG_QUANT_NONE;
            qplug__reason(e->why, sizeof e->why, "compressor/indexer projection: unquantized");
        }
        return;
    }
    if (q->method == QPLUG_QM_DEEPSEEK_FP8)
        qplug__expect_deepseek(cfg, layer, src, e);
    else
        qplug__expect_modelopt(cfg, layer, src, e);
}

/* Step 2: reconcile the config with what the tensors hold. */
static qplug_status qplug__reconcile(const qplug_layer_desc *layer,
                                     const qplug_layer_storage *stored, qplug__expect *e,
                                     qplug_err *err)
{
    if (!stored || !stored->present)
        return QPLUG_OK;
    if (stored->scheme == e->scheme) {
        if (e->scheme != QPLUG_QUANT_NONE)
            e->scale = stored->scale_dtype;
        return QPLUG_OK;
    }
    if (stored->scheme == QPLUG_QUANT_NONE) {
        /* An exporter may leave single layers in BF16 inside a quantized
         * checkpoint; reading those bytes as quantized would be garbage. */
        size_t used = strlen(e->why);
        qplug__reason(e->why + used, sizeof e->why - used, ", but checkpoint stores %s",
                 qplug_dtype_name(stored->weight_dtype));
        e->scheme = QPLUG_QUANT_NONE;
        e->scale = QPLUG_DT_F32;
        return QPLUG_OK;
    }
    return qplug_err_set(err, QPLUG_ERR_FORMAT,
                         "layer %s: tensor %s stores %s (%s) but %s", layer->name,
                         stored->tensor[0] ? stored->tensor : "?",
                         qplug_quant_scheme_name(stored->scheme),
                         qplug_dtype_name(stored->weight_dtype), e->why);
}

static bool qplug__runs_on(const qplug_plugin *p, qplug_device_kind dev)
{
    return (p->devices & (1u << (unsigned)dev)) != 0;
}

/*
 * The plugin's score for the layer on its device, 0 where it cannot run.
 * Shards arrived with ABI 1.1: a plugin built against 1.0 never looks at
 * them and would load only part of a sharded layer, so it scores 0 there
 * whatever its own score function says.
 */
static int qplug__score(const qplug_plugin *p, const qplug_layer_desc *layer)
{
    if (!qplug__runs_on(p, layer->device))
        return 0;
    if (qplug_layer_num_shards(layer) > 0 && QPLUG_ABI_MINOR(p->abi_version) < 1)
        return 0;
    return p->score(layer);
}

static qplug_dtype qplug__default_weight_dtype(qplug_quant_scheme q)
{
    switch (q) {
    case QPLUG_QUANT_NONE: return QPLUG_DT_BF16;
    case QPLUG_QUANT_FP8_BLOCK:
    case QPLUG_QUANT_FP8_TENSOR:
    case QPLUG_QUANT_FP8_CHANNEL: return QPLUG_DT_F8_E4M3;
    case QPLUG_QUANT_MXFP4: return QPLUG_DT_I8;
    case QPLUG_QUANT_NVFP4: return QPLUG_DT_U8;
    }
    return QPLUG_DT_BF16;
}

qplug_status qplug_resolve(const qplug_registry *reg, const qplug_policy *pol,
                           const qplug_model_config *cfg, qplug_layer_desc *layer,
                           const char *hf_name, const qplug_layer_storage *stored,
                           qplug_decision *out, qplug_err *err)
{
    if (!reg || !cfg || !layer || !layer->name || !out)
        return qplug_err_set(err, QPLUG_ERR_ARGUMENT, "qplug_resolve: NULL argument");
    memset(out, 0, sizeof *out);

    qplug__expect e;
    qplug__expect_config(cfg, layer, hf_name, stored, &e);
    qplug_status st = qplug__reconcile(layer, stored, &e, err);
    if (st != QPLUG_OK)
        return st;

    layer->quant = e.scheme;
    layer->scale_dtype = e.scale;
    layer->weight_dtype = (stored && stored->present) ? stored->weight_dtype
                                                      : qplug__default_weight_dtype(e.scheme);
    out->quant = e.scheme;
    out->scale_dtype = e.scale;

    /* Policy rules: the first whose glob covers the layer decides. */
    for (size_t i = 0; pol && i < pol->n_rules; i++) {
        const qplug_policy_rule *r = &pol->rules[i];
        if (!qplug_glob_match(r->match, layer->name))
            continue;
        const char *file = pol->path[0] ? pol->path : "<policy>";
        const qplug_plugin *p = qplug_registry_find(reg, r->plugin);
        if (!p)
            return qplug_err_set(err, QPLUG_ERR_POLICY,
                                 "%s:%d: rule %s: plugin '%s' is not loaded (layer %s)", file,
                                 r->line, r->name, r->plugin, layer->name);
        if (qplug__score(p, layer) <= 0)
            return qplug_err_set(err, QPLUG_ERR_POLICY,
                                 "%s:%d: rule %s: plugin '%s' cannot handle layer %s "
                                 "(%s%s, %s storage, %s)",
                                 file, r->line, r->name, r->plugin, layer->name,
                                 qplug_layer_num_shards(layer) ? "sharded " : "",
                                 qplug_layer_kind_name(layer->kind),
                                 qplug_quant_scheme_name(layer->quant),
                                 layer->device == QPLUG_DEVICE_CUDA ? "cuda" : "cpu");
        out->plugin = p;
        qplug__reason(out->reason, sizeof out->reason, "policy %s:%d rule %s (checkpoint: %s)", file,
                 r->line, r->name, e.why);
        return QPLUG_OK;
    }

    /* Otherwise the best score for the scheme; ties go to the name that
     * sorts first, so the choice never depends on load order. */
    const qplug_plugin *best = NULL;
    int best_score = 0;
    size_t n = qplug_registry_count(reg);
    for (size_t i = 0; i < n; i++) {
        const qplug_plugin *p = qplug_registry_get(reg, i);
        if (!p)
            continue;
        int s = qplug__score(p, layer);
        if (s <= 0)
            continue;
        if (!best || s > best_score || (s == best_score && strcmp(p->name, best->name) < 0)) {
            best = p;
            best_score = s;
        }
    }
    if (!best)
        return qplug_err_set(err, QPLUG_ERR_RESOLVE,
                             "layer %s: no loaded plugin handles a %s%s layer with %s storage on "
                             "%s (%zu plugins loaded; %s)",
                             layer->name, qplug_layer_num_shards(layer) ? "sharded " : "",
                             qplug_layer_kind_name(layer->kind),
                             qplug_quant_scheme_name(layer->quant),
                             layer->device == QPLUG_DEVICE_CUDA ? "cuda" : "cpu", n, e.why);
    out->plugin = best;
    qplug__reason(out->reason, sizeof out->reason, "%s", e.why);
    return QPLUG_OK;
}
