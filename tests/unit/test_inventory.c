/*
 * The DeepSeek V4 inventory on the tiny checkpoints of tests/data/ckpt_headers
 * (made by make_ckpts.py there): layer lists and dims, official and
 * transformers naming (the indexer's compressor must never be confused with
 * the main one), HF stacked expert views, MTP presence and absence, storage
 * detection, and the errors for missing tensors and disagreeing shards.
 *
 * Expected values are written by hand from the fixture dims: D=32, H=2,
 * head_dim=64, q_lora=32, o_groups=2, o_lora=16, E=4 top-2, I=32, indexer
 * 2 heads x 32, 3 layers with compress ratios [0, 4, 128], one MTP layer.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "qplug/inventory.h"
#include "qplug/qplug.h"
#include "testutil.h"

#define FIXTURES QPLUG_SOURCE_DIR "/tests/data/ckpt_headers/"

typedef struct fixture {
    qplug_model_config cfg;
    qplug_ckpt *ckpt;
    qplug_inventory inv;
    qplug_status st;
    qplug_err err;
} fixture;

/* Opens config and checkpoint in `dir` and builds the inventory. */
static bool open_dir(fixture *f, const char *dir)
{
    memset(f, 0, sizeof *f);
    qplug_err err = {0};
    if (qplug_config_load(dir, &f->cfg, &err) != QPLUG_OK) {
        CHECKF(false, "config %s: %s", dir, err.msg);
        return false;
    }
    if (qplug_ckpt_open(dir, &f->ckpt, &err) != QPLUG_OK) {
        CHECKF(false, "checkpoint %s: %s", dir, err.msg);
        qplug_config_free(&f->cfg);
        return false;
    }
    f->st = qplug_inventory_build(&f->cfg, f->ckpt, QPLUG_DEVICE_CPU, &f->inv, &f->err);
    return true;
}

static void close_fixture(fixture *f)
{
    qplug_inventory_free(&f->inv);
    qplug_ckpt_close(f->ckpt);
    qplug_config_free(&f->cfg);
}

static const qplug_inv_layer *need(const qplug_inventory *inv, const char *name)
{
    const qplug_inv_layer *l = qplug_inventory_find(inv, name);
    CHECKF(l != NULL, "layer %s missing", name);
    return l;
}

static void check_dims(const qplug_inventory *inv, const char *name, qplug_layer_kind kind,
                       int64_t n, int64_t k, int groups)
{
    const qplug_inv_layer *l = need(inv, name);
    if (!l)
        return;
    CHECKF(l->desc.kind == kind && l->desc.n == n && l->desc.k == k && l->desc.groups == groups,
           "%s: kind %d n %lld k %lld groups %d", name, (int)l->desc.kind, (long long)l->desc.n,
           (long long)l->desc.k, l->desc.groups);
    CHECKF(l->desc.name == l->name, "%s: desc.name does not point at name", name);
}

static bool shape_is(const qplug_tensor *t, int64_t a, int64_t b)
{
    return t && t->ndim == 2 && t->shape[0] == a && t->shape[1] == b;
}

/* A fused compressor: LINEAR [2 * half, 32] with shards wkv and wgate of
 * `half` rows each, in that order. */
static void check_shards(const qplug_inventory *inv, const char *name, int64_t half)
{
    check_dims(inv, name, QPLUG_LAYER_LINEAR, 2 * half, 32, 1);
    const qplug_inv_layer *l = qplug_inventory_find(inv, name);
    if (!l)
        return;
    CHECKF(qplug_layer_num_shards(&l->desc) == 2 && l->desc.shard_names[0] &&
               !strcmp(l->desc.shard_names[0], "wkv") && l->desc.shard_names[1] &&
               !strcmp(l->desc.shard_names[1], "wgate") && l->desc.shard_n[0] == half &&
               l->desc.shard_n[1] == half,
           "%s: shards %d", name, (int)l->desc.num_shards);
}

/*
 * The shard slots of both compressors of layer 1 must bind exactly the
 * checkpoint tensors named here by hand (`ck_*`, looked up in the
 * checkpoint directly), each of the given rows x 32; the main compressor
 * must not reach the indexer's tensors through any slot, nor the other way
 * round (a known field bug mixed them up).
 */
