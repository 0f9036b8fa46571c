/* qplug bench: times each plugin's CUDA path at DeepSeek V4 Flash and Pro
 * layer shapes against cuBLASLt BF16 and cuBLASLt FP8 block-scaled GEMMs and
 * a device-to-device copy, all measured in this one process.
 *
 * Method (docs/performance.md): CUDA events around each call, warm-up first,
 * the median of --reps calls, enqueued behind a spin kernel that holds the
 * stream until the host has enqueued them (bench_hold.cu), so each event
 * pair measures the call's GPU time even where the host needs longer to
 * submit a call than the GPU to run it; the ABI path also reports the
 * host's wall time per call. Every operand lives in a pool of rotating
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

/* "!" after a time whose batch ran without the hold it asked for (the
 * spin kernel timed out), "" otherwise. */
static const char *mark(const qplug_bench__hold *hold, const qplug_bench__timing *t)
{
    return hold && t->batches > 0 && t->not_held > 0 ? "!" : "";
}

/* One timed operation of a bench_ctx, as qplug_bench__time calls it. */
typedef struct op_call {
    bench_ctx *c;
    bench_op op;
    bench_plugin pl;
} op_call;

static int op_call_run(void *ctx, int rep)
{
    op_call *oc = ctx;
    return run_op(oc->c, oc->op, oc->pl, rep);
}

/* Launches (kernels, stream-ordered allocations) one call of op may
 * enqueue, an upper estimate for the hold's queue bound: cuBLASLt may run
 * two kernels per GEMM, the direct path adds an activation quantization per
 * group, and the ABI's per-group cuBLASLt path adds one quantization pass and
 * its scratch allocation and release. */
static int op_launches(const bench_ctx *c, bench_op op)
{
    int G = (int)c->groups;
    switch (op) {
    case OP_BF16:
    case OP_FP8_LT:
    case OP_CORE: return 2 * G;
    case OP_OURS: return 3 * G;
    default: return 3 * G + 4;
    }
}

/* Times one operation: warm-up, then qplug_bench__time (held unless
 * hold is NULL). The timing's gpu_us is NAN when the operation fails. */
static qplug_bench__timing time_op(bench_ctx *c, bench_op op, bench_plugin pl, int reps,
                                   qplug_bench__hold *hold)
{
    qplug_bench__timing t;
    memset(&t, 0, sizeof t);
    t.gpu_us = t.host_us = NAN;
    /* Through the ABI every rotation set is its own layer, which makes its
     * cuBLASLt plan for m on first use: warm up every set the timing uses.
     * Warm-up also loads every kernel the timed calls run, so no lazy module
     * load (which synchronises) happens while the stream is held. */
    int warm = op == OP_ABI ? reps + 3 : 3;
    for (int i = 0; i < warm; i++)
        if (run_op(c, op, pl, i))
            return t;
    if (cuda_check(cudaDeviceSynchronize(), "warm-up"))
        return t;
    op_call oc = {c, op, pl};
    if (qplug_bench__time(hold, op_call_run, &oc, 3, reps, op_launches(c, op), &t)) {
        t.gpu_us = t.host_us = NAN;
        cuda_check(cudaGetLastError(), "timed runs");
    }
    return t;
}

/* One device-to-device copy of the copy-bandwidth measurement. */
typedef struct copy_call {
    void *dst;
    const void *src;
    size_t bytes;
} copy_call;

static int copy_call_run(void *ctx, int rep)
{
    copy_call *cc = ctx;
    (void)rep;
    return cudaMemcpyAsync(cc->dst, cc->src, cc->bytes, cudaMemcpyDeviceToDevice, NULL) ==
                   cudaSuccess
               ? 0
               : -1;
}

/* Device-to-device copy bandwidth, counting bytes read plus written;
 * *held says whether every batch ran behind the hold. */
static double copy_bandwidth(int reps, qplug_bench__hold *hold, bool *held)
{
    size_t bytes = (size_t)1 << 30;
    void *a = NULL, *b = NULL;
    double bw = NAN;
    *held = false;
    if (cuda_check(cudaMalloc(&a, bytes), "cudaMalloc") ||
        cuda_check(cudaMalloc(&b, bytes), "cudaMalloc"))
        goto done;
    qplug_bench__fill(a, bytes, QPLUG_BENCH_FILL_RAW, 7);
    for (int i = 0; i < 3; i++)
        cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, NULL);
    if (cuda_check(cudaDeviceSynchronize(), "copy warm-up"))
        goto done;
    copy_call cc = {b, a, bytes};
    qplug_bench__timing t;
    if (qplug_bench__time(hold, copy_call_run, &cc, 0, reps, 1, &t)) {
        cuda_check(cudaGetLastError(), "copy");
        goto done;
    }
    *held = t.held;
    bw = 2.0 * (double)bytes / (t.gpu_us * 1e-6) / 1e9;
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
               "[--m 1,16,...] [--reps N] [--json OUT] [--md OUT] [--check-max-m M] "
               "[--no-hold]\n"
               "       qplug bench --moe [--reps N] [--json OUT] [--md OUT] [--no-hold]\n"
               "       qplug bench --prequant [--plugin P] [--shapes flash|pro] [--m 64,...] "
               "[--reps N] [--md OUT] [--no-hold] [--kernels-only | --no-kernels]\n"
               "--no-hold: enqueue the timed reps back to back without holding the stream "
               "(the method of the tables up to v10: short calls then time the host)\n");
}

