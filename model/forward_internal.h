/*
 * forward_internal.h - what the forward pass, the KV cache and the MTP block
 * share inside libqplug_model: the model and session structs and the fp32
 * building blocks (pure functions, unit-tested in tests/unit/test_forward*.c).
 */
#ifndef QPLUG_FORWARD_INTERNAL_H
#define QPLUG_FORWARD_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qplug/host.h"
#include "qplug/inventory.h"
#include "qplug/model.h"

/* ------------------------------------------------------------------------ */
/* fp32 building blocks (forward_ops.c)                                     */
/* ------------------------------------------------------------------------ */

/* y = w * x / sqrt(mean(x^2) + eps); w NULL means weightless. y may be x. */
void qplug__fw_rmsnorm(const float *x, const float *w, int64_t d, float eps, float *y);

/* Sinkhorn projection of the hc x hc matrix `comb` (already softmax + eps
 * per row): first a column normalisation, then iters - 1 rounds of row and
 * column normalisation, each divisor + eps. */
void qplug__fw_sinkhorn(float *comb, int hc, int iters, float eps);

/*
 * Hyper-connection pre of one token. X is [hc][D]; fn is [(2+hc)*hc][hc*D],
 * base [(2+hc)*hc], scale [3]. Writes post [hc], comb [hc][hc] (comb[j][k]
 * weighs input stream j into output stream k) and y [D] = sum_j pre_j X_j.
 */
void qplug__fw_hc_pre(const float *X, int hc, int64_t D, const float *fn, const float *base,
                      const float *scale, int iters, float hc_eps, float norm_eps, float *post,
                      float *comb, float *y);

/* X'_k = post_k * f + sum_j comb[j][k] X_j, in place on X [hc][D]. */
void qplug__fw_hc_post(float *X, int hc, int64_t D, const float *post, const float *comb,
                       const float *f);

/* The final collapse: pre_j = sigmoid(m_j * scale + base_j) + hc_eps (no
 * Sinkhorn), y = sum_j pre_j X_j. fn is [hc][hc*D]. */
void qplug__fw_hc_head(const float *X, int hc, int64_t D, const float *fn, const float *base,
                       const float *scale, float hc_eps, float norm_eps, float *y);

typedef struct qplug__fw_yarn {
    double factor;                 /* > 1 enables yarn */
    double original_max_pos;
    double beta_fast, beta_slow;
} qplug__fw_yarn;

/* The rd/2 inverse frequencies of a rope over `rd` dims with base theta, with
 * transformers' yarn correction when yarn != NULL and yarn->factor > 1. */
void qplug__fw_rope_freqs(double theta, int rd, const qplug__fw_yarn *yarn, float *inv_freq);

/* Interleaved rope on v[0..rd): pairs (2i, 2i+1) rotate by pos * inv_freq[i];
 * `inverse` rotates by the conjugate (the output un-rotation). */
void qplug__fw_rope(float *v, int rd, const float *inv_freq, int64_t pos, bool inverse);

/* sqrt(softplus(x)) with torch's softplus (x for x > 20). */
float qplug__fw_sqrt_softplus(float x);

/*
 * Router of one token: scores s = sqrt(softplus(logits)); experts are
 * hash_ids (hash layers) or the top_k of s + bias (bias may be NULL);
 * weights = s[e] / (sum + 1e-20) * scaling. Writes ids [top_k], w [top_k].
 * Returns false when a hash id is outside [0, E).
 */
bool qplug__fw_route(const float *logits, int E, int top_k, const float *bias,
                     const int32_t *hash_ids, float scaling, int32_t *ids, float *w);

/* Indices of the k largest of v[0..n) (k <= n), largest first, the lower
 * index first on ties. scratch holds n floats + n int32 (see
 * qplug__fw_topk_scratch_bytes). */
size_t qplug__fw_topk_scratch_bytes(int64_t n);
void qplug__fw_topk(const float *v, int64_t n, int64_t k, int32_t *idx, void *scratch);

/*
 * Softmax-gated pooling of one compressor block, per channel over the rows:
 * out[ch] = sum_r softmax_r(g_r[ch]) * a_r[ch]. Ratio-128 style (c = 1):
 * the `cur` rows at offset 0. Overlapping (c = 2): the `prev` rows (may be
 * NULL for block 0) at channel offset 0 and the `cur` rows at offset d.
 * Row r of kv/gate is at ptr + r * stride. Gates already hold the position
 * bias.
 */
void qplug__fw_pool(int64_t d, int rows, const float *prev_kv, const float *prev_g,
                    const float *cur_kv, const float *cur_g, int64_t stride, int64_t cur_off,
                    float *out);

