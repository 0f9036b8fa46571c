/*
 * plugins/common/qp_gemm.c - the cache-blocked CPU GEMM and the linear,
 * grouped-linear, fused-MoE and KV-cache drivers built on it.
 *
 * Work is split over tiles of QPLUG__NR weight rows: each task decodes its
 * tile once into per-thread fp32 scratch (exact values, or unscaled E4M3
 * values plus block scales). With enough activation rows the tile is
 * packed into a panel (k-major, QPLUG__NR values per step) and the
 * register-blocked panel kernel of qp_gemm_kernels.c runs over it one k
 * chunk at a time, so a chunk of the panel (8 KB) stays in L1 while every
 * activation row passes it; with very few rows packing costs more than it
 * saves, and a row kernel takes dot products straight off the decoded
 * rows.
 */
#include <math.h>
#include <stdatomic.h>
#include <string.h>

#include "qplug/codec.h"
#include "qp_common.h"
#include "qp_gemm_kernels.h"

/* From this many activation rows on, a tile is packed into a panel. */
#define QP_PANEL_MIN_M 3

/* The most elements an apply() tensor may claim (check_2d). */
#define QPLUG__MAX_ELEMS ((int64_t)1 << 40)

_Static_assert(QPLUG__KC == QPLUG__FP8_BLOCK, "one kernel chunk must be one FP8 block");

static int64_t ceil_div(int64_t a, int64_t b)
{
    return (a + b - 1) / b;
}

typedef struct gemm_ctx {
    const qplug_host *host;
    const qplug__gemm_args *g;
    qplug__gemm_kernels kern;
    bool panel;
    _Atomic int failed;
} gemm_ctx;

/* Few activation rows: each row against 4 decoded weight rows at a time,
 * one k chunk (one FP8 block) per call. */
static void tile_rows(const gemm_ctx *c, int64_t n0, int64_t nt, const float *wt,
                      const float *wsc)
{
    const qplug__gemm_args *g = c->g;
    int64_t k = g->k, kb = ceil_div(k, QPLUG__KC);
    for (int64_t i = 0; i < g->m; i++) {
        const float *a = g->a + i * g->lda;
        float *y = g->y + i * g->ldy + n0;
        for (int64_t j0 = 0; j0 < nt; j0 += 4) {
            /* Rows past the tile's end repeat its last row; their sums are
             * dropped. */
            int64_t rows[4];
            for (int j = 0; j < 4; j++)
                rows[j] = j0 + j < nt ? j0 + j : nt - 1;
            float acc[4] = {0, 0, 0, 0};
            for (int64_t b = 0; b < kb; b++) {
                int64_t c0 = b * QPLUG__KC;
                int64_t len = k - c0 < QPLUG__KC ? k - c0 : QPLUG__KC;
                const float *w[4];
                float sw[4];
                for (int j = 0; j < 4; j++) {
                    w[j] = wt + rows[j] * k + c0;
                    sw[j] = g->fp8_split ? wsc[rows[j] * kb + b] : 1.0f;
                }
                float sa = g->a_sc ? g->a_sc[i * kb + b] : 1.0f;
                c->kern.row4(len, a + c0, w, sa, sw, acc);
            }
            for (int j = 0; j < 4 && j0 + j < nt; j++)
                y[j0 + j] = g->alpha * acc[j];
        }
    }
}

/* Packs the decoded rows wt[nt][k] into pn[k][QPLUG__NR], zero columns
 * past nt. */
static void pack_panel(const float *wt, int64_t nt, int64_t k, float *pn)
{
    for (int64_t t0 = 0; t0 < k; t0 += 8) {
        int64_t t1 = t0 + 8 < k ? t0 + 8 : k;
        for (int64_t j = 0; j < QPLUG__NR; j++) {
            const float *src = wt + j * k;
            for (int64_t t = t0; t < t1; t++)
                pn[t * QPLUG__NR + j] = j < nt ? src[t] : 0.0f;
        }
    }
}

/* Enough activation rows: the panel kernel over chunks of k, all rows per
 * chunk, partial sums in acc[m][QPLUG__NR]. */
