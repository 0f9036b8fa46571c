/*
 * tests/tools/cpu_gemm_bench.c - times the shared CPU linear path of the
 * plugins (plugins/common: activation quantization + qplug__gemm) on
 * random weights of every format, for a few token counts m.
 *
 * Not a test: it prints one line per (format, m) with the median time of
 * the runs, GFLOP/s (2*m*n*k per run), the weight bytes streamed per
 * second, and the relative L2 error of the output against an fp64 product
 * of the exactly dequantized weights and the unquantized activations (a
 * sanity check that the numbers belong to a correct kernel; quantized
 * activation modes show their format's error there). Several weight
 * copies are rotated so that a run does not find the previous run's
 * weights in cache.
 *
 * Usage: cpu_gemm_bench [--threads T] [--n N] [--k K] [--reps R]
 *                       [--m 1,16,64] [--formats bf16,fp8,mxfp4,nvfp4]
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "qp_common.h"
#include "qplug/codec.h"
#include "qplug/host.h"

#define COPIES 4

typedef struct bench_host {
    qplug_runtime *rt;
} bench_host;

static qplug_status b_error(void *ctx, qplug_status s, const char *fmt, ...)
{
    (void)ctx;
    va_list ap;
    va_start(ap, fmt);
    fputs("cpu_gemm_bench: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return s;
}

static void *b_alloc(void *ctx, size_t n, qplug_device_kind d)
{
    (void)ctx;
    (void)d;
    return malloc(n ? n : 1);
}

static void b_free(void *ctx, void *p, qplug_device_kind d)
{
    (void)ctx;
    (void)d;
    free(p);
}

static void b_pfor(void *ctx, int64_t n, qplug_range_fn fn, void *arg)
{
    bench_host *h = ctx;
    qplug_runtime_parallel_for(h->rt, n, fn, arg);
}

/* xorshift64*: reproducible random inputs without global state. */
static uint64_t rnd_u64(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

static float rnd_normal(uint64_t *s)
{
    double u1 = ((double)(rnd_u64(s) >> 11) + 0.5) / 9007199254740992.0;
    double u2 = ((double)(rnd_u64(s) >> 11) + 0.5) / 9007199254740992.0;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* One weight matrix of a format with its storage. */
typedef struct bench_w {
    qplug__wmat w;
    void *data, *scale;
    size_t bytes;
} bench_w;

static int make_weight(const char *fmt, int64_t n, int64_t k, uint64_t *s, bench_w *out)
{
    memset(out, 0, sizeof *out);
    qplug__wmat *w = &out->w;
    w->rows = n;
    w->cols = k;
    int64_t kb = (k + 127) / 128, nb = (n + 127) / 128;
    if (!strcmp(fmt, "bf16")) {
        uint16_t *d = malloc((size_t)(n * k) * 2);
        for (int64_t i = 0; i < n * k; i++)
            d[i] = qplug_f32_to_bf16(0.05f * rnd_normal(s));
        w->fmt = QPLUG__W_BF16;
        out->data = d;
        out->bytes = (size_t)(n * k) * 2;
    } else if (!strcmp(fmt, "fp8")) {
        uint8_t *d = malloc((size_t)(n * k));
        float *sc = malloc((size_t)(nb * kb) * sizeof(float));
        for (int64_t i = 0; i < n * k; i++)
            d[i] = qplug_f32_to_e4m3(100.0f * rnd_normal(s));
        for (int64_t i = 0; i < nb * kb; i++)
            sc[i] = 1e-3f * (1.0f + (float)(rnd_u64(s) % 100) / 100.0f);
        w->fmt = QPLUG__W_FP8_BLOCK;
        out->data = d;
        out->scale = sc;
        out->bytes = (size_t)(n * k) + (size_t)(nb * kb) * 4;
    } else if (!strcmp(fmt, "mxfp4") || !strcmp(fmt, "nvfp4")) {
        bool mx = !strcmp(fmt, "mxfp4");
        int64_t g = mx ? 32 : 16;
        uint8_t *d = malloc((size_t)(n * k / 2));
        uint8_t *sc = malloc((size_t)(n * k / g));
        for (int64_t i = 0; i < n * k / 2; i++)
            d[i] = (uint8_t)rnd_u64(s);
        for (int64_t i = 0; i < n * k / g; i++)
            sc[i] = mx ? (uint8_t)(118 + rnd_u64(s) % 6) : (uint8_t)(0x30 + rnd_u64(s) % 32);
        w->fmt = mx ? QPLUG__W_MXFP4 : QPLUG__W_NVFP4;
        w->global = mx ? 1.0f : 0.01f;
        w->input_scale = mx ? 1.0f : 0.002f;
        out->data = d;
        out->scale = sc;
        out->bytes = (size_t)(n * k / 2 + n * k / g);
    } else {
        return -1;
    }
    w->data = out->data;
    w->scale = out->scale;
    return 0;
}

/* The activation mode and FP8 split that the plugin of each format uses
 * natively on CPU. */
static void native_mode(const char *fmt, qplug__act_mode *mode, bool *split)
{
    *split = false;
    *mode = QPLUG__ACT_NONE;
    if (!strcmp(fmt, "fp8")) {
        *mode = QPLUG__ACT_FP8;
        *split = true;
    } else if (!strcmp(fmt, "mxfp4")) {
        *mode = QPLUG__ACT_FP8_UE8M0;
    } else if (!strcmp(fmt, "nvfp4")) {
        *mode = QPLUG__ACT_NVFP4;
    }
}

static double rel_l2_vs_fp64(const qplug__wmat *w, const float *x, const float *y, int64_t m,
                             int64_t n, int64_t k)
{
    float *row = malloc((size_t)k * sizeof(float));
    double num = 0.0, den = 0.0;
    for (int64_t j = 0; j < n; j++) {
        qplug__wmat_dequant_rows(w, j, j + 1, row);
        for (int64_t i = 0; i < m; i++) {
            double acc = 0.0;
            for (int64_t c = 0; c < k; c++)
                acc += (double)x[i * k + c] * (double)row[c];
            double d = (double)y[i * n + j] - acc;
            num += d * d;
            den += acc * acc;
        }
    }
    free(row);
    return den > 0.0 ? sqrt(num / den) : sqrt(num);
}

static int parse_list(const char *s, char out[][16], int max)
{
    int cnt = 0;
    while (*s && cnt < max) {
        size_t len = strcspn(s, ",");
        if (len >= 16)
            len = 15;
        memcpy(out[cnt], s, len);
        out[cnt][len] = 0;
        cnt++;
        s += len;
        if (*s == ',')
            s++;
    }
    return cnt;
}

int main(int argc, char **argv)
{
    int threads = 0, reps = 20;
    int64_t n = 2048, k = 2048;
    char ms[8][16], fmts[8][16];
    int n_m = parse_list("1,16,64", ms, 8);
    int n_f = parse_list("bf16,fp8,mxfp4,nvfp4", fmts, 8);
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--threads"))
            threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--n"))
            n = atoll(argv[i + 1]);
        else if (!strcmp(argv[i], "--k"))
            k = atoll(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps"))
            reps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--m"))
            n_m = parse_list(argv[i + 1], ms, 8);
        else if (!strcmp(argv[i], "--formats"))
            n_f = parse_list(argv[i + 1], fmts, 8);
        else {
            fprintf(stderr, "cpu_gemm_bench: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (n <= 0 || k <= 0 || k % 32 != 0 || reps < 1) {
        fprintf(stderr, "cpu_gemm_bench: need n > 0, k a positive multiple of 32, reps >= 1\n");
        return 2;
    }
    qplug_err err;
    bench_host bh;
    if (qplug_runtime_create(NULL, QPLUG_DEVICE_CPU, threads, &bh.rt, &err)) {
        fprintf(stderr, "cpu_gemm_bench: cannot create the runtime\n");
        return 1;
    }
    const qplug_host_api api = {.struct_size = sizeof(qplug_host_api),
                                .error = b_error,
                                .alloc = b_alloc,
                                .free = b_free,
                                .parallel_for = b_pfor};
    const qplug_host host = {&api, &bh};
    printf("# n=%lld k=%lld threads=%d reps=%d (median), %d weight copies rotated\n",
           (long long)n, (long long)k, qplug_runtime_threads(bh.rt), reps, COPIES);
    printf("%-6s %4s %10s %9s %9s %10s\n", "format", "m", "ms", "GFLOP/s", "GB/s(w)", "relL2");
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    int rc = 0;
    for (int f = 0; f < n_f; f++) {
        bench_w w[COPIES];
        bool ok = true;
        for (int c = 0; c < COPIES; c++)
            if (make_weight(fmts[f], n, k, &seed, &w[c])) {
                fprintf(stderr, "cpu_gemm_bench: unknown format %s\n", fmts[f]);
                ok = false;
                break;
            }
        if (!ok) {
            rc = 2;
            break;
        }
        qplug__act_mode mode;
        bool split;
        native_mode(fmts[f], &mode, &split);
        for (int mi = 0; mi < n_m; mi++) {
            int64_t m = atoll(ms[mi]);
            if (m < 1)
                continue;
            float *x = malloc((size_t)(m * k) * sizeof(float));
            float *y = malloc((size_t)(m * n) * sizeof(float));
            for (int64_t i = 0; i < m * k; i++)
                x[i] = rnd_normal(&seed);
            qplug_tensor tx = {"x", QPLUG_DT_F32, 2, {m, k}, x, QPLUG_DEVICE_CPU};
            qplug_tensor ty = {"y", QPLUG_DT_F32, 2, {m, n}, y, QPLUG_DEVICE_CPU};
            qplug_layer_desc desc = {.struct_size = sizeof desc, .name = "bench",
                                     .kind = QPLUG_LAYER_LINEAR, .device = QPLUG_DEVICE_CPU,
                                     .n = n, .k = k, .groups = 1};
            qplug_apply_args a = {.struct_size = sizeof a, .op = QPLUG_OP_FORWARD, .x = &tx,
                                  .y = &ty};
            double *t = malloc((size_t)reps * sizeof(double));
            for (int r = -2; r < reps; r++) {
                const qplug__wmat *wm = &w[(r + 2) % COPIES].w;
                double t0 = now_s();
                if (qplug__linear_forward(&host, &desc, wm, mode, split, &a)) {
                    rc = 1;
                    break;
                }
                if (r >= 0)
                    t[r] = now_s() - t0;
            }
            qsort(t, (size_t)reps, sizeof(double), cmp_double);
            double med = t[reps / 2];
            /* The last run used copy (reps + 1) % COPIES. */
            double e = rel_l2_vs_fp64(&w[(reps + 1) % COPIES].w, x, y, m, n, k);
            printf("%-6s %4lld %10.4f %9.2f %9.2f %10.2e\n", fmts[f], (long long)m, med * 1e3,
                   2.0 * (double)m * (double)n * (double)k / med * 1e-9,
                   (double)w[0].bytes / med * 1e-9, e);
            fflush(stdout);
            free(t);
            free(x);
            free(y);
        }
        for (int c = 0; c < COPIES; c++) {
            free(w[c].data);
            free(w[c].scale);
        }
    }
    qplug_runtime_destroy(bh.rt);
    return rc;
}
