#!/usr/bin/env python3
"""Writes the fused-MoE fixtures of the GPU conformance cases
(tests/data/conformance/gpu-moe-*.safetensors).

The CUDA MoE kernels need D and I multiples of 128, which the CPU cases'
I = 32 is not, so these cases have their own experts: E = 4, D = I = 128,
quantized and exactly dequantized ("deq.moe.experts.<e>.<w>") with numpy and
ml_dtypes by the quantizers of tests/tools/gen_conformance_fixtures.py
(imported, not copied), so the plugins' codecs never grade themselves.

Run with the project's venv:
  /tmp/venv/bin/python tests/conformance/gen_gpu_moe_fixtures.py
The dimensions must match CONF_GPU_CASES in tests/conformance/conformance.c.
"""
import importlib.util
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location(
    "gen", os.path.join(HERE, "..", "tools", "gen_conformance_fixtures.py"))
gen = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen)

E, D, I = 4, 128, 128


def experts(rng):
    out = []
    for _ in range(E):
        # w3 gets a different gain so its NVFP4 global differs from w1's.
        out.append({"w1": gen.weights(rng, I, D, 1.0),
                    "w3": gen.weights(rng, I, D, 2.5),
                    "w2": gen.weights(rng, D, I, 1.0)})
    return out


def main(outdir):
    os.makedirs(outdir, exist_ok=True)
    rng = np.random.default_rng(20250522)
    for name, ue8m0 in (("fp8_block-f32", False), ("fp8_block-e8m0", True)):
        wr = gen.Writer()
        for e, ex in enumerate(experts(rng)):
            for w in ("w1", "w3", "w2"):
                p = f"moe.experts.{e}.{w}"
                wr.f32("deq." + p, gen.add_fp8_block(wr, p, ex[w], ue8m0))
        wr.save(os.path.join(outdir, f"gpu-moe-{name}.safetensors"))
    wr = gen.Writer()
    for e, ex in enumerate(experts(rng)):
        for w in ("w1", "w3", "w2"):
            p = f"moe.experts.{e}.{w}"
            wr.f32("deq." + p, gen.add_mxfp4(wr, p, ex[w], "I8"))
    wr.save(os.path.join(outdir, "gpu-moe-mxfp4.safetensors"))
    wr = gen.Writer()
    for e, ex in enumerate(experts(rng)):
        g = {}
        for w in ("w1", "w3", "w2"):
            p = f"moe.experts.{e}.{w}"
            ins = gen.IN_SCALE_H if w == "w2" else (
                gen.IN_SCALE_X_ALT if (e == 1 and w == "w3") else gen.IN_SCALE_X)
            deq, g[w] = gen.add_nvfp4(wr, p, ex[w], ins)
            wr.f32("deq." + p, deq)
        assert g["w1"] != g["w3"], "w1 and w3 globals must differ"
    wr.save(os.path.join(outdir, "gpu-moe-nvfp4.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "data", "conformance"))
