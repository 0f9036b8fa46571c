/* qplug synth: each format of the tiny preset is written, reopened with the
 * core's checkpoint and config readers, and checked against names, dtypes
 * and shapes typed in by hand from deepseek_v4.md sections 1-3 for the
 * tiny dims (D 256, 4 heads x 128, q_lora 128, 2 groups x 128, 8 experts
 * top-2, I 128, indexer 4 x 64, vocab 1024). Values are checked for scale
 * (std 1/sqrt(fan_in) for projections) and across formats: one seed holds
 * the same underlying weights in every format, so each quantized format must
 * dequantize (through qplug/codec.h, itself tested against ml_dtypes) to
 * within its format's precision of the BF16 checkpoint. */
#include <cJSON.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "qplug/codec.h"
#include "qplug/config.h"
#include "qplug/safetensors.h"
#include "qplug/synth.h"
#include "testutil.h"

typedef struct opened {
    char dir[512];
    qplug_ckpt *ckpt;
    qplug_model_config cfg;
    bool ok;
} opened;

static const qplug_tensor *get(const opened *o, const char *name)
{
    long i = qplug_ckpt_lookup(o->ckpt, name);
    return i < 0 ? NULL : qplug_ckpt_tensor(o->ckpt, (size_t)i);
}

/* Checks a tensor's dtype and shape (ndim 0 for scalars). */
static void expect(const opened *o, const char *name, qplug_dtype dt, int ndim, int64_t d0,
                   int64_t d1)
{
    const qplug_tensor *t = get(o, name);
    CHECKF(t != NULL, "%s: missing %s", o->dir, name);
    if (!t)
        return;
    CHECKF(t->dtype == dt, "%s: dtype %s, expected %s", name, qplug_dtype_name(t->dtype),
           qplug_dtype_name(dt));
    CHECKF(t->ndim == ndim, "%s: ndim %d, expected %d", name, t->ndim, ndim);
    if (t->ndim == ndim && ndim >= 1)
        CHECKF(t->shape[0] == d0, "%s: shape[0] %lld, expected %lld", name,
               (long long)t->shape[0], (long long)d0);
    if (t->ndim == ndim && ndim >= 2)
        CHECKF(t->shape[1] == d1, "%s: shape[1] %lld, expected %lld", name,
               (long long)t->shape[1], (long long)d1);
}

static void expect_absent(const opened *o, const char *name)
{
    CHECKF(qplug_ckpt_lookup(o->ckpt, name) < 0, "%s: unexpected %s", o->dir, name);
}

static bool dir_has_tmp(const char *parent)
{
    DIR *dp = opendir(parent);
    bool found = false;
    struct dirent *e;
    while (dp && (e = readdir(dp)) != NULL)
        if (strstr(e->d_name, ".tmp-"))
            found = true;
    if (dp)
        closedir(dp);
    return found;
}

static void synth_open(opened *o, qplug_synth_format f, uint64_t seed, const char *tag)
{
    qplug_err err = {0};
    qplug_synth_options opt = {QPLUG_SYNTH_TINY, f, seed};
    memset(o, 0, sizeof *o);
    snprintf(o->dir, sizeof o->dir, "%s/%s-%s", test_tmpdir(), qplug_synth_format_name(f), tag);
    qplug_status st = qplug_synth_write(&opt, o->dir, &err);
    CHECKF(st == QPLUG_OK, "synth %s: %s", o->dir, err.msg);
    if (st != QPLUG_OK)
        return;
    st = qplug_ckpt_open(o->dir, &o->ckpt, &err);
    CHECKF(st == QPLUG_OK, "open %s: %s", o->dir, err.msg);
    if (st != QPLUG_OK)
        return;
    st = qplug_config_load(o->dir, &o->cfg, &err);
    CHECKF(st == QPLUG_OK, "config %s: %s", o->dir, err.msg);
    if (st != QPLUG_OK) {
        qplug_ckpt_close(o->ckpt);
        o->ckpt = NULL;
        return;
    }
    o->ok = true;
}

static void synth_close(opened *o)
{
    if (o->ok) {
        qplug_config_free(&o->cfg);
        qplug_ckpt_close(o->ckpt);
    }
    o->ok = false;
}

/* ---- dequantization through the codecs ---------------------------------- */

static float scale_at(const qplug_tensor *s, int64_t i)
{
    if (s->dtype == QPLUG_DT_F32)
        return ((const float *)s->data)[i];
    if (s->dtype == QPLUG_DT_F8_E8M0)
        return qplug_e8m0_to_f32(((const uint8_t *)s->data)[i]);
    return qplug_e4m3_to_f32(((const uint8_t *)s->data)[i]);
}

/* Dequantizes module `m` ([out, in] real elements) of any of the four
 * storage forms into a fresh array; NULL if its tensors are not as
 * expected. */
