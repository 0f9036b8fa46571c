/*
 * plugins/common/qp_cuda_linear.cuh - the CUDA linear and grouped-linear
 * path shared by the plugins' <p>_cuda.cu files: upload at prepare time,
 * then apply() on device tensors through the kernels of plugins/common_cuda.
 *
 * Included by exactly one .cu per plugin, so every function here is static
 * and each plugin carries its own copy with hidden visibility.
 *
 * Dispatch of one native call with BF16 x and y:
 *   m <= 16 and the decode GEMV accepts the shape  -> qplug_cuda__gemv_bf16:
 *                                                     activation quantization
 *                                                     fused in, all groups in
 *                                                     one launch, in place
 *   grouped, m <= 512, the wgmma GEMM takes the
 *   shape, y 4-byte aligned                        -> qplug_cuda__fp8_gemm_bf16x:
 *                                                     quantization fused in,
 *                                                     all groups in one launch
 *                                                     (FP4: its FP8 copy)
 *   otherwise, when cuBLASLt accepts the shape     -> FP8 block-scaled GEMM
 *                                                     (FP4: its FP8 copy)
 *   otherwise                                      -> the simple kernel here
 *                                                     (per group)
 * cuBLASLt block-scaled FP8 is only used for n % 128 == 0 and k % 512 == 0:
 * it gave wrong results on H200 when k/128 is not a multiple of 4.
 * On the cuBLASLt path all groups' activations are quantized in one pass
 * over x, and the groups read x and write y in place through strides: one
 * strided-batched call when enabled and cuBLASLt takes it
 * (QP_CL_LT_BATCHED), else one call per group.
 * Reference precision, and F32 y (the fast kernels write BF16 only), always
 * take the simple kernel: exact weights, fp32 math.
 *
 * No host synchronisation happens in apply. Scratch: the decode path (m <=
 * 16, BF16 x and y, x 16-byte aligned) on small layers runs the fused GEMV
 * and needs none, which removes the per-call cost of cudaMallocAsync /
 * cudaFreeAsync (about 3 us per call on H200, bench h200_v7) where it
 * showed. Wide decode layers and the other paths (cuBLASLt above m = 16,
 * the rare fallbacks: F32 x or y, unaligned x) take stream-ordered scratch
 * from cudaMallocAsync on the call's stream and give it back with
 * cudaFreeAsync: those calls take 15 us and more, so the host cost hides
 * behind the GPU, and stream-ordered memory is safe whichever stream each
 * call uses and inside graph capture. A persistent per-layer buffer was not
 * taken: consecutive calls on different streams could race on it unless
 * each use were fenced by an event, which graph capture across streams
 * does not allow from outside the capture.
 * A NaN or Inf in x cannot be reported as QPLUG_ERR_NUMERIC without waiting
 * for the device, so on CUDA it propagates: the rows it touches come out NaN.
 */
#ifndef QPLUG_PLUGINS_QP_CUDA_LINEAR_CUH
#define QPLUG_PLUGINS_QP_CUDA_LINEAR_CUH

#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime_api.h>
#include <stdint.h>
#include <string.h>

extern "C" {
#include "qp_common.h"
}
#include "qplug_cuda.h"

/* The cuBLASLt workspace each GEMM call gets (Hopper wants up to 32 MiB). */
#define QP_CL_LT_WORKSPACE ((size_t)32 << 20)
#define QP_CL_MAX_PLANS 8
/* 1: grouped layers try one strided-batched cuBLASLt call for all groups
 * (per-batch scale blocks), falling back to per-group calls when cuBLASLt
 * refuses the shape; 0: always per-group calls. Off: cuBLASLt 13.x on
 * H200 refuses batching in the block-scaled modes (CUBLAS_STATUS_NOT_SUPPORTED,
 * bench/NOTES.md v6), and a later version that accepts it must first pass
 * the batched check of tests/gpu/test_gpu_kernels.c, which verifies the
 * per-batch scale offsets this path assumes. */
#define QP_CL_LT_BATCHED 0

typedef enum qp_cl_fmt {
    QP_CL_F32 = 0,   /* exact F32 weights (unquantized plugin) */
    QP_CL_FP8 = 1,   /* E4M3 [rows, k] + F32 [ceil(rows/128)][k/128] */
    QP_CL_MXFP4 = 2, /* packed E2M1 [rows, k/2] + E8M0 [rows, k/32] */
    QP_CL_NVFP4 = 3  /* packed E2M1 [rows, k/2] + E4M3 [rows, k/16] + global */
} qp_cl_fmt;

typedef struct qp_cl_plan {
    int64_t m;
    int64_t batch; /* groups per call: all of them, or 1 */
    qplug_cuda__fp8_gemm *g;
} qp_cl_plan;

typedef struct qp_cuda_lin {
    qp_cl_fmt fmt;
    int64_t n, k, groups, rows; /* rows = groups * n */
    bool ue8m0_act;             /* power-of-two activation scales */
    void *w;                    /* F32 / FP8 / original packed FP4 */
    float *w_scale;             /* FP8 tile scales, F32 */
    uint8_t *s4;                /* FP4 scale bytes as stored */
    float global;               /* NVFP4 weight_scale_2 */
    uint8_t *w4r;               /* FP4 repacked for the GEMV, or NULL */
    uint8_t *q8;                /* FP4 -> FP8 block copy for cuBLASLt, or NULL */
    float *q8_scale;
    void *lt;                   /* cublasLtHandle_t, or NULL */
    bool gemv_ok, lt_ok;
    qp_cl_plan plans[QP_CL_MAX_PLANS];
    int next_plan;
} qp_cuda_lin;

/* ------------------------------------------------------------------------ */
/* Kernels                                                                  */
/* ------------------------------------------------------------------------ */

__device__ static float qp_cl_e4m3(uint8_t b)
{
    __nv_fp8_e4m3 v;
    v.__x = b;
    return (float)v;
}

