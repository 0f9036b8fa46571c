/*
 * forward_pass.c - one DeepSeek V4 block on a chunk of tokens, and the main
 * model (embedding, blocks, hyper-connection head, norm, head).
 *
 * A chunk of n tokens runs every projection as one [n, k] plugin call; the
 * per-position parts (compressor blocks, indexer top-k, attention) are done
 * for each position exactly as a single-token decode step would do them,
 * which is why prefill and decode agree.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "forward_internal.h"
#include "qplug/codec.h"

qplug_status qplug__fw_linear(const qplug_model *m, qplug_layer_inst *l, const float *x,
                              int64_t rows, float *y, qplug_err *err)
{
    if (rows == 0)
        return QPLUG_OK;
    const qplug_layer_desc *d = qplug_layer_desc_of(l);
    int64_t g = d->groups > 0 ? d->groups : 1;
    qplug_tensor tx = {.dtype = QPLUG_DT_F32, .ndim = 2, .shape = {rows, d->k * g},
                       .data = (void *)x, .device = QPLUG_DEVICE_CPU};
    qplug_tensor ty = {.dtype = QPLUG_DT_F32, .ndim = 2, .shape = {rows, d->n * g}, .data = y,
                       .device = QPLUG_DEVICE_CPU};
    qplug_apply_args a = {.struct_size = sizeof a, .op = QPLUG_OP_FORWARD,
                          .precision = m->precision, .x = &tx, .y = &ty};
    return qplug_layer_apply(l, &a, err);
}

void qplug__fw_row_f32(const qplug_tensor *t, int64_t row, int64_t cols, float *out)
{
    const uint8_t *base = t->data;
    switch (t->dtype) {
    case QPLUG_DT_F32:
        memcpy(out, base + (size_t)(row * cols) * 4, (size_t)cols * 4);
        break;
    case QPLUG_DT_BF16: {
        const uint16_t *p = (const uint16_t *)(base + (size_t)(row * cols) * 2);
        for (int64_t i = 0; i < cols; i++)
            out[i] = qplug_bf16_to_f32(p[i]);
        break;
    }
    case QPLUG_DT_F16: {
        const uint16_t *p = (const uint16_t *)(base + (size_t)(row * cols) * 2);
        for (int64_t i = 0; i < cols; i++)
            out[i] = qplug_f16_to_f32(p[i]);
        break;
    }
    default:
        /* The model checks dtypes at open; nothing else reaches here. */
        memset(out, 0, (size_t)cols * sizeof(float));
        break;
    }
}

/* ------------------------------------------------------------------------ */
/* Parallel jobs                                                            */
/* ------------------------------------------------------------------------ */

typedef struct hc_job {
    const qplug_model *m;
    const float *fn, *base, *scale;
    float *X;                      /* [n][hc][D] */
    float *post, *comb, *y;        /* [n][hc], [n][hc][hc], [n][D] */
    const float *f;                /* post only: [n][D] */
} hc_job;

static void hc_pre_range(void *arg, int64_t b, int64_t e)
{
    hc_job *j = arg;
    const qplug_model *m = j->m;
    for (int64_t t = b; t < e; t++)
        qplug__fw_hc_pre(j->X + t * m->hc * m->D, m->hc, m->D, j->fn, j->base, j->scale,
                         m->sinkhorn_iters, m->hc_eps, m->rms_eps, j->post + t * m->hc,
                         j->comb + t * m->hc * m->hc, j->y + t * m->D);
}

static void hc_post_range(void *arg, int64_t b, int64_t e)
{
    hc_job *j = arg;
    const qplug_model *m = j->m;
    for (int64_t t = b; t < e; t++)
        qplug__fw_hc_post(j->X + t * m->hc * m->D, m->hc, m->D, j->post + t * m->hc,
                          j->comb + t * m->hc * m->hc, j->f + t * m->D);
}

typedef struct idx_job {
    const qplug_model *m;
    int64_t p0;
    const float *q;                /* [n][nih][ihd], roped */
    const float *w;                /* [n][nih], scaled */
    const float *keys;             /* [entries][ihd] */
    int32_t *sel;                  /* [n][index_topk] */
    int64_t *nsel;                 /* [n] */
    int64_t max_cnt;
    bool nomem;
} idx_job;