static float *dequant(const opened *o, const char *m, int64_t out, int64_t in)
{
    char n[256];
    snprintf(n, sizeof n, "%s.weight", m);
    const qplug_tensor *w = get(o, n);
    snprintf(n, sizeof n, "%s.scale", m);
    const qplug_tensor *s = get(o, n);
    snprintf(n, sizeof n, "%s.weight_scale", m);
    const qplug_tensor *ws = get(o, n);
    snprintf(n, sizeof n, "%s.weight_scale_2", m);
    const qplug_tensor *g2 = get(o, n);
    if (!w)
        return NULL;
    float *x = malloc((size_t)(out * in) * sizeof *x);
    if (!x)
        return NULL;
    const uint8_t *b = w->data;
    for (int64_t r = 0; r < out; r++) {
        for (int64_t k = 0; k < in; k++) {
            int64_t i = r * in + k;
            float v;
            if (w->dtype == QPLUG_DT_BF16) {
                v = qplug_bf16_to_f32(((const uint16_t *)w->data)[i]);
            } else if (w->dtype == QPLUG_DT_F8_E4M3 && s) {
                v = qplug_e4m3_to_f32(b[i]) * scale_at(s, (r / 128) * s->shape[1] + k / 128);
            } else if ((w->dtype == QPLUG_DT_I8 || w->dtype == QPLUG_DT_U8) && s) {
                v = qplug_e2m1_get(b + r * (in / 2), k) * scale_at(s, r * (in / 32) + k / 32);
            } else if (w->dtype == QPLUG_DT_U8 && ws && g2) {
                v = qplug_e2m1_get(b + r * (in / 2), k) * scale_at(ws, r * (in / 16) + k / 16) *
                    *(const float *)g2->data;
            } else {
                free(x);
                return NULL;
            }
            x[i] = v;
        }
    }
    return x;
}

static double rel_l2(const float *a, const float *ref, int64_t n)
{
    double num = 0.0, den = 0.0;
    for (int64_t i = 0; i < n; i++) {
        num += ((double)a[i] - ref[i]) * ((double)a[i] - ref[i]);
        den += (double)ref[i] * ref[i];
    }
    return sqrt(num / den);
}

/* All finite, and the RMS within a factor 1.5 of 1/sqrt(in). */
static void check_scale(const char *what, const float *x, int64_t out, int64_t in, double gain)
{
    double ss = 0.0;
    bool finite = true;
    for (int64_t i = 0; i < out * in; i++) {
        finite = finite && isfinite(x[i]);
        ss += (double)x[i] * x[i];
    }
    double rms = sqrt(ss / (double)(out * in)), want = gain / sqrt((double)in);
    CHECKF(finite, "%s: non-finite values", what);
    CHECKF(rms > want / 1.5 && rms < want * 1.5, "%s: rms %g, expected about %g", what, rms, want);
}

/* ---- per-format expectations (deepseek_v4.md, tiny dims) --------------- */

/* A quantizable official linear [out, in] stored as `fmt` says; experts
 * flags routed experts. */
static void expect_linear(const opened *o, qplug_synth_format f, const char *m, int64_t out,
                          int64_t in, bool expert)
{
    char w[256], s[256];
    snprintf(w, sizeof w, "%s.weight", m);
    snprintf(s, sizeof s, "%s.scale", m);
    if (f == QPLUG_SYNTH_BF16) {
        expect(o, w, QPLUG_DT_BF16, 2, out, in);
        expect_absent(o, s);
    } else if (f == QPLUG_SYNTH_FLASH && expert) {
        expect(o, w, QPLUG_DT_I8, 2, out, in / 2);
        expect(o, s, QPLUG_DT_F8_E8M0, 2, out, in / 32);
    } else {
        expect(o, w, QPLUG_DT_F8_E4M3, 2, out, in);
        expect(o, s, f == QPLUG_SYNTH_FLASH ? QPLUG_DT_F8_E8M0 : QPLUG_DT_F32, 2, (out + 127) / 128,
               (in + 127) / 128);
    }
}

