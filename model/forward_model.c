/*
 * forward_model.c - opening a DeepSeek V4 checkpoint for the forward pass:
 * config, checkpoint, policy, plugins, inventory, resolution, one plugin
 * layer per projection / KV cache / fused MoE, and the non-plugin tensors
 * converted to fp32 once (the embedding and head stay in the checkpoint's
 * dtype and are converted row by row when read).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "forward_internal.h"

static qplug_status own(qplug_model *m, void *p, qplug_err *err)
{
    if (m->n_bufs == m->cap_bufs) {
        size_t cap = m->cap_bufs ? 2 * m->cap_bufs : 64;
        void **nb = realloc(m->bufs, cap * sizeof *nb);
        if (!nb) {
            free(p);
            return qplug_err_set(err, QPLUG_ERR_NOMEM, "model: out of memory");
        }
        m->bufs = nb;
        m->cap_bufs = cap;
    }
    m->bufs[m->n_bufs++] = p;
    return QPLUG_OK;
}

static const char *ckpt_dir(const qplug_model *m)
{
    return m->ckpt ? qplug_ckpt_dir(m->ckpt) : "checkpoint";
}

/* A BF16/F16/F32 tensor of exactly `numel` values as a new fp32 array, or
 * NULL in *out when it is absent and not required. */
static qplug_status fetch_f32(qplug_model *m, const char *name, int64_t numel, bool required,
                              float **out, qplug_err *err)
{
    *out = NULL;
    const char *file = NULL;
    const qplug_tensor *t = qplug_inventory_tensor(&m->inv, name, &file);
    if (!t) {
        if (!required)
            return QPLUG_OK;
        return qplug_err_set(err, QPLUG_ERR_NOT_FOUND, "%s: tensor %s is missing", ckpt_dir(m),
                             name);
    }
    if (!file)
        file = ckpt_dir(m);
    if (t->dtype != QPLUG_DT_F32 && t->dtype != QPLUG_DT_BF16 && t->dtype != QPLUG_DT_F16)
        return qplug_err_set(err, QPLUG_ERR_DTYPE, "%s: tensor %s is %s, expected F32/BF16/F16",
                             file, name, qplug_dtype_name(t->dtype));
    if (qplug_tensor_numel(t) != numel)
        return qplug_err_set(err, QPLUG_ERR_SHAPE,
                             "%s: tensor %s has %lld values, expected %lld", file, name,
                             (long long)qplug_tensor_numel(t), (long long)numel);
    float *p = malloc((size_t)numel * sizeof(float));
    if (!p)
        return qplug_err_set(err, QPLUG_ERR_NOMEM, "%s: out of memory for %s", file, name);
    qplug__fw_row_f32(t, 0, numel, p);
    qplug_status st = own(m, p, err);
    if (st)
        return st;
    *out = p;
    return QPLUG_OK;
}

static qplug_status fetch_ids(qplug_model *m, const char *name, int64_t rows, int64_t cols,
                              int32_t **out, qplug_err *err)
{
    *out = NULL;
    const char *file = NULL;
    const qplug_tensor *t = qplug_inventory_tensor(&m->inv, name, &file);
    if (!t)
        return qplug_err_set(err, QPLUG_ERR_NOT_FOUND, "%s: tensor %s is missing", ckpt_dir(m),
                             name);
    if (!file)
        file = ckpt_dir(m);
    if (t->dtype != QPLUG_DT_I64 && t->dtype != QPLUG_DT_I32)
        return qplug_err_set(err, QPLUG_ERR_DTYPE, "%s: tensor %s is %s, expected I64 or I32",
                             file, name, qplug_dtype_name(t->dtype));
    if (t->ndim != 2 || t->shape[0] != rows || t->shape[1] != cols)
        return qplug_err_set(err, QPLUG_ERR_SHAPE, "%s: tensor %s must be [%lld, %lld]", file,
                             name, (long long)rows, (long long)cols);
    int32_t *p = malloc((size_t)(rows * cols) * sizeof(int32_t));
    if (!p)
        return qplug_err_set(err, QPLUG_ERR_NOMEM, "%s: out of memory for %s", file, name);
    for (int64_t i = 0; i < rows * cols; i++) {
        int64_t v = t->dtype == QPLUG_DT_I64 ? ((const int64_t *)t->data)[i]
                                              : ((const int32_t *)t->data)[i];
        if (v < 0 || v >= m->E) {
            free(p);
            return qplug_err_set(err, QPLUG_ERR_FORMAT,
                                 "%s: tensor %s holds expert id %lld at %lld, outside [0, %lld)",
                                 file, name, (long long)v, (long long)i, (long long)m->E);
        }
        p[i] = (int32_t)v;
    }
    qplug_status st = own(m, p, err);
    if (st)
        return st;
    *out = p;
    return QPLUG_OK;
}

