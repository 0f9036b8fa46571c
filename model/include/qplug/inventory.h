/*
 * qplug/inventory.h - the DeepSeek V4 layer inventory: every layer the
 * resolver decides (linear, grouped linear, KV cache, fused MoE), the
 * non-plugin tensors the model reads (embeddings, norms, hyper-connections,
 * router, compressor position biases), and the mapping from official
 * DeepSeek names to the checkpoint's own names (official or transformers).
 *
 * Names used by callers are always official (deepseek_v4.md section 2):
 * "layers.0.attn.wq_a", "layers.3.ffn.experts", "layers.0.attn" (the KV
 * cache), "mtp.0.e_proj". The inventory translates them to whatever naming
 * the checkpoint uses, so the forward pass never sees transformers names.
 *
 * Lifetime: the inventory keeps pointers to `cfg` and `ckpt`, and hands out
 * tensors that point into the checkpoint's mappings; both must outlive it.
 * Layer instances built with qplug_inventory_source keep desc.name pointing
 * into the inventory, so free the inventory after the layers.
 */
#ifndef QPLUG_INVENTORY_H
#define QPLUG_INVENTORY_H

#include <stdbool.h>
#include <stddef.h>

#include "qplug/config.h"
#include "qplug/error.h"
#include "qplug/policy.h"
#include "qplug/registry.h"
#include "qplug/resolver.h"
#include "qplug/safetensors.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The tensor naming scheme of a checkpoint (deepseek_v4.md sections 2-3). */
typedef enum qplug_naming {
    QPLUG_NAMING_OFFICIAL = 0,     /* "layers.0.attn.wq_a.weight" */
    QPLUG_NAMING_HF = 1            /* "model.layers.0.self_attn.q_a_proj.weight" */
} qplug_naming;

/* One layer the resolver decides. */
typedef struct qplug_inv_layer {
    /* Official name: "layers.0.attn.wq_a", "layers.3.ffn.experts",
     * "layers.0.attn" (KV cache), "mtp.0.e_proj", and the compressors
     * "layers.1.attn.compressor" and "layers.1.attn.indexer.compressor":
     * sharded linears (shards "wkv" and "wgate", n = 2 * c * d) whose
     * plugin fuses the two checkpoint tensors. */
    char name[96];
    /* The transformers name of the module: "model.layers.0.self_attn.q_a_proj",
     * "model.layers.3.mlp.experts"; used for ModelOpt excludes and messages. */
    char hf_name[160];
    /* desc.name points at `name`; kind, n, k, groups, num_experts, top_k,
     * swiglu_limit, flags and device are filled by qplug_inventory_build;
     * quant, weight_dtype and scale_dtype by qplug_inventory_resolve. */
    qplug_layer_desc desc;
    /* What the checkpoint tensors hold (present = false without a
     * checkpoint and for KV caches, which have no tensors). */
    qplug_layer_storage stored;
    /* Filled by qplug_inventory_resolve. */
    qplug_decision decision;
    /* 0..L-1 for main blocks, L+i for mtp.i, -1 for global layers. */
    int block;
} qplug_inv_layer;

/* One non-plugin tensor the model reads (norms, hc, router, ape, sinks,
 * embeddings, head). */
typedef struct qplug_inv_tensor {
    char name[96];                 /* official: "layers.0.attn_norm.weight" */
    char ckpt_name[160];           /* its name in the checkpoint's naming */
    bool required;                 /* the forward pass cannot run without it */
    bool present;                  /* found in the checkpoint */
    int block;                     /* as in qplug_inv_layer */
} qplug_inv_tensor;

typedef struct qplug__inv_private qplug__inv_private;

typedef struct qplug_inventory {
    const qplug_model_config *cfg;
    const qplug_ckpt *ckpt;        /* NULL: planned from the config alone */
    qplug_naming naming;
    bool has_mtp;                  /* the checkpoint holds MTP weights */
    int n_mtp;                     /* MTP blocks in the inventory */
    bool hf_stacked_experts;       /* HF checkpoint with mlp.experts.gate_up_proj */
    qplug_inv_layer *layers;
    size_t n_layers;
    qplug_inv_tensor *tensors;     /* non-plugin tensors, official names */
    size_t n_tensors;
    qplug__inv_private *priv;
} qplug_inventory;