static void check_official(const opened *o, qplug_synth_format f)
{
    const qplug_model_config *c = &o->cfg;
    CHECK(!c->hf_style);
    CHECK(c->vocab_size == 1024 && c->hidden_size == 256 && c->num_hidden_layers == 4);
    CHECK(c->num_attention_heads == 4 && c->head_dim == 128 && c->qk_rope_head_dim == 64);
    CHECK(c->q_lora_rank == 128 && c->o_groups == 2 && c->o_lora_rank == 128);
    CHECK(c->n_routed_experts == 8 && c->num_experts_per_tok == 2);
    CHECK(c->moe_intermediate_size == 128 && c->n_shared_experts == 1);
    CHECK(c->index_n_heads == 4 && c->index_head_dim == 64 && c->index_topk == 4);
    CHECK(c->sliding_window == 32 && c->num_hash_layers == 1);
    CHECK(c->num_nextn_predict_layers == 1);
    CHECK(c->compress_ratios[0] == 0 && c->compress_ratios[1] == 4);
    CHECK(c->compress_ratios[2] == 128 && c->compress_ratios[3] == 4);
    CHECK(c->compress_ratios[4] == 0);
    CHECK(c->hash_moe[0] && !c->hash_moe[1] && !c->hash_moe[3]);
    CHECK(c->hc_mult == 4 && fabs(c->yarn_factor - 16.0) < 1e-12);
    if (f == QPLUG_SYNTH_BF16) {
        CHECK(c->quant.method == QPLUG_QM_NONE);
    } else {
        CHECK(c->quant.method == QPLUG_QM_DEEPSEEK_FP8);
        CHECK(c->quant.block_n == 128 && c->quant.block_k == 128);
        CHECK(c->quant.scale_ue8m0 == (f == QPLUG_SYNTH_FLASH));
        CHECK(c->quant.expert_dtype ==
              (f == QPLUG_SYNTH_FLASH ? QPLUG_EXPERT_FP4 : QPLUG_EXPERT_FP8));
    }

    /* Global. */
    expect(o, "embed.weight", QPLUG_DT_BF16, 2, 1024, 256);
    expect(o, "head.weight", QPLUG_DT_BF16, 2, 1024, 256);
    expect(o, "norm.weight", QPLUG_DT_BF16, 1, 256, 0);
    expect(o, "hc_head_fn", QPLUG_DT_F32, 2, 4, 1024);
    expect(o, "hc_head_base", QPLUG_DT_F32, 1, 4, 0);
    expect(o, "hc_head_scale", QPLUG_DT_F32, 1, 1, 0);

    /* Layer 0: window-only, hash routed. */
    expect(o, "layers.0.attn_norm.weight", QPLUG_DT_BF16, 1, 256, 0);
    expect(o, "layers.0.ffn_norm.weight", QPLUG_DT_BF16, 1, 256, 0);
    expect(o, "layers.0.hc_attn_fn", QPLUG_DT_F32, 2, 24, 1024);
    expect(o, "layers.0.hc_ffn_base", QPLUG_DT_F32, 1, 24, 0);
    expect(o, "layers.0.hc_ffn_scale", QPLUG_DT_F32, 1, 3, 0);
    expect(o, "layers.0.attn.attn_sink", QPLUG_DT_F32, 1, 4, 0);
    expect_linear(o, f, "layers.0.attn.wq_a", 128, 256, false);
    expect(o, "layers.0.attn.q_norm.weight", QPLUG_DT_BF16, 1, 128, 0);
    expect_linear(o, f, "layers.0.attn.wq_b", 512, 128, false);
    expect_linear(o, f, "layers.0.attn.wkv", 128, 256, false);
    expect(o, "layers.0.attn.kv_norm.weight", QPLUG_DT_BF16, 1, 128, 0);
    expect_linear(o, f, "layers.0.attn.wo_a", 256, 256, false);
    expect_linear(o, f, "layers.0.attn.wo_b", 256, 256, false);
    expect_absent(o, "layers.0.attn.compressor.wkv.weight");
    expect_absent(o, "layers.0.attn.indexer.wq_b.weight");
    expect(o, "layers.0.ffn.gate.weight", QPLUG_DT_BF16, 2, 8, 256);
    expect(o, "layers.0.ffn.gate.tid2eid", QPLUG_DT_I64, 2, 1024, 2);
    expect_absent(o, "layers.0.ffn.gate.bias");
    expect_linear(o, f, "layers.0.ffn.shared_experts.w1", 128, 256, false);
    expect_linear(o, f, "layers.0.ffn.shared_experts.w2", 256, 128, false);
    expect_linear(o, f, "layers.0.ffn.experts.0.w1", 128, 256, true);
    expect_linear(o, f, "layers.0.ffn.experts.7.w3", 128, 256, true);
    expect_linear(o, f, "layers.0.ffn.experts.7.w2", 256, 128, true);
    expect_absent(o, "layers.0.ffn.experts.8.w1.weight");

    /* Layer 1: ratio 4 (compressor with c = 2, indexer), top-k routed. */
    expect(o, "layers.1.attn.compressor.wkv.weight", QPLUG_DT_BF16, 2, 256, 256);
    expect(o, "layers.1.attn.compressor.wgate.weight", QPLUG_DT_BF16, 2, 256, 256);
    expect(o, "layers.1.attn.compressor.ape", QPLUG_DT_F32, 2, 4, 256);
    expect(o, "layers.1.attn.compressor.norm.weight", QPLUG_DT_BF16, 1, 128, 0);
    expect_linear(o, f, "layers.1.attn.indexer.wq_b", 256, 128, false);
    expect(o, "layers.1.attn.indexer.weights_proj.weight", QPLUG_DT_BF16, 2, 4, 256);
    expect(o, "layers.1.attn.indexer.compressor.wkv.weight", QPLUG_DT_BF16, 2, 128, 256);
    expect(o, "layers.1.attn.indexer.compressor.wgate.weight", QPLUG_DT_BF16, 2, 128, 256);
    expect(o, "layers.1.attn.indexer.compressor.ape", QPLUG_DT_F32, 2, 4, 128);
    expect(o, "layers.1.attn.indexer.compressor.norm.weight", QPLUG_DT_BF16, 1, 64, 0);
    expect(o, "layers.1.ffn.gate.bias", QPLUG_DT_F32, 1, 8, 0);
    expect_absent(o, "layers.1.ffn.gate.tid2eid");

    /* Layer 2: ratio 128 (c = 1, no indexer). */
    expect(o, "layers.2.attn.compressor.wkv.weight", QPLUG_DT_BF16, 2, 128, 256);
    expect(o, "layers.2.attn.compressor.ape", QPLUG_DT_F32, 2, 128, 128);
    expect_absent(o, "layers.2.attn.indexer.wq_b.weight");
    expect(o, "layers.3.attn.indexer.compressor.ape", QPLUG_DT_F32, 2, 4, 128);

    /* MTP: window-only block with gate.bias plus its own projections,
     * norms and hc head. */
    expect_linear(o, f, "mtp.0.e_proj", 256, 256, false);
    expect_linear(o, f, "mtp.0.h_proj", 256, 256, false);
    expect(o, "mtp.0.enorm.weight", QPLUG_DT_BF16, 1, 256, 0);
    expect(o, "mtp.0.hnorm.weight", QPLUG_DT_BF16, 1, 256, 0);
    expect(o, "mtp.0.norm.weight", QPLUG_DT_BF16, 1, 256, 0);
    expect(o, "mtp.0.hc_head_fn", QPLUG_DT_F32, 2, 4, 1024);
    expect(o, "mtp.0.hc_head_scale", QPLUG_DT_F32, 1, 1, 0);
    expect(o, "mtp.0.hc_attn_fn", QPLUG_DT_F32, 2, 24, 1024);
    expect_linear(o, f, "mtp.0.attn.wq_b", 512, 128, false);
    expect(o, "mtp.0.ffn.gate.bias", QPLUG_DT_F32, 1, 8, 0);
    expect_linear(o, f, "mtp.0.ffn.experts.5.w2", 256, 128, true);
    expect_absent(o, "mtp.0.attn.compressor.wkv.weight");
    expect_absent(o, "mtp.0.ffn.gate.tid2eid");
    expect_absent(o, "layers.4.attn_norm.weight");
}

