/* GPU kernel checks for plugins/common_cuda against a float64 CPU reference
 * built on ml_dtypes' decode tables (ref_tables.h). Every output buffer is
 * filled with 0xFF (NaN in BF16, F32 and E4M3) before the kernel runs, so an
 * element the kernel never wrote fails the check. Inputs are fresh random
 * values drawn from a seeded generator. Exits 77 (CTest skip) when no CUDA
 * device is present. */
#include <cublasLt.h>
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

/* Bound on the relative L2 error of BF16 outputs against float64: BF16
 * rounding alone is up to 2^-8 per element (about 1.6e-3 relative L2 on
 * random data). */
#define BOUND_BF16_OUT 5e-3

#define QPLUG_TEST_RNG_SEED 0x9e3779b97f4a7c15ull
#include "gpu_test_random.h"
#include "gpu_test_mem.h"

/* Random BF16 activations whose 128-groups span a wide range of
 * magnitudes, with one group of tiny values to hit the 1e-4 amax floor. */
static uint16_t *make_x(int64_t m, int64_t k)
{
    uint16_t *x = malloc((size_t)(m * k) * 2);
    for (int64_t r = 0; r < m; r++)
        for (int64_t kb = 0; kb < k / 128; kb++) {
            double mag = (r == 0 && kb == 0) ? 1e-6 : pow(2.0, -6.0 + 14.0 * rng_uniform());
            for (int i = 0; i < 128; i++)
                x[r * k + kb * 128 + i] = bf16_bits((float)(rng_normal() * mag));
        }
    return x;
}

/* Quantizes x on the GPU; returns device xq and xs, and host copies. */
static void quant_x(const uint16_t *x, int64_t m, int64_t k, qplug_cuda__scale_fmt fmt,
                    void **dxq, float **dxs, uint8_t **hxq, float **hxs)
{
    void *dx = dev_upload(x, (size_t)(m * k) * 2);
    *dxq = dev_alloc_poison((size_t)(m * k));
    *dxs = dev_alloc_poison((size_t)(m * (k / 128)) * 4);
    qplug_cuda__err err = {{0}};
    qplug_status s = qplug_cuda__act_quant_fp8(dx, m, k, fmt, *dxq, *dxs, NULL, &err);
    CHECKF(s == QPLUG_OK, "act_quant_fp8: %s", err.msg);
    *hxq = malloc((size_t)(m * k));
    *hxs = malloc((size_t)(m * (k / 128)) * 4);
    download(*hxq, *dxq, (size_t)(m * k));
    download(*hxs, *dxs, (size_t)(m * (k / 128)) * 4);
    cudaFree(dx);
}

/* Quantizes the column slice [c0, c0 + k) of x [m, ldx] through
 * qplug_cuda__act_quant_fp8_ld; returns host copies of xq [m, k] and the
 * scales [k/128][m]. */
static void quant_x_ld(const uint16_t *x, int64_t ldx, int64_t c0, int64_t m, int64_t k,
                       qplug_cuda__scale_fmt fmt, uint8_t **hxq, float **hxs)
{
    uint16_t *dx = dev_upload(x, (size_t)(m * ldx) * 2);
    void *dxq = dev_alloc_poison((size_t)(m * k));
    float *dxs = dev_alloc_poison((size_t)(m * (k / 128)) * 4);
    qplug_cuda__err err = {{0}};
    qplug_status s = qplug_cuda__act_quant_fp8_ld(dx + c0, ldx, m, k, fmt, dxq, dxs, NULL, &err);
    CHECKF(s == QPLUG_OK, "act_quant_fp8_ld: %s", err.msg);
    *hxq = malloc((size_t)(m * k));
    *hxs = malloc((size_t)(m * (k / 128)) * 4);
    download(*hxq, dxq, (size_t)(m * k));
    download(*hxs, dxs, (size_t)(m * (k / 128)) * 4);
    cudaFree(dx), cudaFree(dxq), cudaFree(dxs);
}

/* Checks codes and scales of the slice [c0, c0 + k) of x [m, ldx] against
 * the float64 rule; ldx == k and c0 == 0 use qplug_cuda__act_quant_fp8. */
