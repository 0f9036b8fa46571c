#!/bin/sh
# Builds the libFuzzer targets with clang into DIR and runs each one for
# SECONDS (default 20). New inputs go to DIR/fuzz-corpus/<target>; a crash
# leaves DIR/fuzz-<target>-crash-* behind and makes the script fail.
#
#   scripts/fuzz.sh build-fuzz 20
set -eu
if [ $# -lt 1 ]; then
    echo "usage: $0 BUILD_DIR [SECONDS]" >&2
    exit 2
fi
dir=$1
secs=${2:-20}
src=$(cd "$(dirname "$0")/.." && pwd)

CC=${CC:-clang} cmake -S "$src" -B "$dir" -DQPLUG_FUZZ=ON -DBUILD_TESTING=ON -DQPLUG_CUDA=OFF \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$dir" -j2 --target fuzz_safetensors fuzz_config fuzz_policy

status=0
for t in safetensors config policy; do
    work="$dir/fuzz-corpus/$t"
    mkdir -p "$work"
    echo "== fuzz_$t for ${secs}s"
    if ! "$dir/bin/fuzz_$t" -max_total_time="$secs" -max_len=16384 -timeout=10 \
        -artifact_prefix="$dir/fuzz-$t-" "$work" "$src/tests/fuzz/corpus/$t" 2>"$dir/fuzz-$t.log"; then
        tail -n 40 "$dir/fuzz-$t.log" >&2
        status=1
    else
        grep -E '^(Done|#[0-9]+ *DONE)' "$dir/fuzz-$t.log" || tail -n 1 "$dir/fuzz-$t.log"
    fi
done
exit $status
