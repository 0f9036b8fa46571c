/*
 * config.json (official DeepSeek style and transformers style), its
 * quantization_config and ModelOpt's hf_quant_config.json.
 *
 * Both styles share the scalar key names; they differ in the layer schedule
 * (compress_ratios + num_hash_layers versus layer_types + compress_rates +
 * mlp_layer_types) and in where the rope parameters live (rope_scaling
 * versus rope_parameters {main, compress}). Optional keys default to the
 * V4-Flash values of deepseek_v4.md, as transformers does.
 */
#include "qplug/config.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "readfile.h"

#define QPLUG__CFG_MAX_FILE (64u * 1024u * 1024u)

/* What every helper needs to word an error. */
typedef struct qplug__cfg_ctx {
    const char *src;
    qplug_err *err;
} qplug__cfg_ctx;

static const char *qplug__json_type(const cJSON *v)
{
    if (cJSON_IsBool(v))
        return "a boolean";
    if (cJSON_IsNumber(v))
        return "a number";
    if (cJSON_IsString(v))
        return "a string";
    if (cJSON_IsArray(v))
        return "an array";
    if (cJSON_IsObject(v))
        return "an object";
    if (cJSON_IsNull(v))
        return "null";
    return "invalid";
}

/* A key's value, with JSON null treated as absent: exporters write null
 * for "not set" (kv_cache_quant_algo, scale_fmt). */
static const cJSON *qplug__get(const cJSON *obj, const char *key)
{
    if (!obj)
        return NULL;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

static qplug_status qplug__type_error(const qplug__cfg_ctx *c, const char *prefix, const char *key,
                                      const char *want, const cJSON *v)
{
    return qplug_err_set(c->err, QPLUG_ERR_CONFIG, "%s: key \"%s%s\": expected %s, got %s", c->src,
                         prefix, key, want, qplug__json_type(v));
}

/* Reads an integer in [lo, hi]; *present tells whether the key was there. */
static qplug_status qplug__get_int(const qplug__cfg_ctx *c, const cJSON *obj, const char *prefix,
                                   const char *key, int64_t lo, int64_t hi, int64_t *out,
                                   int *present)
{
    const cJSON *v = qplug__get(obj, key);
    *present = v != NULL;
    if (!v)
        return QPLUG_OK;
    double d = v->valuedouble;
    if (!cJSON_IsNumber(v) || d != floor(d) || !(fabs(d) < 9.0e15))
        return qplug__type_error(c, prefix, key, "an integer", v);
    if (d < (double)lo || d > (double)hi)
        return qplug_err_set(c->err, QPLUG_ERR_CONFIG,
                             "%s: key \"%s%s\": value %.0f is outside [%lld, %lld]", c->src, prefix,
                             key, d, (long long)lo, (long long)hi);
    *out = (int64_t)d;
    return QPLUG_OK;
}

/* Reads a finite positive number. */
static qplug_status qplug__get_pos(const qplug__cfg_ctx *c, const cJSON *obj, const char *prefix,
                                   const char *key, double *out)
{
    const cJSON *v = qplug__get(obj, key);
    if (!v)
        return QPLUG_OK;
    if (!cJSON_IsNumber(v))
        return qplug__type_error(c, prefix, key, "a number", v);
    if (!isfinite(v->valuedouble) || !(v->valuedouble > 0.0))
        return qplug_err_set(c->err, QPLUG_ERR_CONFIG, "%s: key \"%s%s\": value %g is not positive",
                             c->src, prefix, key, v->valuedouble);
    *out = v->valuedouble;
    return QPLUG_OK;
}

static qplug_status qplug__get_str(const qplug__cfg_ctx *c, const cJSON *obj, const char *prefix,
                                   const char *key, const char **out)
{
    const cJSON *v = qplug__get(obj, key);
    *out = NULL;
    if (!v)
        return QPLUG_OK;
    if (!cJSON_IsString(v))
        return qplug__type_error(c, prefix, key, "a string", v);
    *out = v->valuestring;
    return QPLUG_OK;
}

static qplug_status qplug__get_obj(const qplug__cfg_ctx *c, const cJSON *obj, const char *prefix,
                                   const char *key, const cJSON **out)
{
    const cJSON *v = qplug__get(obj, key);
    *out = NULL;
    if (!v)
        return QPLUG_OK;
    if (!cJSON_IsObject(v))
        return qplug__type_error(c, prefix, key, "an object", v);
    *out = v;
    return QPLUG_OK;
}

static qplug_status qplug__get_arr(const qplug__cfg_ctx *c, const cJSON *obj, const char *prefix,
                                   const char *key, const cJSON **out)
{
    const cJSON *v = qplug__get(obj, key);
    *out = NULL;
    if (!v)
        return QPLUG_OK;
    if (!cJSON_IsArray(v))
        return qplug__type_error(c, prefix, key, "an array", v);
    *out = v;
    return QPLUG_OK;
}

/* Parses a whole document; trailing whitespace only, no NUL bytes. */
static qplug_status qplug__parse_doc(const char *text, size_t len, const char *src, cJSON **out,
                                     qplug_err *err)
{
    *out = NULL;
    char *copy = malloc(len + 1);
    if (!copy)
        return qplug_err_set(err, QPLUG_ERR_NOMEM, "%s: out of memory", src);
    if (len)
        memcpy(copy, text, len);
    copy[len] = '\0';
    if (strlen(copy) != len) {
        free(copy);
        return qplug_err_set(err, QPLUG_ERR_CONFIG, "%s: contains a NUL byte", src);
    }
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(copy, &end, 0);
    if (!root) {
        size_t at = end && end >= copy ? (size_t)(end - copy) : 0;
        free(copy);
        return qplug_err_set(err, QPLUG_ERR_CONFIG, "%s: not valid JSON (error near byte %zu)", src,
                             at);
    }
    for (const char *p = end; *p; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            size_t at = (size_t)(p - copy);
            free(copy);
            cJSON_Delete(root);
            return qplug_err_set(err, QPLUG_ERR_CONFIG, "%s: unexpected text after the JSON at byte %zu",
                                 src, at);
        }
    }
    free(copy);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return qplug_err_set(err, QPLUG_ERR_CONFIG, "%s: not a JSON object", src);
    }
    *out = root;
    return QPLUG_OK;
}