static void test_act_quant_ld(int64_t m, int64_t k, int64_t ldx, int64_t c0,
                              qplug_cuda__scale_fmt fmt)
{
    uint16_t *xfull = make_x(m, ldx);
    uint16_t *x = malloc((size_t)(m * k) * 2);
    for (int64_t r = 0; r < m; r++)
        memcpy(x + r * k, xfull + r * ldx + c0, (size_t)k * 2);
    uint8_t *q;
    float *sc;
    void *dxq = NULL;
    float *dxs = NULL;
    if (ldx == k && c0 == 0)
        quant_x(x, m, k, fmt, &dxq, &dxs, &q, &sc);
    else
        quant_x_ld(xfull, ldx, c0, m, k, fmt, &q, &sc);
    free(xfull);
    int64_t bad_scale = 0, bad_q = 0;
    double num = 0, den = 0;
    for (int64_t r = 0; r < m; r++)
        for (int64_t kb = 0; kb < k / 128; kb++) {
            float amax = 1e-4f;
            for (int i = 0; i < 128; i++) {
                float a = (float)fabs(bf16_value(x[r * k + kb * 128 + i]));
                if (a > amax)
                    amax = a;
            }
            float s = amax / 448.0f;
            if (fmt == QPLUG_CUDA_SCALE_UE8M0) {
                int e;
                float f = frexpf(s, &e);
                s = (f == 0.5f) ? s : ldexpf(1.0f, e);
            }
            float got = sc[kb * m + r];
            if (got != s)
                bad_scale++;
            for (int i = 0; i < 128; i++) {
                double xv = bf16_value(x[r * k + kb * 128 + i]);
                double want = ref_e4m3_round((double)((float)xv / s));
                double have = ref_e4m3[q[r * k + kb * 128 + i]];
                if (!(have == want))
                    bad_q++;
                num += (have * got - xv) * (have * got - xv);
                den += xv * xv;
            }
        }
    CHECKF(bad_scale == 0, "act_quant m=%lld k=%lld ldx=%lld fmt=%d: %lld scales differ",
           (long long)m, (long long)k, (long long)ldx, (int)fmt, (long long)bad_scale);
    CHECKF(bad_q == 0, "act_quant m=%lld k=%lld ldx=%lld fmt=%d: %lld codes differ",
           (long long)m, (long long)k, (long long)ldx, (int)fmt, (long long)bad_q);
    /* E4M3 keeps 3 mantissa bits: at most 2^-4 relative per element. */
    double e = sqrt(num / den);
    CHECKF(e < 0.0625, "act_quant m=%lld k=%lld: dequant rel L2 %.3g >= 0.0625", (long long)m,
           (long long)k, e);
    free(x);
    free(q);
    free(sc);
    cudaFree(dxq);
    cudaFree(dxs);
}

static void test_act_quant(int64_t m, int64_t k, qplug_cuda__scale_fmt fmt)
{
    test_act_quant_ld(m, k, k, 0, fmt);
}

/* A NaN or Inf in a 128-group makes that group's scale and codes NaN (E4M3
 * NaN is 0x7F / 0xFF) and leaves the other groups alone. */
static void test_act_quant_nan(void)
{
    const int64_t m = 37, k = 512;
    uint16_t *x = make_x(m, k);
    x[5 * k + 130] = 0x7fc0; /* NaN in row 5, group 1 */
    x[36 * k + 511] = 0xff80; /* -Inf in row 36, group 3 */
    void *dxq;
    float *dxs;
    uint8_t *q;
    float *sc;
    quant_x(x, m, k, QPLUG_CUDA_SCALE_UE8M0, &dxq, &dxs, &q, &sc);
    CHECK(isnan(sc[1 * m + 5]) && isnan(sc[3 * m + 36]));
    CHECK(!isnan(sc[0 * m + 5]) && !isnan(sc[2 * m + 36]) && !isnan(sc[1 * m + 4]));
    int64_t not_nan = 0;
    for (int i = 0; i < 128; i++) {
        not_nan += (q[5 * k + 128 + i] & 0x7f) != 0x7f;
        not_nan += (q[36 * k + 384 + i] & 0x7f) != 0x7f;
    }
    CHECKF(not_nan == 0, "act_quant NaN: %lld codes of the poisoned groups are not NaN",
           (long long)not_nan);
    free(x), free(q), free(sc);
    cudaFree(dxq), cudaFree(dxs);
}

/* FP8 block weights: random finite E4M3 bytes and F32 scales. */
static void make_fp8_w(int64_t n, int64_t k, uint8_t **w, float **ws)
{
    *w = malloc((size_t)(n * k));
    *ws = malloc((size_t)(((n + 127) / 128) * (k / 128)) * 4);
    for (int64_t i = 0; i < n * k; i++)
        (*w)[i] = rand_e4m3();
    for (int64_t i = 0; i < ((n + 127) / 128) * (k / 128); i++)
        (*ws)[i] = (float)(pow(2.0, -12.0 + 6.0 * rng_uniform()));
}

