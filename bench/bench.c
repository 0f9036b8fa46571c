/* qplug bench: times each plugin's CUDA path at DeepSeek V4 Flash and Pro
 * layer shapes against cuBLASLt BF16 and cuBLASLt FP8 block-scaled GEMMs and
 * a device-to-device copy, all measured in this one process.
 *
 * Method (docs/performance.md): CUDA events around each call, warm-up first,
 * the median of --reps calls; every operand lives in a pool of rotating
 * copies larger than the L2 cache (so weights come from HBM as in a real
 * forward pass), filled with random data. Each plugin is timed through the
 * ABI (qplug_layer_apply on layers the core loaded and built, one device
 * copy of the weights per rotation set) and, for comparison, through the
 * kernels of plugins/common_cuda called directly; the ABI path's output is
 * also checked against the same layer's reference precision. */
#include <cublasLt.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_abi.h"
#include "qplug_bench.h"
#include "qplug_cuda.h"

#define QPLUG_BENCH_POOL_BYTES ((size_t)160 << 20) /* > 2.5x the 50-60 MB L2 */
#define QPLUG_BENCH_MAX_SETS 160
#define QPLUG_BENCH_WORKSPACE ((size_t)32 << 20)

typedef enum { PL_FP8 = 0, PL_MXFP4 = 1, PL_NVFP4 = 2, PL_COUNT = 3 } bench_plugin;
static const char *const plugin_names[PL_COUNT] = {"fp8_block", "mxfp4", "nvfp4"};

typedef struct bench_shape {
    const char *layer;
    const char *kind;
    int64_t n, k, groups;
} bench_shape;

/* deepseek_v4.md section 1: Flash D=4096, q_lora=1024, H=64, G=8, R=1024,
 * I=2048; Pro D=7168, q_lora=1536, H=128, G=16, R=1024, I=3072. Expert
 * w1/w3 run fused as gate_up (2I rows). */
static const bench_shape flash_shapes[] = {
    {"attn.wq_a", "linear", 1024, 4096, 1},
    {"attn.wq_b", "linear", 32768, 1024, 1},
    {"attn.wkv", "linear", 512, 4096, 1},
    {"attn.wo_a", "grouped_linear", 1024, 4096, 8},
    {"attn.wo_b", "linear", 4096, 8192, 1},
    {"ffn.w13 (gate_up)", "linear", 4096, 4096, 1},
    {"ffn.w2", "linear", 4096, 2048, 1},
};
static const bench_shape pro_shapes[] = {
    {"attn.wq_a", "linear", 1536, 7168, 1},
    {"attn.wq_b", "linear", 65536, 1536, 1},
    {"attn.wkv", "linear", 512, 7168, 1},
    {"attn.wo_a", "grouped_linear", 1024, 4096, 16},
    {"attn.wo_b", "linear", 7168, 16384, 1},
    {"ffn.w13 (gate_up)", "linear", 6144, 7168, 1},
    {"ffn.w2", "linear", 7168, 3072, 1},
};

/* A pool of `count` equal sets of one operand; call i uses set i % count. */
typedef struct rot {
    uint8_t *base;
    size_t set;
    int count;
} rot;

static int cuda_check(cudaError_t e, const char *what)
{
    if (e != cudaSuccess) {
        fprintf(stderr, "qplug bench: %s: %s\n", what, cudaGetErrorString(e));
        return -1;
    }
    return 0;
}

static int rot_alloc(rot *r, size_t set_bytes, int count, int fill, unsigned seed)
{
    r->set = (set_bytes + 255) & ~(size_t)255;
    r->count = count;
    r->base = NULL;
    if (cuda_check(cudaMalloc((void **)&r->base, r->set * (size_t)count), "cudaMalloc"))
        return -1;
    if (fill >= 0 && qplug_bench__fill(r->base, r->set * (size_t)count, fill, seed))
        return -1;
    return 0;
}

static void rot_free(rot *r)
{
    if (r->base)
        cudaFree(r->base);
    r->base = NULL;
}

static void *rot_at(const rot *r, int i, size_t offset)
{
    return r->base + (size_t)(i % r->count) * r->set + offset;
}

