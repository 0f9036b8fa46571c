#!/usr/bin/env bash
# One device run of the pre-quantized-activation work (bench/NOTES.md,
# preq2): builds only what it needs, runs the prequant GPU test, the RMSNorm
# kernel table of each kernel version (v2 twice, for the run-to-run spread),
# then the prefill table of `qplug bench --prequant`, and prints a short
# summary last. Logs (with the tables) go to $OUT, one per step.
# VARIANTS (default "vec4 pers flat hint"): the qplug_bench_prequant_* builds of
# norm_quant.cu to time as well (tests/unit/prequant.cmake).
#
#   bench/prequant_device.sh [ALT_NQ] [prefill bench args...]
#
# ALT_NQ: an older norm_quant.cu to time beside the current one ("-" for
# none). Needs the carried .debs/ (inih, cJSON: the device has no apt).
# BUDGET (seconds, default 285): the steps after the build are cut short
# so that the whole script ends within it.
set -u -o pipefail
START=$(date +%s)
BUDGET=${BUDGET:-285}
# Seconds left for a step: its own cap, or what the budget still allows
# (keeping 10 s for the summary), at least 5.
left() {
    local l=$(( BUDGET - 10 - ($(date +%s) - START) ))
    [ "$l" -gt "$1" ] && l=$1
    [ "$l" -lt 5 ] && l=5
    echo "$l"
}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-/tmp/qplug_prequant}
BUILD=${QPLUG_GPU_BUILD:-/tmp/qplug_prequant_build}
ALT=${1:--}
shift || true
mkdir -p "$OUT"
DEPS=/tmp/qplug_deps
if ! pkg-config --exists inih libcjson 2>/dev/null && ls "$ROOT"/.debs/*.deb >/dev/null 2>&1; then
    mkdir -p "$DEPS"
    for f in "$ROOT"/.debs/*.deb; do dpkg -x "$f" "$DEPS"; done
    sed -i "s|=/usr\$|=$DEPS/usr|; s|=/usr/|=$DEPS/usr/|" "$DEPS"/usr/lib/x86_64-linux-gnu/pkgconfig/*.pc
    export PKG_CONFIG_PATH="$DEPS/usr/lib/x86_64-linux-gnu/pkgconfig"
    export LD_LIBRARY_PATH="$DEPS/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    command -v pkg-config >/dev/null || export PKG_CONFIG="$DEPS/usr/bin/pkgconf"
fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/build.log"

alt_def=()
VARIANTS=${VARIANTS:-vec4 pers flat hint}
targets="gpu_test_gpu_prequant qplug_bench_run fp8_block mxfp4 nvfp4"
for v in $VARIANTS; do targets="$targets qplug_bench_prequant_$v gpu_test_gpu_prequant_$v"; done
if [ "$ALT" != "-" ]; then
    alt_def=(-DQPLUG_PREQUANT_ALT_NQ="$(cd "$(dirname "$ALT")" && pwd)/$(basename "$ALT")")
    targets="$targets qplug_bench_prequant_alt"
fi
t0=$(date +%s)
cmake -S "$ROOT" -B "$BUILD" -DBUILD_TESTING=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    ${PKG_CONFIG:+-DPKG_CONFIG_EXECUTABLE=$PKG_CONFIG} "${alt_def[@]}" >>"$OUT/build.log" 2>&1 &&
    cmake --build "$BUILD" -j"$(nproc)" --target $targets >>"$OUT/build.log" 2>&1
build_rc=$?
echo "== build rc $build_rc in $(( $(date +%s) - t0 )) s"
[ $build_rc = 0 ] || { grep -E "error" "$OUT/build.log" | head -20; exit 1; }

timeout "$(left 60)" ctest --test-dir "$BUILD" -R prequant -L gpu --output-on-failure >"$OUT/ctest.log" 2>&1
ctest_rc=$?
# The test's own lines (ctest shows them only on failure).
timeout "$(left 60)" "$BUILD/bin/gpu_test_gpu_prequant" >>"$OUT/ctest.log" 2>&1
for v in $VARIANTS; do
    echo "== gpu_test_gpu_prequant_$v" >>"$OUT/ctest.log"
    timeout "$(left 60)" "$BUILD/bin/gpu_test_gpu_prequant_$v" >>"$OUT/ctest.log" 2>&1
    echo "== variant $v test rc $?" | tee -a "$OUT/ctest.log"
done
grep -E "rel L2|differ|Test +#|tests passed|FAIL|checks" "$OUT/ctest.log" | tail -40

B=$BUILD/bin
[ "$ALT" != "-" ] && timeout "$(left 30)" "$B/qplug_bench_prequant_alt" --kernels-only >"$OUT/kernels_v1.log" 2>&1
timeout "$(left 30)" "$B/qplug_bench_run" --prequant --kernels-only >"$OUT/kernels_v2.log" 2>&1
for v in $VARIANTS; do
    timeout "$(left 30)" "$B/qplug_bench_prequant_$v" --kernels-only >"$OUT/kernels_$v.log" 2>&1
done
timeout "$(left 30)" "$B/qplug_bench_run" --prequant --kernels-only >"$OUT/kernels_v2_again.log" 2>&1
timeout "$(left 200)" "$B/qplug_bench_run" --prequant --no-kernels "$@" \
    >"$OUT/prefill.log" 2>&1
prefill_rc=$?

echo "== summary: ctest rc $ctest_rc, prefill bench rc $prefill_rc"
grep -h "Device-to-device" "$OUT"/kernels_v2.log 2>/dev/null | cut -c1-200
cat "$OUT/prefill.log" 2>/dev/null | grep -E "^\| (flash|pro)" | awk -F'|' '{printf "%-5s %-18s %-9s m=%-5s t0 %-6s tq %-6s ta %-7s t2 %-7s LT %-7s LT/ta %-5s LT/(t2-t0) %-5s %s\n", $2,$3,$5,$7,$8,$9,$10,$13,$14,$16,$17,$18}'
for v in v1 v2 $VARIANTS v2_again; do
    [ -f "$OUT/kernels_$v.log" ] || continue
    echo "-- kernels $v: d m | copy us | bf16 us %copy | ue8m0 us %copy | f32 us %copy | q/b"
    grep -E "^\| (4096|7168) " "$OUT/kernels_$v.log" | awk -F'|' '{printf "%s %s | %s | %s %s | %s %s | %s %s | %s %s\n", $2,$3,$6,$7,$8,$9,$10,$11,$12,$13,$14}'
done
