/*
 * plugins/common/qp_weights.c - weight views: exact decoding of every
 * checkpoint weight format into fp32 rows, the NVFP4 -> FP8 block and
 * -> BF16 conversions, and building views from bound tensors.
 */
#include <math.h>
#include <stdatomic.h>
#include <string.h>

#include "qplug/codec.h"
#include "qp_common.h"

/* The 256 E4M3 values; built per call (256 decodes) so that nothing global
 * and mutable exists in the plugin. */
static void e4m3_table(float lut[256])
{
    for (int b = 0; b < 256; b++)
        lut[b] = qplug_e4m3_to_f32((uint8_t)b);
}

static int64_t ceil_div(int64_t a, int64_t b)
{
    return (a + b - 1) / b;
}

/* The multiplier of one FP8 block-scale entry. E8M0 bytes become an exact
 * power of two (ldexp), never a rounded float. */
static float fp8_block_scale(const qplug__wmat *w, int64_t tile_r, int64_t tile_c)
{
    int64_t kb = ceil_div(w->cols, QPLUG__FP8_BLOCK);
    if (w->scale_e8m0)
        return qplug_e8m0_to_f32(((const uint8_t *)w->scale)[tile_r * kb + tile_c]);
    return ((const float *)w->scale)[tile_r * kb + tile_c];
}

static void decode_fp4_row(const uint8_t *packed, int64_t cols, float *dst)
{
    for (int64_t c = 0; c + 1 < cols; c += 2) {
        uint8_t b = packed[c >> 1];
        dst[c] = qplug_e2m1_to_f32((uint8_t)(b & 15u));
        dst[c + 1] = qplug_e2m1_to_f32((uint8_t)(b >> 4));
    }
    if (cols & 1)
        dst[cols - 1] = qplug_e2m1_get(packed, cols - 1);
}

void qplug__wmat_dequant_rows(const qplug__wmat *w, int64_t r0, int64_t r1, float *dst)
{
    int64_t cols = w->cols;
    switch (w->fmt) {
    case QPLUG__W_F32:
        memcpy(dst, (const float *)w->data + r0 * cols, (size_t)((r1 - r0) * cols) * sizeof(float));
        return;
    /* 16-bit values are loaded with memcpy: safetensors offsets need not
     * be even, so a checkpoint tensor may start at an odd address. */
    case QPLUG__W_BF16: {
        const uint8_t *s = (const uint8_t *)w->data + (size_t)(r0 * cols) * 2;
        for (int64_t i = 0; i < (r1 - r0) * cols; i++) {
            uint16_t v;
            memcpy(&v, s + 2 * i, sizeof v);
            dst[i] = qplug_bf16_to_f32(v);
        }
        return;
    }
    case QPLUG__W_F16: {
        const uint8_t *s = (const uint8_t *)w->data + (size_t)(r0 * cols) * 2;
        for (int64_t i = 0; i < (r1 - r0) * cols; i++) {
            uint16_t v;
            memcpy(&v, s + 2 * i, sizeof v);
            dst[i] = qplug_f16_to_f32(v);
        }
        return;
    }
    case QPLUG__W_FP8_BLOCK: {
        float lut[256];
        e4m3_table(lut);
        const uint8_t *q = (const uint8_t *)w->data;
        for (int64_t r = r0; r < r1; r++) {
            float *d = dst + (r - r0) * cols;
            const uint8_t *qr = q + r * cols;
            for (int64_t c0 = 0; c0 < cols; c0 += QPLUG__FP8_BLOCK) {
                float s = fp8_block_scale(w, r / QPLUG__FP8_BLOCK, c0 / QPLUG__FP8_BLOCK);
                int64_t c1 = c0 + QPLUG__FP8_BLOCK < cols ? c0 + QPLUG__FP8_BLOCK : cols;
                for (int64_t c = c0; c < c1; c++)
                    d[c] = lut[qr[c]] * s;
            }
        }
        return;
    }
    case QPLUG__W_MXFP4: {
        const uint8_t *q = (const uint8_t *)w->data;
        const uint8_t *sc = (const uint8_t *)w->scale;
        int64_t nb = cols / 32;
        for (int64_t r = r0; r < r1; r++) {
            float *d = dst + (r - r0) * cols;
            decode_fp4_row(q + r * (cols / 2), cols, d);
            for (int64_t b = 0; b < nb; b++) {
                /* An exact power of two: the product below is exact. */
                float s = qplug_e8m0_to_f32(sc[r * nb + b]);
                for (int64_t c = b * 32; c < (b + 1) * 32; c++)
                    d[c] *= s;
            }
        }
        return;
    }
    case QPLUG__W_NVFP4: {
        float lut[256];
        e4m3_table(lut);
        const uint8_t *q = (const uint8_t *)w->data;
        const uint8_t *sc = (const uint8_t *)w->scale;
        int64_t nb = cols / 16;
        for (int64_t r = r0; r < r1; r++) {
            float *d = dst + (r - r0) * cols;
            decode_fp4_row(q + r * (cols / 2), cols, d);
            for (int64_t b = 0; b < nb; b++) {
                /* e2m1 * e4m3 is exact in fp32; the global multiplies once. */
                float s = lut[sc[r * nb + b]];
                for (int64_t c = b * 16; c < (b + 1) * 16; c++)
                    d[c] = (d[c] * s) * w->global;
            }
        }
        return;
    }
    }
}

