/*
 * plugins/common/qp_cuda_moe.cuh - the CUDA fused-MoE path shared by the
 * plugins' <p>_cuda.cu files (fp8_block, mxfp4, nvfp4, w4a4_megamoe): the
 * experts are uploaded once at prepare time, stacked per expert in the
 * layout of qplug_cuda__moe_weights, and apply() runs
 * qplug_cuda__moe_forward (W8A8 / W4A8) or, for the w4a4 path,
 * qplug_cuda__w4a4_pack + qplug_cuda__moe_forward_w4a4 on the caller's
 * stream with the caller's device-side routing (topk_ids, topk_weights).
 *
 * Included by exactly one .cu per plugin, so every function here is static.
 *
 * Numerics (see plugins/common_cuda/qplug_cuda_moe.h): x is quantized to
 * E4M3 per token per 128 (UE8M0 scales for FP8-E8M0 and MXFP4 experts, F32
 * scales otherwise), h to E4M3 per row per 128 before the down GEMM, y is
 * produced in BF16. F32 x is rounded to BF16 first and F32 y is the BF16
 * result widened, so F32 tensors get BF16 precision at both ends. The w4a4
 * path packs x to FP4 (the CPU layout) but, unlike the CPU path, keeps h in
 * FP8 for the down GEMM (Hopper has no FP4 tensor cores, and FP8 h is the
 * more precise of the two).
 *
 * Only QPLUG_PRECISION_NATIVE runs on CUDA; the reference precision (fp32
 * math on exact weights) is refused with QPLUG_ERR_UNSUPPORTED, as is an
 * unquantized (BF16) expert set, which the kernels cannot take.
 *
 * No host synchronisation happens in apply: the workspace (and the w4a4
 * dispatch buffer) come from cudaMallocAsync on the call's stream, sized for
 * the call's m, and go back with cudaFreeAsync, so there is no maximum m and
 * a whole layer call can be captured into a CUDA graph. Routing ids outside
 * [0, E) cannot be reported without a sync: the kernels skip them, as -1.
 * A NaN or Inf in x cannot be reported as QPLUG_ERR_NUMERIC without a sync:
 * apply writes NaN over the y rows of the tokens whose x holds one (the
 * kernels alone would give finite values there).
 */
#ifndef QPLUG_PLUGINS_QP_CUDA_MOE_CUH
#define QPLUG_PLUGINS_QP_CUDA_MOE_CUH

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>
#include <stdint.h>
#include <string.h>

extern "C" {
#include "qp_common.h"
}
#include "qplug_cuda.h"
#include "qplug_cuda_moe.h"

/* The limits of the fused-MoE kernels (plugins/common_cuda/moe.cu). */
#define QP_CM_MAX_EXPERTS 1024
#define QP_CM_MAX_TOPK 16

typedef struct qp_cuda_moe {
    qplug_cuda__moe_weights w; /* device pointers into the buffers below */
    qplug_cuda__scale_fmt act_fmt;
    int32_t top_k;
    bool w4a4;                 /* pack x to FP4 before the expert GEMMs */
    int group;                 /* w4a4: 32 (MXFP4) or 16 (NVFP4) */
    float gscale;              /* w4a4 NVFP4: the global activation scale */
    void *buf[3];              /* weights w1, w3, w2 (stacked per expert) */
    void *sbuf[3];             /* their scales (FP8: F32) */
    float *gbuf[3];            /* NVFP4: per-expert weight_scale_2, F32 [E] */
} qp_cuda_moe;

/* True when the MoE kernels take this layer's shape (the scheme is the
 * caller's check). */
static bool qp_cm_supports(const qplug_layer_desc *l)
{
    return l->kind == QPLUG_LAYER_FUSED_MOE && l->k >= 128 && l->k % 128 == 0 &&
           l->n >= 128 && l->n % 128 == 0 && l->k / 128 <= 65535 && l->n / 128 <= 65535 &&
           l->num_experts >= 1 && l->num_experts <= QP_CM_MAX_EXPERTS && l->top_k >= 1 &&
           l->top_k <= QP_CM_MAX_TOPK;
}