/* An NVFP4 module [out, in]. */
static void expect_nvfp4(const opened *o, const char *m, int64_t out, int64_t in)
{
    char n[256];
    snprintf(n, sizeof n, "%s.weight", m);
    expect(o, n, QPLUG_DT_U8, 2, out, in / 2);
    snprintf(n, sizeof n, "%s.weight_scale", m);
    expect(o, n, QPLUG_DT_F8_E4M3, 2, out, in / 16);
    snprintf(n, sizeof n, "%s.weight_scale_2", m);
    expect(o, n, QPLUG_DT_F32, 0, 0, 0);
    snprintf(n, sizeof n, "%s.input_scale", m);
    expect(o, n, QPLUG_DT_F32, 0, 0, 0);
}

static void check_nvfp4(const opened *o)
{
    const qplug_model_config *c = &o->cfg;
    CHECK(c->hf_style);
    CHECK(c->hidden_size == 256 && c->num_hidden_layers == 4 && c->qk_rope_head_dim == 64);
    CHECK(c->compress_ratios[0] == 0 && c->compress_ratios[1] == 4);
    CHECK(c->compress_ratios[2] == 128 && c->compress_ratios[3] == 4);
    CHECK(c->hash_moe[0] && !c->hash_moe[1]);
    CHECK(c->num_nextn_predict_layers == 0);
    CHECK(c->quant.method == QPLUG_QM_MODELOPT);
    CHECK(c->quant.algo == QPLUG_MO_NVFP4 && c->quant.group_size == 16);
    bool excl_oa = false, excl_head = false;
    for (size_t i = 0; i < c->quant.n_exclude; i++) {
        excl_oa = excl_oa || !strcmp(c->quant.exclude[i], "model.layers.0.self_attn.o_a_proj");
        excl_head = excl_head || !strcmp(c->quant.exclude[i], "lm_head");
    }
    CHECK(excl_oa && excl_head);

    expect(o, "model.embed_tokens.weight", QPLUG_DT_BF16, 2, 1024, 256);
    expect(o, "lm_head.weight", QPLUG_DT_BF16, 2, 1024, 256);
    expect(o, "model.norm.weight", QPLUG_DT_BF16, 1, 256, 0);
    expect(o, "model.hc_head.hc_fn", QPLUG_DT_F32, 2, 4, 1024);
    expect(o, "model.hc_head.hc_base", QPLUG_DT_F32, 1, 4, 0);
    expect(o, "model.hc_head.hc_scale", QPLUG_DT_F32, 1, 1, 0);
    expect(o, "model.layers.0.input_layernorm.weight", QPLUG_DT_BF16, 1, 256, 0);
    expect(o, "model.layers.0.post_attention_layernorm.weight", QPLUG_DT_BF16, 1, 256, 0);
    expect(o, "model.layers.0.attn_hc.fn", QPLUG_DT_F32, 2, 24, 1024);
    expect(o, "model.layers.0.ffn_hc.scale", QPLUG_DT_F32, 1, 3, 0);
    expect(o, "model.layers.0.self_attn.sinks", QPLUG_DT_F32, 1, 4, 0);
    expect_nvfp4(o, "model.layers.0.self_attn.q_a_proj", 128, 256);
    expect(o, "model.layers.0.self_attn.q_a_norm.weight", QPLUG_DT_BF16, 1, 128, 0);
    expect_nvfp4(o, "model.layers.0.self_attn.q_b_proj", 512, 128);
    expect_nvfp4(o, "model.layers.0.self_attn.kv_proj", 128, 256);
    /* The layer the exporter left behind in BF16. */
    expect(o, "model.layers.0.self_attn.o_a_proj.weight", QPLUG_DT_BF16, 2, 256, 256);
    expect_absent(o, "model.layers.0.self_attn.o_a_proj.weight_scale");
    expect_absent(o, "model.layers.0.self_attn.o_a_proj.weight_scale_2");
    expect_nvfp4(o, "model.layers.1.self_attn.o_a_proj", 256, 256);
    expect_nvfp4(o, "model.layers.0.self_attn.o_b_proj", 256, 256);
    expect(o, "model.layers.0.mlp.gate.weight", QPLUG_DT_BF16, 2, 8, 256);
    expect(o, "model.layers.0.mlp.gate.tid2eid", QPLUG_DT_I64, 2, 1024, 2);
    expect(o, "model.layers.1.mlp.gate.e_score_correction_bias", QPLUG_DT_F32, 1, 8, 0);
    expect_nvfp4(o, "model.layers.1.mlp.shared_experts.gate_proj", 128, 256);
    expect_nvfp4(o, "model.layers.1.mlp.shared_experts.down_proj", 256, 128);
    expect_nvfp4(o, "model.layers.1.mlp.experts.0.gate_proj", 128, 256);
    expect_nvfp4(o, "model.layers.1.mlp.experts.0.up_proj", 128, 256);
    expect_nvfp4(o, "model.layers.1.mlp.experts.7.down_proj", 256, 128);
    expect_absent(o, "model.layers.1.mlp.experts.gate_up_proj");
    expect(o, "model.layers.1.self_attn.compressor.kv_proj.weight", QPLUG_DT_BF16, 2, 256, 256);
    expect(o, "model.layers.1.self_attn.compressor.gate_proj.weight", QPLUG_DT_BF16, 2, 256, 256);
    expect(o, "model.layers.1.self_attn.compressor.position_bias", QPLUG_DT_F32, 2, 4, 256);
    expect(o, "model.layers.1.self_attn.compressor.kv_norm.weight", QPLUG_DT_BF16, 1, 128, 0);
    expect_nvfp4(o, "model.layers.1.self_attn.compressor.indexer.q_b_proj", 256, 128);
    expect(o, "model.layers.1.self_attn.compressor.indexer.scorer.weights_proj.weight",
           QPLUG_DT_BF16, 2, 4, 256);
    expect(o, "model.layers.1.self_attn.compressor.indexer.kv_proj.weight", QPLUG_DT_BF16, 2,
           128, 256);
    expect(o, "model.layers.1.self_attn.compressor.indexer.position_bias", QPLUG_DT_F32, 2, 4,
           128);
    expect(o, "model.layers.1.self_attn.compressor.indexer.kv_norm.weight", QPLUG_DT_BF16, 1, 64,
           0);
    expect(o, "model.layers.2.self_attn.compressor.position_bias", QPLUG_DT_F32, 2, 128, 128);
    expect_absent(o, "model.layers.2.self_attn.compressor.indexer.q_b_proj.weight");

    /* No MTP and no official names in the transformers export. */
    for (size_t i = 0; i < qplug_ckpt_count(o->ckpt); i++) {
        const char *n = qplug_ckpt_tensor(o->ckpt, i)->name;
        CHECKF(!strncmp(n, "model.", 6) || !strcmp(n, "lm_head.weight"), "unexpected %s", n);
        CHECKF(!strstr(n, "mtp"), "unexpected MTP tensor %s", n);
    }

    /* Gate and up of some expert carry different global scales. */
    int differ = 0;
    char a[128], b[128];
    for (int l = 0; l < 4; l++) {
        for (int e = 0; e < 8; e++) {
            snprintf(a, sizeof a, "model.layers.%d.mlp.experts.%d.gate_proj.weight_scale_2", l, e);
            snprintf(b, sizeof b, "model.layers.%d.mlp.experts.%d.up_proj.weight_scale_2", l, e);
            const qplug_tensor *ta = get(o, a), *tb = get(o, b);
            if (ta && tb && *(const float *)ta->data != *(const float *)tb->data)
                differ++;
        }
    }
    CHECKF(differ > 0, "no expert with different gate/up weight_scale_2");
    const qplug_tensor *is = get(o, "model.layers.1.mlp.experts.2.up_proj.input_scale");
    if (is) {
        float v = *(const float *)is->data;
        CHECKF(v > 0.0f && isfinite(v) && v < 1.0f, "input_scale %g", v);
    }
}