/* ------------------------------------------------------------ model */

typedef struct qplug__int_field {
    const char *key;
    size_t off;
    int64_t def;                   /* used when absent and not required */
    int required;
    int64_t lo, hi;
} qplug__int_field;

#define QPLUG__F(name) offsetof(qplug_model_config, name)

static const qplug__int_field qplug__int_fields[] = {
    {"vocab_size", QPLUG__F(vocab_size), 0, 1, 1, INT32_MAX},
    {"hidden_size", QPLUG__F(hidden_size), 0, 1, 1, 1 << 20},
    {"num_hidden_layers", QPLUG__F(num_hidden_layers), 0, 1, 1, QPLUG_MAX_LAYERS},
    {"num_attention_heads", QPLUG__F(num_attention_heads), 0, 1, 1, 1 << 16},
    {"num_key_value_heads", QPLUG__F(num_key_value_heads), 1, 0, 1, 1 << 16},
    {"head_dim", QPLUG__F(head_dim), 512, 0, 1, 1 << 16},
    {"q_lora_rank", QPLUG__F(q_lora_rank), 1024, 0, 1, 1 << 20},
    {"o_groups", QPLUG__F(o_groups), 8, 0, 1, 1 << 16},
    {"o_lora_rank", QPLUG__F(o_lora_rank), 1024, 0, 1, 1 << 20},
    {"n_routed_experts", QPLUG__F(n_routed_experts), 0, 1, 1, 1 << 16},
    {"n_shared_experts", QPLUG__F(n_shared_experts), 1, 0, 0, 1 << 10},
    {"num_experts_per_tok", QPLUG__F(num_experts_per_tok), 0, 1, 1, 1 << 16},
    {"moe_intermediate_size", QPLUG__F(moe_intermediate_size), 0, 1, 1, 1 << 20},
    {"index_n_heads", QPLUG__F(index_n_heads), 64, 0, 1, 1 << 16},
    {"index_head_dim", QPLUG__F(index_head_dim), 128, 0, 1, 1 << 16},
    {"index_topk", QPLUG__F(index_topk), 512, 0, 1, INT32_MAX},
    {"num_nextn_predict_layers", QPLUG__F(num_nextn_predict_layers), 1, 0, 0, 16},
    {"sliding_window", QPLUG__F(sliding_window), 128, 0, 1, INT32_MAX},
    {"hc_mult", QPLUG__F(hc_mult), 4, 0, 1, 64},
    {"hc_sinkhorn_iters", QPLUG__F(hc_sinkhorn_iters), 20, 0, 0, 100000},
    {"max_position_embeddings", QPLUG__F(max_position_embeddings), 1048576, 0, 1, INT64_C(1) << 40},
};

typedef struct qplug__dbl_field {
    const char *key;
    size_t off;
    double def;
} qplug__dbl_field;

static const qplug__dbl_field qplug__dbl_fields[] = {
    {"routed_scaling_factor", QPLUG__F(routed_scaling_factor), 1.5},
    {"hc_eps", QPLUG__F(hc_eps), 1e-6},
    {"rms_norm_eps", QPLUG__F(rms_norm_eps), 1e-6},
    {"swiglu_limit", QPLUG__F(swiglu_limit), 10.0},
    {"rope_theta", QPLUG__F(rope_theta), 10000.0},
    {"compress_rope_theta", QPLUG__F(compress_rope_theta), 160000.0},
};

/* The yarn parameters of the compressed layers. `obj` is whichever rope
 * object the file carries; a type other than yarn means plain rope, which
 * yarn_factor 1 expresses. */
static qplug_status qplug__rope(const qplug__cfg_ctx *c, const cJSON *obj, const char *prefix,
                                qplug_model_config *cfg)
{
    const char *type = NULL;
    qplug_status st;
    if ((st = qplug__get_str(c, obj, prefix, "rope_type", &type)) != QPLUG_OK)
        return st;
    if (!type && (st = qplug__get_str(c, obj, prefix, "type", &type)) != QPLUG_OK)
        return st;
    if (!type || strcmp(type, "yarn") != 0) {
        cfg->yarn_factor = 1.0;
    } else {
        int64_t orig = (int64_t)cfg->yarn_original_max_pos;
        int present;
        if ((st = qplug__get_pos(c, obj, prefix, "factor", &cfg->yarn_factor)) != QPLUG_OK ||
            (st = qplug__get_int(c, obj, prefix, "original_max_position_embeddings", 1,
                                 INT64_C(1) << 40, &orig, &present)) != QPLUG_OK ||
            (st = qplug__get_pos(c, obj, prefix, "beta_fast", &cfg->yarn_beta_fast)) != QPLUG_OK ||
            (st = qplug__get_pos(c, obj, prefix, "beta_slow", &cfg->yarn_beta_slow)) != QPLUG_OK)
            return st;
        cfg->yarn_original_max_pos = (double)orig;
    }
    return qplug__get_pos(c, obj, prefix, "rope_theta", &cfg->compress_rope_theta);
}

