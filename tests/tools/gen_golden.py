#!/usr/bin/env python3
"""Generates the golden fixtures for the DeepSeek V4 forward pass (tests/model).

A tiny DeepSeek V4 model with seeded random weights is written as a checkpoint
in four formats (bf16, flash, flash-base, nvfp4). The quantization is done here
with torch and ml_dtypes, never with qplug's own codecs. For every format the
checkpoint is read back from disk, dequantized exactly, loaded into
transformers' DeepseekV4ForCausalLM (eager attention, float32) and run on one
fixed token sequence; the logits are the golden reference that the C forward
pass must reproduce in reference precision.

Usage: /tmp/venv/bin/python tests/tools/gen_golden.py [--out tests/model/fixtures]
Needs torch, transformers (with models.deepseek_v4), ml_dtypes, numpy and
safetensors. Run it once; the outputs are committed, tests never run Python.
See tests/model/README.md for what each file holds.
"""

import argparse
import json
import math
import os
import shutil
import sys

import ml_dtypes
import numpy as np
import safetensors
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file, save_file
from transformers import DeepseekV4Config, DeepseekV4ForCausalLM
from transformers.models.deepseek_v4 import modeling_deepseek_v4 as dsv4

SEED = 4242
MAX_SEED_TRIES = 40
# Smallest accepted gaps at discrete decisions (see robust()): router score
# gap at top-k (scores are O(1)), indexer score gap at top-k relative to the
# largest score, top-1 logit margin of each greedy step.
MIN_ROUTER_GAP = 1e-4
MIN_INDEXER_REL_GAP = 1e-4
MIN_GREEDY_MARGIN = 1e-3
NUM_TOKENS = 160
GREEDY_PROMPT = 8
GREEDY_NEW = 8

# The tiny model. Every quantized matrix dimension is a multiple of 128 so the
# FP8 128x128 tiles, MXFP4 groups of 32 and NVFP4 groups of 16 all tile exactly.
TINY = dict(
    vocab_size=256,
    hidden_size=128,
    num_hidden_layers=3,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=128,
    qk_rope_head_dim=64,
    q_lora_rank=128,
    o_groups=2,
    o_lora_rank=128,
    n_routed_experts=4,
    n_shared_experts=1,
    num_experts_per_tok=2,
    moe_intermediate_size=128,
    routed_scaling_factor=1.5,
    scoring_func="sqrtsoftplus",
    norm_topk_prob=True,
    num_hash_layers=1,
    compress_ratios=[0, 4, 128],
    index_n_heads=8,
    index_head_dim=128,
    index_topk=8,
    sliding_window=32,
    hc_mult=4,
    hc_sinkhorn_iters=20,
    hc_eps=1e-6,
    rms_norm_eps=1e-6,
    swiglu_limit=10.0,
    rope_theta=10000.0,
    compress_rope_theta=160000.0,
    rope_scaling=dict(type="yarn", factor=16.0, original_max_position_embeddings=65536,
                      beta_fast=32, beta_slow=1),
    max_position_embeddings=1048576,
    num_nextn_predict_layers=0,
)

FORMATS = ("bf16", "flash", "flash-base", "nvfp4")

# In the nvfp4 checkpoint this one projection is left in BF16 and listed in
# exclude_modules, the way exporters sometimes leave a wo_a behind.
NVFP4_EXCLUDED = "model.layers.2.self_attn.o_a_proj"
# In the nvfp4 checkpoint every expert's gate and up share one weight_scale_2
# (what ModelOpt does for shards a server fuses), except this expert in every
# layer, whose gate and up carry their own, different global scales.
NVFP4_SPLIT_SCALE_EXPERT = 1

E4M3_MAX = 448.0
E2M1_MAX = 6.0
# E2M1 magnitudes by code 0..7; bit 3 of a code is the sign.
E2M1_VALUES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=np.float64)


# --------------------------------------------------------------------------
# Tensor inventory: official name, transformers name, shape, storage kind.
# --------------------------------------------------------------------------
#
# Kinds: "linear" (FP8 block in flash/flash-base, NVFP4 in nvfp4), "expert"
# (MXFP4 in flash, FP8 with F32 scales in flash-base, NVFP4 in nvfp4), "bf16"
# (BF16 in every format), "f32" (F32 in every format), "i64" (tid2eid).
# A module entry names a module: its tensors are `<name>.weight` (+ scales);
# a parameter entry names the tensor itself.


class Entry:
    def __init__(self, off, hf, shape, kind, module):
        self.off = off
        self.hf = hf
        self.shape = tuple(shape)
        self.kind = kind
        self.module = module

    def off_weight(self):
        return self.off + ".weight" if self.module else self.off

    def hf_weight(self):
        return self.hf + ".weight" if self.module else self.hf


