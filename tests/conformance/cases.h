/*
 * tests/conformance/cases.h - the conformance case table: one layer per
 * (kind, scheme) with its fixture and its error bounds.
 *
 * Dimensions must match tests/tools/gen_conformance_fixtures.py.
 *
 * Error bounds are relative L2 errors of y against an fp64 reference
 * computed from the fixture's independently dequantized weights and the
 * unquantized x, derived as follows.
 *
 *   Reference precision (exact weights, fp32 activations and math): the
 *   only error is fp32 rounding of K-long sums, relative ~ 2^-24 * sqrt(K)
 *   for K <= 256, i.e. ~1e-6; the bound is 1e-5 (2e-5 for MoE, whose two
 *   GEMMs and SwiGLU each round).
 *
 *   FP8 activations (E4M3, 3 mantissa bits): round to nearest gives a
 *   per-element relative error of at most 2^-4 and, for values spread
 *   over a binade, an RMS of at most 2^-4/sqrt(3) = 0.036. Errors of
 *   independent elements add in quadrature in a dot product of random
 *   data, so y's relative L2 error is about that RMS: bound 0.05. In the
 *   MoE both x and the SwiGLU output are quantized (two stages in
 *   quadrature, 0.036 * sqrt(2) = 0.051, SwiGLU slopes ~1): bound 0.08.
 *
 *   FP4 activations (E2M1, 1 mantissa bit): half a step is 2^-2 of the
 *   binade's lower end, an RMS of 2^-2/sqrt(3) = 0.144 relative to that
 *   end and ~0.1 relative to the value; elements far below the group
 *   maximum also fall into the coarse subnormal step (0.5 units), and the
 *   group scale's own rounding (E4M3 for NVFP4; the power of two of MXFP4
 *   leaves amax/scale anywhere in (3, 6]) adds to it. For Gaussian x that
 *   is ~0.1 (NVFP4) to ~0.12 (MXFP4): linear bound 0.2. The MoE's second
 *   stage quantizes the SwiGLU output h = silu(min(g, L)) * clamp(u), which
 *   is heavy-tailed (most elements are far below their group's maximum), so
 *   that stage costs ~0.15 (NVFP4) to ~0.2 (MXFP4); in quadrature with the
 *   first, 0.19 and 0.23, which an independent numpy/ml_dtypes simulation
 *   of the same quantization on these fixtures reproduces (0.185, 0.233).
 *   MoE bounds 0.35 (NVFP4) and 0.4 (MXFP4).
 *
 *   A single token (m = 1) measures the error on one output row only, a
 *   noisy estimate of the expected value: the driver doubles every
 *   quantized bound for m = 1.
 *
 *   FP8 KV cache: a round trip of E4M3 with one scale per 128 channels:
 *   per element <= 2^-4, RMS <= 0.036: bound 0.05. F32 KV cache: exact.
 */
#ifndef QPLUG_CONFORMANCE_CASES_H
#define QPLUG_CONFORMANCE_CASES_H

#include "qplug/plugin.h"

typedef struct conf_case {
    const char *name;
    const char *fixture;   /* file under the data dir, NULL: no weights */
    const char *prefix;    /* group prefix of the slots in the fixture */
    qplug_layer_kind kind;
    qplug_quant_scheme quant;
    qplug_dtype weight_dtype;
    qplug_dtype scale_dtype;
    int64_t n, k;
    int32_t groups, experts, top_k;
    float swiglu_limit;
    uint32_t flags;        /* QPLUG_LAYER_FP4_ACTIVATIONS: also sets the
                              [megamoe] fp4_activations option */
    double ref_bound;
    double native_bound;
    /* Sharded linear (ABI 1.1): 0, or the shards whose tensors the fixture
     * holds as "<prefix>.<shard>.<slot>"; the reference is the fused
     * weight "deq.<prefix>". */
    int32_t num_shards;
    const char *shard_names[QPLUG_MAX_SHARDS];
    int64_t shard_n[QPLUG_MAX_SHARDS];
} conf_case;

#define LIN(nm, fx, pf, q, wdt, sdt, n, k, nb)                                 \
    {nm, fx, pf, QPLUG_LAYER_LINEAR, q, wdt, sdt, n, k, 1, 0, 0, 0.0f, 0, 1e-5, nb, 0, {0}, {0}}
#define GRP(nm, fx, q, wdt, sdt, nb)                                           \
    {nm, fx, "grouped", QPLUG_LAYER_GROUPED_LINEAR, q, wdt, sdt, 64, 256, 2, 0, 0, 0.0f, 0, 1e-5, nb, \
     0, {0}, {0}}
#define MOE(nm, fx, q, wdt, sdt, fl, nb)                                       \
    {nm, fx, "moe", QPLUG_LAYER_FUSED_MOE, q, wdt, sdt, 32, 128, 1, 4, 2, 1.5f, fl, 2e-5, nb, \
     0, {0}, {0}}
