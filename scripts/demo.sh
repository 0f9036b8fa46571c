#!/usr/bin/env bash
# The README's first command: build qplug, synthesize a tiny DeepSeek V4
# checkpoint (the embedded default), show the resolver's plan, load it, and
# run it: greedy generation with MTP speculative decoding, tokens/s, and how
# far native precision lands from reference precision.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
mkdir -p build
if ! { cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build -j"$(nproc)"; } \
     >build/demo-build.log 2>&1; then
  tail -40 build/demo-build.log
  echo "demo: build failed (full log: build/demo-build.log)" >&2
  exit 1
fi

q=build/bin/qplug
ckpt=build/demo/tiny-flash
prompt=3,14,15,92,65,35,89,79,32,38,46,26,43,38,32,79
rm -rf "$ckpt"
mkdir -p build/demo
"$q" synth --preset tiny --format flash --out "$ckpt"

echo "== qplug plan: a tiny V4-Flash layout (FP8 linear + MXFP4 experts), first rows and summary =="
"$q" plan --checkpoint "$ckpt" 2>/dev/null | sed -n '1,10p;$p'

echo "== qplug load =="
"$q" load --checkpoint "$ckpt" 2>/dev/null

echo "== qplug run: native precision, greedy, MTP speculative decoding, compared with reference =="
"$q" run --checkpoint "$ckpt" --tokens "$prompt" --generate 16 --speculative mtp \
    --compare-reference 2>/dev/null