static void tile_panel(const gemm_ctx *c, int64_t n0, int64_t nt, const float *pn,
                       const float *wsc, float *acc)
{
    const qplug__gemm_args *g = c->g;
    int64_t k = g->k, kb = ceil_div(k, QPLUG__KC), m = g->m;
    memset(acc, 0, (size_t)(m * QPLUG__NR) * sizeof(float));
    for (int64_t b = 0; b < kb; b++) {
        int64_t c0 = b * QPLUG__KC;
        int64_t len = k - c0 < QPLUG__KC ? k - c0 : QPLUG__KC;
        float sw[QPLUG__NR];
        for (int64_t j = 0; j < QPLUG__NR; j++)
            sw[j] = g->fp8_split && j < nt ? wsc[j * kb + b] : 1.0f;
        for (int64_t i0 = 0; i0 < m; i0 += c->kern.mr_max) {
            int mr = (int)(m - i0 < c->kern.mr_max ? m - i0 : c->kern.mr_max);
            c->kern.panel(mr, len, g->a + i0 * g->lda + c0, g->lda, pn + c0 * QPLUG__NR,
                          g->a_sc ? g->a_sc + i0 * kb + b : NULL, kb, sw,
                          acc + i0 * QPLUG__NR);
        }
    }
    for (int64_t i = 0; i < m; i++) {
        float *y = g->y + i * g->ldy + n0;
        for (int64_t j = 0; j < nt; j++)
            y[j] = g->alpha * acc[i * QPLUG__NR + j];
    }
}

static void gemm_range(void *arg, int64_t begin, int64_t end)
{
    gemm_ctx *c = arg;
    const qplug__gemm_args *g = c->g;
    int64_t k = g->k, kb = ceil_div(k, QPLUG__FP8_BLOCK);
    size_t floats = (size_t)(QPLUG__NR * k + QPLUG__NR * kb);
    if (c->panel)
        floats += (size_t)(QPLUG__NR * k + g->m * QPLUG__NR);
    float *wt = c->host->api->alloc(c->host->ctx, floats * sizeof(float), QPLUG_DEVICE_CPU);
    if (!wt) {
        c->failed = 1;
        return;
    }
    float *wsc = wt + QPLUG__NR * k;
    float *pn = wsc + QPLUG__NR * kb;
    float *acc = pn + QPLUG__NR * k;
    for (int64_t tile = begin; tile < end; tile++) {
        int64_t n0 = tile * QPLUG__NR;
        int64_t nt = g->n - n0 < QPLUG__NR ? g->n - n0 : QPLUG__NR;
        c->kern.decode(g->w, g->wrow0 + n0, g->wrow0 + n0 + nt, g->fp8_split, wt, wsc);
        if (c->panel) {
            pack_panel(wt, nt, k, pn);
            tile_panel(c, n0, nt, pn, wsc, acc);
        } else {
            tile_rows(c, n0, nt, wt, wsc);
        }
    }
    c->host->api->free(c->host->ctx, wt, QPLUG_DEVICE_CPU);
}

qplug_status qplug__gemm(const qplug_host *host, const qplug__gemm_args *g)
{
    if (g->m == 0 || g->n == 0)
        return QPLUG_OK;
    gemm_ctx c = {.host = host, .g = g, .panel = g->m >= QP_PANEL_MIN_M, .failed = 0};
    qplug__gemm_kernels_pick(&c.kern);
    host->api->parallel_for(host->ctx, ceil_div(g->n, QPLUG__NR), gemm_range, &c);
    if (c.failed)
        return host->api->error(host->ctx, QPLUG_ERR_NOMEM,
                                "out of memory for GEMM scratch (%lld x %lld weight tile)",
                                (long long)QPLUG__NR, (long long)g->k);
    return QPLUG_OK;
}

/* ---- Argument checks --------------------------------------------------- */

