/*
 * bench_moe.c - `qplug bench --moe`: the fused MoE of the plugins' CUDA
 * paths timed through the ABI (qplug_layer_create with synthetic experts,
 * qplug_layer_apply with device routing) at DeepSeek V4 Flash shapes
 * (E = 256, top-6, D = 4096, I = 2048).
 *
 * Per (path, tokens): the median of the timed calls (CUDA events around
 * each qplug_layer_apply, after warm-up, enqueued behind a spin kernel that
 * holds the stream until all are enqueued, so each event pair is GPU time;
 * bench_hold.cu), effective TFLOP/s =
 * 2 * tokens * top_k * 3 * D * I / time, GB/s = device bytes of the experts
 * the routing touches (weights and scales of w1, w3, w2) / time, and that
 * as a share of the device-to-device copy bandwidth (bytes read plus
 * written). The reference point of each row is the time the touched
 * experts' BF16 bytes take at copy bandwidth (what an ideal memory-bound
 * BF16 MoE would need). Routing is uniform random, distinct experts per
 * token, drawn on the host.
 */
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_abi.h"
#include "qplug_bench.h"

#define MOE_E 256
#define MOE_K 6
#define MOE_D 4096
#define MOE_I 2048

typedef struct moe_path {
    const char *label;
    const char *plugin;
    bool nvfp4, fp4_act;
} moe_path;

/* Launches one fused-MoE apply may enqueue (input check, routing
 * permutation, quantizations, two grouped GEMMs, combine, conversions,
 * scratch allocation and release): an upper estimate for the hold's
 * queue bound. */
#define MOE_LAUNCHES_PER_CALL 24

