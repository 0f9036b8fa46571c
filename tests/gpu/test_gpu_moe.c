/* GPU checks of the fused MoE and the w4a4 packing (qplug_cuda_moe.h) against
 * a float64 CPU reference computed here from ml_dtypes' decode tables
 * (ref_tables.h). The reference follows the documented numerics step by
 * step (x quantized per 128 to E4M3, exact weights, fp64 products, h
 * quantized per 128, fp64 down projection), so the only differences left are
 * fp32 accumulation order on the GPU, rare rounding flips of h next to an
 * E4M3 rounding boundary, and the BF16 output: the bounds below allow for
 * those and nothing else. Outputs and workspaces are filled with 0xFF (NaN)
 * first. Exits 77 (CTest skip) without a CUDA device.
 *
 * `gpu_test_gpu_moe bench` instead times the MoE at DeepSeek V4 Flash shapes
 * (E=256, top-6, D=4096, I=2048) and prints a markdown table, on the
 * v6, v3 and v4 wgmma kernels (`bench default`: the default path only;
 * `profile`: two calls of the default path each, for a per-kernel
 * breakdown under ncu);
 * `gpu_test_gpu_moe quick` runs only the v4 / v3 bit-equality checks. */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qplug_cuda_moe.h"
#include "ref_tables.h"
#include "testutil.h"

#define SKIP_CODE 77

/* Relative L2 bound of the BF16 MoE output against the step-by-step fp64
 * reference: BF16 rounding is about 2e-3; on the mma.sync kernels fp32
 * accumulation and the odd h rounding flip add well below 1e-3, but the
 * FP8 wgmma kernels sum each 128-block in the tensor cores' reduced
 * precision, measured up to 7.2e-3 (H200, bench/results/h200_moe_v5_test.log,
 * FP8 at m = 1), so the margin there is small. A wrong scale, fragment or
 * row mapping gives errors of order 1. */
#define BOUND_MOE 1e-2
/* Relative error bound of each routing weight (fp32 logits vs fp64). */
#define BOUND_ROUTE_W 1e-4

enum { E_ = 8, K_ = 2, D_ = 256, I_ = 128 };
static const float LIMIT = 10.0f;

/* ------------------------------------------------------------ helpers */

#define QPLUG_TEST_RNG_SEED 0x243f6a8885a308d3ull
#include "gpu_test_random.h"
#include "gpu_test_mem.h"

/* The code of the magnitude nearest to a among table[0..n) (ascending
 * magnitudes), ties to the even code; beyond the last, the last. */
static int nearest_code(const double *table, int n, double a)
{
    double bd = INFINITY;
    int best = 0;
    for (int c = 0; c < n; c++) {
        double d = fabs(table[c] - a);
        if (d < bd || (d == bd && (c & 1) == 0)) {
            bd = d;
            best = c;
        }
    }
    return best;
}

/* The E4M3 code nearest to v, ties to the even code, saturating at 448. */
static uint8_t enc_e4m3(double v)
{
    return (uint8_t)((signbit(v) ? 0x80 : 0) | nearest_code(ref_e4m3, 127, fabs(v)));
}

/* The E2M1 code nearest to v, ties to the even code, saturating at 6. */
static uint8_t enc_e2m1(double v)
{
    return (uint8_t)((signbit(v) ? 8 : 0) | nearest_code(ref_e2m1, 8, fabs(v)));
}

static uint16_t *make_x(int64_t m, int64_t k, double sd)
{
    uint16_t *x = malloc((size_t)(m * k) * 2);
    for (int64_t i = 0; i < m * k; i++)
        x[i] = bf16_bits((float)(rng_normal() * sd));
    return x;
}

/* Quantizes one row of n floats per 128 the documented way (amax floored at
 * 1e-4, scale amax/448 or its power-of-two ceiling, codes e4m3(v / s) in
 * float) and writes the dequantized values. */
static void ref_quant_fp8(const float *v, int64_t n, int ue8m0, double *out)
{
    for (int64_t b = 0; b < n; b += 128) {
        float amax = 1e-4f;
        for (int i = 0; i < 128; i++)
            if (fabsf(v[b + i]) > amax)
                amax = fabsf(v[b + i]);
        float s = amax / 448.0f;
        if (ue8m0) {
            int e;
            float f = frexpf(s, &e);
            s = f == 0.5f ? s : ldexpf(1.0f, e);
        }
        for (int i = 0; i < 128; i++)
            out[b + i] = ref_e4m3[enc_e4m3((double)(v[b + i] / s))] * s;
    }
}

/* ------------------------------------------------------------ experts */

typedef struct experts {
    qplug_cuda__moe_wfmt fmt;
    /* NVFP4: half of the E4M3 group scales subnormal (see nv_scale). */
    int sub_scales;
    /* host bytes and the fp64 values they decode to */
    uint8_t *w[3], *s[3];
    float g[3][E_];
    size_t wbytes[3], sbytes[3];
    double *val[3]; /* w1, w3: [E][I][D]; w2: [E][D][I] */
    /* device copies */
    void *dw[3], *ds[3];
    float *dg[3];
    qplug_cuda__moe_weights desc;
} experts;

/* One NVFP4 group scale: E4M3 of 0.5..2, or with `sub`, at random either
 * a subnormal code (1..7: 2^-9..7 * 2^-9) or a small normal (2^-6..2^-4),
 * so that both kinds contribute about equally. */
static uint8_t nv_scale(int sub)
{
    if (!sub)
        return enc_e4m3(0.5 + 1.5 * rng_uniform());
    if (rng_next() & 1)
        return (uint8_t)(1 + rng_next() % 7);
    return enc_e4m3(0.015625 * (1.0 + 3.0 * rng_uniform()));
}

/* The NVFP4 per-expert global for those scales (about 54 times larger with
 * `sub`, which keeps the outputs at the same magnitude). */
static float nv_global(int sub)
{
    return (float)(0.04 * (1.0 + rng_uniform()) * (sub ? 54.0 : 1.0));
}

static void make_matrix(experts *ex, int which, int64_t n, int64_t k)
{
    int64_t per = n * k;
    double *val = malloc((size_t)(E_ * per) * sizeof(double));
    if (ex->fmt == QPLUG_CUDA_MOE_FP8) {
        ex->wbytes[which] = (size_t)(E_ * per);
        ex->sbytes[which] = (size_t)(E_ * (n / 128) * (k / 128)) * 4;
        ex->w[which] = malloc(ex->wbytes[which]);
        float *sc = malloc(ex->sbytes[which]);
        for (size_t i = 0; i < (size_t)(E_ * (n / 128) * (k / 128)); i++)
            sc[i] = (float)(0.2 * pow(2.0, 2.0 * rng_uniform() - 1.0) / 2.0);
        for (int64_t e = 0; e < E_; e++)
            for (int64_t r = 0; r < n; r++)
                for (int64_t c = 0; c < k; c++) {
                    int64_t i = e * per + r * k + c;
                    uint8_t b = enc_e4m3(rng_normal());
                    ex->w[which][i] = b;
                    val[i] = ref_e4m3[b] *
                             sc[(e * (n / 128) + r / 128) * (k / 128) + c / 128];
                }
        ex->s[which] = (uint8_t *)sc;
    } else {
        int nv = ex->fmt == QPLUG_CUDA_MOE_NVFP4, grp = nv ? 16 : 32;
        ex->wbytes[which] = (size_t)(E_ * per / 2);
        ex->sbytes[which] = (size_t)(E_ * n * (k / grp));
        ex->w[which] = malloc(ex->wbytes[which]);
        ex->s[which] = malloc(ex->sbytes[which]);
        for (size_t i = 0; i < ex->wbytes[which]; i++)
            ex->w[which][i] = (uint8_t)rng_next();
        for (size_t i = 0; i < ex->sbytes[which]; i++)
            ex->s[which][i] = nv ? nv_scale(ex->sub_scales)
                                 : (uint8_t)(123 + (int)(rng_next() % 3));
        for (int e = 0; e < E_; e++)
            ex->g[which][e] = nv ? nv_global(ex->sub_scales) : 1.0f;
        for (int64_t e = 0; e < E_; e++)
            for (int64_t r = 0; r < n; r++)
                for (int64_t c = 0; c < k; c++) {
                    int64_t i = e * per + r * k + c;
                    uint8_t b = ex->w[which][i / 2];
                    uint8_t code = (c & 1) ? (uint8_t)(b >> 4) : (uint8_t)(b & 15);
                    uint8_t sb = ex->s[which][(e * n + r) * (k / grp) + c / grp];
                    double s = nv ? ref_e4m3[sb] * ex->g[which][e] : ldexp(1.0, (int)sb - 127);
                    val[i] = ref_e2m1[code] * s;
                }
    }
    ex->val[which] = val;
    ex->dw[which] = dev_upload(ex->w[which], ex->wbytes[which]);
    ex->ds[which] = dev_upload(ex->s[which], ex->sbytes[which]);
    ex->dg[which] = dev_upload(ex->g[which], sizeof ex->g[which]);
}

