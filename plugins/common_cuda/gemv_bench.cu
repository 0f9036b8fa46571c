/* gemv_bench: times the decode path of gemv.cu at the DeepSeek V4 Flash and
 * Pro layer shapes for m = 1 and 16, in one process on one GPU, five ways:
 *   q+gemv      act_quant_fp8 then the unfused GEMV, once per group (the v5
 *               decode path; the plugins' ABI path also staged grouped y),
 *   gemv alone  the unfused GEMV on pre-quantized activations (v5 "core"),
 *   auto        qplug_cuda__gemv_bf16 as the plugins call it (it picks),
 *   fused       the same, forced to quantize inside the GEMV,
 *   unfused     the same, forced to quantize once into scratch first;
 * the last three run all groups of a grouped layer in one GEMV launch.
 * Activation scales: UE8M0 for fp8_block and mxfp4, F32 for nvfp4 (what the
 * plugins use).
 *
 * Method (docs/performance.md): random operands in pools of rotating sets
 * over >= 160 MB, so weights come from HBM; warm-up first; two timings per
 * point: (1) CUDA events around each call, median of 20, launch gaps
 * included; (2) the median of 5 replays of a CUDA graph of one call per set
 * of the pool, per call, which is how a decode step runs. Bytes counted:
 * weights and their scales. The copy bandwidth is a 1 GiB device-to-device
 * copy (read + write) in this run. "diff" is the relative L2 difference
 * between the fused and the unfused outputs (0 when bit-identical; one
 * launch geometry, so the same order of additions).
 *
 * GEMV_BENCH_WAYS (environment) lists the ways to time as digits (default
 * "01234"); the others print as 0 us, so that several variants fit in one
 * device call. GEMV_BENCH_ONLY (environment), when set, is a comma-separated
 * list of layer names ("wq_b,wo_b"): only layers whose name contains one of
 * them are timed. */
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <vector>

#include "qplug_cuda.h"

#include "bench_pool.cuh"

struct point {
    int64_t m, n, k, g;
    int fmt; /* 0 fp8, 1 mxfp4, 2 nvfp4 */
    pool w, s, x, xq, xs, y;
};

/* One call of way `ver` on set i: 0 q+gemv per group, 1 gemv alone, and
 * qplug_cuda__gemv_bf16 with 2 AUTO, 3 FUSED, 4 UNFUSED (scratch from the
 * xq/xs pools, which are large enough for it). */
static bool call(const point &p, int ver, int i, cudaStream_t st)
{
    qplug_cuda__err err = {{0}};
    qplug_cuda__scale_fmt af = p.fmt == 2 ? QPLUG_CUDA_SCALE_F32 : QPLUG_CUDA_SCALE_UE8M0;
    qplug_status s = QPLUG_OK;
    if (ver >= 2) {
        qplug_cuda__gemv_path path = ver == 2   ? QPLUG_CUDA_GEMV_AUTO
                                     : ver == 3 ? QPLUG_CUDA_GEMV_FUSED
                                                : QPLUG_CUDA_GEMV_UNFUSED;
        s = qplug_cuda__gemv_bf16((qplug_cuda__gemv_fmt)p.fmt, p.w.at(i, 0), p.s.at(i, 0), 0.0123f,
                                  p.x.at(i, 0), p.g * p.k, af, p.m, p.n, p.k, p.g, p.y.at(0, 0),
                                  p.g * p.n, path, p.xq.at(i, 0), st, &err);
        if (s != QPLUG_OK)
            fprintf(stderr, "gemv_bench: %s\n", err.msg);
        return s == QPLUG_OK;
    }
    for (int64_t g = 0; g < p.g && s == QPLUG_OK; g++) {
        void *xq = p.xq.at(i, (size_t)(g * p.m * p.k));
        float *xs = (float *)p.xs.at(i, (size_t)(g * p.m * (p.k / 128) * 4));
        void *y = p.y.at(0, (size_t)(g * p.m * p.n * 2));
        if (ver == 0)
            s = qplug_cuda__act_quant_fp8_ld((const uint16_t *)p.x.at(i, 0) + g * p.k, p.g * p.k,
                                             p.m, p.k, af, xq, xs, st, &err);
        if (s != QPLUG_OK)
            break;
        if (p.fmt == 0) {
            const void *w = p.w.at(i, (size_t)(g * p.n * p.k));
            const float *ws = (const float *)p.s.at(i, (size_t)(g * (p.n / 128) * (p.k / 128) * 4));
            s = qplug_cuda__gemv_fp8(w, ws, xq, xs, p.m, p.n, p.k, y, st, &err);
        } else {
            const uint8_t *w = (const uint8_t *)p.w.at(i, (size_t)(g * p.n * p.k / 2));
            const uint8_t *ws =
                (const uint8_t *)p.s.at(i, (size_t)(g * p.n * p.k / (p.fmt == 1 ? 32 : 16)));
            if (p.fmt == 1)
                s = qplug_cuda__gemv_mxfp4(w, ws, xq, xs, p.m, p.n, p.k, y, st, &err);
            else
                s = qplug_cuda__gemv_nvfp4(w, ws, 0.0123f, xq, xs, p.m, p.n, p.k, y, st, &err);
        }
    }
    if (s != QPLUG_OK)
        fprintf(stderr, "gemv_bench: %s\n", err.msg);
    return s == QPLUG_OK;
}

