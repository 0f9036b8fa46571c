#!/usr/bin/env python3
"""Writes the seed corpora of tests/fuzz/corpus/ (standard library only).

Seeds are small valid inputs plus a few near-misses; libFuzzer mutates them.
Crashers found later are added by hand as corpus/<target>/crash-*.
"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data", "config")


def out(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def safetensors(entries, payload, meta=None, pad=True):
    hdr = {}
    if meta is not None:
        hdr["__metadata__"] = meta
    hdr.update(entries)
    h = json.dumps(hdr, separators=(",", ":")).encode()
    if pad:
        h += b" " * ((8 - (8 + len(h)) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + payload


out("safetensors", "two-tensors", safetensors(
    {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
     "b": {"dtype": "BF16", "shape": [4], "data_offsets": [16, 24]}}, bytes(range(24))))
out("safetensors", "fp4-meta", safetensors(
    {"e": {"dtype": "F4", "shape": [2, 5], "data_offsets": [0, 5]},
     "s": {"dtype": "F8_E8M0", "shape": [2, 1], "data_offsets": [5, 7]},
     "z": {"dtype": "I64", "shape": [], "data_offsets": [8, 16]}}, bytes(16), meta={"format": "pt"}))
out("safetensors", "empty", safetensors({}, b""))
out("safetensors", "overlap", safetensors(
    {"a": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]},
     "b": {"dtype": "U8", "shape": [8], "data_offsets": [4, 12]}}, bytes(12)))
out("safetensors", "short", b"\x10\x00\x00")

for sub, files in [("v4-flash", ["config.json"]), ("nvfp4-hf", ["config.json", "hf_quant_config.json"])]:
    parts = [open(os.path.join(DATA, sub, f), "rb").read() for f in files]
    out("config", sub, b"\0".join(parts))
out("config", "minimal", json.dumps({
    "vocab_size": 100, "hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 8,
    "n_routed_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
    "compress_ratios": [0, 4, 128], "quantization_config": {
        "quant_method": "fp8", "scale_fmt": "ue8m0", "ignored_layers": ["head"]}}).encode())
out("config", "modelopt-fp8", json.dumps({
    "vocab_size": 100, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 8,
    "n_routed_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
    "layer_types": ["sliding_attention", "compressed_sparse_attention"],
    "mlp_layer_types": ["hash_moe", "moe"]}).encode() + b"\0" + json.dumps({
    "quantization": {"quant_algo": "FP8_PB_WO", "kv_cache_quant_algo": "FP8",
                     "exclude_modules": ["lm_head", "mtp*"]}}).encode())

out("policy", "full", b"""; deployment policy
[plugins]
dirs = /opt/qplug/plugins.d:/usr/lib/qplug

[rule megamoe]
match = layers.*.ffn.experts
plugin = w4a4_megamoe

[rule keep]
match = layers.1.**
plugin = unquantized

[megamoe]
fp4_activations = true

[runtime]
device = auto
threads = 0
""")
out("policy", "errors", b"[rule a]\nmatch = x\n  continued\n[bogus]\nkey\n")
out("policy", "empty-rule", b"[rule only]\n[runtime]\ndevice = cuda\n")