static void qp_cm_release(const qplug_host *host, qp_cuda_moe *M)
{
    if (!M)
        return;
    for (int i = 0; i < 3; i++) {
        host->api->free(host->ctx, M->buf[i], QPLUG_DEVICE_CUDA);
        host->api->free(host->ctx, M->sbuf[i], QPLUG_DEVICE_CUDA);
        host->api->free(host->ctx, M->gbuf[i], QPLUG_DEVICE_CUDA);
    }
    host->api->free(host->ctx, M, QPLUG_DEVICE_CPU);
}

static qplug_status qp_cm_alloc(const qplug_host *host, const qplug_layer_desc *l, size_t bytes,
                                void **dst, const char *what)
{
    *dst = host->api->alloc(host->ctx, bytes, QPLUG_DEVICE_CUDA);
    if (!*dst)
        return host->api->error(host->ctx, QPLUG_ERR_NOMEM,
                                "cuda prepare: layer %s: out of device memory for %s (%zu bytes)",
                                l->name ? l->name : "?", what, bytes);
    return QPLUG_OK;
}

static qplug_status qp_cm_copy(const qplug_host *host, const qplug_layer_desc *l, void *dst,
                               const void *src, size_t bytes, const char *what, int32_t e)
{
    if (!src)
        return host->api->error(host->ctx, QPLUG_ERR_ARGUMENT,
                                "cuda prepare: layer %s: expert %d has no %s data",
                                l->name ? l->name : "?", (int)e, what);
    if (cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice) != cudaSuccess)
        return host->api->error(host->ctx, QPLUG_ERR_DEVICE,
                                "cuda prepare: layer %s: copying %s of expert %d to the device "
                                "failed",
                                l->name ? l->name : "?", what, (int)e);
    return QPLUG_OK;
}

/* Uploads one of w1 / w3 / w2 (index j) of all experts: the weights, their
 * scales (FP8 E8M0 scales converted to F32 on the device) and, for NVFP4,
 * the per-expert weight_scale_2. */