static void make_experts(experts *ex, qplug_cuda__moe_wfmt fmt, int sub_scales)
{
    memset(ex, 0, sizeof *ex);
    ex->fmt = fmt;
    ex->sub_scales = sub_scales;
    make_matrix(ex, 0, I_, D_);
    make_matrix(ex, 1, I_, D_);
    make_matrix(ex, 2, D_, I_);
    qplug_cuda__moe_weights d = {fmt,       E_,        D_,        I_,        ex->dw[0],
                                 ex->dw[1], ex->dw[2], ex->ds[0], ex->ds[1], ex->ds[2],
                                 NULL,      NULL,      NULL,      LIMIT,     0};
    if (fmt == QPLUG_CUDA_MOE_NVFP4) {
        d.g1 = ex->dg[0];
        d.g3 = ex->dg[1];
        d.g2 = ex->dg[2];
    }
    ex->desc = d;
    /* The wgmma kernels take FP8, these MXFP4 experts (E8M0 exponents
     * 123..125, within 11 of each other) and NVFP4 (always exact in F16). */
    qplug_cuda__err err = {{0}};
    CHECKF(qplug_cuda__moe_prepare(&ex->desc, NULL, &err) == QPLUG_OK, "moe_prepare: %s",
           err.msg);
    CHECKF(ex->desc.wgmma_ready == 1, "moe_prepare %s: wgmma_ready %d",
           fmt == QPLUG_CUDA_MOE_FP8 ? "fp8" : fmt == QPLUG_CUDA_MOE_MXFP4 ? "mxfp4" : "nvfp4",
           (int)ex->desc.wgmma_ready);
}

static void free_experts(experts *ex)
{
    for (int i = 0; i < 3; i++) {
        free(ex->w[i]);
        free(ex->s[i]);
        free(ex->val[i]);
        cudaFree(ex->dw[i]);
        cudaFree(ex->ds[i]);
        cudaFree(ex->dg[i]);
    }
}

/* y_ref[t] = sum_j w * W2 . q(silu(min(W1 a, L)) * clamp(W3 a, -L, L)) with
 * a = act[t] (already the dequantized activation row). */
static void ref_moe(const experts *ex, const double *act, int64_t m, const int32_t *ids,
                    const float *wts, int ue8m0, double *y)
{
    double g[I_], u[I_], hq[I_];
    float h[I_];
    for (int64_t t = 0; t < m; t++) {
        double *yt = y + t * D_;
        for (int d = 0; d < D_; d++)
            yt[d] = 0.0;
        for (int j = 0; j < K_; j++) {
            int e = ids[t * K_ + j];
            if (e < 0)
                continue;
            for (int i = 0; i < I_; i++) {
                const double *r1 = ex->val[0] + ((int64_t)e * I_ + i) * D_;
                const double *r3 = ex->val[1] + ((int64_t)e * I_ + i) * D_;
                double a1 = 0.0, a3 = 0.0;
                for (int d = 0; d < D_; d++) {
                    a1 += r1[d] * act[t * D_ + d];
                    a3 += r3[d] * act[t * D_ + d];
                }
                g[i] = fmin(a1, LIMIT);
                u[i] = fmin(fmax(a3, -LIMIT), LIMIT);
                h[i] = (float)(g[i] / (1.0 + exp(-g[i])) * u[i]);
            }
            ref_quant_fp8(h, I_, ue8m0, hq);
            for (int d = 0; d < D_; d++) {
                const double *r2 = ex->val[2] + ((int64_t)e * D_ + d) * I_;
                double o = 0.0;
                for (int i = 0; i < I_; i++)
                    o += r2[i] * hq[i];
                yt[d] += wts[t * K_ + j] * o;
            }
        }
    }
}

/* Random routing: K distinct experts per token, about 5% of the slots -1. */
static void make_routing(int64_t m, int32_t *ids, float *wts)
{
    for (int64_t t = 0; t < m; t++)
        for (int j = 0; j < K_; j++) {
            int e;
            int dup;
            do {
                e = (int)(rng_next() % E_);
                dup = 0;
                for (int q = 0; q < j; q++)
                    dup |= ids[t * K_ + q] == e;
            } while (dup);
            ids[t * K_ + j] = rng_uniform() < 0.05 ? -1 : e;
            wts[t * K_ + j] = (float)(0.1 + 0.9 * rng_uniform());
        }
}

/* Routing of the edge cases: mode 1 puts every token's slot 0 on expert
 * E_ - 1 and slot 1 at -1 (one expert with all rows, the others none, tiles
 * of 128 + a partial one); mode 2 uses experts 1 and 4 only (experts with
 * 0 rows between experts with rows); mode 3 (m = 300 only) gives experts
 * 0..4 exactly 129, 128, 127, 1 and 0 rows (the 128-row tile boundaries
 * of the wgmma kernels and the wgmma N steps 16..128) and experts 5..7 the
 * other 215; mode 0 is make_routing. */
static void make_routing_mode(int64_t m, int mode, int32_t *ids, float *wts)
{
    make_routing(m, ids, wts);
    if (mode == 3) {
        /* The 600 slots sorted by expert; token t takes entries t and t +
         * 300, which are never the same expert (expert 2's entries in the
         * first half are t >= 257, in the second half t < 84). */
        static const int cnt[E_] = {129, 128, 127, 1, 0, 72, 72, 71};
        int list[600], at = 0;
        for (int e = 0; e < E_; e++)
            for (int i = 0; i < cnt[e]; i++)
                list[at++] = e;
        for (int64_t t = 0; t < m && m == 300; t++) {
            ids[t * K_] = list[t];
            ids[t * K_ + 1] = list[t + 300];
        }
        return;
    }
    for (int64_t t = 0; t < m && mode; t++) {
        ids[t * K_] = mode == 1 ? E_ - 1 : (t & 1) ? 1 : 4;
        ids[t * K_ + 1] = mode == 1 ? -1 : (t & 1) ? 4 : 1;
    }
}

/* ------------------------------------------------------------- routing */