static void idx_range(void *arg, int64_t b, int64_t e)
{
    idx_job *j = arg;
    const qplug_model *m = j->m;
    float *scores = malloc((size_t)j->max_cnt * sizeof(float) +
                           qplug__fw_topk_scratch_bytes(j->max_cnt) + 16);
    if (!scores && j->max_cnt > 0) {
        j->nomem = true;
        return;
    }
    void *scratch = scores + j->max_cnt;
    float sm_scale = 1.0f / sqrtf((float)m->ihd);
    for (int64_t t = b; t < e; t++) {
        int64_t cnt = (j->p0 + t + 1) / 4;
        const float *q = j->q + t * m->nih * m->ihd;
        const float *w = j->w + t * m->nih;
        for (int64_t s = 0; s < cnt; s++) {
            const float *k = j->keys + s * m->ihd;
            float acc = 0.0f;
            for (int64_t h = 0; h < m->nih; h++) {
                const float *qh = q + h * m->ihd;
                float dot = 0.0f;
                for (int64_t c = 0; c < m->ihd; c++)
                    dot += qh[c] * k[c];
                acc += (dot > 0.0f ? dot * sm_scale : 0.0f) * w[h];
            }
            scores[s] = acc;
        }
        int64_t k = cnt < m->index_topk ? cnt : m->index_topk;
        if (k > 0)
            qplug__fw_topk(scores, cnt, k, j->sel + t * m->index_topk, scratch);
        j->nsel[t] = k;
    }
    free(scores);
}

typedef struct attn_job {
    const qplug_model *m;
    const qplug__fw_block *b;
    int64_t p0;
    const float *q;                /* [n][H][hd] */
    const float *win;              /* window keys from position win_base */
    int64_t win_base;
    const float *ent;              /* compressed entries [count][hd] */
    const int32_t *sel;            /* CSA: [n][index_topk] */
    const int64_t *nsel;
    float *o;                      /* [n][H][hd] */
    int64_t max_keys;
    bool nomem;
} attn_job;

static void attn_range(void *arg, int64_t b, int64_t e)
{
    attn_job *j = arg;
    const qplug_model *m = j->m;
    float *scores = malloc((size_t)j->max_keys * sizeof(float));
    if (!scores) {
        j->nomem = true;
        return;
    }
    float scale = 1.0f / sqrtf((float)m->hd);
    for (int64_t it = b; it < e; it++) {
        int64_t t = it / m->H, h = it % m->H;
        int64_t p = j->p0 + t;
        int64_t first = p - m->W + 1 > 0 ? p - m->W + 1 : 0;
        const float *win = j->win + (first - j->win_base) * m->hd;
        int64_t nwin = p - first + 1;
        int64_t nent = 0;
        const int32_t *sel = NULL;
        if (j->b->ratio == 128) {
            nent = (p + 1) / 128;
        } else if (j->b->ratio == 4) {
            nent = j->nsel[t];
            sel = j->sel + t * m->index_topk;
        }
        qplug__fw_attend(j->q + (t * m->H + h) * m->hd, m->hd, win, nwin, j->ent, sel, nent,
                         j->b->attn_sink[h], scale, scores, j->o + (t * m->H + h) * m->hd);
    }
    free(scores);
}

/* ------------------------------------------------------------------------ */
/* Compressors                                                              */
/* ------------------------------------------------------------------------ */

/*
 * Feeds positions p0 .. p0+n-1 into a compressor whose source rows live in
 * `rows` (slots of [kv c*d | gate c*d], `slots` a multiple of ratio), and
 * writes every entry completed on the way (norm, rope at the block's first
 * position) to out [.][d]; returns how many. `kvg` is the fused
 * projection's output [n][2*c*d]: each row holds the kv part (first c*d)
 * and then the gate part (next c*d).
 */
