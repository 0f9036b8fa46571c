/* gemm_wgmma_bench: times qplug_cuda__fp8_gemm_bf16x (gemm_wgmma.cu, BF16 x
 * quantized inside the kernel) against the current prefill path, act_quant
 * (ue8m0 1x128) followed by cuBLASLt FP8 block-scaled GEMM, and against the
 * cuBLASLt GEMM alone on already quantized activations, in one process on
 * one GPU, at the DeepSeek V4 Flash and Pro layer shapes.
 *
 * Method (docs/performance.md): random operands (BF16 x in +-2^-4..2^4,
 * E4M3 weights without NaN, positive scales) in pools of rotating sets of
 * at least 160 MB, so operands come from HBM; 3 warm-up calls; CUDA events
 * around each call, median of 20. Grouped wo_a: ours is one launch; the
 * cuBLASLt path is one strided call per group (cuBLASLt refuses batching in
 * the block-scaled modes), as in the plugin. The outputs of ours and of
 * act_quant + cuBLASLt are compared (relative L2); the exact check against
 * float64 is tests/gpu/test_gpu_wgmma.c.
 *
 *   gemm_wgmma_bench [tag] [--quick | --diag] [f32]
 *
 * --quick: M = 512 and 4096 only. --diag: ours alone (no comparison, no
 * cuBLASLt) on three shapes at M = 64 and 4096, for the diagnostic builds
 * (QPLUG_WGMMA_DIAG, wrong results by design), with the time per CTA
 * k-block. "f32": F32 activation scales (ours and act_quant) instead of
 * UE8M0. */
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <chrono>
#include <vector>

#include <cublasLt.h>

#include "qplug_cuda.h"

#include "bench_pool.cuh"

struct point {
    int64_t m, n, k, g;
    pool x, w, ws, xq, xs;
    void *aq, *y;
    float *aqs;
    void *work;
    size_t work_bytes;
    qplug_cuda__fp8_gemm *plan;
};

static void fail(const char *what, const qplug_cuda__err &err)
{
    fprintf(stderr, "gemm_wgmma_bench: %s: %s\n", what, err.msg);
    exit(1);
}

/* 0: ours; 1: act_quant + cuBLASLt; 2: cuBLASLt alone on pooled xq. */
static qplug_cuda__scale_fmt ours_fmt = QPLUG_CUDA_SCALE_UE8M0;

static void call(point &p, int which, int i)
{
    qplug_cuda__err err = {{0}};
    int64_t G = p.g, m = p.m, n = p.n, k = p.k;
    if (which == 0) {
        if (qplug_cuda__fp8_gemm_bf16x(p.x.at(i), G * k, m, n, k, G, ours_fmt,
                                       p.w.at(i), (const float *)p.ws.at(i), p.y, G * n, NULL,
                                       &err) != QPLUG_OK)
            fail("fp8_gemm_bf16x", err);
        return;
    }
    const uint8_t *xq = which == 1 ? (const uint8_t *)p.aq : p.xq.at(i);
    const float *xs = which == 1 ? p.aqs : (const float *)p.xs.at(i);
    if (which == 1 && qplug_cuda__act_quant_fp8(p.x.at(i), m, G * k, ours_fmt, p.aq,
                                                 p.aqs, NULL, &err) != QPLUG_OK)
        fail("act_quant_fp8", err);
    for (int64_t g = 0; g < G; g++)
        if (qplug_cuda__fp8_gemm_run(p.plan, p.w.at(i) + g * n * k,
                                     (const float *)p.ws.at(i) + g * (n / 128) * (k / 128),
                                     xq + g * k, xs + g * (k / 128) * m,
                                     (uint16_t *)p.y + g * n, p.work, NULL, &err) != QPLUG_OK)
            fail("fp8_gemm_run", err);
}

