/*
 * bench/bench_prequant.c - the issue-5 prefill target with the activation
 * quantization moved into its producer (ABI 1.2 pre-quantized x).
 *
 * For each RMSNorm-fed linear of DeepSeek V4 (wq_a and wkv after attn_norm,
 * wq_b after q_norm, the shared expert's gate_up after ffn_norm) and each
 * plugin (fp8_block with E8M0 scales, mxfp4, nvfp4), at prefill sizes m,
 * all through qplug_layer_apply on the legacy default stream:
 *   t0  = RMSNorm BF16 alone
 *   t1  = RMSNorm BF16 + apply(BF16 x)               (today's path)
 *   t2  = RMSNorm+quant + apply(pre-quantized x)      (ABI 1.2)
 *   tLt = cuBLASLt FP8 block-scaled GEMM alone on the same shape
 * and the ratios tLt / (t1 - t0) (the target as measured before) and
 * tLt / (t2 - t0) (the target's ratio with the quantization moved into the
 * producer: >= 1 meets it). Method (performance.md): CUDA events around
 * each timed call, 5 warm-ups, median of 30, inputs rotated over buffers
 * that together exceed the 60 MB L2, random inputs. Before timing, the
 * pre-quantized call is checked bit for bit against the BF16 call on x
 * whose quantization gives the same codes (act_quant of the BF16 RMSNorm
 * output), with y poisoned before each call.
 *
 * Standalone for now (main below, target qplug_bench_prequant): `qplug
 * bench` is being reworked; prequant_bench_run is the one function its
 * table hook will call.
 */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include "qplug/host.h"
#include "qplug/registry.h"
#include "qplug_cuda.h"

#define PQ_WARM 5
#define PQ_RUNS 30
#define PQ_L2_BYTES ((size_t)60 << 20)

typedef struct pq_shape {
    const char *model, *layer;
    int64_t n, k;
} pq_shape;

/* n x k of the norm-fed linears (plugins/common_cuda/bench_pool.cuh). */
static const pq_shape PQ_SHAPES[] = {
    {"flash", "attn.wq_a", 1024, 4096}, {"flash", "attn.wkv", 512, 4096},
    {"flash", "attn.wq_b", 32768, 1024}, {"flash", "ffn.w13", 4096, 4096},
    {"pro", "attn.wq_a", 1536, 7168},   {"pro", "attn.wkv", 512, 7168},
};

/* ---- synthetic checkpoint tensors -------------------------------------- */

typedef struct pq_src {
    qplug_tensor t[4];
    char names[4][32];
    int count;
    uint64_t seed;
} pq_src;

