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
 *   - BF16 RMSNorm: 3e-3 (BF16 rounding, at most 2^-8 of each value, ~1.6e-3 RMS).
 *
 * Layer cases (built when the build names the fp8_block plugin file,
 * QPLUG_PREQUANT_PLUGIN_FP8_BLOCK): an fp8_block linear layer (n = 1024,
 * k = 4096, random E4M3 weights with E8M0 128x128 tile scales) built
 * through the core's loader and host, applied at the prefill sizes m = 64
 * and 512 (m > 16: the plugin's cuBLASLt path, which reads pre-quantized x
 * in place), y poisoned (0xFF) before every call:
 *   - x_scale call on act_quant's codes of BF16 x against the BF16-x call:
 *     bit for bit equal, every output written;
 *   - the same y against float64 references from the weights dequantized
 *     with ml_dtypes' E4M3 table: x quantized by formats.md's rule (E4M3
 *     per 128 along k, s = amax/448 in fp32 or its power of two rounded up,
 *     exact products): bound 1e-2 (fp32 accumulation, the BF16 output and
 *     rare E4M3 flips where the GPU's fp32 x/s lands across a rounding
 *     boundary); the BF16 x itself: 0.05 (E4M3 activations add at most
 *     2^-4/sqrt(3) = 0.036 RMS relative error, tests/conformance/cases.h);
 *   - the producer chain: rmsnorm_quant of random x, then the x_scale call,
 *     against the float64 RMSNorm quantized by the same rule (1e-2) and not
 *     quantized (0.05).
 * The float64 references of m = 512 cover every fourth row (the bit-exact
 * comparison covers all rows).
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
#ifdef QPLUG_PREQUANT_PLUGIN_FP8_BLOCK
#include "qplug/host.h"
#include "qplug/registry.h"
#endif
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

#ifdef QPLUG_PREQUANT_PLUGIN_FP8_BLOCK
#define LAYER_N 1024
#define LAYER_K 4096
#define BOUND_Q 1e-2
#define BOUND_X 0.05

/* The host tensors of the layer; they outlive it. */
typedef struct layer_src {
    qplug_tensor t[2];
    const char *names[2];
} layer_src;

static const qplug_tensor *layer_find(void *user, const qplug_layer_desc *l, const char *slot,
                                      const char **file)
{
    layer_src *s = user;
    (void)l;
    *file = "test_gpu_prequant (random)";
    for (int i = 0; i < 2; i++)
        if (!strcmp(s->names[i], slot))
            return &s->t[i];
    return NULL;
}

/* y[i, j] = sum_c a[i, c] * w[j, c] for the rows i % stride == 0. */
static void ref_gemm(const double *a, const double *w, int64_t m, int64_t n, int64_t k,
                     int64_t stride, double *y)
{
    for (int64_t i = 0; i < m; i += stride)
        for (int64_t j = 0; j < n; j++) {
            double acc = 0.0;
            for (int64_t c = 0; c < k; c++)
                acc += a[i * k + c] * w[j * k + c];
            y[i * n + j] = acc;
        }
}

/* Values a [m, k] quantized by formats.md's rule: per row and 128-block
 * amax = max(|a|, 1e-4), s = amax/448 formed in fp32 (as the GPU does), or
 * its power of two rounded up for ue8m0; the E4M3 code nearest a/s times s. */
static void ref_quantize(const double *a, int64_t m, int64_t k, bool ue8m0, double *aq)
{
    for (int64_t i = 0; i < m; i++)
        for (int64_t b = 0; b < k; b += 128) {
            double amax = 1e-4;
            for (int64_t c = b; c < b + 128; c++)
                amax = fmax(amax, fabs(a[i * k + c]));
            double s = (double)((float)amax / 448.0f);
            if (ue8m0)
                s = ldexp(1.0, (int)ceil(log2(s)));
            for (int64_t c = b; c < b + 128; c++)
                aq[i * k + c] = ref_e4m3_round(a[i * k + c] / s) * s;
        }
}

/* Relative L2 error of BF16 y against ref over the rows i % stride == 0;
 * +inf when y holds a non-finite value there. */
