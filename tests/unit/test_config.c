/* config.json / hf_quant_config.json parsing. The sample directories under
 * tests/data/config/ follow the released configs; the expected values below
 * are the table of deepseek_v4.md section 1, typed in by hand. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "qplug/config.h"
#include "testutil.h"

#define DATA QPLUG_SOURCE_DIR "/tests/data/config/"

static int near(double a, double b)
{
    return fabs(a - b) <= 1e-12 * fabs(b);
}

static void check_flash_shape(const qplug_model_config *c)
{
    CHECK(c->vocab_size == 129280);
    CHECK(c->hidden_size == 4096);
    CHECK(c->num_hidden_layers == 43);
    CHECK(c->num_attention_heads == 64 && c->num_key_value_heads == 1);
    CHECK(c->head_dim == 512 && c->qk_rope_head_dim == 64);
    CHECK(c->q_lora_rank == 1024 && c->o_groups == 8 && c->o_lora_rank == 1024);
    CHECK(c->n_routed_experts == 256 && c->n_shared_experts == 1 && c->num_experts_per_tok == 6);
    CHECK(c->moe_intermediate_size == 2048);
    CHECK(near(c->routed_scaling_factor, 1.5));
    CHECK(c->index_n_heads == 64 && c->index_head_dim == 128 && c->index_topk == 512);
    CHECK(c->num_hash_layers == 3 && c->num_nextn_predict_layers == 1);
    CHECK(c->sliding_window == 128 && c->hc_mult == 4 && c->hc_sinkhorn_iters == 20);
    CHECK(near(c->hc_eps, 1e-6) && near(c->rms_norm_eps, 1e-6) && near(c->swiglu_limit, 10.0));
    CHECK(near(c->rope_theta, 10000.0) && near(c->compress_rope_theta, 160000.0));
    CHECK(near(c->yarn_factor, 16.0) && near(c->yarn_original_max_pos, 65536.0));
    CHECK(near(c->yarn_beta_fast, 32.0) && near(c->yarn_beta_slow, 1.0));
    CHECK(c->max_position_embeddings == 1048576);
    CHECK(c->norm_topk_prob);
    CHECK(strcmp(c->scoring_func, "sqrtsoftplus") == 0);
    /* Layers 0 and 1 window-only, then CSA on even and HCA on odd layers up
     * to 42; the MTP layer (index 43) window-only. */
    CHECK(c->compress_ratios[0] == 0 && c->compress_ratios[1] == 0);
    CHECK(c->compress_ratios[2] == 4 && c->compress_ratios[3] == 128);
    CHECK(c->compress_ratios[41] == 128 && c->compress_ratios[42] == 4);
    CHECK(c->compress_ratios[43] == 0);
    CHECK(c->hash_moe[0] && c->hash_moe[1] && c->hash_moe[2]);
    CHECK(!c->hash_moe[3] && !c->hash_moe[42]);
}