__device__ static float qp_cl_e2m1(unsigned nib)
{
    const float mag[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
    float v = mag[nib & 7u];
    return (nib & 8u) ? -v : v;
}

/* The exact weight W[r, c] in fp32; FP8 without its tile scale (which the
 * caller applies per 128-block). */
__device__ static float qp_cl_weight(const qp_cuda_lin &L, int64_t r, int64_t c)
{
    switch (L.fmt) {
    case QP_CL_F32:
        return ((const float *)L.w)[r * L.k + c];
    case QP_CL_FP8:
        return qp_cl_e4m3(((const uint8_t *)L.w)[r * L.k + c]);
    case QP_CL_MXFP4: {
        uint8_t b = ((const uint8_t *)L.w)[r * (L.k / 2) + c / 2];
        int e = (int)L.s4[r * (L.k / 32) + c / 32];
        float s = e == 255 ? __int_as_float(0x7fc00000) : ldexpf(1.0f, e - 127);
        return qp_cl_e2m1((c & 1) ? b >> 4 : b & 15u) * s;
    }
    case QP_CL_NVFP4: {
        uint8_t b = ((const uint8_t *)L.w)[r * (L.k / 2) + c / 2];
        float s = qp_cl_e4m3(L.s4[r * (L.k / 16) + c / 16]);
        return qp_cl_e2m1((c & 1) ? b >> 4 : b & 15u) * s * L.global;
    }
    }
    return 0.0f;
}

/*
 * One group: y[i, j] = sum_c a[i, c] * W[r0 + j, c] for i < m, j < n. The
 * activations are x (BF16 or F32, row stride ldx) or, when xq is given, the
 * quantized E4M3 xq [m, k] (row stride ldxq) with scales xs [k/128][m]. Per 128-block the
 * partial sum is formed in fp32 and scaled by the activation scale and the
 * FP8 tile scale, as the CPU path does.
 */
__global__ static void qp_cl_simple_kernel(qp_cuda_lin L, int64_t r0, int64_t m, int64_t n,
                                           const void *x, bool x_bf16, int64_t ldx,
                                           const uint8_t *xq, int64_t ldxq, const float *xs,
                                           void *y, bool y_bf16, int64_t ldy)
{
    int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n)
        return;
    int64_t r = r0 + j, k = L.k, ktiles = (k + 127) / 128;
    for (int64_t i = blockIdx.y; i < m; i += gridDim.y) {
        float acc = 0.0f;
        for (int64_t kb = 0; kb < ktiles; kb++) {
            int64_t c1 = (kb + 1) * 128 < k ? (kb + 1) * 128 : k;
            float part = 0.0f;
            for (int64_t c = kb * 128; c < c1; c++) {
                float a;
                if (xq)
                    a = qp_cl_e4m3(xq[i * ldxq + c]);
                else if (x_bf16)
                    a = __bfloat162float(((const __nv_bfloat16 *)x)[i * ldx + c]);
                else
                    a = ((const float *)x)[i * ldx + c];
                part = fmaf(a, qp_cl_weight(L, r, c), part);
            }
            if (xq)
                part *= xs[kb * m + i];
            if (L.fmt == QP_CL_FP8)
                part *= L.w_scale[(r / 128) * ktiles + kb];
            acc += part;
        }
        if (y_bf16)
            ((__nv_bfloat16 *)y)[i * ldy + j] = __float2bfloat16_rn(acc);
        else
            ((float *)y)[i * ldy + j] = acc;
    }
}

/* Activation quantization of any x (BF16 or F32, row stride ldx) into
 * contiguous xq [m, k] and xs [k/128][m]; one warp per (row, 128-block).
 * Same rule as the CPU: amax = max(|x|, 1e-4), s = amax/448 or its power of
 * two rounded up; a NaN or Inf makes the scale NaN so the row comes out NaN. */
__global__ static void qp_cl_quant_kernel(const void *x, bool x_bf16, int64_t ldx, int64_t m,
                                          int64_t k, bool ue8m0, uint8_t *xq, float *xs)
{
    int64_t kt = k / 128;
    int64_t item = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (item >= m * kt)
        return;
    int64_t i = item / kt, kb = item % kt;
    int lane = threadIdx.x & 31;
    float v[4];
    float amax = 1e-4f;
    bool bad = false;
    for (int q = 0; q < 4; q++) {
        int64_t c = kb * 128 + q * 32 + lane;
        v[q] = x_bf16 ? __bfloat162float(((const __nv_bfloat16 *)x)[i * ldx + c])
                      : ((const float *)x)[i * ldx + c];
        bad |= !isfinite(v[q]);
        amax = fmaxf(amax, fabsf(v[q]));
    }
    for (int o = 16; o > 0; o >>= 1) {
        amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
        bad |= __shfl_xor_sync(0xffffffffu, (int)bad, o) != 0;
    }
    float s = amax / 448.0f;
    if (ue8m0) {
        int e;
        float f = frexpf(s, &e);
        s = ldexpf(1.0f, f == 0.5f ? e - 1 : e);
    }
    if (bad)
        s = __int_as_float(0x7fc00000);
    for (int q = 0; q < 4; q++) {
        int64_t c = kb * 128 + q * 32 + lane;
        xq[i * k + c] = (uint8_t)__nv_cvt_float_to_fp8(v[q] / s, __NV_SATFINITE, __NV_E4M3);
    }
    if (lane == 0)
        xs[kb * m + i] = s;
}

/* Strided 2-D copy of BF16 values or bytes: rows x cols from src (row
 * stride lds) to dst (row stride ldd). */
template <typename T>
__global__ static void qp_cl_copy_kernel(const T *src, int64_t lds, T *dst, int64_t ldd,
                                         int64_t rows, int64_t cols)
{
    int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= rows * cols)
        return;
    int64_t i = idx / cols, c = idx % cols;
    dst[i * ldd + c] = src[i * lds + c];
}