static double *ref_fp8(const uint8_t *xq, const float *xs, const uint8_t *w, const float *ws,
                       int64_t m, int64_t n, int64_t k)
{
    double *ref = calloc((size_t)(m * n), sizeof *ref);
    for (int64_t r = 0; r < m; r++)
        for (int64_t c = 0; c < n; c++) {
            double acc = 0;
            for (int64_t kb = 0; kb < k / 128; kb++) {
                double part = 0;
                for (int i = 0; i < 128; i++)
                    part += ref_e4m3[xq[r * k + kb * 128 + i]] * ref_e4m3[w[c * k + kb * 128 + i]];
                acc += part * xs[kb * m + r] * ws[(c / 128) * (k / 128) + kb];
            }
            ref[r * n + c] = acc;
        }
    return ref;
}

/* Stream order across kernels where the GEMV uses programmatic dependent
 * launch: act_quant writes xq and xs, a GEMV with the sign-flipped weights
 * writes y, and the GEMV under test writes y again, back to back with no
 * synchronization. y must be the last GEMV's result on act_quant's output. */
static void test_fp8_gemv_chain(int64_t m, int64_t n, int64_t k)
{
    uint16_t *x = make_x(m, k);
    uint8_t *w, *xq = malloc((size_t)(m * k)), *wneg = malloc((size_t)(n * k));
    float *ws, *xs = malloc((size_t)(m * (k / 128)) * 4);
    make_fp8_w(n, k, &w, &ws);
    for (int64_t i = 0; i < n * k; i++)
        wneg[i] = w[i] ^ 0x80u;
    void *dx = dev_upload(x, (size_t)(m * k) * 2);
    void *dw = dev_upload(w, (size_t)(n * k));
    void *dwneg = dev_upload(wneg, (size_t)(n * k));
    void *dws = dev_upload(ws, (size_t)(((n + 127) / 128) * (k / 128)) * 4);
    void *dxq = dev_alloc_poison((size_t)(m * k));
    float *dxs = dev_alloc_poison((size_t)(m * (k / 128)) * 4);
    void *dy = dev_alloc_poison((size_t)(m * n) * 2);
    qplug_cuda__err err = {{0}};
    qplug_status s = qplug_cuda__act_quant_fp8(dx, m, k, QPLUG_CUDA_SCALE_F32, dxq, dxs, NULL, &err);
    if (s == QPLUG_OK)
        s = qplug_cuda__gemv_fp8(dwneg, dws, dxq, dxs, m, n, k, dy, NULL, &err);
    if (s == QPLUG_OK)
        s = qplug_cuda__gemv_fp8(dw, dws, dxq, dxs, m, n, k, dy, NULL, &err);
    CHECKF(s == QPLUG_OK, "gemv_fp8 chain m=%lld n=%lld k=%lld: %s", (long long)m, (long long)n,
           (long long)k, err.msg);
    uint16_t *y = malloc((size_t)(m * n) * 2);
    download(y, dy, (size_t)(m * n) * 2);
    download(xq, dxq, (size_t)(m * k));
    download(xs, dxs, (size_t)(m * (k / 128)) * 4);
    double *ref = ref_fp8(xq, xs, w, ws, m, n, k);
    double e = rel_l2_bf16(y, ref, (size_t)(m * n));
    CHECKF(e < BOUND_BF16_OUT, "gemv_fp8 chain m=%lld n=%lld k=%lld: rel L2 %.3g >= %g",
           (long long)m, (long long)n, (long long)k, e, BOUND_BF16_OUT);
    printf("gemv_fp8 chain m=%-4lld n=%-5lld k=%-5lld rel L2 %.3g\n", (long long)m, (long long)n,
           (long long)k, e);
    free(x), free(xq), free(xs), free(w), free(wneg), free(ws), free(y), free(ref);
    cudaFree(dx), cudaFree(dw), cudaFree(dwneg), cudaFree(dws), cudaFree(dxq), cudaFree(dxs);
    cudaFree(dy);
}

