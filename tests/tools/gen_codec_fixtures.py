#!/usr/bin/env python3
"""Generates the expected values of tests/unit/test_codecs.c.

Every expected value comes from ml_dtypes, and each one is cross-checked
against torch's casts where torch has them (the script stops if the two
disagree), so the C codecs are tested against two independent
implementations, never against themselves. torch has no CPU cast for
float4_e2m1fn_x2, so E2M1 is checked against ml_dtypes and the table of
formats.md instead.

formats.md says encoders saturate: E4M3 to +-448 and E2M1 to +-6, while
ml_dtypes and torch turn overflow into NaN, so inputs are clamped before
the reference cast. E8M0 has no zero and no sign: ml_dtypes maps zero,
negatives, inf and NaN to the NaN byte 255, and torch maps zero to byte 0
and negatives to their magnitude; qplug follows ml_dtypes, so torch is
compared on positive finite inputs only.

Output (little-endian, in tests/data/codecs/):
  decode_e4m3.f32  256 float32: byte b decoded
  decode_e8m0.f32  256 float32
  decode_e2m1.f32  16 float32: code c decoded
  encode_in.f32    N float32 inputs (random, ties, out of range, specials)
  encode_e4m3.u8, encode_e8m0.u8, encode_e2m1.u8   N bytes each
  encode_bf16.u16, encode_f16.u16                  N uint16 each

Run: /tmp/venv/bin/python tests/tools/gen_codec_fixtures.py [outdir]
"""
import os
import sys

import ml_dtypes
import numpy as np
import torch

SEED = 20240607


def same_bits(a, b, what):
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape or not np.array_equal(a, b):
        bad = np.nonzero(a != b)[0][:10]
        raise SystemExit(f"{what}: ml_dtypes and torch disagree at {bad.tolist()}")


def same_floats(a, b, what):
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    ok = (a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b))
    if not ok.all():
        raise SystemExit(f"{what}: ml_dtypes and torch disagree at {np.nonzero(~ok)[0][:10].tolist()}")


def decode_tables():
    allbytes = np.arange(256, dtype=np.uint8)
    e4m3 = allbytes.view(ml_dtypes.float8_e4m3fn).astype(np.float32)
    same_floats(e4m3, torch.from_numpy(allbytes).view(torch.float8_e4m3fn).float().numpy(), "e4m3 decode")
    e8m0 = allbytes.view(ml_dtypes.float8_e8m0fnu).astype(np.float32)
    same_floats(e8m0, torch.from_numpy(allbytes).view(torch.float8_e8m0fnu).float().numpy(), "e8m0 decode")
    codes = np.arange(16, dtype=np.uint8)
    e2m1 = codes.view(ml_dtypes.float4_e2m1fn).astype(np.float32)
    table = np.array([0, .5, 1, 1.5, 2, 3, 4, 6], dtype=np.float32)
    same_floats(e2m1, np.concatenate([table, -table]), "e2m1 decode vs formats.md table")
    return e4m3, e8m0, e2m1


def midpoints(values):
    """Midpoints of consecutive distinct finite values, both signs."""
    v = np.unique(np.abs(values[np.isfinite(values)]).astype(np.float64))
    mids = (v[:-1] + v[1:]) / 2
    mids = mids.astype(np.float32)
    return np.concatenate([mids, -mids])


