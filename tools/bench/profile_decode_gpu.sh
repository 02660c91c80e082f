#!/usr/bin/env bash
# tools/bench/profile_decode_gpu.sh [BUILD_DIR] [MODEL_DIR] — every kernel of
# greedy decoding over the static KV cache (MANGO_DECODE=static: the kernels a
# CUDA graph replays), timed one by one with Nsight Compute, summed by kernel
# name: where a decode step's GPU time goes. Model: bench_gpu_llama.py's
# 1.1B LLaMA (`bench_gpu_llama.py --make-only` makes it). Prefill 16 tokens,
# 2 decode steps, batch 1. ARGS="--fuse 1": the fusion of two copies instead.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build-gpu}
model=${2:-/tmp/mango-llama-1b}
raw=$(mktemp)
MANGO_DECODE=static ncu --clock-control none --metrics gpu__time_duration.sum --csv \
  "$build/bin/bench_generate" "$model" --device cuda --dtype bfloat16 --prefill 16 --prompt 16 --decode 3 --batch 1 --reps 1 ${ARGS:-} > "$raw" 2>/dev/null || true
python3 - "$raw" "${TAIL:-50}" <<'PY'
import csv, sys, collections
rows = [r for r in csv.reader(l for l in open(sys.argv[1]) if l.startswith('"'))]
head, rows = rows[0], rows[1:]
name, value, unit = head.index("Kernel Name"), head.index("Metric Value"), head.index("Metric Unit")
scale = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3, "second": 1e6}
total, count = collections.Counter(), collections.Counter()
for r in rows:
    k = r[name][:90]
    total[k] += float(r[value].replace(",", "")) * scale.get(r[unit], 1e-3)  # -> us
    count[k] += 1
s = sum(total.values())
print(f"{len(rows)} kernels, {s:.0f} us in all (prefill of 16 tokens, then decode steps)")
for k, t in total.most_common(40):
    print(f"{t:9.1f} us {count[k]:6d}x  {t / count[k]:7.2f} us  {k}")
print("the last decode step's last kernels, in order (its last layers, the head, the pick):")
for r in rows[-int(sys.argv[2]):]:
    print(f"  {float(r[value].replace(',', '')) * scale.get(r[unit], 1e-3):7.2f} us  {r[name][:100]}")
PY
rm -f "$raw"