static void test_fp8(cublasLtHandle_t lt, int64_t m, int64_t n, int64_t k, int use_gemv)
{
    uint16_t *x = make_x(m, k);
    void *dxq;
    float *dxs;
    uint8_t *xq, *w;
    float *xs, *ws;
    quant_x(x, m, k, QPLUG_CUDA_SCALE_F32, &dxq, &dxs, &xq, &xs);
    make_fp8_w(n, k, &w, &ws);
    void *dw = dev_upload(w, (size_t)(n * k));
    void *dws = dev_upload(ws, (size_t)(((n + 127) / 128) * (k / 128)) * 4);
    void *dy = dev_alloc_poison((size_t)(m * n) * 2);
    size_t wsz = 32u << 20;
    void *work = dev_alloc_poison(wsz);
    qplug_cuda__err err = {{0}};
    qplug_status s;
    if (use_gemv) {
        s = qplug_cuda__gemv_fp8(dw, dws, dxq, dxs, m, n, k, dy, NULL, &err);
    } else {
        qplug_cuda__fp8_gemm *g = NULL;
        s = qplug_cuda__fp8_gemm_create(lt, m, n, k, wsz, &g, &err);
        if (s == QPLUG_OK)
            s = qplug_cuda__fp8_gemm_run(g, dw, dws, dxq, dxs, dy, work, NULL, &err);
        cudaDeviceSynchronize();
        qplug_cuda__fp8_gemm_destroy(g);
    }
    CHECKF(s == QPLUG_OK, "%s m=%lld n=%lld k=%lld: %s", use_gemv ? "gemv_fp8" : "fp8_gemm",
           (long long)m, (long long)n, (long long)k, err.msg);
    uint16_t *y = malloc((size_t)(m * n) * 2);
    download(y, dy, (size_t)(m * n) * 2);
    double *ref = ref_fp8(xq, xs, w, ws, m, n, k);
    double e = rel_l2_bf16(y, ref, (size_t)(m * n));
    CHECKF(e < BOUND_BF16_OUT, "%s m=%lld n=%lld k=%lld: rel L2 %.3g >= %g",
           use_gemv ? "gemv_fp8" : "fp8_gemm", (long long)m, (long long)n, (long long)k, e,
           BOUND_BF16_OUT);
    if (!use_gemv && e >= BOUND_BF16_OUT) {
        /* Diagnosis: which scale layout would the library output match? */
        int64_t kbn = k / 128, nbn = (n + 127) / 128;
        float *xs_t = malloc((size_t)(m * kbn) * 4), *ws_t = malloc((size_t)(nbn * kbn) * 4);
        for (int64_t r = 0; r < m; r++)
            for (int64_t kb = 0; kb < kbn; kb++)
                xs_t[kb * m + r] = xs[r * kbn + kb];
        for (int64_t nb = 0; nb < nbn; nb++)
            for (int64_t kb = 0; kb < kbn; kb++)
                ws_t[nb * kbn + kb] = ws[kb * nbn + nb];
        /* The reference as if the library read the same buffers as
         * [m][k/128] (activations) or [k/128][n/128] (weights). */
        double *r1 = ref_fp8(xq, xs_t, w, ws, m, n, k);
        double *r2 = ref_fp8(xq, xs, w, ws_t, m, n, k);
        double *r3 = ref_fp8(xq, xs_t, w, ws_t, m, n, k);
        printf("fp8_gemm m=%lld: rel L2 vs B-scale [m][k/128] %.3g, A-scale [k/128][n/128] %.3g, "
               "both %.3g\n", (long long)m, rel_l2_bf16(y, r1, (size_t)(m * n)),
               rel_l2_bf16(y, r2, (size_t)(m * n)), rel_l2_bf16(y, r3, (size_t)(m * n)));
        free(r1), free(r2), free(r3), free(xs_t), free(ws_t);
    }
    printf("%-10s m=%-4lld n=%-5lld k=%-5lld rel L2 %.3g\n", use_gemv ? "gemv_fp8" : "fp8_gemm",
           (long long)m, (long long)n, (long long)k, e);
    free(x), free(xq), free(xs), free(w), free(ws), free(y), free(ref);
    cudaFree(dxq), cudaFree(dxs), cudaFree(dw), cudaFree(dws), cudaFree(dy), cudaFree(work);
}

/* A grouped product through qplug_cuda__fp8_gemm_create_ex: x [m, G*k]
 * quantized in one pass, weights [G*n, k], y [m, G*n] written in place.
 * batched: one strided-batched call (skipped with a note when cuBLASLt
 * refuses it, which the plugins handle by falling back); otherwise one call
 * per group with row strides. Every y element starts as NaN. */
