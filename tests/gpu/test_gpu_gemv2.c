/* GPU checks of qplug_cuda__gemv_bf16, the decode GEMV with the activation
 * quantization fused in and all groups of a grouped layer in one launch.
 *
 * Three checks per case:
 * 1. Against float64: x is quantized on the host by the rule of formats.md
 *    (amax = max(|x|, 1e-4) per 1x128 group, F32 s = amax / 448 or UE8M0
 *    s = 2^ceil(log2(amax / 448)), E4M3 nearest-even of x / s, saturating)
 *    with ml_dtypes' decode tables (ref_tables.h), the weights decoded
 *    exactly, the products summed in float64. Bound: relative L2 5e-3 (BF16
 *    output rounding alone is about 2e-3).
 * 2. Bit-identical to the unfused path for one group: act_quant_fp8_ld
 *    followed by gemv_fp8/_mxfp4/_nvfp4 (both are checked against float64
 *    in test_gpu_kernels), which proves the fused quantization (shared by
 *    the warp at m = 1, per lane above) gives the same codes and scales. Every case runs with the fused and with the unfused path of
 *    qplug_cuda__gemv_bf16.
 * 3. y is poisoned with 0xFF (NaN) over a row stride wider than the groups'
 *    columns: every output must be written and the gap columns untouched.
 * Inputs are random (seeded); activations span 14 octaves per group with
 * one group of tiny values at the 1e-4 floor. Exits 77 without a GPU. */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qplug_cuda.h"
#include "ref_tables.h"
#include "gpu_test_ref.h"
#include "testutil.h"

#define SKIP_CODE 77
#define BOUND_BF16_OUT 5e-3

#define QPLUG_TEST_RNG_SEED 0x2545f4914f6cdd1dull
#include "gpu_test_random.h"
#include "gpu_test_mem.h"

/* The activation scale of one 128-group by the formats.md rule, in float
 * arithmetic as the rule states it. */
static float ref_scale(const uint16_t *g, int ue8m0)
{
    float amax = 1e-4f;
    for (int i = 0; i < 128; i++) {
        float a = fabsf(bf16_value(g[i]));
        if (a > amax)
            amax = a;
    }
    float r = amax / 448.0f;
    if (!ue8m0)
        return r;
    int e;
    double f = frexp((double)r, &e); /* r = f * 2^e, f in [0.5, 1) */
    return (float)(f == 0.5 ? r : ldexp(1.0, e));
}

/* Dequantized activations xd [m, K] of x [m, ldx] (K = groups * k). */
static double *ref_quant(const uint16_t *x, int64_t ldx, int64_t m, int64_t K, int ue8m0)
{
    double *xd = malloc((size_t)(m * K) * sizeof *xd);
    for (int64_t r = 0; r < m; r++)
        for (int64_t c0 = 0; c0 < K; c0 += 128) {
            const uint16_t *g = x + r * ldx + c0;
            float s = ref_scale(g, ue8m0);
            for (int i = 0; i < 128; i++) {
                float q = bf16_value(g[i]) / s;
                xd[r * K + c0 + i] = ref_e4m3_round(q) * s;
            }
        }
    return xd;
}

/* Random BF16 x [m, ldx]: each 128-group has its own magnitude. */
static uint16_t *make_x(int64_t m, int64_t ldx)
{
    uint16_t *x = malloc((size_t)(m * ldx) * 2);
    for (int64_t r = 0; r < m; r++)
        for (int64_t c0 = 0; c0 < ldx; c0 += 8) {
            double mag = pow(2.0, -6.0 + 14.0 * rng_uniform());
            if (c0 % 128 == 0 && rng_next() % 16 == 0)
                mag = 1e-6;
            for (int i = 0; i < 8; i++)
                x[r * ldx + c0 + i] = bf16_bits((float)(rng_normal() * mag));
        }
    return x;
}

/* One layer's weights for format f: rows = groups * n, host bytes and the
 * exact value of each weight. */