static qplug_status qplug__rope_all(const qplug__cfg_ctx *c, const cJSON *root, qplug_model_config *cfg)
{
    cfg->yarn_factor = 16.0;
    cfg->yarn_original_max_pos = 65536.0;
    cfg->yarn_beta_fast = 32.0;
    cfg->yarn_beta_slow = 1.0;
    const cJSON *rp, *crp, *rs;
    qplug_status st;
    if ((st = qplug__get_obj(c, root, "", "rope_parameters", &rp)) != QPLUG_OK ||
        (st = qplug__get_obj(c, root, "", "compress_rope_parameters", &crp)) != QPLUG_OK ||
        (st = qplug__get_obj(c, root, "", "rope_scaling", &rs)) != QPLUG_OK)
        return st;
    if (rp) {
        const cJSON *main_rp, *comp;
        if ((st = qplug__get_obj(c, rp, "rope_parameters.", "main", &main_rp)) != QPLUG_OK ||
            (st = qplug__get_obj(c, rp, "rope_parameters.", "compress", &comp)) != QPLUG_OK)
            return st;
        if (main_rp &&
            (st = qplug__get_pos(c, main_rp, "rope_parameters.main.", "rope_theta", &cfg->rope_theta)) !=
                QPLUG_OK)
            return st;
        if (comp)
            return qplug__rope(c, comp, "rope_parameters.compress.", cfg);
        if (!main_rp && !crp)
            return qplug__rope(c, rp, "rope_parameters.", cfg);
    }
    if (crp)
        return qplug__rope(c, crp, "compress_rope_parameters.", cfg);
    if (rs)
        return qplug__rope(c, rs, "rope_scaling.", cfg);
    return QPLUG_OK;
}

static qplug_status qplug__ratio_ok(const qplug__cfg_ctx *c, const char *key, int64_t r)
{
    if (r == 0 || r == 4 || r == 128)
        return QPLUG_OK;
    return qplug_err_set(c->err, QPLUG_ERR_UNSUPPORTED,
                         "%s: key \"%s\": compress ratio %lld is not supported (allowed: 0, 4, 128)",
                         c->src, key, (long long)r);
}

