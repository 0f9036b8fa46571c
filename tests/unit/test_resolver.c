/*
 * Resolver rules (architecture.md "Resolver"), each checked on its own with
 * stub plugins registered in the test. The stubs only score: they stand in
 * for the real plugins so that every rule can be hit independently of what
 * the real plugins claim. Expected outcomes are written by hand from the
 * contract.
 */
#include <stdlib.h>
#include <string.h>

#include "qplug/qplug.h"
#include "testutil.h"

/* ---- stub plugins ------------------------------------------------------ */

static int score_unq(const qplug_layer_desc *l)
{
    return l->quant == QPLUG_QUANT_NONE ? 10 : 0;
}

static int score_fp8(const qplug_layer_desc *l)
{
    if (l->kind == QPLUG_LAYER_ATTENTION)
        return l->quant == QPLUG_QUANT_FP8_TENSOR ? 100 : 0;
    return l->quant == QPLUG_QUANT_FP8_BLOCK ? 100 : 0;
}

static int score_mxfp4(const qplug_layer_desc *l)
{
    return l->quant == QPLUG_QUANT_MXFP4 ? 100 : 0;
}

static int score_nvfp4(const qplug_layer_desc *l)
{
    return l->quant == QPLUG_QUANT_NVFP4 ? 100 : 0;
}

/* Handles FP4 MoE, but lower than mxfp4: chosen only when a rule says so. */
static int score_megamoe(const qplug_layer_desc *l)
{
    return l->kind == QPLUG_LAYER_FUSED_MOE &&
                   (l->quant == QPLUG_QUANT_MXFP4 || l->quant == QPLUG_QUANT_NVFP4)
               ? 50
               : 0;
}

/* Two plugins with equal scores for FP8_TENSOR linears: ties go by name. */
static int score_tie(const qplug_layer_desc *l)
{
    return l->kind != QPLUG_LAYER_ATTENTION && l->quant == QPLUG_QUANT_FP8_TENSOR ? 7 : 0;
}

#define STUB(var, nm, fn)                                                                          \
    static const qplug_plugin var = {QPLUG_ABI_VERSION, sizeof(qplug_plugin), nm, "stub", 1u,      \
                                     fn, test_stub_create, test_stub_process, test_stub_apply, test_stub_destroy, NULL, NULL}

STUB(p_unq, "unquantized", score_unq);
STUB(p_fp8, "fp8_block", score_fp8);
STUB(p_mx, "mxfp4", score_mxfp4);
STUB(p_nv, "nvfp4", score_nvfp4);
STUB(p_mega, "w4a4_megamoe", score_megamoe);
STUB(p_zeta, "zeta_fp8", score_tie);
STUB(p_alpha, "alpha_fp8", score_tie);

static qplug_registry *make_registry(void)
{
    qplug_registry *reg = NULL;
    qplug_err err = {0};
    CHECK(qplug_registry_create(&reg, &err) == QPLUG_OK);
    /* zeta before alpha: the tie must not depend on registration order. */
    const qplug_plugin *all[] = {&p_unq, &p_fp8, &p_mx, &p_nv, &p_mega, &p_zeta, &p_alpha};
    for (size_t i = 0; reg && i < sizeof all / sizeof all[0]; i++)
        CHECKF(qplug_registry_add(reg, all[i], "test", &err) == QPLUG_OK, "%s", err.msg);
    return reg;
}

/* ---- helpers ------------------------------------------------------------- */

static void cfg_init(qplug_model_config *c)
{
    memset(c, 0, sizeof *c);
    strcpy(c->source, "/ckpt/config.json");
}

static void cfg_deepseek(qplug_model_config *c, qplug_expert_dtype ed)
{
    cfg_init(c);
    c->quant.method = QPLUG_QM_DEEPSEEK_FP8;
    strcpy(c->quant.source, "/ckpt/config.json");
    c->quant.expert_dtype = ed;
    c->quant.scale_ue8m0 = ed == QPLUG_EXPERT_FP4;
    c->quant.block_n = c->quant.block_k = 128;
}