static qplug_status check_2d(const qplug_host *host, const char *what, const qplug_tensor *t,
                             qplug_dtype dt, int64_t rows, int64_t cols)
{
    if (!t)
        return host->api->error(host->ctx, QPLUG_ERR_ARGUMENT, "apply: %s is missing", what);
    if (t->device != QPLUG_DEVICE_CPU)
        return host->api->error(host->ctx, QPLUG_ERR_ARGUMENT,
                                "apply: %s is not in host memory", what);
    if (t->dtype != dt)
        return host->api->error(host->ctx, QPLUG_ERR_DTYPE, "apply: %s is %s, expected %s", what,
                                qplug_dtype_name(t->dtype), qplug_dtype_name(dt));
    if (t->ndim != 2 || (rows >= 0 && t->shape[0] != rows) || t->shape[1] != cols ||
        t->shape[0] < 0)
        return host->api->error(host->ctx, QPLUG_ERR_SHAPE,
                                "apply: %s has shape [%lld, %lld] (%d dims), expected [%lld, %lld]",
                                what, (long long)t->shape[0],
                                (long long)(t->ndim > 1 ? t->shape[1] : -1), (int)t->ndim,
                                (long long)(rows >= 0 ? rows : t->shape[0]), (long long)cols);
    if (!t->data && t->shape[0] > 0)
        return host->api->error(host->ctx, QPLUG_ERR_ARGUMENT, "apply: %s has no data", what);
    /* No real host tensor holds 2^40 elements (4 TiB of F32); a larger row
     * count is a bad shape, and refusing it keeps the drivers' scratch
     * sizes (rows times widths, times top_k) far from int64 overflow. */
    if (cols > 0 && t->shape[0] > QPLUG__MAX_ELEMS / cols)
        return host->api->error(host->ctx, QPLUG_ERR_SHAPE,
                                "apply: %s has %lld rows of %lld, more than any host tensor holds",
                                what, (long long)t->shape[0], (long long)cols);
    return QPLUG_OK;
}

/* Refuses anything but a forward call (the only op of linear and MoE
 * layers). */
static qplug_status check_forward_op(const qplug_host *host, const qplug_layer_desc *layer,
                                     const qplug_apply_args *args)
{
    if (!args || args->op != QPLUG_OP_FORWARD)
        return host->api->error(host->ctx, QPLUG_ERR_ARGUMENT,
                                "apply: layer %s takes only the forward op",
                                layer->name ? layer->name : "?");
    return QPLUG_OK;
}

qplug_status qplug__check_forward(const qplug_host *host, const qplug_layer_desc *layer,
                                  const qplug_apply_args *args)
{
    qplug_status st = check_forward_op(host, layer, args);
    if (st)
        return st;
    int64_t g = layer->kind == QPLUG_LAYER_GROUPED_LINEAR ? layer->groups : 1;
    int64_t in = g * layer->k;
    int64_t out = layer->kind == QPLUG_LAYER_FUSED_MOE ? layer->k : g * layer->n;
    st = check_2d(host, "x", args->x, QPLUG_DT_F32, -1, in);
    if (st)
        return st;
    int64_t m = args->x->shape[0];
    st = check_2d(host, "y", args->y, QPLUG_DT_F32, m, out);
    if (st)
        return st;
    if (layer->kind == QPLUG_LAYER_FUSED_MOE) {
        st = check_2d(host, "topk_ids", args->topk_ids, QPLUG_DT_I32, m, layer->top_k);
        if (st)
            return st;
        st = check_2d(host, "topk_weights", args->topk_weights, QPLUG_DT_F32, m, layer->top_k);
    }
    return st;
}

/* ---- Linear ------------------------------------------------------------ */

static bool is_fp8(qplug__act_mode m)
{
    return m == QPLUG__ACT_FP8 || m == QPLUG__ACT_FP8_UE8M0;
}

static float act_alpha(qplug__act_mode mode, float gscale)
{
    return mode == QPLUG__ACT_NVFP4 ? gscale : 1.0f;
}

qplug_status qplug__check_prequant(const qplug_host *host, const qplug_layer_desc *layer,
                                   const qplug_apply_args *args)
{
    qplug_status st = check_forward_op(host, layer, args);
    if (st)
        return st;
    if ((layer->kind != QPLUG_LAYER_LINEAR && layer->kind != QPLUG_LAYER_GROUPED_LINEAR) ||
        layer->k % QPLUG__FP8_BLOCK != 0)
        return host->api->error(host->ctx, QPLUG_ERR_UNSUPPORTED,
                                "apply: layer %s takes no pre-quantized x (x_scale)",
                                layer->name ? layer->name : "?");
    int64_t g = layer->kind == QPLUG_LAYER_GROUPED_LINEAR ? layer->groups : 1;
    int64_t in = g * layer->k;
    st = check_2d(host, "x", args->x, QPLUG_DT_F8_E4M3, -1, in);
    if (st)
        return st;
    int64_t m = args->x->shape[0];
    st = check_2d(host, "x_scale", qplug_apply_x_scale(args), QPLUG_DT_F32, in / QPLUG__FP8_BLOCK,
                  m);
    if (st)
        return st;
    return check_2d(host, "y", args->y, QPLUG_DT_F32, m, g * layer->n);
}