static double rel_l2_rows(const uint16_t *y, const double *ref, int64_t m, int64_t n,
                          int64_t stride)
{
    double num = 0.0, den = 0.0;
    for (int64_t i = 0; i < m; i += stride)
        for (int64_t j = 0; j < n; j++) {
            double v = bf16_value(y[i * n + j]), r = ref[i * n + j];
            if (!isfinite(v))
                return INFINITY;
            num += (v - r) * (v - r);
            den += r * r;
        }
    return den > 0 ? sqrt(num / den) : INFINITY;
}

static qplug_status layer_apply(qplug_layer_inst *l, void *x, qplug_dtype xdt, float *xs,
                                void *y, int64_t m, qplug_err *err)
{
    qplug_tensor tx, ty, ts;
    memset(&tx, 0, sizeof tx);
    tx.dtype = xdt;
    tx.ndim = 2;
    tx.device = QPLUG_DEVICE_CUDA;
    tx.shape[0] = m;
    tx.shape[1] = LAYER_K;
    tx.data = x;
    ts = tx;
    ts.dtype = QPLUG_DT_F32;
    ts.shape[0] = LAYER_K / 128;
    ts.shape[1] = m;
    ts.data = xs;
    ty = tx;
    ty.dtype = QPLUG_DT_BF16;
    ty.shape[1] = LAYER_N;
    ty.data = y;
    qplug_apply_args a;
    memset(&a, 0, sizeof a);
    a.struct_size = sizeof a;
    a.op = QPLUG_OP_FORWARD;
    a.precision = QPLUG_PRECISION_NATIVE;
    a.x = &tx;
    a.y = &ty;
    a.x_scale = xs ? &ts : NULL;
    return qplug_layer_apply(l, &a, err);
}

/* One prefill size m through the layer: the three checks of the head
 * comment. */