static void cfg_modelopt(qplug_model_config *c, qplug_modelopt_algo algo)
{
    cfg_init(c);
    c->quant.method = QPLUG_QM_MODELOPT;
    strcpy(c->quant.source, "/ckpt/hf_quant_config.json");
    c->quant.algo = algo;
    c->quant.group_size = 16;
}

static qplug_layer_desc desc(const char *name, qplug_layer_kind kind)
{
    qplug_layer_desc d;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    d.name = name;
    d.kind = kind;
    d.n = 256;
    d.k = 256;
    d.groups = 1;
    d.device = QPLUG_DEVICE_CPU;
    if (kind == QPLUG_LAYER_FUSED_MOE) {
        d.num_experts = 8;
        d.top_k = 2;
        d.swiglu_limit = 10.0f;
    }
    return d;
}

static qplug_layer_storage stored(qplug_quant_scheme s, qplug_dtype w, qplug_dtype sc,
                                  const char *tensor)
{
    qplug_layer_storage st;
    memset(&st, 0, sizeof st);
    st.scheme = s;
    st.weight_dtype = w;
    st.scale_dtype = sc;
    st.present = true;
    strcpy(st.tensor, tensor);
    return st;
}

typedef struct result {
    qplug_status st;
    qplug_decision d;
    qplug_err err;
    qplug_layer_desc desc;
} result;

static result resolve(const qplug_registry *reg, const qplug_policy *pol,
                      const qplug_model_config *cfg, const char *name, const char *hf,
                      qplug_layer_kind kind, const qplug_layer_storage *st)
{
    result r;
    memset(&r, 0, sizeof r);
    r.desc = desc(name, kind);
    r.st = qplug_resolve(reg, pol, cfg, &r.desc, hf, st, &r.d, &r.err);
    return r;
}

static const char *pname(const result *r)
{
    return r->d.plugin ? r->d.plugin->name : "(none)";
}

static bool has(const char *s, const char *sub)
{
    return strstr(s, sub) != NULL;
}

/* ---- policy ---------------------------------------------------------- */

typedef struct rule_spec {
    const char *name, *match, *plugin;
    int line;
} rule_spec;

static void policy_with(qplug_policy *pol, const rule_spec *rules, size_t n)
{
    qplug_policy_init(pol);
    strcpy(pol->path, "etc/x.ini");
    pol->rules = calloc(n, sizeof *pol->rules);
    pol->n_rules = n;
    for (size_t i = 0; i < n; i++) {
        pol->rules[i].name = strdup(rules[i].name);
        pol->rules[i].match = strdup(rules[i].match);
        pol->rules[i].plugin = strdup(rules[i].plugin);
        pol->rules[i].line = rules[i].line;
    }
}

/* ---- the checks -------------------------------------------------------- */

static void test_no_quant_config(const qplug_registry *reg)
{
    qplug_model_config c;
    cfg_init(&c);
    qplug_layer_storage s = stored(QPLUG_QUANT_NONE, QPLUG_DT_BF16, QPLUG_DT_F32, "w");
    result r = resolve(reg, NULL, &c, "layers.0.attn.wq_a", NULL, QPLUG_LAYER_LINEAR, &s);
    CHECKF(r.st == QPLUG_OK, "%s", r.err.msg);
    CHECKF(!strcmp(pname(&r), "unquantized"), "%s", pname(&r));
    CHECKF(has(r.d.reason, "no quantization_config"), "%s", r.d.reason);
    CHECK(r.desc.quant == QPLUG_QUANT_NONE && r.desc.weight_dtype == QPLUG_DT_BF16);
}