static void check_compressor_sources(fixture *f, const char *ck_main_kv, const char *ck_main_g,
                                     const char *ck_idx_kv, const char *ck_idx_g)
{
    const qplug_inv_layer *mc = need(&f->inv, "layers.1.attn.compressor");
    const qplug_inv_layer *ic = need(&f->inv, "layers.1.attn.indexer.compressor");
    if (!mc || !ic)
        return;
    const struct {
        const qplug_inv_layer *l;
        const char *slot, *ck;
        int64_t rows;
    } want[] = {
        {mc, "wkv.weight", ck_main_kv, 128},
        {mc, "wgate.weight", ck_main_g, 128},
        {ic, "wkv.weight", ck_idx_kv, 64},
        {ic, "wgate.weight", ck_idx_g, 64},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        long idx = qplug_ckpt_lookup(f->ckpt, want[i].ck);
        const char *file = NULL;
        const qplug_tensor *t = qplug_inventory_source(&f->inv, &want[i].l->desc, want[i].slot,
                                                       &file);
        CHECKF(idx >= 0 && t && t == qplug_ckpt_tensor(f->ckpt, (size_t)idx) &&
                   !strcmp(t->name, want[i].ck) && shape_is(t, want[i].rows, 32) && file,
               "%s %s: got %s, want %s", want[i].l->name, want[i].slot, t ? t->name : "NULL",
               want[i].ck);
    }
    /* Slots that are not "<shard>.<leaf>" of the layer's own shards. */
    const char *bad[] = {"weight", "indexer.kv_proj.weight", "indexer.wkv.weight",
                         "indexer.compressor.wkv.weight", "kv_proj.weight", "wkv", "wkv.",
                         "wkv.weight.x"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECKF(!qplug_inventory_source(&f->inv, &mc->desc, bad[i], NULL), "main: %s", bad[i]);
        CHECKF(!qplug_inventory_source(&f->inv, &ic->desc, bad[i], NULL), "indexer: %s", bad[i]);
    }
}

/* The layer list of a model with or without its MTP block. */
static void check_layer_list(const qplug_inventory *inv, bool mtp)
{
    CHECKF(inv->n_layers == (mtp ? 47u : 35u), "n_layers %zu", inv->n_layers);
    check_dims(inv, "layers.0.attn.wq_a", QPLUG_LAYER_LINEAR, 32, 32, 1);
    check_dims(inv, "layers.0.attn.wq_b", QPLUG_LAYER_LINEAR, 128, 32, 1);
    check_dims(inv, "layers.0.attn.wkv", QPLUG_LAYER_LINEAR, 64, 32, 1);
    check_dims(inv, "layers.0.attn.wo_a", QPLUG_LAYER_GROUPED_LINEAR, 16, 64, 2);
    check_dims(inv, "layers.0.attn.wo_b", QPLUG_LAYER_LINEAR, 32, 32, 1);
    check_dims(inv, "layers.0.attn", QPLUG_LAYER_ATTENTION, 64, 64, 1);
    /* Compressors are one fused layer each: [wkv rows | wgate rows]. */
    check_shards(inv, "layers.1.attn.compressor", 128);
    check_dims(inv, "layers.1.attn.indexer.wq_b", QPLUG_LAYER_LINEAR, 64, 32, 1);
    check_dims(inv, "layers.1.attn.indexer.weights_proj", QPLUG_LAYER_LINEAR, 2, 32, 1);
    check_shards(inv, "layers.1.attn.indexer.compressor", 64);
    check_shards(inv, "layers.2.attn.compressor", 64);
    CHECK(!qplug_inventory_find(inv, "layers.1.attn.compressor.wkv"));
    CHECK(!qplug_inventory_find(inv, "layers.1.attn.compressor.wgate"));
    CHECK(!qplug_inventory_find(inv, "layers.1.attn.indexer.compressor.wkv"));
    CHECK(!qplug_inventory_find(inv, "layers.1.attn.indexer.compressor.wgate"));
    check_dims(inv, "layers.2.ffn.shared_experts.w1", QPLUG_LAYER_LINEAR, 32, 32, 1);
    check_dims(inv, "layers.2.ffn.shared_experts.w2", QPLUG_LAYER_LINEAR, 32, 32, 1);
    check_dims(inv, "layers.2.ffn.experts", QPLUG_LAYER_FUSED_MOE, 32, 32, 1);
    const qplug_inv_layer *moe = qplug_inventory_find(inv, "layers.2.ffn.experts");
    CHECK(moe && moe->desc.num_experts == 4 && moe->desc.top_k == 2 &&
          moe->desc.swiglu_limit == 10.0f);
    /* Layers a block of its ratio does not have. */
    CHECK(!qplug_inventory_find(inv, "layers.0.attn.compressor"));
    CHECK(!qplug_inventory_find(inv, "layers.2.attn.indexer.wq_b"));
    CHECK(!qplug_inventory_find(inv, "layers.2.attn.indexer.compressor"));
    CHECK(!qplug_inventory_find(inv, "layers.3.attn.wq_a"));
    CHECK(inv->has_mtp == mtp && inv->n_mtp == (mtp ? 1 : 0));
    if (mtp) {
        check_dims(inv, "mtp.0.e_proj", QPLUG_LAYER_LINEAR, 32, 32, 1);
        check_dims(inv, "mtp.0.h_proj", QPLUG_LAYER_LINEAR, 32, 32, 1);
        check_dims(inv, "mtp.0.ffn.experts", QPLUG_LAYER_FUSED_MOE, 32, 32, 1);
        check_dims(inv, "mtp.0.attn.wq_a", QPLUG_LAYER_LINEAR, 32, 32, 1);
        const qplug_inv_layer *l = qplug_inventory_find(inv, "mtp.0.e_proj");
        CHECK(l && l->block == 3);
    } else {
        CHECK(!qplug_inventory_find(inv, "mtp.0.e_proj"));
    }
}