static double median(std::vector<float> v)
{
    std::sort(v.begin(), v.end());
    size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static double time_us(point &p, int which)
{
    const int reps = 20;
    cudaEvent_t ev[2 * reps];
    for (int i = 0; i < 2 * reps; i++)
        CK(cudaEventCreate(&ev[i]));
    for (int i = 0; i < 3; i++)
        call(p, which, i);
    CK(cudaDeviceSynchronize());
    std::vector<float> t(reps);
    for (int r = 0; r < reps; r++) {
        CK(cudaEventRecord(ev[2 * r], NULL));
        call(p, which, r + 3);
        CK(cudaEventRecord(ev[2 * r + 1], NULL));
    }
    CK(cudaDeviceSynchronize());
    for (int r = 0; r < reps; r++)
        CK(cudaEventElapsedTime(&t[r], ev[2 * r], ev[2 * r + 1]));
    for (int i = 0; i < 2 * reps; i++)
        CK(cudaEventDestroy(ev[i]));
    return 1000.0 * median(t);
}

static double bf16f(uint16_t b)
{
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* --diag: ours alone at M = 64 (one wave of few CTAs: the time per CTA
 * k-block is the latency of one pipeline step) and M = 4096. */
static int run_diag(const char *tag)
{
    static const shape dshapes[] = {
        {"flash", "attn.wq_a", 1024, 4096, 1},
        {"flash", "ffn.w13", 4096, 4096, 1},
        {"pro", "attn.wo_b", 7168, 16384, 1},
    };
    printf("\n| variant | model | layer | M | N | K | CTAs | ours us | TFLOP/s | us per CTA k-block "
           "| host us per call |\n");
    printf("|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (const shape &sh : dshapes)
        for (int64_t m : {(int64_t)64, (int64_t)4096}) {
            point p;
            p.m = m;
            p.n = sh.n;
            p.k = sh.k;
            p.g = sh.g;
            size_t xb = (size_t)(m * sh.k) * 2, wb = (size_t)(sh.n * sh.k);
            int sets = (int)std::min(23.0, std::max(2.0, ceil(160e6 / (double)(xb + wb))));
            p.x = make_pool(xb, sets, 5, 11);
            p.w = make_pool(wb, sets, 1, 12);
            p.ws = make_pool((size_t)((sh.n / 128) * (sh.k / 128)) * 4, sets, 2, 13);
            CK(cudaMalloc(&p.y, (size_t)(m * sh.n) * 2));
            CK(cudaDeviceSynchronize());
            double t = time_us(p, 0);
            /* Host time per call (tensor-map encoding, attribute, launch),
             * 20 calls enqueued without waiting: if it exceeds the GPU time,
             * back-to-back calls are host-bound. */
            auto h0 = std::chrono::steady_clock::now();
            for (int r = 0; r < 20; r++)
                call(p, 0, r);
            double host = std::chrono::duration<double, std::micro>(
                              std::chrono::steady_clock::now() - h0)
                              .count() /
                          20.0;
            CK(cudaDeviceSynchronize());
            int64_t ctas = (m + 127) / 128 * (sh.n / 128), kt = sh.k / 128;
            double waves = ceil((double)ctas / 132.0);
            printf("| %s | %s | %s | %lld | %lld | %lld | %lld | %.1f | %.0f | %.3f | %.1f |\n", tag,
                   sh.model, sh.layer, (long long)m, (long long)sh.n, (long long)sh.k,
                   (long long)ctas, t, 2.0 * m * sh.n * sh.k / (t * 1e-6) / 1e12,
                   t / (waves * (double)kt), host);
            fflush(stdout);
            CK(cudaFree(p.x.base));
            CK(cudaFree(p.w.base));
            CK(cudaFree(p.ws.base));
            CK(cudaFree(p.y));
        }
    return 0;
}

int main(int argc, char **argv)
{
    const char *tag = argc > 1 ? argv[1] : "wgmma";
    bool quick = false, diag = false;
    for (int i = 2; i < argc; i++) {
        quick |= !strcmp(argv[i], "--quick");
        diag |= !strcmp(argv[i], "--diag");
        if (!strcmp(argv[i], "f32"))
            ours_fmt = QPLUG_CUDA_SCALE_F32;
    }
    if (diag)
        return run_diag(tag);
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    cublasLtHandle_t lt;
    if (cublasLtCreate(&lt) != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "gemm_wgmma_bench: cublasLtCreate failed\n");
        return 1;
    }
    printf("# gemm_wgmma_bench %s on %s (%d SMs), %s activation scales, median of 20\n\n", tag,
           prop.name, prop.multiProcessorCount,
           ours_fmt == QPLUG_CUDA_SCALE_F32 ? "f32" : "ue8m0");
    printf("| model | layer | M | N | K | G | flop floor us | ours us | aq+LT us | LT us | "
           "ours TFLOP/s | LT/ours | (aq+LT)/ours | rel diff |\n");
    printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    const int64_t ms_all[4] = {64, 128, 512, 4096};
    int nm = quick ? 2 : 4;
    const int64_t *ms = quick ? ms_all + 2 : ms_all;
    size_t work_bytes = (size_t)32 << 20;
    void *work;
    CK(cudaMalloc(&work, work_bytes));
    for (const shape &sh : shapes)
        for (int mi = 0; mi < nm; mi++) {
            point p;
            p.m = ms[mi];
            p.n = sh.n;
            p.k = sh.k;
            p.g = sh.g;
            int64_t G = p.g, m = p.m, n = p.n, k = p.k;
            size_t xb = (size_t)(m * G * k) * 2, wb = (size_t)(G * n * k);
            size_t wsb = (size_t)(G * (n / 128) * (k / 128)) * 4;
            size_t xqb = (size_t)(m * G * k), xsb = (size_t)(m * G * (k / 128)) * 4;
            int sets = (int)std::max<double>(2.0, ceil(160e6 / (double)(xb + wb + xqb)));
            sets = std::min(sets, 23);
            p.x = make_pool(xb, sets, 5, 11);
            p.w = make_pool(wb, sets, 1, 12);
            p.ws = make_pool(wsb, sets, 2, 13);
            p.xq = make_pool(xqb, sets, 1, 14);
            p.xs = make_pool(xsb, sets, 2, 15);
            CK(cudaMalloc(&p.aq, xqb));
            CK(cudaMalloc((void **)&p.aqs, xsb));
            CK(cudaMalloc(&p.y, (size_t)(m * G * n) * 2));
            p.work = work;
            p.work_bytes = work_bytes;
            qplug_cuda__err err = {{0}};
            if (qplug_cuda__fp8_gemm_create_ex(lt, m, n, k, 1, G * k, G * n, work_bytes, &p.plan,
                                               &err) != QPLUG_OK)
                fail("fp8_gemm_create_ex", err);
            CK(cudaDeviceSynchronize());

            size_t ny = (size_t)(m * G * n);
            std::vector<uint16_t> y0(ny), y1(ny);
            CK(cudaMemset(p.y, 0xff, ny * 2));
            call(p, 0, 0);
            CK(cudaMemcpy(y0.data(), p.y, ny * 2, cudaMemcpyDeviceToHost));
            CK(cudaMemset(p.y, 0xff, ny * 2));
            call(p, 1, 0);
            CK(cudaMemcpy(y1.data(), p.y, ny * 2, cudaMemcpyDeviceToHost));
            double num = 0, den = 0;
            for (size_t i = 0; i < ny; i++) {
                double a = bf16f(y0[i]), b = bf16f(y1[i]);
                num += (a - b) * (a - b);
                den += b * b;
            }
            double diff = sqrt(num / den);

            double t0 = time_us(p, 0), t1 = time_us(p, 1), t2 = time_us(p, 2);
            double flops = 2.0 * m * n * k * G;
            printf("| %s | %s | %lld | %lld | %lld | %lld | %.1f | %.1f | %.1f | %.1f | %.0f | %.2f "
                   "| %.2f | %.1e |\n",
                   sh.model, sh.layer, (long long)m, (long long)n, (long long)k, (long long)G,
                   flops / 1300e12 * 1e6, t0, t1, t2, flops / (t0 * 1e-6) / 1e12, t2 / t0, t1 / t0,
                   diff);
            fflush(stdout);
            qplug_cuda__fp8_gemm_destroy(p.plan);
            CK(cudaFree(p.x.base));
            CK(cudaFree(p.w.base));
            CK(cudaFree(p.ws.base));
            CK(cudaFree(p.xq.base));
            CK(cudaFree(p.xs.base));
            CK(cudaFree(p.aq));
            CK(cudaFree(p.aqs));
            CK(cudaFree(p.y));
        }
    CK(cudaFree(work));
    cublasLtDestroy(lt);
    return 0;
}