/* compress_ratios (official) or layer_types + compress_rates (HF). */
static qplug_status qplug__schedule(const qplug__cfg_ctx *c, const cJSON *root, qplug_model_config *cfg,
                                    int *missing)
{
    int64_t n = cfg->num_hidden_layers, m = cfg->num_nextn_predict_layers;
    const cJSON *lt, *cr;
    qplug_status st;
    if ((st = qplug__get_arr(c, root, "", "layer_types", &lt)) != QPLUG_OK ||
        (st = qplug__get_arr(c, root, "", "compress_ratios", &cr)) != QPLUG_OK)
        return st;
    *missing = 0;
    if (lt) {
        /* transformers' own compress_rates, or its legacy scalar keys. */
        int64_t csa = 4, hca = 128;
        int present;
        const cJSON *rates;
        if ((st = qplug__get_obj(c, root, "", "compress_rates", &rates)) != QPLUG_OK ||
            (st = qplug__get_int(c, root, "", "compress_rate_csa", 0, 1 << 20, &csa, &present)) !=
                QPLUG_OK ||
            (st = qplug__get_int(c, root, "", "compress_rate_hca", 0, 1 << 20, &hca, &present)) !=
                QPLUG_OK ||
            (st = qplug__get_int(c, rates, "compress_rates.", "compressed_sparse_attention", 0,
                                 1 << 20, &csa, &present)) != QPLUG_OK ||
            (st = qplug__get_int(c, rates, "compress_rates.", "heavily_compressed_attention", 0,
                                 1 << 20, &hca, &present)) != QPLUG_OK)
            return st;
        /* The engine tells CSA from HCA by the ratio, so only the released
         * rates are meaningful. */
        if (csa != 4)
            return qplug_err_set(c->err, QPLUG_ERR_UNSUPPORTED,
                                 "%s: key \"compress_rates.compressed_sparse_attention\": rate %lld "
                                 "is not supported (allowed: 4)",
                                 c->src, (long long)csa);
        if (hca != 128)
            return qplug_err_set(c->err, QPLUG_ERR_UNSUPPORTED,
                                 "%s: key \"compress_rates.heavily_compressed_attention\": rate %lld "
                                 "is not supported (allowed: 128)",
                                 c->src, (long long)hca);
        int len = cJSON_GetArraySize(lt);
        if (len != n)
            return qplug_err_set(c->err, QPLUG_ERR_CONFIG,
                                 "%s: key \"layer_types\": %d entries, num_hidden_layers is %lld",
                                 c->src, len, (long long)n);
        int i = 0;
        for (const cJSON *e = lt->child; e; e = e->next, i++) {
            const char *s = cJSON_IsString(e) ? e->valuestring : "";
            if (strcmp(s, "sliding_attention") == 0)
                cfg->compress_ratios[i] = 0;
            else if (strcmp(s, "compressed_sparse_attention") == 0)
                cfg->compress_ratios[i] = (int32_t)csa;
            else if (strcmp(s, "heavily_compressed_attention") == 0)
                cfg->compress_ratios[i] = (int32_t)hca;
            else
                return qplug_err_set(c->err, QPLUG_ERR_CONFIG,
                                     "%s: key \"layer_types[%d]\": \"%s\" is not one of "
                                     "sliding_attention, compressed_sparse_attention, "
                                     "heavily_compressed_attention",
                                     c->src, i, cJSON_IsString(e) ? s : qplug__json_type(e));
        }
        /* transformers does not model MTP; its block is window-only. */
        for (int64_t k = n; k < n + m; k++)
            cfg->compress_ratios[k] = 0;
    } else if (cr) {
        int len = cJSON_GetArraySize(cr);
        if (len != n && len != n + m)
            return qplug_err_set(c->err, QPLUG_ERR_CONFIG,
                                 "%s: key \"compress_ratios\": %d entries, expected %lld "
                                 "(num_hidden_layers + num_nextn_predict_layers) or %lld",
                                 c->src, len, (long long)(n + m), (long long)n);
        int i = 0;
        for (const cJSON *e = cr->child; e; e = e->next, i++) {
            char key[48];
            snprintf(key, sizeof key, "compress_ratios[%d]", i);
            if (!cJSON_IsNumber(e) || e->valuedouble != floor(e->valuedouble))
                return qplug_err_set(c->err, QPLUG_ERR_CONFIG, "%s: key \"%s\": expected an integer, got %s",
                                     c->src, key, qplug__json_type(e));
            if (fabs(e->valuedouble) > 1e9)
                return qplug__ratio_ok(c, key, -1);
            if ((st = qplug__ratio_ok(c, key, (int64_t)e->valuedouble)) != QPLUG_OK)
                return st;
            cfg->compress_ratios[i] = (int32_t)e->valuedouble;
        }
        /* Configs written for engines without MTP list the main layers only;
         * the MTP block is window-only in every release. */
        for (int64_t k = len; k < n + m; k++)
            cfg->compress_ratios[k] = 0;
    } else {
        *missing = 1;
    }

    const cJSON *mlt;
    if ((st = qplug__get_arr(c, root, "", "mlp_layer_types", &mlt)) != QPLUG_OK)
        return st;
    if (mlt) {
        int len = cJSON_GetArraySize(mlt);
        if (len != n)
            return qplug_err_set(c->err, QPLUG_ERR_CONFIG,
                                 "%s: key \"mlp_layer_types\": %d entries, num_hidden_layers is %lld",
                                 c->src, len, (long long)n);
        int i = 0;
        cfg->num_hash_layers = 0;
        for (const cJSON *e = mlt->child; e; e = e->next, i++) {
            const char *s = cJSON_IsString(e) ? e->valuestring : "";
            if (strcmp(s, "hash_moe") == 0) {
                cfg->hash_moe[i] = true;
                cfg->num_hash_layers++;
            } else if (strcmp(s, "moe") != 0) {
                return qplug_err_set(c->err, QPLUG_ERR_CONFIG,
                                     "%s: key \"mlp_layer_types[%d]\": \"%s\" is not hash_moe or moe",
                                     c->src, i, cJSON_IsString(e) ? s : qplug__json_type(e));
            }
        }
    } else {
        int64_t nh = n < 3 ? n : 3;
        int present;
        if ((st = qplug__get_int(c, root, "", "num_hash_layers", 0, n, &nh, &present)) != QPLUG_OK)
            return st;
        cfg->num_hash_layers = nh;
        for (int64_t i = 0; i < n; i++)
            cfg->hash_moe[i] = i < nh;
    }
    cfg->hf_style = lt != NULL || mlt != NULL || qplug__get(root, "rope_parameters") != NULL;
    return QPLUG_OK;
}