/*
 * One attention head at one query: softmax over scale * q.k for the keys
 * in `win` (nwin rows of width hd) and the entries `ent` (nent rows, picked
 * by sel when sel != NULL), plus exp(sink) in the denominator; out = sum p k.
 * scores holds nwin + nent floats.
 */
void qplug__fw_attend(const float *q, int64_t hd, const float *win, int64_t nwin,
                      const float *ent, const int32_t *sel, int64_t nent, float sink, float scale,
                      float *scores, float *out);

/* ------------------------------------------------------------------------ */
/* The model (forward_model.c)                                              */
/* ------------------------------------------------------------------------ */

/* One transformer block: a main layer or mtp.i. */
typedef struct qplug__fw_block {
    char prefix[24];               /* "layers.3" or "mtp.0" */
    int ratio;                     /* 0, 4 or 128 */
    bool hash;
    bool is_mtp;
    /* hyper-connections and norms, F32 */
    float *hc_attn_fn, *hc_attn_base, *hc_attn_scale;
    float *hc_ffn_fn, *hc_ffn_base, *hc_ffn_scale;
    float *attn_norm, *ffn_norm;
    /* attention */
    qplug_layer_inst *wq_a, *wq_b, *wkv, *wo_a, *wo_b, *cache;
    float *q_norm, *kv_norm, *attn_sink;
    size_t kv_bytes;               /* bytes of one cached entry */
    /* compressor (ratio 4 and 128): one fused [wkv | wgate] projection */
    qplug_layer_inst *c_kvgate;
    float *c_ape, *c_norm;
    /* indexer (ratio 4) */
    qplug_layer_inst *i_wq_b, *i_wproj, *i_kvgate;
    float *i_ape, *i_norm;
    /* MoE */
    float *gate_w, *gate_bias;
    int32_t *tid2eid;
    qplug_layer_inst *sh_w1, *sh_w3, *sh_w2, *experts;
    int64_t shared_inter;
    /* MTP only */
    qplug_layer_inst *e_proj, *h_proj;
    float *enorm, *hnorm, *norm, *hc_head_fn, *hc_head_base, *hc_head_scale;
} qplug__fw_block;

struct qplug_model {
    qplug_model_config cfg;
    qplug_ckpt *ckpt;
    qplug_policy pol;
    qplug_registry *reg;
    qplug_inventory inv;
    bool inv_built;
    qplug_runtime *rt;
    qplug_precision precision;
    /* dims */
    int64_t D, V, H, hd, rd, ql, G, R, E, topk, I, nih, ihd, W;
    int hc;
    float rms_eps, hc_eps, swiglu_limit, rsf;
    int sinkhorn_iters;
    int64_t index_topk;
    float main_freqs[64], comp_freqs[64];
    /* globals */
    const qplug_tensor *embed, *head; /* BF16/F16/F32 rows, read on the fly */
    float *norm, *hc_head_fn, *hc_head_base, *hc_head_scale;
    int n_blocks;
    qplug__fw_block *blocks;       /* n_blocks main blocks, then MTP */
    bool has_mtp;
    /* Ownership lists, released by qplug_model_close. */
    qplug_layer_inst **insts;
    size_t n_insts, cap_insts;
    void **bufs;
    size_t n_bufs, cap_bufs;
};

/* Converts a BF16/F16/F32 row of `t` (row-major [rows, cols]) to fp32. */
void qplug__fw_row_f32(const qplug_tensor *t, int64_t row, int64_t cols, float *out);

/* ------------------------------------------------------------------------ */
/* Per-block cache state (kv_cache.c)                                       */
/* ------------------------------------------------------------------------ */

/* A growable array of rows. */
typedef struct qplug__kv_rows {
    uint8_t *data;
    int64_t cap;                   /* rows */
    size_t row_bytes;
} qplug__kv_rows;

typedef struct qplug__kv_block {
    /* Sliding window: ring of W + max rollback entries, bytes as the
     * attention plugin stores them; slot = position % ring_rows. */
    uint8_t *ring;
    int64_t ring_rows;
    /* Compressed entries: plugin bytes, and their fp32 read-back (the
     * attention reads the mirror; the bytes are the cache proper). */
    qplug__kv_rows ent_bytes;
    qplug__kv_rows ent_f32;
    /* Compressor source rows (kv, then gate + position bias), a ring by
     * absolute position over at least 2 * ratio + max rollback slots, a
     * multiple of the ratio. */
    float *c_rows;
    int64_t c_slots;
    /* The indexer's compressor rows and its keys. */
    float *i_rows;
    qplug__kv_rows i_keys;
} qplug__kv_block;