void qplug__wmat_fp8_rows(const qplug__wmat *w, int64_t r0, int64_t r1, float *dst, float *sc)
{
    float lut[256];
    e4m3_table(lut);
    int64_t cols = w->cols, kb = ceil_div(cols, QPLUG__FP8_BLOCK);
    const uint8_t *q = (const uint8_t *)w->data;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *qr = q + r * cols;
        float *d = dst + (r - r0) * cols;
        for (int64_t c = 0; c < cols; c++)
            d[c] = lut[qr[c]];
        for (int64_t b = 0; b < kb; b++)
            sc[(r - r0) * kb + b] = fp8_block_scale(w, r / QPLUG__FP8_BLOCK, b);
    }
}

/* ---- NVFP4 -> FP8 block ------------------------------------------------ */

typedef struct to_fp8_ctx {
    const qplug_host *host;
    const qplug__wmat *w;
    uint8_t *q;
    float *scale;
    _Atomic int failed;
} to_fp8_ctx;

static void to_fp8_range(void *arg, int64_t begin, int64_t end)
{
    to_fp8_ctx *c = arg;
    const qplug__wmat *w = c->w;
    int64_t cols = w->cols, kb = ceil_div(cols, QPLUG__FP8_BLOCK);
    float *buf = c->host->api->alloc(c->host->ctx,
                                     (size_t)(QPLUG__FP8_BLOCK * cols) * sizeof(float),
                                     QPLUG_DEVICE_CPU);
    if (!buf) {
        c->failed = 1;
        return;
    }
    for (int64_t tr = begin; tr < end; tr++) {
        int64_t r0 = tr * QPLUG__FP8_BLOCK;
        int64_t r1 = r0 + QPLUG__FP8_BLOCK < w->rows ? r0 + QPLUG__FP8_BLOCK : w->rows;
        qplug__wmat_dequant_rows(w, r0, r1, buf);
        for (int64_t tc = 0; tc < kb; tc++) {
            int64_t c0 = tc * QPLUG__FP8_BLOCK;
            int64_t c1 = c0 + QPLUG__FP8_BLOCK < cols ? c0 + QPLUG__FP8_BLOCK : cols;
            float amax = 0.0f;
            for (int64_t r = r0; r < r1; r++)
                for (int64_t cc = c0; cc < c1; cc++) {
                    float a = fabsf(buf[(r - r0) * cols + cc]);
                    if (a > amax)
                        amax = a;
                }
            /* Each tile gets its own real scale; an all-zero tile keeps 1 so
             * that it decodes to zeros. */
            float s = amax > 0.0f ? amax / 448.0f : 1.0f;
            c->scale[tr * kb + tc] = s;
            for (int64_t r = r0; r < r1; r++)
                for (int64_t cc = c0; cc < c1; cc++)
                    c->q[r * cols + cc] = qplug_f32_to_e4m3(buf[(r - r0) * cols + cc] / s);
        }
    }
    c->host->api->free(c->host->ctx, buf, QPLUG_DEVICE_CPU);
}