static qplug_status qplug__model(const qplug__cfg_ctx *c, const cJSON *root, qplug_model_config *cfg)
{
    qplug_status st;
    char missing[400] = "";
    for (size_t i = 0; i < sizeof qplug__int_fields / sizeof qplug__int_fields[0]; i++) {
        const qplug__int_field *f = &qplug__int_fields[i];
        int64_t *dst = (int64_t *)((char *)cfg + f->off);
        int present;
        *dst = f->def;
        if ((st = qplug__get_int(c, root, "", f->key, f->lo, f->hi, dst, &present)) != QPLUG_OK)
            return st;
        if (!present && f->required) {
            size_t used = strlen(missing);
            snprintf(missing + used, sizeof missing - used, "%s%s", used ? ", " : "", f->key);
        }
    }
    for (size_t i = 0; i < sizeof qplug__dbl_fields / sizeof qplug__dbl_fields[0]; i++) {
        const qplug__dbl_field *f = &qplug__dbl_fields[i];
        double *dst = (double *)((char *)cfg + f->off);
        *dst = f->def;
        if ((st = qplug__get_pos(c, root, "", f->key, dst)) != QPLUG_OK)
            return st;
    }
    const cJSON *ntp = qplug__get(root, "norm_topk_prob");
    cfg->norm_topk_prob = true;
    if (ntp) {
        if (!cJSON_IsBool(ntp))
            return qplug__type_error(c, "", "norm_topk_prob", "a boolean", ntp);
        cfg->norm_topk_prob = cJSON_IsTrue(ntp);
    }
    const char *sf;
    if ((st = qplug__get_str(c, root, "", "scoring_func", &sf)) != QPLUG_OK)
        return st;
    if (!sf)
        sf = "sqrtsoftplus";
    if (strcmp(sf, "sqrtsoftplus") != 0 && strcmp(sf, "softmax") != 0 && strcmp(sf, "sigmoid") != 0)
        return qplug_err_set(c->err, QPLUG_ERR_UNSUPPORTED,
                             "%s: key \"scoring_func\": \"%s\" is not supported (allowed: "
                             "sqrtsoftplus, softmax, sigmoid)",
                             c->src, sf);
    snprintf(cfg->scoring_func, sizeof cfg->scoring_func, "%s", sf);

    if (!missing[0]) {
        if (cfg->num_hidden_layers + cfg->num_nextn_predict_layers > QPLUG_MAX_LAYERS)
            return qplug_err_set(c->err, QPLUG_ERR_UNSUPPORTED,
                                 "%s: num_hidden_layers + num_nextn_predict_layers = %lld exceeds %d",
                                 c->src,
                                 (long long)(cfg->num_hidden_layers + cfg->num_nextn_predict_layers),
                                 QPLUG_MAX_LAYERS);
        int no_schedule;
        if ((st = qplug__schedule(c, root, cfg, &no_schedule)) != QPLUG_OK)
            return st;
        if (no_schedule)
            snprintf(missing, sizeof missing, "compress_ratios (or layer_types)");
    }
    if (missing[0])
        return qplug_err_set(c->err, QPLUG_ERR_CONFIG, "%s: missing required keys: %s", c->src,
                             missing);

    /* qk_rope_head_dim, or transformers' partial_rotary_factor of head_dim. */
    int present;
    cfg->qk_rope_head_dim = 64;
    if ((st = qplug__get_int(c, root, "", "qk_rope_head_dim", 0, cfg->head_dim,
                             &cfg->qk_rope_head_dim, &present)) != QPLUG_OK)
        return st;
    if (!present) {
        double prf = 0;
        if ((st = qplug__get_pos(c, root, "", "partial_rotary_factor", &prf)) != QPLUG_OK)
            return st;
        if (prf > 0) {
            double d = prf * (double)cfg->head_dim;
            if (prf > 1.0 || d != floor(d))
                return qplug_err_set(c->err, QPLUG_ERR_CONFIG,
                                     "%s: key \"partial_rotary_factor\": %g of head_dim %lld is not a "
                                     "whole number of dimensions",
                                     c->src, prf, (long long)cfg->head_dim);
            cfg->qk_rope_head_dim = (int64_t)d;
        }
    }
    if (cfg->qk_rope_head_dim > cfg->head_dim || cfg->qk_rope_head_dim % 2 != 0)
        return qplug_err_set(c->err, QPLUG_ERR_CONFIG,
                             "%s: key \"qk_rope_head_dim\": %lld must be even and at most head_dim %lld",
                             c->src, (long long)cfg->qk_rope_head_dim, (long long)cfg->head_dim);
    if (cfg->num_attention_heads % cfg->o_groups != 0)
        return qplug_err_set(c->err, QPLUG_ERR_CONFIG,
                             "%s: key \"o_groups\": %lld does not divide num_attention_heads %lld",
                             c->src, (long long)cfg->o_groups, (long long)cfg->num_attention_heads);
    if (cfg->num_experts_per_tok > cfg->n_routed_experts)
        return qplug_err_set(c->err, QPLUG_ERR_CONFIG,
                             "%s: key \"num_experts_per_tok\": %lld exceeds n_routed_experts %lld",
                             c->src, (long long)cfg->num_experts_per_tok,
                             (long long)cfg->n_routed_experts);
    return qplug__rope_all(c, root, cfg);
}

/* ------------------------------------------------------------ quantization */

static qplug_status qplug__set_exclude(const qplug__cfg_ctx *c, const cJSON *arr, const char *key,
                                       qplug_quant_config *q)
{
    int n = cJSON_GetArraySize(arr);
    char **list = calloc(n > 0 ? (size_t)n : 1, sizeof *list);
    if (!list)
        return qplug_err_set(c->err, QPLUG_ERR_NOMEM, "%s: out of memory", c->src);
    int i = 0;
    for (const cJSON *e = arr->child; e; e = e->next, i++) {
        if (!cJSON_IsString(e)) {
            for (int k = 0; k < i; k++)
                free(list[k]);
            free(list);
            return qplug_err_set(c->err, QPLUG_ERR_CONFIG, "%s: key \"%s[%d]\": expected a string, got %s",
                                 c->src, key, i, qplug__json_type(e));
        }
        if (!(list[i] = strdup(e->valuestring))) {
            for (int k = 0; k < i; k++)
                free(list[k]);
            free(list);
            return qplug_err_set(c->err, QPLUG_ERR_NOMEM, "%s: out of memory", c->src);
        }
    }
    for (size_t k = 0; k < q->n_exclude; k++)
        free(q->exclude[k]);
    free(q->exclude);
    q->exclude = list;
    q->n_exclude = (size_t)n;
    return QPLUG_OK;
}

static qplug_status qplug__expert_dtype(const qplug__cfg_ctx *c, const cJSON *root, const cJSON *qc,
                                        qplug_quant_config *q)
{
    const char *top = NULL, *inner = NULL;
    qplug_status st;
    if ((st = qplug__get_str(c, root, "", "expert_dtype", &top)) != QPLUG_OK ||
        (st = qplug__get_str(c, qc, "quantization_config.", "expert_dtype", &inner)) != QPLUG_OK)
        return st;
    if (top && inner && strcmp(top, inner) != 0)
        return qplug_err_set(c->err, QPLUG_ERR_CONFIG,
                             "%s: key \"expert_dtype\" is \"%s\" but \"quantization_config.expert_dtype\" "
                             "is \"%s\"",
                             c->src, top, inner);
    const char *v = top ? top : inner;
    const char *key = top ? "expert_dtype" : "quantization_config.expert_dtype";
    q->expert_dtype = QPLUG_EXPERT_FP4;
    if (!v || strcmp(v, "fp4") == 0)
        return QPLUG_OK;
    if (strcmp(v, "fp8") == 0) {
        q->expert_dtype = QPLUG_EXPERT_FP8;
        return QPLUG_OK;
    }
    return qplug_err_set(c->err, QPLUG_ERR_CONFIG,
                         "%s: key \"%s\": \"%s\" is not a valid expert_dtype (allowed: \"fp4\", \"fp8\")",
                         c->src, key, v);
}

