/* GPU checks of qplug_cuda__fp8_gemm_bf16x (plugins/common_cuda/gemm_wgmma.cu):
 * the FP8 block GEMM that quantizes BF16 activations inside the kernel.
 *
 * The reference is independent of the kernel: the activations are quantized
 * on the host by the rule of qplug_cuda.h (amax = max(|x|, 1e-4) per 1x128
 * group; F32 s = amax / 448, UE8M0 s = 2^ceil(log2(amax / 448)); codes
 * through qplug_f32_to_e4m3 of core/include/qplug/codec.h, which is checked
 * bit-exact against ml_dtypes), then the product is formed in float64 per
 * 128-block. Outputs are poisoned with 0xFF (NaN in BF16) before each run.
 * Exits 77 (CTest skip) without a CUDA device. */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qplug/codec.h"
#include "qplug_cuda.h"
#include "testutil.h"

#define SKIP_CODE 77

/* Bound on the relative L2 error of the BF16 output against float64 with
 * the same quantized activations: BF16 rounding of y is about 2e-3 relative
 * L2; fp32 block sums add far less. */
#define BOUND_REL_L2 5e-3

#define QPLUG_TEST_RNG_SEED 0x243f6a8885a308d3ull
#include "gpu_test_random.h"
#include "gpu_test_mem.h"

/* BF16 x [m, ldx] whose 128-groups span 2^-6..2^8 in magnitude; row 0's
 * first group of every 128-column block is tiny (hits the 1e-4 amax floor)
 * and, when m > 3, row 3 is scaled by 2^24 (large dynamic range across
 * rows). Padding columns hold random values too. */
static uint16_t *make_x(int64_t m, int64_t ldx)
{
    uint16_t *x = malloc((size_t)(m * ldx) * 2);
    for (int64_t r = 0; r < m; r++)
        for (int64_t c0 = 0; c0 < ldx; c0 += 128) {
            double mag = pow(2.0, -6.0 + 14.0 * rng_uniform());
            if (r == 0 && c0 == 0)
                mag = 1e-6;
            if (r == 3)
                mag *= 16777216.0;
            for (int64_t c = c0; c < c0 + 128 && c < ldx; c++)
                x[r * ldx + c] = bf16_bits((float)(rng_normal() * mag));
        }
    return x;
}

/* The scale of one 1x128 group by the rule of qplug_cuda.h, in float. */
static float ref_scale(const uint16_t *g, qplug_cuda__scale_fmt fmt)
{
    float amax = 1e-4f;
    int nonfinite = 0;
    for (int i = 0; i < 128; i++) {
        float a = fabsf(bf16_value(g[i]));
        if (!isfinite(a))
            nonfinite = 1;
        else if (a > amax)
            amax = a;
    }
    if (nonfinite)
        return fmt == QPLUG_CUDA_SCALE_F32 ? INFINITY : NAN;
    float r = amax / 448.0f;
    if (fmt == QPLUG_CUDA_SCALE_F32)
        return r;
    int e;
    float f = frexpf(r, &e);
    return f == 0.5f ? r : ldexpf(1.0f, e);
}

/* Host quantization of x [m, ldx] columns [c0, c0 + k): codes [m, k] and
 * scales [m][k/128]. */
static void ref_quant(const uint16_t *x, int64_t ldx, int64_t c0, int64_t m, int64_t k,
                      qplug_cuda__scale_fmt fmt, uint8_t *q, float *s)
{
    for (int64_t r = 0; r < m; r++)
        for (int64_t kb = 0; kb < k / 128; kb++) {
            const uint16_t *g = x + r * ldx + c0 + kb * 128;
            float sc = ref_scale(g, fmt);
            s[r * (k / 128) + kb] = sc;
            for (int i = 0; i < 128; i++)
                q[r * k + kb * 128 + i] = qplug_f32_to_e4m3(bf16_value(g[i]) / sc);
        }
}