int qplug_bench_main(int argc, char **argv)
{
    /* --moe anywhere selects the fused-MoE bench (bench_moe.c), --prequant
     * the pre-quantized-activation bench (bench_prequant.c); each takes the
     * other arguments. */
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--moe") || !strcmp(argv[i], "--prequant")) {
            char *rest[32];
            int nr = 0;
            for (int j = 1; j < argc && nr < 32; j++)
                if (j != i)
                    rest[nr++] = argv[j];
            return strcmp(argv[i], "--moe") ? qplug_bench__prequant_main(nr, rest)
                                            : qplug_bench__moe_main(nr, rest);
        }
    int want[PL_COUNT] = {1, 1, 1};
    int models = 3; /* bit 0 flash, bit 1 pro */
    int reps = 20;
    const char *json_path = NULL, *md_path = NULL;
    int64_t ms[16] = {1, 16, 64, 128, 512, 4096};
    int nm = 6;
    /* The accuracy check runs the slow reference kernel: small m only. */
    int64_t check_max_m = 128;
    bool hold_stream = true;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--no-hold")) {
            hold_stream = false;
            continue;
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
            if (reps < 5 || reps > QPLUG_BENCH_MAX_REPS) {
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
    qplug_bench__hold *hold = NULL;
    if (hold_stream && !(hold = qplug_bench__hold_create())) {
        fprintf(stderr, "qplug bench: no mapped pinned memory for the stream hold\n");
        if (json)
            fclose(json);
        if (md)
            fclose(md);
        return 1;
    }
    cublasLtHandle_t lt = NULL;
    if (cublasLtCreate(&lt) != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "qplug bench: cublasLtCreate failed\n");
        qplug_bench__hold_destroy(hold);
        if (json)
            fclose(json);
        if (md)
            fclose(md);
        return 1;
    }
    int rc = 0;
    char abi_msg[512] = "";
    bench_abi *abi = bench_abi_open(abi_msg, sizeof abi_msg);
    if (!abi) {
        fprintf(stderr, "qplug bench: cannot load the plugins: %s\n", abi_msg);
        cublasLtDestroy(lt);
        qplug_bench__hold_destroy(hold);
        if (json)
            fclose(json);
        if (md)
            fclose(md);
        return 1;
    }
    bool copy_held = false;
    double copy_bw = copy_bandwidth(reps, hold, &copy_held);
    /* How the times were taken, said once for both the header and JSON. */
    char timing[640];
    if (hold)
        snprintf(timing, sizeof timing,
                 "GPU time of one call: each call between two CUDA events on the default stream, "
                 "the reps enqueued (at most %d operations at a time) behind a spin kernel that "
                 "holds the stream until the host has enqueued them all, so the GPU runs them back "
                 "to back and no event pair includes host submission time; a time marked ! comes "
                 "from a batch whose hold timed out after 1 s (a host stall), so it may include "
                 "host time", QPLUG_BENCH_HOLD_MAX_QUEUED);
    else
        snprintf(timing, sizeof timing,
                 "--no-hold: each call between two CUDA events on the default stream, the reps "
                 "enqueued back to back without holding the stream, so a call shorter than its "
                 "host submission time measures the host (the method of the tables up to v10)");

    FILE *outs[2] = {stdout, md};
    for (int o = 0; o < 2; o++) {
        FILE *f = outs[o];
        if (!f)
            continue;
        fprintf(f, "# qplug bench on %s (%d SMs, %.0f MB L2), median of %d, operands rotated "
                   "over >= 160 MB\n\n",
                prop.name, prop.multiProcessorCount, prop.l2CacheSize / 1e6, reps);
        fprintf(f, "Times (abi, direct, core, BF16, FP8-LT, the copy): %s. host us = median host "
                   "wall-clock time of one qplug_layer_apply call while it is being enqueued "
                   "(ABI checks, plugin dispatch, launches; the GPU does not wait for it when "
                   "the stream is held or graph-captured)%s.\n\n",
                timing, hold && !copy_held ? "; the copy's hold timed out" : "");
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
        fprintf(f, "| model | layer | plugin | M | N | K | G | path | abi us | host us | direct us | "
                   "core us | TFLOP/s | GB/s | %%copy | wt%%copy core | BF16 us | FP8-LT us | "
                   "vs BF16 | vs FP8-LT | err |\n");
        fprintf(f, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
                   "---|---|\n");
    }
    if (json)
    {
        char b[32];
        fprintf(json, "{\"device\": \"%s\", \"sms\": %d, \"l2_bytes\": %d, \"copy_gbps\": %s, "
                      "\"reps\": %d, \"through_plugin_abi\": true, \"stream_held\": %s, "
                      "\"copy_held\": %s, \"timing\": \"%s\", \"rows\": [\n",
                prop.name, prop.multiProcessorCount, prop.l2CacheSize, jnum(b, copy_bw, 1), reps,
                hold ? "true" : "false", copy_held ? "true" : "false", timing);
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
                qplug_bench__timing none;
                memset(&none, 0, sizeof none);
                none.gpu_us = none.host_us = NAN;
                qplug_bench__timing T16 = c.g16 ? time_op(&c, OP_BF16, PL_FP8, reps, hold) : none;
                qplug_bench__timing T8 = c.g8 ? time_op(&c, OP_FP8_LT, PL_FP8, reps, hold) : none;
                double t16 = T16.gpu_us, t8 = T8.gpu_us;
                for (int p = 0; p < PL_COUNT; p++) {
                    if (!want[p])
                        continue;
                    /* A plugin that does not claim the layer kind gets no abi
                     * timing: its row says so instead of printing nan. */
                    bool unclaimed = !c.abi[p];
                    qplug_bench__timing TA =
                        unclaimed ? none : time_op(&c, OP_ABI, (bench_plugin)p, reps, hold);
                    double ta = TA.gpu_us;
                    if (isnan(ta) && !unclaimed)
                        fprintf(stderr, "qplug bench: %s %s m=%lld abi: %s\n", sh->layer,
                                plugin_names[p], (long long)c.m, c.err.msg);
                    double err = c.abi[p] && c.m <= check_max_m ? abi_check(&c, (bench_plugin)p)
                                                                : NAN;
                    qplug_bench__timing TO = time_op(&c, OP_OURS, (bench_plugin)p, reps, hold);
                    qplug_bench__timing TC = time_op(&c, OP_CORE, (bench_plugin)p, reps, hold);
                    double to = TO.gpu_us, tc = TC.gpu_us;
                    /* Marks for times from a batch whose hold timed out. */
                    const char *ma = mark(hold, &TA), *mo = mark(hold, &TO),
                               *mc = mark(hold, &TC), *m16 = mark(hold, &T16),
                               *m8 = mark(hold, &T8);
                    bool row_held = hold && !*ma && !*mo && !*mc && !*m16 && !*m8;
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
                                       "claimed | - | %.1f%s | %.1f%s | - | - | - | %.0f%% | "
                                       "%.1f%s | %.1f%s | - | - | - |\n",
                                    model ? "pro" : "flash", sh->layer, plugin_names[p],
                                    (long long)c.m, (long long)c.n, (long long)c.k,
                                    (long long)c.groups, path, to, mo, tc, mc,
                                    100.0 * wt_core / copy_bw, t16, m16, t8, m8);
                            fflush(f);
                            continue;
                        }
                        fprintf(f, "| %s | %s | %s | %lld | %lld | %lld | %lld | %s | %.1f%s | "
                                   "%.1f | %.1f%s | %.1f%s | %.0f | %.0f | %.0f%% | %.0f%% | "
                                   "%.1f%s | %.1f%s | %.2f | %.2f | %s |\n",
                                model ? "pro" : "flash", sh->layer, plugin_names[p],
                                (long long)c.m, (long long)c.n, (long long)c.k,
                                (long long)c.groups, path, ta, ma, TA.host_us, to, mo, tc, mc,
                                tflops, gbps, 100.0 * gbps / copy_bw, 100.0 * wt_core / copy_bw,
                                t16, m16, t8, m8, t16 / ta, t8 / ta, eb);
                        fflush(f);
                    }
                    if (json) {
                        char b[12][32];
                        fprintf(json,
                                "%s  {\"model\": \"%s\", \"layer\": \"%s\", \"kind\": \"%s\", "
                                "\"plugin\": \"%s\", \"m\": %lld, \"n\": %lld, \"k\": %lld, "
                                "\"groups\": %lld, \"path\": \"%s\", \"abi_us\": %s, "
                                "\"host_us\": %s, \"held\": %s, \"rel_l2_vs_ref\": %s, "
                                "\"direct_us\": %s, "
                                "\"core_us\": %s, \"bf16_us\": %s, \"fp8_lt_us\": %s, "
                                "\"tflops\": %s, \"gbps\": %s, \"weight_gbps_core\": %s, "
                                "\"pct_copy\": %s, \"flops\": %.0f, \"bytes\": %.0f}",
                                first_row ? "" : ",\n", model ? "pro" : "flash", sh->layer,
                                sh->kind, plugin_names[p], (long long)c.m, (long long)c.n,
                                (long long)c.k, (long long)c.groups, path, jnum(b[9], ta, 3),
                                jnum(b[11], TA.host_us, 3), row_held ? "true" : "false",
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
    bench_abi_close(abi);
    cublasLtDestroy(lt);
    qplug_bench__hold_destroy(hold);
    return rc;
}