static void test_fp8_grouped(cublasLtHandle_t lt, int64_t m, int64_t n, int64_t k, int64_t G,
                             int batched)
{
    int64_t K = G * k, kt = k / 128;
    uint16_t *x = make_x(m, K);
    void *dxq;
    float *dxs;
    uint8_t *xq, *w;
    float *xs, *ws;
    quant_x(x, m, K, QPLUG_CUDA_SCALE_UE8M0, &dxq, &dxs, &xq, &xs);
    make_fp8_w(G * n, k, &w, &ws);
    uint8_t *dw = dev_upload(w, (size_t)(G * n * k));
    float *dws = dev_upload(ws, (size_t)(G * (n / 128) * kt) * 4);
    uint16_t *dy = dev_alloc_poison((size_t)(m * G * n) * 2);
    size_t wsz = 32u << 20;
    void *work = dev_alloc_poison(wsz);
    qplug_cuda__err err = {{0}};
    qplug_cuda__fp8_gemm *g = NULL;
    int64_t nb = batched ? G : 1;
    qplug_status s = qplug_cuda__fp8_gemm_create_ex(lt, m, n, k, nb, K, G * n, wsz, &g, &err);
    if (batched && s == QPLUG_ERR_UNSUPPORTED) {
        printf("fp8_gemm batched m=%lld n=%lld k=%lld G=%lld: refused by cuBLASLt (%s)\n",
               (long long)m, (long long)n, (long long)k, (long long)G, err.msg);
    } else {
        for (int64_t b = 0; b < G && s == QPLUG_OK; b += nb)
            s = qplug_cuda__fp8_gemm_run(g, dw + b * n * k, dws + b * (n / 128) * kt,
                                         (uint8_t *)dxq + b * k, dxs + b * kt * m, dy + b * n,
                                         work, NULL, &err);
        CHECKF(s == QPLUG_OK, "fp8_gemm %s m=%lld n=%lld k=%lld G=%lld: %s",
               batched ? "batched" : "strided", (long long)m, (long long)n, (long long)k,
               (long long)G, err.msg);
        uint16_t *y = malloc((size_t)(m * G * n) * 2);
        download(y, dy, (size_t)(m * G * n) * 2);
        double *ref = calloc((size_t)(m * G * n), sizeof *ref);
        for (int64_t r = 0; r < m; r++)
            for (int64_t c = 0; c < G * n; c++) {
                int64_t grp = c / n;
                double acc = 0;
                for (int64_t kb = 0; kb < kt; kb++) {
                    double part = 0;
                    for (int i = 0; i < 128; i++)
                        part += ref_e4m3[xq[r * K + grp * k + kb * 128 + i]] *
                                ref_e4m3[w[c * k + kb * 128 + i]];
                    acc += part * xs[(grp * kt + kb) * m + r] * ws[(c / 128) * kt + kb];
                }
                ref[r * G * n + c] = acc;
            }
        double e = rel_l2_bf16(y, ref, (size_t)(m * G * n));
        CHECKF(e < BOUND_BF16_OUT, "fp8_gemm %s m=%lld n=%lld k=%lld G=%lld: rel L2 %.3g >= %g",
               batched ? "batched" : "strided", (long long)m, (long long)n, (long long)k,
               (long long)G, e, BOUND_BF16_OUT);
        printf("fp8_gemm %s m=%-4lld n=%-5lld k=%-5lld G=%lld rel L2 %.3g\n",
               batched ? "batched" : "strided", (long long)m, (long long)n, (long long)k,
               (long long)G, e);
        free(y), free(ref);
    }
    qplug_cuda__fp8_gemm_destroy(g);
    free(x), free(xq), free(xs), free(w), free(ws);
    cudaFree(dxq), cudaFree(dxs), cudaFree(dw), cudaFree(dws), cudaFree(dy), cudaFree(work);
}

/* Random FP4 weights with scales: MXFP4 E8M0 exponents within 12 octaves,
 * NVFP4 positive finite E4M3 scales and a global scale. */
/* tiny (NVFP4 only) draws the E4M3 scales from 0x01..0x10 (subnormals and
 * the smallest normals), where the GEMV's F16 weight with the scale folded
 * in is an F16 subnormal: any flush or rounding there shows as a large
 * error. */
static void make_fp4_w(int nv, int tiny, int64_t n, int64_t k, uint8_t **w, uint8_t **sc,
                       float *global)
{
    int64_t ns = n * (k / (nv ? 16 : 32));
    *w = malloc((size_t)(n * k / 2));
    *sc = malloc((size_t)ns);
    for (int64_t i = 0; i < n * k / 2; i++)
        (*w)[i] = (uint8_t)rng_next();
    for (int64_t i = 0; i < ns; i++)
        (*sc)[i] = nv ? (uint8_t)(tiny ? 0x01 + rng_next() % 0x10 : 0x18 + rng_next() % 0x50)
                      : (uint8_t)(115 + rng_next() % 12);
    *global = nv ? (float)(0.5 + rng_uniform()) * 1e-2f : 1.0f;
}

static double fp4_value(int nv, const uint8_t *w, const uint8_t *sc, float global, int64_t k,
                        int64_t row, int64_t e)
{
    uint8_t b = w[row * (k / 2) + e / 2];
    double v = ref_e2m1[(e & 1) ? (b >> 4) : (b & 15)];
    if (nv)
        return v * ref_e4m3[sc[row * (k / 16) + e / 16]] * (double)global;
    return v * ldexp(1.0, (int)sc[row * (k / 32) + e / 32] - 127);
}