static int64_t compress(const qplug_model *m, int ratio, int64_t d, const float *ape,
                        const float *norm, float *rows, int64_t slots, int64_t p0, int64_t n,
                        const float *kvg, float *out)
{
    int c = ratio == 4 ? 2 : 1;
    int64_t cd = c * d, stride = 2 * cd;
    int64_t made = 0;
    for (int64_t t = 0; t < n; t++) {
        int64_t p = p0 + t;
        float *row = rows + (p % slots) * stride;
        const float *kv = kvg + t * stride, *g = kv + cd;
        memcpy(row, kv, (size_t)cd * sizeof(float));
        for (int64_t i = 0; i < cd; i++)
            row[cd + i] = g[i] + ape[(p % ratio) * cd + i];
        if ((p + 1) % ratio)
            continue;
        int64_t blk = p / ratio;
        const float *cur = rows + ((blk * ratio) % slots) * stride;
        const float *prev = NULL;
        if (c == 2 && blk > 0)
            prev = rows + (((blk - 1) * ratio) % slots) * stride;
        float *e = out + made * d;
        qplug__fw_pool(d, ratio, prev, prev ? prev + cd : NULL, cur, cur + cd, stride,
                       c == 2 ? d : 0, e);
        qplug__fw_rmsnorm(e, norm, d, m->rms_eps, e);
        qplug__fw_rope(e + d - m->rd, (int)m->rd, m->comp_freqs, blk * ratio, false);
        made++;
    }
    return made;
}

/* ------------------------------------------------------------------------ */
/* Attention                                                                */
/* ------------------------------------------------------------------------ */

typedef struct attn_bufs {
    float *qa, *q, *kv, *ckvg, *ikvg, *iq, *iw, *newent, *newkeys, *win, *o, *z;
    uint8_t *tmp;
    int32_t *sel;
    int64_t *nsel;
} attn_bufs;

static void attn_bufs_free(attn_bufs *a)
{
    free(a->qa);
    free(a->q);
    free(a->kv);
    free(a->ckvg);
    free(a->ikvg);
    free(a->iq);
    free(a->iw);
    free(a->newent);
    free(a->newkeys);
    free(a->win);
    free(a->o);
    free(a->z);
    free(a->tmp);
    free(a->sel);
    free(a->nsel);
}

#define FW_TRY(expr)                                                                      \
    do {                                                                                   \
        st = (expr);                                                                       \
        if (st)                                                                            \
            goto done;                                                                     \
    } while (0)

#define FW_ALLOC(ptr, count)                                                              \
    do {                                                                                   \
        (ptr) = calloc((size_t)(count) > 0 ? (size_t)(count) : 1, sizeof *(ptr));          \
        if (!(ptr)) {                                                                      \
            st = qplug_err_set(err, QPLUG_ERR_NOMEM, "%s: out of memory", b->prefix);      \
            goto done;                                                                     \
        }                                                                                  \
    } while (0)