/* True when qp_cl_prepare takes this layer's kind and shape (the scheme is
 * the caller's check). */
/* Stream-ordered scratch; false when the pool has no room. A failed
 * cudaMallocAsync also sets the runtime's last error, which is cleared here
 * so that the next call's launch check does not report it as its own. */
static bool qp_cl_malloc_async(void **p, size_t bytes, cudaStream_t s)
{
    if (cudaMallocAsync(p, bytes, s) == cudaSuccess)
        return true;
    (void)cudaGetLastError();
    *p = NULL;
    return false;
}

static bool qp_cl_supports(const qplug_layer_desc *l)
{
    return (l->kind == QPLUG_LAYER_LINEAR || l->kind == QPLUG_LAYER_GROUPED_LINEAR) &&
           l->k >= 128 && l->k % 128 == 0;
}

/* ------------------------------------------------------------------------ */
/* Prepare / release                                                        */
/* ------------------------------------------------------------------------ */

static qplug_status qp_cl_upload(const qplug_host *host, const void *src, size_t bytes,
                                 void **dst, const char *what)
{
    *dst = host->api->alloc(host->ctx, bytes, QPLUG_DEVICE_CUDA);
    if (!*dst)
        return host->api->error(host->ctx, QPLUG_ERR_NOMEM,
                                "cuda prepare: out of device memory for %s (%zu bytes)", what,
                                bytes);
    if (src && cudaMemcpy(*dst, src, bytes, cudaMemcpyHostToDevice) != cudaSuccess)
        return host->api->error(host->ctx, QPLUG_ERR_DEVICE,
                                "cuda prepare: copying %s to the device failed", what);
    return QPLUG_OK;
}

static void qp_cl_release(const qplug_host *host, qp_cuda_lin *L)
{
    if (!L)
        return;
    for (int i = 0; i < QP_CL_MAX_PLANS; i++)
        if (L->plans[i].g)
            qplug_cuda__fp8_gemm_destroy(L->plans[i].g);
    host->api->free(host->ctx, L->w, QPLUG_DEVICE_CUDA);
    host->api->free(host->ctx, L->w_scale, QPLUG_DEVICE_CUDA);
    host->api->free(host->ctx, L->s4, QPLUG_DEVICE_CUDA);
    host->api->free(host->ctx, L->w4r, QPLUG_DEVICE_CUDA);
    host->api->free(host->ctx, L->q8, QPLUG_DEVICE_CUDA);
    host->api->free(host->ctx, L->q8_scale, QPLUG_DEVICE_CUDA);
    host->api->free(host->ctx, L, QPLUG_DEVICE_CPU);
}

static qplug_status qp_cl_kernel_status(const qplug_host *host, qplug_status st,
                                        const qplug_cuda__err *e, const char *phase)
{
    if (st == QPLUG_OK)
        return QPLUG_OK;
    return host->api->error(host->ctx, st, "cuda %s: %s", phase, e->msg);
}

/*
 * Builds the device copy of a linear or grouped linear from the CPU view w
 * ([groups*n, k]); *out is NULL on failure and nothing is leaked. Device
 * work at prepare time is synchronous (it happens once per layer).
 */