static void test_expert_dtype_fp4(const qplug_registry *reg)
{
    qplug_model_config c;
    cfg_deepseek(&c, QPLUG_EXPERT_FP4);
    qplug_layer_storage s =
        stored(QPLUG_QUANT_MXFP4, QPLUG_DT_I8, QPLUG_DT_F8_E8M0, "layers.3.ffn.experts.0.w1.weight");
    result r = resolve(reg, NULL, &c, "layers.3.ffn.experts", NULL, QPLUG_LAYER_FUSED_MOE, &s);
    CHECKF(r.st == QPLUG_OK, "%s", r.err.msg);
    CHECKF(!strcmp(pname(&r), "mxfp4"), "%s", pname(&r));
    CHECK(r.d.quant == QPLUG_QUANT_MXFP4 && r.desc.quant == QPLUG_QUANT_MXFP4);
    CHECKF(has(r.d.reason, "config.json") && has(r.d.reason, "expert_dtype=fp4") &&
               has(r.d.reason, "MXFP4"),
           "%s", r.d.reason);

    /* Linears of the same checkpoint: FP8 block with E8M0 scales. */
    s = stored(QPLUG_QUANT_FP8_BLOCK, QPLUG_DT_F8_E4M3, QPLUG_DT_F8_E8M0, "layers.0.attn.wq_a.weight");
    r = resolve(reg, NULL, &c, "layers.0.attn.wq_a", NULL, QPLUG_LAYER_LINEAR, &s);
    CHECKF(r.st == QPLUG_OK && !strcmp(pname(&r), "fp8_block"), "%s %s", r.err.msg, pname(&r));
    CHECK(r.desc.scale_dtype == QPLUG_DT_F8_E8M0);

    /* Planned from the config alone (no tensors seen): the same answer. */
    r = resolve(reg, NULL, &c, "layers.3.ffn.experts", NULL, QPLUG_LAYER_FUSED_MOE, NULL);
    CHECKF(r.st == QPLUG_OK && !strcmp(pname(&r), "mxfp4"), "%s %s", r.err.msg, pname(&r));
    r = resolve(reg, NULL, &c, "layers.0.attn.wo_a", NULL, QPLUG_LAYER_GROUPED_LINEAR, NULL);
    CHECK(r.st == QPLUG_OK && r.desc.scale_dtype == QPLUG_DT_F8_E8M0);
}

static void test_expert_dtype_fp8(const qplug_registry *reg)
{
    qplug_model_config c;
    cfg_deepseek(&c, QPLUG_EXPERT_FP8);
    qplug_layer_storage s = stored(QPLUG_QUANT_FP8_BLOCK, QPLUG_DT_F8_E4M3, QPLUG_DT_F32,
                                   "layers.3.ffn.experts.0.w1.weight");
    result r = resolve(reg, NULL, &c, "layers.3.ffn.experts", NULL, QPLUG_LAYER_FUSED_MOE, &s);
    CHECKF(r.st == QPLUG_OK && !strcmp(pname(&r), "fp8_block"), "%s %s", r.err.msg, pname(&r));
    CHECK(r.d.quant == QPLUG_QUANT_FP8_BLOCK && r.d.scale_dtype == QPLUG_DT_F32);
    CHECKF(has(r.d.reason, "expert_dtype=fp8"), "%s", r.d.reason);
    /* Without tensors the linears of a Flash-Base config expect F32 scales. */
    r = resolve(reg, NULL, &c, "layers.0.attn.wq_a", NULL, QPLUG_LAYER_LINEAR, NULL);
    CHECK(r.st == QPLUG_OK && r.desc.scale_dtype == QPLUG_DT_F32);
}