static void make_w(int64_t rows, int64_t k, uint8_t **w, float **ws)
{
    *w = malloc((size_t)(rows * k));
    *ws = malloc((size_t)((rows / 128) * (k / 128)) * 4);
    for (int64_t i = 0; i < rows * k; i++)
        (*w)[i] = rand_e4m3();
    for (int64_t i = 0; i < (rows / 128) * (k / 128); i++)
        (*ws)[i] = (float)pow(2.0, -12.0 + 6.0 * rng_uniform());
}

struct gcase {
    int64_t m, n, k, groups, ldx, ldy;
    qplug_cuda__scale_fmt fmt;
    int inf_row; /* -1: none; else this row gets an Inf in column 5 (group 0) */
};

static qplug_status run_kernel(const struct gcase *c, const void *dx, const void *dw,
                               const void *dws, void *dy, qplug_cuda__err *err)
{
    return qplug_cuda__fp8_gemm_bf16x(dx, c->ldx, c->m, c->n, c->k, c->groups, c->fmt, dw, dws,
                                      dy, c->ldy, NULL, err);
}

/* Random case against the float64 reference; group 0's outputs of the inf
 * row (if any; the Inf is in group 0's columns) must be all NaN and are
 * left out of the error, the row's other groups are checked as usual;
 * padding columns of y must keep the poison. */
static void test_case(struct gcase c)
{
    int64_t G = c.groups, m = c.m, n = c.n, k = c.k;
    uint16_t *x = make_x(m, c.ldx);
    if (c.inf_row >= 0)
        x[c.inf_row * c.ldx + 5] = 0x7f80;
    uint8_t *w;
    float *ws;
    make_w(G * n, k, &w, &ws);
    void *dx = dev_upload(x, (size_t)(m * c.ldx) * 2);
    void *dw = dev_upload(w, (size_t)(G * n * k));
    void *dws = dev_upload(ws, (size_t)(G * n / 128 * (k / 128)) * 4);
    void *dy = dev_alloc_poison((size_t)(m * c.ldy) * 2);
    qplug_cuda__err err = {{0}};
    qplug_status st = run_kernel(&c, dx, dw, dws, dy, &err);
    CHECKF(st == QPLUG_OK, "fp8_gemm_bf16x m=%lld n=%lld k=%lld G=%lld: %s", (long long)m,
           (long long)n, (long long)k, (long long)G, err.msg);
    uint16_t *y = malloc((size_t)(m * c.ldy) * 2);
    download(y, dy, (size_t)(m * c.ldy) * 2);

    uint8_t *q = malloc((size_t)(m * k));
    float *s = malloc((size_t)(m * (k / 128)) * 4);
    /* Decoded once, so the reference loops are plain float64 products. */
    double *qv = malloc((size_t)(m * k) * sizeof *qv);
    double *wv = malloc((size_t)(G * n * k) * sizeof *wv);
    for (int64_t i = 0; i < G * n * k; i++)
        wv[i] = qplug_e4m3_to_f32(w[i]);
    double num = 0.0, den = 0.0;
    int64_t bad_inf = 0, nonfinite = 0, unpoisoned = 0;
    for (int64_t g = 0; g < G; g++) {
        ref_quant(x, c.ldx, g * k, m, k, c.fmt, q, s);
        for (int64_t i = 0; i < m * k; i++)
            qv[i] = qplug_e4m3_to_f32(q[i]);
        for (int64_t r = 0; r < m; r++)
            for (int64_t j = 0; j < n; j++) {
                int64_t wr = g * n + j;
                double v = bf16_value(y[r * c.ldy + g * n + j]);
                if (r == c.inf_row && g == 0) {
                    bad_inf += !isnan(v);
                    continue;
                }
                double acc = 0.0;
                for (int64_t kb = 0; kb < k / 128; kb++) {
                    double part = 0.0;
                    for (int i = 0; i < 128; i++)
                        part += qv[r * k + kb * 128 + i] * wv[wr * k + kb * 128 + i];
                    acc += part * s[r * (k / 128) + kb] * ws[(wr / 128) * (k / 128) + kb];
                }
                if (!isfinite(v))
                    nonfinite++;
                num += (v - acc) * (v - acc);
                den += acc * acc;
            }
    }
    for (int64_t r = 0; r < m; r++)
        for (int64_t j = G * n; j < c.ldy; j++)
            unpoisoned += y[r * c.ldy + j] != 0xffff;
    double e = den > 0 ? sqrt(num / den) : INFINITY;
    printf("m=%lld n=%lld k=%lld G=%lld ldx=%lld ldy=%lld fmt=%s inf_row=%d: rel L2 %.3g\n",
           (long long)m, (long long)n, (long long)k, (long long)G, (long long)c.ldx,
           (long long)c.ldy, c.fmt == QPLUG_CUDA_SCALE_F32 ? "f32" : "ue8m0", c.inf_row, e);
    CHECKF(nonfinite == 0, "m=%lld n=%lld k=%lld: %lld non-finite outputs", (long long)m,
           (long long)n, (long long)k, (long long)nonfinite);
    CHECKF(e < BOUND_REL_L2, "m=%lld n=%lld k=%lld G=%lld: rel L2 %.3g >= %g", (long long)m,
           (long long)n, (long long)k, (long long)G, e, BOUND_REL_L2);
    CHECKF(bad_inf == 0, "inf row %d: %lld outputs not NaN", c.inf_row, (long long)bad_inf);
    CHECKF(unpoisoned == 0, "%lld padding outputs of y written", (long long)unpoisoned);
    free(qv);
    free(wv);
    free(q);
    free(s);
    free(y);
    free(x);
    free(w);
    free(ws);
    cudaFree(dx);
    cudaFree(dw);
    cudaFree(dws);
    cudaFree(dy);
}

