#!/usr/bin/env bash
# The README's second command: build and run every test, then the same
# tests under AddressSanitizer + UndefinedBehaviorSanitizer, then a short
# fuzzing run of the parsers when clang is available.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
jobs="$(nproc)"

cmake -S . -B build -DBUILD_TESTING=ON >/dev/null
cmake --build build -j"$jobs"
(cd build && ctest --output-on-failure -j"$jobs")

cmake -S . -B build-asan -DBUILD_TESTING=ON -DQPLUG_SANITIZE=ON -DQPLUG_CUDA=OFF \
      -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build build-asan -j"$jobs"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
   ctest --output-on-failure -j"$jobs" -LE slow)

if command -v clang >/dev/null 2>&1 && [ -x scripts/fuzz.sh ]; then
  scripts/fuzz.sh build-fuzz "${QPLUG_FUZZ_SECONDS:-15}"
fi
echo "all test stages passed"