qplug_status qplug__nvfp4_to_fp8_block(const qplug_host *host, const qplug__wmat *w, uint8_t *q,
                                       float *scale)
{
    to_fp8_ctx c = {host, w, q, scale, 0};
    host->api->parallel_for(host->ctx, ceil_div(w->rows, QPLUG__FP8_BLOCK), to_fp8_range, &c);
    if (c.failed)
        return host->api->error(host->ctx, QPLUG_ERR_NOMEM,
                                "out of memory converting a [%lld, %lld] weight to FP8 block",
                                (long long)w->rows, (long long)w->cols);
    return QPLUG_OK;
}

qplug_status qplug__wmat_to_bf16(const qplug_host *host, const qplug__wmat *w, uint16_t *dst)
{
    float *row = host->api->alloc(host->ctx, (size_t)w->cols * sizeof(float), QPLUG_DEVICE_CPU);
    if (!row)
        return host->api->error(host->ctx, QPLUG_ERR_NOMEM,
                                "out of memory converting a [%lld, %lld] weight to BF16",
                                (long long)w->rows, (long long)w->cols);
    for (int64_t r = 0; r < w->rows; r++) {
        qplug__wmat_dequant_rows(w, r, r + 1, row);
        for (int64_t c = 0; c < w->cols; c++)
            dst[r * w->cols + c] = qplug_f32_to_bf16(row[c]);
    }
    host->api->free(host->ctx, row, QPLUG_DEVICE_CPU);
    return QPLUG_OK;
}

/* ---- Views from bound tensors ------------------------------------------ */

qplug_status qplug__need(const qplug_host *host, const char *slot, const qplug_tensor **out)
{
    const qplug_tensor *t = host->api->weight(host->ctx, slot);
    if (!t || !t->data)
        return host->api->error(host->ctx, QPLUG_ERR_NOT_FOUND, "tensor for slot '%s' is missing",
                                slot);
    if (t->device != QPLUG_DEVICE_CPU)
        return host->api->error(host->ctx, QPLUG_ERR_ARGUMENT,
                                "tensor for slot '%s' is not in host memory", slot);
    *out = t;
    return QPLUG_OK;
}

qplug_status qplug__scalar(const qplug_host *host, const char *slot, float *out)
{
    const qplug_tensor *t;
    qplug_status st = qplug__need(host, slot, &t);
    if (st)
        return st;
    if (t->dtype != QPLUG_DT_F32 || qplug_tensor_numel(t) != 1 || t->ndim > 1)
        return host->api->error(host->ctx, QPLUG_ERR_SHAPE,
                                "tensor '%s' (slot %s) must be one F32 value, got %s with %lld "
                                "elements",
                                t->name ? t->name : slot, slot, qplug_dtype_name(t->dtype),
                                (long long)qplug_tensor_numel(t));
    float v;
    memcpy(&v, t->data, sizeof v);
    if (!isfinite(v) || !(v > 0.0f))
        return host->api->error(host->ctx, QPLUG_ERR_NUMERIC,
                                "tensor '%s' (slot %s) holds %g; a positive finite scale is "
                                "required",
                                t->name ? t->name : slot, slot, (double)v);
    *out = v;
    return QPLUG_OK;
}

