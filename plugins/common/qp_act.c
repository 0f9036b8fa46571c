/*
 * plugins/common/qp_act.c - activation quantizers (FP8 1x128, NVFP4 and
 * MXFP4 groups) and the packed FP4 token layout of the w4a4 pre-dispatch
 * stage.
 */
#include <math.h>
#include <stdatomic.h>
#include <string.h>

#include "qplug/codec.h"
#include "qp_common.h"

float qplug__fp8_act_scale(float amax, bool ue8m0)
{
    if (!(amax >= 1e-4f))
        amax = 1e-4f;
    float s = amax / 448.0f;
    if (!ue8m0)
        return s;
    /* 2^ceil(log2(s)): s = f * 2^e with f in [0.5, 1), so log2(s) is an
     * integer (e - 1) exactly when f == 0.5 and lies in (e-1, e) otherwise. */
    int e;
    float f = frexpf(s, &e);
    return ldexpf(1.0f, f == 0.5f ? e - 1 : e);
}

/* The exponent of the smallest power of two p with amax / p <= 6, so that a
 * group never saturates (MXFP4 activations). */
static int mx_exp(float amax)
{
    int e;
    float f = frexpf(amax / 6.0f, &e);
    return f == 0.5f ? e - 1 : e;
}

size_t qplug__fp4_packed_bytes_per_token(int64_t hidden, int group)
{
    if (hidden <= 0 || (group != 16 && group != 32) || hidden % group)
        return 0;
    return (size_t)(hidden / 2 + hidden / group);
}

/* Quantizes one row into the packed layout. Returns false on NaN/Inf. */
static bool fp4_quant_row(int group, float gscale, const float *x, int64_t hidden, uint8_t *dst)
{
    uint8_t *sc = dst + hidden / 2;
    memset(dst, 0, (size_t)(hidden / 2));
    for (int64_t b = 0; b < hidden / group; b++) {
        const float *xb = x + b * group;
        float amax = 0.0f;
        for (int i = 0; i < group; i++) {
            if (!isfinite(xb[i]))
                return false;
            float a = fabsf(xb[i]);
            if (a > amax)
                amax = a;
        }
        float step; /* the value of one E2M1 unit in this group */
        if (group == 32) {
            int e = amax > 0.0f ? mx_exp(amax) : -127;
            if (e < -127)
                e = -127;
            if (e > 127)
                e = 127;
            sc[b] = qplug_e8m0_from_exp(e);
            step = ldexpf(1.0f, e);
        } else {
            /* NVFP4: the E4M3 block scale is taken against the global
             * 1/input_scale, and the element step is block scale * global. */
            uint8_t s8 = qplug_f32_to_e4m3((amax / 6.0f) / gscale);
            sc[b] = s8;
            step = qplug_e4m3_to_f32(s8) * gscale;
        }
        for (int i = 0; i < group; i++) {
            uint8_t code = step > 0.0f ? qplug_f32_to_e2m1(xb[i] / step) : 0;
            int64_t j = b * group + i;
            dst[j >> 1] |= (uint8_t)((j & 1) ? code << 4 : code);
        }
    }
    return true;
}

void qplug__fp4_unpack_row(int group, const uint8_t *src, int64_t hidden, float *v)
{
    const uint8_t *sc = src + hidden / 2;
    for (int64_t b = 0; b < hidden / group; b++) {
        float s = group == 32 ? qplug_e8m0_to_f32(sc[b]) : qplug_e4m3_to_f32(sc[b]);
        for (int64_t j = b * group; j < (b + 1) * group; j++)
            v[j] = qplug_e2m1_get(src, j) * s;
    }
}

/* ---- Parallel drivers -------------------------------------------------- */

typedef struct act_ctx {
    const qplug_host *host;
    qplug__act_mode mode;
    float gscale;
    const float *x;
    int64_t k, ldx;
    float *v, *sc;
    uint8_t *packed; /* qplug__fp4_pack output, or NULL */
    _Atomic int status;
} act_ctx;

static void fp8_row(const act_ctx *c, int64_t r)
{
    int64_t k = c->k, kb = (k + QPLUG__FP8_BLOCK - 1) / QPLUG__FP8_BLOCK;
    const float *x = c->x + r * c->ldx;
    float *v = c->v + r * k;
    for (int64_t b = 0; b < kb; b++) {
        int64_t c0 = b * QPLUG__FP8_BLOCK;
        int64_t c1 = c0 + QPLUG__FP8_BLOCK < k ? c0 + QPLUG__FP8_BLOCK : k;
        float amax = 0.0f;
        for (int64_t i = c0; i < c1; i++) {
            float a = fabsf(x[i]);
            if (a > amax)
                amax = a;
        }
        float s = qplug__fp8_act_scale(amax, c->mode == QPLUG__ACT_FP8_UE8M0);
        c->sc[r * kb + b] = s;
        for (int64_t i = c0; i < c1; i++)
            v[i] = qplug_e4m3_to_f32(qplug_f32_to_e4m3(x[i] / s));
    }
}

static bool row_finite(const float *x, int64_t k)
{
    for (int64_t i = 0; i < k; i++)
        if (!isfinite(x[i]))
            return false;
    return true;
}

