#!/usr/bin/env bash
# The device command of the MoE v7 runs (bench/NOTES.md, "Fused MoE v7"),
# run from the repository root on the GPU machine with .debs carried:
# builds the targets the MoE checks need, runs `ctest -L gpu -R
# "moe|conformance"`, the standalone bench (gpu_test_gpu_moe bench), the
# ABI bench (qplug_bench_run --moe), ncu's per-kernel times of the default
# paths (gpu_test_gpu_moe profile) and compute-sanitizer memcheck of
# gpu_test_gpu_moe, each bounded by a timeout so that the whole fits one
# call; a summary table comes last. Logs go to $OUT. MOE7_VARIANTS adds
# comparison builds of the standalone bench with other macro values.
set -u -o pipefail
ROOT=$(pwd)
OUT=${OUT:-/tmp/moe7}
B=${MOE7_BUILD:-$ROOT/build-moe7-dev}
# Build logs and the ABI bench's JSON stay on the machine (at most 8 files
# come back); a failed build prints its errors.
LOGS=/tmp/moe7_logs
mkdir -p "$OUT" "$LOGS"
t0=$(date +%s)
el() { echo $(($(date +%s) - t0)); }

DEPS=/tmp/qplug_deps
mkdir -p "$DEPS"
for f in "$ROOT"/.debs/*.deb; do dpkg -x "$f" "$DEPS"; done
sed -i "s|=/usr\$|=$DEPS/usr|; s|=/usr/|=$DEPS/usr/|" "$DEPS"/usr/lib/x86_64-linux-gnu/pkgconfig/*.pc
export PKG_CONFIG_PATH="$DEPS/usr/lib/x86_64-linux-gnu/pkgconfig"
export LD_LIBRARY_PATH="$DEPS/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
command -v pkg-config >/dev/null || export PKG_CONFIG="$DEPS/usr/bin/pkgconf"

declare -A res
TARGETS="gpu_test_gpu_moe qplug_conformance_gpu unquantized fp8_block mxfp4 nvfp4 w4a4_megamoe"
# Comparison builds (MOE7_VARIANTS="name:-DMACRO=V,-DOTHER=W ..."), built
# next to the main one; MOE7_VARIANT_CTEST=1 runs the MoE ctest on them too.
vpids=()
for v in ${MOE7_VARIANTS:-}; do
    name=${v%%:*}
    flags=${v#*:}
    (cmake -S "$ROOT" -B "$B-$name" -DBUILD_TESTING=ON -DCMAKE_BUILD_TYPE=Release \
        "-DCMAKE_CUDA_FLAGS=${flags//,/ }" ${PKG_CONFIG:+-DPKG_CONFIG_EXECUTABLE=$PKG_CONFIG} &&
        cmake --build "$B-$name" -j6 --target $TARGETS) >"$LOGS/build_$name.log" 2>&1 &
    vpids+=($!)
done
cmake -S "$ROOT" -B "$B" -DBUILD_TESTING=ON -DCMAKE_BUILD_TYPE=Release \
    ${PKG_CONFIG:+-DPKG_CONFIG_EXECUTABLE=$PKG_CONFIG} >"$LOGS/build.log" 2>&1
if cmake --build "$B" -j10 --target $TARGETS qplug_bench_run >>"$LOGS/build.log" 2>&1; then
    res[build]="ok ($(el) s)"
else
    res[build]=FAIL
    grep -E "error" "$LOGS/build.log" | head -30
fi

if ctest --test-dir "$B" -L gpu -R "moe|conformance" --output-on-failure --timeout 120 \
        >"$OUT/ctest.log" 2>&1; then
    res[ctest]=pass
else
    res[ctest]=FAIL
fi
res[ctest]="${res[ctest]}: $(grep -E 'tests passed' "$OUT/ctest.log") ($(el) s)"
grep -E "Failed|\*\*\*Failed|FAIL" "$OUT/ctest.log" | head -20
"$B/bin/gpu_test_gpu_moe" >"$OUT/test_moe.log" 2>&1
res[test_moe]="rc $?: $(tail -1 "$OUT/test_moe.log")"

timeout 60 "$B/bin/gpu_test_gpu_moe" bench ${MOE7_BENCH_MODE:-} >"$OUT/standalone.md" 2>&1
res[standalone]="rc $? ($(el) s)"
timeout 70 "$B/bin/qplug_bench_run" --moe --md "$OUT/abi.md" --json "$LOGS/abi.json" \
    >"$LOGS/abi.log" 2>&1
res[abi]="rc $? ($(el) s)"

if [ "${MOE7_MEMCHECK:-1}" = 1 ]; then
    timeout "${MOE7_MEMCHECK_S:-90}" compute-sanitizer --tool memcheck --error-exitcode 99 \
        "$B/bin/gpu_test_gpu_moe" >"$OUT/memcheck.log" 2>&1
    res[memcheck]="rc $?: $(grep -E 'ERROR SUMMARY' "$OUT/memcheck.log" | tail -1) ($(el) s)"
fi

for p in ${vpids[@]+"${vpids[@]}"}; do wait "$p" || grep -h -E "error" "$LOGS"/build_*.log | head; done
for v in ${MOE7_VARIANTS:-}; do
    name=${v%%:*}
    if [ "${MOE7_VARIANT_CTEST:-0}" = 1 ]; then
        ctest --test-dir "$B-$name" -L gpu -R "moe|conformance" --timeout 120 \
            >"$OUT/ctest_$name.log" 2>&1
        res[ctest_$name]="rc $?: $(grep -E 'tests passed' "$OUT/ctest_$name.log") ($(el) s)"
    fi
    echo "== variant $name (${v#*:})" >>"$OUT/standalone.md"
    timeout 40 "$B-$name/bin/gpu_test_gpu_moe" bench default 2>&1 | grep -E "^\|" |
        sed "s/^| /| [$name] /" >>"$OUT/standalone.md"
    res[variant_$name]="rc $? ($(el) s)"
done

if [ "${MOE7_NCU:-1}" = 1 ]; then
    timeout 60 ncu --clock-control none --cache-control all --metrics gpu__time_duration.sum \
        --csv "$B/bin/gpu_test_gpu_moe" profile >"$OUT/ncu.csv" 2>&1
    res[ncu]="rc $? ($(el) s)"
fi
echo "== standalone"
grep -E "^\||^==" "$OUT/standalone.md"
echo "== abi"
grep -E "^\|" "$OUT/abi.md"
echo "== summary ($(nvidia-smi --query-gpu=name --format=csv,noheader | head -1))"
for k in $(printf '%s\n' "${!res[@]}" | sort); do
    printf '%-12s %s\n' "$k" "${res[$k]}"
done