static void test_samples(void)
{
    qplug_model_config c;
    qplug_err err = {0};

    CHECKF(qplug_config_load(DATA "v4-flash", &c, &err) == QPLUG_OK, "%s", err.msg);
    check_flash_shape(&c);
    CHECK(!c.hf_style);
    CHECK(strstr(c.source, "v4-flash/config.json") != NULL);
    CHECK(c.quant.method == QPLUG_QM_DEEPSEEK_FP8);
    CHECK(c.quant.expert_dtype == QPLUG_EXPERT_FP4);
    CHECK(c.quant.scale_ue8m0);
    CHECK(c.quant.block_n == 128 && c.quant.block_k == 128);
    CHECK(!c.quant.moe_nvfp4 && c.quant.n_exclude == 0);
    qplug_config_free(&c);

    CHECKF(qplug_config_load(DATA "v4-flash-base", &c, &err) == QPLUG_OK, "%s", err.msg);
    check_flash_shape(&c);
    CHECK(c.quant.method == QPLUG_QM_DEEPSEEK_FP8);
    CHECK(c.quant.expert_dtype == QPLUG_EXPERT_FP8);
    CHECK(!c.quant.scale_ue8m0);
    qplug_config_free(&c);

    CHECKF(qplug_config_load(DATA "v4-pro", &c, &err) == QPLUG_OK, "%s", err.msg);
    CHECK(c.hidden_size == 7168 && c.num_hidden_layers == 61 && c.num_attention_heads == 128);
    CHECK(c.q_lora_rank == 1536 && c.o_groups == 16 && c.o_lora_rank == 1024);
    CHECK(c.n_routed_experts == 384 && c.moe_intermediate_size == 3072);
    CHECK(near(c.routed_scaling_factor, 2.5) && c.index_topk == 1024);
    /* HCA, HCA, then HCA/CSA alternating; layer 60 HCA; MTP (61) window. */
    CHECK(c.compress_ratios[0] == 128 && c.compress_ratios[1] == 128);
    CHECK(c.compress_ratios[2] == 128 && c.compress_ratios[3] == 4);
    CHECK(c.compress_ratios[60] == 128 && c.compress_ratios[61] == 0);
    /* No expert_dtype in this config: fp4 is the default. */
    CHECK(c.quant.expert_dtype == QPLUG_EXPERT_FP4);
    qplug_config_free(&c);

    CHECKF(qplug_config_load(DATA "nvfp4-hf", &c, &err) == QPLUG_OK, "%s", err.msg);
    check_flash_shape(&c);
    CHECK(c.hf_style);
    CHECK(c.quant.method == QPLUG_QM_MODELOPT);
    CHECK(c.quant.algo == QPLUG_MO_NVFP4 && c.quant.group_size == 16);
    CHECK(c.quant.kv_cache_algo[0] == '\0');
    CHECK(strstr(c.quant.source, "hf_quant_config.json") != NULL);
    /* hf_quant_config.json's exclude_modules win over config.json's ignore. */
    CHECK(c.quant.n_exclude == 4);
    if (c.quant.n_exclude == 4) {
        CHECK(strcmp(c.quant.exclude[0], "lm_head") == 0);
        CHECK(strcmp(c.quant.exclude[3], "mtp*") == 0);
    }
    qplug_config_free(&c);

    CHECK(qplug_config_load(DATA "bad-expert-dtype", &c, &err) == QPLUG_ERR_CONFIG);
    CHECKF(strstr(err.msg, "\"fp6\"") && strstr(err.msg, "\"fp4\"") && strstr(err.msg, "\"fp8\"") &&
               strstr(err.msg, "config.json") && strstr(err.msg, "expert_dtype"),
           "%s", err.msg);

    CHECK(qplug_config_load(DATA "nvfp4-missing", &c, &err) == QPLUG_ERR_CONFIG);
    CHECKF(strstr(err.msg, "hf_quant_config.json") && strstr(err.msg, "group_size") &&
               strstr(err.msg, "kv_cache_quant_algo") && strstr(err.msg, "exclude_modules"),
           "%s", err.msg);

    CHECK(qplug_config_load(DATA "does-not-exist", &c, &err) == QPLUG_ERR_NOT_FOUND);
    CHECK(strstr(err.msg, "does-not-exist/config.json") != NULL);
}

/* A small official-style config with `extra` spliced into the object. */
#define BASE                                                                                       \
    "\"vocab_size\":100,\"hidden_size\":64,\"num_hidden_layers\":3,\"num_attention_heads\":8,"     \
    "\"n_routed_experts\":4,\"num_experts_per_tok\":2,\"moe_intermediate_size\":32"

static qplug_status parse2(const char *json, const char *hfq, qplug_model_config *c, qplug_err *err)
{
    err->msg[0] = '\0';
    return qplug_config_parse(json, strlen(json), "mem/config.json", hfq, hfq ? strlen(hfq) : 0,
                              "mem/hf_quant_config.json", c, err);
}

static void expect(const char *name, const char *json, const char *hfq, qplug_status status,
                   const char *s1, const char *s2)
{
    qplug_model_config c;
    qplug_err err = {0};
    qplug_status st = parse2(json, hfq, &c, &err);
    CHECKF(st == status, "%s: got %s (%s)", name, qplug_status_name(st), err.msg);
    if (st != QPLUG_OK) {
        CHECKF(strstr(err.msg, "mem/"), "%s: names the file: %s", name, err.msg);
        CHECK(c.quant.exclude == NULL);
    }
    CHECKF(!s1 || strstr(err.msg, s1), "%s: names %s: %s", name, s1, err.msg);
    CHECKF(!s2 || strstr(err.msg, s2), "%s: names %s: %s", name, s2, err.msg);
    qplug_config_free(&c);
}