static void check_storage(const qplug_inventory *inv, const char *name, qplug_quant_scheme s,
                          qplug_dtype w, qplug_dtype scale)
{
    const qplug_inv_layer *l = need(inv, name);
    if (!l)
        return;
    CHECKF(l->stored.present && l->stored.scheme == s && l->stored.weight_dtype == w &&
               (s == QPLUG_QUANT_NONE || l->stored.scale_dtype == scale),
           "%s: present %d scheme %d weight %s scale %s", name, l->stored.present,
           (int)l->stored.scheme, qplug_dtype_name(l->stored.weight_dtype),
           qplug_dtype_name(l->stored.scale_dtype));
}

static void test_bf16_official(void)
{
    fixture f;
    if (!open_dir(&f, FIXTURES "bf16"))
        return;
    CHECKF(f.st == QPLUG_OK, "%s", f.err.msg);
    if (f.st == QPLUG_OK) {
        CHECK(f.inv.naming == QPLUG_NAMING_OFFICIAL);
        check_layer_list(&f.inv, true);
        check_storage(&f.inv, "layers.0.attn.wq_a", QPLUG_QUANT_NONE, QPLUG_DT_BF16, 0);
        check_storage(&f.inv, "layers.0.ffn.experts", QPLUG_QUANT_NONE, QPLUG_DT_BF16, 0);
        const qplug_inv_layer *l = qplug_inventory_find(&f.inv, "layers.1.attn.indexer.compressor");
        CHECK(l && !strcmp(l->hf_name, "model.layers.1.self_attn.compressor.indexer"));
        l = qplug_inventory_find(&f.inv, "layers.1.attn.compressor");
        CHECK(l && !strcmp(l->hf_name, "model.layers.1.self_attn.compressor"));
        l = qplug_inventory_find(&f.inv, "mtp.0.e_proj");
        CHECK(l && !strcmp(l->hf_name, "model.layers.3.e_proj"));

        /* Non-plugin tensors by official name. */
        size_t unused0 = qplug_inventory_unused_count(&f.inv);
        CHECK(unused0 == qplug_ckpt_count(f.ckpt));
        const char *file = NULL;
        const qplug_tensor *t = qplug_inventory_tensor(&f.inv, "layers.0.ffn.gate.tid2eid", &file);
        CHECK(shape_is(t, 64, 2) && t->dtype == QPLUG_DT_I64 && file && strstr(file, ".safetensors"));
        CHECK(qplug_inventory_unused_count(&f.inv) == unused0 - 1);
        CHECK(qplug_inventory_tensor(&f.inv, "layers.1.ffn.gate.tid2eid", NULL) == NULL);
        t = qplug_inventory_tensor(&f.inv, "layers.1.attn.indexer.compressor.ape", NULL);
        CHECK(shape_is(t, 4, 64));
        t = qplug_inventory_tensor(&f.inv, "layers.1.attn.compressor.ape", NULL);
        CHECK(shape_is(t, 4, 128));
        t = qplug_inventory_tensor(&f.inv, "mtp.0.hc_head_fn", NULL);
        CHECK(shape_is(t, 4, 128));
        /* The non-plugin tensor list holds the required norms. */
        bool found = false;
        for (size_t i = 0; i < f.inv.n_tensors; i++)
            if (!strcmp(f.inv.tensors[i].name, "layers.2.attn_norm.weight"))
                found = f.inv.tensors[i].required && f.inv.tensors[i].present;
        CHECK(found);
        check_compressor_sources(&f, "layers.1.attn.compressor.wkv.weight",
                                 "layers.1.attn.compressor.wgate.weight",
                                 "layers.1.attn.indexer.compressor.wkv.weight",
                                 "layers.1.attn.indexer.compressor.wgate.weight");
    }
    close_fixture(&f);
}

