#!/usr/bin/env bash
# tools/bench/bench_offload_gpu.sh [BUILD_DIR] — offloading on one GPU: a
# fusion of two 1.0B LLaMAs (TinyLlama's shapes with the 128-token vocabulary
# of the ASCII test tokenizer, bf16, 3.9 GB of weights) generates 64 tokens (a) with everything on the GPU, (b) with both models
# offloaded (`offload = true`) under a memory cap of 3.5 GB
# (MANGO_CUDA_MEMORY_FRACTION) that the weights exceed, and (c) all on the
# GPU under that cap, which must fail. Prints tokens/s of (a) and (b).
# Needs a CUDA build (tools/gpu_build.sh) and python3 with transformers (the
# random checkpoint).
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build-gpu}
work=${MANGO_BENCH_DIR:-/tmp/mango-bench-offload}
model=/tmp/mango-llama-1b-v128
rm -rf "$work" && mkdir -p "$work"
python3 - "$model" <<'PY'
import os, sys, torch, transformers as tf
d = sys.argv[1]
if not os.path.exists(os.path.join(d, "config.json")):
    cfg = tf.LlamaConfig(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                         intermediate_size=5632, vocab_size=128, max_position_embeddings=4096, tie_word_embeddings=False)
    torch.manual_seed(0)
    tf.LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(d, safe_serialization=True)
PY
pipeline() {  # $1 file, $2 offload
  cat > "$1" <<TOML
output = "out"
device = "cuda"
dtype = "bfloat16"
[tokenizer]
path = "$PWD/tests/fixtures/tokenizers/ascii_bytes"
[models.a]
path = "$model"
offload = $2
[models.b]
path = "$model"
offload = $2
[models.pair]
fuse = ["a", "b"]
router = { name = "simple" }
[[steps]]
run = "generate"
model = "pair"
prompt = "The quick brown fox jumps over the lazy dog and runs into the forest"
max_new_tokens = 64
greedy = true
TOML
}
pipeline "$work/resident.toml" false
pipeline "$work/offloaded.toml" true
total=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)  # MiB
fraction=$(python3 -c "print(min(1.0, 3584 / $total))")
rate() {  # $1 pipeline, $2 label, then env
  local p=$1 label=$2; shift 2
  env "$@" "$build/bin/mango" run "$p" -o "$work/$label" --no-progress > "$work/$label.log" 2>&1 || { echo "$label: failed"; tail -5 "$work/$label.log"; return 1; }
  python3 - "$work/$label/summary.json" "$label" <<'PY'
import json, sys
s = [x for x in json.load(open(sys.argv[1]))["steps"] if "new_tokens" in x][0]
print(f"{sys.argv[2]:<44} {s['new_tokens'] / s['seconds']:8.1f} tok/s  ({s['new_tokens']} tokens in {s['seconds']:.2f} s, decode: {s['decode']})")
PY
}
echo "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1); fusion of two 1.0B LLaMAs in bf16 (3.9 GB), 64 new tokens"
rate "$work/resident.toml" "all on the GPU"
rate "$work/offloaded.toml" "offloaded, GPU memory capped at 3.5 GB" MANGO_CUDA_MEMORY_FRACTION="$fraction"
if rate "$work/resident.toml" "all on the GPU, capped at 3.5 GB" MANGO_CUDA_MEMORY_FRACTION="$fraction" > /dev/null 2>&1; then
  echo "all on the GPU under the cap: ran (the cap did not bind)"
else
  echo "all on the GPU under the cap: refused ($(grep -o 'out of memory[^.]*' "$work/all on the GPU, capped at 3.5 GB.log" | head -1))"
fi