static void test_fp4_gemv_scales(int nv, int tiny, int64_t m, int64_t n, int64_t k)
{
    const char *name = nv ? "gemv_nvfp4" : "gemv_mxfp4";
    uint16_t *x = make_x(m, k);
    void *dxq;
    float *dxs;
    uint8_t *xq, *w, *sc;
    float *xs, global;
    quant_x(x, m, k, QPLUG_CUDA_SCALE_F32, &dxq, &dxs, &xq, &xs);
    make_fp4_w(nv, tiny, n, k, &w, &sc, &global);
    void *dw = dev_upload(w, (size_t)(n * k / 2));
    void *dwp = dev_alloc_poison((size_t)(n * k / 2));
    void *dsc = dev_upload(sc, (size_t)(n * (k / (nv ? 16 : 32))));
    void *dy = dev_alloc_poison((size_t)(m * n) * 2);
    qplug_cuda__err err = {{0}};
    qplug_status s = qplug_cuda__fp4_repack(dw, n, k, dwp, NULL, &err);
    if (s == QPLUG_OK)
        s = nv ? qplug_cuda__gemv_nvfp4(dwp, dsc, global, dxq, dxs, m, n, k, dy, NULL, &err)
               : qplug_cuda__gemv_mxfp4(dwp, dsc, dxq, dxs, m, n, k, dy, NULL, &err);
    CHECKF(s == QPLUG_OK, "%s m=%lld n=%lld k=%lld: %s", name, (long long)m, (long long)n,
           (long long)k, err.msg);
    uint16_t *y = malloc((size_t)(m * n) * 2);
    download(y, dy, (size_t)(m * n) * 2);
    double *ref = calloc((size_t)(m * n), sizeof *ref);
    for (int64_t c = 0; c < n; c++) {
        double *wrow = malloc((size_t)k * sizeof *wrow);
        for (int64_t e = 0; e < k; e++)
            wrow[e] = fp4_value(nv, w, sc, global, k, c, e);
        for (int64_t r = 0; r < m; r++) {
            double acc = 0;
            for (int64_t e = 0; e < k; e++)
                acc += ref_e4m3[xq[r * k + e]] * xs[(e / 128) * m + r] * wrow[e];
            ref[r * n + c] = acc;
        }
        free(wrow);
    }
    double e = rel_l2_bf16(y, ref, (size_t)(m * n));
    CHECKF(e < BOUND_BF16_OUT, "%s%s m=%lld n=%lld k=%lld: rel L2 %.3g >= %g", name,
           tiny ? " (tiny scales)" : "", (long long)m, (long long)n, (long long)k, e,
           BOUND_BF16_OUT);
    printf("%-10s m=%-4lld n=%-5lld k=%-5lld rel L2 %.3g%s\n", name, (long long)m, (long long)n,
           (long long)k, e, tiny ? " (tiny scales)" : "");
    free(x), free(xq), free(xs), free(w), free(sc), free(y), free(ref);
    cudaFree(dxq), cudaFree(dxs), cudaFree(dw), cudaFree(dwp), cudaFree(dsc), cudaFree(dy);
}

static void test_fp4_gemv(int nv, int64_t m, int64_t n, int64_t k)
{
    test_fp4_gemv_scales(nv, 0, m, n, k);
}

/* FP4 -> FP8 block conversion: MXFP4 with exponents inside 14 octaves per
 * tile must be exact; NVFP4 is within E4M3 rounding (2^-4 per element). */
static void test_fp4_to_fp8(int nv, int64_t n, int64_t k)
{
    const char *name = nv ? "nvfp4_to_fp8_block" : "mxfp4_to_fp8_block";
    uint8_t *w, *sc;
    float global;
    make_fp4_w(nv, 0, n, k, &w, &sc, &global);
    void *dw = dev_upload(w, (size_t)(n * k / 2));
    void *dsc = dev_upload(sc, (size_t)(n * (k / (nv ? 16 : 32))));
    void *dq = dev_alloc_poison((size_t)(n * k));
    void *dqs = dev_alloc_poison((size_t)((n / 128) * (k / 128)) * 4);
    qplug_cuda__err err = {{0}};
    qplug_status s = nv ? qplug_cuda__nvfp4_to_fp8_block(dw, dsc, global, n, k, dq, dqs, NULL, &err)
                        : qplug_cuda__mxfp4_to_fp8_block(dw, dsc, n, k, dq, dqs, NULL, &err);
    CHECKF(s == QPLUG_OK, "%s: %s", name, err.msg);
    uint8_t *q = malloc((size_t)(n * k));
    float *qs = malloc((size_t)((n / 128) * (k / 128)) * 4);
    download(q, dq, (size_t)(n * k));
    download(qs, dqs, (size_t)((n / 128) * (k / 128)) * 4);
    int64_t inexact = 0, bad_scale = 0;
    double num = 0, den = 0;
    for (int64_t r = 0; r < n; r++)
        for (int64_t e = 0; e < k; e++) {
            double S = qs[(r / 128) * (k / 128) + e / 128];
            int ex;
            if (!(S > 0) || frexp(S, &ex) != 0.5)
                bad_scale++;
            double want = fp4_value(nv, w, sc, global, k, r, e);
            double have = ref_e4m3[q[r * k + e]] * S;
            if (!(have == want))
                inexact++;
            num += (have - want) * (have - want);
            den += want * want;
        }
    CHECKF(bad_scale == 0, "%s: %lld tile scales are not positive powers of two", name,
           (long long)bad_scale);
    double rel = sqrt(num / den);
    if (nv)
        CHECKF(rel < 0.0625, "%s: rel L2 %.3g >= 0.0625", name, rel);
    else
        CHECKF(inexact == 0, "%s: %lld of %lld values not exact", name, (long long)inexact,
               (long long)(n * k));
    printf("%-18s n=%lld k=%lld rel L2 %.3g (%lld inexact)\n", name, (long long)n, (long long)k,
           rel, (long long)inexact);
    free(w), free(sc), free(q), free(qs);
    cudaFree(dw), cudaFree(dsc), cudaFree(dq), cudaFree(dqs);
}