static void test_flash(void)
{
    fixture f;
    if (!open_dir(&f, FIXTURES "flash"))
        return;
    CHECKF(f.st == QPLUG_OK, "%s", f.err.msg);
    if (f.st == QPLUG_OK) {
        check_layer_list(&f.inv, true);
        check_storage(&f.inv, "layers.0.attn.wq_a", QPLUG_QUANT_FP8_BLOCK, QPLUG_DT_F8_E4M3,
                      QPLUG_DT_F8_E8M0);
        check_storage(&f.inv, "layers.0.attn.wo_a", QPLUG_QUANT_FP8_BLOCK, QPLUG_DT_F8_E4M3,
                      QPLUG_DT_F8_E8M0);
        check_storage(&f.inv, "layers.1.attn.indexer.wq_b", QPLUG_QUANT_FP8_BLOCK,
                      QPLUG_DT_F8_E4M3, QPLUG_DT_F8_E8M0);
        check_storage(&f.inv, "layers.1.attn.compressor", QPLUG_QUANT_NONE, QPLUG_DT_BF16, 0);
        check_storage(&f.inv, "layers.1.attn.indexer.compressor", QPLUG_QUANT_NONE, QPLUG_DT_BF16,
                      0);
        check_storage(&f.inv, "layers.2.ffn.experts", QPLUG_QUANT_MXFP4, QPLUG_DT_I8,
                      QPLUG_DT_F8_E8M0);
        check_storage(&f.inv, "mtp.0.e_proj", QPLUG_QUANT_FP8_BLOCK, QPLUG_DT_F8_E4M3,
                      QPLUG_DT_F8_E8M0);
        const qplug_inv_layer *l = qplug_inventory_find(&f.inv, "layers.2.ffn.experts");
        const char *file = NULL;
        const qplug_tensor *t = l ? qplug_inventory_source(&f.inv, &l->desc, "experts.1.w2.scale", &file) : NULL;
        CHECK(t && t->dtype == QPLUG_DT_F8_E8M0 && shape_is(t, 32, 1) &&
              !strcmp(t->name, "layers.2.ffn.experts.1.w2.scale") && file);
        l = qplug_inventory_find(&f.inv, "layers.0.attn.wq_a");
        t = l ? qplug_inventory_source(&f.inv, &l->desc, "weight", NULL) : NULL;
        CHECK(t && !strcmp(t->name, "layers.0.attn.wq_a.weight"));
    }
    close_fixture(&f);
}

static void test_flash_base_no_mtp(void)
{
    fixture f;
    if (!open_dir(&f, FIXTURES "flash_base"))
        return;
    CHECKF(f.st == QPLUG_OK, "%s", f.err.msg);
    if (f.st == QPLUG_OK) {
        /* The config asks for one MTP layer, the checkpoint has none. */
        CHECK(f.cfg.num_nextn_predict_layers == 1);
        check_layer_list(&f.inv, false);
        check_storage(&f.inv, "layers.0.attn.wq_b", QPLUG_QUANT_FP8_BLOCK, QPLUG_DT_F8_E4M3,
                      QPLUG_DT_F32);
        check_storage(&f.inv, "layers.1.ffn.experts", QPLUG_QUANT_FP8_BLOCK, QPLUG_DT_F8_E4M3,
                      QPLUG_DT_F32);
        CHECK(qplug_inventory_tensor(&f.inv, "mtp.0.enorm.weight", NULL) == NULL);
    }
    close_fixture(&f);
}

static void test_nvfp4_hf(void)
{
    fixture f;
    if (!open_dir(&f, FIXTURES "nvfp4"))
        return;
    CHECKF(f.st == QPLUG_OK, "%s", f.err.msg);
    if (f.st == QPLUG_OK) {
        CHECK(f.inv.naming == QPLUG_NAMING_HF && !f.inv.hf_stacked_experts);
        check_layer_list(&f.inv, false);
        check_storage(&f.inv, "layers.0.attn.wq_a", QPLUG_QUANT_NVFP4, QPLUG_DT_U8,
                      QPLUG_DT_F8_E4M3);
        check_storage(&f.inv, "layers.0.attn.wo_a", QPLUG_QUANT_NONE, QPLUG_DT_BF16, 0);
        check_storage(&f.inv, "layers.2.attn.wo_a", QPLUG_QUANT_NONE, QPLUG_DT_BF16, 0);
        check_storage(&f.inv, "layers.1.attn.wo_a", QPLUG_QUANT_NVFP4, QPLUG_DT_U8,
                      QPLUG_DT_F8_E4M3);
        check_storage(&f.inv, "layers.1.ffn.experts", QPLUG_QUANT_NVFP4, QPLUG_DT_U8,
                      QPLUG_DT_F8_E4M3);
        const qplug_inv_layer *l = qplug_inventory_find(&f.inv, "layers.1.ffn.experts");
        const qplug_tensor *t;
        if (l) {
            t = qplug_inventory_source(&f.inv, &l->desc, "experts.3.w1.weight", NULL);
            CHECK(t && !strcmp(t->name, "model.layers.1.mlp.experts.3.gate_proj.weight"));
            t = qplug_inventory_source(&f.inv, &l->desc, "experts.3.w3.weight_scale_2", NULL);
            CHECK(t && !strcmp(t->name, "model.layers.1.mlp.experts.3.up_proj.weight_scale_2"));
            t = qplug_inventory_source(&f.inv, &l->desc, "experts.0.w2.weight_scale", NULL);
            CHECK(t && !strcmp(t->name, "model.layers.1.mlp.experts.0.down_proj.weight_scale") &&
                  shape_is(t, 32, 2));
        }
        check_compressor_sources(&f, "model.layers.1.self_attn.compressor.kv_proj.weight",
                                 "model.layers.1.self_attn.compressor.gate_proj.weight",
                                 "model.layers.1.self_attn.compressor.indexer.kv_proj.weight",
                                 "model.layers.1.self_attn.compressor.indexer.gate_proj.weight");
        check_storage(&f.inv, "layers.1.attn.indexer.compressor", QPLUG_QUANT_NONE, QPLUG_DT_BF16,
                      0);
        l = qplug_inventory_find(&f.inv, "layers.1.attn.indexer.weights_proj");
        t = l ? qplug_inventory_source(&f.inv, &l->desc, "weight", NULL) : NULL;
        CHECK(t && !strcmp(t->name,
                           "model.layers.1.self_attn.compressor.indexer.scorer.weights_proj.weight"));
        t = qplug_inventory_tensor(&f.inv, "layers.1.attn.indexer.compressor.norm.weight", NULL);
        CHECK(t && !strcmp(t->name, "model.layers.1.self_attn.compressor.indexer.kv_norm.weight") &&
              t->shape[0] == 32);
        t = qplug_inventory_tensor(&f.inv, "layers.1.attn.compressor.norm.weight", NULL);
        CHECK(t && !strcmp(t->name, "model.layers.1.self_attn.compressor.kv_norm.weight") &&
              t->shape[0] == 64);
        t = qplug_inventory_tensor(&f.inv, "layers.2.ffn.gate.bias", NULL);
        CHECK(t && !strcmp(t->name, "model.layers.2.mlp.gate.e_score_correction_bias"));
        t = qplug_inventory_tensor(&f.inv, "layers.0.hc_attn_fn", NULL);
        CHECK(t && !strcmp(t->name, "model.layers.0.attn_hc.fn"));
        t = qplug_inventory_tensor(&f.inv, "layers.0.attn.attn_sink", NULL);
        CHECK(t && !strcmp(t->name, "model.layers.0.self_attn.sinks"));
        t = qplug_inventory_tensor(&f.inv, "embed.weight", NULL);
        CHECK(t && !strcmp(t->name, "model.embed_tokens.weight"));
        t = qplug_inventory_tensor(&f.inv, "head.weight", NULL);
        CHECK(t && !strcmp(t->name, "lm_head.weight"));
        t = qplug_inventory_tensor(&f.inv, "hc_head_scale", NULL);
        CHECK(t && !strcmp(t->name, "model.hc_head.hc_scale"));
    }
    close_fixture(&f);
}