static qplug_status qp_cm_upload_one(const qplug_host *host, const qplug_layer_desc *l,
                                     qp_cuda_moe *M, const qplug__wmat *ex, int j)
{
    static const char *const names[3] = {"w1", "w3", "w2"};
    int32_t E = M->w.num_experts;
    int64_t rows = j < 2 ? l->n : l->k, cols = j < 2 ? l->k : l->n;
    qplug_cuda__moe_wfmt fmt = M->w.fmt;
    size_t wbytes = fmt == QPLUG_CUDA_MOE_FP8 ? (size_t)(rows * cols) : (size_t)(rows * cols / 2);
    size_t nsc = fmt == QPLUG_CUDA_MOE_FP8     ? (size_t)((rows / 128) * (cols / 128))
                 : fmt == QPLUG_CUDA_MOE_MXFP4 ? (size_t)(rows * (cols / 32))
                                               : (size_t)(rows * (cols / 16));
    size_t sbytes = fmt == QPLUG_CUDA_MOE_FP8 ? nsc * sizeof(float) : nsc;
    bool e8m0 = fmt == QPLUG_CUDA_MOE_FP8 && ex[0].scale_e8m0;
    size_t raw_bytes = e8m0 ? nsc : sbytes;
    qplug_status st = qp_cm_alloc(host, l, wbytes * (size_t)E, &M->buf[j], names[j]);
    if (!st)
        st = qp_cm_alloc(host, l, sbytes * (size_t)E, &M->sbuf[j], "expert scales");
    void *raw = NULL;
    if (!st && e8m0)
        st = qp_cm_alloc(host, l, raw_bytes * (size_t)E, &raw, "E8M0 expert scales");
    for (int32_t e = 0; e < E && !st; e++) {
        const qplug__wmat *v = &ex[e];
        if (v->rows != rows || v->cols != cols)
            st = host->api->error(host->ctx, QPLUG_ERR_SHAPE,
                                  "cuda prepare: layer %s: expert %d %s is [%lld, %lld], not "
                                  "[%lld, %lld]",
                                  l->name ? l->name : "?", (int)e, names[j], (long long)v->rows,
                                  (long long)v->cols, (long long)rows, (long long)cols);
        else if (fmt == QPLUG_CUDA_MOE_FP8 && v->scale_e8m0 != e8m0)
            st = host->api->error(host->ctx, QPLUG_ERR_DTYPE,
                                  "cuda prepare: layer %s: expert %d %s mixes F32 and E8M0 "
                                  "scales",
                                  l->name ? l->name : "?", (int)e, names[j]);
        if (!st)
            st = qp_cm_copy(host, l, (char *)M->buf[j] + (size_t)e * wbytes, v->data, wbytes,
                            names[j], e);
        if (!st)
            st = qp_cm_copy(host, l,
                            (char *)(e8m0 ? raw : M->sbuf[j]) + (size_t)e * raw_bytes, v->scale,
                            raw_bytes, "scales", e);
    }
    if (!st && e8m0) {
        qplug_cuda__err err;
        err.msg[0] = '\0';
        if (qplug_cuda__e8m0_to_f32((const uint8_t *)raw, (int64_t)nsc * E, (float *)M->sbuf[j],
                                    NULL, &err) != QPLUG_OK)
            st = host->api->error(host->ctx, QPLUG_ERR_DEVICE, "cuda prepare: layer %s: %s",
                                  l->name ? l->name : "?", err.msg);
        else if (cudaDeviceSynchronize() != cudaSuccess)
            st = host->api->error(host->ctx, QPLUG_ERR_DEVICE,
                                  "cuda prepare: layer %s: E8M0 scale conversion failed",
                                  l->name ? l->name : "?");
    }
    host->api->free(host->ctx, raw, QPLUG_DEVICE_CUDA);
    if (!st && fmt == QPLUG_CUDA_MOE_NVFP4) {
        float *g = (float *)host->api->alloc(host->ctx, (size_t)E * sizeof(float),
                                             QPLUG_DEVICE_CPU);
        if (!g)
            return host->api->error(host->ctx, QPLUG_ERR_NOMEM, "cuda prepare: out of memory");
        for (int32_t e = 0; e < E; e++)
            g[e] = ex[e].global;
        st = qp_cm_alloc(host, l, (size_t)E * sizeof(float), (void **)&M->gbuf[j],
                         "weight_scale_2");
        if (!st)
            st = qp_cm_copy(host, l, M->gbuf[j], g, (size_t)E * sizeof(float), "weight_scale_2",
                            0);
        host->api->free(host->ctx, g, QPLUG_DEVICE_CPU);
    }
    return st;
}

/*
 * Builds the device copy of a fused-MoE layer from the CPU views
 * experts[3E] (w1[E], w3[E], w2[E]); *out is NULL on failure and nothing
 * is leaked. w4a4 selects the FP4-activation path (group 32 for MXFP4
 * experts, 16 with the global activation scale gscale for NVFP4).
 */