static void layer_case(qplug_layer_inst *l, const double *w, bool ue8m0, int64_t m)
{
    const int64_t n = LAYER_N, k = LAYER_K, kt = k / 128, stride = m >= 256 ? 4 : 1;
    qplug_cuda__scale_fmt fmt = ue8m0 ? QPLUG_CUDA_SCALE_UE8M0 : QPLUG_CUDA_SCALE_F32;
    size_t ny = (size_t)(m * n);
    uint16_t *x = xmalloc((size_t)(m * k) * 2), *wn = xmalloc((size_t)k * 2);
    uint16_t *y1 = xmalloc(ny * 2), *y2 = xmalloc(ny * 2), *y3 = xmalloc(ny * 2);
    double *a = xmalloc((size_t)(m * k) * sizeof(double));
    double *aq = xmalloc((size_t)(m * k) * sizeof(double));
    double *rq = xmalloc(ny * sizeof(double)), *rx = xmalloc(ny * sizeof(double));
    for (int64_t i = 0; i < m; i++)
        for (int64_t b = 0; b < k; b += 128) {
            double mag = ldexp(1.0, (int)(rng_next() % 7) - 3);
            for (int64_t c = b; c < b + 128; c++)
                x[i * k + c] = bf16_bits((float)(mag * rng_normal()));
        }
    for (int64_t c = 0; c < k; c++)
        wn[c] = bf16_bits((float)(1.0 + 0.5 * rng_normal()));
    void *dx = dev_upload(x, (size_t)(m * k) * 2), *dwn = dev_upload(wn, (size_t)k * 2);
    void *dxq = dev_alloc_poison((size_t)(m * k));
    float *dxs = dev_alloc_poison((size_t)(m * kt) * sizeof(float));
    void *dy = dev_alloc_poison(ny * 2);
    qplug_err err;
    memset(&err, 0, sizeof err);
    qplug_cuda__err e;

    /* BF16 x, then its act_quant codes through x_scale. */
    qplug_status st = layer_apply(l, dx, QPLUG_DT_BF16, NULL, dy, m, &err);
    CHECKF(st == QPLUG_OK, "m %lld: BF16-x apply: %s", (long long)m, err.msg);
    download(y1, dy, ny * 2);
    st = qplug_cuda__act_quant_fp8(dx, m, k, fmt, dxq, dxs, NULL, &e);
    CHECKF(st == QPLUG_OK, "m %lld: act_quant: %s", (long long)m, e.msg);
    CHECK(cuda_ok(cudaMemset(dy, 0xff, ny * 2), "poison y"));
    st = layer_apply(l, dxq, QPLUG_DT_F8_E4M3, dxs, dy, m, &err);
    CHECKF(st == QPLUG_OK, "m %lld: x_scale apply: %s", (long long)m, err.msg);
    download(y2, dy, ny * 2);
    size_t diff = 0, unwritten = 0;
    for (size_t i = 0; i < ny; i++) {
        diff += y1[i] != y2[i];
        unwritten += y2[i] == 0xffff;
    }
    for (int64_t i = 0; i < m * k; i++)
        a[i] = bf16_value(x[i]);
    ref_quantize(a, m, k, ue8m0, aq);
    ref_gemm(aq, w, m, n, k, stride, rq);
    ref_gemm(a, w, m, n, k, stride, rx);
    double eq = rel_l2_rows(y2, rq, m, n, stride), ex = rel_l2_rows(y2, rx, m, n, stride);
    printf("fp8_block %dx%d m %4lld x_scale (act_quant codes): %zu of %zu outputs differ from "
           "the BF16-x call, %zu unwritten; rel L2 %.3g vs quantized-x ref (bound %.3g), %.3g "
           "vs BF16-x ref (bound %.3g)\n",
           LAYER_N, LAYER_K, (long long)m, diff, ny, unwritten, eq, BOUND_Q, ex, BOUND_X);
    CHECKF(diff == 0 && unwritten == 0, "m %lld: %zu outputs differ, %zu unwritten",
           (long long)m, diff, unwritten);
    CHECKF(eq <= BOUND_Q, "m %lld: rel L2 %.3g vs the quantized-x reference", (long long)m, eq);
    CHECKF(ex <= BOUND_X, "m %lld: rel L2 %.3g vs the BF16-x reference", (long long)m, ex);

    /* The producer chain: RMSNorm+quant of x, then the x_scale call. */
    st = qplug_cuda__rmsnorm_quant(dx, k, m, k, dwn, 1e-6f, fmt, dxq, dxs, NULL, &e);
    CHECKF(st == QPLUG_OK, "m %lld: rmsnorm_quant: %s", (long long)m, e.msg);
    CHECK(cuda_ok(cudaMemset(dy, 0xff, ny * 2), "poison y"));
    st = layer_apply(l, dxq, QPLUG_DT_F8_E4M3, dxs, dy, m, &err);
    CHECKF(st == QPLUG_OK, "m %lld: x_scale apply after rmsnorm_quant: %s", (long long)m,
           err.msg);
    download(y3, dy, ny * 2);
    ref_rmsnorm(x, m, k, k, wn, 1e-6, a);
    ref_quantize(a, m, k, ue8m0, aq);
    ref_gemm(aq, w, m, n, k, stride, rq);
    ref_gemm(a, w, m, n, k, stride, rx);
    eq = rel_l2_rows(y3, rq, m, n, stride);
    ex = rel_l2_rows(y3, rx, m, n, stride);
    printf("fp8_block %dx%d m %4lld rmsnorm_quant -> x_scale: rel L2 %.3g vs quantized "
           "RMSNorm ref (bound %.3g), %.3g vs RMSNorm ref (bound %.3g)\n",
           LAYER_N, LAYER_K, (long long)m, eq, BOUND_Q, ex, BOUND_X);
    CHECKF(eq <= BOUND_Q, "m %lld: chain rel L2 %.3g vs the quantized RMSNorm reference",
           (long long)m, eq);
    CHECKF(ex <= BOUND_X, "m %lld: chain rel L2 %.3g vs the RMSNorm reference", (long long)m, ex);

    cudaFree(dx), cudaFree(dwn), cudaFree(dxq), cudaFree(dxs), cudaFree(dy);
    free(x), free(wn), free(y1), free(y2), free(y3), free(a), free(aq), free(rq), free(rx);
}