typedef struct wset {
    qplug_cuda__gemv_fmt f;
    int64_t rows, k;
    uint8_t *w, *sc; /* FP8: E4M3 + float scales (sc holds floats); FP4: packed + scale bytes */
    float global;
    void *dw, *dsc; /* device: FP8 as is, FP4 repacked */
} wset;

static void make_w(wset *W, qplug_cuda__gemv_fmt f, int64_t rows, int64_t k)
{
    memset(W, 0, sizeof *W);
    W->f = f;
    W->rows = rows;
    W->k = k;
    W->global = 1.0f;
    if (f == QPLUG_CUDA_GEMV_FP8) {
        int64_t ns = ((rows + 127) / 128) * (k / 128);
        W->w = malloc((size_t)(rows * k));
        W->sc = malloc((size_t)ns * 4);
        for (int64_t i = 0; i < rows * k; i++)
            W->w[i] = rand_e4m3();
        for (int64_t i = 0; i < ns; i++)
            ((float *)W->sc)[i] = (float)pow(2.0, -12.0 + 6.0 * rng_uniform());
        W->dw = dev_upload(W->w, (size_t)(rows * k));
        W->dsc = dev_upload(W->sc, (size_t)ns * 4);
        return;
    }
    int nv = f == QPLUG_CUDA_GEMV_NVFP4;
    int64_t ns = rows * (k / (nv ? 16 : 32));
    W->w = malloc((size_t)(rows * k / 2));
    W->sc = malloc((size_t)ns);
    for (int64_t i = 0; i < rows * k / 2; i++)
        W->w[i] = (uint8_t)rng_next();
    for (int64_t i = 0; i < ns; i++)
        W->sc[i] = nv ? (uint8_t)(0x18 + rng_next() % 0x50) : (uint8_t)(115 + rng_next() % 12);
    if (nv)
        W->global = (float)(0.5 + rng_uniform()) * 1e-2f;
    void *raw = dev_upload(W->w, (size_t)(rows * k / 2));
    W->dw = dev_alloc_poison((size_t)(rows * k / 2));
    W->dsc = dev_upload(W->sc, (size_t)ns);
    qplug_cuda__err err = {{0}};
    qplug_status s = qplug_cuda__fp4_repack(raw, rows, k, W->dw, NULL, &err);
    CHECKF(s == QPLUG_OK, "fp4_repack: %s", err.msg);
    cudaDeviceSynchronize();
    cudaFree(raw);
}

static void free_w(wset *W)
{
    free(W->w), free(W->sc);
    cudaFree(W->dw), cudaFree(W->dsc);
}

static double w_value(const wset *W, int64_t row, int64_t e)
{
    int64_t k = W->k;
    if (W->f == QPLUG_CUDA_GEMV_FP8)
        return ref_e4m3[W->w[row * k + e]] * ((const float *)W->sc)[(row / 128) * (k / 128) + e / 128];
    uint8_t b = W->w[row * (k / 2) + e / 2];
    double v = ref_e2m1[(e & 1) ? (b >> 4) : (b & 15)];
    if (W->f == QPLUG_CUDA_GEMV_NVFP4)
        return v * ref_e4m3[W->sc[row * (k / 16) + e / 16]] * (double)W->global;
    return v * ldexp(1.0, (int)W->sc[row * (k / 32) + e / 32] - 127);
}

static const char *fmt_name(qplug_cuda__gemv_fmt f)
{
    return f == QPLUG_CUDA_GEMV_FP8 ? "fp8" : f == QPLUG_CUDA_GEMV_MXFP4 ? "mxfp4" : "nvfp4";
}

/* The unfused path for group g into contiguous y [m, n]: act_quant_fp8_ld
 * of the group's slice of x, then the format's GEMV. */