static void test_route(void)
{
    const int64_t m = 37, V = 50;
    const float scaling = 1.5f;
    uint16_t *x = make_x(m, D_, 1.0);
    uint16_t *gate = make_x(E_, D_, 0.1);
    float bias[E_];
    for (int e = 0; e < E_; e++)
        bias[e] = (float)(0.3 * rng_normal());
    int32_t tok[37], tid2eid[50 * K_];
    for (int64_t t = 0; t < m; t++)
        tok[t] = (int32_t)(rng_next() % V);
    tok[5] = (int32_t)V; /* out of range: both slots -1 */
    for (int64_t v = 0; v < V; v++)
        for (int j = 0; j < K_; j++)
            tid2eid[v * K_ + j] = (int32_t)((v * 3 + j * 5) % E_);
    tid2eid[tok[7] * K_ + 1] = E_; /* a bad table entry: that slot -1 */

    void *dx = dev_upload(x, (size_t)(m * D_) * 2), *dg = dev_upload(gate, E_ * D_ * 2);
    float *db = dev_upload(bias, sizeof bias);
    int32_t *dtok = dev_upload(tok, sizeof tok), *dt2e = dev_upload(tid2eid, sizeof tid2eid);
    int32_t *dids = dev_alloc_poison((size_t)(m * K_) * 4);
    float *dw = dev_alloc_poison((size_t)(m * K_) * 4);
    int32_t ids[37 * K_];
    float w[37 * K_];
    qplug_cuda__err err = {{0}};

    for (int hash = 0; hash < 2; hash++) {
        qplug_status st = qplug_cuda__moe_route(dx, dg, hash ? NULL : db, hash ? dt2e : NULL,
                                                hash ? dtok : NULL, V, m, D_, E_, K_, scaling,
                                                dids, dw, NULL, &err);
        CHECKF(st == QPLUG_OK, "route: %s", err.msg);
        download(ids, dids, sizeof ids);
        download(w, dw, sizeof w);
        int id_bad = 0;
        double w_err = 0.0;
        for (int64_t t = 0; t < m; t++) {
            double s[E_], sel[E_];
            for (int e = 0; e < E_; e++) {
                double l = 0.0;
                for (int d = 0; d < D_; d++)
                    l += (double)bf16_value(x[t * D_ + d]) * bf16_value(gate[e * D_ + d]);
                double sp = l > 20.0 ? l : log1p(exp(l));
                s[e] = sqrt(sp);
                sel[e] = s[e] + (hash ? 0.0 : bias[e]);
            }
            int want[K_];
            if (hash) {
                for (int j = 0; j < K_; j++) {
                    int e = tok[t] < V ? tid2eid[tok[t] * K_ + j] : -1;
                    want[j] = (e >= 0 && e < E_) ? e : -1;
                }
            } else {
                int used[E_] = {0};
                for (int j = 0; j < K_; j++) {
                    int b = -1;
                    for (int e = 0; e < E_; e++)
                        if (!used[e] && (b < 0 || sel[e] > sel[b]))
                            b = e;
                    used[b] = 1;
                    want[j] = b;
                }
            }
            double sum = 0.0;
            for (int j = 0; j < K_; j++)
                sum += want[j] >= 0 ? s[want[j]] : 0.0;
            for (int j = 0; j < K_; j++) {
                id_bad += ids[t * K_ + j] != want[j];
                double wr = want[j] >= 0 ? s[want[j]] / sum * scaling : 0.0;
                double d = fabs(w[t * K_ + j] - wr) / (wr > 0 ? wr : 1.0);
                if (!(d <= w_err))
                    w_err = isnan(d) ? INFINITY : fmax(w_err, d);
            }
        }
        CHECKF(id_bad == 0, "route (%s): %d ids differ", hash ? "hash" : "top-k", id_bad);
        CHECKF(w_err <= BOUND_ROUTE_W, "route (%s): weight rel err %g > %g",
               hash ? "hash" : "top-k", w_err, BOUND_ROUTE_W);
    }
    CHECK(qplug_cuda__moe_route(dx, dg, db, NULL, NULL, 0, m, D_, E_, E_ + 1, 1.0f, dids, dw,
                                NULL, &err) == QPLUG_ERR_SHAPE);
    cudaFree(dx);
    cudaFree(dg);
    cudaFree(db);
    cudaFree(dtok);
    cudaFree(dt2e);
    cudaFree(dids);
    cudaFree(dw);
    free(x);
    free(gate);
}

/* ----------------------------------------------------------- fused MoE */

static const char *fmt_name(qplug_cuda__moe_wfmt f)
{
    return f == QPLUG_CUDA_MOE_FP8 ? "fp8" : f == QPLUG_CUDA_MOE_MXFP4 ? "mxfp4" : "nvfp4";
}

static void test_moe(experts *ex, int64_t m, int ue8m0, int mode)
{
    uint16_t *x = make_x(m, D_, 1.0);
    int32_t *ids = malloc((size_t)(m * K_) * 4);
    float *wts = malloc((size_t)(m * K_) * 4);
    make_routing_mode(m, mode, ids, wts);

    double *act = malloc((size_t)(m * D_) * sizeof(double));
    float *xf = malloc((size_t)(m * D_) * sizeof(float));
    for (int64_t i = 0; i < m * D_; i++)
        xf[i] = bf16_value(x[i]);
    for (int64_t t = 0; t < m; t++)
        ref_quant_fp8(xf + t * D_, D_, ue8m0, act + t * D_);
    double *yref = malloc((size_t)(m * D_) * sizeof(double));
    ref_moe(ex, act, m, ids, wts, ue8m0, yref);

    size_t wsb = qplug_cuda__moe_workspace_bytes(m, K_, E_, D_, I_);
    void *ws = dev_alloc_poison(wsb);
    void *dx = dev_upload(x, (size_t)(m * D_) * 2);
    int32_t *dids = dev_upload(ids, (size_t)(m * K_) * 4);
    float *dwts = dev_upload(wts, (size_t)(m * K_) * 4);
    void *dy = dev_alloc_poison((size_t)(m * D_) * 2);
    uint16_t *y = malloc((size_t)(m * D_) * 2), *y2 = malloc((size_t)(m * D_) * 2);
    qplug_cuda__scale_fmt af = ue8m0 ? QPLUG_CUDA_SCALE_UE8M0 : QPLUG_CUDA_SCALE_F32;
    qplug_cuda__err err = {{0}};

    qplug_status st = qplug_cuda__moe_forward(&ex->desc, dx, m, dids, dwts, K_, af, dy, ws, wsb,
                                              NULL, &err);
    CHECKF(st == QPLUG_OK, "moe %s m=%lld: %s", fmt_name(ex->fmt), (long long)m, err.msg);
    download(y, dy, (size_t)(m * D_) * 2);
    double e = rel_l2_bf16(y, yref, (size_t)(m * D_));
    CHECKF(e <= BOUND_MOE, "moe %s m=%lld ue8m0=%d routing %d wgmma %d: rel L2 %g > %g",
           fmt_name(ex->fmt), (long long)m, ue8m0, mode, (int)ex->desc.wgmma_ready, e,
           BOUND_MOE);
    printf("moe %-5s%s m=%4lld ue8m0=%d routing %d wgmma %d: rel L2 %.3g\n", fmt_name(ex->fmt),
           ex->sub_scales ? " (subnormal scales)" : "", (long long)m, ue8m0, mode,
           (int)ex->desc.wgmma_ready, e);

    /* A second run into a poisoned output must give the same bits. */
    cudaMemset(dy, 0xff, (size_t)(m * D_) * 2);
    st = qplug_cuda__moe_forward(&ex->desc, dx, m, dids, dwts, K_, af, dy, ws, wsb, NULL, &err);
    download(y2, dy, (size_t)(m * D_) * 2);
    CHECKF(st == QPLUG_OK && memcmp(y, y2, (size_t)(m * D_) * 2) == 0,
           "moe %s m=%lld: second run differs", fmt_name(ex->fmt), (long long)m);

    /* Bad arguments are refused before anything runs. */
    CHECK(qplug_cuda__moe_forward(&ex->desc, dx, m, dids, dwts, K_, af, dy, ws, wsb - 1, NULL,
                                  &err) == QPLUG_ERR_ARGUMENT);
    qplug_cuda__moe_weights bad = ex->desc;
    bad.hidden = 200;
    CHECK(qplug_cuda__moe_forward(&bad, dx, m, dids, dwts, K_, af, dy, ws, wsb, NULL, &err) ==
          QPLUG_ERR_SHAPE);
    /* Misaligned weights or scales would fault in the kernels' 16-byte
     * and 4-byte loads: refused on the host, naming the matrix. */
    bad = ex->desc;
    bad.w2 = (const uint8_t *)bad.w2 + 8;
    st = qplug_cuda__moe_forward(&bad, dx, m, dids, dwts, K_, af, dy, ws, wsb, NULL, &err);
    CHECKF(st == QPLUG_ERR_ARGUMENT && strstr(err.msg, "w2"), "misaligned w2: %d %s", (int)st,
           err.msg);
    bad = ex->desc;
    bad.s1 = (const uint8_t *)bad.s1 + 2;
    st = qplug_cuda__moe_forward(&bad, dx, m, dids, dwts, K_, af, dy, ws, wsb, NULL, &err);
    CHECKF(st == QPLUG_ERR_ARGUMENT && strstr(err.msg, "w1"), "misaligned s1: %d %s", (int)st,
           err.msg);
    CHECK(qplug_cuda__moe_prepare(&bad, NULL, &err) == QPLUG_ERR_ARGUMENT);
    CHECK(qplug_cuda__moe_workspace_bytes(m, 17, E_, D_, I_) == 0);
    CHECK(qplug_cuda__moe_workspace_bytes(INT64_C(1) << 40, K_, E_, D_, I_) == 0);

    cudaFree(ws);
    cudaFree(dx);
    cudaFree(dids);
    cudaFree(dwts);
    cudaFree(dy);
    free(x);
    free(ids);
    free(wts);
    free(act);
    free(xf);
    free(yref);
    free(y);
    free(y2);
}