static uint64_t pq_rand(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Random bytes of a tensor kind: E4M3 codes without NaN, E8M0 exponents
 * near 2^-7, NVFP4 E4M3 block scales around 1, packed FP4 anything. */
static void pq_fill(uint8_t *p, size_t n, int kind, uint64_t seed)
{
    uint64_t s = seed | 1;
    for (size_t i = 0; i < n; i++) {
        uint8_t b = (uint8_t)pq_rand(&s);
        if (kind == 1 && (b & 0x7f) == 0x7f)
            b = 0x38;
        else if (kind == 2)
            b = (uint8_t)(118 + b % 6);
        else if (kind == 3)
            b = (uint8_t)(0x30 + b % 16);
        p[i] = b;
    }
}

static const qplug_tensor *pq_source(void *user, const qplug_layer_desc *l, const char *slot,
                                     const char **file)
{
    pq_src *src = user;
    *file = "synthetic";
    for (int i = 0; i < src->count; i++)
        if (!strcmp(src->names[i], slot))
            return &src->t[i];
    if (src->count == 4)
        return NULL;
    qplug_tensor t;
    memset(&t, 0, sizeof t);
    t.ndim = 2;
    t.device = QPLUG_DEVICE_CPU;
    t.shape[0] = l->n;
    int kind = 0;
    if (!strcmp(slot, "weight")) {
        bool fp8 = l->quant == QPLUG_QUANT_FP8_BLOCK;
        t.dtype = fp8 ? QPLUG_DT_F8_E4M3 : QPLUG_DT_U8;
        t.shape[1] = fp8 ? l->k : l->k / 2;
        kind = fp8 ? 1 : 0;
    } else if (!strcmp(slot, "scale")) {
        t.dtype = QPLUG_DT_F8_E8M0;
        bool fp8 = l->quant == QPLUG_QUANT_FP8_BLOCK;
        t.shape[0] = fp8 ? (l->n + 127) / 128 : l->n;
        t.shape[1] = fp8 ? (l->k + 127) / 128 : l->k / 32;
        kind = 2;
    } else if (!strcmp(slot, "weight_scale")) {
        t.dtype = QPLUG_DT_F8_E4M3;
        t.shape[1] = l->k / 16;
        kind = 3;
    } else if (!strcmp(slot, "weight_scale_2") || !strcmp(slot, "input_scale")) {
        t.dtype = QPLUG_DT_F32;
        t.ndim = 0;
    } else {
        return NULL;
    }
    size_t bytes = t.ndim == 0 ? 4 : (size_t)(t.shape[0] * t.shape[1]);
    t.data = malloc(bytes);
    if (!t.data)
        return NULL;
    if (t.ndim == 0)
        *(float *)t.data = !strcmp(slot, "input_scale") ? 1.0f : 0.0123f;
    else
        pq_fill(t.data, bytes, kind, src->seed + (uint64_t)src->count * 977u);
    snprintf(src->names[src->count], sizeof src->names[0], "%s", slot);
    t.name = src->names[src->count];
    src->t[src->count] = t;
    return &src->t[src->count++];
}

static void pq_src_free(pq_src *src)
{
    for (int i = 0; i < src->count; i++)
        free((void *)src->t[i].data);
    src->count = 0;
}

/* ---- timing ------------------------------------------------------------ */

typedef struct pq_bufs {
    int nb;                 /* rotation depth */
    void *xin[8];           /* BF16 [m, k] RMSNorm inputs */
    void *xn[8];            /* BF16 RMSNorm outputs */
    void *xq[8];            /* E4M3 [m, k] */
    float *xs[8];           /* [k/128][m] */
    void *wn;               /* BF16 [k] norm weight */
    void *y, *y2;           /* BF16 [m, n] */
} pq_bufs;

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

typedef enum pq_what { PQ_T0, PQ_T1, PQ_T2, PQ_TLT, PQ_TNQ } pq_what;

typedef struct pq_ctx {
    qplug_layer_inst *l;
    pq_bufs *b;
    int64_t m, n, k;
    qplug_cuda__fp8_gemm *plan;
    void *wq;
    float *wqs;
    void *work;
    qplug_cuda__scale_fmt afmt;
} pq_ctx;

static int pq_apply(pq_ctx *c, void *x, qplug_dtype xdt, const float *xs, void *y)
{
    qplug_tensor tx, ty, ts;
    memset(&tx, 0, sizeof tx);
    tx.dtype = xdt;
    tx.device = QPLUG_DEVICE_CUDA;
    tx.ndim = 2;
    tx.shape[0] = c->m;
    tx.shape[1] = c->k;
    tx.data = x;
    ts = tx;
    ts.dtype = QPLUG_DT_F32;
    ts.shape[0] = c->k / 128;
    ts.shape[1] = c->m;
    ts.data = (void *)xs;
    ty = tx;
    ty.dtype = QPLUG_DT_BF16;
    ty.shape[1] = c->n;
    ty.data = y;
    qplug_apply_args a;
    memset(&a, 0, sizeof a);
    a.struct_size = sizeof a;
    a.op = QPLUG_OP_FORWARD;
    a.precision = QPLUG_PRECISION_NATIVE;
    a.x = &tx;
    a.y = &ty;
    a.x_scale = xs ? &ts : NULL;
    qplug_err err;
    if (qplug_layer_apply(c->l, &a, &err) != QPLUG_OK) {
        fprintf(stderr, "apply: %s\n", err.msg);
        return 1;
    }
    return 0;
}

static int pq_once(pq_ctx *c, pq_what w, int i)
{
    pq_bufs *b = c->b;
    int j = i % b->nb;
    const float eps = 1e-6f;
    qplug_cuda__err e;
    switch (w) {
    case PQ_T0:
        return qplug_cuda__rmsnorm_bf16(b->xin[j], c->k, c->m, c->k, b->wn, eps, b->xn[j], c->k,
                                        NULL, &e) != QPLUG_OK;
    case PQ_T1:
        if (qplug_cuda__rmsnorm_bf16(b->xin[j], c->k, c->m, c->k, b->wn, eps, b->xn[j], c->k,
                                     NULL, &e))
            return 1;
        return pq_apply(c, b->xn[j], QPLUG_DT_BF16, NULL, b->y);
    case PQ_T2:
        if (qplug_cuda__rmsnorm_quant(b->xin[j], c->k, c->m, c->k, b->wn, eps, c->afmt, b->xq[j],
                                      b->xs[j], NULL, &e))
            return 1;
        return pq_apply(c, b->xq[j], QPLUG_DT_F8_E4M3, b->xs[j], b->y);
    case PQ_TNQ:
        return qplug_cuda__rmsnorm_quant(b->xin[j], c->k, c->m, c->k, b->wn, eps, c->afmt,
                                         b->xq[j], b->xs[j], NULL, &e) != QPLUG_OK;
    case PQ_TLT:
        return qplug_cuda__fp8_gemm_run(c->plan, c->wq, c->wqs, b->xq[j], b->xs[j], b->y,
                                        c->work, NULL, &e) != QPLUG_OK;
    }
    return 1;
}

/* Median milliseconds of PQ_RUNS timed calls after PQ_WARM warm-ups; NAN
 * on failure. */
static float pq_time(pq_ctx *c, pq_what w)
{
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    float t[PQ_RUNS];
    float med = NAN;
    for (int i = 0; i < PQ_WARM; i++)
        if (pq_once(c, w, i))
            goto out;
    for (int i = 0; i < PQ_RUNS; i++) {
        cudaEventRecord(e0, NULL);
        if (pq_once(c, w, i + PQ_WARM))
            goto out;
        cudaEventRecord(e1, NULL);
        cudaEventSynchronize(e1);
        cudaEventElapsedTime(&t[i], e0, e1);
    }
    qsort(t, PQ_RUNS, sizeof t[0], cmp_float);
    med = t[PQ_RUNS / 2];
out:
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    if (cudaDeviceSynchronize() != cudaSuccess)
        med = NAN;
    return med;
}

static uint16_t pq_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static void *pq_dev_random_bf16(size_t count, uint64_t seed, double scale)
{
    uint16_t *h = malloc(count * 2);
    void *d = NULL;
    if (!h)
        return NULL;
    uint64_t s = seed | 1;
    for (size_t i = 0; i < count; i++) {
        /* Sum of uniforms: roughly normal, cheap. */
        double u = 0.0;
        for (int t = 0; t < 4; t++)
            u += (double)(pq_rand(&s) >> 11) / 9007199254740992.0 - 0.5;
        h[i] = pq_bf16((float)(u * scale));
    }
    if (cudaMalloc(&d, count * 2) == cudaSuccess)
        cudaMemcpy(d, h, count * 2, cudaMemcpyHostToDevice);
    free(h);
    return d;
}

/* Checks that the pre-quantized call gives bit for bit the BF16 call's y
 * when the codes are act_quant's of the same BF16 x. 1 = equal, 0 = not,
 * -1 = could not run. */
static int pq_bitexact(pq_ctx *c)
{
    pq_bufs *b = c->b;
    qplug_cuda__err e;
    size_t ny = (size_t)(c->m * c->n) * 2;
    if (qplug_cuda__rmsnorm_bf16(b->xin[0], c->k, c->m, c->k, b->wn, 1e-6f, b->xn[0], c->k, NULL,
                                 &e) ||
        qplug_cuda__act_quant_fp8(b->xn[0], c->m, c->k, c->afmt, b->xq[0], b->xs[0], NULL, &e))
        return -1;
    cudaMemset(b->y, 0xff, ny);
    cudaMemset(b->y2, 0xff, ny);
    if (pq_apply(c, b->xn[0], QPLUG_DT_BF16, NULL, b->y) ||
        pq_apply(c, b->xq[0], QPLUG_DT_F8_E4M3, b->xs[0], b->y2))
        return -1;
    uint16_t *h1 = malloc(ny), *h2 = malloc(ny);
    int r = -1;
    if (h1 && h2 && cudaDeviceSynchronize() == cudaSuccess &&
        cudaMemcpy(h1, b->y, ny, cudaMemcpyDeviceToHost) == cudaSuccess &&
        cudaMemcpy(h2, b->y2, ny, cudaMemcpyDeviceToHost) == cudaSuccess) {
        r = memcmp(h1, h2, ny) == 0;
        /* Poison left anywhere means a path did not write y. */
        for (size_t i = 0; i < ny / 2 && r == 1; i++)
            if (h1[i] == 0xffff)
                r = 0;
    }
    free(h1);
    free(h2);
    return r;
}

/* ---- the one function the bench calls ---------------------------------- */

/* Runs every (plugin, shape, m) row and prints one table to `out`; returns
 * the number of rows that failed to run or were not bit-exact. */
int prequant_bench_run(FILE *out, const int64_t *ms, int nms)
{
    qplug_err err;
    qplug_registry *reg = NULL;
    qplug_runtime *rt = NULL;
    int failures = 0;
    if (qplug_registry_create(&reg, &err) || qplug_registry_load_default(reg, NULL, &err) ||
        qplug_runtime_create(NULL, QPLUG_DEVICE_CUDA, 0, &rt, &err)) {
        fprintf(stderr, "setup: %s\n", err.msg);
        qplug_registry_destroy(reg);
        return 1;
    }
    /* The runtime's cuBLASLt handle is internal to the core; the baseline
     * GEMM gets a handle of its own. */
    cublasLtHandle_t lt = NULL;
    if (cublasLtCreate(&lt) != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "setup: no cuBLASLt handle\n");
        qplug_runtime_destroy(rt);
        qplug_registry_destroy(reg);
        return 1;
    }
    fprintf(out, "| model | layer | n x k | plugin | act form | m | norm bf16 us | norm+quant us "
                 "| norm GB/s | norm+quant GB/s | t1 us | t2 us | LT fp8 us | LT/(t1-t0) | LT/(t2-t0) | "
                 "bitexact |\n");
    fprintf(out, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    static const char *plugins[3] = {"fp8_block", "mxfp4", "nvfp4"};
    for (size_t si = 0; si < sizeof PQ_SHAPES / sizeof PQ_SHAPES[0]; si++) {
        const pq_shape *sh = &PQ_SHAPES[si];
        for (int pi = 0; pi < 3; pi++) {
            const qplug_plugin *p = qplug_registry_find(reg, plugins[pi]);
            if (!p)
                continue;
            qplug_layer_desc d;
            memset(&d, 0, sizeof d);
            d.struct_size = sizeof d;
            d.name = "layers.0.bench.prequant";
            d.kind = QPLUG_LAYER_LINEAR;
            d.quant = pi == 0 ? QPLUG_QUANT_FP8_BLOCK : pi == 1 ? QPLUG_QUANT_MXFP4
                                                                : QPLUG_QUANT_NVFP4;
            d.weight_dtype = pi == 0 ? QPLUG_DT_F8_E4M3 : QPLUG_DT_U8;
            d.scale_dtype = pi == 2 ? QPLUG_DT_F8_E4M3 : QPLUG_DT_F8_E8M0;
            d.device = QPLUG_DEVICE_CUDA;
            d.n = sh->n;
            d.k = sh->k;
            d.groups = 1;
            pq_src src;
            memset(&src, 0, sizeof src);
            src.seed = 1234 + si * 10 + (uint64_t)pi;
            qplug_layer_inst *l = NULL;
            if (p->score(&d) <= 0 || qplug_layer_create(rt, p, &d, pq_source, &src, &l, &err)) {
                fprintf(out, "| %s | %s | %lldx%lld | %s | - | - | not claimed or failed: %s |\n",
                        sh->model, sh->layer, (long long)sh->n, (long long)sh->k, plugins[pi],
                        l ? "" : err.msg);
                pq_src_free(&src);
                continue;
            }
            qplug_act_format af = qplug_layer_act_format(l);
            for (int mi = 0; mi < nms; mi++) {
                int64_t m = ms[mi], n = sh->n, k = sh->k;
                pq_bufs b;
                memset(&b, 0, sizeof b);
                size_t xbytes = (size_t)(m * k) * 2;
                b.nb = (int)((2 * PQ_L2_BYTES) / xbytes + 1);
                if (b.nb > 8)
                    b.nb = 8;
                bool ok = true;
                for (int j = 0; j < b.nb && ok; j++) {
                    b.xin[j] = pq_dev_random_bf16((size_t)(m * k), 99 + (uint64_t)j, 3.0);
                    ok = b.xin[j] && cudaMalloc(&b.xn[j], xbytes) == cudaSuccess &&
                         cudaMalloc(&b.xq[j], (size_t)(m * k)) == cudaSuccess &&
                         cudaMalloc((void **)&b.xs[j], (size_t)(m * k / 128) * 4) == cudaSuccess;
                }
                b.wn = pq_dev_random_bf16((size_t)k, 7, 1.0);
                ok = ok && b.wn && cudaMalloc(&b.y, (size_t)(m * n) * 2) == cudaSuccess &&
                     cudaMalloc(&b.y2, (size_t)(m * n) * 2) == cudaSuccess;
                pq_ctx c = {l, &b, m, n, k, NULL, NULL, NULL, NULL,
                            af == QPLUG_ACT_FORMAT_E4M3_1X128_UE8M0 ? QPLUG_CUDA_SCALE_UE8M0
                                                                    : QPLUG_CUDA_SCALE_F32};
                qplug_cuda__err e;
                ok = ok && cudaMalloc(&c.wq, (size_t)(n * k)) == cudaSuccess &&
                     cudaMalloc((void **)&c.wqs, (size_t)((n / 128) * (k / 128)) * 4) ==
                         cudaSuccess &&
                     cudaMalloc(&c.work, (size_t)32 << 20) == cudaSuccess;
                if (ok) {
                    /* Random FP8 weights for the library baseline. */
                    uint8_t *hw = malloc((size_t)(n * k));
                    float *hs = malloc((size_t)((n / 128) * (k / 128)) * 4);
                    ok = hw && hs;
                    if (ok) {
                        pq_fill(hw, (size_t)(n * k), 1, 555);
                        for (int64_t i = 0; i < (n / 128) * (k / 128); i++)
                            hs[i] = 1.0f / 64.0f;
                        cudaMemcpy(c.wq, hw, (size_t)(n * k), cudaMemcpyHostToDevice);
                        cudaMemcpy(c.wqs, hs, (size_t)((n / 128) * (k / 128)) * 4,
                                   cudaMemcpyHostToDevice);
                    }
                    free(hw);
                    free(hs);
                }
                ok = ok && !qplug_cuda__fp8_gemm_create(lt, m, n, k, (size_t)32 << 20, &c.plan, &e);
                /* Fill xq/xs of every buffer once, so the LT-alone timing
                 * reads real codes. */
                for (int j = 0; j < b.nb && ok; j++)
                    ok = !qplug_cuda__rmsnorm_quant(b.xin[j], k, m, k, b.wn, 1e-6f, c.afmt,
                                                    b.xq[j], b.xs[j], NULL, &e);
                int exact = ok && af != QPLUG_ACT_FORMAT_NONE ? pq_bitexact(&c) : -1;
                float t0 = ok ? pq_time(&c, PQ_T0) : NAN;
                float tnq = ok ? pq_time(&c, PQ_TNQ) : NAN;
                float t1 = ok ? pq_time(&c, PQ_T1) : NAN;
                float t2 = ok && af != QPLUG_ACT_FORMAT_NONE ? pq_time(&c, PQ_T2) : NAN;
                float tl = ok ? pq_time(&c, PQ_TLT) : NAN;
                fprintf(out,
                        "| %s | %s | %lldx%lld | %s | %s | %lld | %.1f | %.1f | %.0f | %.0f | "
                        "%.1f | %.1f | %.1f | %.2f | %.2f | %s |\n",
                        sh->model, sh->layer, (long long)n, (long long)k, plugins[pi],
                        qplug_act_format_name(af), (long long)m, t0 * 1e3, tnq * 1e3,
                        (double)(m * k * 4 + k * 2) / (t0 * 1e-3) / 1e9,
                        (double)(m * k * 3 + m * k / 32 + k * 2) / (tnq * 1e-3) / 1e9, t1 * 1e3,
                        t2 * 1e3, tl * 1e3, tl / (t1 - t0), tl / (t2 - t0),
                        exact == 1 ? "yes" : exact == 0 ? "NO" : "n/a");
                fflush(out);
                failures += !ok || exact == 0 || isnan(t2);
                if (c.plan)
                    qplug_cuda__fp8_gemm_destroy(c.plan);
                cudaFree(c.wq), cudaFree(c.wqs), cudaFree(c.work);
                for (int j = 0; j < b.nb; j++)
                    cudaFree(b.xin[j]), cudaFree(b.xn[j]), cudaFree(b.xq[j]), cudaFree(b.xs[j]);
                cudaFree(b.wn), cudaFree(b.y), cudaFree(b.y2);
            }
            qplug_layer_destroy(l);
            pq_src_free(&src);
        }
    }
    /* The kernels alone against their byte floors (copy bandwidth of the
     * GPU measured in the same run with cudaMemcpy device to device). */
    {
        int64_t m = 4096, k = 4096;
        size_t bytes = (size_t)(m * k) * 2;
        void *a = NULL, *bb = NULL;
        float ms_copy = NAN;
        if (cudaMalloc(&a, bytes) == cudaSuccess && cudaMalloc(&bb, bytes) == cudaSuccess) {
            cudaEvent_t e0, e1;
            cudaEventCreate(&e0);
            cudaEventCreate(&e1);
            float t[PQ_RUNS];
            for (int i = 0; i < PQ_RUNS + PQ_WARM; i++) {
                cudaEventRecord(e0, NULL);
                cudaMemcpy(i % 2 ? a : bb, i % 2 ? bb : a, bytes, cudaMemcpyDeviceToDevice);
                cudaEventRecord(e1, NULL);
                cudaEventSynchronize(e1);
                if (i >= PQ_WARM)
                    cudaEventElapsedTime(&t[i - PQ_WARM], e0, e1);
            }
            qsort(t, PQ_RUNS, sizeof t[0], cmp_float);
            ms_copy = t[PQ_RUNS / 2];
            cudaEventDestroy(e0);
            cudaEventDestroy(e1);
        }
        cudaFree(a);
        cudaFree(bb);
        fprintf(out, "\ncopy bandwidth (D2D, %zu MB read + written): %.0f GB/s\n", bytes >> 20,
                2.0 * (double)bytes / (ms_copy * 1e-3) / 1e9);
    }
    cublasLtDestroy(lt);
    qplug_runtime_destroy(rt);
    qplug_registry_destroy(reg);
    return failures;
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    static const int64_t ms[3] = {64, 512, 4096};
    int f = prequant_bench_run(stdout, ms, 3);
    printf("\n%d rows failed or not bit-exact\n", f);
    return f ? 1 : 0;
}