static void test_moe_nvfp4(const qplug_registry *reg)
{
    qplug_model_config c;
    cfg_deepseek(&c, QPLUG_EXPERT_FP4);
    c.quant.moe_nvfp4 = true;
    qplug_layer_storage s = stored(QPLUG_QUANT_NVFP4, QPLUG_DT_U8, QPLUG_DT_F8_E4M3,
                                   "layers.3.ffn.experts.0.w1.weight");
    result r = resolve(reg, NULL, &c, "layers.3.ffn.experts", NULL, QPLUG_LAYER_FUSED_MOE, &s);
    CHECKF(r.st == QPLUG_OK && !strcmp(pname(&r), "nvfp4"), "%s %s", r.err.msg, pname(&r));
    CHECKF(has(r.d.reason, "moe_quant_algo=NVFP4"), "%s", r.d.reason);
}

static void test_ignored_layers(const qplug_registry *reg)
{
    qplug_model_config c;
    cfg_deepseek(&c, QPLUG_EXPERT_FP4);
    char *ex[] = {"layers.0.attn.wq_a"};
    c.quant.exclude = ex;
    c.quant.n_exclude = 1;
    qplug_layer_storage s = stored(QPLUG_QUANT_NONE, QPLUG_DT_BF16, QPLUG_DT_F32, "w");
    result r = resolve(reg, NULL, &c, "layers.0.attn.wq_a", NULL, QPLUG_LAYER_LINEAR, &s);
    CHECKF(r.st == QPLUG_OK && !strcmp(pname(&r), "unquantized"), "%s %s", r.err.msg, pname(&r));
    CHECKF(has(r.d.reason, "ignored_layers") && has(r.d.reason, "layers.0.attn.wq_a"), "%s",
           r.d.reason);
    /* The ignore entry must not spill over to layers.0.attn.wq_a's neighbours. */
    s = stored(QPLUG_QUANT_FP8_BLOCK, QPLUG_DT_F8_E4M3, QPLUG_DT_F8_E8M0, "w");
    r = resolve(reg, NULL, &c, "layers.0.attn.wq_b", NULL, QPLUG_LAYER_LINEAR, &s);
    CHECKF(r.st == QPLUG_OK && !strcmp(pname(&r), "fp8_block"), "%s %s", r.err.msg, pname(&r));
}

static void test_modelopt_exclude(const qplug_registry *reg)
{
    qplug_model_config c;
    cfg_modelopt(&c, QPLUG_MO_NVFP4);
    char *ex[] = {"lm_head", "*.self_attn.o_a_proj", "model.layers.5.mlp*"};
    c.quant.exclude = ex;
    c.quant.n_exclude = 3;
    qplug_layer_storage nv = stored(QPLUG_QUANT_NVFP4, QPLUG_DT_U8, QPLUG_DT_F8_E4M3, "w");
    qplug_layer_storage bf = stored(QPLUG_QUANT_NONE, QPLUG_DT_BF16, QPLUG_DT_F32, "w");

    result r = resolve(reg, NULL, &c, "layers.0.attn.wq_a", "model.layers.0.self_attn.q_a_proj",
                       QPLUG_LAYER_LINEAR, &nv);
    CHECKF(r.st == QPLUG_OK && !strcmp(pname(&r), "nvfp4"), "%s %s", r.err.msg, pname(&r));
    CHECKF(has(r.d.reason, "hf_quant_config.json") && has(r.d.reason, "NVFP4"), "%s", r.d.reason);

    /* fnmatch wildcard */
    r = resolve(reg, NULL, &c, "layers.0.attn.wo_a", "model.layers.0.self_attn.o_a_proj",
                QPLUG_LAYER_GROUPED_LINEAR, &bf);
    CHECKF(r.st == QPLUG_OK && !strcmp(pname(&r), "unquantized"), "%s %s", r.err.msg, pname(&r));
    CHECKF(has(r.d.reason, "excluded by '*.self_attn.o_a_proj'"), "%s", r.d.reason);

    /* trailing "name*" covers name.* */
    r = resolve(reg, NULL, &c, "layers.5.ffn.experts", "model.layers.5.mlp.experts",
                QPLUG_LAYER_FUSED_MOE, &bf);
    CHECKF(r.st == QPLUG_OK && !strcmp(pname(&r), "unquantized"), "%s %s", r.err.msg, pname(&r));
    CHECKF(has(r.d.reason, "model.layers.5.mlp*"), "%s", r.d.reason);
    /* ... but not a different layer number */
    r = resolve(reg, NULL, &c, "layers.50.ffn.experts", "model.layers.50.mlp.experts",
                QPLUG_LAYER_FUSED_MOE, &nv);
    CHECKF(r.st == QPLUG_OK && !strcmp(pname(&r), "nvfp4"), "%s %s", r.err.msg, pname(&r));
}