/* Creates the plugin layer `name` and checks its dims against the config. */
static qplug_status make_layer(qplug_model *m, const char *name, qplug_layer_kind kind, int64_t n,
                               int64_t k, int64_t groups, qplug_layer_inst **out, qplug_err *err)
{
    *out = NULL;
    const qplug_inv_layer *il = qplug_inventory_find(&m->inv, name);
    if (!il)
        return qplug_err_set(err, QPLUG_ERR_NOT_FOUND, "%s: the inventory has no layer %s",
                             ckpt_dir(m), name);
    const qplug_layer_desc *d = &il->desc;
    int64_t g = d->groups > 0 ? d->groups : 1;
    if (d->kind != kind || (n >= 0 && d->n != n) || d->k != k || g != groups)
        return qplug_err_set(err, QPLUG_ERR_SHAPE,
                             "%s: layer %s is %s n=%lld k=%lld groups=%lld, the config implies "
                             "%s n=%lld k=%lld groups=%lld",
                             ckpt_dir(m), name, qplug_layer_kind_name(d->kind), (long long)d->n,
                             (long long)d->k, (long long)g, qplug_layer_kind_name(kind),
                             (long long)n, (long long)k, (long long)groups);
    if (kind == QPLUG_LAYER_FUSED_MOE && (d->num_experts != m->E || d->top_k != m->topk))
        return qplug_err_set(err, QPLUG_ERR_SHAPE,
                             "%s: layer %s has %d experts top-%d, the config %lld top-%lld",
                             ckpt_dir(m), name, d->num_experts, d->top_k, (long long)m->E,
                             (long long)m->topk);
    if (!il->decision.plugin)
        return qplug_err_set(err, QPLUG_ERR_RESOLVE, "%s: layer %s has no plugin", ckpt_dir(m),
                             name);
    if (m->n_insts == m->cap_insts) {
        size_t cap = m->cap_insts ? 2 * m->cap_insts : 64;
        qplug_layer_inst **ni = realloc(m->insts, cap * sizeof *ni);
        if (!ni)
            return qplug_err_set(err, QPLUG_ERR_NOMEM, "model: out of memory");
        m->insts = ni;
        m->cap_insts = cap;
    }
    qplug_status st = qplug_layer_create(m->rt, il->decision.plugin, d, qplug_inventory_source,
                                         &m->inv, out, err);
    if (st)
        return st;
    m->insts[m->n_insts++] = *out;
    return QPLUG_OK;
}

#define TRY(expr)                                                                         \
    do {                                                                                   \
        qplug_status st_ = (expr);                                                         \
        if (st_)                                                                           \
            return st_;                                                                    \
    } while (0)