static qplug_status unfused(const wset *W, const uint16_t *dx, int64_t ldx, int64_t g, int64_t m,
                            int64_t n, int64_t k, int ue8m0, void *dy, qplug_cuda__err *err)
{
    void *dxq = dev_alloc_poison((size_t)(m * k));
    float *dxs = dev_alloc_poison((size_t)(m * (k / 128)) * 4);
    qplug_status s = qplug_cuda__act_quant_fp8_ld(
        dx + g * k, ldx, m, k, ue8m0 ? QPLUG_CUDA_SCALE_UE8M0 : QPLUG_CUDA_SCALE_F32, dxq, dxs,
        NULL, err);
    if (s == QPLUG_OK) {
        if (W->f == QPLUG_CUDA_GEMV_FP8)
            s = qplug_cuda__gemv_fp8((const uint8_t *)W->dw + g * n * k,
                                     (const float *)W->dsc + (g * n / 128) * (k / 128), dxq, dxs,
                                     m, n, k, dy, NULL, err);
        else if (W->f == QPLUG_CUDA_GEMV_MXFP4)
            s = qplug_cuda__gemv_mxfp4((const uint8_t *)W->dw + g * n * k / 2,
                                       (const uint8_t *)W->dsc + g * n * (k / 32), dxq, dxs, m, n,
                                       k, dy, NULL, err);
        else
            s = qplug_cuda__gemv_nvfp4((const uint8_t *)W->dw + g * n * k / 2,
                                       (const uint8_t *)W->dsc + g * n * (k / 16), W->global, dxq,
                                       dxs, m, n, k, dy, NULL, err);
    }
    cudaDeviceSynchronize();
    cudaFree(dxq), cudaFree(dxs);
    return s;
}

/* One case: format f, m tokens, G groups of n x k, x row stride G*k + xpad,
 * y row stride G*n + ypad. */