/* x [n][D] -> out [n][D]: the attention sublayer. */
static qplug_status attention(qplug_model *m, const qplug__fw_block *b, qplug__kv_block *kb,
                              int64_t p0, int64_t n, const float *x, float *out, qplug_err *err)
{
    qplug_status st = QPLUG_OK;
    attn_bufs a;
    memset(&a, 0, sizeof a);
    const float *freqs = b->ratio ? m->comp_freqs : m->main_freqs;
    int64_t H = m->H, hd = m->hd, rd = m->rd;

    /* Queries: q = wq_b(q_norm(wq_a x)), per-head weightless norm, rope. */
    FW_ALLOC(a.qa, n * m->ql);
    FW_ALLOC(a.q, n * H * hd);
    FW_TRY(qplug__fw_linear(m, b->wq_a, x, n, a.qa, err));
    for (int64_t t = 0; t < n; t++)
        qplug__fw_rmsnorm(a.qa + t * m->ql, b->q_norm, m->ql, m->rms_eps, a.qa + t * m->ql);
    FW_TRY(qplug__fw_linear(m, b->wq_b, a.qa, n, a.q, err));
    for (int64_t t = 0; t < n; t++)
        for (int64_t h = 0; h < H; h++) {
            float *qh = a.q + (t * H + h) * hd;
            qplug__fw_rmsnorm(qh, NULL, hd, m->rms_eps, qh);
            qplug__fw_rope(qh + hd - rd, (int)rd, freqs, p0 + t, false);
        }

    /* The one shared K=V head. */
    FW_ALLOC(a.kv, n * hd);
    FW_TRY(qplug__fw_linear(m, b->wkv, x, n, a.kv, err));
    for (int64_t t = 0; t < n; t++) {
        float *k = a.kv + t * hd;
        qplug__fw_rmsnorm(k, b->kv_norm, hd, m->rms_eps, k);
        qplug__fw_rope(k + hd - rd, (int)rd, freqs, p0 + t, false);
    }

    /* Compressed entries completed by this chunk. */
    int64_t ent_total = 0;
    if (b->ratio > 0) {
        int c = b->ratio == 4 ? 2 : 1;
        int64_t j0 = p0 / b->ratio;
        ent_total = (p0 + n) / b->ratio;
        FW_ALLOC(a.ckvg, n * 2 * c * hd);
        FW_ALLOC(a.newent, (ent_total - j0) * hd);
        FW_TRY(qplug__fw_linear(m, b->c_kvgate, x, n, a.ckvg, err));
        int64_t made = compress(m, b->ratio, hd, b->c_ape, b->c_norm, kb->c_rows, kb->c_slots,
                                p0, n, a.ckvg, a.newent);
        FW_TRY(qplug__kv_rows_reserve(&kb->ent_bytes, ent_total, err));
        FW_TRY(qplug__kv_rows_reserve(&kb->ent_f32, ent_total, err));
        FW_TRY(qplug__kv_write(m, b, kb->ent_bytes.data, kb->ent_bytes.cap, j0, a.newent, made,
                               err));
        FW_TRY(qplug__kv_read(m, b, kb->ent_bytes.data, kb->ent_bytes.cap, j0,
                              (float *)kb->ent_f32.data + j0 * hd, made, err));
    }

    /* The indexer: its own compressor at width ihd, queries from qr, head
     * weights from x, then a causal top-k per position. */
    if (b->ratio == 4) {
        int64_t nih = m->nih, ihd = m->ihd;
        int64_t j0 = p0 / 4;
        FW_ALLOC(a.ikvg, n * 4 * ihd);
        FW_ALLOC(a.iq, n * nih * ihd);
        FW_ALLOC(a.iw, n * nih);
        FW_TRY(qplug__fw_linear(m, b->i_kvgate, x, n, a.ikvg, err));
        FW_TRY(qplug__kv_rows_reserve(&kb->i_keys, ent_total, err));
        compress(m, 4, ihd, b->i_ape, b->i_norm, kb->i_rows, kb->c_slots, p0, n, a.ikvg,
                 (float *)kb->i_keys.data + j0 * ihd);
        FW_TRY(qplug__fw_linear(m, b->i_wq_b, a.qa, n, a.iq, err));
        for (int64_t t = 0; t < n; t++)
            for (int64_t h = 0; h < nih; h++)
                qplug__fw_rope(a.iq + (t * nih + h) * ihd + ihd - rd, (int)rd, m->comp_freqs,
                               p0 + t, false);
        FW_TRY(qplug__fw_linear(m, b->i_wproj, x, n, a.iw, err));
        float wscale = 1.0f / sqrtf((float)nih);
        for (int64_t i = 0; i < n * nih; i++)
            a.iw[i] *= wscale;
        FW_ALLOC(a.sel, n * m->index_topk);
        FW_ALLOC(a.nsel, n);
        idx_job ij = {.m = m, .p0 = p0, .q = a.iq, .w = a.iw,
                      .keys = (const float *)kb->i_keys.data, .sel = a.sel, .nsel = a.nsel,
                      .max_cnt = ent_total};
        qplug_runtime_parallel_for(m->rt, n, idx_range, &ij);
        if (ij.nomem) {
            st = qplug_err_set(err, QPLUG_ERR_NOMEM, "%s.attn.indexer: out of memory",
                               b->prefix);
            goto done;
        }
    }

    /* Window keys: the W - 1 positions before the chunk from the ring, then
     * the chunk's own rows after a round trip through the plugin's cache
     * format, so a position sees the same values in prefill and decode. */
    int64_t nold = p0 < m->W - 1 ? p0 : m->W - 1;
    FW_ALLOC(a.win, (nold + n) * hd);
    FW_ALLOC(a.tmp, (size_t)n * b->kv_bytes);
    FW_TRY(qplug__kv_ring_read(m, b, kb, p0 - nold, a.win, nold, err));
    FW_TRY(qplug__kv_write(m, b, a.tmp, n, 0, a.kv, n, err));
    FW_TRY(qplug__kv_read(m, b, a.tmp, n, 0, a.win + nold * hd, n, err));
    {
        int64_t keep = n < kb->ring_rows ? n : kb->ring_rows;
        FW_TRY(qplug__kv_ring_write(m, b, kb, p0 + n - keep, a.kv + (n - keep) * hd, keep,
                                    err));
    }

    FW_ALLOC(a.o, n * H * hd);
    {
        int64_t max_keys = m->W + (b->ratio == 4 ? m->index_topk : ent_total) + 1;
        attn_job aj = {.m = m, .b = b, .p0 = p0, .q = a.q, .win = a.win,
                       .win_base = p0 - nold, .ent = (const float *)kb->ent_f32.data,
                       .sel = a.sel, .nsel = a.nsel, .o = a.o, .max_keys = max_keys};
        qplug_runtime_parallel_for(m->rt, n * H, attn_range, &aj);
        if (aj.nomem) {
            st = qplug_err_set(err, QPLUG_ERR_NOMEM, "%s.attn: out of memory", b->prefix);
            goto done;
        }
    }
    /* K = V carried rope into the output: rotate back at the query position. */
    for (int64_t t = 0; t < n; t++)
        for (int64_t h = 0; h < H; h++)
            qplug__fw_rope(a.o + (t * H + h) * hd + hd - rd, (int)rd, freqs, p0 + t, true);
    FW_ALLOC(a.z, n * m->G * m->R);
    FW_TRY(qplug__fw_linear(m, b->wo_a, a.o, n, a.z, err));
    FW_TRY(qplug__fw_linear(m, b->wo_b, a.z, n, out, err));
done:
    attn_bufs_free(&a);
    return st;
}