static qplug_status load_block(qplug_model *m, qplug__fw_block *b, qplug_err *err)
{
    char nm[160];
    const char *P = b->prefix;
    int64_t D = m->D, mix = (int64_t)(2 + m->hc) * m->hc, HD = m->hc * D;
#define N(fmt) (snprintf(nm, sizeof nm, "%s." fmt, P), nm)
    TRY(fetch_f32(m, N("hc_attn_fn"), mix * HD, true, &b->hc_attn_fn, err));
    TRY(fetch_f32(m, N("hc_attn_base"), mix, true, &b->hc_attn_base, err));
    TRY(fetch_f32(m, N("hc_attn_scale"), 3, true, &b->hc_attn_scale, err));
    TRY(fetch_f32(m, N("hc_ffn_fn"), mix * HD, true, &b->hc_ffn_fn, err));
    TRY(fetch_f32(m, N("hc_ffn_base"), mix, true, &b->hc_ffn_base, err));
    TRY(fetch_f32(m, N("hc_ffn_scale"), 3, true, &b->hc_ffn_scale, err));
    TRY(fetch_f32(m, N("attn_norm.weight"), D, true, &b->attn_norm, err));
    TRY(fetch_f32(m, N("ffn_norm.weight"), D, true, &b->ffn_norm, err));

    TRY(fetch_f32(m, N("attn.q_norm.weight"), m->ql, true, &b->q_norm, err));
    TRY(fetch_f32(m, N("attn.kv_norm.weight"), m->hd, true, &b->kv_norm, err));
    TRY(fetch_f32(m, N("attn.attn_sink"), m->H, true, &b->attn_sink, err));
    TRY(make_layer(m, N("attn.wq_a"), QPLUG_LAYER_LINEAR, m->ql, D, 1, &b->wq_a, err));
    TRY(make_layer(m, N("attn.wq_b"), QPLUG_LAYER_LINEAR, m->H * m->hd, m->ql, 1, &b->wq_b,
                   err));
    TRY(make_layer(m, N("attn.wkv"), QPLUG_LAYER_LINEAR, m->hd, D, 1, &b->wkv, err));
    TRY(make_layer(m, N("attn.wo_a"), QPLUG_LAYER_GROUPED_LINEAR, m->R, m->H * m->hd / m->G,
                   m->G, &b->wo_a, err));
    TRY(make_layer(m, N("attn.wo_b"), QPLUG_LAYER_LINEAR, D, m->G * m->R, 1, &b->wo_b, err));
    snprintf(nm, sizeof nm, "%s.attn", P);
    TRY(make_layer(m, nm, QPLUG_LAYER_ATTENTION, -1, m->hd, 1, &b->cache, err));
    b->kv_bytes = qplug_layer_kv_entry_bytes(b->cache);
    if (b->kv_bytes == 0)
        return qplug_err_set(err, QPLUG_ERR_PLUGIN,
                             "%s: layer %s: plugin %s stores no KV entries (kv_entry_bytes)",
                             ckpt_dir(m), nm, qplug_layer_plugin(b->cache)->name);

    if (b->ratio > 0) {
        int64_t c = b->ratio == 4 ? 2 : 1;
        TRY(make_layer(m, N("attn.compressor"), QPLUG_LAYER_LINEAR, 2 * c * m->hd, D, 1,
                       &b->c_kvgate, err));
        TRY(fetch_f32(m, N("attn.compressor.ape"), b->ratio * c * m->hd, true, &b->c_ape, err));
        TRY(fetch_f32(m, N("attn.compressor.norm.weight"), m->hd, true, &b->c_norm, err));
    }
    if (b->ratio == 4) {
        TRY(make_layer(m, N("attn.indexer.wq_b"), QPLUG_LAYER_LINEAR, m->nih * m->ihd, m->ql, 1,
                       &b->i_wq_b, err));
        TRY(make_layer(m, N("attn.indexer.weights_proj"), QPLUG_LAYER_LINEAR, m->nih, D, 1,
                       &b->i_wproj, err));
        TRY(make_layer(m, N("attn.indexer.compressor"), QPLUG_LAYER_LINEAR, 4 * m->ihd, D, 1,
                       &b->i_kvgate, err));
        TRY(fetch_f32(m, N("attn.indexer.compressor.ape"), 4 * 2 * m->ihd, true, &b->i_ape,
                      err));
        TRY(fetch_f32(m, N("attn.indexer.compressor.norm.weight"), m->ihd, true, &b->i_norm,
                      err));
    }

    TRY(fetch_f32(m, N("ffn.gate.weight"), m->E * D, true, &b->gate_w, err));
    if (b->hash)
        TRY(fetch_ids(m, N("ffn.gate.tid2eid"), m->V, m->topk, &b->tid2eid, err));
    else
        TRY(fetch_f32(m, N("ffn.gate.bias"), m->E, true, &b->gate_bias, err));
    TRY(make_layer(m, N("ffn.experts"), QPLUG_LAYER_FUSED_MOE, m->I, D, 1, &b->experts, err));
    if (m->cfg.n_shared_experts > 0) {
        b->shared_inter = m->I * m->cfg.n_shared_experts;
        TRY(make_layer(m, N("ffn.shared_experts.w1"), QPLUG_LAYER_LINEAR, b->shared_inter, D, 1,
                       &b->sh_w1, err));
        TRY(make_layer(m, N("ffn.shared_experts.w3"), QPLUG_LAYER_LINEAR, b->shared_inter, D, 1,
                       &b->sh_w3, err));
        TRY(make_layer(m, N("ffn.shared_experts.w2"), QPLUG_LAYER_LINEAR, D, b->shared_inter, 1,
                       &b->sh_w2, err));
    }

    if (b->is_mtp) {
        TRY(make_layer(m, N("e_proj"), QPLUG_LAYER_LINEAR, D, D, 1, &b->e_proj, err));
        TRY(make_layer(m, N("h_proj"), QPLUG_LAYER_LINEAR, D, D, 1, &b->h_proj, err));
        TRY(fetch_f32(m, N("enorm.weight"), D, true, &b->enorm, err));
        TRY(fetch_f32(m, N("hnorm.weight"), D, true, &b->hnorm, err));
        TRY(fetch_f32(m, N("norm.weight"), D, true, &b->norm, err));
        TRY(fetch_f32(m, N("hc_head_fn"), m->hc * HD, true, &b->hc_head_fn, err));
        TRY(fetch_f32(m, N("hc_head_base"), m->hc, true, &b->hc_head_base, err));
        TRY(fetch_f32(m, N("hc_head_scale"), 1, true, &b->hc_head_scale, err));
    }
#undef N
    return QPLUG_OK;
}