static void test_bf16_left_behind(const qplug_registry *reg)
{
    qplug_model_config c;
    cfg_modelopt(&c, QPLUG_MO_NVFP4);
    qplug_layer_storage bf = stored(QPLUG_QUANT_NONE, QPLUG_DT_BF16, QPLUG_DT_F32,
                                    "model.layers.2.self_attn.o_a_proj.weight");
    result r = resolve(reg, NULL, &c, "layers.2.attn.wo_a", "model.layers.2.self_attn.o_a_proj",
                       QPLUG_LAYER_GROUPED_LINEAR, &bf);
    CHECKF(r.st == QPLUG_OK && !strcmp(pname(&r), "unquantized"), "%s %s", r.err.msg, pname(&r));
    CHECK(r.d.quant == QPLUG_QUANT_NONE && r.desc.quant == QPLUG_QUANT_NONE);
    CHECKF(has(r.d.reason, "checkpoint stores BF16"), "%s", r.d.reason);
}

static void test_disagreement(const qplug_registry *reg)
{
    qplug_model_config c;
    cfg_deepseek(&c, QPLUG_EXPERT_FP4);
    qplug_layer_storage s =
        stored(QPLUG_QUANT_MXFP4, QPLUG_DT_I8, QPLUG_DT_F8_E8M0, "layers.0.attn.wq_a.weight");
    result r = resolve(reg, NULL, &c, "layers.0.attn.wq_a", NULL, QPLUG_LAYER_LINEAR, &s);
    CHECK(r.st == QPLUG_ERR_FORMAT);
    CHECKF(has(r.err.msg, "layers.0.attn.wq_a.weight") && has(r.err.msg, "mxfp4"), "%s",
           r.err.msg);
}

/* A fused compressor as the inventory describes it: shards wkv, wgate. */
static void make_sharded(qplug_layer_desc *d)
{
    d->num_shards = 2;
    d->shard_names[0] = "wkv";
    d->shard_names[1] = "wgate";
    d->shard_n[0] = d->n / 2;
    d->shard_n[1] = d->n / 2;
}

static void test_compressor_follows_storage(const qplug_registry *reg)
{
    /* The FP8 config would say FP8 block for a linear; the fused
     * compressors (main and indexer) follow what the tensors hold. */
    static const char *const names[] = {"layers.1.attn.compressor",
                                        "layers.1.attn.indexer.compressor"};
    qplug_model_config c;
    cfg_deepseek(&c, QPLUG_EXPERT_FP4);
    for (int i = 0; i < 2; i++) {
        qplug_layer_storage s =
            stored(QPLUG_QUANT_NONE, QPLUG_DT_BF16, QPLUG_DT_F32, "x.wkv.weight");
        result r;
        memset(&r, 0, sizeof r);
        r.desc = desc(names[i], QPLUG_LAYER_LINEAR);
        make_sharded(&r.desc);
        r.st = qplug_resolve(reg, NULL, &c, &r.desc, NULL, &s, &r.d, &r.err);
        CHECKF(r.st == QPLUG_OK && !strcmp(pname(&r), "unquantized"), "%s: %s %s", names[i],
               r.err.msg, pname(&r));
        CHECKF(has(r.d.reason, "checkpoint stores BF16") && r.desc.quant == QPLUG_QUANT_NONE,
               "%s: %s", names[i], r.d.reason);
    }
}