/*
 * Builds the inventory from the config (official or HF style) and the
 * checkpoint's tensor names (naming detected from them; `ckpt` may be NULL,
 * then the naming follows the config style and nothing is checked). Reads
 * the storage scheme of every layer from the headers. Errors: a checkpoint
 * in no known naming, a required tensor missing (message names the tensor
 * in official and checkpoint naming, and the checkpoint directory), tensors
 * whose dtypes match no known storage scheme, fused shards that disagree.
 * On failure *inv is left empty (nothing to free, freeing is harmless).
 */
qplug_status qplug_inventory_build(const qplug_model_config *cfg, const qplug_ckpt *ckpt,
                                   qplug_device_kind dev, qplug_inventory *inv,
                                   qplug_err *err);

/* Resolves every layer with qplug_resolve (policy rules, then the
 * checkpoint's quant config, then unquantized); fills desc.quant,
 * desc.weight_dtype, desc.scale_dtype, desc.flags and decision. `pol` may
 * be NULL (no rules). */
qplug_status qplug_inventory_resolve(qplug_inventory *inv, const qplug_registry *reg,
                                     const qplug_policy *pol, qplug_err *err);

/* The layer with this official name, or NULL. */
const qplug_inv_layer *qplug_inventory_find(const qplug_inventory *inv, const char *official_name);

/*
 * A qplug_tensor_source_fn for qplug_layer_create (user = the inventory):
 * maps (layer, slot) to the checkpoint tensor in either naming. Slot "scale"
 * also finds transformers' "weight_scale_inv". HF stacked experts
 * (mlp.experts.gate_up_proj [E, 2I, D], mlp.experts.down_proj [E, D, I]) are
 * presented as per-expert views: "experts.<e>.w1.weight" is rows [0, I) of
 * gate_up_proj[e] (gate rows come first), w3 rows [I, 2I), w2 is
 * down_proj[e]. Shard slots of a sharded layer ("wkv.weight" of
 * "layers.1.attn.indexer.compressor") map to that layer's own shard tensor
 * ("layers.1.attn.indexer.compressor.wkv.weight", or in transformers naming
 * "model.layers.1.self_attn.compressor.indexer.kv_proj.weight"). The tensor
 * is marked used.
 */
const qplug_tensor *qplug_inventory_source(void *inv, const qplug_layer_desc *layer,
                                           const char *slot, const char **file);

/*
 * A non-plugin tensor by official name ("embed.weight", "head.weight",
 * "norm.weight", "hc_head_fn", "layers.0.attn_norm.weight",
 * "layers.0.hc_attn_fn", "layers.1.attn.attn_sink",
 * "layers.1.attn.compressor.ape", "layers.1.attn.indexer.compressor.norm.weight",
 * "layers.3.ffn.gate.weight", "layers.0.ffn.gate.tid2eid",
 * "mtp.0.enorm.weight", "mtp.0.hc_head_fn", ...), or NULL when absent.
 * Any official tensor name works, including plugin layers' tensors
 * ("layers.1.attn.compressor.wkv.weight"). The tensor is marked used.
 */
const qplug_tensor *qplug_inventory_tensor(qplug_inventory *inv, const char *official_name,
                                           const char **file);

/*
 * Translates an official tensor or module name into the checkpoint's naming
 * (identity for official checkpoints) into buf; false if it does not fit.
 */
bool qplug_inventory_ckpt_name(const qplug_inventory *inv, const char *official_name, char *buf,
                               size_t size);

/* Load bookkeeping: checkpoint tensors not yet handed out by the two
 * functions above. `qplug_inventory_next_unused` returns the checkpoint
 * index (for qplug_ckpt_tensor) of the first unused tensor at or after
 * `from`, or -1; iterate with from = previous + 1. */
size_t qplug_inventory_unused_count(const qplug_inventory *inv);
long qplug_inventory_next_unused(const qplug_inventory *inv, size_t from);

void qplug_inventory_free(qplug_inventory *inv);

#ifdef __cplusplus
}
#endif
#endif
