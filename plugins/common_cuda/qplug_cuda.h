/*
 * qplug_cuda.h - CUDA kernels shared by the plugins (Hopper, sm_90a), with a
 * C API so that the plugins' C files and the bench can call them.
 *
 * Every function runs asynchronously on the given stream (a cudaStream_t
 * passed as void *, NULL for the legacy default stream), never synchronises
 * the host, and so may be captured into a CUDA graph. Pointers are device
 * pointers unless a comment says otherwise. Each function returns QPLUG_OK or
 * a failure status and, when `err` is not NULL, a one-line message naming the
 * function and the offending argument.
 *
 * Layouts (see docs/formats.md):
 *   activations x     BF16 [m, k] row-major
 *   quantized act. xq E4M3 [m, k] row-major, scale float [k/128][m]
 *                     (m contiguous: cuBLASLt's VEC128_32F B-scale layout)
 *   FP8 block weight  E4M3 [n, k], scale float [n/128][k/128]
 *   MXFP4 weight      packed E2M1 [n, k/2], scale E8M0 [n, k/32]
 *   NVFP4 weight      packed E2M1 [n, k/2], scale E4M3 [n, k/16], global F32
 *   output y          BF16 [m, n] row-major
 */
#ifndef QPLUG_CUDA_H
#define QPLUG_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "qplug/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qplug_cuda__err {
    char msg[256];
} qplug_cuda__err;

/* How the per-128 activation scale is chosen: amax = max(|x|, 1e-4);
 * F32: s = amax / 448; UE8M0: s = 2^ceil(log2(amax / 448)). */
typedef enum qplug_cuda__scale_fmt {
    QPLUG_CUDA_SCALE_F32 = 0,
    QPLUG_CUDA_SCALE_UE8M0 = 1
} qplug_cuda__scale_fmt;

/* The largest m the decode (GEMV) kernels accept. */
#define QPLUG_CUDA_GEMV_MAX_M 16

/* Grouped layers with QPLUG_CUDA_GEMV_MAX_M < m <= this run the one-launch
 * wgmma GEMM of section (f) in the plugins' prefill path (faster than one
 * cuBLASLt call per group there, bench/results/h200_wgmma_v*.md); the bench
 * labels its rows by the same rule. */
#define QPLUG_CUDA_WGMMA_GROUPED_MAX_M 512

/* ---------------------------------------------------------------- (a) */

/* BF16 x [m, k] -> E4M3 xq [m, k] and scale float [k/128][m]; k % 128 == 0.
 * q = e4m3(x / s), round to nearest even, saturating at +-448. */
qplug_status qplug_cuda__act_quant_fp8(const void *x, int64_t m, int64_t k,
                                       qplug_cuda__scale_fmt fmt, void *xq, float *scale,
                                       void *stream, qplug_cuda__err *err);

/* The same with a row stride: x [m, k] with row stride ldx elements
 * (ldx >= k, ldx % 8 == 0, x 16-byte aligned, xq 8-byte aligned); xq is
 * contiguous [m, k] and the scales [k/128][m] as above. A grouped layer
 * quantizes all its groups in one call (k = groups * group_k): group g's
 * scales are then the contiguous block at scale + g * (group_k/128) * m. */
qplug_status qplug_cuda__act_quant_fp8_ld(const void *x, int64_t ldx, int64_t m, int64_t k,
                                          qplug_cuda__scale_fmt fmt, void *xq, float *scale,
                                          void *stream, qplug_cuda__err *err);

/* ---------------------------------------------------------------- (b) */

/* E8M0 bytes -> F32 (2^(b-127); 255 gives NaN), exact. For weight scales at
 * prepare time. */
qplug_status qplug_cuda__e8m0_to_f32(const uint8_t *src, int64_t count, float *dst, void *stream,
                                     qplug_cuda__err *err);

/* A planned y = xq . w^T through cublasLtMatmul with BLK128x128_32F weight
 * scales and VEC128_32F activation scales, BF16 output. A plan fixes m, n, k
 * and the algorithm. A run stores the scale pointers in the plan's matmul
 * descriptor, so a plan serves one thread at a time. */
typedef struct qplug_cuda__fp8_gemm qplug_cuda__fp8_gemm;

/* `lt` is a cublasLtHandle_t. n % 128 == 0 and k % 512 == 0 (cuBLASLt gave
 * wrong results for k/128 not a multiple of 4; every DeepSeek V4 shape
 * qualifies). Fails with
 * QPLUG_ERR_UNSUPPORTED when cuBLASLt offers no algorithm for the shape. */
