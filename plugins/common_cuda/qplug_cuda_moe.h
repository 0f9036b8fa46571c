/*
 * qplug_cuda_moe.h - fused MoE on the GPU (Hopper, sm_90a) and the w4a4
 * pre-dispatch FP4 packing, with a C API for the plugins' CUDA apply.
 *
 * Same conventions as qplug_cuda.h: every function is asynchronous on the
 * given stream (cudaStream_t as void *), never synchronises the host and
 * never allocates, so a whole MoE layer can be captured into a CUDA graph.
 * Launch shapes depend only on the host arguments (m, top_k, E, D, I), never
 * on the routing, which stays on the device.
 *
 * Semantics (docs/deepseek_v4.md, MoE), for each token t:
 *   y[t] = sum_j w[t,j] * w2[e] . (silu(min(g, L)) * clamp(u, -L, L))
 *   with g = w1[e] . x[t], u = w3[e] . x[t], e = ids[t,j]; ids of -1 (and
 *   ids outside [0, E), which the device cannot report) are skipped; L <= 0
 *   disables the clamp. The k terms of a token are summed in slot order j,
 *   so the output is bitwise deterministic.
 *
 * Numerics: x is quantized to E4M3 per token per 128 (qplug_cuda__act_quant_fp8
 * rules), or, on the w4a4 path, comes FP4-packed. The products run on the
 * FP8 tensor cores (mma.sync m16n8k32) with FP4 weights decoded exactly to
 * E4M3 in shared memory (W4A8); every 32 (16 for NVFP4 groups) products are
 * summed in fp32 and scaled by activation scale * weight scale. h is kept in
 * fp32, then quantized to E4M3 per row per 128 with the same scale rule as x
 * before the down GEMM; the down GEMM's output is fp32; y is BF16.
 *
 * The mma.sync kernel is a plain tiled one (64 x 128 tiles, 16 x 128 when
 * the experts average 16 rows or fewer; k steps of 64 through shared memory,
 * the next step's global loads in flight during the current step's mmas).
 * When qplug_cuda__moe_prepare accepted the weights (FP8, MXFP4, NVFP4),
 * both GEMMs run on wgmma instead, for any token count (moe_wgmma.cuh): 128
 * weight rows x up to 128 routed rows per block (wgmma N of 16..128 fitted
 * to the tile), 128-byte swizzled tiles, a cp.async pipeline (4 stages on
 * v3, 3 for NVFP4, 5 or 6 on v4; v3 and v4 below), MXFP4 decoded to E4M3
 * in shared memory with each row's four E8M0 exponents of a 128-block
 * folded into the E4M3 values (exact, checked at prepare), and
 * every 128 products summed by the tensor cores and then scaled by
 * activation scale * weight scale in fp32 (per 128 instead of per 32: the
 * same values, summed in a different order; the tensor cores' FP8 sums are
 * less precise than fp32, so the output error against an fp64 reference
 * grows from ~1.7e-3 to 2e-3..7e-3 on random data, H200). NVFP4 weights
 * take the F16 tensor cores instead (m64nNk16): each E2M1 value times its
 * E4M3 group scale times 2^-14 is exact in F16 (at most 6 significant
 * bits, every value a multiple of 2^-24, subnormal scales included), the
 * E4M3 tokens are converted to F16 (exact), and every 128 products are
 * scaled by activation scale * global * 2^14 (error ~1.6e-3, like the
 * mma.sync kernels; v3 kernel only, and not for W4A4 activations). Two wgmma
 * kernels share that tiling and give bit-identical results: v3
 * (moe_wgmma.cuh, two warpgroups in lockstep) and v4 (moe_ws.cuh, two
 * producer warpgroups copying and decoding into mbarrier-guarded slots for
 * two consumer warpgroups that take turns on the tensor cores); the
 * forward picks one per weight format and token count from the host
 * shapes (moe.cu, qplug_cuda__moe_use_v4). The W4A4 MXFP4 path then first
 * unpacks the FP4 activations to E4M3 with the same fold; if some token's
 * 128-block cannot be folded exactly (an exponent more than 11 below the
 * block's maximum with non-zero codes), a device flag sends that layer's
 * gate/up GEMM to the mma.sync kernel (both are launched, one exits at
 * once), so the results stay exact without a host sync.
 */
#ifndef QPLUG_CUDA_MOE_H
#define QPLUG_CUDA_MOE_H

#include <stddef.h>
#include <stdint.h>

#include "qplug/status.h"
#include "qplug_cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- routing */