/* The dims the forward pass relies on, checked once so that the loops can
 * trust them. */
static qplug_status check_dims(qplug_model *m, qplug_err *err)
{
    const qplug_model_config *c = &m->cfg;
    const char *src = c->source;
    if (m->D <= 0 || m->V <= 0 || m->H <= 0 || m->hd <= 0 || m->ql <= 0 || m->G <= 0 ||
        m->R <= 0 || m->E <= 0 || m->topk <= 0 || m->I <= 0 || m->W <= 0)
        return qplug_err_set(err, QPLUG_ERR_CONFIG, "%s: a model dimension is missing or <= 0",
                             src);
    if (m->hc < 1 || m->hc > 16)
        return qplug_err_set(err, QPLUG_ERR_CONFIG, "%s: hc_mult %d outside [1, 16]", src, m->hc);
    if (m->rd <= 0 || m->rd % 2 || m->rd > 128 || m->rd > m->hd)
        return qplug_err_set(err, QPLUG_ERR_CONFIG,
                             "%s: qk_rope_head_dim %lld must be even, <= 128 and <= head_dim",
                             src, (long long)m->rd);
    if (m->E > 1024 || m->topk > m->E)
        return qplug_err_set(err, QPLUG_ERR_CONFIG,
                             "%s: %lld experts top-%lld (at most 1024 experts, top_k <= experts)",
                             src, (long long)m->E, (long long)m->topk);
    if ((m->H * m->hd) % m->G)
        return qplug_err_set(err, QPLUG_ERR_CONFIG, "%s: heads * head_dim not divisible by o_groups",
                             src);
    if (c->num_hidden_layers <= 0 || c->num_hidden_layers >= QPLUG_MAX_LAYERS)
        return qplug_err_set(err, QPLUG_ERR_CONFIG, "%s: num_hidden_layers %lld out of range", src,
                             (long long)c->num_hidden_layers);
    for (int64_t l = 0; l <= c->num_hidden_layers; l++) {
        int r = c->compress_ratios[l];
        if (r != 0 && r != 4 && r != 128)
            return qplug_err_set(err, QPLUG_ERR_CONFIG,
                                 "%s: compress ratio %d of layer %lld is not 0, 4 or 128", src, r,
                                 (long long)l);
        if (r == 4 && (m->nih <= 0 || m->ihd < m->rd || m->index_topk <= 0))
            return qplug_err_set(err, QPLUG_ERR_CONFIG,
                                 "%s: the indexer needs index_n_heads, index_head_dim >= "
                                 "qk_rope_head_dim and index_topk > 0",
                                 src);
    }
    return QPLUG_OK;
}

