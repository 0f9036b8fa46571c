#!/usr/bin/env python3
"""Writes the tiny DeepSeek V4 checkpoints that the inventory and plan tests
read (tests/data/ckpt_headers/<format>/). Run with the project's fixture venv:

    /tmp/venv/bin/python tests/data/ckpt_headers/make_ckpts.py

The tests check names, dtypes and shapes only, so the payloads are random
bytes of the right size (E4M3 bytes avoid the NaN code). Safetensors files
are written directly from the format's definition (8-byte little-endian
header length, JSON header, payload) so that every dtype string the
checkpoints use in the wild (F8_E8M0, F4 ...) can be written; the result is
re-read with the safetensors library as a check. The HF config comes from
transformers' own DeepseekV4Config, the official config follows DeepSeek's
released config.json keys.

Formats (dims: D=32, H=2, head_dim=64, q_lora=32, o_groups=2, o_lora=16,
E=4 experts top-2, I=32, indexer 2 heads x 32, vocab 64, 3 layers with
compress ratios [0, 4, 128], layer 0 hash-routed, one MTP layer):
  bf16        official naming, BF16, MTP present, 2 shards + index
  flash       official naming, FP8 E8M0-scaled linears, MXFP4 experts, MTP
  flash_base  official naming, FP8 F32-scaled linears and experts, no MTP
  nvfp4       transformers naming, ModelOpt NVFP4 per-expert tensors,
              hf_quant_config.json; layers.0 o_a_proj excluded (BF16),
              layers.2 o_a_proj left in BF16 without being excluded
  hf_stacked  transformers naming, BF16, stacked experts (gate_up_proj,
              down_proj), MTP appended as model.layers.3
"""
import json
import os
import struct
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

D, H, HD, QL, G, R = 32, 2, 64, 32, 2, 16
E, TOPK, I = 4, 2, 32
INH, IHD = 2, 32
V, L = 64, 3
RATIOS = [0, 4, 128, 0]  # three layers, then the MTP layer
N_HASH = 1

RNG = np.random.default_rng(1234)

DT_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "I8": 1, "U8": 1, "I64": 8, "I32": 4,
            "F8_E4M3": 1, "F8_E8M0": 1}


def payload(dtype, shape, name):
    """Random bytes of the right size; scales (names with "scale") are
    positive, as the plugins require of them."""
    n = int(np.prod(shape)) if shape else 1
    positive = "scale" in name
    if dtype == "F32":
        f = RNG.standard_normal(n).astype(np.float32)
        return (np.abs(f) + 0.01 if positive else f).astype(np.float32).tobytes()
    if dtype == "BF16":
        f = RNG.standard_normal(n).astype(np.float32) * 0.05
        return (f.view(np.uint32) >> 16).astype(np.uint16).tobytes()
    if dtype == "F8_E4M3":
        b = RNG.integers(1, 0x7F, n, dtype=np.uint8)  # 0x7f is NaN
        if positive:
            return b.tobytes()
        return (b | (RNG.integers(0, 2, n, dtype=np.uint8) << 7)).tobytes()
    if dtype == "F8_E8M0":
        return RNG.integers(120, 130, n, dtype=np.uint8).tobytes()
    if dtype in ("I8", "U8"):
        return RNG.integers(0, 256, n, dtype=np.uint8).tobytes()
    if dtype == "I64":
        return RNG.integers(0, E, n, dtype=np.int64).tobytes()
    raise ValueError(dtype)


def write_st(path, tensors):
    header, blobs, off = {}, [], 0
    for name, (dtype, shape) in tensors.items():
        data = payload(dtype, shape, name)
        assert len(data) == (int(np.prod(shape)) if shape else 1) * DT_BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def write_ckpt(name, tensors, config, hf_quant=None, shards=2):
    out = os.path.join(HERE, name)
    os.makedirs(out, exist_ok=True)
    for f in os.listdir(out):
        os.remove(os.path.join(out, f))
    names = list(tensors)
    per = (len(names) + shards - 1) // shards
    weight_map = {}
    for s in range(shards):
        fn = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[s * per:(s + 1) * per]}
        write_st(os.path.join(out, fn), part)
        for n in part:
            weight_map[n] = fn
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=1)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    if hf_quant is not None:
        with open(os.path.join(out, "hf_quant_config.json"), "w") as f:
            json.dump(hf_quant, f, indent=1)
    check(out, weight_map)


