/* The fused RMSNorm + FP8 quantization kernel and the plain BF16 RMSNorm
 * (plugins/common_cuda/norm_quant.cu) against an fp64 reference, on random
 * BF16 rows of different magnitudes, into poisoned outputs. The plugins'
 * CUDA apply on pre-quantized x is checked by the GPU conformance cases
 * (tests/conformance, run_prequant_cuda).
 *
 * Bounds (relative L2 against the fp64 normalised values v):
 *   - scales (F32 rule): within 1e-5 relative of amax(v)/448 in fp64: the
 *     kernel's fp32 sum of squares and normaliser differ from fp64 by a
 *     few ulps;
 *   - scales (UE8M0 rule): powers of two, equal to the fp64 rule's except
 *     where amax/448 lies within that rounding of a power of two (at most
 *     0.5% of groups may sit one octave off);
 *   - codes: the E4M3 code nearest to v / s (fp64, ties to even, from the
 *     ml_dtypes table) for at least 99.5% of elements, and every code
 *     within one E4M3 step of it: the kernel divides its fp32 v, which can
 *     sit on the other side of a rounding boundary;
 *   - dequantized codes * scales against v: 0.045 (E4M3 keeps 3 mantissa
 *     bits: relative rounding error up to 2^-4, about 0.03 in L2 on
 *     normal data);
 *   - BF16 RMSNorm: 3e-3 (BF16 rounding, 2^-9 relative at most per value).
 */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#define QPLUG_TEST_RNG_SEED 0x9e3779b97f4a7c15ull
#include "gpu_test_random.h"
#include "gpu_test_mem.h"
#include "qplug_cuda.h"
#include "ref_tables.h"
#include "gpu_test_ref.h"
#include "testutil.h"

typedef struct nq_case {
    int64_t m, d, ldx;
} nq_case;

/* fp64 normalised values v [m, d] of BF16 x (row stride ldx) and weight w. */
static void ref_rmsnorm(const uint16_t *x, int64_t m, int64_t d, int64_t ldx, const uint16_t *w,
                        double eps, double *v)
{
    for (int64_t i = 0; i < m; i++) {
        double ss = 0.0;
        for (int64_t c = 0; c < d; c++) {
            double a = bf16_value(x[i * ldx + c]);
            ss += a * a;
        }
        double r = 1.0 / sqrt(ss / (double)d + eps);
        for (int64_t c = 0; c < d; c++)
            v[i * d + c] = bf16_value(x[i * ldx + c]) * r * bf16_value(w[c]);
    }
}

static double ref_scale(double amax, bool ue8m0)
{
    if (amax < 1e-4)
        amax = 1e-4;
    double s = amax / 448.0;
    return ue8m0 ? ldexp(1.0, (int)ceil(log2(s))) : s;
}

/* The size of one E4M3 step at |v| (for the "within one step" check). */
static double e4m3_step(double a)
{
    if (a < ldexp(1.0, -6))
        return ldexp(1.0, -9);
    int e;
    frexp(a, &e);
    return ldexp(1.0, e - 1 - 3);
}