/* Everything one (shape, m) point needs. */
typedef struct bench_ctx {
    cublasLtHandle_t lt;
    int64_t m, n, k, groups;
    int sets;
    rot x, xq, xs, y;
    rot w16, w8, ws8;               /* BF16 and FP8 block weights */
    rot w4[2], s4[2], w48[2], s48[2]; /* MXFP4 / NVFP4: packed, scales, FP8 copy */
    float nv_global;
    qplug_cuda__fp8_gemm *g8;
    qplug_cuda__bf16_gemm *g16;
    void *work;
    qplug_cuda__err err;
    bench_abi_layers *abi[PL_COUNT]; /* the plugins' layers, or NULL */
} bench_ctx;

typedef enum { OP_BF16, OP_FP8_LT, OP_OURS, OP_CORE, OP_ABI } bench_op;

/* One call of an operation on set i; returns 0 on success. */
static int run_op(bench_ctx *c, bench_op op, bench_plugin pl, int i)
{
    int64_t m = c->m, n = c->n, k = c->k;
    if (op == OP_ABI)
        return c->abi[pl] ? bench_abi_apply(c->abi[pl], i, m, rot_at(&c->x, i, 0),
                                            rot_at(&c->y, i, 0), false, c->err.msg,
                                            sizeof c->err.msg)
                          : -1;
    for (int64_t g = 0; g < c->groups; g++) {
        void *x = rot_at(&c->x, i, (size_t)(g * m * k * 2));
        void *xq = rot_at(&c->xq, i, (size_t)(g * m * k));
        float *xs = rot_at(&c->xs, i, (size_t)(g * m * (k / 128) * 4));
        void *y = rot_at(&c->y, i, (size_t)(g * m * n * 2));
        qplug_status s = QPLUG_OK;
        if (op == OP_BF16) {
            s = qplug_cuda__bf16_gemm_run(c->g16, rot_at(&c->w16, i, (size_t)(g * n * k * 2)), x,
                                          y, c->work, NULL, &c->err);
            if (s != QPLUG_OK)
                return -1;
            continue;
        }
        if (op == OP_OURS) {
            s = qplug_cuda__act_quant_fp8(x, m, k, QPLUG_CUDA_SCALE_UE8M0, xq, xs, NULL, &c->err);
            if (s != QPLUG_OK)
                return -1;
        }
        const void *w8;
        const float *ws8;
        size_t s8off = (size_t)(g * (n / 128) * (k / 128) * 4);
        if (op == OP_FP8_LT || pl == PL_FP8) {
            w8 = rot_at(&c->w8, i, (size_t)(g * n * k));
            ws8 = rot_at(&c->ws8, i, s8off);
        } else {
            w8 = rot_at(&c->w48[pl - 1], i, (size_t)(g * n * k));
            ws8 = rot_at(&c->s48[pl - 1], i, s8off);
        }
        if (op == OP_FP8_LT || m > QPLUG_CUDA_GEMV_MAX_M) {
            if (!c->g8)
                return -1;
            s = qplug_cuda__fp8_gemm_run(c->g8, w8, ws8, xq, xs, y, c->work, NULL, &c->err);
        } else if (pl == PL_FP8) {
            s = qplug_cuda__gemv_fp8(w8, ws8, xq, xs, m, n, k, y, NULL, &c->err);
        } else {
            const uint8_t *w4 = rot_at(&c->w4[pl - 1], i, (size_t)(g * n * k / 2));
            if (pl == PL_MXFP4)
                s = qplug_cuda__gemv_mxfp4(w4, rot_at(&c->s4[0], i, (size_t)(g * n * k / 32)), xq,
                                           xs, m, n, k, y, NULL, &c->err);
            else
                s = qplug_cuda__gemv_nvfp4(w4, rot_at(&c->s4[1], i, (size_t)(g * n * k / 16)),
                                           c->nv_global, xq, xs, m, n, k, y, NULL, &c->err);
        }
        if (s != QPLUG_OK)
            return -1;
    }
    return 0;
}