static void run_case_path(qplug_cuda__gemv_fmt f, int ue8m0, int64_t m, int64_t n, int64_t k,
                          int64_t G, int64_t xpad, int64_t ypad, qplug_cuda__gemv_path path)
{
    int64_t ldx = G * k + xpad, ldy = G * n + ypad;
    wset W;
    make_w(&W, f, G * n, k);
    uint16_t *x = make_x(m, ldx);
    uint16_t *dx = dev_upload(x, (size_t)(m * ldx) * 2);
    uint16_t *dy = dev_alloc_poison((size_t)(m * ldy) * 2);
    qplug_cuda__err err = {{0}};
    qplug_cuda__scale_fmt af = ue8m0 ? QPLUG_CUDA_SCALE_UE8M0 : QPLUG_CUDA_SCALE_F32;
    size_t sb = qplug_cuda__gemv_bf16_scratch(f, af, m, n, k, G, path);
    CHECKF(path != QPLUG_CUDA_GEMV_UNFUSED || sb >= (size_t)(m * G * k),
           "gemv_bf16_scratch: %zu bytes for the unfused path", sb);
    void *scratch = sb ? dev_alloc_poison(sb) : NULL;
    qplug_status s = qplug_cuda__gemv_bf16(f, W.dw, W.dsc, W.global, dx, ldx, af, m, n, k, G, dy,
                                           ldy, path, scratch, NULL, &err);
    CHECKF(s == QPLUG_OK, "gemv_bf16 %s m=%lld n=%lld k=%lld G=%lld path %d: %s", fmt_name(f),
           (long long)m, (long long)n, (long long)k, (long long)G, (int)path, err.msg);
    uint16_t *y = malloc((size_t)(m * ldy) * 2);
    download(y, dy, (size_t)(m * ldy) * 2);

    /* 3: the gap columns keep their poison. */
    int64_t touched = 0;
    for (int64_t r = 0; r < m; r++)
        for (int64_t c = G * n; c < ldy; c++)
            touched += y[r * ldy + c] != 0xffff;
    CHECKF(touched == 0, "gemv_bf16 %s: %lld gap outputs written", fmt_name(f), (long long)touched);

    /* 1: float64 reference. */
    double *xd = ref_quant(x, ldx, m, G * k, ue8m0);
    double *ref = malloc((size_t)(m * G * n) * sizeof *ref);
    double *wrow = malloc((size_t)k * sizeof *wrow);
    double num = 0.0, den = 0.0;
    int bad = 0;
    for (int64_t g = 0; g < G; g++)
        for (int64_t c = 0; c < n; c++) {
            for (int64_t e = 0; e < k; e++)
                wrow[e] = w_value(&W, g * n + c, e);
            for (int64_t r = 0; r < m; r++) {
                double acc = 0.0;
                const double *xr = xd + r * G * k + g * k;
                for (int64_t e = 0; e < k; e++)
                    acc += xr[e] * wrow[e];
                double v = bf16_value(y[r * ldy + g * n + c]);
                if (!isfinite(v))
                    bad++;
                num += (v - acc) * (v - acc);
                den += acc * acc;
                ref[r * G * n + g * n + c] = acc;
            }
        }
    double rel = bad ? INFINITY : sqrt(num / (den > 0 ? den : 1.0));
    CHECKF(rel < BOUND_BF16_OUT,
           "gemv_bf16 %s %s m=%lld n=%lld k=%lld G=%lld: rel L2 %.3g >= %g (%d non-finite)",
           fmt_name(f), ue8m0 ? "ue8m0" : "f32", (long long)m, (long long)n, (long long)k,
           (long long)G, rel, BOUND_BF16_OUT, bad);

    /* 2: bit-identical to the unfused path (one group: the same launch
     * geometry, so the same order of additions). */
    if (G == 1) {
        uint16_t *dy2 = dev_alloc_poison((size_t)(m * n) * 2);
        s = unfused(&W, dx, ldx, 0, m, n, k, ue8m0, dy2, &err);
        CHECKF(s == QPLUG_OK, "unfused %s: %s", fmt_name(f), err.msg);
        uint16_t *y2 = malloc((size_t)(m * n) * 2);
        download(y2, dy2, (size_t)(m * n) * 2);
        int64_t diff = 0;
        for (int64_t r = 0; r < m; r++)
            diff += memcmp(y + r * ldy, y2 + r * n, (size_t)n * 2) != 0;
        CHECKF(diff == 0, "gemv_bf16 %s %s m=%lld n=%lld k=%lld: %lld rows differ from "
                          "act_quant + gemv",
               fmt_name(f), ue8m0 ? "ue8m0" : "f32", (long long)m, (long long)n, (long long)k,
               (long long)diff);
        free(y2);
        cudaFree(dy2);
    }
    printf("gemv_bf16 %-5s %-5s %s m=%-3lld n=%-5lld k=%-5lld G=%-2lld rel L2 %.3g\n",
           fmt_name(f), ue8m0 ? "ue8m0" : "f32", sb ? "unfused" : "fused  ", (long long)m,
           (long long)n, (long long)k, (long long)G, rel);
    free(x), free(y), free(xd), free(ref), free(wrow);
    cudaFree(dx), cudaFree(dy), cudaFree(scratch);
    free_w(&W);
}

/* Every case runs both ways: fused in the GEMV, and quantized once into
 * scratch before a GEMV launch over all groups. */
static void run_case(qplug_cuda__gemv_fmt f, int ue8m0, int64_t m, int64_t n, int64_t k,
                     int64_t G, int64_t xpad, int64_t ypad)
{
    run_case_path(f, ue8m0, m, n, k, G, xpad, ypad, QPLUG_CUDA_GEMV_FUSED);
    run_case_path(f, ue8m0, m, n, k, G, xpad, ypad, QPLUG_CUDA_GEMV_UNFUSED);
}

/* Inf in x: the group's scale is Inf and the fused path divides as act_quant
 * does; its outputs must equal the unfused path's bit for bit (NaN where
 * act_quant gives NaN). */
