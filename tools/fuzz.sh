#!/usr/bin/env bash
# tools/fuzz.sh [SECONDS] [TARGET...] — build fuzz targets with clang +
# libFuzzer (ASan, UBSan) in build-fuzz/ and run each for SECONDS (default
# 60) on a copy of its seed corpus (tests/fuzz/corpus/TARGET).
# Targets: safetensors_header tokenizer_json tokenizer_encode hf_config
# merge_config (no LibTorch: the default set, quick to build) and
# hf_architecture pipeline_toml (build the host and plugins with clang; name
# them, or say `all`). New crashes land in build-fuzz/crash-*; exit 1 if any.
# More jobs per target: MANGO_FUZZ_JOBS=N. Stop after N executions instead
# (SECONDS still caps the time): MANGO_FUZZ_RUNS=N. Longest input (bytes,
# default 65536; smaller inputs run faster): MANGO_FUZZ_MAX_LEN=N. An input
# running past 20 s is a finding, except for hf_architecture (60 s): a legal
# table near the 250,000-tensor cap (a qwen3_moe config of ~500 layers of
# 128 experts) takes 0.5 s to build in a release build and ~30 s under ASan.
# The limit is wall-clock: on a machine shared with builds, or with fuzzers
# run niced, raise it (MANGO_FUZZ_TIMEOUT=600; libFuzzer's default is 1200).
# hf_architecture's cost per input is heavy-tailed: of its 1,409-input
# corpus, 83 configs with huge tables take 54 s under ASan and the other 1,326
# take 0.3 s. Its runs therefore pass -entropic_scale_per_exec_time=1, which
# lowers a slow input's share of the mutations (it is still run and mutated):
# several times the executions per second. More libFuzzer flags for every
# target: MANGO_FUZZ_FLAGS="-flag=value ...".
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
light=(safetensors_header tokenizer_json tokenizer_encode hf_config merge_config)
heavy=(hf_architecture pipeline_toml)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${light[@]}")
[ "${targets[*]}" = all ] && targets=("${light[@]}" "${heavy[@]}")
command -v clang++ >/dev/null || { echo "fuzz.sh: needs clang (apt-get install clang libclang-rt-dev)"; exit 2; }
cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DMANGO_FUZZ=ON -DMANGO_SANITIZE=address,undefined >/dev/null
cmake --build build-fuzz -j "$(nproc)" --target "${targets[@]/#/fuzz_}" >/dev/null
# LibTorch is not instrumented: its allocations and ours meet in one process.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:alloc_dealloc_mismatch=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
parallel=()  # -jobs writes each job's output to fuzz-N.log; one job stays on the terminal
[ "${MANGO_FUZZ_JOBS:-1}" -gt 1 ] && parallel=(-jobs="$MANGO_FUZZ_JOBS" -workers="$MANGO_FUZZ_JOBS")
status=0
for t in "${targets[@]}"; do
  work=build-fuzz/corpus-$t
  mkdir -p "$work" && cp -n tests/fuzz/corpus/$t/* "$work"/ 2>/dev/null || true
  timeout=20
  [ "$t" = hf_architecture ] && timeout=60
  timeout=${MANGO_FUZZ_TIMEOUT:-$timeout}
  flags=(${MANGO_FUZZ_FLAGS:-})
  [ "$t" = hf_architecture ] && flags=(-entropic_scale_per_exec_time=1 "${flags[@]}")
  echo "== fuzz_$t for ${secs}s"
  if ! (cd build-fuzz && ./bin/fuzz_$t -max_total_time="$secs" -max_len="${MANGO_FUZZ_MAX_LEN:-65536}" -timeout="$timeout" -rss_limit_mb=4096 \
          "${parallel[@]}" "${flags[@]}" -runs="${MANGO_FUZZ_RUNS:--1}" -print_final_stats=1 \
          "corpus-$t" 2>&1 | tail -5); then
    status=1
  fi
  ls build-fuzz/crash-* build-fuzz/timeout-* build-fuzz/oom-* 2>/dev/null && status=1
done
exit $status