/* Codes and scales bit-exact: with w[j][i] = (i == j) and unit weight
 * scales (n = k), y[r][j] = e4m3(q[r][j]) * s[r][j / 128] in fp32, then
 * BF16; the host computes the same from its own quantization. With UE8M0
 * the product is exact, so any code or scale difference shows. */
static void test_identity_x(uint16_t *x, int64_t m, int64_t k, qplug_cuda__scale_fmt fmt);

static void test_identity(int64_t m, int64_t k, qplug_cuda__scale_fmt fmt)
{
    test_identity_x(make_x(m, k), m, k, fmt);
}

/* F32 activation scales on every pair of BF16 mantissas: row r's 128-groups
 * have their maximum 1.r * 2^e (the scale amax / 448, not a power of two)
 * in the first column and the 127 others at mantissa (i + g) % 128 and
 * 1 + {0, 4, 8, 13}[g] binades below it, alternating in sign, so x / s
 * spans the E4M3 range from 448 down into its subnormals. The kernel
 * divides by s without a division instruction; a quotient one ulp off
 * would change a code where it lands near an E4M3 rounding boundary, which
 * among these 65024 quotients per binade offset some do. */
static uint16_t *make_x_f32_pairs(void)
{
    const int64_t m = 128, k = 512;
    static const int drop[4] = {1, 5, 9, 14};
    uint16_t *x = malloc((size_t)(m * k) * 2);
    for (int64_t r = 0; r < m; r++) {
        int e = 127 + (int)(r % 5) - 2;
        for (int g = 0; g < 4; g++) {
            uint16_t *row = x + r * k + g * 128;
            row[0] = (uint16_t)((e << 7) | (int)r);
            for (int i = 1; i < 128; i++)
                row[i] = (uint16_t)((i % 2) << 15 | (e - drop[g]) << 7 | ((i + g) % 128));
        }
    }
    return x;
}