/* The index names every tensor once, with the shard that holds it; at
 * least two shards. */
static void check_index(const opened *o)
{
    char path[600];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", o->dir);
    FILE *f = fopen(path, "rb");
    CHECKF(f != NULL, "no %s", path);
    if (!f)
        return;
    static char buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    cJSON *root = cJSON_Parse(buf);
    cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    CHECKF(cJSON_IsObject(wm), "%s: no weight_map", path);
    size_t entries = 0;
    char shards[16][64];
    int n_shards = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, wm)
    {
        entries++;
        long i = qplug_ckpt_lookup(o->ckpt, e->string);
        CHECKF(i >= 0, "index names %s, not in the checkpoint", e->string);
        if (i < 0 || !cJSON_IsString(e))
            continue;
        const char *file = qplug_ckpt_tensor_file(o->ckpt, (size_t)i);
        const char *base = strrchr(file, '/');
        CHECKF(!strcmp(base ? base + 1 : file, e->valuestring), "%s: index %s, file %s",
               e->string, e->valuestring, file);
        bool seen = false;
        for (int s = 0; s < n_shards; s++)
            seen = seen || !strcmp(shards[s], e->valuestring);
        if (!seen && n_shards < 16)
            snprintf(shards[n_shards++], sizeof shards[0], "%s", e->valuestring);
    }
    CHECKF(entries == qplug_ckpt_count(o->ckpt), "index %zu entries, checkpoint %zu tensors",
           entries, qplug_ckpt_count(o->ckpt));
    CHECKF(n_shards >= 2, "%d shards", n_shards);
    const cJSON *total = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(root, "metadata"), "total_size");
    CHECK(cJSON_IsNumber(total) && (uint64_t)total->valuedouble == qplug_ckpt_bytes(o->ckpt));
    cJSON_Delete(root);
}