static void test_hf_stacked(void)
{
    fixture f;
    if (!open_dir(&f, FIXTURES "hf_stacked"))
        return;
    CHECKF(f.st == QPLUG_OK, "%s", f.err.msg);
    if (f.st == QPLUG_OK) {
        CHECK(f.inv.naming == QPLUG_NAMING_HF && f.inv.hf_stacked_experts);
        /* MTP appended as model.layers.3. */
        check_layer_list(&f.inv, true);
        const qplug_inv_layer *l = qplug_inventory_find(&f.inv, "mtp.0.h_proj");
        CHECK(l && !strcmp(l->hf_name, "model.layers.3.h_proj"));
        const qplug_tensor *t = qplug_inventory_tensor(&f.inv, "mtp.0.enorm.weight", NULL);
        CHECK(t && !strcmp(t->name, "model.layers.3.enorm.weight"));

        long igu = qplug_ckpt_lookup(f.ckpt, "model.layers.1.mlp.experts.gate_up_proj");
        long idn = qplug_ckpt_lookup(f.ckpt, "model.layers.1.mlp.experts.down_proj");
        CHECK(igu >= 0 && idn >= 0);
        l = qplug_inventory_find(&f.inv, "layers.1.ffn.experts");
        if (l && igu >= 0 && idn >= 0) {
            const uint8_t *gu = qplug_ckpt_tensor(f.ckpt, (size_t)igu)->data;
            const uint8_t *dn = qplug_ckpt_tensor(f.ckpt, (size_t)idn)->data;
            size_t before = qplug_inventory_unused_count(&f.inv);
            /* Expert 2: gate rows [0, 32) of gate_up_proj[2] ([64, 32] BF16
             * per expert), up rows [32, 64); down is down_proj[2] ([32, 32]). */
            const qplug_tensor *w1 = qplug_inventory_source(&f.inv, &l->desc, "experts.2.w1.weight", NULL);
            const qplug_tensor *w3 = qplug_inventory_source(&f.inv, &l->desc, "experts.2.w3.weight", NULL);
            const qplug_tensor *w2 = qplug_inventory_source(&f.inv, &l->desc, "experts.2.w2.weight", NULL);
            CHECK(shape_is(w1, 32, 32) && w1->dtype == QPLUG_DT_BF16);
            CHECK(shape_is(w3, 32, 32) && shape_is(w2, 32, 32));
            CHECK(w1 && (const uint8_t *)w1->data == gu + (size_t)2 * 64 * 32 * 2);
            CHECK(w3 && (const uint8_t *)w3->data == gu + (size_t)(2 * 64 + 32) * 32 * 2);
            CHECK(w2 && (const uint8_t *)w2->data == dn + (size_t)2 * 32 * 32 * 2);
            CHECK(qplug_inventory_unused_count(&f.inv) == before - 2);
            CHECK(qplug_inventory_source(&f.inv, &l->desc, "experts.4.w1.weight", NULL) == NULL);
            CHECK(qplug_inventory_source(&f.inv, &l->desc, "experts.0.w1.scale", NULL) == NULL);
        }
    }
    close_fixture(&f);
}