static void test_identity_x(uint16_t *x, int64_t m, int64_t k, qplug_cuda__scale_fmt fmt)
{
    uint8_t *w = calloc((size_t)(k * k), 1);
    float *ws = malloc((size_t)((k / 128) * (k / 128)) * 4);
    for (int64_t j = 0; j < k; j++)
        w[j * k + j] = 0x38; /* 1.0 */
    for (int64_t i = 0; i < (k / 128) * (k / 128); i++)
        ws[i] = 1.0f;
    void *dx = dev_upload(x, (size_t)(m * k) * 2);
    void *dw = dev_upload(w, (size_t)(k * k));
    void *dws = dev_upload(ws, (size_t)((k / 128) * (k / 128)) * 4);
    void *dy = dev_alloc_poison((size_t)(m * k) * 2);
    qplug_cuda__err err = {{0}};
    qplug_status st =
        qplug_cuda__fp8_gemm_bf16x(dx, k, m, k, k, 1, fmt, dw, dws, dy, k, NULL, &err);
    CHECKF(st == QPLUG_OK, "identity: %s", err.msg);
    uint16_t *y = malloc((size_t)(m * k) * 2);
    download(y, dy, (size_t)(m * k) * 2);
    uint8_t *q = malloc((size_t)(m * k));
    float *s = malloc((size_t)(m * (k / 128)) * 4);
    ref_quant(x, k, 0, m, k, fmt, q, s);
    int64_t bad = 0;
    for (int64_t r = 0; r < m; r++)
        for (int64_t j = 0; j < k; j++) {
            float v = qplug_e4m3_to_f32(q[r * k + j]) * s[r * (k / 128) + j / 128];
            /* BF16 round to nearest even of a finite float. */
            uint32_t u;
            memcpy(&u, &v, 4);
            u += 0x7fffu + ((u >> 16) & 1u);
            uint16_t want = (uint16_t)(u >> 16);
            uint16_t got = y[r * k + j];
            if (got != want && !(((got | want) & 0x7fff) == 0)) {
                if (bad < 4)
                    printf("  identity r=%lld j=%lld: got %04x want %04x (code %02x)\n",
                           (long long)r, (long long)j, got, want, q[r * k + j]);
                bad++;
            }
        }
    printf("identity m=%lld k=%lld fmt=%s: %lld outputs differ\n", (long long)m, (long long)k,
           fmt == QPLUG_CUDA_SCALE_F32 ? "f32" : "ue8m0", (long long)bad);
    CHECKF(bad == 0, "identity m=%lld k=%lld fmt=%d: %lld outputs differ from host codes",
           (long long)m, (long long)k, (int)fmt, (long long)bad);
    free(q);
    free(s);
    free(y);
    free(x);
    free(w);
    free(ws);
    cudaFree(dx);
    cudaFree(dw);
    cudaFree(dws);
    cudaFree(dy);
}

