#!/usr/bin/env python3
"""Writes the sample configs of tests/data/config/ (standard library only).

The samples are modelled on the released DeepSeek-V4 config.json files
(V4-Flash, V4-Flash-Base, V4-Pro; official key names, compress_ratios with
the MTP entry last) and on a transformers-style ModelOpt NVFP4 export
(layer_types / mlp_layer_types / rope_parameters plus hf_quant_config.json).
The values come from deepseek_v4.md section 1; test_config.c checks them
against the same table, not against anything the parser computed.

Run from anywhere: python3 make_samples.py
"""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def write(sub, name, obj):
    d = os.path.join(HERE, sub)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


FP8_QC = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
          "scale_fmt": "ue8m0", "weight_block_size": [128, 128]}
YARN = {"beta_fast": 32, "beta_slow": 1, "factor": 16,
        "original_max_position_embeddings": 65536, "type": "yarn"}


def official(hidden, layers, heads, q_lora, o_groups, experts, inter, scaling, topk, ratios):
    return {
        "architectures": ["DeepseekV4ForCausalLM"], "model_type": "deepseek_v4",
        "vocab_size": 129280, "hidden_size": hidden, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": 1, "head_dim": 512,
        "qk_rope_head_dim": 64, "q_lora_rank": q_lora, "o_groups": o_groups, "o_lora_rank": 1024,
        "n_routed_experts": experts, "n_shared_experts": 1, "num_experts_per_tok": 6,
        "moe_intermediate_size": inter, "routed_scaling_factor": scaling,
        "index_n_heads": 64, "index_head_dim": 128, "index_topk": topk,
        "num_hash_layers": 3, "num_nextn_predict_layers": 1, "sliding_window": 128,
        "hc_mult": 4, "hc_sinkhorn_iters": 20, "hc_eps": 1e-06, "rms_norm_eps": 1e-06,
        "swiglu_limit": 10.0, "scoring_func": "sqrtsoftplus", "norm_topk_prob": True,
        "topk_method": "noaux_tc", "rope_theta": 10000, "compress_rope_theta": 160000,
        "rope_scaling": dict(YARN), "max_position_embeddings": 1048576,
        "compress_ratios": ratios, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    }


# Flash: two window-only layers, then CSA/HCA alternating; the MTP layer last.
flash_ratios = [0, 0] + [4 if i % 2 == 0 else 128 for i in range(2, 43)] + [0]
# Pro: transformers' V4-Pro default, two HCA layers then HCA/CSA alternating.
pro_ratios = [128, 128] + [4 if j % 2 else 128 for j in range(59)] + [0]

flash = official(4096, 43, 64, 1024, 8, 256, 2048, 1.5, 512, flash_ratios)
flash["quantization_config"] = dict(FP8_QC)
flash["expert_dtype"] = "fp4"
write("v4-flash", "config.json", flash)

base = official(4096, 43, 64, 1024, 8, 256, 2048, 1.5, 512, flash_ratios)
base["quantization_config"] = {k: v for k, v in FP8_QC.items() if k != "scale_fmt"}
base["expert_dtype"] = "fp8"
write("v4-flash-base", "config.json", base)

pro = official(7168, 61, 128, 1536, 16, 384, 3072, 2.5, 1024, pro_ratios)
pro["quantization_config"] = dict(FP8_QC)
write("v4-pro", "config.json", pro)

# transformers-style export (keys as DeepseekV4Config.to_dict writes them).
kind = {0: "sliding_attention", 4: "compressed_sparse_attention",
        128: "heavily_compressed_attention"}
hf = {
    "architectures": ["DeepseekV4ForCausalLM"], "model_type": "deepseek_v4",
    "vocab_size": 129280, "hidden_size": 4096, "num_hidden_layers": 43,
    "num_attention_heads": 64, "num_key_value_heads": 1, "head_dim": 512,
    "partial_rotary_factor": 0.125, "q_lora_rank": 1024, "o_groups": 8, "o_lora_rank": 1024,
    "n_routed_experts": 256, "n_shared_experts": 1, "num_experts_per_tok": 6,
    "moe_intermediate_size": 2048, "routed_scaling_factor": 1.5,
    "index_n_heads": 64, "index_head_dim": 128, "index_topk": 512,
    "num_nextn_predict_layers": 1, "sliding_window": 128, "hc_mult": 4,
    "hc_sinkhorn_iters": 20, "hc_eps": 1e-06, "rms_norm_eps": 1e-06, "swiglu_limit": 10.0,
    "scoring_func": "sqrtsoftplus", "norm_topk_prob": True, "rope_theta": 10000.0,
    "compress_rope_theta": 160000.0, "max_position_embeddings": 1048576,
    "compress_rates": {"compressed_sparse_attention": 4, "heavily_compressed_attention": 128},
    "layer_types": [kind[r] for r in flash_ratios[:43]],
    "mlp_layer_types": ["hash_moe"] * 3 + ["moe"] * 40,
    "rope_parameters": {
        "main": {"partial_rotary_factor": 0.125, "rope_theta": 10000.0, "rope_type": "default"},
        "compress": {"attention_factor": 1.0, "beta_fast": 32, "beta_slow": 1, "factor": 16,
                     "original_max_position_embeddings": 65536, "partial_rotary_factor": 0.125,
                     "rope_theta": 160000.0, "rope_type": "yarn"},
    },
    "quantization_config": {
        "quant_method": "modelopt", "quant_algo": "NVFP4",
        "producer": {"name": "modelopt", "version": "0.37.0"},
        "ignore": ["lm_head", "model.layers.*.self_attn.compressor*"],
    },
    "tie_word_embeddings": False, "dtype": "bfloat16", "transformers_version": "5.17.0",
}
write("nvfp4-hf", "config.json", hf)
hfq = {
    "producer": {"name": "modelopt", "version": "0.37.0"},
    "quantization": {
        "quant_algo": "NVFP4", "kv_cache_quant_algo": None, "group_size": 16,
        "exclude_modules": ["lm_head", "model.layers.*.self_attn.compressor*",
                            "model.layers.3.self_attn.o_a_proj", "mtp*"],
    },
}
write("nvfp4-hf", "hf_quant_config.json", hfq)

# Failure cases.
bad = dict(flash)
bad["expert_dtype"] = "fp6"
write("bad-expert-dtype", "config.json", bad)
write("nvfp4-missing", "config.json", {k: v for k, v in hf.items() if k != "quantization_config"})
write("nvfp4-missing", "hf_quant_config.json",
      {"producer": {"name": "modelopt", "version": "0.37.0"}, "quantization": {"quant_algo": "NVFP4"}})