static qplug_status qp_cm_prepare(const qplug_host *host, const qplug_layer_desc *l,
                                  const qplug__wmat *experts, qplug_cuda__moe_wfmt fmt,
                                  qplug_cuda__scale_fmt act_fmt, bool w4a4, float gscale,
                                  qp_cuda_moe **out)
{
    *out = NULL;
    if (!qp_cm_supports(l))
        return host->api->error(host->ctx, QPLUG_ERR_UNSUPPORTED,
                                "cuda prepare: layer %s: the CUDA fused MoE needs D and I "
                                "multiples of 128, 1..%d experts and top_k 1..%d (D %lld, I "
                                "%lld, E %d, top_k %d)",
                                l->name ? l->name : "?", QP_CM_MAX_EXPERTS, QP_CM_MAX_TOPK,
                                (long long)l->k, (long long)l->n, (int)l->num_experts,
                                (int)l->top_k);
    if (w4a4 && fmt == QPLUG_CUDA_MOE_NVFP4 && !(gscale > 0.0f && gscale < 3.4e38f))
        return host->api->error(host->ctx, QPLUG_ERR_UNSUPPORTED,
                                "cuda prepare: layer %s: FP4 activations need a positive "
                                "input_scale on the NVFP4 experts (got %g)",
                                l->name ? l->name : "?", (double)gscale);
    qp_cuda_moe *M = (qp_cuda_moe *)qplug__zalloc(host, sizeof *M);
    if (!M)
        return host->api->error(host->ctx, QPLUG_ERR_NOMEM, "cuda prepare: out of memory");
    M->w.fmt = fmt;
    M->w.num_experts = l->num_experts;
    M->w.hidden = l->k;
    M->w.intermediate = l->n;
    M->w.swiglu_limit = l->swiglu_limit;
    M->act_fmt = act_fmt;
    M->top_k = l->top_k;
    M->w4a4 = w4a4;
    M->group = fmt == QPLUG_CUDA_MOE_NVFP4 ? 16 : 32;
    M->gscale = fmt == QPLUG_CUDA_MOE_NVFP4 ? gscale : 1.0f;
    qplug_status st = QPLUG_OK;
    for (int j = 0; j < 3 && !st; j++)
        st = qp_cm_upload_one(host, l, M, experts + (size_t)j * (size_t)l->num_experts, j);
    if (st) {
        qp_cm_release(host, M);
        return st;
    }
    M->w.w1 = M->buf[0];
    M->w.w3 = M->buf[1];
    M->w.w2 = M->buf[2];
    M->w.s1 = M->sbuf[0];
    M->w.s3 = M->sbuf[1];
    M->w.s2 = M->sbuf[2];
    M->w.g1 = M->gbuf[0];
    M->w.g3 = M->gbuf[1];
    M->w.g2 = M->gbuf[2];
    /* Whether the wgmma kernels take these experts (for every token count;
     * checked once here, on the null stream the uploads used). */
    qplug_cuda__err e = {{0}};
    st = qplug_cuda__moe_prepare(&M->w, NULL, &e);
    if (st) {
        qp_cm_release(host, M);
        return host->api->error(host->ctx, st, "cuda prepare: layer %s: %s",
                                l->name ? l->name : "?", e.msg);
    }
    *out = M;
    return QPLUG_OK;
}

/* ------------------------------------------------------------------------ */
/* Apply                                                                    */
/* ------------------------------------------------------------------------ */

__global__ static void qp_cm_f32_to_bf16(const float *src, __nv_bfloat16 *dst, int64_t cnt)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < cnt)
        dst[i] = __float2bfloat16_rn(src[i]);
}

__global__ static void qp_cm_bf16_to_f32(const __nv_bfloat16 *src, float *dst, int64_t cnt)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < cnt)
        dst[i] = __bfloat162float(src[i]);
}

/* The MoE kernels do not carry a NaN or Inf of x into y (their activation
 * scales ignore it), so apply marks each row of x that holds one and
 * writes NaN over that row of y afterwards: a bad input never comes out
 * finite. One warp per row. */
__global__ static void qp_cm_row_bad(const void *x, bool bf16, int64_t m, int64_t D, int *bad)
{
    int64_t row = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= m)
        return;
    int lane = threadIdx.x & 31;
    bool b = false;
    for (int64_t c = lane; c < D; c += 32) {
        float v = bf16 ? __bfloat162float(((const __nv_bfloat16 *)x)[row * D + c])
                       : ((const float *)x)[row * D + c];
        b |= !isfinite(v);
    }
    b = __any_sync(0xffffffffu, b);
    if (lane == 0)
        bad[row] = b ? 1 : 0;
}

__global__ static void qp_cm_poison(void *y, bool bf16, int64_t m, int64_t D, const int *bad)
{
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= m * D || !bad[i / D])
        return;
    if (bf16)
        ((__nv_bfloat16 *)y)[i] = __float2bfloat16_rn(__int_as_float(0x7fc00000));
    else
        ((float *)y)[i] = __int_as_float(0x7fc00000);
}

