/*
 * mtp_block.c - the multi-token-prediction block (mtp.0) and greedy
 * generation, plain or speculative with MTP as a one-token draft.
 *
 * MTP at position t reads the main model's last streams at t and the token
 * at t + 1, and predicts the token at t + 2:
 *   X0_j = h_proj(hnorm(H_j)) + e_proj(enorm(embed(token))), j over the
 *   hc streams (h_proj per stream, e_proj broadcast), then one block with
 *   its own cache, its own hc head and norm, and the shared head.
 * The MTP block only ever sees confirmed positions, so it never rolls back;
 * the main model rolls back a rejected draft (qplug_session_rollback).
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "forward_internal.h"

qplug_status qplug__mtp_forward(qplug_model *m, qplug_session *s, const float *hidden,
                                const int32_t *next, int64_t n, float *logits, qplug_err *err)
{
    if (!m->has_mtp)
        return qplug_err_set(err, QPLUG_ERR_NOT_FOUND, "the checkpoint has no MTP block");
    const qplug__fw_block *b = &m->blocks[m->n_blocks];
    qplug__kv_block *kb = &s->blocks[m->n_blocks];
    int64_t D = m->D, hc = m->hc;
    qplug_status st = QPLUG_OK;
    float *e = malloc((size_t)(n * D) * sizeof(float));
    float *pe = malloc((size_t)(n * D) * sizeof(float));
    float *h = malloc((size_t)(n * hc * D) * sizeof(float));
    float *X = malloc((size_t)(n * hc * D) * sizeof(float));
    if (!e || !pe || !h || !X) {
        st = qplug_err_set(err, QPLUG_ERR_NOMEM, "mtp.0: out of memory");
        goto done;
    }
    for (int64_t t = 0; t < n; t++) {
        if (next[t] < 0 || next[t] >= m->V) {
            st = qplug_err_set(err, QPLUG_ERR_ARGUMENT, "mtp.0: token %d outside the vocabulary",
                               next[t]);
            goto done;
        }
        qplug__fw_row_f32(m->embed, next[t], D, e + t * D);
        qplug__fw_rmsnorm(e + t * D, b->enorm, D, m->rms_eps, e + t * D);
    }
    for (int64_t r = 0; r < n * hc; r++)
        qplug__fw_rmsnorm(hidden + r * D, b->hnorm, D, m->rms_eps, h + r * D);
    st = qplug__fw_linear(m, b->e_proj, e, n, pe, err);
    if (st)
        goto done;
    st = qplug__fw_linear(m, b->h_proj, h, n * hc, X, err);
    if (st)
        goto done;
    for (int64_t t = 0; t < n; t++)
        for (int64_t j = 0; j < hc; j++)
            for (int64_t d = 0; d < D; d++)
                X[(t * hc + j) * D + d] += pe[t * D + d];
    st = qplug__fw_block_forward(m, b, kb, s->mtp_pos, n, next, X, err);
    if (st)
        goto done;
    if (logits)
        qplug__fw_logits(m, X + (n - 1) * hc * D, b->hc_head_fn, b->hc_head_base,
                         b->hc_head_scale, b->norm, logits);
    s->mtp_pos += n;
done:
    free(e);
    free(pe);
    free(h);
    free(X);
    return st;
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Speculative greedy decoding after the prefill: out[0] is already known
 * and `hid` holds the main model's streams of the prompt positions. */