struct qplug_session {
    qplug_model *m;
    int64_t pos;                   /* tokens processed by the main model */
    int64_t hi;                    /* furthest position ever reached */
    qplug__kv_block *blocks;       /* one per model block (MTP included) */
    int64_t mtp_pos;               /* positions the MTP block processed */
};

qplug_status qplug__kv_block_init(qplug_model *m, const qplug__fw_block *b, qplug__kv_block *kb,
                                  qplug_err *err);
void qplug__kv_block_free(qplug__kv_block *kb);
/* Makes room for rows [0, rows) of a growable array. */
qplug_status qplug__kv_rows_reserve(qplug__kv_rows *r, int64_t rows, qplug_err *err);

/* Plugin cache access: rows of x [m, hd] into cache rows [row0, row0+m) of a
 * byte buffer with `rows` rows, and back. */
qplug_status qplug__kv_write(const qplug_model *m, const qplug__fw_block *b, uint8_t *cache,
                             int64_t rows, int64_t row0, const float *x, int64_t n,
                             qplug_err *err);
qplug_status qplug__kv_read(const qplug_model *m, const qplug__fw_block *b, uint8_t *cache,
                            int64_t rows, int64_t row0, float *y, int64_t n, qplug_err *err);
/* Ring access by absolute positions [pos0, pos0+n), n <= ring rows. */
qplug_status qplug__kv_ring_write(const qplug_model *m, const qplug__fw_block *b,
                                  qplug__kv_block *kb, int64_t pos0, const float *x, int64_t n,
                                  qplug_err *err);
qplug_status qplug__kv_ring_read(const qplug_model *m, const qplug__fw_block *b,
                                 qplug__kv_block *kb, int64_t pos0, float *y, int64_t n,
                                 qplug_err *err);

/* ------------------------------------------------------------------------ */
/* Forward (forward_pass.c)                                                 */
/* ------------------------------------------------------------------------ */

/* y [m, n] = layer(x [m, k]) through the plugin. */
qplug_status qplug__fw_linear(const qplug_model *m, qplug_layer_inst *l, const float *x,
                              int64_t rows, float *y, qplug_err *err);

/*
 * Runs one block on X [n][hc][D] (in place) for positions p0 .. p0+n-1.
 * tokens (for hash routing) may be NULL for non-hash blocks.
 */
qplug_status qplug__fw_block_forward(qplug_model *m, const qplug__fw_block *b,
                                     qplug__kv_block *kb, int64_t p0, int64_t n,
                                     const int32_t *tokens, float *X, qplug_err *err);

/* Final collapse, norm and head for one token's streams X [hc][D]. */
void qplug__fw_logits(qplug_model *m, const float *X, const float *fn, const float *base,
                      const float *scale, const float *norm, float *logits);

/* The main model on n tokens; hidden_out (may be NULL) receives the last
 * block's streams [n][hc][D] for the MTP block. */
qplug_status qplug__fw_main(qplug_model *m, qplug_session *s, const int32_t *tokens, int64_t n,
                            float *logits, qplug_logits_mode mode, float *hidden_out,
                            qplug_err *err);

/* ------------------------------------------------------------------------ */
/* MTP (mtp_block.c)                                                        */
/* ------------------------------------------------------------------------ */

/*
 * The MTP block at positions mtp_pos .. mtp_pos+n-1: hidden [n][hc][D] are
 * the main model's last streams at those positions, next [n] the tokens at
 * the following positions. logits [vocab] of the last row (predicting the
 * token two ahead of its position).
 */
qplug_status qplug__mtp_forward(qplug_model *m, qplug_session *s, const float *hidden,
                                const int32_t *next, int64_t n, float *logits, qplug_err *err);

/*
 * qplug_model_generate with a hook for tests: when draft_fn is set, the
 * speculative loop proposes draft_fn(user, i, mtp_draft) instead of the MTP
 * block's draft for output token i (the MTP block still runs), so tests can
 * force accepted and rejected drafts.
 */
typedef int32_t (*qplug__fw_draft_fn)(void *user, int64_t i, int32_t mtp_draft);
qplug_status qplug__fw_generate(qplug_model *m, const int32_t *prompt, int64_t n_prompt,
                                int64_t n_gen, bool speculative, int32_t *out,
                                float *prompt_logits, qplug_generate_stats *stats,
                                qplug__fw_draft_fn draft_fn, void *draft_user, qplug_err *err);

/* argmax, lowest index on ties. */
int32_t qplug__fw_argmax(const float *v, int64_t n);

#endif