/*
 * Router of one MoE layer for m tokens:
 *   logits[e] = x[t] . gate[e] (fp32 accumulation), s = sqrt(softplus(logits))
 *   (softplus(v) = v for v > 20, as torch), experts = top_k of s + bias (bias
 *   only for selection; NULL = none; ties go to the lower index), or, when
 *   tid2eid is not NULL (hash layers), experts = tid2eid[token_ids[t]];
 *   weights = s[experts] / sum(s[experts]) * routed_scaling.
 * x BF16 [m, D], gate BF16 [E, D], bias F32 [E] or NULL, tid2eid I32
 * [vocab, top_k] with token_ids I32 [m] (both NULL outside hash layers).
 * Writes topk_ids I32 [m, top_k] and topk_weights F32 [m, top_k]. A token id
 * outside [0, vocab) or a tid2eid entry outside [0, E) gives id -1 with
 * weight 0 in that slot. 1 <= top_k <= min(E, 16), E <= 1024, D % 8 == 0.
 */
qplug_status qplug_cuda__moe_route(const void *x, const void *gate, const float *bias,
                                   const int32_t *tid2eid, const int32_t *token_ids,
                                   int64_t vocab, int64_t m, int64_t D, int32_t E, int32_t top_k,
                                   float routed_scaling, int32_t *topk_ids, float *topk_weights,
                                   void *stream, qplug_cuda__err *err);

/* --------------------------------------------------------------- experts */

typedef enum qplug_cuda__moe_wfmt {
    QPLUG_CUDA_MOE_FP8 = 0,   /* E4M3 [n, k], F32 scale [n/128][k/128] */
    QPLUG_CUDA_MOE_MXFP4 = 1, /* packed E2M1 [n, k/2], E8M0 scale [n, k/32] */
    QPLUG_CUDA_MOE_NVFP4 = 2  /* packed E2M1 [n, k/2], E4M3 scale [n, k/16], F32 global */
} qplug_cuda__moe_wfmt;

/*
 * The routed experts of one layer, stacked per expert (expert e's matrix
 * starts at e times the per-expert size; FP4 weights in the original, not
 * repacked, order). w1, w3: [E][I, D]; w2: [E][D, I], each in the layout of
 * `fmt` above (FP8 E8M0 block scales must be converted to F32 first, e.g.
 * with qplug_cuda__e8m0_to_f32). g1, g3, g2: NVFP4 only, the per-expert
 * weight_scale_2 as F32 [E] on the device (NULL otherwise).
 * D % 128 == 0, I % 128 == 0, D / 128 and I / 128 at most 65535,
 * 1 <= E <= 1024; w1, w3, w2 16-byte aligned, the scales and globals 4-byte
 * aligned (checked by the forwards; prepare checks the scales).
 */
typedef struct qplug_cuda__moe_weights {
    qplug_cuda__moe_wfmt fmt;
    int32_t num_experts;
    int64_t hidden;       /* D */
    int64_t intermediate; /* I */
    const void *w1, *w3, *w2;
    const void *s1, *s3, *s2;
    const float *g1, *g3, *g2;
    float swiglu_limit; /* L; <= 0 disables the clamp */
    /* Set to 1 by qplug_cuda__moe_prepare when the wgmma kernels take
     * these experts (0, e.g. from a zeroed struct: the mma.sync kernels).
     * 1 lets the forward pick between the v3 kernel (moe_wgmma.cuh) and
     * the warp-specialized v4 kernel (moe_ws.cuh) from the host shapes;
     * tests and benches may replace a 1 that prepare set with 2 (v3), 3
     * (v4) or 4 (v6, moe_v6.cuh: TMA producer warp, MXFP4 decoded into the
     * wgmma A registers; FP8 and MXFP4 only, the default for them); the
     * forward does not check that prepare ran. v3 and v4 give
     * bit-identical results; v6 the same values summed in another order. */
    int32_t wgmma_ready;
} qplug_cuda__moe_weights;

/*
 * Prepare-time check of an expert set for the Hopper wgmma kernels (used
 * for every token count once accepted): FP8 experts always qualify; MXFP4
 * experts when, for every weight row and 128-block of k, each of its four
 * E8M0 exponents is within 11 of their maximum and none is 255 (then
 * folding the E8M0 scales into E4M3 values with one power-of-two scale per
 * 128-block is exact); NVFP4 experts always (on the F16 wgmma; an E4M3 x
 * E2M1 product does not fit E4M3 but always fits F16), unless built with
 * QPLUG_MOE_WG_NV=0.
 * Sets w->wgmma_ready (0 also on a device whose shared memory is too small
 * for the kernels, with QPLUG_OK) and the kernels' shared-memory limits on
 * the current device. For MXFP4 it reads the scales on the device,
 * allocates 4 bytes of device memory and synchronises the stream, so it is
 * for prepare time, not for inside a captured layer. Shapes outside those
 * of qplug_cuda__moe_weights, NULL or misaligned scales give an error.
 */
