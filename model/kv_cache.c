/*
 * kv_cache.c - a sequence's state: per block, the sliding-window ring of
 * KV entries and the compressed entries (both stored by the `layers.N.attn`
 * attention plugin through KV_WRITE / KV_READ), the compressors' source rows
 * (a ring by absolute position, which is also what makes rollback cheap:
 * partial blocks and the previous block's rows are recomputed from the
 * position alone), and the indexer's keys.
 */
#include <stdlib.h>
#include <string.h>

#include "forward_internal.h"

qplug_status qplug__kv_rows_reserve(qplug__kv_rows *r, int64_t rows, qplug_err *err)
{
    if (rows <= r->cap)
        return QPLUG_OK;
    int64_t cap = r->cap ? r->cap : 16;
    while (cap < rows)
        cap *= 2;
    uint8_t *p = realloc(r->data, (size_t)cap * r->row_bytes);
    if (!p)
        return qplug_err_set(err, QPLUG_ERR_NOMEM, "kv cache: cannot grow to %lld rows",
                             (long long)cap);
    memset(p + (size_t)r->cap * r->row_bytes, 0, (size_t)(cap - r->cap) * r->row_bytes);
    r->data = p;
    r->cap = cap;
    return QPLUG_OK;
}

qplug_status qplug__kv_block_init(qplug_model *m, const qplug__fw_block *b, qplug__kv_block *kb,
                                  qplug_err *err)
{
    memset(kb, 0, sizeof *kb);
    kb->ring_rows = m->W + QPLUG_SESSION_MAX_ROLLBACK;
    kb->ring = calloc((size_t)kb->ring_rows, b->kv_bytes);
    kb->ent_bytes.row_bytes = b->kv_bytes;
    kb->ent_f32.row_bytes = (size_t)m->hd * sizeof(float);
    kb->i_keys.row_bytes = (size_t)m->ihd * sizeof(float);
    if (!kb->ring)
        goto nomem;
    if (b->ratio > 0) {
        int c = b->ratio == 4 ? 2 : 1;
        /* A multiple of the ratio, so that a block's rows are contiguous. */
        int64_t extra = (QPLUG_SESSION_MAX_ROLLBACK + b->ratio - 1) / b->ratio;
        kb->c_slots = (2 + extra) * b->ratio;
        kb->c_rows = calloc((size_t)kb->c_slots * 2 * c * m->hd, sizeof(float));
        if (!kb->c_rows)
            goto nomem;
        if (b->ratio == 4) {
            kb->i_rows = calloc((size_t)kb->c_slots * 2 * 2 * m->ihd, sizeof(float));
            if (!kb->i_rows)
                goto nomem;
        }
    }
    return QPLUG_OK;
nomem:
    qplug__kv_block_free(kb);
    return qplug_err_set(err, QPLUG_ERR_NOMEM, "%s: cannot allocate the KV cache", b->prefix);
}

void qplug__kv_block_free(qplug__kv_block *kb)
{
    free(kb->ring);
    free(kb->ent_bytes.data);
    free(kb->ent_f32.data);
    free(kb->c_rows);
    free(kb->i_rows);
    free(kb->i_keys.data);
    memset(kb, 0, sizeof *kb);
}

static qplug_status kv_apply(const qplug_model *m, const qplug__fw_block *b, qplug_op op,
                             uint8_t *cache, int64_t rows, int64_t row0, float *rowsf, int64_t n,
                             qplug_err *err)
{
    qplug_tensor c = {.dtype = QPLUG_DT_U8, .ndim = 2, .shape = {rows, (int64_t)b->kv_bytes},
                      .data = cache, .device = QPLUG_DEVICE_CPU};
    qplug_tensor t = {.dtype = QPLUG_DT_F32, .ndim = 2, .shape = {n, m->hd}, .data = rowsf,
                      .device = QPLUG_DEVICE_CPU};
    qplug_apply_args a = {.struct_size = sizeof a, .op = op, .precision = m->precision,
                          .cache = &c, .row0 = row0};
    if (op == QPLUG_OP_KV_WRITE)
        a.x = &t;
    else
        a.y = &t;
    return qplug_layer_apply(b->cache, &a, err);
}

qplug_status qplug__kv_write(const qplug_model *m, const qplug__fw_block *b, uint8_t *cache,
                             int64_t rows, int64_t row0, const float *x, int64_t n,
                             qplug_err *err)
{
    if (n == 0)
        return QPLUG_OK;
    return kv_apply(m, b, QPLUG_OP_KV_WRITE, cache, rows, row0, (float *)x, n, err);
}