def check(out, weight_map):
    """Re-reads every shard with the safetensors library (torch handles
    the float8 dtypes), so a malformed file fails here, not in the tests."""
    try:
        from safetensors import safe_open
    except ImportError:
        return
    seen = set()
    for fn in sorted(set(weight_map.values())):
        with safe_open(os.path.join(out, fn), framework="pt") as f:
            for k in f.keys():
                f.get_tensor(k)
                seen.add(k)
    assert seen == set(weight_map), "index and shards disagree"


# ---------------------------------------------------------------- official

def official_linear(t, base, n, k, fmt):
    """fmt: bf16 | fp8_e8m0 | fp8_f32 | mxfp4 | nvfp4 | fp8_expert"""
    if fmt == "bf16":
        t[base + ".weight"] = ("BF16", [n, k])
    elif fmt in ("fp8_e8m0", "fp8_f32"):
        t[base + ".weight"] = ("F8_E4M3", [n, k])
        t[base + ".scale"] = ("F8_E8M0" if fmt == "fp8_e8m0" else "F32",
                              [-(-n // 128), -(-k // 128)])
    elif fmt == "mxfp4":
        t[base + ".weight"] = ("I8", [n, k // 2])
        t[base + ".scale"] = ("F8_E8M0", [n, k // 32])
    else:
        raise ValueError(fmt)


def official_block(t, p, ratio, hash_layer, mtp, lin, exp):
    official_linear(t, p + ".attn.wq_a", QL, D, lin)
    official_linear(t, p + ".attn.wq_b", H * HD, QL, lin)
    official_linear(t, p + ".attn.wkv", HD, D, lin)
    official_linear(t, p + ".attn.wo_a", G * R, H * HD // G, lin)
    official_linear(t, p + ".attn.wo_b", D, G * R, lin)
    t[p + ".attn.attn_sink"] = ("F32", [H])
    t[p + ".attn.q_norm.weight"] = ("BF16", [QL])
    t[p + ".attn.kv_norm.weight"] = ("BF16", [HD])
    if ratio:
        c = 2 if ratio == 4 else 1
        t[p + ".attn.compressor.wkv.weight"] = ("BF16", [c * HD, D])
        t[p + ".attn.compressor.wgate.weight"] = ("BF16", [c * HD, D])
        t[p + ".attn.compressor.ape"] = ("F32", [ratio, c * HD])
        t[p + ".attn.compressor.norm.weight"] = ("BF16", [HD])
    if ratio == 4:
        official_linear(t, p + ".attn.indexer.wq_b", INH * IHD, QL, lin)
        t[p + ".attn.indexer.weights_proj.weight"] = ("BF16", [INH, D])
        t[p + ".attn.indexer.compressor.wkv.weight"] = ("BF16", [2 * IHD, D])
        t[p + ".attn.indexer.compressor.wgate.weight"] = ("BF16", [2 * IHD, D])
        t[p + ".attn.indexer.compressor.ape"] = ("F32", [4, 2 * IHD])
        t[p + ".attn.indexer.compressor.norm.weight"] = ("BF16", [IHD])
    t[p + ".ffn.gate.weight"] = ("BF16", [E, D])
    if hash_layer:
        t[p + ".ffn.gate.tid2eid"] = ("I64", [V, TOPK])
    else:
        t[p + ".ffn.gate.bias"] = ("F32", [E])
    official_linear(t, p + ".ffn.shared_experts.w1", I, D, lin)
    official_linear(t, p + ".ffn.shared_experts.w3", I, D, lin)
    official_linear(t, p + ".ffn.shared_experts.w2", D, I, lin)
    for e in range(E):
        official_linear(t, f"{p}.ffn.experts.{e}.w1", I, D, exp)
        official_linear(t, f"{p}.ffn.experts.{e}.w3", I, D, exp)
        official_linear(t, f"{p}.ffn.experts.{e}.w2", D, I, exp)
    for w in ("attn", "ffn"):
        t[f"{p}.{w}_norm.weight"] = ("BF16", [D])
        t[f"{p}.hc_{w}_fn"] = ("F32", [24, 4 * D])
        t[f"{p}.hc_{w}_base"] = ("F32", [24])
        t[f"{p}.hc_{w}_scale"] = ("F32", [3])
    if mtp:
        official_linear(t, p + ".e_proj", D, D, lin)
        official_linear(t, p + ".h_proj", D, D, lin)
        for n in ("enorm", "hnorm", "norm"):
            t[f"{p}.{n}.weight"] = ("BF16", [D])
        t[p + ".hc_head_fn"] = ("F32", [4, 4 * D])
        t[p + ".hc_head_base"] = ("F32", [4])
        t[p + ".hc_head_scale"] = ("F32", [1])


def official_tensors(lin, exp, with_mtp):
    t = {"embed.weight": ("BF16", [V, D]), "head.weight": ("BF16", [V, D]),
         "norm.weight": ("BF16", [D]), "hc_head_fn": ("F32", [4, 4 * D]),
         "hc_head_base": ("F32", [4]), "hc_head_scale": ("F32", [1])}
    for b in range(L):
        official_block(t, f"layers.{b}", RATIOS[b], b < N_HASH, False, lin, exp)
    if with_mtp:
        official_block(t, "mtp.0", RATIOS[L], False, True, lin, exp)
    return t


def official_config(expert_dtype=None, quant=None):
    c = {
        "architectures": ["DeepseekV4ForCausalLM"], "model_type": "deepseek_v4",
        "vocab_size": V, "hidden_size": D, "num_hidden_layers": L,
        "num_attention_heads": H, "num_key_value_heads": 1, "head_dim": HD,
        "qk_rope_head_dim": 16, "q_lora_rank": QL, "o_groups": G, "o_lora_rank": R,
        "n_routed_experts": E, "n_shared_experts": 1, "num_experts_per_tok": TOPK,
        "moe_intermediate_size": I, "routed_scaling_factor": 1.5,
        "index_n_heads": INH, "index_head_dim": IHD, "index_topk": 4,
        "num_hash_layers": N_HASH, "num_nextn_predict_layers": 1,
        "hc_mult": 4, "hc_sinkhorn_iters": 20, "hc_eps": 1e-6, "rms_norm_eps": 1e-6,
        "sliding_window": 32, "swiglu_limit": 10.0, "scoring_func": "sqrtsoftplus",
        "norm_topk_prob": True, "rope_theta": 10000.0, "compress_rope_theta": 160000.0,
        "max_position_embeddings": 4096,
        "rope_scaling": {"type": "yarn", "factor": 16, "original_max_position_embeddings": 65536,
                         "beta_fast": 32, "beta_slow": 1},
        "compress_ratios": RATIOS, "torch_dtype": "bfloat16",
    }
    if expert_dtype is not None:
        c["expert_dtype"] = expert_dtype
    if quant is not None:
        c["quantization_config"] = quant
    return c


# ---------------------------------------------------------------- HF

def hf_config(quant=None):
    from transformers.models.deepseek_v4.configuration_deepseek_v4 import DeepseekV4Config
    cfg = DeepseekV4Config(
        vocab_size=V, hidden_size=D, num_hidden_layers=L, num_attention_heads=H,
        num_key_value_heads=1, head_dim=HD, partial_rotary_factor=16 / HD, q_lora_rank=QL,
        o_groups=G, o_lora_rank=R, n_routed_experts=E, n_shared_experts=1,
        num_experts_per_tok=TOPK, moe_intermediate_size=I, index_n_heads=INH,
        index_head_dim=IHD, index_topk=4, sliding_window=32, max_position_embeddings=4096,
        layer_types=["sliding_attention", "compressed_sparse_attention",
                     "heavily_compressed_attention"],
        mlp_layer_types=["hash_moe", "moe", "moe"], num_nextn_predict_layers=1)
    d = cfg.to_dict()
    d["architectures"] = ["DeepseekV4ForCausalLM"]
    if quant is not None:
        d["quantization_config"] = quant
    return d


def hf_linear(t, base, n, k, fmt):
    if fmt == "bf16":
        t[base + ".weight"] = ("BF16", [n, k])
    elif fmt == "nvfp4":
        t[base + ".weight"] = ("U8", [n, k // 2])
        t[base + ".weight_scale"] = ("F8_E4M3", [n, k // 16])
        t[base + ".weight_scale_2"] = ("F32", [])
        t[base + ".input_scale"] = ("F32", [])
    else:
        raise ValueError(fmt)


def hf_block(t, p, ratio, hash_layer, mtp, lin, stacked, bf16_layers):
    def L_(base, n, k):
        hf_linear(t, base, n, k, "bf16" if base in bf16_layers else lin)
    a = p + ".self_attn"
    L_(a + ".q_a_proj", QL, D)
    L_(a + ".q_b_proj", H * HD, QL)
    L_(a + ".kv_proj", HD, D)
    L_(a + ".o_a_proj", G * R, H * HD // G)
    L_(a + ".o_b_proj", D, G * R)
    t[a + ".sinks"] = ("F32", [H])
    t[a + ".q_a_norm.weight"] = ("BF16", [QL])
    t[a + ".kv_norm.weight"] = ("BF16", [HD])
    if ratio:
        c = 2 if ratio == 4 else 1
        t[a + ".compressor.kv_proj.weight"] = ("BF16", [c * HD, D])
        t[a + ".compressor.gate_proj.weight"] = ("BF16", [c * HD, D])
        t[a + ".compressor.position_bias"] = ("F32", [ratio, c * HD])
        t[a + ".compressor.kv_norm.weight"] = ("BF16", [HD])
    if ratio == 4:
        x = a + ".compressor.indexer"
        t[x + ".q_b_proj.weight"] = ("BF16", [INH * IHD, QL])
        t[x + ".scorer.weights_proj.weight"] = ("BF16", [INH, D])
        t[x + ".kv_proj.weight"] = ("BF16", [2 * IHD, D])
        t[x + ".gate_proj.weight"] = ("BF16", [2 * IHD, D])
        t[x + ".position_bias"] = ("F32", [4, 2 * IHD])
        t[x + ".kv_norm.weight"] = ("BF16", [IHD])
    m = p + ".mlp"
    t[m + ".gate.weight"] = ("BF16", [E, D])
    if hash_layer:
        t[m + ".gate.tid2eid"] = ("I64", [V, TOPK])
    else:
        t[m + ".gate.e_score_correction_bias"] = ("F32", [E])
    L_(m + ".shared_experts.gate_proj", I, D)
    L_(m + ".shared_experts.up_proj", I, D)
    L_(m + ".shared_experts.down_proj", D, I)
    if stacked:
        t[m + ".experts.gate_up_proj"] = ("BF16", [E, 2 * I, D])
        t[m + ".experts.down_proj"] = ("BF16", [E, D, I])
    else:
        for e in range(E):
            L_(f"{m}.experts.{e}.gate_proj", I, D)
            L_(f"{m}.experts.{e}.up_proj", I, D)
            L_(f"{m}.experts.{e}.down_proj", D, I)
    t[p + ".input_layernorm.weight"] = ("BF16", [D])
    t[p + ".post_attention_layernorm.weight"] = ("BF16", [D])
    for w in ("attn_hc", "ffn_hc"):
        t[f"{p}.{w}.fn"] = ("F32", [24, 4 * D])
        t[f"{p}.{w}.base"] = ("F32", [24])
        t[f"{p}.{w}.scale"] = ("F32", [3])
    if mtp:
        L_(p + ".e_proj", D, D)
        L_(p + ".h_proj", D, D)
        for n in ("enorm", "hnorm", "norm"):
            t[f"{p}.{n}.weight"] = ("BF16", [D])
        t[p + ".hc_head.hc_fn"] = ("F32", [4, 4 * D])
        t[p + ".hc_head.hc_base"] = ("F32", [4])
        t[p + ".hc_head.hc_scale"] = ("F32", [1])


def hf_tensors(lin, stacked, with_mtp, bf16_layers=()):
    t = {"model.embed_tokens.weight": ("BF16", [V, D]), "lm_head.weight": ("BF16", [V, D]),
         "model.norm.weight": ("BF16", [D]), "model.hc_head.hc_fn": ("F32", [4, 4 * D]),
         "model.hc_head.hc_base": ("F32", [4]), "model.hc_head.hc_scale": ("F32", [1])}
    for b in range(L):
        hf_block(t, f"model.layers.{b}", RATIOS[b], b < N_HASH, False, lin, stacked, bf16_layers)
    if with_mtp:
        hf_block(t, f"model.layers.{L}", RATIOS[L], False, True, lin, stacked, bf16_layers)
    return t


def main():
    fp8 = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
           "weight_block_size": [128, 128]}
    write_ckpt("bf16", official_tensors("bf16", "bf16", True), official_config())
    write_ckpt("flash", official_tensors("fp8_e8m0", "mxfp4", True),
               official_config("fp4", dict(fp8, scale_fmt="ue8m0")))
    write_ckpt("flash_base", official_tensors("fp8_f32", "fp8_f32", False),
               official_config("fp8", fp8))
    excluded = "model.layers.0.self_attn.o_a_proj"
    left_behind = "model.layers.2.self_attn.o_a_proj"
    hfq = {"producer": {"name": "modelopt", "version": "0.29.0"},
           "quantization": {"quant_algo": "NVFP4", "group_size": 16, "kv_cache_quant_algo": None,
                            "exclude_modules": ["lm_head", "*.mlp.gate", excluded]}}
    write_ckpt("nvfp4", hf_tensors("nvfp4", False, False, (excluded, left_behind)), hf_config(),
               hfq)
    write_ckpt("hf_stacked", hf_tensors("bf16", True, True), hf_config())
    return 0


if __name__ == "__main__":
    sys.exit(main())