qplug_status qplug_cuda__moe_prepare(qplug_cuda__moe_weights *w, void *stream,
                                     qplug_cuda__err *err);

/* Device workspace bytes for up to m tokens with top_k slots (either path);
 * 0 for shapes beyond the forward's limits (m > 2^31 - 1, top_k > 16,
 * E > 1024, D or I above 65535 * 128). */
size_t qplug_cuda__moe_workspace_bytes(int64_t m, int32_t top_k, int32_t num_experts,
                                       int64_t hidden, int64_t intermediate);

/*
 * The device word of `workspace` (laid out for these shapes) that the
 * W4A4 MXFP4 path sets to 1 when some token's 128-block cannot be folded
 * exactly and its gate/up GEMM ran on the mma.sync fallback (0 otherwise;
 * cleared by every forward). For tests; NULL for shapes the workspace
 * cannot hold.
 */
int32_t *qplug_cuda__moe_fallback_flag(void *workspace, int64_t m, int32_t top_k,
                                       int32_t num_experts, int64_t hidden, int64_t intermediate);

/*
 * Fused MoE (W8A8 for FP8 experts, W4A8 for FP4 experts): x BF16 [m, D],
 * topk_ids I32 [m, top_k], topk_weights F32 [m, top_k] -> y BF16 [m, D]
 * (overwritten; all of it, also for tokens with no expert). act_fmt picks the
 * activation scale rule of x and h. workspace of at least
 * qplug_cuda__moe_workspace_bytes(m, ...) bytes, 256-byte aligned.
 * m >= 0 (m = 0 launches nothing), 1 <= top_k <= 16.
 */
qplug_status qplug_cuda__moe_forward(const qplug_cuda__moe_weights *w, const void *x, int64_t m,
                                     const int32_t *topk_ids, const float *topk_weights,
                                     int32_t top_k, qplug_cuda__scale_fmt act_fmt, void *y,
                                     void *workspace, size_t workspace_bytes, void *stream,
                                     qplug_cuda__err *err);

/* ------------------------------------------------------------ w4a4 packing */

/*
 * The pre-dispatch buffer of m tokens (the layout of
 * plugins/w4a4_megamoe/w4a4_megamoe_internal.h, what a dispatch would send):
 *   packed activations  m * (D/2 + D/group) bytes: per token the E2M1 codes
 *                       (element 2j in the low nibble of byte j), then one
 *                       scale byte per group (E8M0 for group 32, E4M3 for 16)
 *   top-k ids           m * top_k I32
 *   top-k weights       m * top_k F32
 * Returns its size, or 0 when D is not a positive multiple of group (16/32)
 * or top_k < 1.
 */
size_t qplug_cuda__w4a4_dispatch_bytes(int64_t m, int64_t hidden, int32_t top_k, int group);

/*
 * Packs x BF16 [m, D] and the routing into `buf` (buf_bytes must equal
 * qplug_cuda__w4a4_dispatch_bytes; checked; D % 128 == 0, buf 4-byte
 * aligned). Group 32: the smallest
 * power-of-two scale p with amax / p <= 6 (E8M0, exponent clamped to
 * [-127, 127]). Group 16: block scale e4m3((amax / 6) / gscale) and element
 * step e4m3(scale) * gscale, gscale being the one global activation scale
 * (host value). Codes: e2m1(x / step), round to nearest even, saturating.
 */
qplug_status qplug_cuda__w4a4_pack(const void *x, int64_t m, int64_t hidden, int group,
                                   float gscale, const int32_t *topk_ids,
                                   const float *topk_weights, int32_t top_k, void *buf,
                                   size_t buf_bytes, void *stream, qplug_cuda__err *err);

/*
 * Fused MoE on the packed buffer (W4A4 gate/up GEMMs: FP4 activations and FP4
 * weights both decoded exactly to E4M3; the down GEMM as in
 * qplug_cuda__moe_forward, W4A8 on h quantized per 128 with act_fmt). w->fmt
 * must be MXFP4 (group 32) or NVFP4 (group 16); gscale as given to the pack.
 * The ids and weights are read from the buffer. y BF16 [m, D].
 */
qplug_status qplug_cuda__moe_forward_w4a4(const qplug_cuda__moe_weights *w, const void *buf,
                                          size_t buf_bytes, int64_t m, int32_t top_k, int group,
                                          float gscale, qplug_cuda__scale_fmt act_fmt, void *y,
                                          void *workspace, size_t workspace_bytes, void *stream,
                                          qplug_cuda__err *err);

#ifdef __cplusplus
}
#endif
#endif