static qplug_status speculate(qplug_model *m, qplug_session *s, const int32_t *prompt,
                              int64_t n_prompt, float *hid, int64_t n_gen, int32_t *out,
                              qplug_generate_stats *stats, qplug__fw_draft_fn draft_fn,
                              void *draft_user, qplug_err *err)
{
    int64_t V = m->V, HD = m->hc * m->D;
    qplug_status st = QPLUG_OK;
    float *logits = malloc((size_t)(2 * V) * sizeof(float));
    float *dl = malloc((size_t)V * sizeof(float));
    float *h2 = malloc((size_t)(2 * HD) * sizeof(float));
    int32_t *next = malloc((size_t)n_prompt * sizeof(int32_t));
    if (!logits || !dl || !h2 || !next) {
        st = qplug_err_set(err, QPLUG_ERR_NOMEM, "speculative decoding: out of memory");
        goto done;
    }
    /* Catch the MTP block up on the prompt: position t pairs with token t+1
     * (the last one with the first generated token). */
    for (int64_t t = 0; t + 1 < n_prompt; t++)
        next[t] = prompt[t + 1];
    next[n_prompt - 1] = out[0];
    st = qplug__mtp_forward(m, s, hid, next, n_prompt, dl, err);
    if (st)
        goto done;
    int64_t count = 1;
    while (count < n_gen) {
        int32_t draft = qplug__fw_argmax(dl, V);
        if (draft_fn)
            draft = draft_fn(draft_user, count, draft);
        int32_t pair[2] = {out[count - 1], draft};
        st = qplug__fw_main(m, s, pair, 2, logits, QPLUG_LOGITS_ALL, h2, err);
        if (st)
            goto done;
        stats->drafted++;
        int32_t real = qplug__fw_argmax(logits, V);
        out[count++] = real;
        int32_t mnext[2] = {real, 0};
        int64_t mn = 1;
        if (real == pair[1]) {
            stats->accepted++;
            if (count < n_gen) {
                mnext[1] = qplug__fw_argmax(logits + V, V);
                out[count++] = mnext[1];
                mn = 2;
            } else {
                break;
            }
        } else {
            st = qplug_session_rollback(s, 1, err);
            if (st)
                goto done;
        }
        if (count >= n_gen)
            break;
        st = qplug__mtp_forward(m, s, h2, mnext, mn, dl, err);
        if (st)
            goto done;
    }
done:
    free(logits);
    free(dl);
    free(h2);
    free(next);
    return st;
}

qplug_status qplug_model_generate(qplug_model *m, const int32_t *prompt, int64_t n_prompt,
                                  int64_t n_gen, bool speculative, int32_t *out,
                                  float *prompt_logits, qplug_generate_stats *stats,
                                  qplug_err *err)
{
    return qplug__fw_generate(m, prompt, n_prompt, n_gen, speculative, out, prompt_logits, stats,
                              NULL, NULL, err);
}

qplug_status qplug__fw_generate(qplug_model *m, const int32_t *prompt, int64_t n_prompt,
                                int64_t n_gen, bool speculative, int32_t *out,
                                float *prompt_logits, qplug_generate_stats *stats,
                                qplug__fw_draft_fn draft_fn, void *draft_user, qplug_err *err)
{
    qplug_generate_stats local;
    if (!stats)
        stats = &local;
    memset(stats, 0, sizeof *stats);
    stats->prompt_tokens = n_prompt;
    if (n_prompt <= 0)
        return qplug_err_set(err, QPLUG_ERR_ARGUMENT, "generate: the prompt is empty");
    if (speculative && !m->has_mtp)
        return qplug_err_set(err, QPLUG_ERR_NOT_FOUND,
                             "generate: speculative decoding needs the MTP block (mtp.0), which "
                             "this checkpoint does not have");
    qplug_session *s = NULL;
    qplug_status st = qplug_session_create(m, &s, err);
    if (st)
        return st;
    int64_t V = m->V, HD = m->hc * m->D;
    float *last = malloc((size_t)V * sizeof(float));
    float *hid = speculative ? malloc((size_t)(n_prompt * HD) * sizeof(float)) : NULL;
    if (!last || (speculative && !hid)) {
        st = qplug_err_set(err, QPLUG_ERR_NOMEM, "generate: out of memory");
        goto done;
    }
    double t0 = now_seconds();
    if (prompt_logits) {
        st = qplug__fw_main(m, s, prompt, n_prompt, prompt_logits, QPLUG_LOGITS_ALL, hid, err);
        if (!st)
            memcpy(last, prompt_logits + (n_prompt - 1) * V, (size_t)V * sizeof(float));
    } else {
        st = qplug__fw_main(m, s, prompt, n_prompt, last, QPLUG_LOGITS_LAST, hid, err);
    }
    if (st)
        goto done;
    double t1 = now_seconds();
    stats->prefill_seconds = t1 - t0;
    if (n_gen > 0) {
        out[0] = qplug__fw_argmax(last, V);
        if (speculative) {
            st = speculate(m, s, prompt, n_prompt, hid, n_gen, out, stats, draft_fn, draft_user,
                           err);
        } else {
            for (int64_t i = 1; i < n_gen && !st; i++) {
                st = qplug__fw_main(m, s, &out[i - 1], 1, last, QPLUG_LOGITS_LAST, NULL, err);
                if (!st)
                    out[i] = qplug__fw_argmax(last, V);
            }
        }
        stats->generated = st ? 0 : n_gen;
    }
    stats->decode_seconds = now_seconds() - t1;
done:
    free(last);
    free(hid);
    qplug_session_destroy(s);
    return st;
}