/* -------------------------------------------------------------- w4a4 */

/* The packed row of one token, the documented way, and its dequantized
 * values (without the NVFP4 global, which act_scale carries). */
static void ref_pack_row(const float *x, int group, float gscale, uint8_t *row, double *deq)
{
    memset(row, 0, D_ / 2);
    for (int b = 0; b < D_ / group; b++) {
        float amax = 0.0f;
        for (int i = 0; i < group; i++)
            amax = fmaxf(amax, fabsf(x[b * group + i]));
        float step;
        if (group == 32) {
            int e = -127;
            if (amax > 0.0f) {
                int ex;
                float f = frexpf(amax / 6.0f, &ex);
                e = f == 0.5f ? ex - 1 : ex;
            }
            e = e < -127 ? -127 : e > 127 ? 127 : e;
            row[D_ / 2 + b] = (uint8_t)(e + 127);
            step = ldexpf(1.0f, e);
        } else {
            uint8_t s8 = enc_e4m3((double)((amax / 6.0f) / gscale));
            row[D_ / 2 + b] = s8;
            step = (float)ref_e4m3[s8] * gscale;
        }
        for (int i = 0; i < group; i++) {
            int j = b * group + i;
            uint8_t c = step > 0.0f ? enc_e2m1((double)(x[j] / step)) : 0;
            row[j / 2] |= (uint8_t)((j & 1) ? c << 4 : c);
            deq[j] = ref_e2m1[c] * (double)step;
        }
    }
}

static void test_w4a4(experts *ex, int64_t m, int spread)
{
    int group = ex->fmt == QPLUG_CUDA_MOE_NVFP4 ? 16 : 32;
    float gscale = group == 16 ? 1.0f / 448.0f : 1.0f;
    size_t bpt = (size_t)(D_ / 2 + D_ / group);
    size_t bytes = qplug_cuda__w4a4_dispatch_bytes(m, D_, K_, group);
    CHECKF(bytes == (size_t)m * bpt + (size_t)(m * K_) * 8,
           "w4a4 %s: dispatch bytes %zu, want %lld*(%d/2 + %d/%d) + ids and weights",
           fmt_name(ex->fmt), bytes, (long long)m, D_, D_, group);
    CHECK(qplug_cuda__w4a4_dispatch_bytes(m, 200, K_, group) == 0);

    uint16_t *x = make_x(m, D_, 1.0);
    x[3] = bf16_bits(0.0f); /* an exact zero and a group of zeros */
    for (int i = 0; i < group && m > 1; i++)
        x[D_ + i] = bf16_bits(0.0f);
    /* spread: one token's second group 2^-14 times smaller, so its E8M0
     * exponent is more than 11 below its 128-block's maximum and the
     * wgmma path must hand the gate/up GEMM to the exact fallback. */
    for (int i = group; i < 2 * group && spread; i++)
        x[(m - 1) * D_ + i] = bf16_bits(ldexpf(bf16_value(x[(m - 1) * D_ + i]), -14));
    int32_t *ids = malloc((size_t)(m * K_) * 4);
    float *wts = malloc((size_t)(m * K_) * 4);
    make_routing(m, ids, wts);
    uint8_t *want = calloc(bytes, 1), *got = malloc(bytes);
    double *act = malloc((size_t)(m * D_) * sizeof(double));
    float xf[D_];
    for (int64_t t = 0; t < m; t++) {
        for (int d = 0; d < D_; d++)
            xf[d] = bf16_value(x[t * D_ + d]);
        ref_pack_row(xf, group, gscale, want + t * bpt, act + t * D_);
    }
    memcpy(want + m * bpt, ids, (size_t)(m * K_) * 4);
    memcpy(want + m * bpt + (size_t)(m * K_) * 4, wts, (size_t)(m * K_) * 4);

    void *dx = dev_upload(x, (size_t)(m * D_) * 2);
    int32_t *dids = dev_upload(ids, (size_t)(m * K_) * 4);
    float *dwts = dev_upload(wts, (size_t)(m * K_) * 4);
    void *dbuf = dev_alloc_poison(bytes);
    qplug_cuda__err err = {{0}};
    qplug_status st = qplug_cuda__w4a4_pack(dx, m, D_, group, gscale, dids, dwts, K_, dbuf, bytes,
                                            NULL, &err);
    CHECKF(st == QPLUG_OK, "w4a4 pack: %s", err.msg);
    download(got, dbuf, bytes);
    size_t diff = 0;
    for (size_t i = 0; i < bytes; i++)
        diff += got[i] != want[i];
    CHECKF(diff == 0, "w4a4 pack %s m=%lld: %zu of %zu bytes differ", fmt_name(ex->fmt),
           (long long)m, diff, bytes);
    CHECK(qplug_cuda__w4a4_pack(dx, m, D_, group, gscale, dids, dwts, K_, dbuf, bytes + 1, NULL,
                                &err) == QPLUG_ERR_ARGUMENT);
    /* x only 2-byte aligned takes the scalar-load kernel: same bytes. */
    uint16_t *xu = malloc((size_t)(m * D_ + 1) * 2);
    xu[0] = 0;
    memcpy(xu + 1, x, (size_t)(m * D_) * 2);
    uint16_t *dxu = dev_upload(xu, (size_t)(m * D_ + 1) * 2);
    cudaMemset(dbuf, 0xff, bytes);
    st = qplug_cuda__w4a4_pack(dxu + 1, m, D_, group, gscale, dids, dwts, K_, dbuf, bytes, NULL,
                               &err);
    download(got, dbuf, bytes);
    CHECKF(st == QPLUG_OK && memcmp(got, want, bytes) == 0,
           "w4a4 pack %s m=%lld from unaligned x differs", fmt_name(ex->fmt), (long long)m);
    cudaFree(dxu);
    free(xu);

    double *yref = malloc((size_t)(m * D_) * sizeof(double));
    ref_moe(ex, act, m, ids, wts, 0, yref);
    size_t wsb = qplug_cuda__moe_workspace_bytes(m, K_, E_, D_, I_);
    void *ws = dev_alloc_poison(wsb);
    void *dy = dev_alloc_poison((size_t)(m * D_) * 2);
    uint16_t *y = malloc((size_t)(m * D_) * 2);
    st = qplug_cuda__moe_forward_w4a4(&ex->desc, dbuf, bytes, m, K_, group, gscale,
                                      QPLUG_CUDA_SCALE_F32, dy, ws, wsb, NULL, &err);
    CHECKF(st == QPLUG_OK, "w4a4 moe: %s", err.msg);
    download(y, dy, (size_t)(m * D_) * 2);
    double e = rel_l2_bf16(y, yref, (size_t)(m * D_));
    CHECKF(e <= BOUND_MOE, "w4a4 moe %s m=%lld spread %d: rel L2 %g > %g", fmt_name(ex->fmt),
           (long long)m, spread, e, BOUND_MOE);
    printf("w4a4  %-5s m=%3lld spread %d: rel L2 %.3g\n", fmt_name(ex->fmt), (long long)m,
           spread, e);
    /* The MXFP4 wgmma paths must have handed the gate/up GEMM to the
     * mma.sync fallback exactly when a block could not be folded. */
    if (ex->fmt == QPLUG_CUDA_MOE_MXFP4 && ex->desc.wgmma_ready) {
        int32_t *dflag = qplug_cuda__moe_fallback_flag(ws, m, K_, E_, D_, I_);
        int32_t flag = -1;
        CHECK(dflag != NULL);
        if (dflag)
            download(&flag, dflag, 4);
        CHECKF(flag == spread, "w4a4 mxfp4 m=%lld spread %d wgmma %d: fallback flag %d",
               (long long)m, spread, (int)ex->desc.wgmma_ready, (int)flag);
    }
    CHECK(qplug_cuda__moe_forward_w4a4(&ex->desc, dbuf, bytes, m, K_, group == 16 ? 32 : 16,
                                       gscale, QPLUG_CUDA_SCALE_F32, dy, ws, wsb, NULL,
                                       &err) == QPLUG_ERR_ARGUMENT);

    cudaFree(dx);
    cudaFree(dids);
    cudaFree(dwts);
    cudaFree(dbuf);
    cudaFree(ws);
    cudaFree(dy);
    free(x);
    free(ids);
    free(wts);
    free(want);
    free(got);
    free(act);
    free(yref);
    free(y);
}

