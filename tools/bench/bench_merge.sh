#!/usr/bin/env bash
# tools/bench/bench_merge.sh [BUILD_DIR] [WORK_DIR] — TIES of three ~0.5B-
# parameter models (Qwen2-0.5B shapes, bf16: a base and two fine-tunes) on
# the CPU: input GB/s against a plain read of the same bytes in the same run,
# and peak memory (total RSS, and anonymous RSS: what the merge holds beyond
# the page cache). mergekit needs pydantic, which this machine lacks, so it is
# not timed here.
set -euo pipefail
build=${1:-build}
work=${2:-/tmp/mango-bench-merge}
mkdir -p "$work"
[ -f "$work/models/ft2/model.safetensors" ] || "$build/bin/make_merge_models" "$work/models"
cat > "$work/ties.yml" <<YAML
merge_method: ties
base_model: $work/models/base
models:
  - model: $work/models/ft1
    parameters: {weight: 1.0, density: 0.5}
  - model: $work/models/ft2
    parameters: {weight: 1.0, density: 0.5}
dtype: bfloat16
YAML
bytes=$(cat "$work"/models/{base,ft1,ft2}/model*.safetensors | wc -c)
# Plain read of the same bytes (warm page cache: the files were just read once).
cat "$work"/models/{base,ft1,ft2}/model*.safetensors > /dev/null
s=$(date +%s%N); cat "$work"/models/{base,ft1,ft2}/model*.safetensors > /dev/null; e=$(date +%s%N)
read_s=$(echo "($e - $s) / 1000000000" | bc -l)
# The merge, with its memory sampled from /proc.
s=$(date +%s%N)
"$build/bin/mango" merge "$work/ties.yml" "$work/out" --force --no-progress --json > "$work/result.json" &
pid=$!
peak_rss=0 peak_anon=0
while kill -0 $pid 2>/dev/null; do
  if [ -r /proc/$pid/status ]; then
    rss=$(awk '/^VmRSS/ {print $2}' /proc/$pid/status 2>/dev/null || echo 0)
    anon=$(awk '/^RssAnon/ {print $2}' /proc/$pid/status 2>/dev/null || echo 0)
    [ "${rss:-0}" -gt "$peak_rss" ] && peak_rss=$rss
    [ "${anon:-0}" -gt "$peak_anon" ] && peak_anon=$anon
  fi
  sleep 0.05
done
wait $pid
e=$(date +%s%N)
merge_s=$(echo "($e - $s) / 1000000000" | bc -l)
printf 'TIES of 3 models, %.2f GB of input (bf16), %s CPU threads:\n' "$(echo "$bytes / 1000000000" | bc -l)" "$(nproc)"
printf '  plain read:  %6.2f s  %6.2f GB/s\n' "$read_s" "$(echo "$bytes / 1000000000 / $read_s" | bc -l)"
printf '  mango merge: %6.2f s  %6.2f GB/s  (%.0f%% of the plain read; goal >= 50%%)\n' "$merge_s" "$(echo "$bytes / 1000000000 / $merge_s" | bc -l)" \
  "$(echo "100 * $read_s / $merge_s" | bc -l)"
printf '  peak RSS %.2f GB, of which anonymous (beyond the page cache) %.2f GB (goal < 2 GB)\n' "$(echo "$peak_rss / 1000000" | bc -l)" "$(echo "$peak_anon / 1000000" | bc -l)"