static qplug_status open_inner(qplug_model *m, const char *dir, const char *policy_path,
                               qplug_device_kind device, int threads, bool need_mtp,
                               qplug_err *err)
{
    if (device != QPLUG_DEVICE_CPU)
        return qplug_err_set(err, QPLUG_ERR_UNSUPPORTED,
                             "device cuda: the forward pass is not supported on CUDA yet");
    if (policy_path)
        TRY(qplug_policy_load(policy_path, &m->pol, err));
    TRY(qplug_config_load(dir, &m->cfg, err));
    const qplug_model_config *c = &m->cfg;
    m->D = c->hidden_size;
    m->V = c->vocab_size;
    m->H = c->num_attention_heads;
    m->hd = c->head_dim;
    m->rd = c->qk_rope_head_dim;
    m->ql = c->q_lora_rank;
    m->G = c->o_groups;
    m->R = c->o_lora_rank;
    m->E = c->n_routed_experts;
    m->topk = c->num_experts_per_tok;
    m->I = c->moe_intermediate_size;
    m->nih = c->index_n_heads;
    m->ihd = c->index_head_dim;
    m->index_topk = c->index_topk;
    m->W = c->sliding_window;
    m->hc = (int)c->hc_mult;
    m->rms_eps = (float)c->rms_norm_eps;
    m->hc_eps = (float)c->hc_eps;
    m->swiglu_limit = (float)c->swiglu_limit;
    m->rsf = (float)c->routed_scaling_factor;
    m->sinkhorn_iters = (int)c->hc_sinkhorn_iters;
    TRY(check_dims(m, err));
    qplug__fw_rope_freqs(c->rope_theta, (int)m->rd, NULL, m->main_freqs);
    qplug__fw_yarn y = {c->yarn_factor, c->yarn_original_max_pos, c->yarn_beta_fast,
                        c->yarn_beta_slow};
    qplug__fw_rope_freqs(c->compress_rope_theta, (int)m->rd, &y, m->comp_freqs);

    TRY(qplug_ckpt_open(dir, &m->ckpt, err));
    TRY(qplug_registry_create(&m->reg, err));
    TRY(qplug_registry_load_default(m->reg, &m->pol, err));
    TRY(qplug_inventory_build(&m->cfg, m->ckpt, device, &m->inv, err));
    m->inv_built = true;
    TRY(qplug_inventory_resolve(&m->inv, m->reg, &m->pol, err));
    m->has_mtp = m->inv.has_mtp && m->inv.n_mtp > 0;
    if (need_mtp && !m->has_mtp)
        return qplug_err_set(err, QPLUG_ERR_NOT_FOUND,
                             "%s: the checkpoint has no MTP weights (mtp.0.*), which speculative "
                             "decoding with MTP needs",
                             dir);
    TRY(qplug_runtime_create(&m->pol, device, threads, &m->rt, err));

    const char *file = NULL;
    m->embed = qplug_inventory_tensor(&m->inv, "embed.weight", &file);
    m->head = qplug_inventory_tensor(&m->inv, "head.weight", &file);
    const qplug_tensor *vd[2] = {m->embed, m->head};
    const char *vn[2] = {"embed.weight", "head.weight"};
    for (int i = 0; i < 2; i++) {
        if (!vd[i])
            return qplug_err_set(err, QPLUG_ERR_NOT_FOUND, "%s: tensor %s is missing", dir, vn[i]);
        if (vd[i]->dtype != QPLUG_DT_BF16 && vd[i]->dtype != QPLUG_DT_F16 &&
            vd[i]->dtype != QPLUG_DT_F32)
            return qplug_err_set(err, QPLUG_ERR_DTYPE, "%s: tensor %s is %s, expected BF16/F16/F32",
                                 dir, vn[i], qplug_dtype_name(vd[i]->dtype));
        if (vd[i]->ndim != 2 || vd[i]->shape[0] != m->V || vd[i]->shape[1] != m->D)
            return qplug_err_set(err, QPLUG_ERR_SHAPE, "%s: tensor %s must be [%lld, %lld]", dir,
                                 vn[i], (long long)m->V, (long long)m->D);
    }
    int64_t HD = m->hc * m->D;
    TRY(fetch_f32(m, "norm.weight", m->D, true, &m->norm, err));
    TRY(fetch_f32(m, "hc_head_fn", m->hc * HD, true, &m->hc_head_fn, err));
    TRY(fetch_f32(m, "hc_head_base", m->hc, true, &m->hc_head_base, err));
    TRY(fetch_f32(m, "hc_head_scale", 1, true, &m->hc_head_scale, err));

    m->n_blocks = (int)c->num_hidden_layers;
    m->blocks = calloc((size_t)m->n_blocks + 1, sizeof *m->blocks);
    if (!m->blocks)
        return qplug_err_set(err, QPLUG_ERR_NOMEM, "model: out of memory");
    for (int l = 0; l < m->n_blocks + (m->has_mtp ? 1 : 0); l++) {
        qplug__fw_block *b = &m->blocks[l];
        b->is_mtp = l == m->n_blocks;
        if (b->is_mtp)
            snprintf(b->prefix, sizeof b->prefix, "mtp.0");
        else
            snprintf(b->prefix, sizeof b->prefix, "layers.%d", l);
        b->ratio = c->compress_ratios[l];
        b->hash = !b->is_mtp && c->hash_moe[l];
        TRY(load_block(m, b, err));
    }
    return QPLUG_OK;
}