/* tid2eid holds top_k distinct valid expert ids per token; norms are near
 * 1; hc and bias parameters are small. */
static void check_values(const opened *o, const char *tid, const char *norm, const char *bias,
                         const char *hc_fn)
{
    const qplug_tensor *t = get(o, tid);
    if (t) {
        const int64_t *id = t->data;
        bool ok = true;
        for (int64_t r = 0; r < t->shape[0]; r++) {
            ok = ok && id[2 * r] >= 0 && id[2 * r] < 8 && id[2 * r + 1] >= 0 &&
                 id[2 * r + 1] < 8 && id[2 * r] != id[2 * r + 1];
        }
        CHECKF(ok, "%s: invalid or repeated expert ids", tid);
    }
    t = get(o, norm);
    if (t) {
        double s = 0.0;
        for (int64_t i = 0; i < t->shape[0]; i++)
            s += qplug_bf16_to_f32(((const uint16_t *)t->data)[i]);
        s /= (double)t->shape[0];
        CHECKF(fabs(s - 1.0) < 0.1, "%s: mean %g", norm, s);
    }
    t = get(o, bias);
    if (t) {
        for (int64_t i = 0; i < t->shape[0]; i++)
            CHECKF(fabsf(((const float *)t->data)[i]) < 0.1f, "%s[%lld] not small", bias,
                   (long long)i);
    }
    t = get(o, hc_fn);
    if (t) {
        double ss = 0.0;
        int64_t n = t->shape[0] * t->shape[1];
        for (int64_t i = 0; i < n; i++)
            ss += (double)((const float *)t->data)[i] * ((const float *)t->data)[i];
        CHECKF(sqrt(ss / (double)n) < 0.1, "%s: rms %g", hc_fn, sqrt(ss / (double)n));
    }
}

typedef struct module_pair {
    const char *official, *hf;
    int64_t out, in;
    double gain;
} module_pair;

static const module_pair modules[] = {
    {"layers.1.attn.wq_a", "model.layers.1.self_attn.q_a_proj", 128, 256, 1.0},
    {"layers.1.attn.wq_b", "model.layers.1.self_attn.q_b_proj", 512, 128, 1.0},
    {"layers.2.attn.wo_a", "model.layers.2.self_attn.o_a_proj", 256, 256, 1.0},
    {"layers.0.attn.wo_a", "model.layers.0.self_attn.o_a_proj", 256, 256, 1.0},
    {"layers.3.attn.indexer.wq_b", "model.layers.3.self_attn.compressor.indexer.q_b_proj", 256,
     128, 1.0},
    {"layers.1.ffn.shared_experts.w2", "model.layers.1.mlp.shared_experts.down_proj", 256, 128,
     1.0},
    {"layers.2.ffn.experts.3.w1", "model.layers.2.mlp.experts.3.gate_proj", 128, 256, 1.0},
    {"layers.2.ffn.experts.0.w3", "model.layers.2.mlp.experts.0.up_proj", 128, 256, 1.5},
    {"layers.3.ffn.experts.6.w2", "model.layers.3.mlp.experts.6.down_proj", 256, 128, 1.0},
};

/* Relative L2 bounds of each format against the BF16 checkpoint of the
 * same seed. FP8 E4M3 has 3 mantissa bits (relative step 2^-4, RMS error
 * of a uniform rounding about 2.5% of a normal weight's magnitude with
 * block scales); FP4 E2M1 with per-32 power-of-two or per-16 E4M3 scales
 * lands near 10-13%. The bounds leave a margin but fail on a wrong layout
 * or scale (errors of order 1). */
static double bound_for(qplug_synth_format f, bool expert)
{
    if (f == QPLUG_SYNTH_FLASH && expert)
        return 0.16;
    if (f == QPLUG_SYNTH_NVFP4)
        return 0.13;
    return 0.04;
}

static void check_dequant(const opened *bf, const opened *o, qplug_synth_format f)
{
    for (size_t i = 0; i < sizeof modules / sizeof modules[0]; i++) {
        const module_pair *m = &modules[i];
        const char *name = f == QPLUG_SYNTH_NVFP4 ? m->hf : m->official;
        float *ref = dequant(bf, m->official, m->out, m->in);
        float *x = dequant(o, name, m->out, m->in);
        CHECKF(ref && x, "%s %s: cannot dequantize", qplug_synth_format_name(f), name);
        if (ref && x) {
            check_scale(name, x, m->out, m->in, m->gain);
            double e = rel_l2(x, ref, m->out * m->in);
            double b = bound_for(f, strstr(m->official, "ffn.experts.") != NULL);
            /* NVFP4 leaves layer 0's wo_a in BF16: bit-identical. */
            if (f == QPLUG_SYNTH_NVFP4 && !strcmp(m->official, "layers.0.attn.wo_a"))
                b = 0.0;
            CHECKF(e <= b, "%s %s: relative L2 %.4g vs bf16, bound %.4g",
                   qplug_synth_format_name(f), name, e, b);
        }
        free(ref);
        free(x);
    }
}