static void test_inf(qplug_cuda__gemv_fmt f)
{
    int64_t m = 3, n = 144, k = 384;
    wset W;
    make_w(&W, f, n, k);
    uint16_t *x = make_x(m, k);
    x[1 * k + 130] = 0x7f80; /* +Inf in row 1, group 1 */
    uint16_t *dx = dev_upload(x, (size_t)(m * k) * 2);
    uint16_t *dy = dev_alloc_poison((size_t)(m * n) * 2), *dy2 = dev_alloc_poison((size_t)(m * n) * 2);
    qplug_cuda__err err = {{0}};
    qplug_status s =
        qplug_cuda__gemv_bf16(f, W.dw, W.dsc, W.global, dx, k, QPLUG_CUDA_SCALE_F32, m, n, k, 1,
                              dy, n, QPLUG_CUDA_GEMV_FUSED, NULL, NULL, &err);
    CHECKF(s == QPLUG_OK, "gemv_bf16 inf: %s", err.msg);
    s = unfused(&W, dx, k, 0, m, n, k, 0, dy2, &err);
    CHECKF(s == QPLUG_OK, "unfused inf: %s", err.msg);
    uint16_t *y = malloc((size_t)(m * n) * 2), *y2 = malloc((size_t)(m * n) * 2);
    download(y, dy, (size_t)(m * n) * 2);
    download(y2, dy2, (size_t)(m * n) * 2);
    CHECKF(memcmp(y, y2, (size_t)(m * n) * 2) == 0, "gemv_bf16 %s with Inf in x differs from "
                                                     "act_quant + gemv", fmt_name(f));
    int64_t finite_row0 = 0;
    for (int64_t c = 0; c < n; c++)
        finite_row0 += isfinite(bf16_value(y[c]));
    CHECKF(finite_row0 == n, "gemv_bf16 %s: Inf in row 1 spilled into row 0", fmt_name(f));
    free(x), free(y), free(y2);
    cudaFree(dx), cudaFree(dy), cudaFree(dy2);
    free_w(&W);
}

/* One call with the fused path, no scratch and the default stream. */
static qplug_status call_fused(qplug_cuda__gemv_fmt f, const void *w, const void *x, int64_t ldx,
                               qplug_cuda__scale_fmt af, int64_t m, int64_t n, int64_t k,
                               int64_t G, void *y, int64_t ldy)
{
    qplug_cuda__err err = {{0}};
    return qplug_cuda__gemv_bf16(f, w, w, 1.0f, x, ldx, af, m, n, k, G, y, ldy,
                                 QPLUG_CUDA_GEMV_FUSED, NULL, NULL, &err);
}

