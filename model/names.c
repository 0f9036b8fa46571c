/*
 * Official -> transformers name translation. The tables are matched on
 * whole dot-separated components, most specific first, because several
 * official paths share prefixes with different targets: the indexer's
 * compressor ("attn.indexer.compressor.*") lives under
 * "self_attn.compressor.indexer.*" in transformers, and confusing it with
 * the main compressor ("attn.compressor.*") loads the wrong weights into
 * the wrong module (a known field bug).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "names.h"

typedef struct qplug__rename {
    const char *official;
    const char *hf;
} qplug__rename;

/* Paths inside one block, relative to "layers.N." / "mtp.i.". */
static const qplug__rename qplug__block_renames[] = {
    {"attn.indexer.compressor.wkv", "self_attn.compressor.indexer.kv_proj"},
    {"attn.indexer.compressor.wgate", "self_attn.compressor.indexer.gate_proj"},
    {"attn.indexer.compressor.norm", "self_attn.compressor.indexer.kv_norm"},
    {"attn.indexer.compressor.ape", "self_attn.compressor.indexer.position_bias"},
    {"attn.indexer.compressor", "self_attn.compressor.indexer"},
    {"attn.indexer.wq_b", "self_attn.compressor.indexer.q_b_proj"},
    {"attn.indexer.weights_proj", "self_attn.compressor.indexer.scorer.weights_proj"},
    {"attn.indexer", "self_attn.compressor.indexer"},
    {"attn.compressor.wkv", "self_attn.compressor.kv_proj"},
    {"attn.compressor.wgate", "self_attn.compressor.gate_proj"},
    {"attn.compressor.norm", "self_attn.compressor.kv_norm"},
    {"attn.compressor.ape", "self_attn.compressor.position_bias"},
    {"attn.compressor", "self_attn.compressor"},
    {"attn.wq_a", "self_attn.q_a_proj"},
    {"attn.wq_b", "self_attn.q_b_proj"},
    {"attn.wkv", "self_attn.kv_proj"},
    {"attn.wo_a", "self_attn.o_a_proj"},
    {"attn.wo_b", "self_attn.o_b_proj"},
    {"attn.q_norm", "self_attn.q_a_norm"},
    {"attn.kv_norm", "self_attn.kv_norm"},
    {"attn.attn_sink", "self_attn.sinks"},
    {"attn", "self_attn"},
    {"ffn.gate.bias", "mlp.gate.e_score_correction_bias"},
    {"ffn.gate", "mlp.gate"},
    {"ffn.shared_experts.w1", "mlp.shared_experts.gate_proj"},
    {"ffn.shared_experts.w2", "mlp.shared_experts.down_proj"},
    {"ffn.shared_experts.w3", "mlp.shared_experts.up_proj"},
    {"ffn.shared_experts", "mlp.shared_experts"},
    {"ffn.experts", "mlp.experts"},
    {"ffn", "mlp"},
    {"attn_norm", "input_layernorm"},
    {"ffn_norm", "post_attention_layernorm"},
    {"hc_attn_fn", "attn_hc.fn"},
    {"hc_attn_base", "attn_hc.base"},
    {"hc_attn_scale", "attn_hc.scale"},
    {"hc_ffn_fn", "ffn_hc.fn"},
    {"hc_ffn_base", "ffn_hc.base"},
    {"hc_ffn_scale", "ffn_hc.scale"},
    {"hc_head_fn", "hc_head.hc_fn"},
    {"hc_head_base", "hc_head.hc_base"},
    {"hc_head_scale", "hc_head.hc_scale"},
};

/* Names outside any block. */
static const qplug__rename qplug__global_renames[] = {
    {"embed", "model.embed_tokens"},
    {"head", "lm_head"},
    {"norm", "model.norm"},
    {"hc_head_fn", "model.hc_head.hc_fn"},
    {"hc_head_base", "model.hc_head.hc_base"},
    {"hc_head_scale", "model.hc_head.hc_scale"},
};

/* Routed expert projections, inside "ffn.experts.<e>.". */
static const qplug__rename qplug__expert_renames[] = {
    {"w1", "gate_proj"},
    {"w2", "down_proj"},
    {"w3", "up_proj"},
};

