/* Dot-anchored policy globs and ModelOpt exclude semantics; every expected
 * answer follows from the rules in policy.h and formats.md by hand. */
#include <string.h>

#include "qplug/policy.h"
#include "testutil.h"

#define YES(p, n) CHECKF(qplug_glob_match(p, n), "\"%s\" should match \"%s\"", p, n)
#define NO(p, n) CHECKF(!qplug_glob_match(p, n), "\"%s\" should not match \"%s\"", p, n)

static void test_glob(void)
{
    /* Never a bare substring: layers.1 is not a prefix component of layers.10. */
    YES("layers.1.*", "layers.1.attn.wq_a");
    NO("layers.1.*", "layers.10.attn.wq_a");
    YES("layers.1", "layers.1.attn.wq_a");
    NO("layers.1", "layers.10.attn.wq_a");
    NO("layers.1", "layers.10");
    NO("attn.wq_a", "layers.1.attn.wq_a");
    NO("layers.1.attn.wq", "layers.1.attn.wq_a");
    YES("layers.1.attn.wq_a", "layers.1.attn.wq_a");
    /* '*' stays within one component. */
    YES("layers.*.ffn.experts", "layers.3.ffn.experts");
    YES("layers.*.ffn.experts", "layers.42.ffn.experts");
    NO("layers.*.ffn.experts", "layers.3.attn.wq_a");
    NO("layers.*.experts", "layers.3.ffn.experts");
    YES("layers.*", "layers.0.attn.wq_a");
    YES("layers.1*", "layers.10.attn.wq_a");
    YES("layers.1*", "layers.1.attn");
    YES("*.attn.wq_a", "0.attn.wq_a");
    NO("*.wq_a", "layers.1.attn.wq_a");
    YES("layers.*.attn.w?_a", "layers.2.attn.wq_a");
    NO("layers.*.attn.w?_a", "layers.2.attn.w.._a");
    /* "**" crosses components. */
    YES("**.wq_a", "layers.1.attn.wq_a");
    YES("layers.**.w2", "layers.7.ffn.shared_experts.w2");
    NO("layers.**.w2", "layers.7.ffn.shared_experts.w1");
    YES("**", "head");
    YES("mtp.**", "mtp.0.e_proj");
    NO("mtp.**", "mtpx.0.e_proj");
    /* Degenerate input. */
    NO("", "layers.1");
    NO("layers.1", "");
    CHECK(!qplug_glob_match(NULL, "x"));
    /* Many stars stay fast (the matcher is polynomial). */
    YES("*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab");
    NO("**a**a**a**a**a**a**a**a**a**a**a**a**a**a**a**a**a**a**a**a**a**b",
       "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
}

static void test_modelopt(void)
{
    char *pats[] = {"lm_head", "model.layers.*.self_attn.compressor*", "model.layers.3.mlp.gate",
                    "mtp*", "*.kv_proj"};
    size_t n = sizeof pats / sizeof pats[0];
    /* Exact. */
    CHECK(qplug_modelopt_excluded(pats, n, "lm_head"));
    /* fnmatch: '*' crosses dots. */
    CHECK(qplug_modelopt_excluded(pats, n, "model.layers.7.self_attn.compressor.indexer.q_b_proj"));
    CHECK(qplug_modelopt_excluded(pats, n, "model.layers.0.self_attn.kv_proj"));
    /* The trailing "name*" covers "name" and "name.*". */
    CHECK(qplug_modelopt_excluded(pats, n, "model.layers.7.self_attn.compressor"));
    CHECK(qplug_modelopt_excluded(pats, n, "mtp"));
    CHECK(qplug_modelopt_excluded(pats, n, "mtp.0.e_proj"));
    /* The legacy substring rule, which ModelOpt's files rely on: the pattern
     * anywhere inside the name. It does match layers.30 for "layers.3" style
     * patterns; that is ModelOpt's meaning, not the policy glob's. */
    CHECK(qplug_modelopt_excluded(pats, n, "model.layers.3.mlp.gate"));
    CHECK(qplug_modelopt_excluded(pats, n, "language_model.model.layers.3.mlp.gate"));
    CHECK(qplug_modelopt_excluded(pats, n, "model.layers.3.mlp.gate_proj"));
    /* Not covered. */
    CHECK(!qplug_modelopt_excluded(pats, n, "model.layers.3.mlp.experts.0.up_proj"));
    CHECK(!qplug_modelopt_excluded(pats, n, "model.layers.0.self_attn.q_a_proj"));
    CHECK(!qplug_modelopt_excluded(pats, n, "model.embed_tokens"));
    CHECK(!qplug_modelopt_excluded(pats, 0, "lm_head"));
    CHECK(!qplug_modelopt_excluded(NULL, 3, "lm_head"));
}

int main(void)
{
    test_glob();
    test_modelopt();
    return test_done();
}