/* A JSON number, or null for a failed measurement. */
static const char *jnum(char buf[32], double v, int decimals)
{
    if (!isfinite(v))
        return "null";
    snprintf(buf, 32, "%.*f", decimals, v);
    return buf;
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Median time of one call in microseconds; NAN when the operation fails. */
static double time_op(bench_ctx *c, bench_op op, bench_plugin pl, int reps, cudaEvent_t *ev)
{
    /* Through the ABI every rotation set is its own layer, which makes its
     * cuBLASLt plan for m on first use: warm up every set the timing uses. */
    int warm = op == OP_ABI ? reps + 3 : 3;
    for (int i = 0; i < warm; i++)
        if (run_op(c, op, pl, i))
            return NAN;
    if (cuda_check(cudaDeviceSynchronize(), "warm-up"))
        return NAN;
    for (int r = 0; r < reps; r++) {
        cudaEventRecord(ev[2 * r], NULL);
        if (run_op(c, op, pl, r + 3))
            return NAN;
        cudaEventRecord(ev[2 * r + 1], NULL);
    }
    if (cuda_check(cudaDeviceSynchronize(), "timed runs"))
        return NAN;
    float t[256];
    for (int r = 0; r < reps; r++)
        cudaEventElapsedTime(&t[r], ev[2 * r], ev[2 * r + 1]);
    qsort(t, (size_t)reps, sizeof t[0], cmp_float);
    return 1000.0 * (reps % 2 ? t[reps / 2] : 0.5 * (t[reps / 2 - 1] + t[reps / 2]));
}

/* Device-to-device copy bandwidth, counting bytes read plus written. */
static double copy_bandwidth(int reps, cudaEvent_t *ev)
{
    size_t bytes = (size_t)1 << 30;
    void *a = NULL, *b = NULL;
    double bw = NAN;
    if (cuda_check(cudaMalloc(&a, bytes), "cudaMalloc") ||
        cuda_check(cudaMalloc(&b, bytes), "cudaMalloc"))
        goto done;
    qplug_bench__fill(a, bytes, QPLUG_BENCH_FILL_RAW, 7);
    for (int i = 0; i < 3; i++)
        cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, NULL);
    float t[256];
    for (int r = 0; r < reps; r++) {
        cudaEventRecord(ev[2 * r], NULL);
        cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, NULL);
        cudaEventRecord(ev[2 * r + 1], NULL);
    }
    if (cuda_check(cudaDeviceSynchronize(), "copy"))
        goto done;
    for (int r = 0; r < reps; r++)
        cudaEventElapsedTime(&t[r], ev[2 * r], ev[2 * r + 1]);
    qsort(t, (size_t)reps, sizeof t[0], cmp_float);
    bw = 2.0 * (double)bytes / (t[reps / 2] * 1e-3) / 1e9;
done:
    cudaFree(a);
    cudaFree(b);
    return bw;
}

/* Weight bytes (with scales) one group of a plugin streams. */
static double weight_bytes(bench_plugin pl, int64_t n, int64_t k)
{
    switch (pl) {
    case PL_FP8: return (double)n * k + (double)(n / 128) * (k / 128) * 4;
    case PL_MXFP4: return (double)n * k / 2 + (double)n * k / 32;
    default: return (double)n * k / 2 + (double)n * k / 16 + 4;
    }
}

static double bf16_to_double(uint16_t b)
{
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Relative L2 error of the plugin's native output against the same layer's
 * reference precision (exact weights, fp32 math), both through the ABI on
 * rotation set 0; NaN when it cannot be had. */
static double abi_check(bench_ctx *c, bench_plugin pl)
{
    size_t ny = (size_t)(c->groups * c->m * c->n);
    uint16_t *a = malloc(ny * 2), *b = malloc(ny * 2);
    void *yref = NULL;
    double err = NAN;
    if (!a || !b || cuda_check(cudaMalloc(&yref, ny * 2), "cudaMalloc"))
        goto done;
    if (bench_abi_apply(c->abi[pl], 0, c->m, rot_at(&c->x, 0, 0), rot_at(&c->y, 0, 0), false,
                        c->err.msg, sizeof c->err.msg) ||
        bench_abi_apply(c->abi[pl], 0, c->m, rot_at(&c->x, 0, 0), yref, true, c->err.msg,
                        sizeof c->err.msg) ||
        cuda_check(cudaMemcpy(a, rot_at(&c->y, 0, 0), ny * 2, cudaMemcpyDeviceToHost), "copy") ||
        cuda_check(cudaMemcpy(b, yref, ny * 2, cudaMemcpyDeviceToHost), "copy"))
        goto done;
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < ny; i++) {
        double d = bf16_to_double(a[i]) - bf16_to_double(b[i]);
        num += d * d;
        den += bf16_to_double(b[i]) * bf16_to_double(b[i]);
    }
    err = den > 0 ? sqrt(num / den) : NAN;
done:
    cudaFree(yref);
    free(a);
    free(b);
    return err;
}