static qplug_status qp_cl_prepare(const qplug_host *host, const qplug_layer_desc *l,
                                  const qplug__wmat *w, bool ue8m0_act, qp_cuda_lin **out)
{
    *out = NULL;
    if (l->kind != QPLUG_LAYER_LINEAR && l->kind != QPLUG_LAYER_GROUPED_LINEAR)
        return host->api->error(host->ctx, QPLUG_ERR_UNSUPPORTED,
                                "cuda prepare: layer %s: only linear and grouped linear layers "
                                "have a CUDA path so far (kind %d)",
                                l->name ? l->name : "?", (int)l->kind);
    if (l->k % 128 != 0)
        return host->api->error(host->ctx, QPLUG_ERR_SHAPE,
                                "cuda prepare: layer %s: k = %lld is not a multiple of 128",
                                l->name ? l->name : "?", (long long)l->k);
    if (host->api->struct_size < offsetof(qplug_host_api, cuda_device) + sizeof(void *))
        return host->api->error(host->ctx, QPLUG_ERR_UNSUPPORTED,
                                "cuda prepare: the host table has no CUDA slots");
    qp_cuda_lin *L = (qp_cuda_lin *)qplug__zalloc(host, sizeof *L);
    if (!L)
        return host->api->error(host->ctx, QPLUG_ERR_NOMEM, "cuda prepare: out of memory");
    L->n = l->n;
    L->k = l->k;
    L->groups = l->kind == QPLUG_LAYER_GROUPED_LINEAR ? l->groups : 1;
    L->rows = L->groups * L->n;
    L->ue8m0_act = ue8m0_act;
    L->lt = host->api->cublaslt ? host->api->cublaslt(host->ctx) : NULL;
    int64_t rows = L->rows, k = L->k, kt = k / 128, rt = (rows + 127) / 128;
    qplug_status st = QPLUG_OK;
    qplug_cuda__err e;
    e.msg[0] = '\0';
    bool lt_shape = L->lt && L->n % 128 == 0 && k % 512 == 0;
    switch (w->fmt) {
    case QPLUG__W_F32:
    case QPLUG__W_BF16:
    case QPLUG__W_F16: {
        L->fmt = QP_CL_F32;
        size_t bytes = (size_t)(rows * k) * sizeof(float);
        float *tmp = (float *)host->api->alloc(host->ctx, bytes, QPLUG_DEVICE_CPU);
        if (!tmp) {
            st = host->api->error(host->ctx, QPLUG_ERR_NOMEM, "cuda prepare: out of memory");
            break;
        }
        qplug__wmat_dequant_rows(w, 0, rows, tmp);
        st = qp_cl_upload(host, tmp, bytes, &L->w, "weight");
        host->api->free(host->ctx, tmp, QPLUG_DEVICE_CPU);
        break;
    }
    case QPLUG__W_FP8_BLOCK: {
        L->fmt = QP_CL_FP8;
        st = qp_cl_upload(host, w->data, (size_t)(rows * k), &L->w, "weight");
        if (!st && w->scale_e8m0) {
            void *raw = NULL;
            st = qp_cl_upload(host, w->scale, (size_t)(rt * kt), &raw, "scale");
            if (!st)
                st = qp_cl_upload(host, NULL, (size_t)(rt * kt) * sizeof(float),
                                  (void **)&L->w_scale, "scale");
            if (!st)
                st = qp_cl_kernel_status(host,
                                         qplug_cuda__e8m0_to_f32((const uint8_t *)raw, rt * kt,
                                                                 L->w_scale, NULL, &e),
                                         &e, "prepare");
            if (!st && cudaDeviceSynchronize() != cudaSuccess)
                st = host->api->error(host->ctx, QPLUG_ERR_DEVICE,
                                      "cuda prepare: E8M0 scale conversion failed");
            host->api->free(host->ctx, raw, QPLUG_DEVICE_CUDA);
        } else if (!st) {
            st = qp_cl_upload(host, w->scale, (size_t)(rt * kt) * sizeof(float),
                              (void **)&L->w_scale, "scale");
        }
        L->gemv_ok = L->n % 16 == 0 && (L->groups == 1 || L->n % 128 == 0);
        L->lt_ok = lt_shape;
        break;
    }
    case QPLUG__W_MXFP4:
    case QPLUG__W_NVFP4: {
        bool nv = w->fmt == QPLUG__W_NVFP4;
        L->fmt = nv ? QP_CL_NVFP4 : QP_CL_MXFP4;
        L->global = nv ? w->global : 1.0f;
        size_t sbytes = (size_t)(rows * (k / (nv ? 16 : 32)));
        st = qp_cl_upload(host, w->data, (size_t)(rows * k / 2), &L->w, "weight");
        if (!st)
            st = qp_cl_upload(host, w->scale, sbytes, (void **)&L->s4, "weight scale");
        L->gemv_ok = L->n % 16 == 0;
        if (!st && L->gemv_ok) {
            st = qp_cl_upload(host, NULL, (size_t)(rows * k / 2), (void **)&L->w4r,
                              "repacked weight");
            if (!st)
                st = qp_cl_kernel_status(
                    host, qplug_cuda__fp4_repack((const uint8_t *)L->w, rows, k, L->w4r, NULL, &e),
                    &e, "prepare");
        }
        if (!st && lt_shape) {
            st = qp_cl_upload(host, NULL, (size_t)(rows * k), (void **)&L->q8, "FP8 copy");
            if (!st)
                st = qp_cl_upload(host, NULL, (size_t)(rt * kt) * sizeof(float),
                                  (void **)&L->q8_scale, "FP8 copy scale");
            if (!st)
                st = qp_cl_kernel_status(
                    host,
                    nv ? qplug_cuda__nvfp4_to_fp8_block((const uint8_t *)L->w, L->s4, L->global,
                                                        rows, k, L->q8, L->q8_scale, NULL, &e)
                       : qplug_cuda__mxfp4_to_fp8_block((const uint8_t *)L->w, L->s4, rows, k,
                                                        L->q8, L->q8_scale, NULL, &e),
                    &e, "prepare");
            L->lt_ok = !st;
        }
        if (!st && cudaDeviceSynchronize() != cudaSuccess)
            st = host->api->error(host->ctx, QPLUG_ERR_DEVICE,
                                  "cuda prepare: FP4 weight conversion failed");
        break;
    }
    }
    if (st) {
        qp_cl_release(host, L);
        return st;
    }
    *out = L;
    return QPLUG_OK;
}

/* ------------------------------------------------------------------------ */
/* Apply                                                                    */
/* ------------------------------------------------------------------------ */

static bool qp_cl_io_dtype(const qplug_tensor *t)
{
    return t->dtype == QPLUG_DT_BF16 || t->dtype == QPLUG_DT_F32;
}

static qplug_status qp_cl_check(const qplug_host *host, const qp_cuda_lin *L,
                                const qplug_apply_args *a)
{
    if (a->struct_size < offsetof(qplug_apply_args, stream) + sizeof(void *))
        return host->api->error(host->ctx, QPLUG_ERR_ARGUMENT, "apply: args struct too small");
    if (a->op != QPLUG_OP_FORWARD)
        return host->api->error(host->ctx, QPLUG_ERR_ARGUMENT,
                                "apply: op %d is not FORWARD for a linear layer", (int)a->op);
    const qplug_tensor *x = a->x, *y = a->y;
    if (!x || !y || !x->data || !y->data)
        return host->api->error(host->ctx, QPLUG_ERR_ARGUMENT, "apply: x or y missing");
    if (x->device != QPLUG_DEVICE_CUDA || y->device != QPLUG_DEVICE_CUDA)
        return host->api->error(host->ctx, QPLUG_ERR_ARGUMENT,
                                "apply: x and y must both be CUDA tensors");
    if (!qp_cl_io_dtype(x) || !qp_cl_io_dtype(y))
        return host->api->error(host->ctx, QPLUG_ERR_DTYPE,
                                "apply: x and y must be BF16 or F32 on CUDA (x %s, y %s)",
                                qplug_dtype_name(x->dtype), qplug_dtype_name(y->dtype));
    int64_t in = L->groups * L->k, outc = L->rows;
    if (x->ndim != 2 || y->ndim != 2 || x->shape[0] < 1 || x->shape[1] != in ||
        y->shape[0] != x->shape[0] || y->shape[1] != outc)
        return host->api->error(host->ctx, QPLUG_ERR_SHAPE,
                                "apply: x must be [m, %lld] and y [m, %lld]", (long long)in,
                                (long long)outc);
    return QPLUG_OK;
}

