/*
 * qplug/config.h - the checkpoint's own configuration: config.json in the
 * official DeepSeek style or the transformers (HF) style, its
 * quantization_config, and ModelOpt's hf_quant_config.json.
 */
#ifndef QPLUG_CONFIG_H
#define QPLUG_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "qplug/error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum qplug_quant_method {
    QPLUG_QM_NONE = 0,             /* no quantization config */
    QPLUG_QM_DEEPSEEK_FP8 = 1,     /* quant_method "fp8" / "deepseek_v4_fp8" */
    QPLUG_QM_MODELOPT = 2          /* hf_quant_config.json or "modelopt" */
} qplug_quant_method;

typedef enum qplug_expert_dtype {
    QPLUG_EXPERT_FP4 = 0,          /* default when absent */
    QPLUG_EXPERT_FP8 = 1
} qplug_expert_dtype;

typedef enum qplug_modelopt_algo {
    QPLUG_MO_NONE = 0,
    QPLUG_MO_FP8 = 1,
    QPLUG_MO_FP8_PER_CHANNEL_PER_TOKEN = 2,
    QPLUG_MO_FP8_PB_WO = 3,
    QPLUG_MO_NVFP4 = 4
} qplug_modelopt_algo;

typedef struct qplug_quant_config {
    qplug_quant_method method;
    char source[256];              /* file the quant config came from */
    /* DeepSeek FP8 */
    qplug_expert_dtype expert_dtype;
    bool scale_ue8m0;              /* scale_fmt "ue8m0" */
    int32_t block_n, block_k;      /* weight_block_size, 128 x 128 */
    bool moe_nvfp4;                /* quantization_config.moe_quant_algo NVFP4 */
    /* ModelOpt */
    qplug_modelopt_algo algo;
    int32_t group_size;            /* NVFP4: 16 */
    char kv_cache_algo[32];        /* "" when null */
    /* Layers left unquantized: exclude_modules / ignore / ignored_layers,
     * as written in the file (wildcards kept). */
    char **exclude;
    size_t n_exclude;
} qplug_quant_config;

#define QPLUG_MAX_LAYERS 256

typedef struct qplug_model_config {
    char source[256];              /* path of config.json */
    bool hf_style;                 /* transformers-style keys */
    int64_t vocab_size, hidden_size, num_hidden_layers;
    int64_t num_attention_heads, num_key_value_heads, head_dim, qk_rope_head_dim;
    int64_t q_lora_rank, o_groups, o_lora_rank;
    int64_t n_routed_experts, n_shared_experts, num_experts_per_tok, moe_intermediate_size;
    int64_t index_n_heads, index_head_dim, index_topk;
    int64_t num_hash_layers, num_nextn_predict_layers;
    int64_t sliding_window, hc_mult, hc_sinkhorn_iters;
    int64_t max_position_embeddings;
    double routed_scaling_factor, hc_eps, rms_norm_eps, swiglu_limit;
    double rope_theta, compress_rope_theta;
    double yarn_factor, yarn_original_max_pos, yarn_beta_fast, yarn_beta_slow;
    bool norm_topk_prob;
    char scoring_func[32];
    /* One entry per layer, then one per MTP layer: 0, 4 or 128. */
    int32_t compress_ratios[QPLUG_MAX_LAYERS];
    /* Per layer (main layers only): true for hash-routed MoE. */
    bool hash_moe[QPLUG_MAX_LAYERS];
    qplug_quant_config quant;
} qplug_model_config;

/* Reads DIR/config.json and, if present, DIR/hf_quant_config.json. Missing
 * required fields, wrong types, an invalid expert_dtype or an NVFP4 config
 * missing its required fields: an error naming file and key. */
qplug_status qplug_config_load(const char *dir, qplug_model_config *cfg, qplug_err *err);
/* The same from memory (used by the fuzzer and tests). `hf_quant_json` may
 * be NULL. */
qplug_status qplug_config_parse(const char *config_json, size_t config_len,
                                const char *config_source, const char *hf_quant_json,
                                size_t hf_quant_len, const char *hf_quant_source,
                                qplug_model_config *cfg, qplug_err *err);
void qplug_config_free(qplug_model_config *cfg);

#ifdef __cplusplus
}
#endif
#endif
