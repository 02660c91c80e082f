#!/usr/bin/env bash
# tools/fuzz.sh [SECONDS] — build the parser fuzz targets with clang +
# libFuzzer (ASan, UBSan) and run each for SECONDS (default 60) on a copy of
# its seed corpus. New crashes land in build-fuzz/crash-*; exit 1 if any.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
command -v clang++ >/dev/null || { echo "fuzz.sh: needs clang (apt-get install clang libclang-rt-dev)"; exit 2; }
cmake -S tests/fuzz -B build-fuzz -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-fuzz -j "$(nproc)" >/dev/null
status=0
for t in safetensors_header tokenizer_json tokenizer_encode hf_config; do
  work=build-fuzz/corpus-$t
  mkdir -p "$work" && cp -n tests/fuzz/corpus/$t/* "$work"/ 2>/dev/null || true
  echo "== fuzz_$t for ${secs}s"
  if ! (cd build-fuzz && ./fuzz_$t -max_total_time="$secs" -max_len=65536 -timeout=10 -print_final_stats=1 "corpus-$t" 2>&1 | tail -4); then
    status=1
  fi
  ls build-fuzz/crash-* build-fuzz/timeout-* 2>/dev/null && status=1
done
exit $status