/* Scores every unquantized layer 20, above the stub "unquantized" (10), but
 * claims ABI 1.0, which has no shards. */
static int score_old(const qplug_layer_desc *l)
{
    return l->quant == QPLUG_QUANT_NONE ? 20 : 0;
}

static const qplug_plugin p_old = {(1u << 16) | 0u, sizeof(qplug_plugin), "old_plain", "stub",
                                   1u, score_old, test_stub_create, test_stub_process, test_stub_apply,
                                   test_stub_destroy, NULL, NULL};

static result resolve_sharded(const qplug_registry *reg, const qplug_policy *pol, bool sharded)
{
    qplug_model_config c;
    cfg_init(&c);
    result r;
    memset(&r, 0, sizeof r);
    r.desc = desc("layers.1.attn.compressor", QPLUG_LAYER_LINEAR);
    if (sharded)
        make_sharded(&r.desc);
    r.st = qplug_resolve(reg, pol, &c, &r.desc, NULL, NULL, &r.d, &r.err);
    return r;
}

/* A plugin built against ABI 1.0 cannot know about shards: the resolver
 * scores it 0 for sharded layers whatever its score function says. */
static void test_sharded_needs_abi_1_1(void)
{
    qplug_registry *reg = NULL;
    qplug_err err = {0};
    CHECK(qplug_registry_create(&reg, &err) == QPLUG_OK);
    if (!reg)
        return;
    CHECKF(qplug_registry_add(reg, &p_old, "test", &err) == QPLUG_OK, "%s", err.msg);

    /* Alone: it takes the plain layer, and nobody takes the sharded one. */
    result r = resolve_sharded(reg, NULL, false);
    CHECKF(r.st == QPLUG_OK && !strcmp(pname(&r), "old_plain"), "%s %s", r.err.msg, pname(&r));
    r = resolve_sharded(reg, NULL, true);
    CHECK(r.st == QPLUG_ERR_RESOLVE && r.d.plugin == NULL);
    CHECKF(has(r.err.msg, "layers.1.attn.compressor") && has(r.err.msg, "sharded linear"), "%s",
           r.err.msg);

    /* Forcing it by policy is refused with file and line. */
    qplug_policy pol;
    const rule_spec rules[] = {{"old", "layers.*.attn.compressor", "old_plain", 7}};
    policy_with(&pol, rules, 1);
    r = resolve_sharded(reg, &pol, true);
    CHECK(r.st == QPLUG_ERR_POLICY);
    CHECKF(has(r.err.msg, ":7: rule old") && has(r.err.msg, "cannot handle") &&
               has(r.err.msg, "sharded linear"),
           "%s", r.err.msg);
    qplug_policy_free(&pol);

    /* Beside a 1.1 plugin: the 1.1 one wins the sharded layer although it
     * scores lower, the 1.0 one keeps the plain layer. */
    CHECKF(qplug_registry_add(reg, &p_unq, "test", &err) == QPLUG_OK, "%s", err.msg);
    r = resolve_sharded(reg, NULL, true);
    CHECKF(r.st == QPLUG_OK && !strcmp(pname(&r), "unquantized"), "%s %s", r.err.msg, pname(&r));
    r = resolve_sharded(reg, NULL, false);
    CHECKF(r.st == QPLUG_OK && !strcmp(pname(&r), "old_plain"), "%s %s", r.err.msg, pname(&r));
    qplug_registry_destroy(reg);
}