/* ---- modified checkpoints ------------------------------------------------ */

static void copy_file(const char *from, const char *to)
{
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    char buf[4096];
    size_t n;
    while (in && out && (n = fread(buf, 1, sizeof buf, in)) > 0)
        fwrite(buf, 1, n, out);
    if (in)
        fclose(in);
    if (out)
        fclose(out);
}

/*
 * Writes a copy of the flash fixture into a fresh directory with tensor
 * `drop` left out, tensor `drop2` too, and `add` (if not NULL) added;
 * returns the directory.
 */
static const char *variant(const char *tag, const char *drop, const char *drop2,
                           const qplug_tensor *add)
{
    static char dir[512];
    char path[600];
    snprintf(dir, sizeof dir, "%s/%s", test_tmpdir(), tag);
    mkdir(dir, 0700);
    snprintf(path, sizeof path, "%s/config.json", dir);
    copy_file(FIXTURES "flash/config.json", path);

    qplug_ckpt *ck = NULL;
    qplug_err err = {0};
    if (qplug_ckpt_open(FIXTURES "flash", &ck, &err) != QPLUG_OK) {
        CHECKF(false, "%s", err.msg);
        return dir;
    }
    size_t n = qplug_ckpt_count(ck), m = 0;
    qplug_tensor *ts = calloc(n + 1, sizeof *ts);
    for (size_t i = 0; ts && i < n; i++) {
        const qplug_tensor *t = qplug_ckpt_tensor(ck, i);
        if ((drop && !strcmp(t->name, drop)) || (drop2 && !strcmp(t->name, drop2)))
            continue;
        ts[m++] = *t;
    }
    if (ts && add)
        ts[m++] = *add;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    CHECKF(ts && qplug_st_write(path, ts, m, &err) == QPLUG_OK, "%s", err.msg);
    free(ts);
    qplug_ckpt_close(ck);
    return dir;
}

static void test_missing_required(void)
{
    fixture f;
    if (!open_dir(&f, variant("no_norm", "layers.1.attn_norm.weight", NULL, NULL)))
        return;
    CHECK(f.st == QPLUG_ERR_NOT_FOUND);
    CHECKF(strstr(f.err.msg, "layers.1.attn_norm.weight") && strstr(f.err.msg, "no_norm"), "%s",
           f.err.msg);
    CHECK(f.inv.layers == NULL && f.inv.n_layers == 0);
    close_fixture(&f);

    if (!open_dir(&f, variant("no_ape", "layers.1.attn.indexer.compressor.ape", NULL, NULL)))
        return;
    CHECK(f.st == QPLUG_ERR_NOT_FOUND);
    CHECKF(strstr(f.err.msg, "layers.1.attn.indexer.compressor.ape"), "%s", f.err.msg);
    close_fixture(&f);

    if (!open_dir(&f, variant("no_weight", "layers.2.attn.wkv.weight", NULL, NULL)))
        return;
    CHECK(f.st == QPLUG_ERR_NOT_FOUND);
    CHECKF(strstr(f.err.msg, "layers.2.attn.wkv.weight"), "%s", f.err.msg);
    close_fixture(&f);
}

static void test_disagreeing_shards(void)
{
    /* Expert 1's w3 stored in BF16 while its w1 (and everything else) is MXFP4. */
    uint16_t *bf = malloc(32 * 32 * sizeof *bf);
    for (int i = 0; bf && i < 32 * 32; i++)
        bf[i] = (uint16_t)(0x3c00 + (rand() & 0xff));
    qplug_tensor t = {.name = "layers.2.ffn.experts.1.w3.weight", .dtype = QPLUG_DT_BF16,
                      .ndim = 2, .shape = {32, 32}, .data = bf, .device = QPLUG_DEVICE_CPU};
    fixture f;
    if (open_dir(&f, variant("bad_shards", "layers.2.ffn.experts.1.w3.weight",
                             "layers.2.ffn.experts.1.w3.scale", &t))) {
        CHECK(f.st == QPLUG_ERR_FORMAT);
        CHECKF(strstr(f.err.msg, "layers.2.ffn.experts.1.w3.weight") &&
                   strstr(f.err.msg, "layers.2.ffn.experts.0.w1.weight"),
               "%s", f.err.msg);
        close_fixture(&f);
    }
    free(bf);

    /* The indexer compressor's gate stored in F32 while its kv is BF16:
     * one plugin fuses both, so the shards must agree. */
    float *f32 = malloc(64 * 32 * sizeof *f32);
    for (int i = 0; f32 && i < 64 * 32; i++)
        f32[i] = (float)(rand() % 200 - 100) / 256.0f;
    qplug_tensor g = {.name = "layers.1.attn.indexer.compressor.wgate.weight",
                      .dtype = QPLUG_DT_F32, .ndim = 2, .shape = {64, 32}, .data = f32,
                      .device = QPLUG_DEVICE_CPU};
    if (f32 && open_dir(&f, variant("bad_compressor", "layers.1.attn.indexer.compressor.wgate.weight",
                                    NULL, &g))) {
        CHECK(f.st == QPLUG_ERR_FORMAT);
        CHECKF(strstr(f.err.msg, "layers.1.attn.indexer.compressor.wkv.weight") &&
                   strstr(f.err.msg, "layers.1.attn.indexer.compressor.wgate.weight") &&
                   strstr(f.err.msg, "F32"),
               "%s", f.err.msg);
        close_fixture(&f);
    }
    free(f32);

    /* A missing shard is a missing tensor, named. */
    if (open_dir(&f, variant("no_gate", "layers.1.attn.compressor.wgate.weight", NULL, NULL))) {
        CHECK(f.st == QPLUG_ERR_NOT_FOUND);
        CHECKF(strstr(f.err.msg, "layers.1.attn.compressor.wgate.weight"), "%s", f.err.msg);
        close_fixture(&f);
    }
}