/* ------------------------------------------------------------------------ */
/* MoE                                                                      */
/* ------------------------------------------------------------------------ */

static qplug_status moe(qplug_model *m, const qplug__fw_block *b, int64_t n,
                        const int32_t *tokens, const float *x, float *out, qplug_err *err)
{
    qplug_status st = QPLUG_OK;
    int64_t E = m->E, K = m->topk, D = m->D, I = b->shared_inter;
    float *logits = NULL, *w = NULL, *g = NULL, *u = NULL, *sh = NULL;
    int32_t *ids = NULL;
    FW_ALLOC(logits, E);
    FW_ALLOC(w, n * K);
    FW_ALLOC(ids, n * K);
    for (int64_t t = 0; t < n; t++) {
        const float *xt = x + t * D;
        for (int64_t e = 0; e < E; e++) {
            const float *ge = b->gate_w + e * D;
            float acc = 0.0f;
            for (int64_t d = 0; d < D; d++)
                acc += xt[d] * ge[d];
            logits[e] = acc;
        }
        const int32_t *hash = b->hash ? b->tid2eid + (int64_t)tokens[t] * K : NULL;
        if (!qplug__fw_route(logits, (int)E, (int)K, b->hash ? NULL : b->gate_bias, hash, m->rsf,
                             ids + t * K, w + t * K)) {
            st = qplug_err_set(err, QPLUG_ERR_FORMAT,
                               "%s.ffn.gate.tid2eid: expert id out of range for token %d",
                               b->prefix, tokens[t]);
            goto done;
        }
    }
    {
        qplug_tensor tx = {.dtype = QPLUG_DT_F32, .ndim = 2, .shape = {n, D}, .data = (void *)x};
        qplug_tensor ty = {.dtype = QPLUG_DT_F32, .ndim = 2, .shape = {n, D}, .data = out};
        qplug_tensor ti = {.dtype = QPLUG_DT_I32, .ndim = 2, .shape = {n, K}, .data = ids};
        qplug_tensor tw = {.dtype = QPLUG_DT_F32, .ndim = 2, .shape = {n, K}, .data = w};
        qplug_apply_args a = {.struct_size = sizeof a, .op = QPLUG_OP_FORWARD,
                              .precision = m->precision, .x = &tx, .y = &ty, .topk_ids = &ti,
                              .topk_weights = &tw};
        FW_TRY(qplug_layer_apply(b->experts, &a, err));
    }
    /* The shared expert, same clamped SwiGLU, added unweighted. */
    if (!b->sh_w1)
        goto done;
    FW_ALLOC(g, n * I);
    FW_ALLOC(u, n * I);
    FW_ALLOC(sh, n * D);
    FW_TRY(qplug__fw_linear(m, b->sh_w1, x, n, g, err));
    FW_TRY(qplug__fw_linear(m, b->sh_w3, x, n, u, err));
    {
        float L = m->swiglu_limit;
        for (int64_t i = 0; i < n * I; i++) {
            float gv = g[i], uv = u[i];
            if (L > 0.0f) {
                gv = gv < L ? gv : L;
                uv = uv < -L ? -L : uv > L ? L : uv;
            }
            g[i] = gv / (1.0f + expf(-gv)) * uv;
        }
    }
    FW_TRY(qplug__fw_linear(m, b->sh_w2, g, n, sh, err));
    for (int64_t i = 0; i < n * D; i++)
        out[i] += sh[i];
done:
    free(logits);
    free(w);
    free(ids);
    free(g);
    free(u);
    free(sh);
    return st;
}

