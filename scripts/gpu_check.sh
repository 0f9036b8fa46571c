#!/usr/bin/env bash
# The full GPU check, in one command on a machine with an NVIDIA GPU:
# unpacks the carried inih/cJSON packages (the GPU machine has no apt and no
# network), builds, runs `ctest -L gpu`, runs the GPU tests once more under
# compute-sanitizer memcheck, runs the bench, and prints a summary table
# last. Full logs and the bench tables go to $OUT (default
# /tmp/qplug_gpu_check).
#
#   scripts/gpu_check.sh [--no-bench] [--no-memcheck] [bench options...]
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
bench_args=()
for a in "$@"; do
    case "$a" in
    --no-bench) run_bench=0 ;;
    --no-memcheck) run_memcheck=0 ;;
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
    for t in qplug_common_cuda gpu_test_gpu_kernels qplug_bench_run qplug; do
        if cmake --build "$BUILD" -j"$jobs" --target "$t" >>"$OUT/build.log" 2>&1; then
            result[build_$t]=ok
        else
            result[build_$t]=FAIL
        fi
    done
    cmake --build "$BUILD" -j"$jobs" >>"$OUT/build.log" 2>&1 && result[build_all]=ok || result[build_all]=FAIL
else
    result[build_all]="FAIL (configure)"
fi
grep -E "error|Error" "$OUT/build.log" | head -20

# ---------------------------------------------------------------- tests
note "ctest -L gpu"
if ctest --test-dir "$BUILD" -L gpu --output-on-failure >"$OUT/ctest.log" 2>&1; then
    result[ctest_gpu]=pass
else
    result[ctest_gpu]=FAIL
fi
cat "$OUT/ctest.log"
tail -3 "$BUILD/Testing/Temporary/LastTest.log" >/dev/null 2>&1

if [ "$run_memcheck" = 1 ]; then
    note "compute-sanitizer memcheck"
    result[memcheck]=FAIL
    if command -v compute-sanitizer >/dev/null; then
        if compute-sanitizer --tool memcheck --leak-check full --error-exitcode 99 \
                "$BUILD"/bin/gpu_test_gpu_kernels >"$OUT/memcheck.log" 2>&1; then
            result[memcheck]=clean
        fi
        tail -5 "$OUT/memcheck.log"
    else
        result[memcheck]="not run (no compute-sanitizer)"
    fi
fi

# ---------------------------------------------------------------- bench
if [ "$run_bench" = 1 ]; then
    note "bench"
    bench=$BUILD/bin/qplug_bench_run
    result[bench]=FAIL
    if [ -x "$bench" ] && "$bench" --json "$OUT/bench.json" --md "$OUT/bench.md" \
            ${bench_args[@]+"${bench_args[@]}"} >"$OUT/bench.log" 2>&1; then
        result[bench]=ok
    fi
    tail -5 "$OUT/bench.log"
fi

# ---------------------------------------------------------------- summary
{
    echo
    echo "== summary ($(head -1 "$OUT/device.log"))"
    printf '%-28s %s\n' step result
    for k in $(printf '%s\n' "${!result[@]}" | sort); do
        printf '%-28s %s\n' "$k" "${result[$k]}"
    done
    grep -E "rel L2" "$OUT/ctest.log" | head -40
    if [ -f "$OUT/bench.json" ]; then
        python3 - "$OUT/bench.json" <<'PY' || true
import json, sys, statistics as st
d = json.load(open(sys.argv[1]))
copy = d["copy_gbps"]
print("copy %.0f GB/s on %s" % (copy, d["device"]))
print("%-6s %-10s %-5s %-34s %-34s" % ("model", "plugin", "M", "decode wt%copy core min/med/max", "with act quant min/med/max"))
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
            a = sorted(pct(r, "core_us") for r in sel); b = sorted(pct(r, "ours_us") for r in sel)
            print("%-6s %-10s %-5d %5.0f %5.0f %5.0f %20s %5.0f %5.0f %5.0f" % (model, pl, m, a[0], st.median(a), a[-1], "", b[0], st.median(b), b[-1]))
print("%-6s %-10s %-18s %s" % ("model", "plugin", "layer", "M=4096: FP8-LT time / ours time (>= 1 meets the fp8 target; >= 0.7 the fp4 one), TFLOP/s"))
for r in rows:
    if r["m"] == 4096 and r["ours_us"] and r["fp8_lt_us"]:
        print("%-6s %-10s %-18s %.2f  %.0f TF" % (r["model"], r["plugin"], r["layer"], r["fp8_lt_us"] / r["ours_us"], r["tflops"]))
PY
    fi
} | tee "$OUT/summary.txt"
[ "${result[ctest_gpu]:-FAIL}" = pass ]