static void layer_cases(void)
{
    qplug_registry *reg = NULL;
    qplug_runtime *rt = NULL;
    qplug_err err;
    memset(&err, 0, sizeof err);
    if (qplug_registry_create(&reg, &err) != QPLUG_OK ||
        qplug_registry_load_file(reg, QPLUG_PREQUANT_PLUGIN_FP8_BLOCK, &err) != QPLUG_OK ||
        qplug_runtime_create(NULL, QPLUG_DEVICE_CUDA, 1, &rt, &err) != QPLUG_OK) {
        CHECKF(0, "fp8_block layer setup (%s): %s", QPLUG_PREQUANT_PLUGIN_FP8_BLOCK, err.msg);
        qplug_registry_destroy(reg);
        return;
    }
    const qplug_plugin *p = qplug_registry_find(reg, "fp8_block");
    qplug_layer_desc d;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    d.name = "layers.0.attn.wq_a";
    d.kind = QPLUG_LAYER_LINEAR;
    d.quant = QPLUG_QUANT_FP8_BLOCK;
    d.weight_dtype = QPLUG_DT_F8_E4M3;
    d.scale_dtype = QPLUG_DT_F8_E8M0;
    d.device = QPLUG_DEVICE_CUDA;
    d.n = LAYER_N;
    d.k = LAYER_K;
    d.groups = 1;
    const int64_t n = LAYER_N, k = LAYER_K, kt = k / 128;
    uint8_t *wq = xmalloc((size_t)(n * k)), *sc = xmalloc((size_t)((n / 128) * kt));
    double *w = xmalloc((size_t)(n * k) * sizeof(double));
    for (int64_t i = 0; i < n * k; i++)
        wq[i] = rand_e4m3();
    /* Tile scales 2^-10 .. 2^-6. */
    for (int64_t i = 0; i < (n / 128) * kt; i++)
        sc[i] = (uint8_t)(117 + rng_next() % 5);
    for (int64_t r = 0; r < n; r++)
        for (int64_t c = 0; c < k; c++)
            w[r * k + c] = ref_e4m3[wq[r * k + c]] *
                           ldexp(1.0, (int)sc[(r / 128) * kt + c / 128] - 127);
    layer_src src;
    memset(&src, 0, sizeof src);
    src.names[0] = "weight";
    src.names[1] = "scale";
    src.t[0].name = "weight";
    src.t[0].dtype = QPLUG_DT_F8_E4M3;
    src.t[0].ndim = 2;
    src.t[0].shape[0] = n;
    src.t[0].shape[1] = k;
    src.t[0].device = QPLUG_DEVICE_CPU;
    src.t[0].data = wq;
    src.t[1] = src.t[0];
    src.t[1].name = "scale";
    src.t[1].dtype = QPLUG_DT_F8_E8M0;
    src.t[1].shape[0] = n / 128;
    src.t[1].shape[1] = kt;
    src.t[1].data = sc;
    qplug_layer_inst *l = NULL;
    CHECKF(p && p->score(&d) > 0, "fp8_block does not claim a %lldx%lld linear", (long long)n,
           (long long)k);
    qplug_status st = p ? qplug_layer_create(rt, p, &d, layer_find, &src, &l, &err)
                        : QPLUG_ERR_ARGUMENT;
    CHECKF(st == QPLUG_OK, "fp8_block layer_create: %s", err.msg);
    if (st == QPLUG_OK) {
        qplug_act_format af = qplug_layer_act_format(l);
        CHECKF(af != QPLUG_ACT_FORMAT_NONE, "fp8_block advertises no pre-quantized act form");
        if (af != QPLUG_ACT_FORMAT_NONE) {
            layer_case(l, w, af == QPLUG_ACT_FORMAT_E4M3_1X128_UE8M0, 64);
            layer_case(l, w, af == QPLUG_ACT_FORMAT_E4M3_1X128_UE8M0, 512);
        }
        qplug_layer_destroy(l);
    }
    free(wq), free(sc), free(w);
    qplug_runtime_destroy(rt);
    qplug_registry_destroy(reg);
}
#endif

int main(void)
{
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
        printf("no CUDA device: skipped\n");
        return 77;
    }
    static const nq_case cases[] = {{1, 512, 512},     {5, 1024, 1032}, {37, 1536, 1536},
                                    {64, 4096, 4096},  {33, 7168, 7168}, {3, 8192, 8192},
                                    {2, 384, 384},     {300, 2048, 2056},
                                    /* More rows than resident blocks: the
                                     * persistent variant loops over rows. */
                                    {3000, 1024, 1024}, {2500, 2048, 2056}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        for (int ue = 0; ue < 2; ue++)
            run_case(&cases[i], ue == 1, i == 1);
    bad_arguments();
#ifdef QPLUG_PREQUANT_PLUGIN_FP8_BLOCK
    layer_cases();
#endif
    return test_done();
}