qplug_status qplug_cuda__fp8_gemm_create(void *lt, int64_t m, int64_t n, int64_t k,
                                         size_t workspace_bytes, qplug_cuda__fp8_gemm **out,
                                         qplug_cuda__err *err);
/* A plan with strides and an optional strided batch (a grouped linear in
 * one call). Batch b (0 <= b < batch) computes
 *   y[:, b*n:(b+1)*n] = xq[:, b*k:(b+1)*k] . w_b^T
 * with w_b = w + b*n*k and its scales w_scale + b*(n/128)*(k/128), and the
 * activation scales x_scale + b*(k/128)*m: exactly the layouts of a grouped
 * weight [batch*n, k] and of qplug_cuda__act_quant_fp8 run over all of x.
 * xq has row stride ldx >= batch*k (multiple of 16), y row stride
 * ldy >= batch*n (multiple of 8). QPLUG_ERR_UNSUPPORTED when cuBLASLt has
 * no algorithm (e.g. no batching in the block-scaled modes). */
qplug_status qplug_cuda__fp8_gemm_create_ex(void *lt, int64_t m, int64_t n, int64_t k,
                                            int64_t batch, int64_t ldx, int64_t ldy,
                                            size_t workspace_bytes, qplug_cuda__fp8_gemm **out,
                                            qplug_cuda__err *err);
/* w E4M3 [n, k], w_scale float [n/128][k/128], xq E4M3 [m, k], x_scale
 * float [k/128][m], y BF16 [m, n]; workspace of the size given at creation. */
qplug_status qplug_cuda__fp8_gemm_run(qplug_cuda__fp8_gemm *g, const void *w,
                                      const float *w_scale, const void *xq,
                                      const float *x_scale, void *y, void *workspace,
                                      void *stream, qplug_cuda__err *err);
void qplug_cuda__fp8_gemm_destroy(qplug_cuda__fp8_gemm *g);

/* The same product in BF16 (x [m, k], w [n, k], y [m, n]) through
 * cublasLtMatmul: the library baseline the bench compares against. */
typedef struct qplug_cuda__bf16_gemm qplug_cuda__bf16_gemm;
qplug_status qplug_cuda__bf16_gemm_create(void *lt, int64_t m, int64_t n, int64_t k,
                                          size_t workspace_bytes, qplug_cuda__bf16_gemm **out,
                                          qplug_cuda__err *err);
qplug_status qplug_cuda__bf16_gemm_run(const qplug_cuda__bf16_gemm *g, const void *w,
                                       const void *x, void *y, void *workspace, void *stream,
                                       qplug_cuda__err *err);
void qplug_cuda__bf16_gemm_destroy(qplug_cuda__bf16_gemm *g);

/* ---------------------------------------------------------------- (c) */

/* Decode GEMV on FP8 block weights for 1 <= m <= 16: y = xq . w^T with the
 * same inputs and numerics as qplug_cuda__fp8_gemm_run (fp32 accumulation
 * per 128-block, then scaled). Tensor-core mma.sync on E4M3, 16-byte weight
 * loads. n % 16 == 0, k % 128 == 0; w and xq 16-byte aligned, the scales
 * 4-byte aligned. */
qplug_status qplug_cuda__gemv_fp8(const void *w, const float *w_scale, const void *xq,
                                  const float *x_scale, int64_t m, int64_t n, int64_t k, void *y,
                                  void *stream, qplug_cuda__err *err);

/* The weight formats of qplug_cuda__gemv_bf16. */
typedef enum qplug_cuda__gemv_fmt {
    QPLUG_CUDA_GEMV_FP8 = 0,   /* E4M3 [rows, k], float [rows/128][k/128] */
    QPLUG_CUDA_GEMV_MXFP4 = 1, /* repacked E2M1 [rows, k/2], E8M0 [rows, k/32] */
    QPLUG_CUDA_GEMV_NVFP4 = 2  /* repacked E2M1 [rows, k/2], E4M3 [rows, k/16], global */
} qplug_cuda__gemv_fmt;

/* How qplug_cuda__gemv_bf16 treats the activations: quantize them inside
 * the GEMV (FUSED), or quantize them first with qplug_cuda__act_quant_fp8
 * into caller scratch and run the GEMV on the result (UNFUSED: two launches,
 * each x value quantized once), or let it choose (AUTO). The fused kernel
 * re-quantizes x in every block of rows, which costs more than the saved
 * launch on wide layers and at m > 8 (bench/NOTES.md, GEMV v6). */