/* The cuBLASLt plan for m, made on first use (host-side only: no device
 * synchronisation), kept in a small ring. Its activations are all groups'
 * xq [m, groups*k] and its output y [m, groups*n] in place; *batch says how
 * many groups one run covers. */
static qplug_status qp_cl_plan_for(const qplug_host *host, qp_cuda_lin *L, int64_t m,
                                   qplug_cuda__fp8_gemm **out, int64_t *batch)
{
    for (int i = 0; i < QP_CL_MAX_PLANS; i++)
        if (L->plans[i].g && L->plans[i].m == m) {
            *out = L->plans[i].g;
            *batch = L->plans[i].batch;
            return QPLUG_OK;
        }
    qplug_cuda__err e;
    qplug_cuda__fp8_gemm *g = NULL;
    int64_t G = L->groups, nb = 1;
    qplug_status st = QPLUG_ERR_UNSUPPORTED;
    if (G > 1 && QP_CL_LT_BATCHED) {
        st = qplug_cuda__fp8_gemm_create_ex(L->lt, m, L->n, L->k, G, G * L->k, G * L->n,
                                            QP_CL_LT_WORKSPACE, &g, &e);
        nb = st ? 1 : G;
    }
    if (st == QPLUG_ERR_UNSUPPORTED)
        st = qplug_cuda__fp8_gemm_create_ex(L->lt, m, L->n, L->k, 1, G * L->k, G * L->n,
                                            QP_CL_LT_WORKSPACE, &g, &e);
    if (st)
        return qp_cl_kernel_status(host, st, &e, "apply");
    qp_cl_plan *p = &L->plans[L->next_plan];
    L->next_plan = (L->next_plan + 1) % QP_CL_MAX_PLANS;
    if (p->g)
        qplug_cuda__fp8_gemm_destroy(p->g);
    p->g = g;
    p->m = m;
    p->batch = nb;
    *out = g;
    *batch = nb;
    return QPLUG_OK;
}

static qplug_status qp_cl_launch_status(const qplug_host *host, const char *what)
{
    cudaError_t ce = cudaGetLastError();
    if (ce != cudaSuccess)
        return host->api->error(host->ctx, QPLUG_ERR_DEVICE, "cuda apply: %s: %s", what,
                                cudaGetErrorString(ce));
    return QPLUG_OK;
}

static void qp_cl_simple(const qp_cuda_lin *L, int64_t g, int64_t m, const void *x, bool x_bf16,
                         int64_t ldx, const uint8_t *xq, int64_t ldxq, const float *xs, void *y,
                         bool y_bf16, int64_t ldy, cudaStream_t s)
{
    dim3 grid((unsigned)((L->n + 127) / 128), (unsigned)(m < 65535 ? m : 65535));
    qp_cl_simple_kernel<<<grid, 128, 0, s>>>(*L, g * L->n, m, L->n, x, x_bf16, ldx, xq, ldxq, xs,
                                             y, y_bf16, ldy);
}

/* One native group with quantized activations xq/xs ([m, k], [k/128][m])
 * into contiguous BF16 y [m, n], by the GEMV or the simple kernel (the
 * cuBLASLt path is qp_cl_apply_lt). */
static qplug_status qp_cl_fast_group(const qplug_host *host, qp_cuda_lin *L, int64_t g, int64_t m,
                                     const uint8_t *xq, const float *xs, __nv_bfloat16 *y,
                                     cudaStream_t s)
{
    int64_t n = L->n, k = L->k, kt = k / 128;
    qplug_cuda__err e;
    qplug_status st;
    if (m <= QPLUG_CUDA_GEMV_MAX_M && L->gemv_ok) {
        if (L->fmt == QP_CL_FP8)
            st = qplug_cuda__gemv_fp8((const uint8_t *)L->w + g * n * k,
                                      L->w_scale + (g * n / 128) * kt, xq, xs, m, n, k, y, s, &e);
        else if (L->fmt == QP_CL_MXFP4)
            st = qplug_cuda__gemv_mxfp4(L->w4r + g * n * k / 2, L->s4 + g * n * (k / 32), xq, xs,
                                        m, n, k, y, s, &e);
        else
            st = qplug_cuda__gemv_nvfp4(L->w4r + g * n * k / 2, L->s4 + g * n * (k / 16),
                                        L->global, xq, xs, m, n, k, y, s, &e);
        return qp_cl_kernel_status(host, st, &e, "apply");
    }
    qp_cl_simple(L, g, m, NULL, false, 0, xq, k, xs, y, true, n, s);
    return qp_cl_launch_status(host, "simple kernel");
}

/* The decode path (BF16 x and y, x 16-byte aligned, m <= 16): all groups
 * in one GEMV launch, reading x [m, G*k] and writing y [m, G*n] in place.
 * Small layers run fused (no scratch); where the GEMV prefers x quantized
 * once beforehand (wide layers, m > 8), the quantized x lives in
 * stream-ordered scratch for the call. */