static int cmp_f(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* One timed call, as qplug_bench__time makes it. */
typedef struct moe_call {
    bench_abi_layers *L;
    int64_t m;
    void *x, *y, *ids, *wts;
    char *msg;
    size_t msg_size;
} moe_call;

static int moe_call_run(void *ctx, int rep)
{
    moe_call *mc = ctx;
    (void)rep;
    return bench_abi_moe_apply(mc->L, mc->m, mc->x, mc->y, mc->ids, mc->wts, mc->msg,
                               mc->msg_size);
}

static uint32_t rnd(uint32_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

/* Copy bandwidth in GB/s (bytes read plus written), median of 5. */
static double copy_bw(void)
{
    size_t bytes = (size_t)1 << 30;
    void *a = NULL, *b = NULL;
    float t[5];
    cudaEvent_t e0, e1;
    if (cudaMalloc(&a, bytes) != cudaSuccess || cudaMalloc(&b, bytes) != cudaSuccess) {
        cudaFree(a);
        return 0.0;
    }
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
    for (int r = 0; r < 5; r++) {
        cudaEventRecord(e0, NULL);
        cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, NULL);
        cudaEventRecord(e1, NULL);
        cudaEventSynchronize(e1);
        cudaEventElapsedTime(&t[r], e0, e1);
    }
    qsort(t, 5, sizeof t[0], cmp_f);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaFree(a);
    cudaFree(b);
    return 2.0 * (double)bytes / (t[2] * 1e-3) / 1e9;
}

int qplug_bench__moe_main(int argc, char **argv)
{
    const char *json = NULL, *md = NULL;
    int reps = 20;
    bool hold_stream = true;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--no-hold"))
            hold_stream = false;
        else if (!strcmp(argv[i], "--json") && i + 1 < argc)
            json = argv[++i];
        else if (!strcmp(argv[i], "--md") && i + 1 < argc)
            md = argv[++i];
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: qplug bench --moe [--reps N] [--json F] [--md F] "
                            "[--no-hold]\n");
            return 2;
        }
    }
    if (reps < 1 || reps > QPLUG_BENCH_MAX_REPS)
        reps = 20;
    char msg[512] = "";
    bench_abi *b = bench_abi_open(msg, sizeof msg);
    if (!b) {
        fprintf(stderr, "qplug bench --moe: %s\n", msg);
        return 1;
    }
    qplug_bench__hold *hold = NULL;
    if (hold_stream && !(hold = qplug_bench__hold_create())) {
        fprintf(stderr, "qplug bench --moe: no mapped pinned memory for the stream hold\n");
        bench_abi_close(b);
        return 1;
    }
    const char *timing =
        hold ? "each call between two CUDA events on the default stream, the reps enqueued behind "
               "a spin kernel that holds the stream until all are enqueued (GPU time per call; "
               "! = the hold timed out, time may include the host)"
             : "--no-hold: each call between two CUDA events on the default stream, reps "
               "enqueued back to back without holding the stream";
    struct cudaDeviceProp prop;
    cudaGetDeviceProperties(&prop, 0);
    double bw = copy_bw();
    static const int64_t ms[3] = {64, 512, 4096};
    static const moe_path paths[] = {
        {"fp8_block (W8A8)", "fp8_block", false, false},
        {"mxfp4 (W4A8)", "mxfp4", false, false},
        {"nvfp4 (W4A8)", "nvfp4", true, false},
        {"w4a4_megamoe mxfp4 W4A8", "w4a4_megamoe", false, false},
        {"w4a4_megamoe mxfp4 W4A4", "w4a4_megamoe", false, true},
    };
    int npaths = (int)(sizeof paths / sizeof paths[0]);
    int64_t mmax = ms[2];
    void *x = NULL, *y = NULL, *ids = NULL, *wts = NULL;
    int32_t *hids = malloc((size_t)(mmax * MOE_K) * sizeof(int32_t));
    float *hw = malloc((size_t)(mmax * MOE_K) * sizeof(float));
    FILE *fj = json ? fopen(json, "w") : NULL, *fm = md ? fopen(md, "w") : NULL;
    int rc = 0;
    if (!hids || !hw || cudaMalloc(&x, (size_t)(mmax * MOE_D) * 2) != cudaSuccess ||
        cudaMalloc(&y, (size_t)(mmax * MOE_D) * 2) != cudaSuccess ||
        cudaMalloc(&ids, (size_t)(mmax * MOE_K) * 4) != cudaSuccess ||
        cudaMalloc(&wts, (size_t)(mmax * MOE_K) * 4) != cudaSuccess ||
        qplug_bench__fill(x, (size_t)(mmax * MOE_D) * 2, QPLUG_BENCH_FILL_BF16, 5)) {
        fprintf(stderr, "qplug bench --moe: out of memory\n");
        rc = 1;
        goto out;
    }
    uint32_t s = 12345u;
    for (int64_t t = 0; t < mmax; t++)
        for (int j = 0; j < MOE_K; j++) {
            int32_t e;
            bool dup;
            do {
                e = (int32_t)(rnd(&s) % MOE_E);
                dup = false;
                for (int q = 0; q < j; q++)
                    dup |= hids[t * MOE_K + q] == e;
            } while (dup);
            hids[t * MOE_K + j] = e;
            hw[t * MOE_K + j] = 1.0f / MOE_K;
        }
    cudaMemcpy(ids, hids, (size_t)(mmax * MOE_K) * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(wts, hw, (size_t)(mmax * MOE_K) * 4, cudaMemcpyHostToDevice);
    printf("fused MoE through the ABI, %s, E=%d top-%d D=%d I=%d, copy bandwidth %.0f GB/s\n",
           prop.name, MOE_E, MOE_K, MOE_D, MOE_I, bw);
    if (fm) {
        fprintf(fm, "Fused MoE through the ABI on %s: E=%d, top-%d, D=%d, I=%d; median of %d "
                    "calls, %s; host us = median host wall time of one qplug_layer_apply while "
                    "enqueueing; copy bandwidth %.0f GB/s (read + written, median of 5 "
                    "synchronised copies).\n\n",
                prop.name, MOE_E, MOE_K, MOE_D, MOE_I, reps, timing, bw);
        fprintf(fm, "| path | tokens | experts touched | time (ms) | host us | TFLOP/s | GB/s "
                    "(touched) | %% of copy BW | BF16 experts at copy BW (ms) |\n|---|---|---|"
                    "---|---|---|---|---|---|\n");
        fflush(fm);
    }
    if (fj)
        fprintf(fj, "{\"device\": \"%s\", \"copy_gbps\": %.1f, \"stream_held\": %s, "
                    "\"timing\": \"%s\", \"rows\": [",
                prop.name, bw, hold ? "true" : "false", timing);
    bool first = true;
    for (int pi = 0; pi < npaths; pi++) {
        const moe_path *P = &paths[pi];
        size_t eb = 0;
        bench_abi_layers *L = bench_abi_moe_create(b, P->plugin, P->nvfp4, MOE_E, MOE_K, MOE_D,
                                                   MOE_I, P->fp4_act, &eb, msg, sizeof msg);
        if (!L) {
            printf("%-26s: %s\n", P->label, msg);
            if (strcmp(msg, "not claimed") != 0)
                rc = 1;
            continue;
        }
        for (int mi = 0; mi < 3; mi++) {
            int64_t m = ms[mi];
            bool touched[MOE_E] = {false};
            int nt = 0;
            for (int64_t i = 0; i < m * MOE_K; i++)
                if (!touched[hids[i]]) {
                    touched[hids[i]] = true;
                    nt++;
                }
            int bad = 0;
            for (int w = 0; w < 3 && !bad; w++)
                bad = bench_abi_moe_apply(L, m, x, y, ids, wts, msg, sizeof msg);
            cudaError_t ce = cudaDeviceSynchronize();
            moe_call mc = {L, m, x, y, ids, wts, msg, sizeof msg};
            qplug_bench__timing T;
            if (!bad && ce == cudaSuccess)
                bad = qplug_bench__time(hold, moe_call_run, &mc, 0, reps, MOE_LAUNCHES_PER_CALL,
                                        &T);
            if (bad || ce != cudaSuccess) {
                ce = cudaGetLastError();
                printf("%-26s m=%lld: FAILED: %s\n", P->label, (long long)m,
                       ce != cudaSuccess ? cudaGetErrorString(ce) : msg);
                rc = 1;
                break;
            }
            const char *mk = hold && T.not_held > 0 ? "!" : "";
            double ms_t = T.gpu_us * 1e-3;
            double flop = 2.0 * (double)m * MOE_K * 3.0 * MOE_D * MOE_I;
            double tflops = flop / (ms_t * 1e-3) / 1e12;
            double bytes = (double)nt * (double)eb;
            double gbps = bytes / (ms_t * 1e-3) / 1e9;
            double ref_ms = (double)nt * 3.0 * MOE_D * MOE_I * 2.0 / (bw * 1e9) * 1e3;
            printf("%-26s m=%5lld touched %3d  %8.3f ms%s (host %6.1f us)  %7.1f TFLOP/s  "
                   "%6.0f GB/s  %5.1f%% of copy BW  (BF16 at copy BW %.3f ms)\n",
                   P->label, (long long)m, nt, ms_t, mk, T.host_us, tflops, gbps,
                   100.0 * gbps / bw, ref_ms);
            if (fm) {
                fprintf(fm, "| %s | %lld | %d | %.3f%s | %.1f | %.1f | %.0f | %.1f%% | %.3f |\n",
                        P->label, (long long)m, nt, ms_t, mk, T.host_us, tflops, gbps,
                        100.0 * gbps / bw, ref_ms);
                fflush(fm);
            }
            if (fj) {
                fprintf(fj, "%s\n {\"path\": \"%s\", \"tokens\": %lld, \"experts_touched\": %d, "
                            "\"ms\": %.4f, \"host_us\": %.2f, \"held\": %s, \"tflops\": %.2f, "
                            "\"gbps\": %.1f, \"pct_copy\": %.2f, \"bf16_copy_ms\": %.4f}",
                        first ? "" : ",", P->label, (long long)m, nt, ms_t, T.host_us,
                        T.held ? "true" : "false", tflops, gbps, 100.0 * gbps / bw, ref_ms);
                first = false;
            }
        }
        bench_abi_destroy(L);
    }
    if (fj)
        fprintf(fj, "\n]}\n");
out:
    if (fj)
        fclose(fj);
    if (fm)
        fclose(fm);
    cudaFree(x);
    cudaFree(y);
    cudaFree(ids);
    cudaFree(wts);
    free(hids);
    free(hw);
    qplug_bench__hold_destroy(hold);
    bench_abi_close(b);
    return rc;
}