static void test_bad_args(cublasLtHandle_t lt)
{
    qplug_cuda__err err = {{0}};
    char dummy[16];
    CHECK(qplug_cuda__act_quant_fp8(dummy, 1, 100, QPLUG_CUDA_SCALE_F32, dummy, (float *)dummy,
                                    NULL, &err) == QPLUG_ERR_SHAPE);
    CHECK(strstr(err.msg, "act_quant_fp8") != NULL);
    CHECK(qplug_cuda__gemv_fp8(dummy, (float *)dummy, dummy, (float *)dummy, 17, 32, 128, dummy,
                               NULL, &err) == QPLUG_ERR_SHAPE);
    CHECK(qplug_cuda__gemv_mxfp4(NULL, (uint8_t *)dummy, dummy, (float *)dummy, 1, 32, 128, dummy,
                                 NULL, &err) == QPLUG_ERR_ARGUMENT);
    CHECK(qplug_cuda__fp4_repack((uint8_t *)dummy, 4, 96, (uint8_t *)dummy, NULL, &err) ==
          QPLUG_ERR_SHAPE);
    qplug_cuda__fp8_gemm *g = NULL;
    CHECK(qplug_cuda__fp8_gemm_create(lt, 16, 256, 1152, 0, &g, &err) == QPLUG_ERR_UNSUPPORTED);
    CHECK(g == NULL);
    /* Overlapping batches (row strides below batch * k or batch * n). */
    CHECK(qplug_cuda__fp8_gemm_create_ex(lt, 16, 256, 512, 2, 512, 512, 0, &g, &err) ==
          QPLUG_ERR_SHAPE);
    CHECK(qplug_cuda__fp8_gemm_create_ex(lt, 16, 256, 512, 2, 1024, 256, 0, &g, &err) ==
          QPLUG_ERR_SHAPE);
    CHECK(g == NULL);
    CHECK(qplug_cuda__act_quant_fp8_ld(dummy, 100, 1, 128, QPLUG_CUDA_SCALE_F32, dummy,
                                       (float *)dummy, NULL, &err) == QPLUG_ERR_SHAPE);
    CHECK(qplug_cuda__act_quant_fp8_ld(dummy + 2, 256, 1, 128, QPLUG_CUDA_SCALE_F32, dummy,
                                       (float *)dummy, NULL, &err) == QPLUG_ERR_ARGUMENT);
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
    cublasLtHandle_t lt = NULL;
    if (cublasLtCreate(&lt) != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "cublasLtCreate failed\n");
        return 1;
    }

    test_bad_args(lt);
    const int64_t aq_m[] = {1, 5, 16, 67};
    for (size_t i = 0; i < sizeof aq_m / sizeof aq_m[0]; i++) {
        test_act_quant(aq_m[i], 1024, QPLUG_CUDA_SCALE_F32);
        test_act_quant(aq_m[i], 384, QPLUG_CUDA_SCALE_UE8M0);
    }
    /* Tile edges: m not a multiple of 32, k/128 not a multiple of 4; a
     * column slice of a wider x (one group of a grouped layer). */
    test_act_quant(200, 1152, QPLUG_CUDA_SCALE_F32);
    test_act_quant_ld(45, 384, 1280, 512, QPLUG_CUDA_SCALE_UE8M0);
    test_act_quant_ld(33, 512, 1024, 0, QPLUG_CUDA_SCALE_F32);
    test_act_quant_nan();
    test_fp8_grouped(lt, 200, 256, 512, 3, 0);
    test_fp8_grouped(lt, 200, 256, 512, 3, 1);
    test_fp8_grouped(lt, 64, 128, 1024, 4, 1);
    test_fp8(lt, 16, 256, 512, 0);
    test_fp8(lt, 64, 384, 1024, 0);
    test_fp8(lt, 200, 512, 2048, 0);
    const int64_t gm[] = {1, 3, 8, 9, 16};
    for (size_t i = 0; i < sizeof gm / sizeof gm[0]; i++) {
        test_fp8(lt, gm[i], 272, 1152, 1);
        test_fp4_gemv(0, gm[i], 272, 1152);
        test_fp4_gemv(1, gm[i], 272, 1152);
    }
    /* A wide n with short k: no k-split (a cluster of one block per row tile). */
    test_fp8(lt, 16, 9216, 256, 1);
    test_fp8(lt, 5, 9216, 256, 1);
    test_fp4_gemv(0, 16, 9216, 256);
    test_fp4_gemv(1, 7, 9216, 256);
    /* Small n with long k: the GEMV splits k over a cluster of up to 8 blocks
     * (n = 32, 32 k-blocks: one per warp), with slices of uneven length
     * (37 k-blocks over 32 warps) and with warps that get no k-block at all
     * (k = 128 over 4 warps). */
    const int64_t sk[][3] = {{1, 32, 4096}, {16, 48, 4736}, {9, 16, 128}, {4, 512, 7168}};
    for (size_t i = 0; i < sizeof sk / sizeof sk[0]; i++) {
        test_fp8(lt, sk[i][0], sk[i][1], sk[i][2], 1);
        test_fp4_gemv(0, sk[i][0], sk[i][1], sk[i][2]);
        test_fp4_gemv(1, sk[i][0], sk[i][1], sk[i][2]);
    }
    /* Wide n (n/16 >= 3 x 132 row tiles on an H200): blocks of 4 warps,
     * each with several k-blocks, uneven slices (9 k-blocks over 4 warps). */
    test_fp8(lt, 3, 6400, 1152, 1);
    test_fp8(lt, 16, 6400, 1152, 1);
    test_fp4_gemv(0, 1, 6400, 1152);
    test_fp4_gemv(0, 12, 6400, 1152);
    test_fp4_gemv(1, 16, 6400, 1152);
    /* Wide with two row tiles per warp (n % 32 == 0): an odd count of
     * 32-row blocks (6432 = 201 x 32), and with n % 32 == 16 (6416), where
     * the launch keeps one row tile per warp. NVFP4 with subnormal folded
     * weights on the two-tile path too. */
    test_fp8(lt, 1, 6432, 256, 1);
    test_fp8(lt, 16, 6432, 256, 1);
    test_fp8(lt, 9, 6416, 256, 1);
    test_fp4_gemv(0, 1, 6432, 256);
    test_fp4_gemv(0, 16, 6432, 256);
    test_fp4_gemv(1, 1, 6432, 256);
    test_fp4_gemv(1, 9, 6416, 256);
    test_fp4_gemv_scales(1, 1, 1, 6432, 256);
    test_fp4_gemv_scales(1, 1, 16, 6432, 256);
    /* The other launch shapes of two row tiles per warp on an H200: wide
     * enough for 4-warp blocks (16384 rows), and 6144 rows (192 blocks of 32
     * rows, more than one per multiprocessor: 8-warp blocks without a
     * cluster). */
    test_fp8(lt, 1, 16384, 256, 1);
    test_fp8(lt, 16, 16384, 256, 1);
    test_fp4_gemv(0, 16, 16384, 256);
    test_fp4_gemv(1, 1, 16384, 256);
    test_fp8(lt, 16, 6144, 512, 1);
    test_fp4_gemv(0, 1, 6144, 512);
    test_fp4_gemv(1, 16, 6144, 512);
    /* n/16 = 256 row tiles (at least 90% of two blocks per multiprocessor
     * on an H200, fewer than 3 x 132): 8-warp blocks without a cluster,
     * launched with programmatic dependent launch; the FP4 cases follow
     * fp4_repack's kernel that writes their weights, the chain follows
     * act_quant and a GEMV that writes the same y. */
    test_fp8(lt, 1, 4096, 1024, 1);
    test_fp8(lt, 16, 4096, 1024, 1);
    test_fp4_gemv(0, 1, 4096, 1024);
    test_fp4_gemv(1, 16, 4096, 1024);
    test_fp8_gemv_chain(1, 4096, 1024);
    test_fp8_gemv_chain(16, 4096, 1024);
    /* NVFP4 with scales that make the folded F16 weights subnormal. */
    test_fp4_gemv_scales(1, 1, 1, 272, 1152);
    test_fp4_gemv_scales(1, 1, 16, 272, 1152);
    test_fp4_to_fp8(0, 256, 384);
    test_fp4_to_fp8(1, 256, 384);

    cublasLtDestroy(lt);
    return test_done();
}