/* prepare refuses the wgmma path for MXFP4 experts with one row's 128-block
 * exponents 12 apart (the fold would not be exact), accepts 11. */
static void test_fold_check(const experts *ex)
{
    for (int spread = 11; spread <= 12; spread++) {
        uint8_t *sc = malloc(ex->sbytes[2]);
        memcpy(sc, ex->s[2], ex->sbytes[2]);
        size_t at = ex->sbytes[2] - 3;
        sc[at - 1] = 124;
        sc[at + 1] = 124;
        sc[at + 2] = 124;
        sc[at] = (uint8_t)(124 - spread);
        void *d = dev_upload(sc, ex->sbytes[2]);
        qplug_cuda__moe_weights w = ex->desc;
        w.s2 = d;
        qplug_cuda__err err = {{0}};
        CHECKF(qplug_cuda__moe_prepare(&w, NULL, &err) == QPLUG_OK, "moe_prepare: %s", err.msg);
        CHECKF(w.wgmma_ready == (spread <= 11), "moe_prepare: spread %d gives wgmma_ready %d",
               spread, (int)w.wgmma_ready);
        cudaFree(d);
        free(sc);
    }
}

/* One fused-MoE forward on `s` at the test's scale settings (group 32,
 * global 1, F32 activation scales): the W4A8 path from the BF16 x, or
 * (w4a4) the FP4 packing of x into buf followed by the W4A4 path. */
static qplug_status moe_call(const qplug_cuda__moe_weights *desc, int w4a4, const void *x,
                             int64_t m, int64_t D, const int32_t *ids, const float *wts,
                             int32_t K, void *buf, size_t bytes, void *y, void *ws, size_t wsb,
                             cudaStream_t s, qplug_cuda__err *err)
{
    if (!w4a4)
        return qplug_cuda__moe_forward(desc, x, m, ids, wts, K, QPLUG_CUDA_SCALE_F32, y, ws, wsb,
                                       s, err);
    qplug_status st = qplug_cuda__w4a4_pack(x, m, D, 32, 1.0f, ids, wts, K, buf, bytes, s, err);
    if (!st)
        st = qplug_cuda__moe_forward_w4a4(desc, buf, bytes, m, K, 32, 1.0f, QPLUG_CUDA_SCALE_F32,
                                          y, ws, wsb, s, err);
    return st;
}

/* --------------------------------------------------------- graph capture */

/* Routing, the W4A8 MoE, the w4a4 packing and the W4A4 MoE of one layer,
 * all on `s`. */
typedef struct layer_io {
    const experts *ex;
    int64_t m;
    void *x, *gate, *ws, *buf, *y1, *y2;
    float *bias, *wts;
    int32_t *ids;
    size_t wsb, bytes;
} layer_io;

static qplug_status run_layer(const layer_io *io, cudaStream_t s, qplug_cuda__err *err)
{
    qplug_status st = qplug_cuda__moe_route(io->x, io->gate, io->bias, NULL, NULL, 0, io->m, D_,
                                            E_, K_, 2.5f, io->ids, io->wts, s, err);
    for (int w4a4 = 0; w4a4 < 2 && !st; w4a4++)
        st = moe_call(&io->ex->desc, w4a4, io->x, io->m, D_, io->ids, io->wts, K_, io->buf,
                      io->bytes, w4a4 ? io->y2 : io->y1, io->ws, io->wsb, s, err);
    return st;
}

static void test_graph(const experts *ex)
{
    layer_io io;
    io.ex = ex;
    io.m = 300;
    uint16_t *x = make_x(io.m, D_, 1.0), *gate = make_x(E_, D_, 0.1);
    float bias[E_];
    for (int e = 0; e < E_; e++)
        bias[e] = (float)(0.3 * rng_normal());
    size_t ybytes = (size_t)(io.m * D_) * 2;
    io.x = dev_upload(x, ybytes);
    io.gate = dev_upload(gate, E_ * D_ * 2);
    io.bias = dev_upload(bias, sizeof bias);
    io.ids = dev_alloc_poison((size_t)(io.m * K_) * 4);
    io.wts = dev_alloc_poison((size_t)(io.m * K_) * 4);
    io.wsb = qplug_cuda__moe_workspace_bytes(io.m, K_, E_, D_, I_);
    io.ws = dev_alloc_poison(io.wsb);
    io.bytes = qplug_cuda__w4a4_dispatch_bytes(io.m, D_, K_, 32);
    io.buf = dev_alloc_poison(io.bytes);
    io.y1 = dev_alloc_poison(ybytes);
    io.y2 = dev_alloc_poison(ybytes);
    uint16_t *e1 = malloc(ybytes), *e2 = malloc(ybytes), *g1 = malloc(ybytes),
             *g2 = malloc(ybytes);
    qplug_cuda__err err = {{0}};

    cudaStream_t s;
    cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    qplug_status st = run_layer(&io, s, &err);
    CHECKF(st == QPLUG_OK, "graph: eager run: %s", err.msg);
    download(e1, io.y1, ybytes);
    download(e2, io.y2, ybytes);

    /* Global capture mode: any host synchronisation or allocation inside
     * the layer would invalidate the capture. */
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    CHECK(cuda_ok(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal), "begin capture"));
    st = run_layer(&io, s, &err);
    cudaError_t ce = cudaStreamEndCapture(s, &graph);
    CHECKF(st == QPLUG_OK && ce == cudaSuccess, "graph: capture: %s / %s", err.msg,
           cudaGetErrorString(ce));
    if (ce == cudaSuccess && graph) {
        CHECK(cuda_ok(cudaGraphInstantiate(&exec, graph, 0), "instantiate"));
        for (int rep = 0; rep < 2; rep++) {
            cudaMemsetAsync(io.y1, 0xff, ybytes, s);
            cudaMemsetAsync(io.y2, 0xff, ybytes, s);
            cudaMemsetAsync(io.ws, 0xff, io.wsb, s);
            CHECK(cuda_ok(cudaGraphLaunch(exec, s), "graph launch"));
            download(g1, io.y1, ybytes);
            download(g2, io.y2, ybytes);
            CHECKF(memcmp(e1, g1, ybytes) == 0 && memcmp(e2, g2, ybytes) == 0,
                   "graph replay %d differs from the eager run", rep);
        }
        cudaGraphExecDestroy(exec);
        cudaGraphDestroy(graph);
    }
    /* The eager result is itself finite and not all zero. */
    int finite = 1, nonzero = 0;
    for (size_t i = 0; i < ybytes / 2; i++) {
        finite &= isfinite(bf16_value(e1[i])) && isfinite(bf16_value(e2[i]));
        nonzero |= bf16_value(e1[i]) != 0.0f;
    }
    CHECK(finite && nonzero);
    cudaStreamDestroy(s);
    cudaFree(io.x);
    cudaFree(io.gate);
    cudaFree(io.bias);
    cudaFree(io.ids);
    cudaFree(io.wts);
    cudaFree(io.ws);
    cudaFree(io.buf);
    cudaFree(io.y1);
    cudaFree(io.y2);
    free(x);
    free(gate);
    free(e1);
    free(e2);
    free(g1);
    free(g2);
}

/* ------------------------------------------- v4 kernel against v3 */

/* The warp-specialized kernel (v4, forced with wgmma_ready == 3; the
 * forward's own choice depends on format and rows per expert) against the
 * v3 kernel (wgmma_ready == 2) at shapes with many 128-blocks of k, so that the v4
 * pipeline wraps around its stage slots several times (its mbarrier phases
 * flip), and with tiles of every wgmma N. Both issue the same wgmmas on the
 * same E4M3 tiles and promote in the same order, so the outputs must be
 * bit-identical; v3 itself is checked against the fp64 reference above.
 * Weights are random bytes (no NaN codes), the MXFP4 exponents within the
 * fold range. */
