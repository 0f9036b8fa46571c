/*
 * qplug/resolver.h - which plugin handles each layer (architecture.md,
 * contract). Order: policy rules (first match wins) > checkpoint quant
 * config > default (unquantized). Every decision carries a one-line reason.
 */
#ifndef QPLUG_RESOLVER_H
#define QPLUG_RESOLVER_H

#include "qplug/config.h"
#include "qplug/policy.h"
#include "qplug/registry.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The plugin name the resolver uses for unquantized layers. */
#define QPLUG_UNQUANTIZED "unquantized"

/* What the tensors in the checkpoint actually hold for a layer, as the
 * inventory read it from the safetensors headers. */
typedef struct qplug_layer_storage {
    qplug_quant_scheme scheme;     /* from dtypes and the scale tensors found */
    qplug_dtype weight_dtype;
    qplug_dtype scale_dtype;
    bool present;                  /* false: no tensor seen (plan on config alone) */
    char tensor[160];              /* checkpoint name of the weight tensor read
                                      ("" when none), for messages */
} qplug_layer_storage;

typedef struct qplug_decision {
    const qplug_plugin *plugin;    /* NULL only on error */
    qplug_quant_scheme quant;      /* the scheme the layer is loaded as */
    qplug_dtype scale_dtype;
    char reason[256];
} qplug_decision;

/* Decides one layer. `layer` has every field but quant/scale_dtype filled;
 * `hf_name` is the layer's transformers name (for ModelOpt excludes).
 * On success layer->quant and layer->scale_dtype are set from the decision. */
qplug_status qplug_resolve(const qplug_registry *reg, const qplug_policy *pol,
                           const qplug_model_config *cfg, qplug_layer_desc *layer,
                           const char *hf_name, const qplug_layer_storage *stored,
                           qplug_decision *out, qplug_err *err);

/* Names for messages and plan output: "linear", "grouped_linear",
 * "attention", "fused_moe"; "none", "fp8_block", "mxfp4", "nvfp4",
 * "fp8_tensor", "fp8_channel". */
const char *qplug_layer_kind_name(qplug_layer_kind kind);
const char *qplug_quant_scheme_name(qplug_quant_scheme q);

#ifdef __cplusplus
}
#endif
#endif