static void ctx_free(bench_ctx *c)
{
    for (int p = 0; p < PL_COUNT; p++)
        bench_abi_destroy(c->abi[p]);
    memset(c->abi, 0, sizeof c->abi);
    rot *all[] = {&c->x, &c->xq, &c->xs, &c->y, &c->w16, &c->w8, &c->ws8, &c->w4[0], &c->w4[1],
                  &c->s4[0], &c->s4[1], &c->w48[0], &c->w48[1], &c->s48[0], &c->s48[1]};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        rot_free(all[i]);
    if (c->work)
        cudaFree(c->work);
    c->work = NULL;
}

/* Allocates and fills the weights of one shape (shared by every m). */
static int ctx_weights(bench_ctx *c, const int want[PL_COUNT])
{
    int64_t n = c->n, k = c->k, G = c->groups;
    size_t w8 = (size_t)(G * n * k);
    int sets = (int)((QPLUG_BENCH_POOL_BYTES + w8 - 1) / w8);
    sets = sets < 2 ? 2 : sets > QPLUG_BENCH_MAX_SETS ? QPLUG_BENCH_MAX_SETS : sets;
    c->sets = sets;
    c->nv_global = 0.0123f;
    size_t s8 = (size_t)(G * (n / 128) * (k / 128) * 4);
    if (rot_alloc(&c->w16, 2 * w8, sets, QPLUG_BENCH_FILL_BF16, 11) ||
        rot_alloc(&c->w8, w8, sets, QPLUG_BENCH_FILL_E4M3, 12) ||
        rot_alloc(&c->ws8, s8, sets, QPLUG_BENCH_FILL_F32_SCALE, 13))
        return -1;
    for (int f = 0; f < 2; f++) {
        if (!want[f + 1])
            continue;
        size_t sb = (size_t)(G * n * k / (f ? 16 : 32));
        if (rot_alloc(&c->w4[f], w8 / 2, sets, QPLUG_BENCH_FILL_RAW, 21 + f) ||
            rot_alloc(&c->s4[f], sb, sets,
                      f ? QPLUG_BENCH_FILL_E4M3_SCALE : QPLUG_BENCH_FILL_E8M0, 23 + f) ||
            rot_alloc(&c->w48[f], w8, sets, -1, 0) || rot_alloc(&c->s48[f], s8, sets, -1, 0))
            return -1;
        /* The prefill path's FP8 copy is made by the real conversion. */
        for (int i = 0; i < sets; i++)
            for (int64_t g = 0; g < G; g++) {
                const uint8_t *w = rot_at(&c->w4[f], i, (size_t)(g * n * k / 2));
                const uint8_t *s = rot_at(&c->s4[f], i, (size_t)(g * n * k / (f ? 16 : 32)));
                uint8_t *q = rot_at(&c->w48[f], i, (size_t)(g * n * k));
                float *qs = rot_at(&c->s48[f], i, (size_t)(g * (n / 128) * (k / 128) * 4));
                qplug_status st =
                    f ? qplug_cuda__nvfp4_to_fp8_block(w, s, c->nv_global, n, k, q, qs, NULL, &c->err)
                      : qplug_cuda__mxfp4_to_fp8_block(w, s, n, k, q, qs, NULL, &c->err);
                if (st != QPLUG_OK) {
                    fprintf(stderr, "qplug bench: %s\n", c->err.msg);
                    return -1;
                }
            }
    }
    if (cuda_check(cudaMalloc(&c->work, QPLUG_BENCH_WORKSPACE), "cudaMalloc"))
        return -1;
    return cuda_check(cudaDeviceSynchronize(), "weight setup");
}