static qplug_status qplug__deepseek_fp8(const qplug__cfg_ctx *c, const cJSON *qc, qplug_quant_config *q)
{
    const char *P = "quantization_config.";
    const char *fmt, *act, *scale_fmt, *moe;
    qplug_status st;
    if ((st = qplug__get_str(c, qc, P, "fmt", &fmt)) != QPLUG_OK ||
        (st = qplug__get_str(c, qc, P, "activation_scheme", &act)) != QPLUG_OK ||
        (st = qplug__get_str(c, qc, P, "scale_fmt", &scale_fmt)) != QPLUG_OK ||
        (st = qplug__get_str(c, qc, P, "moe_quant_algo", &moe)) != QPLUG_OK)
        return st;
    if (fmt && strcmp(fmt, "e4m3") != 0)
        return qplug_err_set(c->err, QPLUG_ERR_UNSUPPORTED,
                             "%s: key \"quantization_config.fmt\": \"%s\" is not supported (allowed: e4m3)",
                             c->src, fmt);
    if (act && strcmp(act, "dynamic") != 0)
        return qplug_err_set(c->err, QPLUG_ERR_UNSUPPORTED,
                             "%s: key \"quantization_config.activation_scheme\": \"%s\" is not "
                             "supported (allowed: dynamic)",
                             c->src, act);
    if (scale_fmt && strcmp(scale_fmt, "ue8m0") != 0)
        return qplug_err_set(c->err, QPLUG_ERR_UNSUPPORTED,
                             "%s: key \"quantization_config.scale_fmt\": \"%s\" is not supported "
                             "(allowed: ue8m0, or absent for F32 scales)",
                             c->src, scale_fmt);
    q->scale_ue8m0 = scale_fmt != NULL;
    if (moe && strcmp(moe, "NVFP4") != 0)
        return qplug_err_set(c->err, QPLUG_ERR_UNSUPPORTED,
                             "%s: key \"quantization_config.moe_quant_algo\": \"%s\" is not "
                             "supported (allowed: NVFP4)",
                             c->src, moe);
    q->moe_nvfp4 = moe != NULL;

    q->block_n = q->block_k = 128;
    const cJSON *wbs;
    if ((st = qplug__get_arr(c, qc, P, "weight_block_size", &wbs)) != QPLUG_OK)
        return st;
    if (wbs) {
        const cJSON *a = wbs->child, *b = a ? a->next : NULL;
        if (cJSON_GetArraySize(wbs) != 2 || !cJSON_IsNumber(a) || !cJSON_IsNumber(b) ||
            a->valuedouble != 128 || b->valuedouble != 128)
            return qplug_err_set(c->err, QPLUG_ERR_UNSUPPORTED,
                                 "%s: key \"quantization_config.weight_block_size\": only [128, 128] "
                                 "is supported",
                                 c->src);
    }
    const cJSON *ign;
    if ((st = qplug__get_arr(c, qc, P, "ignored_layers", &ign)) != QPLUG_OK)
        return st;
    if (ign)
        return qplug__set_exclude(c, ign, "quantization_config.ignored_layers", q);
    return QPLUG_OK;
}

/* What one ModelOpt section (hf_quant_config.json "quantization", or the
 * modelopt quantization_config) says, before the two are merged. */
typedef struct qplug__mo_section {
    const char *src;
    const char *prefix;
    const char *algo;
    int has_group;
    int64_t group;
    int has_kv;
    const char *kv;
    const cJSON *exclude;
    const char *exclude_key;
} qplug__mo_section;

static qplug_status qplug__mo_read(const qplug__cfg_ctx *c, const cJSON *sec, const char *prefix,
                                   qplug__mo_section *s)
{
    qplug_status st;
    memset(s, 0, sizeof *s);
    s->src = c->src;
    s->prefix = prefix;
    if ((st = qplug__get_str(c, sec, prefix, "quant_algo", &s->algo)) != QPLUG_OK ||
        (st = qplug__get_int(c, sec, prefix, "group_size", 1, 1 << 20, &s->group, &s->has_group)) !=
            QPLUG_OK)
        return st;
    /* Newer exports put the group size under config_groups.*.weights. */
    const cJSON *groups;
    if ((st = qplug__get_obj(c, sec, prefix, "config_groups", &groups)) != QPLUG_OK)
        return st;
    for (const cJSON *g = groups ? groups->child : NULL; g && !s->has_group; g = g->next) {
        const cJSON *w = cJSON_IsObject(g) ? qplug__get(g, "weights") : NULL;
        if (w && cJSON_IsObject(w) &&
            (st = qplug__get_int(c, w, "config_groups.weights.", "group_size", 1, 1 << 20, &s->group,
                                 &s->has_group)) != QPLUG_OK)
            return st;
    }
    const cJSON *kv = sec ? cJSON_GetObjectItemCaseSensitive(sec, "kv_cache_quant_algo") : NULL;
    s->has_kv = kv != NULL;
    if (kv && !cJSON_IsNull(kv) && !cJSON_IsString(kv))
        return qplug__type_error(c, prefix, "kv_cache_quant_algo", "a string or null", kv);
    s->kv = kv && cJSON_IsString(kv) ? kv->valuestring : NULL;
    static const char *const keys[] = {"exclude_modules", "ignore"};
    for (int i = 0; i < 2; i++) {
        const cJSON *arr;
        if ((st = qplug__get_arr(c, sec, prefix, keys[i], &arr)) != QPLUG_OK)
            return st;
        if (arr && !s->exclude) {
            s->exclude = arr;
            s->exclude_key = keys[i];
        }
    }
    return QPLUG_OK;
}