static qplug_status qp_cl_apply_gemv(const qplug_host *host, qp_cuda_lin *L,
                                     const qplug_apply_args *a, cudaStream_t s)
{
    int64_t m = a->x->shape[0], G = L->groups;
    qplug_cuda__err e;
    const void *w = L->fmt == QP_CL_FP8 ? (const void *)L->w : (const void *)L->w4r;
    const void *ws = L->fmt == QP_CL_FP8 ? (const void *)L->w_scale : (const void *)L->s4;
    qplug_cuda__gemv_fmt f = L->fmt == QP_CL_FP8     ? QPLUG_CUDA_GEMV_FP8
                             : L->fmt == QP_CL_MXFP4 ? QPLUG_CUDA_GEMV_MXFP4
                                                     : QPLUG_CUDA_GEMV_NVFP4;
    qplug_cuda__scale_fmt af = L->ue8m0_act ? QPLUG_CUDA_SCALE_UE8M0 : QPLUG_CUDA_SCALE_F32;
    size_t bytes = qplug_cuda__gemv_bf16_scratch(f, af, m, L->n, L->k, G, QPLUG_CUDA_GEMV_AUTO);
    void *scratch = NULL;
    if (bytes && !qp_cl_malloc_async(&scratch, bytes, s))
        return host->api->error(host->ctx, QPLUG_ERR_NOMEM,
                                "cuda apply: no %zu bytes of scratch on the stream", bytes);
    qplug_status st = qp_cl_kernel_status(
        host,
        qplug_cuda__gemv_bf16(f, w, ws, L->global, a->x->data, G * L->k, af, m, L->n, L->k, G,
                              a->y->data, G * L->n, QPLUG_CUDA_GEMV_AUTO, scratch, s, &e),
        &e, "apply");
    if (scratch)
        cudaFreeAsync(scratch, s);
    return st;
}

/* The prefill path (BF16 x and y, cuBLASLt shape, m above the GEMV range).
 * Grouped layers up to QPLUG_CUDA_WGMMA_GROUPED_MAX_M rows run all groups in one
 * launch of the wgmma GEMM that quantizes x itself (same codes and scales as
 * act_quant; 1.4-5.4x faster than per-group cuBLASLt calls for wo_a at
 * m = 64..512 on H200, bench/results/h200_wgmma_v1_1.md, slower at 4096).
 * Otherwise one activation quantization over all groups, then one batched
 * cuBLASLt call or one per group, reading xq and writing y in place. */
static qplug_status qp_cl_apply_lt(const qplug_host *host, qp_cuda_lin *L,
                                   const qplug_apply_args *a, cudaStream_t s)
{
    int64_t m = a->x->shape[0], n = L->n, k = L->k, G = L->groups, kt = k / 128;
    const uint8_t *w = L->fmt == QP_CL_FP8 ? (const uint8_t *)L->w : L->q8;
    const float *ws = L->fmt == QP_CL_FP8 ? L->w_scale : L->q8_scale;
    qplug_cuda__err e;
    /* The wgmma GEMM writes y in pairs of BF16 (4-byte stores); a y view at
     * an odd element offset stays on the cuBLASLt path below. */
    if (G > 1 && m <= QPLUG_CUDA_WGMMA_GROUPED_MAX_M && (uintptr_t)a->y->data % 4 == 0 &&
        qplug_cuda__fp8_gemm_bf16x_supported(m, n, k, G))
        return qp_cl_kernel_status(
            host,
            qplug_cuda__fp8_gemm_bf16x(a->x->data, G * k, m, n, k, G,
                                       L->ue8m0_act ? QPLUG_CUDA_SCALE_UE8M0
                                                    : QPLUG_CUDA_SCALE_F32,
                                       w, ws, a->y->data, G * n, s, &e),
            &e, "apply");
    qplug_cuda__fp8_gemm *plan = NULL;
    int64_t batch = 1;
    qplug_status st = qp_cl_plan_for(host, L, m, &plan, &batch);
    if (st)
        return st;
    size_t xq_b = (size_t)(m * G * k), xs_b = (size_t)(m * G * kt) * sizeof(float);
    size_t off_xs = (xq_b + 255) & ~(size_t)255;
    size_t off_ws = off_xs + ((xs_b + 255) & ~(size_t)255), total = off_ws + QP_CL_LT_WORKSPACE;
    char *scratch = NULL;
    if (!qp_cl_malloc_async((void **)&scratch, total, s))
        return host->api->error(host->ctx, QPLUG_ERR_NOMEM,
                                "cuda apply: no %zu bytes of scratch on the stream", total);
    uint8_t *xq = (uint8_t *)scratch;
    float *xs = (float *)(scratch + off_xs);
    void *work = scratch + off_ws;
    st = qp_cl_kernel_status(
        host,
        qplug_cuda__act_quant_fp8(a->x->data, m, G * k,
                                  L->ue8m0_act ? QPLUG_CUDA_SCALE_UE8M0 : QPLUG_CUDA_SCALE_F32,
                                  xq, xs, s, &e),
        &e, "apply");
    __nv_bfloat16 *y = (__nv_bfloat16 *)a->y->data;
    for (int64_t g = 0; g < G && !st; g += batch)
        st = qp_cl_kernel_status(host,
                                 qplug_cuda__fp8_gemm_run(plan, w + g * n * k,
                                                          ws + (g * n / 128) * kt, xq + g * k,
                                                          xs + g * kt * m, y + g * n, work, s, &e),
                                 &e, "apply");
    cudaFreeAsync(scratch, s);
    return st;
}

/* ABI 1.2 pre-quantized x: E4M3 [m, G*k] and F32 scales [G*k/128][m] on
 * the device, y BF16 or F32 [m, G*n]. */