static void test_policy_first_match(const qplug_registry *reg)
{
    qplug_model_config c;
    cfg_deepseek(&c, QPLUG_EXPERT_FP4);
    qplug_policy pol;
    const rule_spec rules[] = {
        {"megamoe", "layers.*.ffn.experts", "w4a4_megamoe", 12},
        {"allmoe", "layers.*.ffn.*", "mxfp4", 16},
        {"keep1", "layers.1.*", "unquantized", 20},
    };
    policy_with(&pol, rules, 3);
    qplug_layer_storage mx = stored(QPLUG_QUANT_MXFP4, QPLUG_DT_I8, QPLUG_DT_F8_E8M0, "w");
    result r = resolve(reg, &pol, &c, "layers.3.ffn.experts", NULL, QPLUG_LAYER_FUSED_MOE, &mx);
    CHECKF(r.st == QPLUG_OK && !strcmp(pname(&r), "w4a4_megamoe"), "%s %s", r.err.msg, pname(&r));
    CHECKF(has(r.d.reason, "policy etc/x.ini:12 rule megamoe"), "%s", r.d.reason);
    qplug_policy_free(&pol);
}

static void test_policy_dot_anchored(const qplug_registry *reg)
{
    qplug_model_config c;
    cfg_init(&c);
    qplug_policy pol;
    /* Only fp8_block would take an FP8 layer, so a matching rule shows. */
    const rule_spec rules[] = {{"one", "layers.1.*", "zeta_fp8", 3}};
    policy_with(&pol, rules, 1);
    qplug_layer_storage s = stored(QPLUG_QUANT_NONE, QPLUG_DT_BF16, QPLUG_DT_F32, "w");
    c.quant.method = QPLUG_QM_MODELOPT;
    c.quant.algo = QPLUG_MO_FP8;
    strcpy(c.quant.source, "hf_quant_config.json");
    qplug_layer_storage f8 = stored(QPLUG_QUANT_FP8_TENSOR, QPLUG_DT_F8_E4M3, QPLUG_DT_F32, "w");
    result r = resolve(reg, &pol, &c, "layers.1.attn.wq_a", NULL, QPLUG_LAYER_LINEAR, &f8);
    CHECKF(r.st == QPLUG_OK && !strcmp(pname(&r), "zeta_fp8"), "%s %s", r.err.msg, pname(&r));
    /* layers.10 is not covered by layers.1.*: the best score (alpha, by name) wins. */
    r = resolve(reg, &pol, &c, "layers.10.attn.wq_a", NULL, QPLUG_LAYER_LINEAR, &f8);
    CHECKF(r.st == QPLUG_OK && !strcmp(pname(&r), "alpha_fp8"), "%s %s", r.err.msg, pname(&r));
    CHECKF(!has(r.d.reason, "policy"), "%s", r.d.reason);
    (void)s;
    qplug_policy_free(&pol);
}

static void test_policy_missing_plugin(const qplug_registry *reg)
{
    qplug_model_config c;
    cfg_init(&c);
    qplug_policy pol;
    const rule_spec rules[] = {{"bad", "layers.*.attn.wq_a", "no_such_plugin", 7}};
    policy_with(&pol, rules, 1);
    result r = resolve(reg, &pol, &c, "layers.0.attn.wq_a", NULL, QPLUG_LAYER_LINEAR, NULL);
    CHECK(r.st == QPLUG_ERR_POLICY);
    CHECKF(has(r.err.msg, "etc/x.ini:7") && has(r.err.msg, "rule bad") &&
               has(r.err.msg, "no_such_plugin"),
           "%s", r.err.msg);
    /* A layer the rule does not cover is unaffected. */
    r = resolve(reg, &pol, &c, "layers.0.attn.wq_b", NULL, QPLUG_LAYER_LINEAR, NULL);
    CHECK(r.st == QPLUG_OK);
    qplug_policy_free(&pol);
}