qplug_status qplug__kv_read(const qplug_model *m, const qplug__fw_block *b, uint8_t *cache,
                            int64_t rows, int64_t row0, float *y, int64_t n, qplug_err *err)
{
    if (n == 0)
        return QPLUG_OK;
    return kv_apply(m, b, QPLUG_OP_KV_READ, cache, rows, row0, y, n, err);
}

/* Splits positions [pos0, pos0+n) of the ring into at most two contiguous
 * slot ranges and runs write or read on each. */
static qplug_status ring_io(const qplug_model *m, const qplug__fw_block *b, qplug__kv_block *kb,
                            int64_t pos0, float *rowsf, int64_t n, bool write, qplug_err *err)
{
    int64_t done = 0;
    while (done < n) {
        int64_t slot = (pos0 + done) % kb->ring_rows;
        int64_t len = kb->ring_rows - slot;
        if (len > n - done)
            len = n - done;
        qplug_status st =
            write ? qplug__kv_write(m, b, kb->ring, kb->ring_rows, slot, rowsf + done * m->hd,
                                    len, err)
                  : qplug__kv_read(m, b, kb->ring, kb->ring_rows, slot, rowsf + done * m->hd,
                                   len, err);
        if (st)
            return st;
        done += len;
    }
    return QPLUG_OK;
}

qplug_status qplug__kv_ring_write(const qplug_model *m, const qplug__fw_block *b,
                                  qplug__kv_block *kb, int64_t pos0, const float *x, int64_t n,
                                  qplug_err *err)
{
    return ring_io(m, b, kb, pos0, (float *)x, n, true, err);
}

qplug_status qplug__kv_ring_read(const qplug_model *m, const qplug__fw_block *b,
                                 qplug__kv_block *kb, int64_t pos0, float *y, int64_t n,
                                 qplug_err *err)
{
    return ring_io(m, b, kb, pos0, y, n, false, err);
}

qplug_status qplug_session_create(qplug_model *m, qplug_session **out, qplug_err *err)
{
    *out = NULL;
    qplug_session *s = calloc(1, sizeof *s);
    if (!s)
        return qplug_err_set(err, QPLUG_ERR_NOMEM, "session: out of memory");
    s->m = m;
    int nb = m->n_blocks + (m->has_mtp ? 1 : 0);
    s->blocks = calloc((size_t)nb, sizeof *s->blocks);
    if (!s->blocks) {
        free(s);
        return qplug_err_set(err, QPLUG_ERR_NOMEM, "session: out of memory");
    }
    for (int i = 0; i < nb; i++) {
        qplug_status st = qplug__kv_block_init(m, &m->blocks[i], &s->blocks[i], err);
        if (st) {
            for (int j = 0; j < i; j++)
                qplug__kv_block_free(&s->blocks[j]);
            free(s->blocks);
            free(s);
            return st;
        }
    }
    *out = s;
    return QPLUG_OK;
}

void qplug_session_destroy(qplug_session *s)
{
    if (!s)
        return;
    int nb = s->m->n_blocks + (s->m->has_mtp ? 1 : 0);
    for (int i = 0; i < nb; i++)
        qplug__kv_block_free(&s->blocks[i]);
    free(s->blocks);
    free(s);
}

int64_t qplug_session_position(const qplug_session *s)
{
    return s->pos;
}

qplug_status qplug_session_rollback(qplug_session *s, int64_t n, qplug_err *err)
{
    /* Everything a block keeps is indexed by absolute position in rings of
     * (what is needed) + QPLUG_SESSION_MAX_ROLLBACK slots, and entries
     * beyond floor(pos / ratio) are ignored and rewritten, so taking back
     * tokens is only moving the position, as long as no slot that a kept
     * position needs has been reused. */
    if (n < 0 || n > s->pos || s->pos - n < s->hi - QPLUG_SESSION_MAX_ROLLBACK)
        return qplug_err_set(err, QPLUG_ERR_ARGUMENT,
                             "session: cannot roll back %lld tokens from position %lld "
                             "(at most %d behind the furthest position %lld)",
                             (long long)n, (long long)s->pos, QPLUG_SESSION_MAX_ROLLBACK,
                             (long long)s->hi);
    s->pos -= n;
    if (s->mtp_pos > s->pos)
        s->mtp_pos = s->pos;
    return QPLUG_OK;
}