static bool shape2(const qplug_tensor *t, int64_t a, int64_t b)
{
    return t->ndim == 2 && t->shape[0] == a && t->shape[1] == b;
}

qplug_status qplug__wmat_from_tensor(const qplug_host *host, const char *slot,
                                     const qplug_tensor *t, qplug__wfmt fmt, int64_t rows,
                                     int64_t cols, qplug__wmat *out)
{
    const char *tn = t->name ? t->name : slot;
    bool ok;
    memset(out, 0, sizeof *out);
    switch (fmt) {
    case QPLUG__W_F32:
        ok = t->dtype == QPLUG_DT_F32 && shape2(t, rows, cols);
        break;
    case QPLUG__W_BF16:
        ok = t->dtype == QPLUG_DT_BF16 && shape2(t, rows, cols);
        break;
    case QPLUG__W_F16:
        ok = t->dtype == QPLUG_DT_F16 && shape2(t, rows, cols);
        break;
    case QPLUG__W_FP8_BLOCK:
        ok = t->dtype == QPLUG_DT_F8_E4M3 && shape2(t, rows, cols);
        break;
    default:
        ok = ((t->dtype == QPLUG_DT_U8 || t->dtype == QPLUG_DT_I8) && shape2(t, rows, cols / 2)) ||
             (t->dtype == QPLUG_DT_E2M1 && shape2(t, rows, cols));
        ok = ok && cols % 2 == 0;
        break;
    }
    if (!ok)
        return host->api->error(host->ctx, QPLUG_ERR_SHAPE,
                                "tensor '%s' (slot %s): %s with %d dims does not hold a "
                                "[%lld, %lld] weight in the expected format",
                                tn, slot, qplug_dtype_name(t->dtype), (int)t->ndim,
                                (long long)rows, (long long)cols);
    out->fmt = fmt;
    out->rows = rows;
    out->cols = cols;
    out->data = t->data;
    return QPLUG_OK;
}

/* ---- Sharded linears ----------------------------------------------------- */

static qplug__wfmt float_fmt_of(qplug_dtype dt)
{
    return dt == QPLUG_DT_BF16 ? QPLUG__W_BF16 : dt == QPLUG_DT_F16 ? QPLUG__W_F16 : QPLUG__W_F32;
}

qplug_status qplug__fuse_float_shards(const qplug_host *host, const qplug_layer_desc *layer,
                                      float **owned, qplug__wmat *out)
{
    int64_t n = layer->n, k = layer->k, row = 0;
    char slot[96];
    *owned = NULL;
    memset(out, 0, sizeof *out);
    float *w = host->api->alloc(host->ctx, (size_t)(n * k) * sizeof(float), QPLUG_DEVICE_CPU);
    if (!w)
        return host->api->error(host->ctx, QPLUG_ERR_NOMEM,
                                "out of memory fusing %d shards into a [%lld, %lld] weight",
                                (int)layer->num_shards, (long long)n, (long long)k);
    for (int32_t i = 0; i < layer->num_shards; i++) {
        const qplug_tensor *t;
        qplug__wmat v;
        qplug__shard_slot(slot, sizeof slot, layer, i, "weight");
        qplug_status st = qplug__need(host, slot, &t);
        if (!st)
            st = qplug__wmat_from_tensor(host, slot, t, float_fmt_of(t->dtype), layer->shard_n[i],
                                         k, &v);
        if (st) {
            host->api->free(host->ctx, w, QPLUG_DEVICE_CPU);
            return st;
        }
        /* BF16/F16 widen exactly: the fused F32 weight holds the same
         * values, converted once here instead of on every apply. */
        qplug__wmat_dequant_rows(&v, 0, v.rows, w + row * k);
        row += v.rows;
    }
    out->fmt = QPLUG__W_F32;
    out->rows = n;
    out->cols = k;
    out->data = w;
    *owned = w;
    return QPLUG_OK;
}