/* The call captured into a CUDA graph gives the same bits as a direct call. */
static void test_graph(void)
{
    int64_t m = 96, n = 256, k = 512;
    uint16_t *x = make_x(m, k);
    uint8_t *w;
    float *ws;
    make_w(n, k, &w, &ws);
    void *dx = dev_upload(x, (size_t)(m * k) * 2);
    void *dw = dev_upload(w, (size_t)(n * k));
    void *dws = dev_upload(ws, (size_t)(n / 128 * (k / 128)) * 4);
    void *dy0 = dev_alloc_poison((size_t)(m * n) * 2);
    void *dy1 = dev_alloc_poison((size_t)(m * n) * 2);
    qplug_cuda__err err = {{0}};
    cudaStream_t st;
    cudaStreamCreate(&st);
    CHECK(qplug_cuda__fp8_gemm_bf16x(dx, k, m, n, k, 1, QPLUG_CUDA_SCALE_UE8M0, dw, dws, dy0, n,
                                     st, &err) == QPLUG_OK);
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    CHECK(cuda_ok(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal), "capture"));
    qplug_status s = qplug_cuda__fp8_gemm_bf16x(dx, k, m, n, k, 1, QPLUG_CUDA_SCALE_UE8M0, dw, dws,
                                                dy1, n, st, &err);
    CHECKF(s == QPLUG_OK, "graph capture: %s", err.msg);
    CHECK(cuda_ok(cudaStreamEndCapture(st, &graph), "end capture"));
    CHECK(cuda_ok(cudaGraphInstantiate(&exec, graph, 0), "instantiate"));
    CHECK(cuda_ok(cudaGraphLaunch(exec, st), "graph launch"));
    cudaStreamSynchronize(st);
    uint16_t *y0 = malloc((size_t)(m * n) * 2), *y1 = malloc((size_t)(m * n) * 2);
    download(y0, dy0, (size_t)(m * n) * 2);
    download(y1, dy1, (size_t)(m * n) * 2);
    CHECK(memcmp(y0, y1, (size_t)(m * n) * 2) == 0);
    if (exec)
        cudaGraphExecDestroy(exec);
    if (graph)
        cudaGraphDestroy(graph);
    cudaStreamDestroy(st);
    free(y0);
    free(y1);
    free(x);
    free(w);
    free(ws);
    cudaFree(dx);
    cudaFree(dw);
    cudaFree(dws);
    cudaFree(dy0);
    cudaFree(dy1);
}

static void test_bad_args(void)
{
    void *d = dev_alloc_poison(1 << 20);
    uint8_t *b = d;
    qplug_cuda__err err = {{0}};
    const float *fs = (const float *)d;
    CHECK(qplug_cuda__fp8_gemm_bf16x(NULL, 128, 1, 128, 128, 1, QPLUG_CUDA_SCALE_F32, b, fs, d, 128,
                                     NULL, &err) == QPLUG_ERR_ARGUMENT);
    CHECK(strstr(err.msg, "fp8_gemm_bf16x") != NULL);
    CHECK(qplug_cuda__fp8_gemm_bf16x(d, 128, 1, 100, 128, 1, QPLUG_CUDA_SCALE_F32, b, fs, d, 128,
                                     NULL, &err) == QPLUG_ERR_SHAPE);
    CHECK(qplug_cuda__fp8_gemm_bf16x(d, 128, 0, 128, 128, 1, QPLUG_CUDA_SCALE_F32, b, fs, d, 128,
                                     NULL, &err) == QPLUG_ERR_SHAPE);
    CHECK(qplug_cuda__fp8_gemm_bf16x(d, 256, 1, 128, 128, 3, QPLUG_CUDA_SCALE_F32, b, fs, d, 384,
                                     NULL, &err) == QPLUG_ERR_SHAPE);
    CHECK(qplug_cuda__fp8_gemm_bf16x(b + 8, 128, 1, 128, 128, 1, QPLUG_CUDA_SCALE_F32, b, fs, d,
                                     128, NULL, &err) == QPLUG_ERR_ARGUMENT);
    CHECK(qplug_cuda__fp8_gemm_bf16x(d, 132, 1, 128, 128, 1, QPLUG_CUDA_SCALE_F32, b, fs, d, 128,
                                     NULL, &err) == QPLUG_ERR_ARGUMENT);
    CHECK(qplug_cuda__fp8_gemm_bf16x(d, 128, 1, 128, 128, 1, (qplug_cuda__scale_fmt)7, b, fs, d,
                                     128, NULL, &err) == QPLUG_ERR_ARGUMENT);
    /* An x row stride the tensor map cannot hold (2^40 bytes and more). */
    CHECK(qplug_cuda__fp8_gemm_bf16x(d, (int64_t)1 << 39, 1, 128, 128, 1, QPLUG_CUDA_SCALE_F32, b,
                                     fs, d, 128, NULL, &err) == QPLUG_ERR_SHAPE);
    CHECK(qplug_cuda__fp8_gemm_bf16x_supported(4096, 512, 4096, 1) == 1);
    CHECK(qplug_cuda__fp8_gemm_bf16x_supported(17, 1024, 4096, 16) == 1);
    CHECK(qplug_cuda__fp8_gemm_bf16x_supported(1, 64, 128, 1) == 0);
    CHECK(qplug_cuda__fp8_gemm_bf16x_supported(1, 128, 192, 1) == 0);
    CHECK(qplug_cuda__fp8_gemm_bf16x_supported(1, 128, 128, 0) == 0);
    cudaDeviceSynchronize();
    cudaFree(d);
}