static void act_range(void *arg, int64_t begin, int64_t end)
{
    act_ctx *c = arg;
    int group = c->mode == QPLUG__ACT_MXFP4 ? 32 : 16;
    uint8_t *row = NULL;
    if ((c->mode == QPLUG__ACT_NVFP4 || c->mode == QPLUG__ACT_MXFP4) && !c->packed) {
        row = c->host->api->alloc(c->host->ctx, qplug__fp4_packed_bytes_per_token(c->k, group),
                                  QPLUG_DEVICE_CPU);
        if (!row) {
            c->status = QPLUG_ERR_NOMEM;
            return;
        }
    }
    for (int64_t r = begin; r < end; r++) {
        const float *x = c->x + r * c->ldx;
        switch (c->mode) {
        case QPLUG__ACT_NONE:
            memcpy(c->v + r * c->k, x, (size_t)c->k * sizeof(float));
            break;
        case QPLUG__ACT_FP8:
        case QPLUG__ACT_FP8_UE8M0:
            if (!row_finite(x, c->k)) {
                c->status = QPLUG_ERR_NUMERIC;
                break;
            }
            fp8_row(c, r);
            break;
        case QPLUG__ACT_NVFP4:
        case QPLUG__ACT_MXFP4: {
            size_t bpt = qplug__fp4_packed_bytes_per_token(c->k, group);
            uint8_t *dst = c->packed ? c->packed + (size_t)r * bpt : row;
            if (!fp4_quant_row(group, c->gscale, x, c->k, dst)) {
                c->status = QPLUG_ERR_NUMERIC;
                break;
            }
            if (!c->packed)
                qplug__fp4_unpack_row(group, dst, c->k, c->v + r * c->k);
            break;
        }
        }
    }
    if (row)
        c->host->api->free(c->host->ctx, row, QPLUG_DEVICE_CPU);
}

qplug_status qplug__act_quant(const qplug_host *host, qplug__act_mode mode, float gscale,
                              const float *x, int64_t m, int64_t k, int64_t ldx, float *v,
                              float *sc)
{
    if ((mode == QPLUG__ACT_NVFP4 && k % 16) || (mode == QPLUG__ACT_MXFP4 && k % 32))
        return host->api->error(host->ctx, QPLUG_ERR_SHAPE,
                                "activation width %lld is not a multiple of the FP4 group",
                                (long long)k);
    act_ctx c = {host, mode, gscale, x, k, ldx, v, sc, NULL, QPLUG_OK};
    host->api->parallel_for(host->ctx, m, act_range, &c);
    if (c.status == QPLUG_ERR_NUMERIC)
        return host->api->error(host->ctx, QPLUG_ERR_NUMERIC,
                                "activations x hold a NaN or Inf, which native quantization "
                                "cannot represent");
    if (c.status)
        return host->api->error(host->ctx, (qplug_status)c.status,
                                "out of memory quantizing activations");
    return QPLUG_OK;
}

qplug_status qplug__fp4_pack(const qplug_host *host, int group, float gscale, const float *x,
                             int64_t m, int64_t hidden, int64_t ldx, uint8_t *dst)
{
    if (!qplug__fp4_packed_bytes_per_token(hidden, group))
        return host->api->error(host->ctx, QPLUG_ERR_SHAPE,
                                "hidden size %lld cannot be packed in FP4 groups of %d",
                                (long long)hidden, group);
    act_ctx c = {host,
                 group == 32 ? QPLUG__ACT_MXFP4 : QPLUG__ACT_NVFP4,
                 gscale,
                 x,
                 hidden,
                 ldx,
                 NULL,
                 NULL,
                 dst,
                 QPLUG_OK};
    host->api->parallel_for(host->ctx, m, act_range, &c);
    if (c.status)
        return host->api->error(host->ctx, (qplug_status)c.status,
                                "activations x hold a NaN or Inf, which FP4 packing cannot "
                                "represent");
    return QPLUG_OK;
}

/* ---- RMSNorm + FP8 quantization (CPU reference) ------------------------ */

qplug_status qplug__rmsnorm_quant_ref(const float *x, int64_t m, int64_t d, int64_t ldx,
                                      const float *w, float eps, bool ue8m0, uint8_t *q,
                                      float *scale)
{
    if (!x || !w || !q || !scale || m < 0 || d < QPLUG__FP8_BLOCK ||
        d % QPLUG__FP8_BLOCK != 0 || ldx < d)
        return QPLUG_ERR_ARGUMENT;
    int64_t kb = d / QPLUG__FP8_BLOCK;
    for (int64_t i = 0; i < m; i++) {
        const float *xr = x + i * ldx;
        double ss = 0.0;
        for (int64_t c = 0; c < d; c++) {
            if (!isfinite(xr[c]))
                return QPLUG_ERR_NUMERIC;
            ss += (double)xr[c] * xr[c];
        }
        /* The normalizer in fp32, as the kernel forms it. */
        float r = 1.0f / sqrtf((float)(ss / (double)d) + eps);
        for (int64_t b = 0; b < kb; b++) {
            float v[QPLUG__FP8_BLOCK];
            float amax = 0.0f;
            for (int j = 0; j < QPLUG__FP8_BLOCK; j++) {
                int64_t c = b * QPLUG__FP8_BLOCK + j;
                v[j] = xr[c] * r * w[c];
                if (fabsf(v[j]) > amax)
                    amax = fabsf(v[j]);
            }
            float s = qplug__fp8_act_scale(amax, ue8m0);
            for (int j = 0; j < QPLUG__FP8_BLOCK; j++)
                q[i * d + b * QPLUG__FP8_BLOCK + j] = qplug_f32_to_e4m3(v[j] / s);
            scale[b * m + i] = s;
        }
    }
    return QPLUG_OK;
}