static void test_bad_args(void)
{
    void *d = dev_alloc_poison(1 << 16);
    qplug_cuda__gemv_fmt fp8 = QPLUG_CUDA_GEMV_FP8;
    qplug_cuda__scale_fmt f32 = QPLUG_CUDA_SCALE_F32;
    /* m out of range, n not a multiple of 16, k not a multiple of 128. */
    CHECK(call_fused(fp8, d, d, 128, f32, 17, 16, 128, 1, d, 16) == QPLUG_ERR_SHAPE);
    CHECK(call_fused(fp8, d, d, 128, f32, 0, 16, 128, 1, d, 16) == QPLUG_ERR_SHAPE);
    CHECK(call_fused(fp8, d, d, 128, f32, 1, 24, 128, 1, d, 24) == QPLUG_ERR_SHAPE);
    CHECK(call_fused(fp8, d, d, 192, f32, 1, 16, 192, 1, d, 16) == QPLUG_ERR_SHAPE);
    /* Strides below the groups' width, no groups, grouped FP8 with n % 128. */
    CHECK(call_fused(fp8, d, d, 128, f32, 1, 128, 128, 2, d, 256) == QPLUG_ERR_SHAPE);
    CHECK(call_fused(fp8, d, d, 256, f32, 1, 128, 128, 2, d, 128) == QPLUG_ERR_SHAPE);
    CHECK(call_fused(fp8, d, d, 128, f32, 1, 128, 128, 0, d, 128) == QPLUG_ERR_SHAPE);
    CHECK(call_fused(fp8, d, d, 256, f32, 1, 64, 128, 2, d, 128) == QPLUG_ERR_SHAPE);
    /* Misaligned x or stride, NULL pointers, unknown formats and paths. */
    CHECK(call_fused(fp8, d, (char *)d + 2, 128, f32, 1, 16, 128, 1, d, 16) ==
          QPLUG_ERR_ARGUMENT);
    CHECK(call_fused(fp8, d, d, 132, f32, 1, 16, 128, 1, d, 16) == QPLUG_ERR_ARGUMENT);
    /* Weights, scales or y less aligned than the kernels' loads and stores
     * are refused before any launch (a misaligned access would fault). */
    CHECK(call_fused(fp8, (char *)d + 8, d, 128, f32, 1, 16, 128, 1, d, 16) ==
          QPLUG_ERR_ARGUMENT);
    CHECK(call_fused(fp8, d, d, 128, f32, 1, 16, 128, 1, (char *)d + 1, 16) ==
          QPLUG_ERR_ARGUMENT);
    qplug_cuda__err aerr = {{0}};
    CHECK(qplug_cuda__gemv_bf16(QPLUG_CUDA_GEMV_NVFP4, d, (char *)d + 4, 1.0f, d, 128, f32, 1, 16,
                                128, 1, d, 16, QPLUG_CUDA_GEMV_FUSED, NULL, NULL,
                                &aerr) == QPLUG_ERR_ARGUMENT);
    CHECK(strstr(aerr.msg, "gemv_bf16 (nvfp4)") != NULL);
    CHECK(qplug_cuda__gemv_fp8(d, (const float *)d, (char *)d + 4, (const float *)d, 1, 16, 128,
                               d, NULL, &aerr) == QPLUG_ERR_ARGUMENT);
    cudaDeviceSynchronize();
    CHECK(cudaGetLastError() == cudaSuccess);
    CHECK(call_fused(fp8, NULL, d, 128, f32, 1, 16, 128, 1, d, 16) == QPLUG_ERR_ARGUMENT);
    CHECK(call_fused((qplug_cuda__gemv_fmt)7, d, d, 128, f32, 1, 16, 128, 1, d, 16) ==
          QPLUG_ERR_ARGUMENT);
    CHECK(call_fused(fp8, d, d, 128, (qplug_cuda__scale_fmt)5, 1, 16, 128, 1, d, 16) ==
          QPLUG_ERR_ARGUMENT);
    qplug_cuda__err err = {{0}};
    CHECK(qplug_cuda__gemv_bf16(fp8, d, d, 1.0f, d, 128, f32, 1, 16, 128, 1, d, 16,
                                (qplug_cuda__gemv_path)9, NULL, NULL, &err) == QPLUG_ERR_ARGUMENT);
    /* The unfused path without scratch is refused, not run. */
    CHECK(qplug_cuda__gemv_bf16(fp8, d, d, 1.0f, d, 128, f32, 1, 16, 128, 1, d, 16,
                                QPLUG_CUDA_GEMV_UNFUSED, NULL, NULL, &err) == QPLUG_ERR_ARGUMENT);
    CHECK(qplug_cuda__gemv_bf16_scratch(fp8, f32, 4, 256, 512, 3, QPLUG_CUDA_GEMV_FUSED) == 0);
    /* Arguments the call refuses (unknown format, n % 16, too many groups)
     * ask for no scratch, even on the unfused path. */
    CHECK(qplug_cuda__gemv_bf16_scratch((qplug_cuda__gemv_fmt)7, f32, 4, 256, 512, 3,
                                        QPLUG_CUDA_GEMV_UNFUSED) == 0);
    CHECK(qplug_cuda__gemv_bf16_scratch(fp8, f32, 4, 264, 512, 3, QPLUG_CUDA_GEMV_UNFUSED) == 0);
    CHECK(qplug_cuda__gemv_bf16_scratch(fp8, f32, 4, 256, 512, 65536, QPLUG_CUDA_GEMV_UNFUSED) ==
          0);
    CHECK(qplug_cuda__gemv_bf16_scratch(fp8, f32, 4, 256, 512, 3, QPLUG_CUDA_GEMV_UNFUSED) >=
          (size_t)(4 * 3 * 512 + 4 * 3 * 4 * 4));
    cudaFree(d);
}