#define KV(nm, q, nb)                                                          \
    {nm, NULL, NULL, QPLUG_LAYER_ATTENTION, q, QPLUG_DT_F32, QPLUG_DT_F32, 320, 320, 1, 0, 0, 0.0f, 0, nb, nb, \
     0, {0}, {0}}

static const conf_case CONF_CASES[] = {
    /* Unquantized: native computes exactly what reference does. */
    LIN("linear.none-bf16", "none-bf16", "linear", QPLUG_QUANT_NONE, QPLUG_DT_BF16, QPLUG_DT_F32,
        160, 256, 1e-5),
    GRP("grouped.none-bf16", "none-bf16", QPLUG_QUANT_NONE, QPLUG_DT_BF16, QPLUG_DT_F32, 1e-5),
    MOE("moe.none-bf16", "none-bf16", QPLUG_QUANT_NONE, QPLUG_DT_BF16, QPLUG_DT_F32, 0, 2e-5),
    KV("attention.none", QPLUG_QUANT_NONE, 1e-12),
    /* Sharded linear (the compressor's kv + gate): shards of 64 and 96 rows
     * fused into [160, 128]; unequal sizes catch a wrong order or offset. */
    {"linear.none-sharded", "sharded-bf16", "comp", QPLUG_LAYER_LINEAR, QPLUG_QUANT_NONE,
     QPLUG_DT_BF16, QPLUG_DT_F32, 160, 128, 1, 0, 0, 0.0f, 0, 1e-5, 1e-5,
     2, {"wkv", "wgate"}, {64, 96}},
    /* FP8 block: F32 scales (Flash-Base) and E8M0 (Flash/Pro). */
    LIN("linear.fp8_block-f32", "fp8_block-f32", "linear", QPLUG_QUANT_FP8_BLOCK,
        QPLUG_DT_F8_E4M3, QPLUG_DT_F32, 160, 256, 0.05),
    MOE("moe.fp8_block-f32", "fp8_block-f32", QPLUG_QUANT_FP8_BLOCK, QPLUG_DT_F8_E4M3,
        QPLUG_DT_F32, 0, 0.08),
    LIN("linear.fp8_block-e8m0", "fp8_block-e8m0", "linear", QPLUG_QUANT_FP8_BLOCK,
        QPLUG_DT_F8_E4M3, QPLUG_DT_F8_E8M0, 160, 256, 0.05),
    GRP("grouped.fp8_block-e8m0", "fp8_block-e8m0", QPLUG_QUANT_FP8_BLOCK, QPLUG_DT_F8_E4M3,
        QPLUG_DT_F8_E8M0, 0.05),
    KV("attention.fp8", QPLUG_QUANT_FP8_BLOCK, 0.05),
    /* ModelOpt FP8 per-tensor and per-channel linears. */
    LIN("linear.fp8_tensor", "fp8_modelopt", "fp8t", QPLUG_QUANT_FP8_TENSOR, QPLUG_DT_F8_E4M3,
        QPLUG_DT_F32, 96, 128, 0.05),
    LIN("linear.fp8_channel", "fp8_modelopt", "fp8c", QPLUG_QUANT_FP8_CHANNEL, QPLUG_DT_F8_E4M3,
        QPLUG_DT_F32, 96, 128, 0.05),
    /* MXFP4: W4A8 natively; the -fp4act case allows FP4 activations. */
    LIN("linear.mxfp4", "mxfp4", "linear", QPLUG_QUANT_MXFP4, QPLUG_DT_U8, QPLUG_DT_F8_E8M0, 160,
        256, 0.05),
    MOE("moe.mxfp4", "mxfp4", QPLUG_QUANT_MXFP4, QPLUG_DT_I8, QPLUG_DT_F8_E8M0, 0, 0.08),
    MOE("moe.mxfp4-fp4act", "mxfp4", QPLUG_QUANT_MXFP4, QPLUG_DT_I8, QPLUG_DT_F8_E8M0,
        QPLUG_LAYER_FP4_ACTIVATIONS, 0.4),
    /* NVFP4: FP4 activations natively. */
    LIN("linear.nvfp4", "nvfp4", "linear", QPLUG_QUANT_NVFP4, QPLUG_DT_U8, QPLUG_DT_F8_E4M3, 160,
        256, 0.2),
    GRP("grouped.nvfp4", "nvfp4", QPLUG_QUANT_NVFP4, QPLUG_DT_U8, QPLUG_DT_F8_E4M3, 0.2),
    MOE("moe.nvfp4", "nvfp4", QPLUG_QUANT_NVFP4, QPLUG_DT_U8, QPLUG_DT_F8_E4M3, 0, 0.35),
    MOE("moe.nvfp4-fp4act", "nvfp4", QPLUG_QUANT_NVFP4, QPLUG_DT_U8, QPLUG_DT_F8_E4M3,
        QPLUG_LAYER_FP4_ACTIVATIONS, 0.35),
};

#define CONF_NCASES (sizeof CONF_CASES / sizeof CONF_CASES[0])

#endif