static void test_unused(void)
{
    float v[4] = {1, 2, 3, 4};
    qplug_tensor t = {.name = "layers.0.attn.extra_bias", .dtype = QPLUG_DT_F32, .ndim = 1,
                      .shape = {4}, .data = v, .device = QPLUG_DEVICE_CPU};
    fixture f;
    if (!open_dir(&f, variant("extra", NULL, NULL, &t)))
        return;
    CHECKF(f.st == QPLUG_OK, "%s", f.err.msg);
    /* Hand out every tensor except the extra one by its (official) name. */
    size_t n = qplug_ckpt_count(f.ckpt);
    for (size_t i = 0; i < n; i++) {
        const char *name = qplug_ckpt_tensor(f.ckpt, i)->name;
        if (strcmp(name, "layers.0.attn.extra_bias"))
            CHECKF(qplug_inventory_tensor(&f.inv, name, NULL) != NULL, "%s", name);
    }
    CHECK(qplug_inventory_unused_count(&f.inv) == 1);
    long j = qplug_inventory_next_unused(&f.inv, 0);
    CHECK(j >= 0 && !strcmp(qplug_ckpt_tensor(f.ckpt, (size_t)j)->name, "layers.0.attn.extra_bias"));
    CHECK(j < 0 || qplug_inventory_next_unused(&f.inv, (size_t)j + 1) == -1);
    close_fixture(&f);
}

static void test_unknown_naming(void)
{
    float v[2] = {1, 2};
    qplug_tensor t = {.name = "transformer.h.0.weight", .dtype = QPLUG_DT_F32, .ndim = 1,
                      .shape = {2}, .data = v, .device = QPLUG_DEVICE_CPU};
    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%s/foreign", test_tmpdir());
    mkdir(dir, 0700);
    snprintf(path, sizeof path, "%s/config.json", dir);
    copy_file(FIXTURES "flash/config.json", path);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    qplug_err err = {0};
    CHECKF(qplug_st_write(path, &t, 1, &err) == QPLUG_OK, "%s", err.msg);
    fixture f;
    if (!open_dir(&f, dir))
        return;
    CHECK(f.st == QPLUG_ERR_FORMAT);
    CHECKF(strstr(f.err.msg, "naming"), "%s", f.err.msg);
    close_fixture(&f);
}

static void test_config_only(void)
{
    qplug_model_config cfg;
    qplug_err err = {0};
    if (qplug_config_load(FIXTURES "nvfp4", &cfg, &err) != QPLUG_OK) {
        CHECKF(false, "%s", err.msg);
        return;
    }
    qplug_inventory inv;
    qplug_status st = qplug_inventory_build(&cfg, NULL, QPLUG_DEVICE_CPU, &inv, &err);
    CHECKF(st == QPLUG_OK, "%s", err.msg);
    /* HF config without a checkpoint: HF naming, MTP taken from the config. */
    CHECK(inv.naming == QPLUG_NAMING_HF && inv.n_mtp == 1 && inv.n_layers == 47);
    const qplug_inv_layer *l = qplug_inventory_find(&inv, "layers.0.attn.wq_a");
    CHECK(l && !l->stored.present);
    char buf[160];
    CHECK(qplug_inventory_ckpt_name(&inv, "layers.1.attn.indexer.wq_b.weight", buf, sizeof buf) &&
          !strcmp(buf, "model.layers.1.self_attn.compressor.indexer.q_b_proj.weight"));
    CHECK(qplug_inventory_ckpt_name(&inv, "layers.0.ffn.shared_experts.w2.weight", buf, sizeof buf) &&
          !strcmp(buf, "model.layers.0.mlp.shared_experts.down_proj.weight"));
    CHECK(qplug_inventory_ckpt_name(&inv, "layers.0.ffn_norm.weight", buf, sizeof buf) &&
          !strcmp(buf, "model.layers.0.post_attention_layernorm.weight"));
    CHECK(qplug_inventory_ckpt_name(&inv, "layers.0.attn.q_norm.weight", buf, sizeof buf) &&
          !strcmp(buf, "model.layers.0.self_attn.q_a_norm.weight"));
    CHECK(!qplug_inventory_ckpt_name(&inv, "layers.0.attn.q_norm.weight", buf, 8));
    qplug_inventory_free(&inv);
    qplug_config_free(&cfg);
}