static void test_v4_vs_v3(qplug_cuda__moe_wfmt fmt)
{
    const int32_t E = 8, K = 2;
    const int64_t D = 2048, I = 1536, ms[3] = {5, 300, 1100};
    int fp8 = fmt == QPLUG_CUDA_MOE_FP8;
    size_t wb[3], sb[3];
    void *dw[3], *ds[3];
    for (int i = 0; i < 3; i++) {
        int64_t n = i < 2 ? I : D, k = i < 2 ? D : I;
        wb[i] = fp8 ? (size_t)(E * n * k) : (size_t)(E * n * k / 2);
        sb[i] = fp8 ? (size_t)(E * (n / 128) * (k / 128)) * 4 : (size_t)(E * n * (k / 32));
        uint8_t *w = malloc(wb[i]), *sc = malloc(sb[i]);
        for (size_t j = 0; j < wb[i]; j++) {
            uint8_t b = (uint8_t)rng_next();
            w[j] = fp8 && (b & 0x7f) == 0x7f ? (uint8_t)(b ^ 1) : b;
        }
        if (fp8) {
            for (size_t j = 0; j < sb[i] / 4; j++)
                ((float *)sc)[j] = (float)(0.002 * (1.0 + rng_uniform()));
        } else {
            for (size_t j = 0; j < sb[i]; j++)
                sc[j] = (uint8_t)(118 + (int)(rng_next() % 8));
        }
        dw[i] = dev_upload(w, wb[i]);
        ds[i] = dev_upload(sc, sb[i]);
        free(w);
        free(sc);
    }
    qplug_cuda__moe_weights desc = {fmt,   E,     D,     I,    dw[0], dw[1], dw[2],
                                    ds[0], ds[1], ds[2], NULL, NULL,  NULL,  LIMIT, 0};
    qplug_cuda__err err = {{0}};
    CHECKF(qplug_cuda__moe_prepare(&desc, NULL, &err) == QPLUG_OK && desc.wgmma_ready == 1,
           "v4 vs v3 %s: moe_prepare: %s (wgmma_ready %d)", fmt_name(fmt), err.msg,
           (int)desc.wgmma_ready);
    for (int mi = 0; mi < 3; mi++) {
        int64_t m = ms[mi];
        uint16_t *x = make_x(m, D, 1.0);
        int32_t *ids = malloc((size_t)(m * K) * 4);
        float *wts = malloc((size_t)(m * K) * 4);
        for (int64_t t = 0; t < m; t++) {
            ids[t * K] = (int32_t)(rng_next() % (uint64_t)E);
            ids[t * K + 1] = (int32_t)((ids[t * K] + 1 + rng_next() % (uint64_t)(E - 1)) % E);
            wts[t * K] = (float)(0.2 + 0.8 * rng_uniform());
            wts[t * K + 1] = (float)(0.2 + 0.8 * rng_uniform());
        }
        void *dx = dev_upload(x, (size_t)(m * D) * 2);
        int32_t *dids = dev_upload(ids, (size_t)(m * K) * 4);
        float *dwts = dev_upload(wts, (size_t)(m * K) * 4);
        size_t wsb = qplug_cuda__moe_workspace_bytes(m, K, E, D, I);
        void *ws = dev_alloc_poison(wsb);
        size_t bytes = qplug_cuda__w4a4_dispatch_bytes(m, D, K, 32);
        void *buf = dev_alloc_poison(bytes);
        void *dy = dev_alloc_poison((size_t)(m * D) * 2);
        uint16_t *y[2];
        for (int w4a4 = 0; w4a4 < (fp8 ? 1 : 2); w4a4++) {
            for (int v = 0; v < 2; v++) {
                desc.wgmma_ready = v ? 2 : 3;
                cudaMemset(dy, 0xff, (size_t)(m * D) * 2);
                qplug_status st = moe_call(&desc, w4a4, dx, m, D, dids, dwts, K, buf, bytes,
                                           dy, ws, wsb, NULL, &err);
                CHECKF(st == QPLUG_OK, "v4 vs v3 %s m=%lld: %s", fmt_name(fmt), (long long)m,
                       err.msg);
                y[v] = malloc((size_t)(m * D) * 2);
                download(y[v], dy, (size_t)(m * D) * 2);
            }
            int64_t diff = 0, bad = 0, nz = 0;
            for (int64_t i = 0; i < m * D; i++) {
                double a = bf16_value(y[0][i]);
                diff += y[0][i] != y[1][i];
                bad += !isfinite(a);
                nz += a != 0.0;
            }
            CHECKF(diff == 0 && bad == 0 && nz > m * D / 2,
                   "v4 vs v3 %s%s m=%lld: %lld of %lld outputs differ, %lld not finite, %lld "
                   "non-zero",
                   w4a4 ? "w4a4 " : "", fmt_name(fmt), (long long)m, (long long)diff,
                   (long long)(m * D), (long long)bad, (long long)nz);
            printf("v4 vs v3 %s%s m=%lld: %lld of %lld outputs differ\n", w4a4 ? "w4a4 " : "",
                   fmt_name(fmt), (long long)m, (long long)diff, (long long)(m * D));
            free(y[0]);
            free(y[1]);
        }
        cudaFree(dx);
        cudaFree(dids);
        cudaFree(dwts);
        cudaFree(ws);
        cudaFree(buf);
        cudaFree(dy);
        free(x);
        free(ids);
        free(wts);
    }
    for (int i = 0; i < 3; i++) {
        cudaFree(dw[i]);
        cudaFree(ds[i]);
    }
}

/* ------------------------------------ NVFP4: wgmma (F16) against mma.sync */

/* NVFP4 experts on the F16 wgmma path (wgmma_ready 1) and on the mma.sync
 * kernels (0), each against the fp64 reference (BOUND_MOE) at 1, 5, 300
 * and 1100 tokens (1100 x 2 slots over 8 experts: full and partial tiles of
 * 128 rows), with random routing (about 5% ids -1), one expert taking all
 * rows (routing 1) and experts with 0 rows (routing 2); `sub` makes half of
 * the group scales subnormal E4M3. */
static void test_nv_ref(int sub)
{
    const int64_t ms[4] = {1, 5, 300, 1100};
    experts ex;
    make_experts(&ex, QPLUG_CUDA_MOE_NVFP4, sub);
    for (int ready = 1; ready >= 0; ready--) {
        ex.desc.wgmma_ready = ready;
        for (int i = 0; i < 4; i++)
            test_moe(&ex, ms[i], 0, 0);
        test_moe(&ex, 300, 1, 1);
        test_moe(&ex, 1100, 0, 2);
    }
    free_experts(&ex);
}

/* Relative L2 bound of the NVFP4 wgmma output against the mma.sync one:
 * both are within BOUND_MOE of the exact result; they differ by the fp32
 * summation order (per 128 on the tensor cores instead of per 16), the
 * BF16 rounding of y and the odd E4M3 rounding flip of h, together a few
 * 1e-3; a wrong scale, group or row gives errors of order 1. */
#define BOUND_NV_PATHS 1e-2

/* The two NVFP4 paths against each other at shapes with many 128-blocks of
 * k (D = 2048, I = 1536: the 3-stage ring of the F16 kernel wraps around
 * several times), random E2M1 bytes, scales as nv_scale(sub), experts 3 and
 * 5 without rows, about 10% of the second slots -1. */
