/*
 * qplug/model.h - the DeepSeek V4 model on the CPU: open a checkpoint
 * through the resolver's plugins, run prefill and decode on a session that
 * holds the KV cache, and greedy generation (optionally speculative with the
 * MTP block as a one-token draft).
 *
 * Every linear, grouped linear and fused MoE runs through the plugin layer
 * the resolver chose; the KV cache of `layers.N.attn` goes through that
 * attention layer's plugin (KV_WRITE / KV_READ). Everything else (norms,
 * hyper-connections, rope, attention scores, compressors, indexer, routing)
 * is fp32 code in model/forward_*.c, following the transformers
 * DeepseekV4 implementation (docs/forward_notes.md lists where it differs
 * from deepseek_v4.md and the released DeepSeek code).
 */
#ifndef QPLUG_MODEL_H
#define QPLUG_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "qplug/config.h"
#include "qplug/error.h"
#include "qplug/plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qplug_model qplug_model;
typedef struct qplug_session qplug_session;

/*
 * Opens DIR (config.json, safetensors shards), the policy (NULL: no rules),
 * the plugin registry, the layer inventory, resolves every layer, creates
 * every plugin layer and converts every non-plugin tensor the forward pass
 * reads. `threads` <= 0 means one per CPU. `need_mtp`: fail with a clear
 * message when the checkpoint has no MTP weights (otherwise MTP is simply
 * unavailable). Only QPLUG_DEVICE_CPU runs for now; CUDA gives
 * QPLUG_ERR_UNSUPPORTED. On failure nothing is leaked and *out is NULL.
 */
qplug_status qplug_model_open(const char *dir, const char *policy_path, qplug_device_kind device,
                              qplug_precision precision, int threads, bool need_mtp,
                              qplug_model **out, qplug_err *err);
void qplug_model_close(qplug_model *m);

const qplug_model_config *qplug_model_cfg(const qplug_model *m);
int64_t qplug_model_vocab(const qplug_model *m);
bool qplug_model_has_mtp(const qplug_model *m);
int qplug_model_threads(const qplug_model *m);

/* A sequence's state: KV caches, compressor partial blocks, indexer keys,
 * and the MTP block's own cache. */
qplug_status qplug_session_create(qplug_model *m, qplug_session **out, qplug_err *err);
void qplug_session_destroy(qplug_session *s);
/* Tokens processed so far by the main model. */
int64_t qplug_session_position(const qplug_session *s);

/* The most tokens a session can take back (qplug_session_rollback). */
#define QPLUG_SESSION_MAX_ROLLBACK 4

/*
 * Forgets the last `n` tokens the main model processed, as if they had never
 * been given. Allowed for n <= QPLUG_SESSION_MAX_ROLLBACK counted from the
 * furthest position ever reached; used by speculative decoding.
 */
qplug_status qplug_session_rollback(qplug_session *s, int64_t n, qplug_err *err);

typedef enum qplug_logits_mode {
    QPLUG_LOGITS_NONE = 0,         /* logits may be NULL */
    QPLUG_LOGITS_LAST = 1,         /* logits [vocab] for the last token */
    QPLUG_LOGITS_ALL = 2           /* logits [n, vocab] */
} qplug_logits_mode;

/*
 * Runs `n` tokens at the session's next positions (prefill when n > 1,
 * decode when n = 1; both give the same logits). Token ids outside the
 * vocabulary are an error naming the index.
 */
qplug_status qplug_model_forward(qplug_model *m, qplug_session *s, const int32_t *tokens,
                                 int64_t n, float *logits, qplug_logits_mode mode,
                                 qplug_err *err);

typedef struct qplug_generate_stats {
    int64_t prompt_tokens;
    int64_t generated;
    double prefill_seconds;        /* wall clock of the prompt's forward */
    double decode_seconds;         /* wall clock of everything after it */
    int64_t drafted;               /* speculative: drafts proposed */
    int64_t accepted;              /* speculative: drafts the main model confirmed */
} qplug_generate_stats;

/*
 * Greedy generation on a fresh session: the prompt, then `n_gen` tokens
 * (argmax, lowest id on ties) written to out. With `speculative` the MTP
 * block drafts one token per step and the main model verifies it; the
 * tokens are exactly those of plain greedy decoding. `prompt_logits`, if
 * not NULL, receives the prompt's logits [n_prompt, vocab].
 */
qplug_status qplug_model_generate(qplug_model *m, const int32_t *prompt, int64_t n_prompt,
                                  int64_t n_gen, bool speculative, int32_t *out,
                                  float *prompt_logits, qplug_generate_stats *stats,
                                  qplug_err *err);

#ifdef __cplusplus
}
#endif
#endif