int main(void)
{
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count < 1) {
        printf("no CUDA device: skipped\n");
        return SKIP_CODE;
    }
    struct cudaDeviceProp prop;
    cudaGetDeviceProperties(&prop, 0);
    printf("device: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
    if (prop.major != 9) {
        printf("fp8_gemm_bf16x needs sm_90a: skipped\n");
        return SKIP_CODE;
    }
    test_bad_args();
    test_identity(200, 256, QPLUG_CUDA_SCALE_UE8M0);
    test_identity(131, 384, QPLUG_CUDA_SCALE_F32);
    /* n = k = 512 runs in clusters of 4 CTAs that share the quantized x
     * tile through distributed shared memory: codes and scales quantized by
     * one CTA must reach the other three unchanged. */
    test_identity(200, 512, QPLUG_CUDA_SCALE_UE8M0);
    test_identity(70, 1024, QPLUG_CUDA_SCALE_F32);
    test_identity_x(make_x_f32_pairs(), 128, 512, QPLUG_CUDA_SCALE_F32);
    const struct gcase cases[] = {
        {17, 128, 128, 1, 128, 128, QPLUG_CUDA_SCALE_UE8M0, -1},
        {17, 128, 128, 1, 128, 128, QPLUG_CUDA_SCALE_F32, -1},
        {130, 256, 512, 1, 512, 256, QPLUG_CUDA_SCALE_F32, 7},
        {300, 384, 1024, 1, 1024, 384, QPLUG_CUDA_SCALE_UE8M0, 129},
        {64, 512, 4096, 1, 4096, 512, QPLUG_CUDA_SCALE_UE8M0, -1},
        {77, 128, 256, 3, 3 * 256 + 64, 3 * 128 + 32, QPLUG_CUDA_SCALE_UE8M0, -1},
        {77, 128, 256, 3, 3 * 256 + 64, 3 * 128 + 32, QPLUG_CUDA_SCALE_F32, 76},
        {256, 256, 1280, 2, 2 * 1280, 2 * 256, QPLUG_CUDA_SCALE_UE8M0, 200},
        {1, 256, 256, 1, 256, 256, QPLUG_CUDA_SCALE_F32, -1},
        /* Clusters of 4 (n / 128 divisible by 4) and 2, grouped, over
         * several m-tiles with a partial last one. */
        {300, 512, 640, 2, 2 * 640 + 64, 2 * 512 + 32, QPLUG_CUDA_SCALE_UE8M0, 257},
        {129, 256, 384, 3, 3 * 384, 3 * 256, QPLUG_CUDA_SCALE_F32, -1},
        {520, 1024, 1152, 1, 1152, 1024, QPLUG_CUDA_SCALE_UE8M0, -1},
        /* Five m-tiles: with pairs of m-tiles sharing weight tiles
         * (QPLUG_WGMMA_CLUSTER_M=2) the last pair has a padding tile. */
        {600, 256, 512, 2, 2 * 512, 2 * 256 + 8, QPLUG_CUDA_SCALE_F32, 599},
        /* k / 128 = 516 k-blocks: more weight scales than the kernel keeps
         * in shared memory (512), so the consumers load them per k-block. */
        {3, 128, 66048, 1, 66048, 128, QPLUG_CUDA_SCALE_UE8M0, -1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        test_case(cases[i]);
    test_graph();
    return test_done();
}