static void run_case(const nq_case *c, bool ue8m0, bool nan_row)
{
    int64_t m = c->m, d = c->d, ldx = c->ldx, kt = d / 128;
    uint16_t *x = malloc((size_t)(m * ldx) * 2), *w = malloc((size_t)d * 2);
    double *v = malloc((size_t)(m * d) * sizeof(double));
    uint8_t *q = malloc((size_t)(m * d));
    float *s = malloc((size_t)(m * kt) * sizeof(float));
    uint16_t *yb = malloc((size_t)(m * (d + 8)) * 2);
    if (!x || !w || !v || !q || !s || !yb) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (int64_t i = 0; i < m; i++)
        for (int64_t c2 = 0; c2 < ldx; c2++)
            x[i * ldx + c2] = bf16_bits((float)(rng_normal() * ldexp(1.0, (int)(i % 9) - 4)));
    for (int64_t c2 = 0; c2 < d; c2++)
        w[c2] = bf16_bits((float)(1.0 + 0.5 * rng_normal()));
    if (nan_row)
        x[5] = bf16_bits(NAN);
    const float eps = 1e-6f;
    ref_rmsnorm(x, m, d, ldx, w, eps, v);

    void *dx = dev_upload(x, (size_t)(m * ldx) * 2), *dw = dev_upload(w, (size_t)d * 2);
    void *dq = dev_alloc_poison((size_t)(m * d));
    float *ds = dev_alloc_poison((size_t)(m * kt) * sizeof(float));
    int64_t ldy = d + 8;
    void *dy = dev_alloc_poison((size_t)(m * ldy) * 2);
    qplug_cuda__err e;
    qplug_status st = qplug_cuda__rmsnorm_quant(dx, ldx, m, d, dw, eps,
                                                ue8m0 ? QPLUG_CUDA_SCALE_UE8M0
                                                      : QPLUG_CUDA_SCALE_F32,
                                                dq, ds, NULL, &e);
    CHECKF(st == QPLUG_OK, "rmsnorm_quant: %s", e.msg);
    st = qplug_cuda__rmsnorm_bf16(dx, ldx, m, d, dw, eps, dy, ldy, NULL, &e);
    CHECKF(st == QPLUG_OK, "rmsnorm_bf16: %s", e.msg);
    download(q, dq, (size_t)(m * d));
    download(s, ds, (size_t)(m * kt) * sizeof(float));
    download(yb, dy, (size_t)(m * ldy) * 2);

    int64_t first = nan_row ? 1 : 0; /* the NaN row is checked apart */
    int64_t bad_scale = 0, octave = 0, code_eq = 0, code_far = 0, n = 0, pad_hit = 0;
    double num = 0.0, den = 0.0, ynum = 0.0, yden = 0.0;
    for (int64_t i = first; i < m; i++) {
        for (int64_t kb = 0; kb < kt; kb++) {
            double amax = 0.0;
            for (int j = 0; j < 128; j++)
                amax = fmax(amax, fabs(v[i * d + kb * 128 + j]));
            double sr = ref_scale(amax, ue8m0), sg = s[kb * m + i];
            if (!isfinite(sg) || sg <= 0.0) {
                bad_scale++;
                continue;
            }
            if (ue8m0) {
                int ex;
                if (frexp(sg, &ex) != 0.5)
                    bad_scale++;
                else if (sg != sr)
                    octave += (sg == 2.0 * sr || 2.0 * sg == sr) ? 1 : 1000000;
            } else if (fabs(sg - sr) > 1e-5 * sr) {
                bad_scale++;
            }
            for (int j = 0; j < 128; j++) {
                int64_t idx = i * d + kb * 128 + j;
                double t = v[idx] / sg;
                double want = ref_e4m3_round(t), got = ref_e4m3[q[idx]];
                code_eq += got == want;
                code_far += !(fabs(got - want) <= e4m3_step(fabs(t)) * 1.0000001);
                num += (got * sg - v[idx]) * (got * sg - v[idx]);
                den += v[idx] * v[idx];
                n++;
            }
        }
        for (int64_t c2 = 0; c2 < d; c2++) {
            double yv = bf16_value(yb[i * ldy + c2]), r = v[i * d + c2];
            ynum += isfinite(yv) ? (yv - r) * (yv - r) : INFINITY;
            yden += r * r;
        }
        for (int64_t c2 = d; c2 < ldy; c2++)
            pad_hit += yb[i * ldy + c2] != 0xffff;
    }
    double eq = n ? (double)code_eq / (double)n : 0.0;
    double el2 = sqrt(num / (den > 0 ? den : 1.0)), yl2 = sqrt(ynum / (yden > 0 ? yden : 1.0));
    printf("m %5lld d %5lld ldx %5lld %-5s: scales bad %lld octave %lld, codes equal %.5f far "
           "%lld, dequant rel L2 %.4f (bound 0.045), bf16 rmsnorm rel L2 %.2e (bound 3e-3)\n",
           (long long)m, (long long)d, (long long)ldx, ue8m0 ? "ue8m0" : "f32",
           (long long)bad_scale, (long long)octave, eq, (long long)code_far, el2, yl2);
    CHECKF(bad_scale == 0, "%lld bad scales", (long long)bad_scale);
    CHECKF(octave <= (m - first) * kt / 200, "%lld scales one octave off", (long long)octave);
    CHECKF(eq >= 0.995, "only %.5f of codes equal the fp64 rounding", eq);
    CHECKF(code_far == 0, "%lld codes more than one step from the fp64 rounding",
           (long long)code_far);
    CHECKF(el2 <= 0.045, "dequantized rel L2 %.4f", el2);
    CHECKF(yl2 <= 3e-3, "bf16 rmsnorm rel L2 %.3g", yl2);
    CHECKF(pad_hit == 0, "rmsnorm_bf16 wrote %lld values past d", (long long)pad_hit);
    if (nan_row) {
        int64_t nan_scales = 0, nan_y = 0;
        for (int64_t kb = 0; kb < kt; kb++)
            nan_scales += isnan(s[kb * m]);
        for (int64_t c2 = 0; c2 < d; c2++)
            nan_y += isnan(bf16_value(yb[c2]));
        CHECKF(nan_scales == kt && nan_y == d,
               "a NaN in row 0 gave %lld NaN scales of %lld and %lld NaN outputs of %lld",
               (long long)nan_scales, (long long)kt, (long long)nan_y, (long long)d);
    }
    cudaFree(dx), cudaFree(dw), cudaFree(dq), cudaFree(ds), cudaFree(dy);
    free(x), free(w), free(v), free(q), free(s), free(yb);
}