/* Activation and output pools of one m. */
static int ctx_acts(bench_ctx *c)
{
    int64_t m = c->m, n = c->n, k = c->k, G = c->groups;
    size_t xb = (size_t)(G * m * k * 2);
    int sets = (int)((QPLUG_BENCH_POOL_BYTES + xb - 1) / xb);
    sets = sets < 2 ? 2 : sets > QPLUG_BENCH_MAX_SETS ? QPLUG_BENCH_MAX_SETS : sets;
    if (rot_alloc(&c->x, xb, sets, QPLUG_BENCH_FILL_BF16, 31) ||
        rot_alloc(&c->xq, xb / 2, sets, -1, 0) ||
        rot_alloc(&c->xs, (size_t)(G * m * (k / 128) * 4), sets, -1, 0) ||
        rot_alloc(&c->y, (size_t)(G * m * n * 2), sets, -1, 0))
        return -1;
    /* The baselines read activations already quantized, as a GEMM alone. */
    for (int i = 0; i < sets; i++)
        for (int64_t g = 0; g < G; g++)
            if (qplug_cuda__act_quant_fp8(rot_at(&c->x, i, (size_t)(g * m * k * 2)), m, k,
                                          QPLUG_CUDA_SCALE_UE8M0,
                                          rot_at(&c->xq, i, (size_t)(g * m * k)),
                                          rot_at(&c->xs, i, (size_t)(g * m * (k / 128) * 4)), NULL,
                                          &c->err) != QPLUG_OK)
                return -1;
    return cuda_check(cudaDeviceSynchronize(), "activation setup");
}

static void usage(FILE *f)
{
    fprintf(f, "usage: qplug bench [--plugin fp8_block|mxfp4|nvfp4] [--shapes flash|pro] "
               "[--m 1,16,...] [--reps N] [--json OUT] [--md OUT] [--check-max-m M]\n"
               "       qplug bench --moe [--reps N] [--json OUT] [--md OUT]\n");
}