/* Pre-quantized x: per group, the E4M3 codes and the transposed scales
 * become the GEMM's inputs in the form qplug__act_quant gives them. */
static qplug_status linear_prequant(const qplug_host *host, const qplug_layer_desc *layer,
                                    const qplug__wmat *w, bool fp8_split,
                                    const qplug_apply_args *args)
{
    qplug_status st = qplug__check_prequant(host, layer, args);
    if (st)
        return st;
    bool native = args->precision == QPLUG_PRECISION_NATIVE;
    int64_t m = args->x->shape[0], k = layer->k, n = layer->n;
    int64_t groups = layer->kind == QPLUG_LAYER_GROUPED_LINEAR ? layer->groups : 1;
    int64_t kb = k / QPLUG__FP8_BLOCK, K = groups * k;
    if (m == 0)
        return QPLUG_OK;
    const uint8_t *xq = args->x->data;
    const float *xs = qplug_apply_x_scale(args)->data;
    for (int64_t i = 0; i < m * (K / QPLUG__FP8_BLOCK); i++)
        if (!(xs[i] > 0.0f) || isinf(xs[i]))
            return host->api->error(host->ctx, QPLUG_ERR_NUMERIC,
                                    "apply: x_scale[%lld][%lld] = %g is not a positive finite "
                                    "scale",
                                    (long long)(i / m), (long long)(i % m), (double)xs[i]);
    for (int64_t i = 0; i < m * K; i++)
        if ((xq[i] & 0x7f) == 0x7f)
            return host->api->error(host->ctx, QPLUG_ERR_NUMERIC,
                                    "apply: x[%lld][%lld] is an E4M3 NaN code", (long long)(i / K),
                                    (long long)(i % K));
    size_t bytes = (size_t)(m * k + m * kb) * sizeof(float);
    float *v = host->api->alloc(host->ctx, bytes, QPLUG_DEVICE_CPU);
    if (!v)
        return host->api->error(host->ctx, QPLUG_ERR_NOMEM,
                                "out of memory for %lld activation rows", (long long)m);
    float *sc = v + m * k;
    float *y = args->y->data;
    for (int64_t g = 0; g < groups && !st; g++) {
        for (int64_t i = 0; i < m; i++)
            for (int64_t b = 0; b < kb; b++) {
                float s = xs[(g * kb + b) * m + i];
                sc[i * kb + b] = s;
                for (int64_t c = b * QPLUG__FP8_BLOCK; c < (b + 1) * QPLUG__FP8_BLOCK; c++) {
                    float q = qplug_e4m3_to_f32(xq[i * K + g * k + c]);
                    /* Reference: the exact activation q * s (one rounding
                     * at most, as the product of two floats). */
                    v[i * k + c] = native ? q : q * s;
                }
            }
        qplug__gemm_args ga = {m, n, k, v, k, native ? sc : NULL, w, g * n, native && fp8_split,
                               1.0f, y + g * n, groups * n};
        st = qplug__gemm(host, &ga);
    }
    host->api->free(host->ctx, v, QPLUG_DEVICE_CPU);
    return st;
}

qplug_status qplug__linear_forward(const qplug_host *host, const qplug_layer_desc *layer,
                                   const qplug__wmat *w, qplug__act_mode mode, bool fp8_split,
                                   const qplug_apply_args *args)
{
    if (args && qplug_apply_x_scale(args))
        return linear_prequant(host, layer, w, fp8_split, args);
    qplug_status st = qplug__check_forward(host, layer, args);
    if (st)
        return st;
    int64_t m = args->x->shape[0], k = layer->k, n = layer->n;
    int64_t groups = layer->kind == QPLUG_LAYER_GROUPED_LINEAR ? layer->groups : 1;
    int64_t kb = ceil_div(k, QPLUG__FP8_BLOCK);
    if (m == 0)
        return QPLUG_OK;
    size_t bytes = (size_t)(m * k + m * kb) * sizeof(float);
    float *v = host->api->alloc(host->ctx, bytes, QPLUG_DEVICE_CPU);
    if (!v)
        return host->api->error(host->ctx, QPLUG_ERR_NOMEM,
                                "out of memory for %lld activation rows", (long long)m);
    float *sc = v + m * k;
    const float *x = args->x->data;
    float *y = args->y->data;
    for (int64_t g = 0; g < groups && !st; g++) {
        st = qplug__act_quant(host, mode, w->input_scale, x + g * k, m, k, groups * k, v, sc);
        if (st)
            break;
        qplug__gemm_args ga = {m, n, k, v, k, is_fp8(mode) ? sc : NULL, w, g * n, fp8_split,
                               act_alpha(mode, w->input_scale), y + g * n, groups * n};
        st = qplug__gemm(host, &ga);
    }
    host->api->free(host->ctx, v, QPLUG_DEVICE_CPU);
    return st;
}