static double median(std::vector<float> v)
{
    std::sort(v.begin(), v.end());
    size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Per-call microseconds: {events, graph}. */
static void time_point(const point &p, int ver, double out[2])
{
    const int reps = 20, replays = 5;
    cudaEvent_t ev[2 * reps];
    for (int i = 0; i < 2 * reps; i++)
        CK(cudaEventCreate(&ev[i]));
    for (int i = 0; i < 3; i++)
        if (!call(p, ver, i, NULL))
            exit(1);
    CK(cudaDeviceSynchronize());
    std::vector<float> t(reps);
    for (int r = 0; r < reps; r++) {
        CK(cudaEventRecord(ev[2 * r], NULL));
        call(p, ver, r + 3, NULL);
        CK(cudaEventRecord(ev[2 * r + 1], NULL));
    }
    CK(cudaDeviceSynchronize());
    for (int r = 0; r < reps; r++)
        CK(cudaEventElapsedTime(&t[r], ev[2 * r], ev[2 * r + 1]));
    out[0] = 1000.0 * median(t);

    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    /* One call per set, so that replays cycle over the whole pool. */
    int calls = p.w.count;
    for (int r = 0; r < calls; r++)
        if (!call(p, ver, r, st))
            exit(1);
    CK(cudaStreamEndCapture(st, &graph));
    CK(cudaGraphInstantiate(&exec, graph, 0));
    CK(cudaGraphLaunch(exec, st));
    CK(cudaStreamSynchronize(st));
    std::vector<float> tg(replays);
    for (int r = 0; r < replays; r++) {
        CK(cudaEventRecord(ev[0], st));
        CK(cudaGraphLaunch(exec, st));
        CK(cudaEventRecord(ev[1], st));
        CK(cudaStreamSynchronize(st));
        CK(cudaEventElapsedTime(&tg[r], ev[0], ev[1]));
    }
    out[1] = 1000.0 * median(tg) / calls;
    CK(cudaGraphExecDestroy(exec));
    CK(cudaGraphDestroy(graph));
    CK(cudaStreamDestroy(st));
    for (int i = 0; i < 2 * reps; i++)
        CK(cudaEventDestroy(ev[i]));
}

static double bf16f(uint16_t b)
{
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Whether layer name `layer` contains one of the comma-separated names of
 * `list`. */
static bool layer_listed(const char *list, const char *layer)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", list);
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ","))
        if (*tok && strstr(layer, tok))
            return true;
    return false;
}