int qplug_bench_main(int argc, char **argv)
{
    /* --moe anywhere selects the fused-MoE bench (bench_moe.c), which takes
     * the other arguments. */
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--moe")) {
            char *rest[32];
            int nr = 0;
            for (int j = 1; j < argc && nr < 32; j++)
                if (j != i)
                    rest[nr++] = argv[j];
            return qplug_bench__moe_main(nr, rest);
        }
    int want[PL_COUNT] = {1, 1, 1};
    int models = 3; /* bit 0 flash, bit 1 pro */
    int reps = 20;
    const char *json_path = NULL, *md_path = NULL;
    int64_t ms[16] = {1, 16, 64, 128, 512, 4096};
    int nm = 6;
    /* The accuracy check runs the slow reference kernel: small m only. */
    int64_t check_max_m = 128;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (!v) {
            fprintf(stderr, "qplug bench: option '%s' needs a value\n", a);
            return 2;
        }
        i++;
        if (!strcmp(a, "--plugin")) {
            int found = -1;
            for (int p = 0; p < PL_COUNT; p++)
                if (!strcmp(v, plugin_names[p]))
                    found = p;
            if (found < 0) {
                fprintf(stderr, "qplug bench: --plugin '%s': no CUDA path to bench (have "
                                "fp8_block, mxfp4, nvfp4)\n", v);
                return 2;
            }
            for (int p = 0; p < PL_COUNT; p++)
                want[p] = p == found;
        } else if (!strcmp(a, "--shapes")) {
            if (!strcmp(v, "flash"))
                models = 1;
            else if (!strcmp(v, "pro"))
                models = 2;
            else {
                fprintf(stderr, "qplug bench: --shapes '%s': expected flash or pro\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--reps")) {
            reps = atoi(v);
            if (reps < 5 || reps > 128) {
                fprintf(stderr, "qplug bench: --reps '%s': expected 5..128\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--m")) {
            nm = 0;
            for (const char *p = v; *p && nm < 16;) {
                char *end;
                long long x = strtoll(p, &end, 10);
                if (end == p || x < 1 || x > 65536 || (*end && *end != ',')) {
                    fprintf(stderr, "qplug bench: --m '%s': expected a comma list of 1..65536\n", v);
                    return 2;
                }
                ms[nm++] = x;
                p = *end ? end + 1 : end;
            }
        } else if (!strcmp(a, "--check-max-m")) {
            check_max_m = atoll(v);
        } else if (!strcmp(a, "--json")) {
            json_path = v;
        } else if (!strcmp(a, "--md")) {
            md_path = v;
        } else {
            fprintf(stderr, "qplug bench: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }

    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev < 1) {
        fprintf(stderr, "qplug bench: no CUDA device\n");
        return 2;
    }
    struct cudaDeviceProp prop;
    cudaGetDeviceProperties(&prop, 0);
    FILE *json = json_path ? fopen(json_path, "w") : NULL;
    FILE *md = md_path ? fopen(md_path, "w") : NULL;
    if ((json_path && !json) || (md_path && !md)) {
        fprintf(stderr, "qplug bench: cannot write %s\n", json && !md ? md_path : json_path);
        if (json)
            fclose(json);
        if (md)
            fclose(md);
        return 1;
    }
    cudaEvent_t ev[256];
    for (int i = 0; i < 2 * reps; i++)
        cudaEventCreate(&ev[i]);
    cublasLtHandle_t lt = NULL;
    if (cublasLtCreate(&lt) != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "qplug bench: cublasLtCreate failed\n");
        return 1;
    }
    int rc = 0;
    char abi_msg[512] = "";
    bench_abi *abi = bench_abi_open(abi_msg, sizeof abi_msg);
    if (!abi) {
        fprintf(stderr, "qplug bench: cannot load the plugins: %s\n", abi_msg);
        cublasLtDestroy(lt);
        return 1;
    }
    double copy_bw = copy_bandwidth(reps, ev);

    FILE *outs[2] = {stdout, md};
    for (int o = 0; o < 2; o++) {
        FILE *f = outs[o];
        if (!f)
            continue;
        fprintf(f, "# qplug bench on %s (%d SMs, %.0f MB L2), median of %d, operands rotated "
                   "over >= 160 MB\n\n",
                prop.name, prop.multiProcessorCount, prop.l2CacheSize / 1e6, reps);
        fprintf(f, "Plugins timed through the ABI: abi = qplug_layer_apply on a layer the core "
                   "loaded (qplug_registry_load_default) and built (qplug_layer_create, synthetic "
                   "weights, one device copy per rotation set), BF16 x/y on the default stream. "
                   "Device-to-device copy: %.0f GB/s (read + write).\n"
                   "direct = the same kernels called without the ABI: act quant (BF16 -> E4M3, "
                   "ue8m0 1x128) + decode GEMV (M <= 16) or cuBLASLt FP8 block GEMM (M > 16; FP4 "
                   "plugins use an FP8 block copy made at prepare time, so they hold both). core = "
                   "the GEMV/GEMM alone. TFLOP/s, GB/s and %%copy are of the abi time. wt%%copy = "
                   "weight+scale bytes / core time / copy bandwidth. vs X = time of X / abi time "
                   "(> 1: the plugin is faster). err = rel L2 of the abi output against the same "
                   "layer in reference precision (M <= %lld; - = not checked). At M <= 16 the abi "
                   "path is qplug_cuda__gemv_bf16: the activation quantization inside the GEMV "
                   "(small layers) or one act quant pass before it (wide layers, M > 8), all groups "
                   "of a grouped layer in one launch, in place; direct is act quant + GEMV per "
                   "group on contiguous slices. Grouped layers at 16 < M <= %d (wgmma_fused): the "
                   "abi path is qplug_cuda__fp8_gemm_bf16x, quantization fused in, all groups in one "
                   "launch; direct is act quant + one cuBLASLt call per group. "
                   "\"not claimed\": the plugin does not take the "
                   "layer kind (mxfp4 claims no grouped linear).\n\n",
                copy_bw, (long long)check_max_m, QPLUG_CUDA_WGMMA_GROUPED_MAX_M);
        fprintf(f, "| model | layer | plugin | M | N | K | G | path | abi us | direct us | core us | "
                   "TFLOP/s | GB/s | %%copy | wt%%copy core | BF16 us | FP8-LT us | vs BF16 | "
                   "vs FP8-LT | err |\n");
        fprintf(f, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
                   "---|\n");
    }
    if (json)
    {
        char b[32];
        fprintf(json, "{\"device\": \"%s\", \"sms\": %d, \"l2_bytes\": %d, \"copy_gbps\": %s, "
                      "\"reps\": %d, \"through_plugin_abi\": true, \"rows\": [\n",
                prop.name, prop.multiProcessorCount, prop.l2CacheSize, jnum(b, copy_bw, 1), reps);
    }
    int first_row = 1;

    for (int model = 0; model < 2; model++) {
        if (!(models & (1 << model)))
            continue;
        const bench_shape *shapes = model ? pro_shapes : flash_shapes;
        size_t nshapes = model ? sizeof pro_shapes / sizeof pro_shapes[0]
                               : sizeof flash_shapes / sizeof flash_shapes[0];
        for (size_t si = 0; si < nshapes; si++) {
            const bench_shape *sh = &shapes[si];
            bench_ctx c;
            memset(&c, 0, sizeof c);
            c.lt = lt;
            c.n = sh->n;
            c.k = sh->k;
            c.groups = sh->groups;
            if (ctx_weights(&c, want)) {
                fprintf(stderr, "qplug bench: %s: setup failed\n", sh->layer);
                ctx_free(&c);
                rc = 1;
                continue;
            }
            for (int p = 0; p < PL_COUNT; p++) {
                if (!want[p])
                    continue;
                /* Enough copies that the weights the timed kernel streams
                 * (E4M3, or packed FP4) exceed the rotation pool. */
                double streamed = (double)sh->groups * sh->n * sh->k * (p == PL_FP8 ? 1.0 : 0.5);
                int count = (int)((double)QPLUG_BENCH_POOL_BYTES / streamed + 1.0);
                count = count < 2 ? 2 : count > QPLUG_BENCH_MAX_SETS ? QPLUG_BENCH_MAX_SETS : count;
                c.abi[p] = bench_abi_create(abi, plugin_names[p], sh->n, sh->k, sh->groups, count,
                                            abi_msg, sizeof abi_msg);
                if (!c.abi[p]) {
                    fprintf(stderr, "qplug bench: %s %s: %s\n", sh->layer, plugin_names[p],
                            abi_msg);
                    if (strcmp(abi_msg, "not claimed") != 0)
                        rc = 1;
                }
            }
            for (int mi = 0; mi < nm; mi++) {
                c.m = ms[mi];
                rot_free(&c.x), rot_free(&c.xq), rot_free(&c.xs), rot_free(&c.y);
                if (ctx_acts(&c)) {
                    rc = 1;
                    continue;
                }
                c.err.msg[0] = 0;
                if (qplug_cuda__fp8_gemm_create(lt, c.m, c.n, c.k, QPLUG_BENCH_WORKSPACE, &c.g8,
                                                &c.err) != QPLUG_OK)
                    fprintf(stderr, "qplug bench: %s m=%lld: %s\n", sh->layer, (long long)c.m,
                            c.err.msg);
                if (qplug_cuda__bf16_gemm_create(lt, c.m, c.n, c.k, QPLUG_BENCH_WORKSPACE, &c.g16,
                                                 &c.err) != QPLUG_OK)
                    fprintf(stderr, "qplug bench: %s m=%lld: %s\n", sh->layer, (long long)c.m,
                            c.err.msg);
                double t16 = c.g16 ? time_op(&c, OP_BF16, PL_FP8, reps, ev) : NAN;
                double t8 = c.g8 ? time_op(&c, OP_FP8_LT, PL_FP8, reps, ev) : NAN;
                for (int p = 0; p < PL_COUNT; p++) {
                    if (!want[p])
                        continue;
                    /* A plugin that does not claim the layer kind gets no abi
                     * timing: its row says so instead of printing nan. */
                    bool unclaimed = !c.abi[p];
                    double ta = unclaimed ? NAN : time_op(&c, OP_ABI, (bench_plugin)p, reps, ev);
                    if (isnan(ta) && !unclaimed)
                        fprintf(stderr, "qplug bench: %s %s m=%lld abi: %s\n", sh->layer,
                                plugin_names[p], (long long)c.m, c.err.msg);
                    double err = c.abi[p] && c.m <= check_max_m ? abi_check(&c, (bench_plugin)p)
                                                                : NAN;
                    double to = time_op(&c, OP_OURS, (bench_plugin)p, reps, ev);
                    double tc = time_op(&c, OP_CORE, (bench_plugin)p, reps, ev);
                    if (isnan(to) || isnan(tc))
                        fprintf(stderr, "qplug bench: %s %s m=%lld: %s\n", sh->layer,
                                plugin_names[p], (long long)c.m, c.err.msg);
                    double G = (double)c.groups;
                    double flops = 2.0 * G * c.m * c.n * c.k;
                    double wb = G * weight_bytes((bench_plugin)p, c.n, c.k);
                    double bytes = wb + G * (2.0 * c.m * c.k + 2.0 * c.m * c.n);
                    double tflops = flops / (ta * 1e-6) / 1e12;
                    double gbps = bytes / (ta * 1e-6) / 1e9;
                    double wt_core = wb / (tc * 1e-6) / 1e9;
                    /* The path the plugin's dispatch takes for this shape
                     * (qp_cuda_linear.cuh), assuming the alignment and
                     * shape conditions it checks hold, as they do for the
                     * model shapes benched here. */
                    const char *path = c.m <= QPLUG_CUDA_GEMV_MAX_M
                                           ? (p == PL_FP8     ? "gemv_bf16_fp8"
                                              : p == PL_MXFP4 ? "gemv_bf16_mxfp4"
                                                              : "gemv_bf16_nvfp4")
                                           : c.groups > 1 && c.m <= QPLUG_CUDA_WGMMA_GROUPED_MAX_M
                                           ? (p == PL_FP8 ? "wgmma_fused" : "fp8copy+wgmma_fused")
                                           : (p == PL_FP8 ? "lt_fp8" : "fp8copy+lt_fp8");
                    for (int o = 0; o < 2; o++) {
                        FILE *f = outs[o];
                        if (!f)
                            continue;
                        char eb[32];
                        if (isnan(err))
                            snprintf(eb, sizeof eb, "-");
                        else
                            snprintf(eb, sizeof eb, "%.3g", err);
                        if (unclaimed) {
                            fprintf(f, "| %s | %s | %s | %lld | %lld | %lld | %lld | %s | not "
                                       "claimed | %.1f | %.1f | - | - | - | %.0f%% | %.1f | %.1f "
                                       "| - | - | - |\n",
                                    model ? "pro" : "flash", sh->layer, plugin_names[p],
                                    (long long)c.m, (long long)c.n, (long long)c.k,
                                    (long long)c.groups, path, to, tc,
                                    100.0 * wt_core / copy_bw, t16, t8);
                            fflush(f);
                            continue;
                        }
                        fprintf(f, "| %s | %s | %s | %lld | %lld | %lld | %lld | %s | %.1f | %.1f | "
                                   "%.1f | %.0f | %.0f | %.0f%% | %.0f%% | %.1f | %.1f | %.2f | "
                                   "%.2f | %s |\n",
                                model ? "pro" : "flash", sh->layer, plugin_names[p],
                                (long long)c.m, (long long)c.n, (long long)c.k,
                                (long long)c.groups, path, ta, to, tc, tflops, gbps,
                                100.0 * gbps / copy_bw, 100.0 * wt_core / copy_bw, t16, t8,
                                t16 / ta, t8 / ta, eb);
                        fflush(f);
                    }
                    if (json) {
                        char b[11][32];
                        fprintf(json,
                                "%s  {\"model\": \"%s\", \"layer\": \"%s\", \"kind\": \"%s\", "
                                "\"plugin\": \"%s\", \"m\": %lld, \"n\": %lld, \"k\": %lld, "
                                "\"groups\": %lld, \"path\": \"%s\", \"abi_us\": %s, \"rel_l2_vs_ref\": %s, "
                                "\"direct_us\": %s, "
                                "\"core_us\": %s, \"bf16_us\": %s, \"fp8_lt_us\": %s, "
                                "\"tflops\": %s, \"gbps\": %s, \"weight_gbps_core\": %s, "
                                "\"pct_copy\": %s, \"flops\": %.0f, \"bytes\": %.0f}",
                                first_row ? "" : ",\n", model ? "pro" : "flash", sh->layer,
                                sh->kind, plugin_names[p], (long long)c.m, (long long)c.n,
                                (long long)c.k, (long long)c.groups, path, jnum(b[9], ta, 3),
                                jnum(b[10], err, 5), jnum(b[0], to, 3),
                                jnum(b[1], tc, 3), jnum(b[2], t16, 3), jnum(b[3], t8, 3),
                                jnum(b[4], tflops, 2), jnum(b[5], gbps, 2), jnum(b[6], wt_core, 2),
                                jnum(b[7], 100.0 * gbps / copy_bw, 2), flops, bytes);
                        first_row = 0;
                    }
                }
                qplug_cuda__fp8_gemm_destroy(c.g8);
                qplug_cuda__bf16_gemm_destroy(c.g16);
                c.g8 = NULL;
                c.g16 = NULL;
            }
            ctx_free(&c);
        }
    }
    if (json) {
        fprintf(json, "\n]}\n");
        fclose(json);
    }
    if (md)
        fclose(md);
    for (int i = 0; i < 2 * reps; i++)
        cudaEventDestroy(ev[i]);
    bench_abi_close(abi);
    cublasLtDestroy(lt);
    return rc;
}