qplug_status qplug_model_open(const char *dir, const char *policy_path, qplug_device_kind device,
                              qplug_precision precision, int threads, bool need_mtp,
                              qplug_model **out, qplug_err *err)
{
    *out = NULL;
    qplug_model *m = calloc(1, sizeof *m);
    if (!m)
        return qplug_err_set(err, QPLUG_ERR_NOMEM, "model: out of memory");
    m->precision = precision;
    qplug_policy_init(&m->pol);
    qplug_status st = open_inner(m, dir, policy_path, device, threads, need_mtp, err);
    if (st) {
        qplug_model_close(m);
        return st;
    }
    *out = m;
    return QPLUG_OK;
}

void qplug_model_close(qplug_model *m)
{
    if (!m)
        return;
    /* Layers first: they point into the inventory, the checkpoint's
     * mappings and the plugins' libraries. */
    for (size_t i = 0; i < m->n_insts; i++)
        qplug_layer_destroy(m->insts[i]);
    free(m->insts);
    for (size_t i = 0; i < m->n_bufs; i++)
        free(m->bufs[i]);
    free(m->bufs);
    free(m->blocks);
    if (m->inv_built)
        qplug_inventory_free(&m->inv);
    qplug_runtime_destroy(m->rt);
    qplug_registry_destroy(m->reg);
    qplug_ckpt_close(m->ckpt);
    qplug_config_free(&m->cfg);
    qplug_policy_free(&m->pol);
    free(m);
}

const qplug_model_config *qplug_model_cfg(const qplug_model *m)
{
    return &m->cfg;
}

int64_t qplug_model_vocab(const qplug_model *m)
{
    return m->V;
}

bool qplug_model_has_mtp(const qplug_model *m)
{
    return m->has_mtp;
}

int qplug_model_threads(const qplug_model *m)
{
    return qplug_runtime_threads(m->rt);
}