def encode_inputs(rng, e4m3, e2m1):
    parts = []
    # Random values over many binades, so every exponent of every format is hit.
    parts.append((rng.standard_normal(2000) * np.exp2(rng.uniform(-20, 20, 2000))).astype(np.float32))
    parts.append((rng.standard_normal(500) * np.exp2(rng.uniform(-3, 4, 500))).astype(np.float32))
    parts.append(np.exp2(rng.uniform(-135, 127.99, 600)).astype(np.float32))
    # Ties of each format: exactly halfway between neighbours.
    parts.append(midpoints(e4m3))
    parts.append(midpoints(e2m1))
    bf = (rng.standard_normal(300) * np.exp2(rng.uniform(-30, 30, 300))).astype(np.float32)
    bf = (bf.view(np.uint32) & 0xFFFF0000) | 0x8000  # a bf16 value plus half its ulp
    parts.append(bf.view(np.float32))
    bf_odd = (bf & 0xFFFF0000) | 0x18000  # odd bf16 mantissa plus half an ulp
    parts.append(bf_odd.astype(np.uint32).view(np.float32))
    h = (rng.standard_normal(300) * np.exp2(rng.uniform(-14, 15, 300))).astype(np.float16)
    hf = h.astype(np.float64)
    up = np.nextafter(h, np.float16(np.inf)).astype(np.float64)
    ties = ((hf + up) / 2)[np.isfinite(up)].astype(np.float32)
    parts.append(ties)
    parts.append((np.exp2(np.arange(-130, 128, dtype=np.float64)) * 1.5).astype(np.float32))  # e8m0 ties
    # Out of range and special values.
    parts.append(np.array([448, 449, 463.99, 464, 464.01, 480, 500, 1e9, 3.4e38, np.inf,
                           6, 6.5, 7, 100, 65504, 65519.99, 65520, 70000,
                           2.0 ** -9, 2.0 ** -10, 2.0 ** -10 * 1.0001, 2.0 ** -11, 2.0 ** -24, 2.0 ** -25,
                           2.0 ** -25 * 1.0001, 2.0 ** -26, 2.0 ** -127, 2.0 ** -128, 1e-45, 0.0,
                           0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 0.2],
                          dtype=np.float32))
    x = np.concatenate(parts).astype(np.float32)
    x = np.concatenate([x, -x[-40:], np.array([-0.0, -np.inf], dtype=np.float32)])
    assert not np.isnan(x).any()
    return x


def encodes(x):
    e4_in = np.clip(x, -448, 448)
    e4m3 = e4_in.astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
    same_bits(e4m3, torch.from_numpy(e4_in).to(torch.float8_e4m3fn).view(torch.uint8).numpy(), "e4m3 encode")

    e8m0 = x.astype(ml_dtypes.float8_e8m0fnu).view(np.uint8)
    pos = (x > 0) & np.isfinite(x)
    t8 = torch.from_numpy(x[pos]).to(torch.float8_e8m0fnu).view(torch.uint8).numpy()
    same_bits(e8m0[pos], t8, "e8m0 encode (positive inputs)")

    e2m1 = np.clip(x, -6, 6).astype(ml_dtypes.float4_e2m1fn).view(np.uint8)
    assert (e2m1 < 16).all()

    bf16 = x.astype(ml_dtypes.bfloat16).view(np.uint16)
    same_bits(bf16, torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16), "bf16 encode")

    with np.errstate(over="ignore"):
        f16 = x.astype(np.float16).view(np.uint16)
    same_bits(f16, torch.from_numpy(x).to(torch.float16).view(torch.int16).numpy().view(np.uint16), "f16 encode")
    return e4m3, e8m0, e2m1, bf16, f16


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "data", "codecs")
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(SEED)
    e4m3, e8m0, e2m1 = decode_tables()
    x = encode_inputs(rng, e4m3, e2m1)
    enc = encodes(x)
    files = {
        "decode_e4m3.f32": e4m3.astype("<f4"),
        "decode_e8m0.f32": e8m0.astype("<f4"),
        "decode_e2m1.f32": e2m1.astype("<f4"),
        "encode_in.f32": x.astype("<f4"),
        "encode_e4m3.u8": enc[0],
        "encode_e8m0.u8": enc[1],
        "encode_e2m1.u8": enc[2],
        "encode_bf16.u16": enc[3].astype("<u2"),
        "encode_f16.u16": enc[4].astype("<u2"),
    }
    for name, arr in files.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(np.ascontiguousarray(arr).tobytes())
    print(f"wrote {len(files)} files, {x.size} encode inputs, to {out}")


if __name__ == "__main__":
    main()