static qplug_status qplug__modelopt(const qplug__cfg_ctx *cc, const qplug__mo_section *hf,
                                    const qplug__mo_section *qc, qplug_quant_config *q)
{
    const qplug__mo_section *primary = hf ? hf : qc;
    if (hf && qc && hf->algo && qc->algo && strcmp(hf->algo, qc->algo) != 0)
        return qplug_err_set(cc->err, QPLUG_ERR_CONFIG,
                             "%s: quant_algo \"%s\" disagrees with \"%s\" in %s", hf->src, hf->algo,
                             qc->algo, qc->src);
    const char *algo = primary->algo ? primary->algo : (qc ? qc->algo : NULL);
    if (!algo)
        return qplug_err_set(cc->err, QPLUG_ERR_CONFIG, "%s: missing required key \"%squant_algo\"",
                             primary->src, primary->prefix);
    static const struct { const char *name; qplug_modelopt_algo algo; } algos[] = {
        {"FP8", QPLUG_MO_FP8},
        {"FP8_PER_CHANNEL_PER_TOKEN", QPLUG_MO_FP8_PER_CHANNEL_PER_TOKEN},
        {"FP8_PB_WO", QPLUG_MO_FP8_PB_WO},
        {"NVFP4", QPLUG_MO_NVFP4},
    };
    q->algo = QPLUG_MO_NONE;
    for (size_t i = 0; i < sizeof algos / sizeof algos[0]; i++)
        if (strcmp(algo, algos[i].name) == 0)
            q->algo = algos[i].algo;
    if (q->algo == QPLUG_MO_NONE)
        return qplug_err_set(cc->err, QPLUG_ERR_UNSUPPORTED,
                             "%s: key \"%squant_algo\": \"%s\" is not supported (allowed: FP8, "
                             "FP8_PER_CHANNEL_PER_TOKEN, FP8_PB_WO, NVFP4)",
                             primary->src, primary->prefix, algo);

    int has_group = primary->has_group || (qc && qc->has_group);
    q->group_size = (int32_t)(primary->has_group ? primary->group : qc && qc->has_group ? qc->group : 0);
    const char *kv = primary->has_kv ? primary->kv : qc ? qc->kv : NULL;
    const cJSON *excl = primary->exclude ? primary->exclude : qc ? qc->exclude : NULL;
    const qplug__mo_section *excl_from = primary->exclude ? primary : qc;

    if (q->algo == QPLUG_MO_NVFP4) {
        /* The fields vLLM insists on: the group size always, and in
         * hf_quant_config.json also the KV-cache algorithm (null is fine)
         * and the exclude list (empty is fine). All are named at once. */
        char missing[300] = "";
        if (!has_group)
            snprintf(missing, sizeof missing, "%sgroup_size", primary->prefix);
        if (hf && !hf->has_kv) {
            size_t u = strlen(missing);
            snprintf(missing + u, sizeof missing - u, "%s%skv_cache_quant_algo", u ? ", " : "",
                     hf->prefix);
        }
        if (hf && !hf->exclude) {
            size_t u = strlen(missing);
            snprintf(missing + u, sizeof missing - u, "%s%sexclude_modules", u ? ", " : "", hf->prefix);
        }
        if (missing[0])
            return qplug_err_set(cc->err, QPLUG_ERR_CONFIG,
                                 "%s: NVFP4 quantization is missing required keys: %s", primary->src,
                                 missing);
        if (q->group_size != 16)
            return qplug_err_set(cc->err, QPLUG_ERR_UNSUPPORTED,
                                 "%s: key \"%sgroup_size\": %d is not supported for NVFP4 (allowed: 16)",
                                 primary->src, primary->prefix, (int)q->group_size);
    }
    if (kv) {
        if (strlen(kv) >= sizeof q->kv_cache_algo)
            return qplug_err_set(cc->err, QPLUG_ERR_CONFIG, "%s: key \"%skv_cache_quant_algo\" is too long",
                                 primary->src, primary->prefix);
        snprintf(q->kv_cache_algo, sizeof q->kv_cache_algo, "%s", kv);
    }
    if (excl) {
        char key[64];
        snprintf(key, sizeof key, "%s%s", excl_from->prefix, excl_from->exclude_key);
        qplug__cfg_ctx ec = {excl_from->src, cc->err};
        return qplug__set_exclude(&ec, excl, key, q);
    }
    return QPLUG_OK;
}

