#!/usr/bin/env python3
"""Writes the conformance fixtures under tests/data/conformance/.

Each file holds, per layer group ("linear", "grouped", "moe"), the quantized
tensors exactly as a checkpoint stores them (slot names relative to the
layer, prefixed by the group) and, for quantized formats, the exactly
dequantized fp32 values as "deq.<group>[.experts.<e>.<w>]". Quantization and
dequantization use ml_dtypes and numpy only, so the plugins' own codecs never
grade themselves. BF16 weights carry no deq tensor: widening BF16 to fp32 is
a bit shift the driver does itself.

Run with the project's venv:  /tmp/venv/bin/python tests/tools/gen_conformance_fixtures.py
The dimensions here must match the case table in tests/conformance/cases.h.
"""
import json
import os
import struct
import sys

import ml_dtypes
import numpy as np

E4M3 = ml_dtypes.float8_e4m3fn
E8M0 = ml_dtypes.float8_e8m0fnu
E2M1 = ml_dtypes.float4_e2m1fn

LIN_N, LIN_K = 160, 256          # 2 row tiles (one partial) x 2 column tiles
GRP_G, GRP_N, GRP_K = 2, 64, 256 # wo_a: [G*n, k]; both groups share a scale tile row
MOE_E, MOE_D, MOE_I = 4, 128, 32 # w1/w3 [I, D], w2 [D, I]
MO_N, MO_K = 96, 128             # ModelOpt FP8 per-tensor / per-channel linears
SHARDS = (("wkv", 64), ("wgate", 96))  # sharded linear: n = 160
SHARD_K = 128

# NVFP4 input scales: amax/(448*6) for the activation ranges the driver
# draws (x ~ N(0,1), |x| < 6 in practice; SwiGLU output below 2 with the
# case's swiglu_limit 1.5).
IN_SCALE_X = np.float32(6.0 / 2688.0)
IN_SCALE_X_ALT = np.float32(7.0 / 2688.0)
IN_SCALE_H = np.float32(2.0 / 2688.0)


class Writer:
    """Minimal safetensors writer: contiguous payloads (the format allows no
    gaps), the header padded with spaces to a multiple of 8 bytes."""

    def __init__(self):
        self.items = []

    def add(self, name, dtype, shape, raw):
        self.items.append((name, dtype, list(shape), bytes(raw)))

    def f32(self, name, a):
        a = np.array(a, dtype=np.float32, order="C")  # keeps 0-d scalars 0-d
        self.add(name, "F32", a.shape, a.tobytes())

    def save(self, path):
        header, off, blobs = {}, 0, []
        for name, dtype, shape, raw in self.items:
            header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
            blobs.append(raw)
            off += len(raw)
        h = json.dumps(header, separators=(",", ":")).encode()
        h += b" " * ((-len(h)) % 8)
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(h)))
            f.write(h)
            for b in blobs:
                f.write(b)


def weights(rng, rows, cols, gain=1.0):
    # Rows of unit-variance dot products with unit-variance inputs.
    return (rng.standard_normal((rows, cols)) * gain / np.sqrt(cols)).astype(np.float32)


def ceil_log2_pow2(v):
    """2^ceil(log2(v)) for positive float32 v, computed exactly with frexp."""
    m, e = np.frexp(np.float32(v))
    e = np.where(m == 0.5, e - 1, e)
    return e.astype(np.int64)


def quant_fp8_block(w, ue8m0):
    rows, cols = w.shape
    tr, tc = -(-rows // 128), -(-cols // 128)
    q = np.zeros_like(w, dtype=E4M3)
    deq = np.zeros_like(w)
    scale = np.zeros((tr, tc), dtype=np.float32)
    for i in range(tr):
        for j in range(tc):
            blk = w[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128]
            amax = np.float32(max(np.abs(blk).max(), 1e-4))
            s = np.float32(amax / np.float32(448.0))
            if ue8m0:
                s = np.float32(2.0) ** ceil_log2_pow2(s)
                s = np.float32(s)
            scale[i, j] = s
            qb = (blk / s).astype(E4M3)
            q[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128] = qb
            deq[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128] = qb.astype(np.float32) * s
    if ue8m0:
        sraw = scale.astype(E8M0).view(np.uint8)
        assert np.array_equal(sraw.view(E8M0).astype(np.float32), scale)
        return q, ("F8_E8M0", sraw), deq
    return q, ("F32", scale), deq


def pack_e2m1(q):
    codes = q.view(np.uint8) & 0xF
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)