/* The length of `key` if it covers the start of `s` up to a component
 * boundary, else 0. */
static size_t qplug__covers(const char *key, const char *s)
{
    size_t n = strlen(key);
    if (strncmp(s, key, n) != 0 || (s[n] != '\0' && s[n] != '.'))
        return 0;
    return n;
}

/* Applies the first rename of `table` covering `s`; the unmatched tail is
 * kept. Writes at *pos in buf; false on overflow. */
static bool qplug__apply(const qplug__rename *table, size_t n, const char *s, char *buf,
                         size_t size, size_t *pos, const char **tail)
{
    for (size_t i = 0; i < n; i++) {
        size_t len = qplug__covers(table[i].official, s);
        if (!len)
            continue;
        int w = snprintf(buf + *pos, size - *pos, "%s", table[i].hf);
        if (w < 0 || (size_t)w >= size - *pos)
            return false;
        *pos += (size_t)w;
        *tail = s + len;
        return true;
    }
    *tail = s;
    return true;
}

static bool qplug__append(char *buf, size_t size, size_t *pos, const char *s)
{
    int w = snprintf(buf + *pos, size - *pos, "%s", s);
    if (w < 0 || (size_t)w >= size - *pos)
        return false;
    *pos += (size_t)w;
    return true;
}

/* Parses "<digits>" followed by '.' or the end; returns the index or -1. */
static long qplug__index(const char *s, const char **end)
{
    char *e;
    if (*s < '0' || *s > '9')
        return -1;
    long v = strtol(s, &e, 10);
    if ((*e != '.' && *e != '\0') || v < 0 || v > 100000)
        return -1;
    *end = e;
    return v;
}

bool qplug__names_to_hf(const char *official, long n_layers, const char *const *mtp_prefix,
                        int n_mtp_prefix, char *buf, size_t size)
{
    size_t pos = 0;
    const char *rest, *tail;
    if (!size)
        return false;
    buf[0] = '\0';

    if (!strncmp(official, "layers.", 7) || !strncmp(official, "mtp.", 4)) {
        bool mtp = official[0] == 'm';
        long idx = qplug__index(official + (mtp ? 4 : 7), &rest);
        if (idx < 0)
            return false;
        int w;
        if (mtp && idx < n_mtp_prefix && mtp_prefix && mtp_prefix[idx])
            w = snprintf(buf, size, "%s", mtp_prefix[idx]);
        else
            w = snprintf(buf, size, "model.layers.%ld", mtp ? n_layers + idx : idx);
        if (w < 0 || (size_t)w >= size)
            return false;
        pos = (size_t)w;
        if (*rest == '\0')
            return true;
        rest++; /* the dot after the index */
        if (!qplug__append(buf, size, &pos, "."))
            return false;
        if (!qplug__apply(qplug__block_renames,
                          sizeof qplug__block_renames / sizeof qplug__block_renames[0], rest, buf,
                          size, &pos, &tail))
            return false;
        /* Routed experts: "ffn.experts.<e>.w1..." -> "mlp.experts.<e>.gate_proj...". */
        if (tail != rest && qplug__covers("ffn.experts", rest) && tail[0] == '.') {
            const char *after;
            if (qplug__index(tail + 1, &after) >= 0 && after[0] == '.') {
                size_t num_len = (size_t)(after - tail);
                if (pos + num_len + 1 >= size)
                    return false;
                memcpy(buf + pos, tail, num_len);
                pos += num_len;
                buf[pos] = '\0';
                if (!qplug__append(buf, size, &pos, "."))
                    return false;
                if (!qplug__apply(qplug__expert_renames,
                                  sizeof qplug__expert_renames / sizeof qplug__expert_renames[0],
                                  after + 1, buf, size, &pos, &tail))
                    return false;
            }
        }
        return qplug__append(buf, size, &pos, tail);
    }

    if (!qplug__apply(qplug__global_renames,
                      sizeof qplug__global_renames / sizeof qplug__global_renames[0], official, buf,
                      size, &pos, &tail))
        return false;
    if (tail == official && !qplug__append(buf, size, &pos, "model."))
        return false;
    return qplug__append(buf, size, &pos, tail);
}