static bool qp_cm_is_2d(const qplug_tensor *t, qplug_dtype dt, int64_t rows, int64_t cols)
{
    return t && t->data && t->device == QPLUG_DEVICE_CUDA && t->dtype == dt && t->ndim == 2 &&
           t->shape[0] == rows && t->shape[1] == cols;
}

static qplug_status qp_cm_check(const qplug_host *host, const qplug_layer_desc *l,
                                const qp_cuda_moe *M, const qplug_apply_args *a)
{
    const char *name = l->name ? l->name : "?";
    if (a->struct_size < offsetof(qplug_apply_args, stream) + sizeof(void *))
        return host->api->error(host->ctx, QPLUG_ERR_ARGUMENT, "apply: args struct too small");
    if (!M)
        return host->api->error(host->ctx, QPLUG_ERR_ARGUMENT,
                                "apply: layer %s has no CUDA state", name);
    if (a->op != QPLUG_OP_FORWARD)
        return host->api->error(host->ctx, QPLUG_ERR_ARGUMENT,
                                "apply: layer %s: op %d is not FORWARD for a fused MoE", name,
                                (int)a->op);
    if (a->precision != QPLUG_PRECISION_NATIVE)
        return host->api->error(host->ctx, QPLUG_ERR_UNSUPPORTED,
                                "apply: layer %s: the CUDA fused MoE runs native precision only",
                                name);
    const qplug_tensor *x = a->x, *y = a->y;
    if (!x || !y || !x->data || !y->data)
        return host->api->error(host->ctx, QPLUG_ERR_ARGUMENT, "apply: layer %s: x or y missing",
                                name);
    if (x->device != QPLUG_DEVICE_CUDA || y->device != QPLUG_DEVICE_CUDA)
        return host->api->error(host->ctx, QPLUG_ERR_ARGUMENT,
                                "apply: layer %s: x and y must both be CUDA tensors", name);
    if ((x->dtype != QPLUG_DT_BF16 && x->dtype != QPLUG_DT_F32) ||
        (y->dtype != QPLUG_DT_BF16 && y->dtype != QPLUG_DT_F32))
        return host->api->error(host->ctx, QPLUG_ERR_DTYPE,
                                "apply: layer %s: x and y must be BF16 or F32 on CUDA (x %s, y %s)",
                                name, qplug_dtype_name(x->dtype), qplug_dtype_name(y->dtype));
    int64_t D = M->w.hidden, K = M->top_k;
    if (x->ndim != 2 || y->ndim != 2 || x->shape[0] < 1 || x->shape[0] > 0x7fffffff ||
        x->shape[1] != D || y->shape[0] != x->shape[0] || y->shape[1] != D)
        return host->api->error(host->ctx, QPLUG_ERR_SHAPE,
                                "apply: layer %s: x and y must be [m, %lld] with 1 <= m < 2^31",
                                name, (long long)D);
    int64_t m = x->shape[0];
    if (!qp_cm_is_2d(a->topk_ids, QPLUG_DT_I32, m, K) ||
        !qp_cm_is_2d(a->topk_weights, QPLUG_DT_F32, m, K))
        return host->api->error(host->ctx, QPLUG_ERR_SHAPE,
                                "apply: layer %s: topk_ids must be I32 and topk_weights F32 "
                                "CUDA tensors of shape [%lld, %lld]",
                                name, (long long)m, (long long)K);
    return QPLUG_OK;
}

static size_t qp_cm_align(size_t v)
{
    return (v + 255) & ~(size_t)255;
}

