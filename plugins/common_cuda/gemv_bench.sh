#!/usr/bin/env bash
# Builds and runs gemv_bench (gemv_bench.cu) on a machine with an NVIDIA GPU:
# the current gemv.cu in variants (-D tunables) against the version of
# gemv.cu in commit $V2 (default 11f1e84, GEMV v4; name it with $V2_TAG),
# whose symbols are renamed to qplug_v2__*. The old source comes from git
# when the tree has history, else from $V2_SRC (a copy made beforehand, e.g.
# in build-gemvsrc/). $TAG names the current version (default v5).
#
#   plugins/common_cuda/gemv_bench.sh [OUTDIR] [variant flags...]
#
# Each variant flag is a quoted list of -D options, e.g. "-DQPLUG_GEMV_SPREAD=48";
# with none, the defaults of gemv.cu. The first variant is timed against v2.
# To build on a machine without a GPU and run elsewhere: STEP=build with
# BIN=<dir> builds the binaries into BIN, then STEP=run with the same BIN and
# variant flags runs them (default STEP=all does both in a temporary BIN).
set -eu -o pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=${1:-/tmp/gemv_bench}
shift || true
mkdir -p "$OUT"
V2=${V2:-11f1e84}
V2_TAG=${V2_TAG:-v4}
TAG=${TAG:-v5}
V2_SRC=${V2_SRC:-$ROOT/build-gemvsrc/gemv_v2.cu}
STEP=${STEP:-all}
B=${BIN:-$(mktemp -d)}
mkdir -p "$B"
[ $# -gt 0 ] || set -- ""
if [ "$STEP" != run ]; then
if git -C "$ROOT" cat-file -e "$V2:plugins/common_cuda/gemv.cu" 2>/dev/null; then
    git -C "$ROOT" show "$V2:plugins/common_cuda/gemv.cu" | sed 's/qplug_cuda__gemv_/qplug_v2__gemv_/g' >"$B/gemv_v2.cu"
else
    cp "$V2_SRC" "$B/gemv_v2.cu"
fi
NV="nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -I$ROOT/core/include -I$HERE"
$NV -c "$B/gemv_v2.cu" -o "$B/gemv_v2.o"
$NV -c "$HERE/gemv_bench.cu" -o "$B/gemv_bench.o"
i=0
for flags in "$@"; do
    # shellcheck disable=SC2086
    $NV $flags -Xptxas -v -c "$HERE/gemv.cu" -o "$B/gemv_$i.o" 2>"$OUT/ptxas_$i.log"
    $NV "$B/gemv_$i.o" "$B/gemv_v2.o" "$B/gemv_bench.o" -o "$B/gemv_bench_$i"
    i=$((i + 1))
done
fi
[ "$STEP" != build ] || exit 0
i=0
for flags in "$@"; do
    tag="$TAG${flags:+ [$flags]}"
    if [ $i = 0 ]; then
        "$B/gemv_bench_$i" --v2 "$tag" "$V2_TAG" | tee "$OUT/bench_$i.md"
    else
        "$B/gemv_bench_$i" --no-v2 "$tag" | tee "$OUT/bench_$i.md"
    fi
    i=$((i + 1))
done