/* ---- Fused MoE --------------------------------------------------------- */

static float silu(float g)
{
    return g / (1.0f + expf(-g));
}

typedef struct moe_scratch {
    int32_t *count;  /* [E + 1] offsets after the prefix sum */
    int32_t *tok;    /* [m * top_k] tokens grouped by expert */
    float *wt;       /* [m * top_k] their routing weights */
    float *xg;       /* [R, D] gathered x rows */
    float *v1, *sc1; /* [R, D], [R, kbD] */
    float *g, *u;    /* [R, I] */
    float *v2, *sc2; /* [R, I], [R, kbI] */
    float *o;        /* [R, D] */
} moe_scratch;

qplug_status qplug__moe_forward(const qplug_host *host, const qplug_layer_desc *layer,
                                const qplug__moe *moe, const qplug_apply_args *args)
{
    qplug_status st = qplug__check_forward(host, layer, args);
    if (st)
        return st;
    int64_t m = args->x->shape[0], D = layer->k, I = layer->n;
    int32_t E = layer->num_experts, K = layer->top_k;
    float L = layer->swiglu_limit;
    const int32_t *ids = args->topk_ids->data;
    const float *tw = args->topk_weights->data;
    const float *x = args->x->data;
    float *y = args->y->data;

    for (int64_t t = 0; t < m; t++)
        for (int32_t j = 0; j < K; j++) {
            int32_t e = ids[t * K + j];
            if (e < -1 || e >= E)
                return host->api->error(host->ctx, QPLUG_ERR_ARGUMENT,
                                        "apply: topk_ids[%lld][%d] = %d is outside [-1, %d)",
                                        (long long)t, (int)j, (int)e, (int)E);
        }
    /* With no tokens y may have no data at all: nothing to clear. */
    if (m == 0)
        return QPLUG_OK;
    memset(y, 0, (size_t)(m * D) * sizeof(float));

    int64_t R = m * K, kbD = ceil_div(D, QPLUG__FP8_BLOCK), kbI = ceil_div(I, QPLUG__FP8_BLOCK);
    size_t floats = (size_t)(R * D * 3 + R * kbD + R * I * 3 + R * kbI + R);
    size_t ints = (size_t)(E + 1 + R);
    float *mem = host->api->alloc(host->ctx, floats * sizeof(float) + ints * sizeof(int32_t),
                                  QPLUG_DEVICE_CPU);
    if (!mem)
        return host->api->error(host->ctx, QPLUG_ERR_NOMEM,
                                "out of memory for MoE scratch (%lld routed rows)", (long long)R);
    moe_scratch s;
    s.xg = mem;
    s.v1 = s.xg + R * D;
    s.o = s.v1 + R * D;
    s.sc1 = s.o + R * D;
    s.g = s.sc1 + R * kbD;
    s.u = s.g + R * I;
    s.v2 = s.u + R * I;
    s.sc2 = s.v2 + R * I;
    s.wt = s.sc2 + R * kbI;
    s.count = (int32_t *)(s.wt + R);
    s.tok = s.count + E + 1;

    /* Counting sort of the (token, slot) pairs by expert. */
    memset(s.count, 0, (size_t)(E + 1) * sizeof(int32_t));
    for (int64_t i = 0; i < R; i++)
        if (ids[i] >= 0)
            s.count[ids[i] + 1]++;
    for (int32_t e = 0; e < E; e++)
        s.count[e + 1] += s.count[e];
    /* Place the pairs expert by expert, in token order. */
    for (int32_t e = 0; e < E; e++) {
        int32_t at = s.count[e];
        for (int64_t i = 0; i < R; i++)
            if (ids[i] == e) {
                s.tok[at] = (int32_t)(i / K);
                s.wt[at] = tw[i];
                at++;
            }
    }

    for (int32_t e = 0; e < E && !st; e++) {
        int64_t cnt = s.count[e + 1] - s.count[e];
        const int32_t *tok = s.tok + s.count[e];
        const float *wt = s.wt + s.count[e];
        if (cnt == 0)
            continue;
        const qplug__wmat *w1 = &moe->w1[e], *w3 = &moe->w3[e], *w2 = &moe->w2[e];
        float a1, a3;
        bool requant = false;
        if (moe->gather) {
            st = moe->gather(moe->gather_ctx, tok, cnt, s.v1);
            a1 = a3 = moe->gather_gscale;
        } else {
            for (int64_t r = 0; r < cnt; r++)
                memcpy(s.xg + r * D, x + (int64_t)tok[r] * D, (size_t)D * sizeof(float));
            st = qplug__act_quant(host, moe->mode1, w1->input_scale, s.xg, cnt, D, D, s.v1,
                                  s.sc1);
            a1 = act_alpha(moe->mode1, w1->input_scale);
            a3 = act_alpha(moe->mode1, w3->input_scale);
            /* Gate and up shards may carry their own input scales: each is
             * quantized against its own. */
            requant = moe->mode1 == QPLUG__ACT_NVFP4 && w3->input_scale != w1->input_scale;
        }
        if (st)
            break;
        const float *asc1 = is_fp8(moe->mode1) ? s.sc1 : NULL;
        qplug__gemm_args g1 = {cnt, I, D, s.v1, D, asc1, w1, 0, moe->fp8_split, a1, s.g, I};
        st = qplug__gemm(host, &g1);
        if (!st && requant)
            st = qplug__act_quant(host, moe->mode1, w3->input_scale, s.xg, cnt, D, D, s.v1,
                                  s.sc1);
        if (st)
            break;
        qplug__gemm_args g3 = {cnt, I, D, s.v1, D, asc1, w3, 0, moe->fp8_split, a3, s.u, I};
        st = qplug__gemm(host, &g3);
        if (st)
            break;
        for (int64_t i = 0; i < cnt * I; i++) {
            float gv = s.g[i], uv = s.u[i];
            if (L > 0.0f) {
                gv = fminf(gv, L);
                uv = fminf(fmaxf(uv, -L), L);
            }
            s.g[i] = silu(gv) * uv;
        }
        st = qplug__act_quant(host, moe->mode2, w2->input_scale, s.g, cnt, I, I, s.v2, s.sc2);
        if (st)
            break;
        qplug__gemm_args g2 = {cnt, D, I, s.v2, I, is_fp8(moe->mode2) ? s.sc2 : NULL, w2, 0,
                               moe->fp8_split, act_alpha(moe->mode2, w2->input_scale), s.o, D};
        st = qplug__gemm(host, &g2);
        if (st)
            break;
        for (int64_t r = 0; r < cnt; r++) {
            float *yr = y + (int64_t)tok[r] * D;
            const float *orow = s.o + r * D;
            for (int64_t d = 0; d < D; d++)
                yr[d] += wt[r] * orow[d];
        }
    }
    host->api->free(host->ctx, mem, QPLUG_DEVICE_CPU);
    return st;
}