static qplug_status qp_cm_apply(const qplug_host *host, const qplug_layer_desc *l,
                                const qp_cuda_moe *M, const qplug_apply_args *a)
{
    qplug_status st = qp_cm_check(host, l, M, a);
    if (st)
        return st;
    const char *name = l->name ? l->name : "?";
    cudaStream_t s = (cudaStream_t)a->stream;
    int64_t m = a->x->shape[0], D = M->w.hidden;
    int32_t K = M->top_k;
    bool x_bf16 = a->x->dtype == QPLUG_DT_BF16, y_bf16 = a->y->dtype == QPLUG_DT_BF16;
    /* One stream-ordered allocation: the kernels' workspace, then the w4a4
     * dispatch buffer, then BF16 staging for an F32 x and an F32 y. */
    size_t ws_b = qplug_cuda__moe_workspace_bytes(m, K, M->w.num_experts, D, M->w.intermediate);
    size_t buf_b = M->w4a4 ? qplug_cuda__w4a4_dispatch_bytes(m, D, K, M->group) : 0;
    size_t xs_b = x_bf16 ? 0 : (size_t)(m * D) * 2, ys_b = y_bf16 ? 0 : (size_t)(m * D) * 2;
    size_t off_buf = qp_cm_align(ws_b), off_x = off_buf + qp_cm_align(buf_b);
    size_t off_y = off_x + qp_cm_align(xs_b), off_bad = off_y + qp_cm_align(ys_b);
    size_t total = off_bad + qp_cm_align((size_t)m * sizeof(int));
    if (ws_b == 0 || (M->w4a4 && buf_b == 0))
        return host->api->error(host->ctx, QPLUG_ERR_SHAPE,
                                "apply: layer %s: no workspace size for m = %lld", name,
                                (long long)m);
    char *scratch = NULL;
    if (cudaMallocAsync((void **)&scratch, total, s) != cudaSuccess) {
        cudaGetLastError();
        return host->api->error(host->ctx, QPLUG_ERR_NOMEM,
                                "apply: layer %s: no %zu bytes of MoE workspace on the stream",
                                name, total);
    }
    int *bad = (int *)(scratch + off_bad);
    qp_cm_row_bad<<<(unsigned)((m + 7) / 8), 256, 0, s>>>(a->x->data, x_bf16, m, D, bad);
    const void *xb = a->x->data;
    void *yb = y_bf16 ? a->y->data : (void *)(scratch + off_y);
    int64_t cnt = m * D;
    unsigned blocks = (unsigned)((cnt + 255) / 256);
    if (!x_bf16) {
        qp_cm_f32_to_bf16<<<blocks, 256, 0, s>>>((const float *)a->x->data,
                                                 (__nv_bfloat16 *)(scratch + off_x), cnt);
        xb = scratch + off_x;
    }
    qplug_cuda__err e;
    e.msg[0] = '\0';
    const int32_t *ids = (const int32_t *)a->topk_ids->data;
    const float *wts = (const float *)a->topk_weights->data;
    if (M->w4a4) {
        void *buf = scratch + off_buf;
        st = qplug_cuda__w4a4_pack(xb, m, D, M->group, M->gscale, ids, wts, K, buf, buf_b, s,
                                   &e);
        if (!st)
            st = qplug_cuda__moe_forward_w4a4(&M->w, buf, buf_b, m, K, M->group, M->gscale,
                                              M->act_fmt, yb, scratch, ws_b, s, &e);
    } else {
        st = qplug_cuda__moe_forward(&M->w, xb, m, ids, wts, K, M->act_fmt, yb, scratch, ws_b,
                                     s, &e);
    }
    if (st)
        st = host->api->error(host->ctx, st, "apply: layer %s: %s", name, e.msg);
    if (!st && !y_bf16)
        qp_cm_bf16_to_f32<<<blocks, 256, 0, s>>>((const __nv_bfloat16 *)yb,
                                                 (float *)a->y->data, cnt);
    if (!st)
        qp_cm_poison<<<blocks, 256, 0, s>>>(a->y->data, y_bf16, m, D, bad);
    cudaError_t ce = cudaGetLastError();
    if (!st && ce != cudaSuccess)
        st = host->api->error(host->ctx, QPLUG_ERR_DEVICE, "apply: layer %s: launch failed: %s",
                              name, cudaGetErrorString(ce));
    cudaFreeAsync(scratch, s);
    return st;
}

#endif
