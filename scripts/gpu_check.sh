#!/usr/bin/env bash
# The full GPU check, in one command on a machine with an NVIDIA GPU:
# unpacks the carried inih/cJSON packages (the GPU machine has no apt and no
# network), builds, runs `ctest -L gpu`, runs the GPU tests once more under
# compute-sanitizer memcheck, runs the benches (linear, --moe,
# --prequant), and prints a summary table last. Full logs and the bench tables go to $OUT (default
# /tmp/qplug_gpu_check).
#
#   scripts/gpu_check.sh [--no-bench] [--no-memcheck] [--no-tests] [--gpu-targets-only]
#                        [bench options...]
#
# --gpu-targets-only builds only what the GPU tests and the bench need (the
# shared kernels, the plugins with their CUDA paths, the GPU conformance
# driver, the bench), not the whole tree. QPLUG_GPU_BUILD names the build
# directory; one inside the repository (build-*, ignored by git) survives
# between calls on a warm device machine.
#
# Before running it on the device machine, once, in the repository root
# of a machine with apt:
#   mkdir -p .debs && cd .debs && apt-get download libinih1 libinih-dev libcjson1 libcjson-dev \
#       pkgconf-bin libpkgconf3
set -u -o pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-/tmp/qplug_gpu_check}
BUILD=${QPLUG_GPU_BUILD:-/tmp/qplug_gpu_build}
DEPS=/tmp/qplug_deps
mkdir -p "$OUT"
run_bench=1
run_memcheck=1
run_tests=1
all_targets=1
bench_args=()
for a in "$@"; do
    case "$a" in
    --no-bench) run_bench=0 ;;
    --no-memcheck) run_memcheck=0 ;;
    --no-tests) run_tests=0 ;;
    --gpu-targets-only) all_targets=0 ;;
    *) bench_args+=("$a") ;;
    esac
done

declare -A result
note() { echo "== $*"; }