static void bad_arguments(void)
{
    void *dx = dev_alloc_poison(4 * 8448 * 2), *dw = dev_alloc_poison(8448 * 2);
    void *dq = dev_alloc_poison(4 * 8448);
    float *ds = dev_alloc_poison(4 * 66 * 4);
    qplug_cuda__err e;
    CHECK(qplug_cuda__rmsnorm_quant(dx, 100, 4, 100, dw, 1e-6f, QPLUG_CUDA_SCALE_F32, dq, ds,
                                    NULL, &e) == QPLUG_ERR_SHAPE);
    CHECK(qplug_cuda__rmsnorm_quant(dx, 8320, 4, 8320, dw, 1e-6f, QPLUG_CUDA_SCALE_F32, dq, ds,
                                    NULL, &e) == QPLUG_ERR_SHAPE);
    CHECK(qplug_cuda__rmsnorm_quant(dx, 256, 0, 256, dw, 1e-6f, QPLUG_CUDA_SCALE_F32, dq, ds,
                                    NULL, &e) == QPLUG_ERR_SHAPE);
    CHECK(qplug_cuda__rmsnorm_quant((char *)dx + 2, 256, 4, 256, dw, 1e-6f, QPLUG_CUDA_SCALE_F32,
                                    dq, ds, NULL, &e) == QPLUG_ERR_ARGUMENT);
    CHECK(qplug_cuda__rmsnorm_quant(dx, 256, 4, 256, dw, 1e-6f, QPLUG_CUDA_SCALE_F32,
                                    (char *)dq + 4, ds, NULL, &e) == QPLUG_ERR_ARGUMENT);
    CHECK(qplug_cuda__rmsnorm_quant(dx, 256, 4, 256, dw, -1.0f, QPLUG_CUDA_SCALE_F32, dq, ds,
                                    NULL, &e) == QPLUG_ERR_ARGUMENT);
    CHECK(qplug_cuda__rmsnorm_quant(dx, 256, 4, 256, dw, 1e-6f, (qplug_cuda__scale_fmt)5, dq, ds,
                                    NULL, &e) == QPLUG_ERR_ARGUMENT);
    CHECK(qplug_cuda__rmsnorm_quant(dx, 256, 4, 256, NULL, 1e-6f, QPLUG_CUDA_SCALE_F32, dq, ds,
                                    NULL, &e) == QPLUG_ERR_ARGUMENT);
    CHECK(qplug_cuda__rmsnorm_bf16(dx, 256, 4, 256, dw, 1e-6f, dq, 250, NULL, &e) ==
          QPLUG_ERR_ARGUMENT);
    CHECK(qplug_cuda__rmsnorm_bf16(dx, 128, 4, 256, dw, 1e-6f, dq, 256, NULL, &e) ==
          QPLUG_ERR_SHAPE);
    CHECKF(cudaDeviceSynchronize() == cudaSuccess && cudaGetLastError() == cudaSuccess,
           "a refused call left a device error");
    cudaFree(dx), cudaFree(dw), cudaFree(dq), cudaFree(ds);
}

int main(void)
{
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
        printf("no CUDA device: skipped\n");
        return 77;
    }
    static const nq_case cases[] = {{1, 512, 512},     {5, 1024, 1032}, {37, 1536, 1536},
                                    {64, 4096, 4096},  {33, 7168, 7168}, {3, 8192, 8192},
                                    {2, 384, 384},     {300, 2048, 2056}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        for (int ue = 0; ue < 2; ue++)
            run_case(&cases[i], ue == 1, i == 1);
    bad_arguments();
    return test_done();
}