/* ---- KV cache ---------------------------------------------------------- */

size_t qplug__kv_bytes_f32(int64_t k)
{
    return k > 0 ? (size_t)k * 4u : 0;
}

size_t qplug__kv_bytes_fp8(int64_t k)
{
    return k > 0 ? (size_t)k + 4u * (size_t)ceil_div(k, QPLUG__FP8_BLOCK) : 0;
}

qplug_status qplug__check_kv(const qplug_host *host, const qplug_layer_desc *layer,
                             const qplug_apply_args *args, size_t entry_bytes)
{
    if (!args || (args->op != QPLUG_OP_KV_WRITE && args->op != QPLUG_OP_KV_READ))
        return host->api->error(host->ctx, QPLUG_ERR_ARGUMENT,
                                "apply: attention layer %s takes only KV_WRITE and KV_READ",
                                layer->name ? layer->name : "?");
    bool wr = args->op == QPLUG_OP_KV_WRITE;
    const qplug_tensor *v = wr ? args->x : args->y;
    qplug_status st = check_2d(host, wr ? "x" : "y", v, QPLUG_DT_F32, -1, layer->k);
    if (st)
        return st;
    const qplug_tensor *c = args->cache;
    if (!c || c->device != QPLUG_DEVICE_CPU || c->dtype != QPLUG_DT_U8 || c->ndim != 2 ||
        c->shape[1] != (int64_t)entry_bytes || !c->data)
        return host->api->error(host->ctx, QPLUG_ERR_SHAPE,
                                "apply: cache must be a host U8 [rows, %zu] tensor", entry_bytes);
    int64_t m = v->shape[0];
    if (args->row0 < 0 || args->row0 > c->shape[0] || m > c->shape[0] - args->row0)
        return host->api->error(host->ctx, QPLUG_ERR_SHAPE,
                                "apply: cache rows [%lld, %lld) lie outside its %lld rows",
                                (long long)args->row0, (long long)(args->row0 + m),
                                (long long)c->shape[0]);
    return QPLUG_OK;
}