static void test_formats(void)
{
    opened bf;
    synth_open(&bf, QPLUG_SYNTH_BF16, 7, "a");
    if (bf.ok) {
        check_official(&bf, QPLUG_SYNTH_BF16);
        check_index(&bf);
        check_values(&bf, "layers.0.ffn.gate.tid2eid", "layers.2.attn_norm.weight",
                     "layers.1.ffn.gate.bias", "layers.1.hc_attn_fn");
        for (size_t i = 0; i < sizeof modules / sizeof modules[0]; i++) {
            float *x = dequant(&bf, modules[i].official, modules[i].out, modules[i].in);
            CHECK(x != NULL);
            if (x)
                check_scale(modules[i].official, x, modules[i].out, modules[i].in,
                            modules[i].gain);
            free(x);
        }
    }
    for (int f = QPLUG_SYNTH_FLASH; f <= QPLUG_SYNTH_NVFP4; f++) {
        opened o;
        synth_open(&o, (qplug_synth_format)f, 7, "a");
        if (!o.ok)
            continue;
        if (f == QPLUG_SYNTH_NVFP4) {
            check_nvfp4(&o);
            check_values(&o, "model.layers.0.mlp.gate.tid2eid",
                         "model.layers.2.input_layernorm.weight",
                         "model.layers.1.mlp.gate.e_score_correction_bias",
                         "model.layers.1.attn_hc.fn");
        } else {
            check_official(&o, (qplug_synth_format)f);
            check_values(&o, "layers.0.ffn.gate.tid2eid", "mtp.0.enorm.weight",
                         "mtp.0.ffn.gate.bias", "mtp.0.hc_ffn_fn");
        }
        check_index(&o);
        if (bf.ok)
            check_dequant(&bf, &o, (qplug_synth_format)f);
        synth_close(&o);
    }
    synth_close(&bf);
    CHECK(!dir_has_tmp(test_tmpdir()));
}

/* The same seed writes the same bytes; another seed other bytes. */
static void test_seed(void)
{
    opened a, b, c;
    synth_open(&a, QPLUG_SYNTH_FLASH, 99, "s1");
    synth_open(&b, QPLUG_SYNTH_FLASH, 99, "s2");
    synth_open(&c, QPLUG_SYNTH_FLASH, 100, "s3");
    if (a.ok && b.ok && c.ok) {
        const char *n = "layers.3.ffn.experts.4.w1.weight";
        const qplug_tensor *ta = get(&a, n), *tb = get(&b, n), *tc = get(&c, n);
        CHECK(ta && tb && tc);
        if (ta && tb && tc) {
            size_t bytes = qplug_tensor_nbytes(ta);
            CHECK(memcmp(ta->data, tb->data, bytes) == 0);
            CHECK(memcmp(ta->data, tc->data, bytes) != 0);
        }
    }
    synth_close(&a);
    synth_close(&b);
    synth_close(&c);
}

static void test_errors(void)
{
    qplug_err err = {0};
    qplug_synth_preset p;
    qplug_synth_format f;
    CHECK(qplug_synth_preset_parse("huge", &p, &err) == QPLUG_ERR_ARGUMENT);
    CHECK(strstr(err.msg, "huge") != NULL);
    CHECK(qplug_synth_format_parse("int8", &f, &err) == QPLUG_ERR_ARGUMENT);
    CHECK(strstr(err.msg, "int8") != NULL);
    CHECK(qplug_synth_preset_parse("flash-shapes", &p, &err) == QPLUG_OK &&
          p == QPLUG_SYNTH_FLASH_SHAPES);
    CHECK(qplug_synth_format_parse("flash-base", &f, &err) == QPLUG_OK &&
          f == QPLUG_SYNTH_FLASH_BASE);

    /* A non-empty target is refused and left as it was. */
    char dir[512], file[600];
    snprintf(dir, sizeof dir, "%s/occupied", test_tmpdir());
    mkdir(dir, 0755);
    snprintf(file, sizeof file, "%s/keep.txt", dir);
    FILE *fp = fopen(file, "w");
    if (fp)
        fclose(fp);
    qplug_synth_options opt = {QPLUG_SYNTH_TINY, QPLUG_SYNTH_FLASH, 1};
    CHECK(qplug_synth_write(&opt, dir, &err) == QPLUG_ERR_ARGUMENT);
    CHECK(strstr(err.msg, "occupied") != NULL);
    struct stat sb;
    CHECK(stat(file, &sb) == 0);
    snprintf(file, sizeof file, "%s/config.json", dir);
    CHECK(stat(file, &sb) != 0);

    /* An empty existing directory is fine (trailing slash too). */
    snprintf(dir, sizeof dir, "%s/empty/", test_tmpdir());
    mkdir(dir, 0755);
    CHECKF(qplug_synth_write(&opt, dir, &err) == QPLUG_OK, "%s", err.msg);
    snprintf(file, sizeof file, "%sconfig.json", dir);
    CHECK(stat(file, &sb) == 0);

    /* A missing parent directory: an error naming the path, nothing left. */
    snprintf(dir, sizeof dir, "%s/no/such/parent", test_tmpdir());
    CHECK(qplug_synth_write(&opt, dir, &err) == QPLUG_ERR_IO);
    CHECK(strstr(err.msg, "no/such/parent") != NULL);
    CHECK(!dir_has_tmp(test_tmpdir()));

    opt.format = (qplug_synth_format)9;
    CHECK(qplug_synth_write(&opt, dir, &err) == QPLUG_ERR_ARGUMENT);
}