/* ------------------------------------------------------------------------ */
/* Block                                                                    */
/* ------------------------------------------------------------------------ */

qplug_status qplug__fw_block_forward(qplug_model *m, const qplug__fw_block *b,
                                     qplug__kv_block *kb, int64_t p0, int64_t n,
                                     const int32_t *tokens, float *X, qplug_err *err)
{
    qplug_status st = QPLUG_OK;
    int64_t D = m->D;
    int hc = m->hc;
    float *post = NULL, *comb = NULL, *y = NULL, *f = NULL;
    FW_ALLOC(post, n * hc);
    FW_ALLOC(comb, n * hc * hc);
    FW_ALLOC(y, n * D);
    FW_ALLOC(f, n * D);

    hc_job j = {.m = m, .fn = b->hc_attn_fn, .base = b->hc_attn_base, .scale = b->hc_attn_scale,
                .X = X, .post = post, .comb = comb, .y = y, .f = f};
    qplug_runtime_parallel_for(m->rt, n, hc_pre_range, &j);
    for (int64_t t = 0; t < n; t++)
        qplug__fw_rmsnorm(y + t * D, b->attn_norm, D, m->rms_eps, y + t * D);
    FW_TRY(attention(m, b, kb, p0, n, y, f, err));
    qplug_runtime_parallel_for(m->rt, n, hc_post_range, &j);

    j.fn = b->hc_ffn_fn;
    j.base = b->hc_ffn_base;
    j.scale = b->hc_ffn_scale;
    qplug_runtime_parallel_for(m->rt, n, hc_pre_range, &j);
    for (int64_t t = 0; t < n; t++)
        qplug__fw_rmsnorm(y + t * D, b->ffn_norm, D, m->rms_eps, y + t * D);
    FW_TRY(moe(m, b, n, tokens, y, f, err));
    qplug_runtime_parallel_for(m->rt, n, hc_post_range, &j);
done:
    free(post);
    free(comb);
    free(y);
    free(f);
    return st;
}

/* ------------------------------------------------------------------------ */
/* Head and the main model                                                  */
/* ------------------------------------------------------------------------ */

typedef struct head_job {
    const qplug_tensor *head;
    int64_t D;
    const float *y;
    float *logits;
} head_job;