def inventory(c):
    D, V, H, hd = c["hidden_size"], c["vocab_size"], c["num_attention_heads"], c["head_dim"]
    ql, G, R = c["q_lora_rank"], c["o_groups"], c["o_lora_rank"]
    E, I, k = c["n_routed_experts"], c["moe_intermediate_size"], c["num_experts_per_tok"]
    nI, dI = c["index_n_heads"], c["index_head_dim"]
    hc = c["hc_mult"]
    mix = (2 + hc) * hc
    out = []

    def mod(off, hf, shape, kind):
        out.append(Entry(off, hf, shape, kind, True))

    def par(off, hf, shape, kind):
        out.append(Entry(off, hf, shape, kind, False))

    mod("embed", "model.embed_tokens", (V, D), "bf16")
    mod("head", "lm_head", (V, D), "bf16")
    mod("norm", "model.norm", (D,), "bf16")
    par("hc_head_fn", "model.hc_head.hc_fn", (hc, hc * D), "f32")
    par("hc_head_base", "model.hc_head.hc_base", (hc,), "f32")
    par("hc_head_scale", "model.hc_head.hc_scale", (1,), "f32")
    for L, ratio in enumerate(c["compress_ratios"]):
        o, h = f"layers.{L}.", f"model.layers.{L}."
        mod(o + "attn_norm", h + "input_layernorm", (D,), "bf16")
        mod(o + "ffn_norm", h + "post_attention_layernorm", (D,), "bf16")
        for site in ("attn", "ffn"):
            par(o + f"hc_{site}_fn", h + f"{site}_hc.fn", (mix, hc * D), "f32")
            par(o + f"hc_{site}_base", h + f"{site}_hc.base", (mix,), "f32")
            par(o + f"hc_{site}_scale", h + f"{site}_hc.scale", (3,), "f32")
        a, s = o + "attn.", h + "self_attn."
        par(a + "attn_sink", s + "sinks", (H,), "f32")
        mod(a + "wq_a", s + "q_a_proj", (ql, D), "linear")
        mod(a + "q_norm", s + "q_a_norm", (ql,), "bf16")
        mod(a + "wq_b", s + "q_b_proj", (H * hd, ql), "linear")
        mod(a + "wkv", s + "kv_proj", (hd, D), "linear")
        mod(a + "kv_norm", s + "kv_norm", (hd,), "bf16")
        mod(a + "wo_a", s + "o_a_proj", (G * R, H * hd // G), "linear")
        mod(a + "wo_b", s + "o_b_proj", (D, G * R), "linear")
        if ratio:
            cw = 2 if ratio == 4 else 1
            cc, hc_ = a + "compressor.", s + "compressor."
            mod(cc + "wkv", hc_ + "kv_proj", (cw * hd, D), "bf16")
            mod(cc + "wgate", hc_ + "gate_proj", (cw * hd, D), "bf16")
            par(cc + "ape", hc_ + "position_bias", (ratio, cw * hd), "f32")
            mod(cc + "norm", hc_ + "kv_norm", (hd,), "bf16")
        if ratio == 4:
            ix, hx = a + "indexer.", s + "compressor.indexer."
            mod(ix + "wq_b", hx + "q_b_proj", (nI * dI, ql), "linear")
            mod(ix + "weights_proj", hx + "scorer.weights_proj", (nI, D), "bf16")
            mod(ix + "compressor.wkv", hx + "kv_proj", (2 * dI, D), "bf16")
            mod(ix + "compressor.wgate", hx + "gate_proj", (2 * dI, D), "bf16")
            par(ix + "compressor.ape", hx + "position_bias", (4, 2 * dI), "f32")
            mod(ix + "compressor.norm", hx + "kv_norm", (dI,), "bf16")
        f, m = o + "ffn.", h + "mlp."
        mod(f + "gate", m + "gate", (E, D), "bf16")
        if L < c["num_hash_layers"]:
            par(f + "gate.tid2eid", m + "gate.tid2eid", (V, k), "i64")
        else:
            par(f + "gate.bias", m + "gate.e_score_correction_bias", (E,), "f32")
        for w, p, shape in (("w1", "gate_proj", (I, D)), ("w2", "down_proj", (D, I)),
                            ("w3", "up_proj", (I, D))):
            mod(f + "shared_experts." + w, m + "shared_experts." + p, shape, "linear")
        for e in range(E):
            for w, p, shape in (("w1", "gate_proj", (I, D)), ("w2", "down_proj", (D, I)),
                                ("w3", "up_proj", (I, D))):
                mod(f + f"experts.{e}." + w, m + f"experts.{e}." + p, shape, "expert")
    return out


# --------------------------------------------------------------------------
# Random master weights (float32 holding bf16-exact values for BF16 tensors).
# --------------------------------------------------------------------------

def bf16_round(t):
    return t.to(torch.bfloat16).to(torch.float32)


def make_master(c, entries, gen):
    """Weights of sensible scale: projections N(0, 1/fan_in), norms near 1,
    routed/shared expert gate and up four times larger so that some of their
    outputs reach the SwiGLU clamp at 10, hyper-connection params small random."""
    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float32)

    w = {}
    for en in entries:
        name, shape = en.off_weight(), en.shape
        leaf = name.split(".")[-2] if en.module else name.split(".")[-1]
        if en.kind == "i64":
            V, k = shape
            rows = [torch.randperm(c["n_routed_experts"], generator=gen)[:k] for _ in range(V)]
            t = torch.stack(rows).to(torch.int64)
        elif en.kind == "f32":
            if name.endswith("_fn"):
                t = randn(*shape) * 0.02
            elif name.endswith("_base"):
                t = randn(*shape) * 0.5
            elif name.endswith("_scale"):
                t = 1.0 + 0.25 * randn(*shape)
            elif name.endswith("attn_sink"):
                t = randn(*shape)
            elif name.endswith("ape"):
                t = randn(*shape) * 0.5
            elif name.endswith("gate.bias"):
                t = randn(*shape) * 0.1
            else:
                raise ValueError(name)
        elif len(shape) == 1:
            t = 1.0 + 0.1 * randn(*shape)
        elif leaf == "embed":
            t = randn(*shape)
        else:
            fan_in = shape[1]
            std = 1.0 / math.sqrt(fan_in)
            if en.kind in ("linear", "expert") and leaf in ("w1", "w3") and ".ffn." in name:
                std *= 4.0
            t = randn(*shape) * std
        if en.kind in ("linear", "expert", "bf16"):
            t = bf16_round(t)
        w[name] = t.contiguous()
    return w


# --------------------------------------------------------------------------
# Quantizers (ml_dtypes encodes; torch and a hand-written E2M1 table decode).
# --------------------------------------------------------------------------

def ceil_pow2_exponent(x):
    """Smallest integer e with 2^e >= x, for x > 0, computed exactly."""
    m, e = np.frexp(x)
    return np.where(m == 0.5, e - 1, e).astype(np.int64)


def tile_amax(w, bn, bk):
    N, K = w.shape
    nb, kb = -(-N // bn), -(-K // bk)
    p = np.zeros((nb * bn, kb * bk), dtype=np.float64)
    p[:N, :K] = np.abs(w)
    return p.reshape(nb, bn, kb, bk).max(axis=(1, 3))


def expand_tiles(s, N, K, bn, bk):
    return np.repeat(np.repeat(s, bn, axis=0), bk, axis=1)[:N, :K]


def quant_fp8_block(w, ue8m0):
    """128x128 tiles: scale = amax/448 (F32) or 2^ceil(log2(amax/448)) (E8M0)."""
    w = w.numpy().astype(np.float64)
    N, K = w.shape
    amax = np.maximum(tile_amax(w, 128, 128), 1e-30)
    if ue8m0:
        exp = ceil_pow2_exponent(amax / E4M3_MAX)
        s = np.ldexp(1.0, exp)
        scale = torch.from_numpy((exp + 127).astype(np.uint8)).view(torch.float8_e8m0fnu)
        check = s.astype(np.float32).astype(ml_dtypes.float8_e8m0fnu).view(np.uint8)
        assert np.array_equal(check, (exp + 127).astype(np.uint8)), "E8M0 scale is not a power of two"
    else:
        s = (amax / E4M3_MAX).astype(np.float32).astype(np.float64)
        scale = torch.from_numpy(s.astype(np.float32))
    x = np.clip(w / expand_tiles(s, N, K, 128, 128), -E4M3_MAX, E4M3_MAX)
    q = x.astype(np.float32).astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
    return torch.from_numpy(q).view(torch.float8_e4m3fn), scale


def pack_e2m1(x):
    """x already scaled into [-6, 6]; RNE to E2M1 by ml_dtypes; element 2j in the
    low nibble, 2j+1 in the high nibble."""
    codes = x.astype(np.float32).astype(ml_dtypes.float4_e2m1fn).view(np.uint8) & 0x0F
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)


def quant_mxfp4(w):
    """Per 32 along `in`: scale 2^ceil(log2(amax/6)) as E8M0, packed E2M1 as I8."""
    w = w.numpy().astype(np.float64)
    N, K = w.shape
    amax = np.maximum(np.abs(w).reshape(N, K // 32, 32).max(axis=2), 1e-30)
    exp = ceil_pow2_exponent(amax / E2M1_MAX)
    x = np.clip(w / np.repeat(np.ldexp(1.0, exp), 32, axis=1), -E2M1_MAX, E2M1_MAX)
    packed = pack_e2m1(x)
    return (torch.from_numpy(packed.view(np.int8)),
            torch.from_numpy((exp + 127).astype(np.uint8)).view(torch.float8_e8m0fnu))


def nvfp4_global_scale(amax):
    return np.float32(amax / (6.0 * E4M3_MAX))


def quant_nvfp4(w, scale_2):
    """ModelOpt NVFP4: per-16 E4M3 scale = amax16/6/scale_2, codes =
    e2m1(w / (scale * scale_2)); scale_2 is the F32 global scale."""
    w = w.numpy().astype(np.float64)
    N, K = w.shape
    ws2 = float(np.float32(scale_2))
    amax16 = np.abs(w).reshape(N, K // 16, 16).max(axis=2)
    s16 = np.clip(amax16 / 6.0 / ws2, 0.0, E4M3_MAX).astype(np.float32).astype(ml_dtypes.float8_e4m3fn)
    eff = np.repeat(s16.astype(np.float64) * ws2, 16, axis=1)
    x = np.where(eff > 0, np.clip(w / np.where(eff > 0, eff, 1.0), -E2M1_MAX, E2M1_MAX), 0.0)
    return (torch.from_numpy(pack_e2m1(x)),
            torch.from_numpy(s16.view(np.uint8)).view(torch.float8_e4m3fn),
            torch.tensor(np.float32(ws2)))


# --------------------------------------------------------------------------
# Decoders, written apart from the quantizers: they only see file tensors.
# --------------------------------------------------------------------------

def unpack_e2m1(packed):
    b = packed.view(torch.uint8).numpy()
    codes = np.empty((b.shape[0], b.shape[1] * 2), dtype=np.uint8)
    codes[:, 0::2] = b & 0x0F
    codes[:, 1::2] = b >> 4
    mag = E2M1_VALUES[codes & 7]
    return np.where(codes & 8, -mag, mag)


def dequant_fp8_block(q, scale):
    v = q.to(torch.float64).numpy()
    N, K = v.shape
    if scale.dtype == torch.float8_e8m0fnu:
        s = np.ldexp(1.0, scale.view(torch.uint8).numpy().astype(np.int64) - 127)
    else:
        assert scale.dtype == torch.float32
        s = scale.to(torch.float64).numpy()
    return torch.from_numpy((v * expand_tiles(s, N, K, 128, 128)).astype(np.float32))


def dequant_mxfp4(packed, scale):
    v = unpack_e2m1(packed)
    s = np.ldexp(1.0, scale.view(torch.uint8).numpy().astype(np.int64) - 127)
    return torch.from_numpy((v * np.repeat(s, 32, axis=1)).astype(np.float32))


def dequant_nvfp4(packed, weight_scale, weight_scale_2):
    v = unpack_e2m1(packed)
    s = weight_scale.to(torch.float64).numpy() * float(weight_scale_2.item())
    return torch.from_numpy((v * np.repeat(s, 16, axis=1)).astype(np.float32))


# --------------------------------------------------------------------------
# Checkpoint writers.
# --------------------------------------------------------------------------

def official_config(c, fmt):
    cfg = {
        "architectures": ["DeepseekV4ForCausalLM"],
        "model_type": "deepseek_v4",
        "torch_dtype": "bfloat16",
        "bos_token_id": 0,
        "eos_token_id": 1,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
    }
    for key, val in c.items():
        cfg[key] = val
    if fmt == "flash":
        cfg["expert_dtype"] = "fp4"
        cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                      "scale_fmt": "ue8m0", "weight_block_size": [128, 128]}
    elif fmt == "flash-base":
        cfg["expert_dtype"] = "fp8"
        cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                      "weight_block_size": [128, 128]}
    return cfg


def hf_config_dict(hf_cfg):
    d = json.loads(hf_cfg.to_json_string(use_diff=False))
    d["architectures"] = ["DeepseekV4ForCausalLM"]
    d["dtype"] = "bfloat16"
    return d


def nvfp4_exclude_modules():
    return [
        "lm_head",
        "model.layers.*.mlp.gate",
        "model.layers.*.self_attn.compressor.kv_proj",
        "model.layers.*.self_attn.compressor.gate_proj",
        "model.layers.*.self_attn.compressor.indexer.kv_proj",
        "model.layers.*.self_attn.compressor.indexer.gate_proj",
        "model.layers.*.self_attn.compressor.indexer.scorer.weights_proj",
        NVFP4_EXCLUDED,
    ]


def build_official(entries, master, fmt):
    t = {}
    for en in entries:
        name, w = en.off_weight(), master[en.off_weight()]
        if en.kind == "f32" or en.kind == "i64":
            t[name] = w
        elif en.kind == "bf16" or fmt == "bf16":
            t[name] = w.to(torch.bfloat16)
        elif en.kind == "expert" and fmt == "flash":
            t[name], t[en.off + ".scale"] = quant_mxfp4(w)
        else:
            t[name], t[en.off + ".scale"] = quant_fp8_block(w, ue8m0=(fmt == "flash"))
    return t


def build_nvfp4(entries, master, calib):
    t = {}
    by_hf = {en.hf: en for en in entries}
    for en in entries:
        name, w = en.hf_weight(), master[en.off_weight()]
        if en.kind in ("f32", "i64"):
            t[name] = w
            continue
        if en.kind == "bf16" or en.hf == NVFP4_EXCLUDED:
            t[name] = w.to(torch.bfloat16)
            continue
        amax = float(w.abs().max())
        leaf = en.hf.rsplit(".", 1)[1]
        if leaf in ("gate_proj", "up_proj") and ".mlp." in en.hf:
            split = en.hf.endswith(f".experts.{NVFP4_SPLIT_SCALE_EXPERT}.{leaf}")
            if not split:
                base = en.hf.rsplit(".", 1)[0]
                amax = max(float(master[by_hf[base + ".gate_proj"].off_weight()].abs().max()),
                           float(master[by_hf[base + ".up_proj"].off_weight()].abs().max()))
        packed, ws, ws2 = quant_nvfp4(w, nvfp4_global_scale(amax))
        t[name] = packed
        t[en.hf + ".weight_scale"] = ws
        t[en.hf + ".weight_scale_2"] = ws2
        t[en.hf + ".input_scale"] = torch.tensor(np.float32(max(calib[en.hf], 1e-6) / (6.0 * E4M3_MAX)))
    return t


def write_sharded(tensors, outdir, n_shards=2):
    os.makedirs(outdir, exist_ok=True)
    names = list(tensors.keys())
    sizes = [tensors[n].numel() * tensors[n].element_size() for n in names]
    total = sum(sizes)
    shards, cur, acc = [[] for _ in range(n_shards)], 0, 0
    for n, sz in zip(names, sizes):
        if acc >= total * (cur + 1) / n_shards and cur < n_shards - 1:
            cur += 1
        shards[cur].append(n)
        acc += sz
    weight_map = {}
    for i, group in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"
        save_file({n: tensors[n].contiguous() for n in group}, os.path.join(outdir, fname),
                  metadata={"format": "pt"})
        for n in group:
            weight_map[n] = fname
    with open(os.path.join(outdir, "model.safetensors.index.json"), "w") as fp:
        json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
                  fp, indent=2)
        fp.write("\n")


def write_json(path, obj):
    with open(path, "w") as fp:
        json.dump(obj, fp, indent=2)
        fp.write("\n")


def read_sharded(ckdir):
    with open(os.path.join(ckdir, "model.safetensors.index.json")) as fp:
        index = json.load(fp)
    out = {}
    for fname in sorted(set(index["weight_map"].values())):
        part = load_file(os.path.join(ckdir, fname))
        for n, t in part.items():
            assert index["weight_map"][n] == fname, f"{n}: index says {index['weight_map'][n]}, found in {fname}"
            out[n] = t
    assert set(out) == set(index["weight_map"]), "index and shards disagree"
    return out


# --------------------------------------------------------------------------
# Read back and dequantize, in official names.
# --------------------------------------------------------------------------

def dequant_official(entries, t, fmt):
    w, used = {}, set()
    for en in entries:
        name = en.off_weight()
        x = t[name]
        used.add(name)
        if en.kind == "i64":
            assert x.dtype == torch.int64
            w[name] = x
        elif en.kind == "f32":
            assert x.dtype == torch.float32
            w[name] = x
        elif x.dtype == torch.bfloat16:
            assert en.kind == "bf16" or fmt == "bf16", name
            w[name] = x.to(torch.float32)
        else:
            sc = t[en.off + ".scale"]
            used.add(en.off + ".scale")
            if x.dtype == torch.int8:
                assert fmt == "flash" and en.kind == "expert", name
                assert tuple(x.shape) == (en.shape[0], en.shape[1] // 2)
                assert tuple(sc.shape) == (en.shape[0], en.shape[1] // 32) and sc.dtype == torch.float8_e8m0fnu
                w[name] = dequant_mxfp4(x, sc)
            else:
                assert x.dtype == torch.float8_e4m3fn and tuple(x.shape) == en.shape, name
                assert tuple(sc.shape) == (-(-en.shape[0] // 128), -(-en.shape[1] // 128)), name
                w[name] = dequant_fp8_block(x, sc)
    assert used == set(t), f"unused tensors: {sorted(set(t) - used)}"
    return w


def dequant_nvfp4_ckpt(entries, t):
    w, used = {}, set()
    for en in entries:
        x = t[en.hf_weight()]
        used.add(en.hf_weight())
        if en.kind in ("i64", "f32"):
            w[en.off_weight()] = x
        elif x.dtype == torch.bfloat16:
            assert en.kind == "bf16" or en.hf == NVFP4_EXCLUDED, en.hf
            w[en.off_weight()] = x.to(torch.float32)
        else:
            assert x.dtype == torch.uint8 and tuple(x.shape) == (en.shape[0], en.shape[1] // 2), en.hf
            ws, ws2 = t[en.hf + ".weight_scale"], t[en.hf + ".weight_scale_2"]
            isc = t[en.hf + ".input_scale"]
            assert ws.dtype == torch.float8_e4m3fn and tuple(ws.shape) == (en.shape[0], en.shape[1] // 16)
            assert ws2.dtype == torch.float32 and ws2.dim() == 0
            assert isc.dtype == torch.float32 and isc.dim() == 0 and float(isc) > 0
            used.update({en.hf + ".weight_scale", en.hf + ".weight_scale_2", en.hf + ".input_scale"})
            # input_scale is for activations only and never touches the weight.
            w[en.off_weight()] = dequant_nvfp4(x, ws, ws2)
    assert used == set(t), f"unused tensors: {sorted(set(t) - used)}"
    return w


def to_transformers(entries, w, c):
    """Official-named fp32 weights -> transformers state dict (stacked experts)."""
    sd = {}
    E = c["n_routed_experts"]
    for en in entries:
        if en.kind != "expert":
            sd[en.hf_weight()] = w[en.off_weight()]
    for L in range(c["num_hidden_layers"]):
        f = f"layers.{L}.ffn.experts."
        sd[f"model.layers.{L}.mlp.experts.gate_up_proj"] = torch.stack(
            [torch.cat([w[f + f"{e}.w1.weight"], w[f + f"{e}.w3.weight"]], dim=0) for e in range(E)])
        sd[f"model.layers.{L}.mlp.experts.down_proj"] = torch.stack([w[f + f"{e}.w2.weight"] for e in range(E)])
    return sd


# --------------------------------------------------------------------------
# Model runs.
# --------------------------------------------------------------------------

def hf_config(c):
    kw = dict(c)
    kw.pop("rope_scaling")
    y = c["rope_scaling"]
    kw["rope_parameters"] = {"rope_type": "yarn", "factor": y["factor"],
                             "original_max_position_embeddings": y["original_max_position_embeddings"],
                             "beta_fast": y["beta_fast"], "beta_slow": y["beta_slow"]}
    cfg = DeepseekV4Config(**kw)
    cfg._attn_implementation = "eager"
    return cfg


def build_model(cfg, sd):
    torch.manual_seed(0)
    model = DeepseekV4ForCausalLM(cfg).to(torch.float32)
    model.load_state_dict(sd, strict=True)
    model.eval()
    for k, v in model.state_dict().items():
        if k in sd:
            assert torch.equal(v, sd[k].to(v.dtype)), f"{k} did not load exactly"
    return model


class Margins:
    """Records the smallest gap at every discrete decision (router top-k,
    indexer top-k) so we know how far a reimplementation may drift before
    it picks differently."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.router = math.inf
        self.indexer = math.inf
        self.indexer_selecting_queries = 0

    def router_hook(self, mod, inputs, _out):
        flat = inputs[0].reshape(-1, mod.hidden_dim)
        s = F.softplus(F.linear(flat, mod.weight)).sqrt() + mod.e_score_correction_bias
        top = s.sort(dim=-1, descending=True).values
        self.router = min(self.router, float((top[:, mod.top_k - 1] - top[:, mod.top_k]).min()))

    def scorer_hook(self, _mod, _inputs, out):
        scores = out[0]  # [S, T]
        k = self.cfg.index_topk
        for pos in range(scores.shape[0]):
            ready = (pos + 1) // 4
            if ready > k:
                top = scores[pos, :ready].sort(descending=True).values
                scale = max(float(top.abs().max()), 1e-30)
                self.indexer = min(self.indexer, float(top[k - 1] - top[k]) / scale)
                self.indexer_selecting_queries += 1


def run_model(model, tokens):
    with torch.no_grad():
        return model(input_ids=tokens[None, :], use_cache=False).logits[0].float()


def greedy(model, prompt, n):
    seq = prompt.clone()
    margins = []
    with torch.no_grad():
        for _ in range(n):
            logits = model(input_ids=seq[None, :], use_cache=False).logits[0, -1]
            top = logits.topk(2).values
            margins.append(float(top[0] - top[1]))
            seq = torch.cat([seq, logits.argmax().reshape(1)])
        cached = model.generate(prompt[None, :], max_new_tokens=n, do_sample=False, min_new_tokens=n)
    out = seq[len(prompt):]
    agrees = bool(torch.equal(cached[0, len(prompt):], out))
    return out, torch.tensor(margins, dtype=torch.float32), agrees


def calibrate(model, tokens):
    """Input amax per linear module (transformers names), per-expert for the
    routed experts, from one run: the basis of the NVFP4 input_scale."""
    amax, hooks = {}, []

    def lin_hook(name):
        def f(_m, inputs, _o):
            amax[name] = max(amax.get(name, 0.0), float(inputs[0].abs().max()))
        return f

    def exp_hook(prefix):
        def f(m, inputs, _o):
            x, idx = inputs[0], inputs[1]
            for e in range(m.num_experts):
                rows = (idx == e).any(dim=-1)
                if not rows.any():
                    xa, ha = float(x.abs().max()), 1.0
                else:
                    xe = x[rows]
                    gu = F.linear(xe, m.gate_up_proj[e])
                    ha = float(m._apply_gate(gu).abs().max())
                    xa = float(xe.abs().max())
                amax[f"{prefix}.{e}.gate_proj"] = xa
                amax[f"{prefix}.{e}.up_proj"] = xa
                amax[f"{prefix}.{e}.down_proj"] = ha
        return f

    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            hooks.append(mod.register_forward_hook(lin_hook(name)))
        elif isinstance(mod, dsv4.DeepseekV4Experts):
            hooks.append(mod.register_forward_hook(exp_hook(name)))
    run_model(model, tokens)
    for h in hooks:
        h.remove()
    return amax


def same_bytes(a, b):
    return (a.dtype == b.dtype and a.shape == b.shape and
            torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8)))


def rel_l2(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


# --------------------------------------------------------------------------
# Main.
# --------------------------------------------------------------------------

def build_tensors(fmt, entries, master, calib):
    if fmt == "nvfp4":
        return build_nvfp4(entries, master, calib)
    return build_official(entries, master, fmt)


def dequant_tensors(fmt, entries, tensors):
    if fmt == "nvfp4":
        return dequant_nvfp4_ckpt(entries, tensors)
    return dequant_official(entries, tensors, fmt)


def evaluate(cfg, c, entries, w, tokens, prompt):
    """Runs transformers on exactly the weights `w`; returns logits, the
    greedy continuation and the decision margins."""
    model = build_model(cfg, to_transformers(entries, w, c))
    margins = Margins(cfg)
    hooks = []
    for mod in model.modules():
        if isinstance(mod, dsv4.DeepseekV4TopKRouter):
            hooks.append(mod.register_forward_hook(margins.router_hook))
        elif isinstance(mod, dsv4.DeepseekV4IndexerScorer):
            hooks.append(mod.register_forward_hook(margins.scorer_hook))
    logits = run_model(model, tokens)
    for h in hooks:
        h.remove()
    assert torch.isfinite(logits).all()
    gtoks, gmargins, gagree = greedy(model, prompt, GREEDY_NEW)
    rotary = model.model.rotary_emb
    info = dict(router_min_gap=margins.router, indexer_min_rel_gap=margins.indexer,
                indexer_selecting_queries=margins.indexer_selecting_queries,
                greedy=gtoks.tolist(), greedy_min_margin=float(gmargins.min()),
                greedy_cache_agrees=gagree, logits_rms=float(logits.pow(2).mean().sqrt()))
    golden = {
        "tokens": tokens.to(torch.int32),
        "logits": logits.contiguous(),
        "greedy_prompt": prompt.to(torch.int32),
        "greedy_tokens": gtoks.to(torch.int32),
        "greedy_margins": gmargins,
        "inv_freq_main": rotary.main_inv_freq.float().clone(),
        "inv_freq_compress": rotary.compress_inv_freq.float().clone(),
    }
    return golden, info


def robust(info):
    """A fixture is only useful if a correct reimplementation, whose fp32
    results differ from transformers' in the last bits, makes the same
    discrete choices: no near-ties in router or indexer top-k or in greedy."""
    return (info["router_min_gap"] >= MIN_ROUTER_GAP and info["indexer_min_rel_gap"] >= MIN_INDEXER_REL_GAP
            and info["greedy_min_margin"] >= MIN_GREEDY_MARGIN and info["greedy_cache_agrees"])


def draw(c, entries, seed):
    gen = torch.Generator().manual_seed(seed)
    master = make_master(c, entries, gen)
    tokens = torch.randint(0, c["vocab_size"], (NUM_TOKENS,), generator=gen, dtype=torch.int64)
    return master, tokens, tokens[:GREEDY_PROMPT].clone()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "model", "fixtures"))
    args = ap.parse_args()
    out = os.path.abspath(args.out)

    torch.set_num_threads(2)
    c = dict(TINY)
    cfg = hf_config(c)
    assert cfg.layer_types == ["sliding_attention", "compressed_sparse_attention",
                               "heavily_compressed_attention"], cfg.layer_types
    assert cfg.mlp_layer_types == ["hash_moe", "moe", "moe"], cfg.mlp_layer_types
    assert cfg.qk_rope_head_dim == c["qk_rope_head_dim"]
    # The sequence must reach past the window, complete one HCA block and
    # give the indexer more completed blocks than it keeps.
    assert NUM_TOKENS >= 128 + c["sliding_window"]
    assert NUM_TOKENS // 4 > c["index_topk"]
    entries = inventory(c)

    # Seed search: the first seed from SEED up whose discrete decisions have
    # clear margins in all four formats (checked in memory, before writing).
    for seed in range(SEED, SEED + MAX_SEED_TRIES):
        master, tokens, prompt = draw(c, entries, seed)
        calib = calibrate(build_model(cfg, to_transformers(entries, master, c)), tokens)
        infos = {}
        for fmt in FORMATS:
            w = dequant_tensors(fmt, entries, build_tensors(fmt, entries, master, calib))
            infos[fmt] = evaluate(cfg, c, entries, w, tokens, prompt)[1]
            if not robust(infos[fmt]):
                break
        ok = len(infos) == len(FORMATS) and all(robust(i) for i in infos.values())
        print(f"seed {seed}: {'ok' if ok else 'near-tie in ' + fmt}", flush=True)
        if ok:
            break
    else:
        raise SystemExit(f"no seed in [{SEED}, {SEED + MAX_SEED_TRIES}) gives clear margins")

    report = {}
    for fmt in FORMATS:
        fdir = os.path.join(out, fmt)
        ckdir = os.path.join(fdir, "checkpoint")
        if os.path.isdir(fdir):
            shutil.rmtree(fdir)
        os.makedirs(ckdir)
        tensors = build_tensors(fmt, entries, master, calib)
        if fmt == "nvfp4":
            write_json(os.path.join(ckdir, "config.json"), hf_config_dict(cfg))
            write_json(os.path.join(ckdir, "hf_quant_config.json"), {
                "producer": {"name": "modelopt", "version": "golden-fixture"},
                "quantization": {"quant_algo": "NVFP4", "group_size": 16, "kv_cache_quant_algo": None,
                                 "exclude_modules": nvfp4_exclude_modules()}})
        else:
            write_json(os.path.join(ckdir, "config.json"), official_config(c, fmt))
        write_sharded(tensors, ckdir)

        # Everything below sees only what is on disk.
        back = read_sharded(ckdir)
        assert set(back) == set(tensors)
        for n, t in tensors.items():
            assert same_bytes(back[n], t), f"{n} did not read back byte for byte"
        w = dequant_tensors(fmt, entries, back)

        # Unquantized tensors come back exactly; quantized ones stay near the
        # master weights; the hand-written E2M1 table agrees with ml_dtypes.
        worst = 0.0
        for en in entries:
            if en.kind not in ("linear", "expert"):
                assert torch.equal(w[en.off_weight()], master[en.off_weight()]), en.off
                continue
            err = rel_l2(w[en.off_weight()], master[en.off_weight()])
            worst = max(worst, err)
            bound = {"bf16": 0.0, "flash": 0.2, "flash-base": 0.05, "nvfp4": 0.2}[fmt]
            assert err <= bound, f"{fmt} {en.off}: quantization error {err}"
        if fmt in ("flash", "nvfp4"):
            sample = next(t for n, t in back.items() if n.endswith(".weight") and t.dtype in (torch.int8, torch.uint8))
            b = sample.view(torch.uint8).numpy()
            ref = np.stack([(b & 0xF), (b >> 4)], axis=-1).reshape(b.shape[0], -1).astype(np.uint8)
            ref = ref.view(ml_dtypes.float4_e2m1fn).astype(np.float64)
            assert np.array_equal(ref, unpack_e2m1(sample)), "E2M1 table disagrees with ml_dtypes"

        golden, info = evaluate(cfg, c, entries, w, tokens, prompt)
        assert robust(info) and info == infos[fmt], f"{fmt}: on-disk run differs from the in-memory one"
        meta = {"format": fmt, "generator": "tests/tools/gen_golden.py", "seed": str(seed),
                "torch": torch.__version__, "transformers": transformers.__version__,
                "ml_dtypes": ml_dtypes.__version__, "safetensors": safetensors.__version__}
        save_file(golden, os.path.join(fdir, "golden.safetensors"), metadata=meta)
        report[fmt] = dict(info, weight_rel_l2_max=worst)
        print(fmt, json.dumps(report[fmt]), flush=True)

    ref = load_file(os.path.join(out, "bf16", "golden.safetensors"))["logits"]
    for fmt in FORMATS[1:]:
        other = load_file(os.path.join(out, fmt, "golden.safetensors"))["logits"]
        top1 = float((other.argmax(-1) == ref.argmax(-1)).float().mean())
        print(f"{fmt} vs bf16 logits: rel_l2 {rel_l2(other, ref):.4f}, top-1 agreement {top1:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