static qplug_status qplug__quant(const qplug__cfg_ctx *c, const cJSON *root, const cJSON *hfq,
                                 const char *hfq_src, qplug_quant_config *q)
{
    qplug_status st;
    const cJSON *qc;
    if ((st = qplug__get_obj(c, root, "", "quantization_config", &qc)) != QPLUG_OK)
        return st;
    if ((st = qplug__expert_dtype(c, root, qc, q)) != QPLUG_OK)
        return st;

    qplug__mo_section qsec, hsec;
    qplug__mo_section *qsp = NULL, *hsp = NULL;
    if (qc) {
        const char *method;
        if ((st = qplug__get_str(c, qc, "quantization_config.", "quant_method", &method)) != QPLUG_OK)
            return st;
        if (!method)
            return qplug_err_set(c->err, QPLUG_ERR_CONFIG,
                                 "%s: missing required key \"quantization_config.quant_method\"", c->src);
        if (strcmp(method, "fp8") == 0 || strcmp(method, "deepseek_v4_fp8") == 0) {
            if (hfq)
                return qplug_err_set(c->err, QPLUG_ERR_CONFIG,
                                     "%s: quant_method \"%s\" conflicts with the ModelOpt config %s",
                                     c->src, method, hfq_src);
            q->method = QPLUG_QM_DEEPSEEK_FP8;
            snprintf(q->source, sizeof q->source, "%s", c->src);
            return qplug__deepseek_fp8(c, qc, q);
        }
        if (strcmp(method, "modelopt") != 0)
            return qplug_err_set(c->err, QPLUG_ERR_UNSUPPORTED,
                                 "%s: key \"quantization_config.quant_method\": \"%s\" is not "
                                 "supported (allowed: fp8, deepseek_v4_fp8, modelopt)",
                                 c->src, method);
        /* Some exports nest hf_quant_config.json's "quantization" here. */
        const cJSON *inner;
        if ((st = qplug__get_obj(c, qc, "quantization_config.", "quantization", &inner)) != QPLUG_OK)
            return st;
        if ((st = qplug__mo_read(c, inner ? inner : qc,
                                 inner ? "quantization_config.quantization." : "quantization_config.",
                                 &qsec)) != QPLUG_OK)
            return st;
        qsp = &qsec;
    }
    if (hfq) {
        qplug__cfg_ctx hc = {hfq_src, c->err};
        const cJSON *sec;
        if ((st = qplug__get_obj(&hc, hfq, "", "quantization", &sec)) != QPLUG_OK)
            return st;
        if (!sec)
            return qplug_err_set(c->err, QPLUG_ERR_CONFIG, "%s: missing required key \"quantization\"",
                                 hfq_src);
        if ((st = qplug__mo_read(&hc, sec, "quantization.", &hsec)) != QPLUG_OK)
            return st;
        hsp = &hsec;
    }
    if (!qsp && !hsp)
        return QPLUG_OK;
    q->method = QPLUG_QM_MODELOPT;
    snprintf(q->source, sizeof q->source, "%s", hsp ? hfq_src : c->src);
    return qplug__modelopt(c, hsp, qsp, q);
}

/* ------------------------------------------------------------ entry points */

void qplug_config_free(qplug_model_config *cfg)
{
    if (!cfg)
        return;
    for (size_t i = 0; i < cfg->quant.n_exclude; i++)
        free(cfg->quant.exclude[i]);
    free(cfg->quant.exclude);
    cfg->quant.exclude = NULL;
    cfg->quant.n_exclude = 0;
}

qplug_status qplug_config_parse(const char *config_json, size_t config_len, const char *config_source,
                                const char *hf_quant_json, size_t hf_quant_len,
                                const char *hf_quant_source, qplug_model_config *cfg, qplug_err *err)
{
    memset(cfg, 0, sizeof *cfg);
    const char *src = config_source ? config_source : "config.json";
    const char *hsrc = hf_quant_source ? hf_quant_source : "hf_quant_config.json";
    snprintf(cfg->source, sizeof cfg->source, "%s", src);
    if (!config_json && config_len)
        return qplug_err_set(err, QPLUG_ERR_ARGUMENT, "%s: NULL text", src);
    cJSON *root = NULL, *hfq = NULL;
    qplug_status st = qplug__parse_doc(config_json ? config_json : "", config_len, src, &root, err);
    if (st == QPLUG_OK && hf_quant_json)
        st = qplug__parse_doc(hf_quant_json, hf_quant_len, hsrc, &hfq, err);
    qplug__cfg_ctx c = {src, err};
    if (st == QPLUG_OK)
        st = qplug__model(&c, root, cfg);
    if (st == QPLUG_OK)
        st = qplug__quant(&c, root, hfq, hsrc, &cfg->quant);
    cJSON_Delete(root);
    cJSON_Delete(hfq);
    if (st != QPLUG_OK) {
        qplug_config_free(cfg);
        char keep[sizeof cfg->source];
        memcpy(keep, cfg->source, sizeof keep);
        memset(cfg, 0, sizeof *cfg);
        memcpy(cfg->source, keep, sizeof keep);
    }
    return st;
}

qplug_status qplug_config_load(const char *dir, qplug_model_config *cfg, qplug_err *err)
{
    memset(cfg, 0, sizeof *cfg);
    size_t dl = strlen(dir);
    char *cpath = malloc(dl + 32), *hpath = malloc(dl + 32);
    char *ctext = NULL, *htext = NULL;
    size_t clen = 0, hlen = 0;
    qplug_status st;
    if (!cpath || !hpath) {
        st = qplug_err_set(err, QPLUG_ERR_NOMEM, "%s: out of memory", dir);
        goto out;
    }
    snprintf(cpath, dl + 32, "%s/config.json", dir);
    snprintf(hpath, dl + 32, "%s/hf_quant_config.json", dir);
    if ((st = qplug__read_file(cpath, QPLUG__CFG_MAX_FILE, &ctext, &clen, err)) != QPLUG_OK)
        goto out;
    st = qplug__read_file(hpath, QPLUG__CFG_MAX_FILE, &htext, &hlen, err);
    if (st == QPLUG_ERR_NOT_FOUND)
        st = QPLUG_OK;
    else if (st != QPLUG_OK)
        goto out;
    st = qplug_config_parse(ctext, clen, cpath, htext, hlen, hpath, cfg, err);
out:
    free(ctext);
    free(htext);
    free(cpath);
    free(hpath);
    return st;
}