static void head_range(void *arg, int64_t b, int64_t e)
{
    head_job *j = arg;
    float row[16384];
    float *w = j->D <= 16384 ? row : malloc((size_t)j->D * sizeof(float));
    if (!w) {
        for (int64_t v = b; v < e; v++)
            j->logits[v] = NAN;
        return;
    }
    for (int64_t v = b; v < e; v++) {
        qplug__fw_row_f32(j->head, v, j->D, w);
        float acc = 0.0f;
        for (int64_t d = 0; d < j->D; d++)
            acc += w[d] * j->y[d];
        j->logits[v] = acc;
    }
    if (w != row)
        free(w);
}

void qplug__fw_logits(qplug_model *m, const float *X, const float *fn, const float *base,
                      const float *scale, const float *norm, float *logits)
{
    float *y = malloc((size_t)m->D * sizeof(float));
    if (!y) {
        for (int64_t v = 0; v < m->V; v++)
            logits[v] = NAN;
        return;
    }
    qplug__fw_hc_head(X, m->hc, m->D, fn, base, scale, m->hc_eps, m->rms_eps, y);
    qplug__fw_rmsnorm(y, norm, m->D, m->rms_eps, y);
    head_job j = {.head = m->head, .D = m->D, .y = y, .logits = logits};
    qplug_runtime_parallel_for(m->rt, m->V, head_range, &j);
    free(y);
}

qplug_status qplug__fw_main(qplug_model *m, qplug_session *s, const int32_t *tokens, int64_t n,
                            float *logits, qplug_logits_mode mode, float *hidden_out,
                            qplug_err *err)
{
    if (n <= 0)
        return qplug_err_set(err, QPLUG_ERR_ARGUMENT, "forward: no tokens given");
    for (int64_t t = 0; t < n; t++)
        if (tokens[t] < 0 || tokens[t] >= m->V)
            return qplug_err_set(err, QPLUG_ERR_ARGUMENT,
                                 "forward: token %lld is %d, outside the vocabulary [0, %lld)",
                                 (long long)t, tokens[t], (long long)m->V);
    if (mode != QPLUG_LOGITS_NONE && !logits)
        return qplug_err_set(err, QPLUG_ERR_ARGUMENT, "forward: logits buffer is NULL");
    int64_t HD = m->hc * m->D;
    float *X = malloc((size_t)(n * HD) * sizeof(float));
    if (!X)
        return qplug_err_set(err, QPLUG_ERR_NOMEM, "forward: out of memory for %lld tokens",
                             (long long)n);
    for (int64_t t = 0; t < n; t++) {
        float *xt = X + t * HD;
        qplug__fw_row_f32(m->embed, tokens[t], m->D, xt);
        for (int j = 1; j < m->hc; j++)
            memcpy(xt + j * m->D, xt, (size_t)m->D * sizeof(float));
    }
    qplug_status st = QPLUG_OK;
    for (int l = 0; l < m->n_blocks; l++) {
        st = qplug__fw_block_forward(m, &m->blocks[l], &s->blocks[l], s->pos, n, tokens, X, err);
        if (st)
            break;
    }
    if (!st) {
        if (hidden_out)
            memcpy(hidden_out, X, (size_t)(n * HD) * sizeof(float));
        if (mode == QPLUG_LOGITS_ALL)
            for (int64_t t = 0; t < n; t++)
                qplug__fw_logits(m, X + t * HD, m->hc_head_fn, m->hc_head_base,
                                 m->hc_head_scale, m->norm, logits + t * m->V);
        else if (mode == QPLUG_LOGITS_LAST)
            qplug__fw_logits(m, X + (n - 1) * HD, m->hc_head_fn, m->hc_head_base,
                             m->hc_head_scale, m->norm, logits);
        s->pos += n;
        if (s->pos > s->hi)
            s->hi = s->pos;
    }
    free(X);
    return st;
}

qplug_status qplug_model_forward(qplug_model *m, qplug_session *s, const int32_t *tokens,
                                 int64_t n, float *logits, qplug_logits_mode mode,
                                 qplug_err *err)
{
    return qplug__fw_main(m, s, tokens, n, logits, mode, NULL, err);
}