int main(void)
{
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count < 1) {
        printf("no CUDA device: skipped\n");
        return SKIP_CODE;
    }
    test_bad_args();
    const qplug_cuda__gemv_fmt fmts[3] = {QPLUG_CUDA_GEMV_FP8, QPLUG_CUDA_GEMV_MXFP4,
                                          QPLUG_CUDA_GEMV_NVFP4};
    for (int fi = 0; fi < 3; fi++) {
        qplug_cuda__gemv_fmt f = fmts[fi];
        /* Every m, both scale rules, an odd number of row tiles (9), a
         * padded x and y stride. */
        for (int64_t m = 1; m <= 16; m++)
            for (int ue = 0; ue < 2; ue++)
                run_case(f, ue, m, 144, 384, 1, ue ? 8 : 0, ue ? 16 : 0);
        /* Odd tiles with a cluster split over many k-blocks (small n). */
        run_case(f, 0, 1, 272, 1152, 1, 0, 0);
        run_case(f, 1, 9, 48, 7168, 1, 64, 0);
        run_case(f, 0, 16, 32, 4096, 1, 0, 8);
        /* Wide (4-warp blocks, 6336 rows and more). */
        run_case(f, 1, 1, 6400, 256, 1, 0, 0);
        run_case(f, 0, 16, 6400, 256, 1, 0, 0);
        /* Grouped, strided: wo_a-like groups of n = 256 and 1024. */
        run_case(f, fi == 2 ? 0 : 1, 1, 256, 512, 3, 64, 16);
        run_case(f, fi == 2 ? 0 : 1, 7, 256, 512, 3, 0, 0);
        run_case(f, fi == 2 ? 1 : 0, 3, 256, 512, 3, 8, 16);
        run_case(f, fi == 2 ? 0 : 1, 16, 128, 1024, 4, 8, 8);
        run_case(f, fi == 2 ? 0 : 1, 2, 1024, 512, 8, 0, 0);
        /* Grouped and wide (8 x 1024 rows): two row tiles per warp, two
         * token tiles. */
        run_case(f, fi == 2 ? 0 : 1, 16, 1024, 256, 8, 8, 8);
        /* 16 groups of 1024 rows: 4-warp blocks of two row tiles. 6144
         * rows: 8-warp blocks of two row tiles without a cluster. */
        run_case(f, fi == 2 ? 0 : 1, 1, 1024, 256, 16, 0, 0);
        run_case(f, fi == 2 ? 1 : 0, 16, 1024, 128, 16, 0, 8);
        run_case(f, fi == 2 ? 0 : 1, 16, 6144, 256, 1, 0, 0);
        /* Flash wq_a-like (1024 rows, 16 k-blocks): two row tiles in
         * clusters at m = 1, one tile in clusters of 2 at m = 16. Pro
         * wq_a-like (1536 rows): 48 blocks of two tiles, 8-warp blocks in
         * clusters. */
        run_case(f, fi == 2 ? 0 : 1, 1, 1024, 2048, 1, 0, 0);
        run_case(f, fi == 2 ? 0 : 1, 16, 1024, 2048, 1, 0, 0);
        run_case(f, fi == 2 ? 1 : 0, 1, 1536, 2048, 1, 0, 0);
        run_case(f, fi == 2 ? 1 : 0, 16, 1536, 2048, 1, 8, 0);
        test_inf(f);
    }
    return test_done();
}