def quant_mxfp4(w):
    rows, cols = w.shape
    g = w.reshape(rows, cols // 32, 32)
    amax = np.abs(g).max(axis=2)
    amax = np.maximum(amax, np.float32(1e-30))
    e = ceil_log2_pow2(amax / np.float32(6.0))  # smallest 2^e with amax/2^e <= 6
    s = np.ldexp(np.float32(1.0), e).astype(np.float32)
    q = (g / s[:, :, None]).astype(E2M1)
    deq = (q.astype(np.float32) * s[:, :, None]).reshape(rows, cols)
    sbytes = (e + 127).astype(np.uint8)
    assert np.array_equal(sbytes.view(E8M0).astype(np.float32), s)
    return pack_e2m1(q.reshape(rows, cols)), sbytes, deq


def quant_nvfp4(w):
    rows, cols = w.shape
    ws2 = np.float32(np.abs(w).max() / np.float32(448.0 * 6.0))
    g = w.reshape(rows, cols // 16, 16)
    bamax = np.abs(g).max(axis=2)
    sf = ((bamax / np.float32(6.0)) / ws2).astype(E4M3)
    sfv = sf.astype(np.float32)
    step = (sfv * ws2)[:, :, None]
    q = np.where(step > 0, g / np.where(step > 0, step, 1), 0).astype(E2M1)
    deq = ((q.astype(np.float32) * sfv[:, :, None]) * ws2).reshape(rows, cols)
    return pack_e2m1(q.reshape(rows, cols)), sf.view(np.uint8), ws2, deq


def add_fp8_block(wr, prefix, w, ue8m0):
    q, (sdt, s), deq = quant_fp8_block(w, ue8m0)
    wr.add(prefix + ".weight", "F8_E4M3", q.shape, q.view(np.uint8).tobytes())
    wr.add(prefix + ".scale", sdt, s.shape, np.ascontiguousarray(s).tobytes())
    return deq


def add_mxfp4(wr, prefix, w, dtype):
    packed, s, deq = quant_mxfp4(w)
    wr.add(prefix + ".weight", dtype, packed.shape, packed.tobytes())
    wr.add(prefix + ".scale", "F8_E8M0", s.shape, s.tobytes())
    return deq


def add_nvfp4(wr, prefix, w, input_scale):
    packed, sf, ws2, deq = quant_nvfp4(w)
    wr.add(prefix + ".weight", "U8", packed.shape, packed.tobytes())
    wr.add(prefix + ".weight_scale", "F8_E4M3", sf.shape, sf.tobytes())
    wr.f32(prefix + ".weight_scale_2", np.array(ws2, dtype=np.float32).reshape(()))
    wr.f32(prefix + ".input_scale", np.array(input_scale, dtype=np.float32).reshape(()))
    return deq, ws2


def experts(rng):
    out = []
    for e in range(MOE_E):
        # w3 gets a different gain so its NVFP4 global differs from w1's.
        out.append({"w1": weights(rng, MOE_I, MOE_D, 1.0),
                    "w3": weights(rng, MOE_I, MOE_D, 2.5),
                    "w2": weights(rng, MOE_D, MOE_I, 1.0)})
    return out


def main(outdir):
    os.makedirs(outdir, exist_ok=True)
    rng = np.random.default_rng(20240611)

    # none-bf16: linear, grouped, moe.
    wr = Writer()
    def bf16(name, w):
        b = w.astype(ml_dtypes.bfloat16)
        wr.add(name, "BF16", b.shape, b.view(np.uint16).tobytes())
    bf16("linear.weight", weights(rng, LIN_N, LIN_K))
    bf16("grouped.weight", weights(rng, GRP_G * GRP_N, GRP_K))
    for e, ex in enumerate(experts(rng)):
        for w in ("w1", "w3", "w2"):
            bf16(f"moe.experts.{e}.{w}.weight", ex[w])
    wr.save(os.path.join(outdir, "none-bf16.safetensors"))

    # fp8_block-f32: linear + Flash-Base experts (F32 scales).
    wr = Writer()
    wr.f32("deq.linear", add_fp8_block(wr, "linear", weights(rng, LIN_N, LIN_K), False))
    for e, ex in enumerate(experts(rng)):
        for w in ("w1", "w3", "w2"):
            p = f"moe.experts.{e}.{w}"
            wr.f32("deq." + p, add_fp8_block(wr, p, ex[w], False))
    wr.save(os.path.join(outdir, "fp8_block-f32.safetensors"))

    # fp8_block-e8m0: linear + grouped wo_a (tiles follow the full weight).
    wr = Writer()
    wr.f32("deq.linear", add_fp8_block(wr, "linear", weights(rng, LIN_N, LIN_K), True))
    wr.f32("deq.grouped", add_fp8_block(wr, "grouped", weights(rng, GRP_G * GRP_N, GRP_K), True))
    wr.save(os.path.join(outdir, "fp8_block-e8m0.safetensors"))

    # ModelOpt FP8 per-tensor and per-channel linears.
    wr = Writer()
    w = weights(rng, MO_N, MO_K)
    s = np.float32(np.abs(w).max() / np.float32(448.0))
    q = (w / s).astype(E4M3)
    wr.add("fp8t.weight", "F8_E4M3", q.shape, q.view(np.uint8).tobytes())
    wr.f32("fp8t.weight_scale", np.array(s, dtype=np.float32).reshape(()))
    wr.f32("fp8t.input_scale", np.array(IN_SCALE_X, dtype=np.float32).reshape(()))
    wr.f32("deq.fp8t", q.astype(np.float32) * s)
    w = weights(rng, MO_N, MO_K)
    s = (np.abs(w).max(axis=1, keepdims=True) / np.float32(448.0)).astype(np.float32)
    q = (w / s).astype(E4M3)
    wr.add("fp8c.weight", "F8_E4M3", q.shape, q.view(np.uint8).tobytes())
    wr.f32("fp8c.weight_scale", s)
    wr.f32("fp8c.input_scale", np.array(IN_SCALE_X, dtype=np.float32).reshape(()))
    wr.f32("deq.fp8c", q.astype(np.float32) * s)
    wr.save(os.path.join(outdir, "fp8_modelopt.safetensors"))

    # mxfp4: linear (U8) + experts (I8, as the official checkpoints tag them).
    wr = Writer()
    wr.f32("deq.linear", add_mxfp4(wr, "linear", weights(rng, LIN_N, LIN_K), "U8"))
    for e, ex in enumerate(experts(rng)):
        for w in ("w1", "w3", "w2"):
            p = f"moe.experts.{e}.{w}"
            wr.f32("deq." + p, add_mxfp4(wr, p, ex[w], "I8"))
    wr.save(os.path.join(outdir, "mxfp4.safetensors"))

    # nvfp4: linear, grouped, experts whose w1/w3 globals differ (and, for
    # expert 1, whose w1/w3 input scales differ too).
    wr = Writer()
    wr.f32("deq.linear", add_nvfp4(wr, "linear", weights(rng, LIN_N, LIN_K), IN_SCALE_X)[0])
    wr.f32("deq.grouped",
           add_nvfp4(wr, "grouped", weights(rng, GRP_G * GRP_N, GRP_K), IN_SCALE_X)[0])
    for e, ex in enumerate(experts(rng)):
        g = {}
        for w in ("w1", "w3", "w2"):
            p = f"moe.experts.{e}.{w}"
            ins = IN_SCALE_H if w == "w2" else (IN_SCALE_X_ALT if (e == 1 and w == "w3") else IN_SCALE_X)
            deq, g[w] = add_nvfp4(wr, p, ex[w], ins)
            wr.f32("deq." + p, deq)
        assert g["w1"] != g["w3"], "w1 and w3 globals must differ"
    wr.save(os.path.join(outdir, "nvfp4.safetensors"))

    # sharded-bf16: one sharded linear (ABI 1.1), the compressor's layout:
    # shards "wkv" then "wgate" as separate BF16 tensors of different row
    # counts, and the fused reference "deq.comp" = their rows concatenated
    # in shard order, widened to fp32 by ml_dtypes. Its own generator keeps
    # the other fixtures byte-identical.
    rng = np.random.default_rng(20250301)
    wr = Writer()
    parts = []
    for name, rows in SHARDS:
        b = weights(rng, rows, SHARD_K).astype(ml_dtypes.bfloat16)
        wr.add(f"comp.{name}.weight", "BF16", b.shape, b.view(np.uint16).tobytes())
        parts.append(b.astype(np.float32))
    wr.f32("deq.comp", np.concatenate(parts, axis=0))
    wr.save(os.path.join(outdir, "sharded-bf16.safetensors"))


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "data", "conformance"))
