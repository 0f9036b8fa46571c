#!/usr/bin/env bash
# Builds and runs, on a machine with an NVIDIA Hopper GPU, the wgmma FP8
# GEMM with in-kernel activation quantization (gemm_wgmma.cu) in variants
# (-D tunables): for each variant its correctness test
# (tests/gpu/test_gpu_wgmma.c, linked standalone, no CMake needed) and
# gemm_wgmma_bench (gemm_wgmma_bench.cu) against act_quant + cuBLASLt and
# cuBLASLt alone. Logs, ptxas reports and SASS counts go to OUTDIR.
#
#   plugins/common_cuda/gemm_wgmma_bench.sh [OUTDIR] [variant flags...]
#
# Each variant flag is a quoted list of -D options, e.g.
# "-DQPLUG_WGMMA_STAGES=4 -DQPLUG_WGMMA_CLUSTER=4"; with none, the defaults.
# Every variant is also timed by `gemm_wgmma_bench --diag` (ours alone,
# three shapes at M = 64 and 4096, time per CTA k-block; diag_all.md); a
# variant whose flags name QPLUG_WGMMA_DIAG (diagnostic builds, wrong
# results by design) gets only that. F32=N times variant N with F32
# activation scales too (--diag f32, rows "Nf32" of diag_all.md).
# QUICK=1 times M = 512 and 4096 only for all but the first variant
# (QUICK=all: for all); BENCH="i j" times only variants i and j;
# MEMCHECK=1 runs
# the first variant's test under compute-sanitizer memcheck too; BEST=1 and
# NCU=1 see the end of the script; TAG names
# the version in the table header (default v1).
set -eu -o pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=${1:-/tmp/gemm_wgmma_bench}
shift || true
mkdir -p "$OUT"
TAG=${TAG:-v2}
QUICK=${QUICK:-0}
B=$(mktemp -d)
[ $# -gt 0 ] || set -- ""
NV="nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -I$ROOT/core/include -I$HERE"
$NV -c "$HERE/act_quant.cu" -o "$B/act_quant.o" &
$NV -c "$HERE/gemm_lt.cu" -o "$B/gemm_lt.o" &
$NV -c "$HERE/gemm_wgmma_bench.cu" -o "$B/bench.o" &
gcc -O2 -std=c11 -I"$ROOT/core/include" -I"$HERE" -I"$ROOT/tests/unit" -I"$ROOT/tests/gpu" \
    -I/usr/local/cuda/include -c "$ROOT/tests/gpu/test_gpu_wgmma.c" -o "$B/test.o" &
gcc -O2 -std=gnu11 -I"$ROOT/core/include" -I"$ROOT/tests/unit" -c "$ROOT/tests/unit/testutil.c" -o "$B/testutil.o" &
i=0
for flags in "$@"; do
    # shellcheck disable=SC2086
    $NV $flags -Xptxas -v -c "$HERE/gemm_wgmma.cu" -o "$B/gw_$i.o" 2>"$B/ptxas_$i.log" &
    i=$((i + 1))
done
wait
i=0
for flags in "$@"; do
    if command -v cuobjdump >/dev/null; then
        cuobjdump -sass "$B/gw_$i.o" >"$B/gw_$i.sass"
        echo "variant $i [$flags]: QGMMA $(grep -c QGMMA "$B/gw_$i.sass" || true)," \
            "LDL/STL $(grep -cE 'LDL|STL' "$B/gw_$i.sass" || true)" | tee -a "$OUT/sass.txt"
    fi
    grep -E "registers|spill" "$B/ptxas_$i.log" | sed "s/^/variant $i: /" >>"$OUT/sass.txt" || true
    $NV "$B/gw_$i.o" "$B/act_quant.o" "$B/gemm_lt.o" "$B/bench.o" -lcublasLt -o "$B/bench_$i"
    $NV "$B/test.o" "$B/testutil.o" "$B/gw_$i.o" -o "$B/test_$i"
    i=$((i + 1))
done
echo "built at ${SECONDS}s" >>"$OUT/sass.txt"
i=0
ok=()
for flags in "$@"; do
    case "$flags" in *QPLUG_WGMMA_DIAG*)
        ok+=(0)
        i=$((i + 1))
        continue ;;
    esac
    echo "== test, variant $i [$flags]" | tee -a "$OUT/test.log"
    if timeout "${TEST_TIMEOUT:-40}" "$B/test_$i" >>"$OUT/test.log" 2>&1; then
        echo "test $i: PASS" | tee -a "$OUT/test.log"
        ok+=(1)
    else
        echo "test $i: FAIL (rc $?)" | tee -a "$OUT/test.log"
        ok+=(0)
    fi
    i=$((i + 1))
done
if [ "${MEMCHECK:-0}" = 1 ] && [ "${ok[0]}" = 1 ]; then
    echo "== memcheck, variant 0" >>"$OUT/test.log"
    timeout 90 compute-sanitizer --tool memcheck "$B/test_0" >>"$OUT/test.log" 2>&1 ||
        echo "memcheck: rc $?" >>"$OUT/test.log"
    tail -2 "$OUT/test.log"
fi
i=0
for flags in "$@"; do
    timeout "${DIAG_TIMEOUT:-60}" "$B/bench_$i" "$i" --diag >>"$OUT/diag_all.md" 2>&1 ||
        echo "diag $i failed (rc $?)" >>"$OUT/diag_all.md"
    i=$((i + 1))