static qplug_status qp_cl_check_prequant(const qplug_host *host, const qp_cuda_lin *L,
                                         const qplug_apply_args *a, const qplug_tensor *xs)
{
    if (a->op != QPLUG_OP_FORWARD)
        return host->api->error(host->ctx, QPLUG_ERR_ARGUMENT,
                                "apply: op %d is not FORWARD for a linear layer", (int)a->op);
    const qplug_tensor *x = a->x, *y = a->y;
    if (!x || !y || !x->data || !y->data || !xs->data)
        return host->api->error(host->ctx, QPLUG_ERR_ARGUMENT, "apply: x, x_scale or y missing");
    if (x->device != QPLUG_DEVICE_CUDA || y->device != QPLUG_DEVICE_CUDA ||
        xs->device != QPLUG_DEVICE_CUDA)
        return host->api->error(host->ctx, QPLUG_ERR_ARGUMENT,
                                "apply: x, x_scale and y must all be CUDA tensors");
    if (x->dtype != QPLUG_DT_F8_E4M3 || xs->dtype != QPLUG_DT_F32 || !qp_cl_io_dtype(y))
        return host->api->error(host->ctx, QPLUG_ERR_DTYPE,
                                "apply: pre-quantized x must be F8_E4M3 with F32 x_scale and y "
                                "BF16 or F32 (x %s, x_scale %s, y %s)",
                                qplug_dtype_name(x->dtype), qplug_dtype_name(xs->dtype),
                                qplug_dtype_name(y->dtype));
    int64_t in = L->groups * L->k, outc = L->rows;
    if (x->ndim != 2 || y->ndim != 2 || xs->ndim != 2 || x->shape[0] < 1 ||
        x->shape[1] != in || y->shape[0] != x->shape[0] || y->shape[1] != outc ||
        xs->shape[0] != in / 128 || xs->shape[1] != x->shape[0])
        return host->api->error(host->ctx, QPLUG_ERR_SHAPE,
                                "apply: pre-quantized x must be [m, %lld], x_scale [%lld, m] and "
                                "y [m, %lld]",
                                (long long)in, (long long)(in / 128), (long long)outc);
    return QPLUG_OK;
}

/*
 * The pre-quantized path: the same kernels as the BF16 path after its own
 * quantization, fed from the caller's codes and scales, so wherever both
 * take the same kernel the result is bit-identical to the BF16 path given
 * x whose quantization gives those codes and scales:
 *   linear, m <= 16, GEMV shape    -> the GEMV on xq (the BF16 path's
 *                                     gemv_bf16 is bit-identical to act_quant
 *                                     + this GEMV for one group)
 *   m > 16, cuBLASLt shape, xq and
 *   scales 16-byte aligned         -> cuBLASLt per group, reading xq and the
 *                                     scales in place (no scratch besides its
 *                                     workspace)
 *   grouped, m <= 16, GEMV shape   -> per group: xq slice to scratch, GEMV,
 *                                     y staged (the BF16 path's one-launch
 *                                     GEMV may sum in another order)
 *   otherwise, and REFERENCE       -> the simple kernel per group
 * Grouped layers with 16 < m <= QPLUG_CUDA_WGMMA_GROUPED_MAX_M run the
 * fused-quantization wgmma GEMM on BF16 x, which takes no E4M3 input: the
 * pre-quantized call takes cuBLASLt there, equal to the BF16 path's result
 * to within the two GEMMs' fp32 summation orders, not bit for bit.
 */
static qplug_status qp_cl_apply_prequant(const qplug_host *host, qp_cuda_lin *L,
                                         const qplug_apply_args *a, const qplug_tensor *xst,
                                         cudaStream_t s)
{
    qplug_status st = qp_cl_check_prequant(host, L, a, xst);
    if (st)
        return st;
    int64_t m = a->x->shape[0], n = L->n, k = L->k, G = L->groups, kt = k / 128;
    const uint8_t *xq = (const uint8_t *)a->x->data;
    const float *xs = (const float *)xst->data;
    bool y_bf16 = a->y->dtype == QPLUG_DT_BF16;
    bool native = a->precision == QPLUG_PRECISION_NATIVE && L->fmt != QP_CL_F32;
    bool al = (uintptr_t)xq % 16 == 0 && (uintptr_t)xs % 16 == 0;
    qplug_cuda__err e;
    if (native && y_bf16 && al && L->lt_ok && m > QPLUG_CUDA_GEMV_MAX_M) {
        const uint8_t *w = L->fmt == QP_CL_FP8 ? (const uint8_t *)L->w : L->q8;
        const float *ws = L->fmt == QP_CL_FP8 ? L->w_scale : L->q8_scale;
        qplug_cuda__fp8_gemm *plan = NULL;
        int64_t batch = 1;
        st = qp_cl_plan_for(host, L, m, &plan, &batch);
        if (st)
            return st;
        void *work = NULL;
        if (!qp_cl_malloc_async(&work, QP_CL_LT_WORKSPACE, s))
            return host->api->error(host->ctx, QPLUG_ERR_NOMEM,
                                    "cuda apply: no %zu bytes of workspace on the stream",
                                    (size_t)QP_CL_LT_WORKSPACE);
        __nv_bfloat16 *y = (__nv_bfloat16 *)a->y->data;
        for (int64_t g = 0; g < G && !st; g += batch)
            st = qp_cl_kernel_status(
                host,
                qplug_cuda__fp8_gemm_run(plan, w + g * n * k, ws + (g * n / 128) * kt,
                                         xq + g * k, xs + g * kt * m, y + g * n, work, s, &e),
                &e, "apply");
        cudaFreeAsync(work, s);
        return st;
    }
    if (native && y_bf16 && al && L->gemv_ok && m <= QPLUG_CUDA_GEMV_MAX_M) {
        if (G == 1)
            return qp_cl_fast_group(host, L, 0, m, xq, xs, (__nv_bfloat16 *)a->y->data, s);
        size_t xq_b = (size_t)(m * k), off_yg = (xq_b + 255) & ~(size_t)255;
        size_t total = off_yg + (size_t)(m * n) * 2;
        char *scratch = NULL;
        if (!qp_cl_malloc_async((void **)&scratch, total, s))
            return host->api->error(host->ctx, QPLUG_ERR_NOMEM,
                                    "cuda apply: no %zu bytes of scratch on the stream", total);
        uint8_t *xg = (uint8_t *)scratch;
        __nv_bfloat16 *yg = (__nv_bfloat16 *)(scratch + off_yg);
        __nv_bfloat16 *y = (__nv_bfloat16 *)a->y->data;
        for (int64_t g = 0; g < G && !st; g++) {
            qp_cl_copy_kernel<uint8_t><<<(unsigned)((m * k + 255) / 256), 256, 0, s>>>(
                xq + g * k, G * k, xg, k, m, k);
            st = qp_cl_launch_status(host, "x copy");
            if (!st)
                st = qp_cl_fast_group(host, L, g, m, xg, xs + g * kt * m, yg, s);
            if (!st) {
                qp_cl_copy_kernel<__nv_bfloat16><<<(unsigned)((m * n + 255) / 256), 256, 0, s>>>(
                    yg, n, y + g * n, G * n, m, n);
                st = qp_cl_launch_status(host, "output copy");
            }
        }
        cudaFreeAsync(scratch, s);
        return st;
    }
    for (int64_t g = 0; g < G; g++)
        qp_cl_simple(L, g, m, NULL, false, 0, xq + g * k, G * k, xs + g * kt * m,
                     (char *)a->y->data + (size_t)(g * n) * (y_bf16 ? 2 : 4), y_bf16, G * n, s);
    return qp_cl_launch_status(host, "simple kernel");
}