static void test_nv_old_new(int sub)
{
    const int32_t E = 8, K = 2;
    const int64_t D = 2048, I = 1536, ms[4] = {1, 5, 300, 1100};
    size_t wb[3], sb[3];
    void *dw[3], *ds[3];
    float *dg[3];
    for (int i = 0; i < 3; i++) {
        int64_t n = i < 2 ? I : D, k = i < 2 ? D : I;
        wb[i] = (size_t)(E * n * k / 2);
        sb[i] = (size_t)(E * n * (k / 16));
        uint8_t *w = malloc(wb[i]), *sc = malloc(sb[i]);
        float g[8];
        for (size_t j = 0; j < wb[i]; j++)
            w[j] = (uint8_t)rng_next();
        for (size_t j = 0; j < sb[i]; j++)
            sc[j] = nv_scale(sub);
        for (int e = 0; e < E; e++)
            g[e] = nv_global(sub) * 0.25f;
        dw[i] = dev_upload(w, wb[i]);
        ds[i] = dev_upload(sc, sb[i]);
        dg[i] = dev_upload(g, sizeof g);
        free(w);
        free(sc);
    }
    qplug_cuda__moe_weights desc = {QPLUG_CUDA_MOE_NVFP4, E, D, I, dw[0], dw[1], dw[2],
                                    ds[0], ds[1], ds[2], dg[0], dg[1], dg[2], LIMIT, 0};
    qplug_cuda__err err = {{0}};
    CHECKF(qplug_cuda__moe_prepare(&desc, NULL, &err) == QPLUG_OK && desc.wgmma_ready == 1,
           "nvfp4 old vs new: moe_prepare: %s (wgmma_ready %d)", err.msg, (int)desc.wgmma_ready);
    for (int mi = 0; mi < 4; mi++) {
        int64_t m = ms[mi];
        uint16_t *x = make_x(m, D, 1.0);
        int32_t *ids = malloc((size_t)(m * K) * 4);
        float *wts = malloc((size_t)(m * K) * 4);
        for (int64_t t = 0; t < m; t++) {
            int32_t a, b;
            do
                a = (int32_t)(rng_next() % (uint64_t)E);
            while (a == 3 || a == 5);
            do
                b = (int32_t)(rng_next() % (uint64_t)E);
            while (b == 3 || b == 5 || b == a);
            ids[t * K] = a;
            ids[t * K + 1] = rng_uniform() < 0.1 ? -1 : b;
            wts[t * K] = (float)(0.2 + 0.8 * rng_uniform());
            wts[t * K + 1] = (float)(0.2 + 0.8 * rng_uniform());
        }
        void *dx = dev_upload(x, (size_t)(m * D) * 2);
        int32_t *dids = dev_upload(ids, (size_t)(m * K) * 4);
        float *dwts = dev_upload(wts, (size_t)(m * K) * 4);
        size_t wsb = qplug_cuda__moe_workspace_bytes(m, K, E, D, I);
        void *ws = dev_alloc_poison(wsb);
        void *dy = dev_alloc_poison((size_t)(m * D) * 2);
        uint16_t *y[2];
        for (int v = 0; v < 2; v++) {
            desc.wgmma_ready = v ? 0 : 2;
            cudaMemset(dy, 0xff, (size_t)(m * D) * 2);
            qplug_status st = qplug_cuda__moe_forward(&desc, dx, m, dids, dwts, K,
                                                      QPLUG_CUDA_SCALE_F32, dy, ws, wsb, NULL,
                                                      &err);
            CHECKF(st == QPLUG_OK, "nvfp4 old vs new m=%lld: %s", (long long)m, err.msg);
            y[v] = malloc((size_t)(m * D) * 2);
            download(y[v], dy, (size_t)(m * D) * 2);
        }
        double num = 0.0, den = 0.0;
        int64_t bad = 0, nz = 0;
        for (int64_t i = 0; i < m * D; i++) {
            double a = bf16_value(y[0][i]), b = bf16_value(y[1][i]);
            bad += !isfinite(a) || !isfinite(b);
            nz += a != 0.0;
            if (isfinite(a) && isfinite(b)) {
                num += (a - b) * (a - b);
                den += b * b;
            }
        }
        double e = sqrt(num / (den > 0.0 ? den : 1.0));
        CHECKF(bad == 0 && nz > m * D / 2 && e <= BOUND_NV_PATHS,
               "nvfp4%s old vs new m=%lld: rel L2 %g (bound %g), %lld not finite, %lld of %lld "
               "non-zero",
               sub ? " (subnormal scales)" : "", (long long)m, e, BOUND_NV_PATHS, (long long)bad,
               (long long)nz, (long long)(m * D));
        printf("nvfp4%s wgmma vs mma.sync m=%lld (D=%lld I=%lld): rel L2 %.3g\n",
               sub ? " (subnormal scales)" : "", (long long)m, (long long)D, (long long)I, e);
        free(y[0]);
        free(y[1]);
        cudaFree(dx);
        cudaFree(dids);
        cudaFree(dwts);
        cudaFree(ws);
        cudaFree(dy);
        free(x);
        free(ids);
        free(wts);
    }
    for (int i = 0; i < 3; i++) {
        cudaFree(dw[i]);
        cudaFree(ds[i]);
        cudaFree(dg[i]);
    }
}

/* --------------------------------------------------------------- bench */

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Flash shapes; weights are constant byte patterns (the kernels' speed
 * does not depend on the values), routing uniform at random. Each format
 * runs on its wgmma kernels (v6, v3 and v4; NVFP4: v3, then mma.sync).
 * profile: two calls of the default path per format and token count only
 * (for a per-kernel breakdown under a profiler such as ncu); only_default:
 * the timed runs of the default path only (comparison builds). */
