#!/usr/bin/env bash
# Runs every configs/*.toml with a tiny setting: 2 training steps, small
# batches, tiny stand-in data for the demo's Brown corpus files. Checks that
# each run writes its summary and metrics, the demo its heatmap, and that the
# fusion saved self-contained and loaded back evaluates exactly the same.
#   configs_test.sh MANGO SOURCE_DIR WORK_DIR
set -euo pipefail
mango=$1 src=$2 work=$3
rm -rf "$work" && mkdir -p "$work"
fail() { echo "configs_test: $*" >&2; exit 1; }

# Stand-ins for the demo's data: the notes, repeated, in two orders.
mkdir -p "$work/demo/data"
for i in 1 2 3 4 5 6; do cat "$src/configs/data/notes.txt"; echo; done > "$work/demo/data/press.txt"
for i in 1 2 3 4 5 6; do tac "$src/configs/data/notes.txt"; echo; done > "$work/demo/data/fiction.txt"
for i in 1 2 3 4 5 6 7 8 9 10 11 12; do
  printf '{"text": "function add%d(a, b) {\\n  return a + b + %d;\\n}\\nmodule.exports = add%d;\\n"}\n' $i $i $i
done > "$work/demo/data/code.jsonl"

tiny=(--set 'steps.*.steps?=2' --set 'steps.*.batch_size?=2' --set 'steps.*.save_state_every?=1'
      --set 'steps.*.align_steps?=1' --set 'steps.*.max_new_tokens?=4' --set 'steps.*.warmup_steps?=1')
n=0
# The demo first: other pipelines read its data and trained models.
for cfg in "$src/configs/demo.toml" $(ls "$src"/configs/*.toml | grep -v '/demo.toml$'); do
  name=$(basename "$cfg" .toml)
  out="$work/$name"
  echo "== $name"
  "$mango" run "$cfg" --check --output "$out"
  "$mango" run "$cfg" --output "$out" --no-progress "${tiny[@]}"
  [[ -s $out/summary.json ]] || fail "$name wrote no summary.json"
  if grep -q '"run": "eval"' "$out/summary.json"; then [[ -s $out/metrics.json ]] || fail "$name wrote no metrics.json"; fi
  # A second run restores every training step instead of training again.
  "$mango" run "$cfg" --output "$out" --no-progress --json "${tiny[@]}" > "$out/rerun.json"
  if grep -q '"resumed_from": 0' "$out/rerun.json"; then fail "$name: the rerun trained again instead of restoring"; fi
  n=$((n + 1))
done

[[ -s $work/demo/router_heatmap.svg ]] || fail "the demo wrote no router heatmap"
grep -q '<svg' "$work/demo/router_heatmap.svg" || fail "the heatmap is not SVG"
[[ $(grep -c '"perplexity"' "$work/demo/metrics.json") == 16 ]] || fail "the demo's metrics.json should hold 4 models x 4 data sets"
[[ -s $work/moe_demo/router_heatmap.svg ]] || fail "the MoE demo wrote no expert-share picture"
[[ -s $work/convert_demo/router_heatmap.svg ]] || fail "the conversion demo wrote no expert-share picture"
[[ -s $work/convert_demo/converted/upcycled/conversion_report.json ]] || fail "the conversion demo wrote no conversion report"
[[ $(grep -c '"perplexity"' "$work/convert_demo/metrics.json") == 12 ]] || fail "the conversion demo's metrics.json should hold 3 models x 4 data sets"

# fuse_architectures: the reloaded self-contained fusion evaluates exactly as the original.
ppl_of() { awk -v m="\"$1\"" '$0 ~ "\"model\": " m {found=1} found && /"perplexity"/ {v=$2} found && /}/ {found=0} END {print v}' "$2"; }
a=$(ppl_of trio "$work/fuse_architectures/metrics.json")
b=$(ppl_of trio_reloaded "$work/fuse_architectures/metrics.json")
[[ -n $a && $a == "$b" ]] || fail "saved and reloaded fusion differ: perplexity $a vs $b"
[[ -f $work/fuse_architectures/trio/models/0/model.safetensors ]] || fail "self-contained save did not copy the base models"
echo "configs_test: $n pipelines ran; reloaded fusion perplexity $b equals the original's"