typedef enum qplug_cuda__gemv_path {
    QPLUG_CUDA_GEMV_AUTO = 0,
    QPLUG_CUDA_GEMV_FUSED = 1,
    QPLUG_CUDA_GEMV_UNFUSED = 2
} qplug_cuda__gemv_path;

/* Decode GEMV on BF16 activations, one launch for `groups` independent
 * groups: group g computes y[:, g*n:(g+1)*n] = x[:, g*k:(g+1)*k] . W_g^T,
 * where W_g is rows g*n..(g+1)*n-1 of the weight (the layouts above over
 * rows = groups*n; grouped FP8 needs n % 128 == 0; 1 <= groups <= 65535).
 * x is BF16 [m, >= groups*k] with row stride ldx (multiple of 8, x 16-byte
 * aligned), y BF16 with row stride ldy >= groups*n; w and w_scale aligned
 * as for qplug_cuda__gemv_fp8/_mxfp4/_nvfp4. w_scale is float for FP8,
 * bytes for FP4; global_scale is used by NVFP4 only. 1 <= m <= 16, n % 16 == 0,
 * k % 128 == 0. Both paths quantize by the rule of qplug_cuda__act_quant_fp8
 * (the fused kernel in registers, with the same codes and scales), so with
 * one group y is bit-identical to act_quant followed by
 * qplug_cuda__gemv_fp8/_mxfp4/_nvfp4. With several groups the launch shape
 * is chosen from all groups' rows, so the split of k over warps and blocks,
 * hence the order of the fp32 additions, can differ from per-group calls.
 * scratch: device memory of qplug_cuda__gemv_bf16_scratch(...) bytes for the
 * same arguments (16-byte aligned), or NULL when that is 0; with AUTO and
 * NULL scratch the fused path runs. */
qplug_status qplug_cuda__gemv_bf16(qplug_cuda__gemv_fmt fmt, const void *w, const void *w_scale,
                                   float global_scale, const void *x, int64_t ldx,
                                   qplug_cuda__scale_fmt act, int64_t m, int64_t n, int64_t k,
                                   int64_t groups, void *y, int64_t ldy,
                                   qplug_cuda__gemv_path path, void *scratch, void *stream,
                                   qplug_cuda__err *err);
/* The scratch bytes qplug_cuda__gemv_bf16 needs for these arguments on the
 * current device: 0 when it runs fused, and 0 for arguments it refuses. */
size_t qplug_cuda__gemv_bf16_scratch(qplug_cuda__gemv_fmt fmt, qplug_cuda__scale_fmt act,
                                     int64_t m, int64_t n, int64_t k, int64_t groups,
                                     qplug_cuda__gemv_path path);

/* ---------------------------------------------------------------- (d) */

/* The FP4 decode kernels read weights in a repacked order (same bytes,
 * permuted within each 64-byte run of a row) so that each thread's 16-byte
 * load holds exactly its tensor-core fragments. Repack once at prepare time;
 * src and dst must not overlap. n >= 1, k % 128 == 0. */
qplug_status qplug_cuda__fp4_repack(const uint8_t *src, int64_t n, int64_t k, uint8_t *dst,
                                    void *stream, qplug_cuda__err *err);

/* Decode GEMV on FP4 weights (W4A8: activations quantized by
 * qplug_cuda__act_quant_fp8, FP4 decoded exactly to F16 in registers).
 * w_packed is the repacked E2M1 [n, k/2]. MXFP4: scale E8M0 [n, k/32].
 * NVFP4: scale E4M3 [n, k/16] and the global F32 weight_scale_2 (host
 * value). 1 <= m <= 16, n % 16 == 0, k % 128 == 0; w_packed 16-byte
 * aligned, xq and x_scale 4-byte aligned, w_scale 4-byte (MXFP4) or 8-byte
 * (NVFP4) aligned. */
qplug_status qplug_cuda__gemv_mxfp4(const uint8_t *w_packed, const uint8_t *w_scale,
                                    const void *xq, const float *x_scale, int64_t m, int64_t n,
                                    int64_t k, void *y, void *stream, qplug_cuda__err *err);
qplug_status qplug_cuda__gemv_nvfp4(const uint8_t *w_packed, const uint8_t *w_scale,
                                    float global_scale, const void *xq, const float *x_scale,
                                    int64_t m, int64_t n, int64_t k, void *y, void *stream,
                                    qplug_cuda__err *err);

/* ---------------------------------------------------------------- (e) */