# ---------------------------------------------------------------- deps
if ! pkg-config --exists inih libcjson 2>/dev/null; then
    if ls "$ROOT"/.debs/*.deb >/dev/null 2>&1; then
        mkdir -p "$DEPS"
        for f in "$ROOT"/.debs/*.deb; do dpkg -x "$f" "$DEPS"; done
        # The .pc files name /usr as prefix or in absolute libdir/includedir.
        sed -i "s|=/usr\$|=$DEPS/usr|; s|=/usr/|=$DEPS/usr/|" \
            "$DEPS"/usr/lib/x86_64-linux-gnu/pkgconfig/*.pc
        export PKG_CONFIG_PATH="$DEPS/usr/lib/x86_64-linux-gnu/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
        export LD_LIBRARY_PATH="$DEPS/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        # A machine without pkg-config uses the carried pkgconf.
        if ! command -v pkg-config >/dev/null && [ -x "$DEPS/usr/bin/pkgconf" ]; then
            export PKG_CONFIG="$DEPS/usr/bin/pkgconf"
        fi
    else
        echo "gpu_check: inih/cJSON not installed and no .debs/ to unpack" >&2
    fi
fi

# ---------------------------------------------------------------- device
{
    nvidia-smi -L
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
    nvcc --version | tail -2
} >"$OUT/device.log" 2>&1
cat "$OUT/device.log"

# ---------------------------------------------------------------- build
note "build"
jobs=$(nproc 2>/dev/null || echo 4)
rm -f "$BUILD/CMakeCache.txt"
if cmake -S "$ROOT" -B "$BUILD" -DBUILD_TESTING=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        ${PKG_CONFIG:+-DPKG_CONFIG_EXECUTABLE=$PKG_CONFIG} \
        >"$OUT/build.log" 2>&1; then
    # The GPU targets first, each on its own, so that a half-written file
    # elsewhere in the tree cannot stop the GPU check.
    gpu_targets="qplug_common_cuda unquantized fp8_block mxfp4 nvfp4 w4a4_megamoe \
        qplug_conformance_gpu qplug_bench_run"
    for t in $(cd "$ROOT/tests/gpu" && ls test_*.c | sed 's/^/gpu_/; s/\.c$//') $gpu_targets qplug; do
        if cmake --build "$BUILD" -j"$jobs" --target "$t" >>"$OUT/build.log" 2>&1; then
            result[build_$t]=ok
        else
            result[build_$t]=FAIL
        fi
    done
    if [ "$all_targets" = 1 ]; then
        cmake --build "$BUILD" -j"$jobs" >>"$OUT/build.log" 2>&1 && result[build_all]=ok ||
            result[build_all]=FAIL
    fi
else
    result[build_all]="FAIL (configure)"
fi
grep -E "error|Error" "$OUT/build.log" | head -20

# ---------------------------------------------------------------- tests
if [ "$run_tests" = 1 ]; then
note "ctest -L gpu"
if ctest --test-dir "$BUILD" -L gpu --output-on-failure >"$OUT/ctest.log" 2>&1; then
    result[ctest_gpu]=pass
else
    result[ctest_gpu]=FAIL
fi
cat "$OUT/ctest.log"
fi

if [ "$run_tests" = 1 ] && [ "$run_memcheck" = 1 ]; then
    note "compute-sanitizer memcheck"
    result[memcheck]=FAIL
    if command -v compute-sanitizer >/dev/null; then
        # Every GPU kernel suite (tests/gpu/test_*.c), one log each: memory
        # errors only (the suites do not free everything before exit).
        result[memcheck]=clean
        for t in $(cd "$ROOT/tests/gpu" && ls test_*.c | sed 's/\.c$//'); do
            if ! compute-sanitizer --tool memcheck --error-exitcode 99 \
                    "$BUILD/bin/gpu_$t" >"$OUT/memcheck_$t.log" 2>&1; then
                result[memcheck]="FAIL ($t)"
            fi
            tail -2 "$OUT/memcheck_$t.log"
        done
        # The plugins' CUDA paths through the ABI, one case per plugin
        # (every path: GEMV, simple kernel, grouped staging).
        for pc in unquantized:grouped.none-bf16 fp8_block:grouped.fp8_block-e8m0 \
                mxfp4:linear.mxfp4 nvfp4:grouped.nvfp4; do
            p=${pc%%:*} c=${pc#*:}
            so=$BUILD/etc/plugins.d/$p.so
            [ -f "$so" ] || continue
            if compute-sanitizer --tool memcheck --leak-check full --error-exitcode 99 \
                    "$BUILD"/bin/qplug_conformance_gpu --plugin "$so" --case "$c" --require \
                    --device cuda --seed 1 >"$OUT/memcheck_$p.log" 2>&1; then
                result[memcheck_conf_$p]=clean
            else
                result[memcheck_conf_$p]=FAIL
            fi
            tail -3 "$OUT/memcheck_$p.log"
        done
    else
        result[memcheck]="not run (no compute-sanitizer)"
    fi
fi

# ---------------------------------------------------------------- bench
if [ "$run_bench" = 1 ]; then
    note "bench"
    bench=$BUILD/bin/qplug_bench_run
    result[bench]=FAIL
    # QPLUG_BENCH_TIMEOUT (seconds) bounds the bench; the Markdown table is
    # written row by row, so a bench cut short still leaves its rows.
    if [ -x "$bench" ] && ${QPLUG_BENCH_TIMEOUT:+timeout "$QPLUG_BENCH_TIMEOUT"} "$bench" --json "$OUT/bench.json" --md "$OUT/bench.md" \
            ${bench_args[@]+"${bench_args[@]}"} >"$OUT/bench.log" 2>&1; then
        result[bench]=ok
    fi
    tail -5 "$OUT/bench.log"
    note "bench --moe"
    result[bench_moe]=FAIL
    if [ -x "$bench" ] && ${QPLUG_BENCH_TIMEOUT:+timeout "$QPLUG_BENCH_TIMEOUT"} "$bench" --moe \
            --json "$OUT/bench_moe.json" --md "$OUT/bench_moe.md" >"$OUT/bench_moe.log" 2>&1; then
        result[bench_moe]=ok
    fi
    tail -5 "$OUT/bench_moe.log"
    note "bench --prequant"
    result[bench_prequant]=FAIL
    if [ -x "$bench" ] && ${QPLUG_BENCH_TIMEOUT:+timeout "$QPLUG_BENCH_TIMEOUT"} "$bench" --prequant \
            --md "$OUT/bench_prequant.md" >"$OUT/bench_prequant.log" 2>&1; then
        result[bench_prequant]=ok
    fi
    tail -5 "$OUT/bench_prequant.log"
fi

# ---------------------------------------------------------------- summary
{
    echo
    echo "== summary ($(head -1 "$OUT/device.log"))"
    printf '%-28s %s\n' step result
    for k in $(printf '%s\n' "${!result[@]}" | sort); do
        printf '%-28s %s\n' "$k" "${result[$k]}"
    done
    grep -E "rel L2" "$OUT/ctest.log" 2>/dev/null | grep -v "cuda " | head -40
    grep -E "Test +#.*conformance_gpu" "$OUT/ctest.log" 2>/dev/null
    if [ -f "$OUT/bench.json" ]; then
        python3 - "$OUT/bench.json" <<'PY' || true
import json, sys, statistics as st
d = json.load(open(sys.argv[1]))
copy = d["copy_gbps"]
print("copy %.0f GB/s on %s" % (copy, d["device"]))
print("%-6s %-10s %-5s %-34s %-34s" % ("model", "plugin", "M", "decode wt%copy core min/med/max", "through the ABI min/med/max"))
rows = d["rows"]
def pct(r, key):
    t = r[key]
    if t is None: return float("nan")
    wb = r["weight_gbps_core"] * r["core_us"] if r["weight_gbps_core"] else 0
    return 100.0 * wb / t / copy if t else float("nan")
for model in ("flash", "pro"):
    for pl in ("fp8_block", "mxfp4", "nvfp4"):
        for m in (1, 16):
            sel = [r for r in rows if r["model"] == model and r["plugin"] == pl and r["m"] == m and r["core_us"]]
            if not sel: continue
            a = sorted(pct(r, "core_us") for r in sel)
            b = sorted(v for v in (pct(r, "abi_us") for r in sel) if v == v) or [float("nan")]
            print("%-6s %-10s %-5d %5.0f %5.0f %5.0f %20s %5.0f %5.0f %5.0f" % (model, pl, m, a[0], st.median(a), a[-1], "", b[0], st.median(b), b[-1]))
print("%-6s %-10s %-18s %s" % ("model", "plugin", "layer", "M=4096: FP8-LT time / abi time (>= 1 meets the fp8 target; >= 0.7 the fp4 one), TFLOP/s, abi/direct"))
for r in rows:
    if r["m"] == 4096 and r["abi_us"] and r["fp8_lt_us"]:
        print("%-6s %-10s %-18s %.2f  %.0f TF  %.2f" % (r["model"], r["plugin"], r["layer"], r["fp8_lt_us"] / r["abi_us"], r["tflops"], r["abi_us"] / r["direct_us"] if r["direct_us"] else float("nan")))
errs = [r["rel_l2_vs_ref"] for r in rows if r.get("rel_l2_vs_ref") is not None]
if errs:
    print("abi native vs reference rel L2 over %d points: max %.4f" % (len(errs), max(errs)))
PY
    fi
    [ -f "$OUT/bench_moe.md" ] && { echo "fused MoE (Flash shapes) through the ABI:"; grep -E "^\|" "$OUT/bench_moe.md" | head -20; }
} | tee "$OUT/summary.txt"
[ "$run_tests" = 0 ] || [ "${result[ctest_gpu]:-FAIL}" = pass ]