int main(int argc, char **argv)
{
    const char *tag = argc > 1 ? argv[1] : "v8";
    const char *only = getenv("GEMV_BENCH_ONLY");
    const char *ways = getenv("GEMV_BENCH_WAYS");
    if (!ways)
        ways = "01234";
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    /* Copy bandwidth. */
    size_t cb = (size_t)1 << 30;
    void *ca, *cbuf;
    CK(cudaMalloc(&ca, cb));
    CK(cudaMalloc(&cbuf, cb));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    std::vector<float> ct(10);
    for (int i = 0; i < 13; i++) {
        CK(cudaEventRecord(e0, NULL));
        CK(cudaMemcpyAsync(cbuf, ca, cb, cudaMemcpyDeviceToDevice, NULL));
        CK(cudaEventRecord(e1, NULL));
        CK(cudaEventSynchronize(e1));
        if (i >= 3)
            CK(cudaEventElapsedTime(&ct[i - 3], e0, e1));
    }
    double copy = 2.0 * cb / (median(ct) * 1e-3) / 1e9;
    CK(cudaFree(ca));
    CK(cudaFree(cbuf));
    printf("# gemv_bench %s on %s (%d SMs), copy %.0f GB/s\n", tag, prop.name,
           prop.multiProcessorCount, copy);
    printf("| model | layer | fmt | M | G | floor us | q+gemv graph us | gemv alone graph us | "
           "auto graph us | fused graph us | unfused graph us | auto picks | q+gemv %%copy | "
           "auto %%copy | gemv alone %%copy | q+gemv ev us | auto ev us | diff |\n");
    printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    const char *fname[3] = {"fp8_block", "mxfp4", "nvfp4"};
    const int64_t ms[2] = {1, 16};
    for (const shape &sh : shapes)
        for (int fmt = 0; fmt < 3; fmt++) {
            if (only && !layer_listed(only, sh.layer))
                continue;
            point p;
            p.n = sh.n;
            p.k = sh.k;
            p.g = sh.g;
            p.fmt = fmt;
            double wb1 = fmt == 0 ? (double)sh.n * sh.k + (double)(sh.n / 128) * (sh.k / 128) * 4
                                  : (double)sh.n * sh.k / 2 + (double)sh.n * sh.k / (fmt == 1 ? 32 : 16);
            double wb = wb1 * sh.g;
            int sets = (int)std::min<double>(192, ceil(160e6 / wb));
            sets = std::max(sets, 23); /* every timed call reads a fresh set */
            size_t wsz = fmt == 0 ? (size_t)(sh.g * sh.n * sh.k) : (size_t)(sh.g * sh.n * sh.k / 2);
            size_t ssz = fmt == 0 ? (size_t)(sh.g * (sh.n / 128) * (sh.k / 128) * 4)
                                  : (size_t)(sh.g * sh.n * sh.k / (fmt == 1 ? 32 : 16));
            if ((wsz + ssz) * (size_t)sets > ((size_t)8 << 30))
                sets = (int)(((size_t)8 << 30) / (wsz + ssz));
            p.w = make_pool(wsz, sets, fmt == 0 ? 1 : 0, 11 + fmt);
            p.s = make_pool(ssz, sets, fmt == 0 ? 2 : fmt == 1 ? 3 : 4, 21 + fmt);
            for (int64_t m : ms) {
                p.m = m;
                p.x = make_pool((size_t)(sh.g * m * sh.k * 2), sets, 5, 61);
                p.xq = make_pool((size_t)(sh.g * m * sh.k) + 256 + (size_t)(sh.g * m * (sh.k / 128) * 4),
                                 sets, 1, 31);
                p.xs = make_pool((size_t)(sh.g * m * (sh.k / 128) * 4), sets, 2, 41);
                p.y = make_pool((size_t)(sh.g * m * sh.n * 2), 1, 0, 51);
                CK(cudaDeviceSynchronize());
                /* Ways: 0 q+gemv, 1 gemv alone, 2 auto, 3 fused, 4 unfused. */
                double t[5][2];
                size_t ny = (size_t)(sh.g * m * sh.n);
                std::vector<uint16_t> y0(ny), y1(ny);
                CK(cudaMemset(p.y.base, 0xff, ny * 2));
                if (!call(p, 4, 0, NULL))
                    exit(1);
                CK(cudaMemcpy(y0.data(), p.y.base, ny * 2, cudaMemcpyDeviceToHost));
                CK(cudaMemset(p.y.base, 0xff, ny * 2));
                if (!call(p, 3, 0, NULL))
                    exit(1);
                CK(cudaMemcpy(y1.data(), p.y.base, ny * 2, cudaMemcpyDeviceToHost));
                for (int v = 0; v < 5; v++) {
                    t[v][0] = t[v][1] = 0.0;
                    if (strchr(ways, '0' + v))
                        time_point(p, v, t[v]);
                }
                double num = 0, den = 0;
                for (size_t i = 0; i < ny; i++) {
                    double a = bf16f(y1[i]), b = bf16f(y0[i]);
                    num += (a - b) * (a - b);
                    den += b * b;
                }
                double diff = sqrt(num / den);
                double fl = wb / (copy * 1e3);
                size_t sb = qplug_cuda__gemv_bf16_scratch(
                    (qplug_cuda__gemv_fmt)fmt, fmt == 2 ? QPLUG_CUDA_SCALE_F32 : QPLUG_CUDA_SCALE_UE8M0,
                    m, sh.n, sh.k, sh.g, QPLUG_CUDA_GEMV_AUTO);
                printf("| %s | %s | %s | %lld | %lld | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %s "
                       "| %.0f%% | %.0f%% | %.0f%% | %.1f | %.1f | %.1e |\n",
                       sh.model, sh.layer, fname[fmt], (long long)m, (long long)sh.g, fl, t[0][1],
                       t[1][1], t[2][1], t[3][1], t[4][1], sb ? "unfused" : "fused",
                       100.0 * fl / t[0][1], 100.0 * fl / t[2][1], 100.0 * fl / t[1][1], t[0][0],
                       t[2][0], diff);
                fflush(stdout);
                CK(cudaFree(p.x.base));
                CK(cudaFree(p.xq.base));
                CK(cudaFree(p.xs.base));
                CK(cudaFree(p.y.base));
            }
            CK(cudaFree(p.w.base));
            CK(cudaFree(p.s.base));
        }
    return 0;
}