typedef struct kv_ctx {
    const qplug_apply_args *args;
    int64_t k;
    size_t eb;
    bool fp8;
} kv_ctx;

static void kv_range(void *arg, int64_t begin, int64_t end)
{
    kv_ctx *c = arg;
    const qplug_apply_args *a = c->args;
    int64_t k = c->k, kb = ceil_div(k, QPLUG__FP8_BLOCK);
    bool wr = a->op == QPLUG_OP_KV_WRITE;
    for (int64_t r = begin; r < end; r++) {
        uint8_t *e = (uint8_t *)a->cache->data + (size_t)(a->row0 + r) * c->eb;
        if (!c->fp8) {
            if (wr)
                memcpy(e, (const float *)a->x->data + r * k, (size_t)k * sizeof(float));
            else
                memcpy((float *)a->y->data + r * k, e, (size_t)k * sizeof(float));
            continue;
        }
        for (int64_t b = 0; b < kb; b++) {
            int64_t c0 = b * QPLUG__FP8_BLOCK;
            int64_t c1 = c0 + QPLUG__FP8_BLOCK < k ? c0 + QPLUG__FP8_BLOCK : k;
            uint8_t *sp = e + k + 4 * b;
            if (wr) {
                const float *x = (const float *)a->x->data + r * k;
                float amax = 0.0f;
                for (int64_t i = c0; i < c1; i++)
                    if (fabsf(x[i]) > amax)
                        amax = fabsf(x[i]);
                float s = qplug__fp8_act_scale(amax, false);
                memcpy(sp, &s, sizeof s);
                for (int64_t i = c0; i < c1; i++)
                    e[i] = qplug_f32_to_e4m3(x[i] / s);
            } else {
                float s;
                memcpy(&s, sp, sizeof s);
                float *y = (float *)a->y->data + r * k;
                for (int64_t i = c0; i < c1; i++)
                    y[i] = qplug_e4m3_to_f32(e[i]) * s;
            }
        }
    }
}

qplug_status qplug__kv_apply(const qplug_host *host, const qplug_layer_desc *layer, bool fp8,
                             const qplug_apply_args *args)
{
    size_t eb = fp8 ? qplug__kv_bytes_fp8(layer->k) : qplug__kv_bytes_f32(layer->k);
    qplug_status st = qplug__check_kv(host, layer, args, eb);
    if (st)
        return st;
    const qplug_tensor *v = args->op == QPLUG_OP_KV_WRITE ? args->x : args->y;
    if (fp8 && args->op == QPLUG_OP_KV_WRITE) {
        /* Check first so that a rejected write leaves the cache untouched. */
        const float *x = args->x->data;
        for (int64_t i = 0; i < v->shape[0] * layer->k; i++)
            if (!isfinite(x[i]))
                return host->api->error(host->ctx, QPLUG_ERR_NUMERIC,
                                        "apply: x row %lld holds a NaN or Inf, which the FP8 "
                                        "KV cache cannot store",
                                        (long long)(i / layer->k));
    }
    kv_ctx c = {args, layer->k, eb, fp8};
    host->api->parallel_for(host->ctx, v->shape[0], kv_range, &c);
    return QPLUG_OK;
}