/* flash-shapes is described, not written (several GB): the real V4-Flash
 * per-matrix shapes of deepseek_v4.md section 2. */
typedef struct shape_probe {
    const char *name;
    qplug_dtype dt;
    int64_t d0, d1;
    int found;
} shape_probe;

typedef struct probe_set {
    shape_probe *p;
    size_t n;
    size_t tensors;
    int max_shard;
} probe_set;

static qplug_status probe_visit(void *user, const qplug_tensor *t, int shard, int n_shards)
{
    probe_set *s = user;
    s->tensors++;
    if (shard > s->max_shard)
        s->max_shard = shard;
    CHECK(shard < n_shards && t->data == NULL);
    for (size_t i = 0; i < s->n; i++) {
        shape_probe *p = &s->p[i];
        if (strcmp(p->name, t->name))
            continue;
        p->found++;
        CHECKF(t->dtype == p->dt && t->shape[0] == p->d0 && (t->ndim < 2 || t->shape[1] == p->d1),
               "%s: %s [%lld, %lld]", t->name, qplug_dtype_name(t->dtype),
               (long long)t->shape[0], (long long)t->shape[1]);
    }
    return QPLUG_OK;
}

static void test_flash_shapes(void)
{
    shape_probe probes[] = {
        {"embed.weight", QPLUG_DT_BF16, 129280, 4096, 0},
        {"head.weight", QPLUG_DT_BF16, 129280, 4096, 0},
        {"hc_head_fn", QPLUG_DT_F32, 4, 16384, 0},
        {"layers.0.hc_attn_fn", QPLUG_DT_F32, 24, 16384, 0},
        {"layers.0.attn.attn_sink", QPLUG_DT_F32, 64, 0, 0},
        {"layers.0.attn.wq_a.weight", QPLUG_DT_F8_E4M3, 1024, 4096, 0},
        {"layers.0.attn.wq_a.scale", QPLUG_DT_F8_E8M0, 8, 32, 0},
        {"layers.0.attn.wq_b.weight", QPLUG_DT_F8_E4M3, 32768, 1024, 0},
        {"layers.0.attn.wkv.weight", QPLUG_DT_F8_E4M3, 512, 4096, 0},
        {"layers.0.attn.wo_a.weight", QPLUG_DT_F8_E4M3, 8192, 4096, 0},
        {"layers.0.attn.wo_a.scale", QPLUG_DT_F8_E8M0, 64, 32, 0},
        {"layers.0.attn.wo_b.weight", QPLUG_DT_F8_E4M3, 4096, 8192, 0},
        {"layers.0.attn.compressor.wkv.weight", QPLUG_DT_BF16, 1024, 4096, 0},
        {"layers.0.attn.compressor.ape", QPLUG_DT_F32, 4, 1024, 0},
        {"layers.0.attn.indexer.wq_b.weight", QPLUG_DT_F8_E4M3, 8192, 1024, 0},
        {"layers.0.attn.indexer.weights_proj.weight", QPLUG_DT_BF16, 64, 4096, 0},
        {"layers.0.attn.indexer.compressor.wkv.weight", QPLUG_DT_BF16, 256, 4096, 0},
        {"layers.0.attn.indexer.compressor.ape", QPLUG_DT_F32, 4, 256, 0},
        {"layers.0.ffn.gate.tid2eid", QPLUG_DT_I64, 129280, 6, 0},
        {"layers.1.attn.compressor.wkv.weight", QPLUG_DT_BF16, 512, 4096, 0},
        {"layers.1.attn.compressor.ape", QPLUG_DT_F32, 128, 512, 0},
        {"layers.1.ffn.gate.bias", QPLUG_DT_F32, 8, 0, 0},
        {"layers.1.ffn.experts.7.w1.weight", QPLUG_DT_I8, 2048, 2048, 0},
        {"layers.1.ffn.experts.7.w1.scale", QPLUG_DT_F8_E8M0, 2048, 128, 0},
        {"layers.1.ffn.experts.7.w2.weight", QPLUG_DT_I8, 4096, 1024, 0},
        {"layers.1.ffn.shared_experts.w2.weight", QPLUG_DT_F8_E4M3, 4096, 2048, 0},
        {"mtp.0.e_proj.weight", QPLUG_DT_F8_E4M3, 4096, 4096, 0},
        {"mtp.0.ffn.gate.bias", QPLUG_DT_F32, 8, 0, 0},
    };
    probe_set s = {probes, sizeof probes / sizeof probes[0], 0, -1};
    qplug_err err = {0};
    qplug_synth_options opt = {QPLUG_SYNTH_FLASH_SHAPES, QPLUG_SYNTH_FLASH, 1};
    CHECKF(qplug_synth_describe(&opt, probe_visit, &s, &err) == QPLUG_OK, "%s", err.msg);
    for (size_t i = 0; i < s.n; i++)
        CHECKF(probes[i].found == 1, "%s seen %d times", probes[i].name, probes[i].found);
    /* embed, head + globals, 2 layers, MTP. */
    CHECK(s.max_shard == 4);
    CHECK(s.tensors > 100);
}

int main(void)
{
    test_errors();
    test_formats();
    test_seed();
    test_flash_shapes();
    return test_done();
}