done
if [ -n "${F32:-}" ] && [ "${ok[$F32]}" = 1 ]; then
    timeout "${DIAG_TIMEOUT:-60}" "$B/bench_$F32" "${F32}f32" --diag f32 >>"$OUT/diag_all.md" 2>&1 ||
        echo "f32 diag failed (rc $?)" >>"$OUT/diag_all.md"
fi
i=0
for flags in "$@"; do
    q=""
    [ "$QUICK" = 1 ] && [ $i -gt 0 ] && q=--quick
    [ "$QUICK" = all ] && q=--quick
    # A variant whose test failed (or hung) is not timed; BENCH="i j"
    # times only those variants.
    case " ${BENCH:-$i} " in *" $i "*) sel=1 ;; *) sel=0 ;; esac
    if [ "${ok[$i]}" = 1 ] && [ $sel = 1 ]; then
        timeout 200 "$B/bench_$i" "$TAG${flags:+ [$flags]}" $q >"$OUT/bench_$i.md" 2>&1 ||
            echo "bench $i failed (rc $?)" >>"$OUT/bench_$i.md"
    fi
    i=$((i + 1))
done
# BEST=1: the variant with the smallest sum of "ours us" over its table is
# timed again at every M (bench_full.md); NCU=1 profiles its first kernel.
if [ "${BEST:-0}" = 1 ]; then
    best=$(for f in "$OUT"/bench_[0-9]*.md; do
        awk -F'|' -v f="$f" '/^\| (flash|pro) /{s += $9} END {if (s > 0) print s, f}' "$f"
    done | sort -n | head -1 | sed 's/.*bench_\([0-9]*\)\.md/\1/')
    if [ -n "$best" ]; then
        echo "best variant: $best" | tee -a "$OUT/sass.txt"
        if [ "${MEMCHECK:-0}" = 1 ] && [ "$best" != 0 ]; then
            echo "== memcheck, variant $best" >>"$OUT/test.log"
            timeout 90 compute-sanitizer --tool memcheck "$B/test_$best" >>"$OUT/test.log" 2>&1 ||
                echo "memcheck: rc $?" >>"$OUT/test.log"
            tail -2 "$OUT/test.log"
        fi
        # Variant 0 was already timed at every M unless QUICK=all.
        if [ "$best" != 0 ] || [ "$QUICK" = all ]; then
            timeout 200 "$B/bench_$best" "$TAG (variant $best)" >"$OUT/bench_full.md" 2>&1 ||
                echo "full bench failed (rc $?)" >>"$OUT/bench_full.md"
        fi
        if [ "${NCU:-0}" = 1 ]; then
            # --quick times M = 512 first (24 launches), then M = 4096.
            timeout 90 ncu --clock-control none --section SpeedOfLight --section WarpStateStats --section SchedulerStats \
                --section MemoryWorkloadAnalysis -k regex:wg_kernel --launch-skip 24 -c 1 \
                "$B/bench_$best" ncu --quick >"$OUT/ncu.log" 2>&1 || echo "ncu: rc $?" >>"$OUT/ncu.log"
        fi
    fi
fi
echo "done at ${SECONDS}s" >>"$OUT/sass.txt"
cat "$OUT"/sass.txt
tail -40 "$OUT"/test.log
for f in "$OUT"/bench_*.md; do [ -f "$f" ] && cat "$f"; echo; done
# Summary last: per table and M, the geometric means over the shapes of
# LT/ours and (aq+LT)/ours, the shapes where ours beats aq+LT, the largest
# rel diff.
echo "| table | M | shapes | LT/ours gmean | (aq+LT)/ours gmean | ours faster than aq+LT | max rel diff |"
echo "|---|---|---|---|---|---|---|"
for f in "$OUT"/bench_*.md; do
    [ -f "$f" ] || continue
    awk -F'|' -v f="$(basename "$f" .md)" '/^\| (flash|pro) /{
            m = $4 + 0; n[m]++; a[m] += log($13); b[m] += log($14);
            if ($14 + 0 > 1) w[m] = w[m] " " substr($2, 2, 1) ":" substr($3, 2, length($3) - 2);
            if ($15 + 0 > d[m]) d[m] = $15 + 0 }
        END { for (m in n) printf "| %s | %d | %d | %.2f | %.2f |%s | %.1e |\n", f, m, n[m],
              exp(a[m] / n[m]), exp(b[m] / n[m]), w[m], d[m] }' "$f" | sort -t'|' -k3n
done
# The diagnostic table last (the device tool returns the end of the
# output), then the per-variant files folded into one each (the tool
# brings back at most 8 files).
i=0
for flags in "$@"; do echo "diag variant $i: [$flags]"; i=$((i + 1)); done
echo "| variant | model | layer | M | N | K | CTAs | ours us | TFLOP/s | us per CTA k-block | host us |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
grep -e '^| [0-9]' -e 'failed' "$OUT/diag_all.md" || true
for f in "$OUT"/bench_[0-9]*.md; do
    [ -f "$f" ] || continue
    echo "== $(basename "$f")"
    cat "$f"
    rm -f "$f"
done >"$OUT/bench_all.md"
# NCU_DIAG="i j": ncu stall statistics of variants i and j on the second
# --diag point (Flash wq_a, M = 4096), into ncu_all.log.
for i in ${NCU_DIAG:-}; do
    echo "== ncu variant $i"
    timeout 45 ncu --clock-control none --section SpeedOfLight --section WarpStateStats \
        --section SchedulerStats -k regex:wg_kernel --launch-skip 23 -c 1 \
        "$B/bench_$i" "ncu $i" --diag 2>&1 | grep -v '^| ' || echo "ncu: rc $?"
done >"$OUT/ncu_all.log"
