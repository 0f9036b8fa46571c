/*
 * Internal: translation of official DeepSeek V4 tensor and module names into
 * transformers (HF) names, following the renames of transformers'
 * conversion mapping for deepseek_v4 (deepseek_v4.md section 3).
 */
#ifndef QPLUG_MODEL_NAMES_H
#define QPLUG_MODEL_NAMES_H

#include <stdbool.h>
#include <stddef.h>

/*
 * Writes the HF name of `official` into buf ("layers.1.attn.indexer.compressor.wkv.weight"
 * -> "model.layers.1.self_attn.compressor.indexer.kv_proj.weight"). Main
 * blocks map "layers.N" to "model.layers.N"; MTP block i maps "mtp.i" to
 * mtp_prefix[i] when i < n_mtp_prefix, else to "model.layers.{n_layers+i}".
 * Returns false when the result does not fit or the name is malformed.
 */
bool qplug__names_to_hf(const char *official, long n_layers, const char *const *mtp_prefix,
                        int n_mtp_prefix, char *buf, size_t size);

#endif
