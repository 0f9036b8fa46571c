#!/usr/bin/env bash
# Builds and runs gemv_bench (gemv_bench.cu) on a machine with an NVIDIA GPU:
# the current gemv.cu and act_quant.cu in variants (-D tunables of gemv.cu),
# each variant one binary and one table.
#
#   plugins/common_cuda/gemv_bench.sh [OUTDIR] [variant flags...]
#
# Each variant flag is a quoted list of -D options, e.g. "-DQPLUG_GEMV_PDL=0";
# with none, the defaults of gemv.cu. To build on a machine without a GPU and
# run elsewhere: STEP=build with BIN=<dir> builds the binaries into BIN, then
# STEP=run with the same BIN and variant flags runs them (default STEP=all
# does both in a temporary BIN). $TAG names the version (default v8);
# GEMV_BENCH_WAYS and GEMV_BENCH_ONLY pick the timed ways and layers (see
# gemv_bench.cu); GEMV_SRC builds another gemv.cu (an older version, to time
# it in the same run) in place of this directory's.
set -eu -o pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=${1:-/tmp/gemv_bench}
shift || true
mkdir -p "$OUT"
TAG=${TAG:-v8}
SRC=${GEMV_SRC:-$HERE/gemv.cu}
STEP=${STEP:-all}
NVCC=${NVCC:-nvcc}
B=${BIN:-$(mktemp -d)}
mkdir -p "$B"
[ $# -gt 0 ] || set -- ""
if [ "$STEP" != run ]; then
NV="$NVCC -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -I$ROOT/core/include -I$HERE"
$NV -c "$HERE/gemv_bench.cu" -o "$B/gemv_bench.o"
$NV -c "$HERE/act_quant.cu" -o "$B/act_quant.o"
i=0
for flags in "$@"; do
    # shellcheck disable=SC2086
    $NV $flags -Xptxas -v -c "$SRC" -o "$B/gemv_$i.o" 2>"$OUT/ptxas_$i.log"
    $NV "$B/gemv_$i.o" "$B/act_quant.o" "$B/gemv_bench.o" -o "$B/gemv_bench_$i"
    i=$((i + 1))
done
fi
[ "$STEP" != build ] || exit 0
i=0
for flags in "$@"; do
    "$B/gemv_bench_$i" "$TAG${flags:+ [$flags]}" | tee "$OUT/bench_$i.md"
    i=$((i + 1))
done