static qplug_status qp_cl_apply(const qplug_host *host, qp_cuda_lin *L, const qplug_apply_args *a)
{
    if (a->struct_size >= offsetof(qplug_apply_args, stream) + sizeof(void *) &&
        qplug_apply_x_scale(a))
        return qp_cl_apply_prequant(host, L, a, qplug_apply_x_scale(a), (cudaStream_t)a->stream);
    qplug_status st = qp_cl_check(host, L, a);
    if (st)
        return st;
    cudaStream_t s = (cudaStream_t)a->stream;
    int64_t m = a->x->shape[0], n = L->n, k = L->k, G = L->groups;
    bool x_bf16 = a->x->dtype == QPLUG_DT_BF16, y_bf16 = a->y->dtype == QPLUG_DT_BF16;
    bool native = a->precision == QPLUG_PRECISION_NATIVE && L->fmt != QP_CL_F32;
    /* The fast quantization reads x with 16-byte loads; a less aligned x
     * (a view into a larger buffer) takes the generic quantization kernel. */
    bool x_al = (uintptr_t)a->x->data % 16 == 0;
    /* The one-launch GEMV puts the groups on the grid's z dimension
     * (at most 65535); more groups take the per-group path below. */
    if (native && x_bf16 && x_al && y_bf16 && L->gemv_ok && m <= QPLUG_CUDA_GEMV_MAX_M &&
        G <= 65535)
        return qp_cl_apply_gemv(host, L, a, s);
    if (native && x_bf16 && x_al && y_bf16 && L->lt_ok && m > QPLUG_CUDA_GEMV_MAX_M)
        return qp_cl_apply_lt(host, L, a, s);
    if (!native) {
        for (int64_t g = 0; g < G; g++)
            qp_cl_simple(L, g, m,
                         (const char *)a->x->data + (size_t)(g * k) * (x_bf16 ? 2 : 4), x_bf16,
                         G * k, NULL, 0, NULL,
                         (char *)a->y->data + (size_t)(g * n) * (y_bf16 ? 2 : 4), y_bf16, G * n,
                         s);
        return qp_cl_launch_status(host, "simple kernel");
    }
    /* Scratch: quantized x and scales of one group and, for groups > 1, a
     * BF16 y staging area (the GEMV writes contiguous rows). */
    bool fast = y_bf16;
    bool staged = G > 1;
    size_t xq_b = (size_t)(m * k), xs_b = (size_t)(m * (k / 128)) * sizeof(float);
    size_t yg_b = staged ? (size_t)(m * n) * 2 : 0;
    size_t off_xs = (xq_b + 255) & ~(size_t)255, off_yg = off_xs + ((xs_b + 255) & ~(size_t)255);
    size_t total = off_yg + yg_b;
    char *scratch = NULL;
    if (!qp_cl_malloc_async((void **)&scratch, total, s))
        return host->api->error(host->ctx, QPLUG_ERR_NOMEM,
                                "cuda apply: no %zu bytes of scratch on the stream", total);
    uint8_t *xq = (uint8_t *)scratch;
    float *xs = (float *)(scratch + off_xs);
    __nv_bfloat16 *yg = (__nv_bfloat16 *)(scratch + off_yg);
    qplug_cuda__err e;
    for (int64_t g = 0; g < G && !st; g++) {
        const char *xsrc = (const char *)a->x->data + (size_t)(g * k) * (x_bf16 ? 2 : 4);
        char *ydst = (char *)a->y->data + (size_t)(g * n) * (y_bf16 ? 2 : 4);
        /* Quantize this group's activations into contiguous xq / xs. */
        if (x_bf16 && fast && x_al) {
            st = qp_cl_kernel_status(
                host,
                qplug_cuda__act_quant_fp8_ld(xsrc, G * k, m, k,
                                             L->ue8m0_act ? QPLUG_CUDA_SCALE_UE8M0
                                                          : QPLUG_CUDA_SCALE_F32,
                                             xq, xs, s, &e),
                &e, "apply");
        } else {
            int64_t items = m * (k / 128);
            qp_cl_quant_kernel<<<(unsigned)((items + 7) / 8), 256, 0, s>>>(
                xsrc, x_bf16, G * k, m, k, L->ue8m0_act, xq, xs);
            st = qp_cl_launch_status(host, "activation quantization");
        }
        if (st)
            break;
        if (!fast) {
            qp_cl_simple(L, g, m, NULL, false, 0, xq, k, xs, ydst, false, G * n, s);
            st = qp_cl_launch_status(host, "simple kernel");
            continue;
        }
        st = qp_cl_fast_group(host, L, g, m, xq, xs, staged ? yg : (__nv_bfloat16 *)ydst, s);
        if (!st && staged) {
            int64_t cnt = m * n;
            qp_cl_copy_kernel<__nv_bfloat16><<<(unsigned)((cnt + 255) / 256), 256, 0, s>>>(
                yg, n, (__nv_bfloat16 *)ydst, G * n, m, n);
            st = qp_cl_launch_status(host, "output copy");
        }
    }
    cudaFreeAsync(scratch, s);
    return st;
}

#endif