static void test_memory(void)
{
    qplug_model_config c;
    qplug_err err = {0};

    /* Defaults: V4-Flash values where a key is absent. */
    CHECKF(parse2("{" BASE ",\"compress_ratios\":[0,4,128]}", NULL, &c, &err) == QPLUG_OK, "%s",
           err.msg);
    CHECK(c.num_key_value_heads == 1 && c.head_dim == 512 && c.qk_rope_head_dim == 64);
    CHECK(c.o_groups == 8 && c.num_nextn_predict_layers == 1 && c.sliding_window == 128);
    CHECK(c.num_hash_layers == 3 && c.hash_moe[0] && c.hash_moe[2]);
    CHECK(c.compress_ratios[0] == 0 && c.compress_ratios[1] == 4 && c.compress_ratios[2] == 128);
    CHECK(c.compress_ratios[3] == 0);
    CHECK(near(c.yarn_factor, 16.0) && near(c.routed_scaling_factor, 1.5));
    CHECK(c.quant.method == QPLUG_QM_NONE && c.quant.expert_dtype == QPLUG_EXPERT_FP4);
    qplug_config_free(&c);

    /* HF style: flat rope_parameters are the compressed layers' yarn;
     * mlp_layer_types decides hash routing. */
    CHECKF(parse2("{" BASE ",\"layer_types\":[\"sliding_attention\",\"heavily_compressed_attention\","
                  "\"compressed_sparse_attention\"],\"mlp_layer_types\":[\"hash_moe\",\"moe\",\"moe\"],"
                  "\"rope_parameters\":{\"rope_type\":\"yarn\",\"factor\":4,"
                  "\"original_max_position_embeddings\":4096,\"beta_fast\":16,\"beta_slow\":2}}",
                  NULL, &c, &err) == QPLUG_OK,
           "%s", err.msg);
    CHECK(c.hf_style);
    CHECK(c.compress_ratios[1] == 128 && c.compress_ratios[2] == 4 && c.compress_ratios[3] == 0);
    CHECK(c.hash_moe[0] && !c.hash_moe[1] && c.num_hash_layers == 1);
    CHECK(near(c.yarn_factor, 4.0) && near(c.yarn_original_max_pos, 4096.0));
    CHECK(near(c.yarn_beta_fast, 16.0) && near(c.yarn_beta_slow, 2.0));
    qplug_config_free(&c);

    /* A plain-rope compress entry means no yarn (factor 1). */
    CHECKF(parse2("{" BASE ",\"compress_ratios\":[0,4,128],\"rope_parameters\":{\"main\":"
                  "{\"rope_theta\":5000},\"compress\":{\"rope_type\":\"default\",\"rope_theta\":"
                  "40000}}}",
                  NULL, &c, &err) == QPLUG_OK,
           "%s", err.msg);
    CHECK(near(c.yarn_factor, 1.0) && near(c.rope_theta, 5000.0) && near(c.compress_rope_theta, 40000.0));
    qplug_config_free(&c);

    /* DeepSeek FP8 details: expert_dtype inside quantization_config,
     * moe_quant_algo NVFP4, ignored_layers. */
    CHECKF(parse2("{" BASE ",\"compress_ratios\":[0,4,128],\"quantization_config\":{\"quant_method\":"
                  "\"deepseek_v4_fp8\",\"expert_dtype\":\"fp8\",\"moe_quant_algo\":\"NVFP4\","
                  "\"ignored_layers\":[\"layers.0.attn.wo_a\",\"head\"]}}",
                  NULL, &c, &err) == QPLUG_OK,
           "%s", err.msg);
    CHECK(c.quant.method == QPLUG_QM_DEEPSEEK_FP8 && c.quant.expert_dtype == QPLUG_EXPERT_FP8);
    CHECK(c.quant.moe_nvfp4 && !c.quant.scale_ue8m0);
    CHECK(c.quant.n_exclude == 2 && strcmp(c.quant.exclude[1], "head") == 0);
    qplug_config_free(&c);

    /* ModelOpt in config.json only, nested form. */
    CHECKF(parse2("{" BASE ",\"compress_ratios\":[0,4,128],\"quantization_config\":{\"quant_method\":"
                  "\"modelopt\",\"quantization\":{\"quant_algo\":\"FP8_PB_WO\",\"kv_cache_quant_algo\":"
                  "\"FP8\",\"exclude_modules\":[\"lm_head\"]}}}",
                  NULL, &c, &err) == QPLUG_OK,
           "%s", err.msg);
    CHECK(c.quant.method == QPLUG_QM_MODELOPT && c.quant.algo == QPLUG_MO_FP8_PB_WO);
    CHECK(strcmp(c.quant.kv_cache_algo, "FP8") == 0 && c.quant.n_exclude == 1);
    CHECK(strcmp(c.quant.source, "mem/config.json") == 0);
    qplug_config_free(&c);

    /* NVFP4 with the group size under config_groups. */
    CHECKF(parse2("{" BASE ",\"compress_ratios\":[0,4,128],\"quantization_config\":{\"quant_method\":"
                  "\"modelopt\",\"quant_algo\":\"NVFP4\",\"config_groups\":{\"group_0\":{\"weights\":"
                  "{\"group_size\":16}}},\"ignore\":[]}}",
                  NULL, &c, &err) == QPLUG_OK,
           "%s", err.msg);
    CHECK(c.quant.algo == QPLUG_MO_NVFP4 && c.quant.group_size == 16 && c.quant.n_exclude == 0);
    qplug_config_free(&c);

    /* hf_quant_config.json alone. */
    CHECKF(parse2("{" BASE ",\"compress_ratios\":[0,4,128]}",
                  "{\"quantization\":{\"quant_algo\":\"FP8\",\"kv_cache_quant_algo\":null,"
                  "\"exclude_modules\":[\"a\",\"b*\"]}}",
                  &c, &err) == QPLUG_OK,
           "%s", err.msg);
    CHECK(c.quant.method == QPLUG_QM_MODELOPT && c.quant.algo == QPLUG_MO_FP8 && c.quant.n_exclude == 2);
    qplug_config_free(&c);

    const char *sched = ",\"compress_ratios\":[0,4,128]";
    char buf[1024];
#define J(extra) (snprintf(buf, sizeof buf, "{" BASE "%s%s}", sched, extra), buf)

    expect("missing all", "{}", NULL, QPLUG_ERR_CONFIG, "vocab_size, hidden_size", "moe_intermediate_size");
    expect("missing schedule", "{" BASE "}", NULL, QPLUG_ERR_CONFIG, "compress_ratios (or layer_types)",
           NULL);
    expect("not json", "{\"vocab_size\":", NULL, QPLUG_ERR_CONFIG, "not valid JSON", NULL);
    expect("not object", "[1]", NULL, QPLUG_ERR_CONFIG, "not a JSON object", NULL);
    expect("trailing", "{} {}", NULL, QPLUG_ERR_CONFIG, "after the JSON", NULL);
    expect("wrong type", "{\"vocab_size\":100,\"hidden_size\":\"64\"}", NULL, QPLUG_ERR_CONFIG,
           "\"hidden_size\"", "a string");
    expect("fractional", "{\"vocab_size\":100.5}", NULL, QPLUG_ERR_CONFIG, "\"vocab_size\"", NULL);
    expect("out of range", "{\"vocab_size\":100,\"num_hidden_layers\":1000}", NULL, QPLUG_ERR_CONFIG,
           "num_hidden_layers", NULL);
    sched = ",\"compress_ratios\":[0,4,5]";
    expect("bad ratio", J(""), NULL, QPLUG_ERR_UNSUPPORTED, "compress_ratios[2]", NULL);
    sched = ",\"compress_ratios\":[0,4]";
    expect("short ratios", J(""), NULL, QPLUG_ERR_CONFIG, "compress_ratios", "2 entries");
    sched = ",\"compress_ratios\":[0,\"4\",128]";
    expect("ratio type", J(""), NULL, QPLUG_ERR_CONFIG, "compress_ratios[1]", NULL);
    sched = ",\"layer_types\":[\"sliding_attention\",\"full_attention\",\"sliding_attention\"]";
    expect("bad layer type", J(""), NULL, QPLUG_ERR_CONFIG, "layer_types[1]", "full_attention");
    sched = ",\"layer_types\":[\"sliding_attention\"]";
    expect("layer_types length", J(""), NULL, QPLUG_ERR_CONFIG, "layer_types", NULL);
    sched = ",\"compress_ratios\":[0,4,128]";
    expect("mlp type", J(",\"mlp_layer_types\":[\"moe\",\"dense\",\"moe\"]"), NULL, QPLUG_ERR_CONFIG,
           "mlp_layer_types[1]", "dense");
    expect("hash layers", J(",\"num_hash_layers\":4"), NULL, QPLUG_ERR_CONFIG, "num_hash_layers", NULL);
    expect("o_groups", J(",\"o_groups\":3"), NULL, QPLUG_ERR_CONFIG, "o_groups", NULL);
    expect("scoring", J(",\"scoring_func\":\"tanh\""), NULL, QPLUG_ERR_UNSUPPORTED, "tanh", NULL);
    expect("expert_dtype type", J(",\"expert_dtype\":4"), NULL, QPLUG_ERR_CONFIG, "expert_dtype", NULL);
    expect("expert_dtype value",
           J(",\"quantization_config\":{\"quant_method\":\"fp8\",\"expert_dtype\":\"int4\"}"), NULL,
           QPLUG_ERR_CONFIG, "\"int4\"", "allowed: \"fp4\", \"fp8\"");
    expect("expert_dtype conflict",
           J(",\"expert_dtype\":\"fp4\",\"quantization_config\":{\"quant_method\":\"fp8\","
             "\"expert_dtype\":\"fp8\"}"),
           NULL, QPLUG_ERR_CONFIG, "expert_dtype", NULL);
    expect("unknown method", J(",\"quantization_config\":{\"quant_method\":\"gptq\"}"), NULL,
           QPLUG_ERR_UNSUPPORTED, "\"gptq\"", "quant_method");
    expect("no method", J(",\"quantization_config\":{\"fmt\":\"e4m3\"}"), NULL, QPLUG_ERR_CONFIG,
           "quantization_config.quant_method", NULL);
    expect("qc type", J(",\"quantization_config\":[]"), NULL, QPLUG_ERR_CONFIG, "quantization_config",
           "an array");
    expect("scale_fmt", J(",\"quantization_config\":{\"quant_method\":\"fp8\",\"scale_fmt\":\"fp32\"}"),
           NULL, QPLUG_ERR_UNSUPPORTED, "scale_fmt", NULL);
    expect("block size",
           J(",\"quantization_config\":{\"quant_method\":\"fp8\",\"weight_block_size\":[64,64]}"), NULL,
           QPLUG_ERR_UNSUPPORTED, "weight_block_size", NULL);
    expect("ignored type",
           J(",\"quantization_config\":{\"quant_method\":\"fp8\",\"ignored_layers\":[\"a\",3]}"), NULL,
           QPLUG_ERR_CONFIG, "ignored_layers[1]", NULL);
    expect("unknown algo", J(""), "{\"quantization\":{\"quant_algo\":\"W4A16_AWQ\"}}",
           QPLUG_ERR_UNSUPPORTED, "W4A16_AWQ", "hf_quant_config.json");
    expect("no algo", J(""), "{\"quantization\":{\"group_size\":16}}", QPLUG_ERR_CONFIG,
           "quantization.quant_algo", NULL);
    expect("no quantization", J(""), "{\"producer\":{}}", QPLUG_ERR_CONFIG, "\"quantization\"", NULL);
    expect("nvfp4 group 32", J(""),
           "{\"quantization\":{\"quant_algo\":\"NVFP4\",\"group_size\":32,\"kv_cache_quant_algo\":null,"
           "\"exclude_modules\":[]}}",
           QPLUG_ERR_UNSUPPORTED, "group_size", "32");
    expect("nvfp4 qc missing group",
           J(",\"quantization_config\":{\"quant_method\":\"modelopt\",\"quant_algo\":\"NVFP4\"}"), NULL,
           QPLUG_ERR_CONFIG, "quantization_config.group_size", NULL);
    expect("exclude type", J(""),
           "{\"quantization\":{\"quant_algo\":\"FP8\",\"exclude_modules\":[\"a\",null]}}",
           QPLUG_ERR_CONFIG, "quantization.exclude_modules[1]", NULL);
    expect("hf not json", J(""), "{", QPLUG_ERR_CONFIG, "mem/hf_quant_config.json", NULL);
    expect("fp8 plus modelopt", J(",\"quantization_config\":{\"quant_method\":\"fp8\"}"),
           "{\"quantization\":{\"quant_algo\":\"FP8\"}}", QPLUG_ERR_CONFIG, "config.json",
           "hf_quant_config.json");
    expect("algo disagreement",
           J(",\"quantization_config\":{\"quant_method\":\"modelopt\",\"quant_algo\":\"FP8\"}"),
           "{\"quantization\":{\"quant_algo\":\"NVFP4\",\"group_size\":16,\"kv_cache_quant_algo\":null,"
           "\"exclude_modules\":[]}}",
           QPLUG_ERR_CONFIG, "NVFP4", "FP8");
#undef J

    /* A NUL byte inside the text. */
    {
        const char text[] = "{}\0{}";
        qplug_status st = qplug_config_parse(text, sizeof text - 1, "mem/config.json", NULL, 0, NULL, &c,
                                             &err);
        CHECK(st == QPLUG_ERR_CONFIG && strstr(err.msg, "NUL"));
        qplug_config_free(&c);
    }
}

int main(void)
{
    test_samples();
    test_memory();
    return test_done();
}