static int bench(int profile, int only_default)
{
    const int32_t E = 256, K = 6;
    const int64_t D = 4096, I = 2048, ms[2] = {64, 4096};
    struct cudaDeviceProp prop;
    cudaGetDeviceProperties(&prop, 0);

    /* Device-to-device copy bandwidth, counted as bytes read + written. */
    size_t cb = (size_t)1 << 30;
    void *ca = NULL, *cbuf = NULL;
    cudaMalloc(&ca, cb);
    cudaMalloc(&cbuf, cb);
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    float tc[10];
    for (int i = 0; i < 12; i++) {
        cudaEventRecord(e0, 0);
        cudaMemcpyAsync(cbuf, ca, cb, cudaMemcpyDeviceToDevice, 0);
        cudaEventRecord(e1, 0);
        cudaEventSynchronize(e1);
        if (i >= 2)
            cudaEventElapsedTime(&tc[i - 2], e0, e1);
    }
    qsort(tc, 10, sizeof(float), cmp_float);
    double copy_gbs = 2.0 * (double)cb / (tc[5] * 1e-3) / 1e9;
    cudaFree(ca);
    cudaFree(cbuf);
    printf("# MoE bench, %s, DeepSeek V4 Flash shapes (E=%d, top-%d, D=%lld, I=%lld)\n\n",
           prop.name, E, K, (long long)D, (long long)I);
    printf("Device-to-device copy bandwidth (read + write): %.0f GB/s\n\n", copy_gbs);
    printf("| path | tokens | experts touched | time (ms) | TFLOP/s | GB/s (touched experts) | "
           "%% of copy BW |\n|---|---|---|---|---|---|---|\n");

    for (int f = 0; f < 4; f++) {
        qplug_cuda__moe_wfmt fmt = f == 0 ? QPLUG_CUDA_MOE_FP8
                                   : f == 3 ? QPLUG_CUDA_MOE_MXFP4
                                            : (qplug_cuda__moe_wfmt)f;
        int w4a4 = f == 3;
        size_t wb = fmt == QPLUG_CUDA_MOE_FP8 ? (size_t)(E * I * D) : (size_t)(E * I * D / 2);
        size_t sbb = fmt == QPLUG_CUDA_MOE_FP8   ? (size_t)(E * (I / 128) * (D / 128)) * 4
                     : fmt == QPLUG_CUDA_MOE_MXFP4 ? (size_t)(E * I * D / 32)
                                                   : (size_t)(E * I * D / 16);
        void *w[3], *sc[3];
        float *g = NULL;
        int ok = 1;
        for (int i = 0; i < 3; i++) {
            ok &= cudaMalloc(&w[i], wb) == cudaSuccess && cudaMalloc(&sc[i], sbb) == cudaSuccess;
            cudaMemset(w[i], fmt == QPLUG_CUDA_MOE_FP8 ? 0x30 : 0x35, wb);
            cudaMemset(sc[i],
                       fmt == QPLUG_CUDA_MOE_FP8 ? 0x3c : fmt == QPLUG_CUDA_MOE_MXFP4 ? 0x7b : 0x30,
                       sbb);
        }
        ok &= cudaMalloc((void **)&g, (size_t)E * 4) == cudaSuccess;
        cudaMemset(g, 0x3c, (size_t)E * 4);
        if (!ok) {
            fprintf(stderr, "bench: out of device memory for %s\n", fmt_name(fmt));
            return 1;
        }
        qplug_cuda__moe_weights desc = {fmt, E,     D,     I,     w[0], w[1], w[2], sc[0],
                                        sc[1], sc[2], g, g, g, 10.0f, 0};
        qplug_cuda__err perr = {{0}};
        if (qplug_cuda__moe_prepare(&desc, NULL, &perr) != QPLUG_OK) {
            fprintf(stderr, "bench: moe_prepare: %s\n", perr.msg);
            return 1;
        }
        int ready = desc.wgmma_ready;
        /* Runs: 64 and 4096 tokens on v6, v3 and v4 when the wgmma kernels
         * took the experts (NVFP4: v3 and mma.sync), else on mma.sync. */
        static const int vars_fp[3] = {4, 2, 3}, vars_nv[2] = {2, 0};
        int nvar = !ready || profile || only_default ? 1 : fmt == QPLUG_CUDA_MOE_NVFP4 ? 2 : 3;
        for (int mi = 0; mi < 2 * nvar; mi++) {
            int64_t m = ms[mi & 1];
            desc.wgmma_ready = !ready                  ? 0
                               : profile || only_default ? ready
                               : fmt == QPLUG_CUDA_MOE_NVFP4 ? vars_nv[mi >> 1]
                                                             : vars_fp[mi >> 1];
            uint16_t *x = make_x(m, D, 1.0);
            int32_t *ids = malloc((size_t)(m * K) * 4);
            float *wts = malloc((size_t)(m * K) * 4);
            int touched[256] = {0};
            for (int64_t t = 0; t < m; t++)
                for (int j = 0; j < K; j++) {
                    int e, dup;
                    do {
                        e = (int)(rng_next() % (uint64_t)E);
                        dup = 0;
                        for (int q = 0; q < j; q++)
                            dup |= ids[t * K + q] == e;
                    } while (dup);
                    ids[t * K + j] = e;
                    wts[t * K + j] = 0.2f;
                    touched[e] = 1;
                }
            int nt = 0;
            for (int e = 0; e < E; e++)
                nt += touched[e];
            void *dx = dev_upload(x, (size_t)(m * D) * 2);
            int32_t *dids = dev_upload(ids, (size_t)(m * K) * 4);
            float *dwts = dev_upload(wts, (size_t)(m * K) * 4);
            void *dy = dev_alloc_poison((size_t)(m * D) * 2);
            size_t wsb = qplug_cuda__moe_workspace_bytes(m, K, E, D, I);
            void *ws = dev_alloc_poison(wsb);
            size_t bytes = qplug_cuda__w4a4_dispatch_bytes(m, D, K, 32);
            void *buf = dev_alloc_poison(bytes);
            qplug_cuda__err err = {{0}};
            float t[20] = {0};
            qplug_status st = QPLUG_OK;
            for (int it = 0; it < (profile ? 2 : 23) && !st; it++) {
                cudaEventRecord(e0, 0);
                st = moe_call(&desc, w4a4, dx, m, D, dids, dwts, K, buf, bytes, dy, ws, wsb,
                              NULL, &err);
                cudaEventRecord(e1, 0);
                cudaEventSynchronize(e1);
                if (it >= 3)
                    cudaEventElapsedTime(&t[it - 3], e0, e1);
            }
            cudaError_t ce = cudaDeviceSynchronize();
            if (st || ce != cudaSuccess) {
                fprintf(stderr, "bench %s m=%lld: %s %s\n", fmt_name(fmt), (long long)m, err.msg,
                        cudaGetErrorString(ce));
                return 1;
            }
            qsort(t, 20, sizeof(float), cmp_float);
            double sec = t[10] * 1e-3;
            double flops = 2.0 * (double)(m * K) * 3.0 * (double)D * (double)I;
            double ebytes = (double)nt * 3.0 * ((double)wb / E + (double)sbb / E);
            printf("| %s%s%s | %lld | %d | %.3f | %.1f | %.0f | %.1f%% |\n", w4a4 ? "w4a4 " : "",
                   fmt_name(fmt),
                   desc.wgmma_ready == 2   ? " wgmma v3"
                   : desc.wgmma_ready == 3 ? " ws v4"
                   : desc.wgmma_ready      ? " v6"
                                           : "",
                   (long long)m, nt, t[10],
                   flops / sec / 1e12, ebytes / sec / 1e9, 100.0 * (ebytes / sec / 1e9) / copy_gbs);
            fflush(stdout);
            cudaFree(dx);
            cudaFree(dids);
            cudaFree(dwts);
            cudaFree(dy);
            cudaFree(ws);
            cudaFree(buf);
            free(x);
            free(ids);
            free(wts);
        }
        for (int i = 0; i < 3; i++) {
            cudaFree(w[i]);
            cudaFree(sc[i]);
        }
        cudaFree(g);
    }
    return 0;
}

/* ---------------------------------------------------------------- main */

int main(int argc, char **argv)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n < 1) {
        printf("no CUDA device: skipped\n");
        return SKIP_CODE;
    }
    if (argc > 1 && strcmp(argv[1], "bench") == 0)
        return bench(0, argc > 2 && strcmp(argv[2], "default") == 0);
    if (argc > 1 && strcmp(argv[1], "profile") == 0)
        return bench(1, 0);
    /* `quick`: only the v4 / v3 comparison (bench builds of variants). */
    if (argc > 1 && strcmp(argv[1], "quick") == 0) {
        test_v4_vs_v3(QPLUG_CUDA_MOE_FP8);
        test_v4_vs_v3(QPLUG_CUDA_MOE_MXFP4);
        test_nv_old_new(0);
        test_nv_old_new(1);
        return test_done();
    }

    test_route();
    const int64_t ms[] = {1, 7, 64, 300};
    for (int f = 0; f < 3; f++) {
        experts ex;
        make_experts(&ex, (qplug_cuda__moe_wfmt)f, 0);
        for (int i = 0; i < 4; i++)
            test_moe(&ex, ms[i], 0, 0);
        test_moe(&ex, 129, 1, 0);
        test_moe(&ex, 300, 0, 1);
        test_moe(&ex, 300, 1, 2);
        test_moe(&ex, 65, 0, 0);
        /* The same shapes on the mma.sync kernels (what experts that fail
         * the prepare check get). */
        int ready = ex.desc.wgmma_ready;
        ex.desc.wgmma_ready = 0;
        test_moe(&ex, 7, 0, 0);
        test_moe(&ex, 300, 0, 0);
        test_moe(&ex, 300, 0, 1);
        /* And on each wgmma kernel by force (2: v3, 3: v4, 4: v6, which
         * NVFP4 does not have); the tile boundaries on each. */
        for (int v = 2; ready && v <= (f == QPLUG_CUDA_MOE_NVFP4 ? 3 : 4); v++) {
            ex.desc.wgmma_ready = v;
            test_moe(&ex, 7, 0, 0);
            test_moe(&ex, 300, 1, 1);
            test_moe(&ex, 300, 0, 3);
            if (f == QPLUG_CUDA_MOE_MXFP4) {
                test_w4a4(&ex, 1, 0);
                test_w4a4(&ex, 300, 0);
                test_w4a4(&ex, 300, 1);
            }
        }
        ex.desc.wgmma_ready = ready;
        if (f != QPLUG_CUDA_MOE_FP8) {
            test_w4a4(&ex, 1, 0);
            test_w4a4(&ex, 300, 0);
            test_w4a4(&ex, 300, 1);
        }
        if (f == QPLUG_CUDA_MOE_MXFP4)
            test_fold_check(&ex);
        if (f == QPLUG_CUDA_MOE_MXFP4)
            test_graph(&ex);
        free_experts(&ex);
    }
    test_v4_vs_v3(QPLUG_CUDA_MOE_FP8);
    test_v4_vs_v3(QPLUG_CUDA_MOE_MXFP4);
    test_nv_ref(0);
    test_nv_ref(1);
    test_nv_old_new(0);
    test_nv_old_new(1);
    CHECK(cuda_ok(cudaDeviceSynchronize(), "final sync"));
    return test_done();
}