static void test_policy_score_zero(const qplug_registry *reg)
{
    qplug_model_config c;
    cfg_deepseek(&c, QPLUG_EXPERT_FP4);
    qplug_policy pol;
    const rule_spec rules[] = {{"wrong", "layers.0.attn.wq_a", "mxfp4", 9}};
    policy_with(&pol, rules, 1);
    qplug_layer_storage s = stored(QPLUG_QUANT_FP8_BLOCK, QPLUG_DT_F8_E4M3, QPLUG_DT_F8_E8M0, "w");
    result r = resolve(reg, &pol, &c, "layers.0.attn.wq_a", NULL, QPLUG_LAYER_LINEAR, &s);
    CHECK(r.st == QPLUG_ERR_POLICY);
    CHECKF(has(r.err.msg, "etc/x.ini:9") && has(r.err.msg, "rule wrong") &&
               has(r.err.msg, "layers.0.attn.wq_a"),
           "%s", r.err.msg);
    qplug_policy_free(&pol);
}

static void test_policy_unquantized(const qplug_registry *reg)
{
    qplug_model_config c;
    cfg_init(&c);
    qplug_policy pol;
    const rule_spec rules[] = {{"plain", "layers.*.attn", "unquantized", 4}};
    policy_with(&pol, rules, 1);
    result r = resolve(reg, &pol, &c, "layers.2.attn", NULL, QPLUG_LAYER_ATTENTION, NULL);
    CHECKF(r.st == QPLUG_OK && !strcmp(pname(&r), "unquantized"), "%s %s", r.err.msg, pname(&r));
    CHECKF(has(r.d.reason, "rule plain"), "%s", r.d.reason);
    qplug_policy_free(&pol);
}

static void test_no_plugin(const qplug_registry *reg)
{
    qplug_model_config c;
    cfg_modelopt(&c, QPLUG_MO_FP8_PER_CHANNEL_PER_TOKEN);
    result r = resolve(reg, NULL, &c, "layers.4.ffn.shared_experts.w2", NULL, QPLUG_LAYER_LINEAR,
                       NULL);
    CHECK(r.st == QPLUG_ERR_RESOLVE);
    CHECKF(has(r.err.msg, "layers.4.ffn.shared_experts.w2") && has(r.err.msg, "fp8_channel"), "%s",
           r.err.msg);
    CHECK(r.d.plugin == NULL);
}

static void test_tie_by_name(const qplug_registry *reg)
{
    qplug_model_config c;
    cfg_modelopt(&c, QPLUG_MO_FP8);
    result r = resolve(reg, NULL, &c, "layers.0.attn.wq_a", NULL, QPLUG_LAYER_LINEAR, NULL);
    CHECKF(r.st == QPLUG_OK && !strcmp(pname(&r), "alpha_fp8"), "%s %s", r.err.msg, pname(&r));
}

static void test_device(const qplug_registry *reg)
{
    /* The stubs run on the CPU only: a CUDA layer finds no plugin. */
    qplug_model_config c;
    cfg_init(&c);
    result r;
    memset(&r, 0, sizeof r);
    r.desc = desc("layers.0.attn.wq_a", QPLUG_LAYER_LINEAR);
    r.desc.device = QPLUG_DEVICE_CUDA;
    r.st = qplug_resolve(reg, NULL, &c, &r.desc, NULL, NULL, &r.d, &r.err);
    CHECK(r.st == QPLUG_ERR_RESOLVE);
    CHECKF(has(r.err.msg, "cuda"), "%s", r.err.msg);
}

int main(void)
{
    qplug_registry *reg = make_registry();
    if (!reg)
        return test_done();
    test_no_quant_config(reg);
    test_expert_dtype_fp4(reg);
    test_expert_dtype_fp8(reg);
    test_moe_nvfp4(reg);
    test_ignored_layers(reg);
    test_modelopt_exclude(reg);
    test_bf16_left_behind(reg);
    test_disagreement(reg);
    test_compressor_follows_storage(reg);
    test_sharded_needs_abi_1_1();
    test_policy_first_match(reg);
    test_policy_dot_anchored(reg);
    test_policy_missing_plugin(reg);
    test_policy_score_zero(reg);
    test_policy_unquantized(reg);
    test_no_plugin(reg);
    test_tie_by_name(reg);
    test_device(reg);
    qplug_registry_destroy(reg);
    return test_done();
}