/* Each key inside its own bound but the experts' product absurd
 * (65536 x 2^20 x 2^20 elements): refused before any plugin sizes buffers
 * from it, with the file and the product named. A real V4-Pro stays far
 * below the cap. */
static void test_absurd_dims(void)
{
    qplug_model_config cfg;
    qplug_err err = {0};
    if (qplug_config_load(FIXTURES "nvfp4", &cfg, &err) != QPLUG_OK) {
        CHECKF(false, "%s", err.msg);
        return;
    }
    qplug_inventory inv;
    int64_t e = cfg.n_routed_experts, inter = cfg.moe_intermediate_size, d = cfg.hidden_size;
    cfg.n_routed_experts = 65536;
    cfg.moe_intermediate_size = 1 << 20;
    cfg.hidden_size = 1 << 20;
    qplug_status st = qplug_inventory_build(&cfg, NULL, QPLUG_DEVICE_CPU, &inv, &err);
    CHECKF(st == QPLUG_ERR_CONFIG && strstr(err.msg, "experts") && strstr(err.msg, "config.json"),
           "st %d: %s", (int)st, err.msg);
    cfg.n_routed_experts = 384;
    cfg.moe_intermediate_size = 3072;
    cfg.hidden_size = 7168;
    st = qplug_inventory_build(&cfg, NULL, QPLUG_DEVICE_CPU, &inv, &err);
    CHECKF(st == QPLUG_OK, "V4-Pro sizes refused: %s", err.msg);
    if (st == QPLUG_OK)
        qplug_inventory_free(&inv);
    cfg.n_routed_experts = e;
    cfg.moe_intermediate_size = inter;
    cfg.hidden_size = d;
    qplug_config_free(&cfg);
}

/* A stub that takes every layer, so that resolving the inventory does not
 * depend on which real plugins are built. */
static int score_any(const qplug_layer_desc *l)
{
    (void)l;
    return 1;
}
static const qplug_plugin p_any = {QPLUG_ABI_VERSION, sizeof(qplug_plugin), "any", "stub", 1u,
                                   score_any, test_stub_create, test_stub_process, test_stub_apply, test_stub_destroy,
                                   NULL, NULL};

static void test_resolve_flags(void)
{
    fixture f;
    if (!open_dir(&f, FIXTURES "flash"))
        return;
    qplug_registry *reg = NULL;
    qplug_err err = {0};
    CHECK(qplug_registry_create(&reg, &err) == QPLUG_OK);
    CHECK(reg && qplug_registry_add(reg, &p_any, "test", &err) == QPLUG_OK);
    qplug_policy pol;
    qplug_policy_init(&pol);
    pol.fp4_activations = true;
    if (reg && f.st == QPLUG_OK) {
        CHECKF(qplug_inventory_resolve(&f.inv, reg, &pol, &err) == QPLUG_OK, "%s", err.msg);
        for (size_t i = 0; i < f.inv.n_layers; i++) {
            const qplug_inv_layer *l = &f.inv.layers[i];
            bool moe = l->desc.kind == QPLUG_LAYER_FUSED_MOE;
            CHECKF(l->decision.plugin && !strcmp(l->decision.plugin->name, "any") && l->decision.reason[0],
                   "%s", l->name);
            CHECKF(((l->desc.flags & QPLUG_LAYER_FP4_ACTIVATIONS) != 0) == moe, "%s", l->name);
        }
        const qplug_inv_layer *l = qplug_inventory_find(&f.inv, "layers.0.ffn.experts");
        CHECK(l && l->desc.quant == QPLUG_QUANT_MXFP4 && l->desc.weight_dtype == QPLUG_DT_I8 &&
              l->desc.scale_dtype == QPLUG_DT_F8_E8M0);
        l = qplug_inventory_find(&f.inv, "layers.0.attn.wq_a");
        CHECK(l && l->desc.quant == QPLUG_QUANT_FP8_BLOCK &&
              l->desc.scale_dtype == QPLUG_DT_F8_E8M0);
    }
    qplug_policy_free(&pol);
    if (reg)
        qplug_registry_destroy(reg);
    close_fixture(&f);
}

int main(void)
{
    test_bf16_official();
    test_flash();
    test_flash_base_no_mtp();
    test_nvfp4_hf();
    test_hf_stacked();
    test_missing_required();
    test_disagreeing_shards();
    test_unused();
    test_unknown_naming();
    test_config_only();
    test_absurd_dims();
    test_resolve_flags();
    return test_done();
}
