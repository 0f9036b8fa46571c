#!/usr/bin/env bash
# The README's first command: build qplug, synthesize a tiny DeepSeek V4
# checkpoint (the embedded default), show the resolver's plan and run it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" >/dev/null

q=build/bin/qplug
ckpt=build/demo/tiny-flash
rm -rf "$ckpt"
mkdir -p build/demo
"$q" synth --preset tiny --format flash --out "$ckpt"
echo "== qplug plan (V4-Flash layout: FP8 linear + MXFP4 experts) =="
"$q" plan --checkpoint "$ckpt"
echo "== qplug load =="
"$q" load --checkpoint "$ckpt"