/* Prefill support: converts FP4 weights (original, not repacked, order) to
 * an FP8 block copy E4M3 [n, k] + float [n/128][k/128], so that prefill runs
 * on the FP8 tensor cores through qplug_cuda__fp8_gemm. Each 128x128 tile
 * gets the power-of-two scale S = 2^ceil(log2(amax/448)); q = e4m3(v / S).
 * MXFP4: exact while the E8M0 exponents of a tile span at most 14 octaves
 * (smaller values round). NVFP4: values with more than 4 significant bits
 * round to nearest even. n % 128 == 0, k % 128 == 0. */
qplug_status qplug_cuda__mxfp4_to_fp8_block(const uint8_t *w, const uint8_t *scale, int64_t n,
                                            int64_t k, uint8_t *q, float *q_scale, void *stream,
                                            qplug_cuda__err *err);
qplug_status qplug_cuda__nvfp4_to_fp8_block(const uint8_t *w, const uint8_t *scale,
                                            float global_scale, int64_t n, int64_t k, uint8_t *q,
                                            float *q_scale, void *stream, qplug_cuda__err *err);

/* ---------------------------------------------------------------- (f) */

/* Prefill GEMM on FP8 block weights that takes BF16 activations and
 * quantizes them inside the kernel (wgmma, sm_90a): y = x . w^T with each
 * 1x128 group of x quantized exactly as qplug_cuda__act_quant_fp8 does
 * (same scales and codes for fmt), each 128-wide k-block summed in fp32,
 * times its activation scale and weight tile scale, and the k-blocks summed
 * in fp32; BF16 output.
 * groups >= 1 runs a grouped linear in one launch: group g computes
 *   y[:, g*n:(g+1)*n] = x[:, g*k:(g+1)*k] . w_g^T
 * with w_g the rows g*n.. of w E4M3 [groups*n, k] and its scales, the rows
 * g*(n/128).. of w_scale float [groups*n/128][k/128].
 * x BF16 [m, ldx] (groups*k <= ldx < 2^39, ldx % 8 == 0, 16-byte aligned);
 * y BF16 [m, ldy] (ldy >= groups*n, even, 4-byte aligned); w 16-byte
 * aligned. Shapes as qplug_cuda__fp8_gemm_bf16x_supported says. */
qplug_status qplug_cuda__fp8_gemm_bf16x(const void *x, int64_t ldx, int64_t m, int64_t n,
                                        int64_t k, int64_t groups, qplug_cuda__scale_fmt fmt,
                                        const uint8_t *w, const float *w_scale, void *y,
                                        int64_t ldy, void *stream, qplug_cuda__err *err);

/* Pure host predicate: 1 when qplug_cuda__fp8_gemm_bf16x takes the shape
 * (m >= 1, n and k positive multiples of 128, groups >= 1, and sizes that
 * fit its grid and tensor map), else 0. Alignment and strides are checked
 * by the call itself. */
int qplug_cuda__fp8_gemm_bf16x_supported(int64_t m, int64_t n, int64_t k, int64_t groups);

/* ---------------------------------------------------------------- (g) */

/* RMSNorm with the activation quantization of the next FP8 GEMM fused in
 * (norm_quant.cu): for each of m rows of BF16 x (row stride ldx),
 *   r = 1 / sqrt(mean(x^2) + eps), v = (x * r) * w   (fp32 throughout)
 * and then v, as it is in fp32 (not rounded to BF16 first, so the codes
 * can differ from act_quant on the BF16 RMSNorm output), is quantized by
 * the rule of qplug_cuda__act_quant_fp8: xq E4M3 [m, d] contiguous and
 * scale float [d/128][m], the layout the GEMMs and ABI 1.2's x_scale take.
 * w is BF16 [d]. 128 <= d <= 8192, d % 128 == 0, ldx >= d and a multiple
 * of 8; x and w 16-byte aligned, xq 8-byte, scale 4-byte aligned. A NaN or
 * Inf in a row gives NaN scales for its groups. */
qplug_status qplug_cuda__rmsnorm_quant(const void *x, int64_t ldx, int64_t m, int64_t d,
                                       const void *w, float eps, qplug_cuda__scale_fmt fmt,
                                       void *xq, float *scale, void *stream,
                                       qplug_cuda__err *err);

/* The plain RMSNorm it replaces, with the same arithmetic: y = bf16((x * r)
 * * w), round to nearest even; y BF16 with row stride ldy (>= d, multiple
 * of 8, 16-byte aligned). Same limits on x, w and d. */
qplug_status qplug_cuda__rmsnorm_bf16(const void *x, int64_t ldx, int64_t m, int64_t d,
                                      const void *w, float eps, void *y, int64_t ldy,
                                      void *stream, qplug_cuda__err *err);

#ifdef __cplusplus
}
#endif
#endif
