#!/usr/bin/env bash
# tools/bench/bench_dist_gpu.sh [BUILD_DIR] [GPUS] — scaling of distributed
# training over GPUs (c10d NCCL), printed as tokens/s and efficiency:
#  1. data parallelism: a 270M-parameter LLaMA (random weights, bf16
#     autocast, AdamW on every weight) on 1 .. GPUS GPUs, same per-GPU batch;
#  2. a fusion of two Mixtral-style MoE models (8 experts each, top-2):
#     adapters and routers trained on 1 GPU, on GPUS GPUs with data
#     parallelism, and on GPUS GPUs with the experts spread over the ranks
#     (expert_parallel: each GPU holds 1/GPUS of the experts, tokens go to
#     their expert's GPU and back by all-to-all).
# Throughput is measured between two runs of different lengths (steps 10 and
# 30), so start-up and warm-up cancel. Needs a CUDA build (tools/gpu_build.sh).
# MANGO_BENCH_SMALL=1 MANGO_BENCH_DEVICE=cpu: tiny models on CPUs (Gloo), to
# try the script itself.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build-gpu}
gpus=${2:-2}
work=${MANGO_BENCH_DIR:-/tmp/mango-bench-dist}
rm -rf "$work" && mkdir -p "$work"
device=${MANGO_BENCH_DEVICE:-cuda}
seq=512
[ "${MANGO_BENCH_SMALL:-0}" = 1 ] && seq=64
python3 - "$work" "${MANGO_BENCH_SMALL:-0}" <<'PY'
import json, os, random, sys
w, small = sys.argv[1], sys.argv[2] == '1'
random.seed(0)
words = [''.join(random.choice('abcdefghijklmnopqrstuvwxyz') for _ in range(random.randint(2, 9))) for _ in range(5000)]
with open(f'{w}/text.txt', 'w') as f:
    for _ in range(40000): f.write(' '.join(random.choice(words) for _ in range(12)) + '.\n')
def save(name, c):
    os.makedirs(f'{w}/{name}', exist_ok=True)
    json.dump(c, open(f'{w}/{name}/config.json', 'w'), indent=1)
base = dict(vocab_size=32000, hidden_size=1024, num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=2048,
            rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False, hidden_act='silu', initializer_range=0.02)
if small: base.update(vocab_size=256, hidden_size=64, num_attention_heads=4, num_key_value_heads=4)
save('llama', dict(base, model_type='llama', architectures=['LlamaForCausalLM'], num_hidden_layers=16, intermediate_size=2816))
for i in (0, 1):
    save(f'moe{i}', dict(base, model_type='mixtral', architectures=['MixtralForCausalLM'], num_hidden_layers=8,
                         intermediate_size=1408, num_local_experts=8, num_experts_per_tok=2))
PY
tok=$PWD/tests/fixtures/tokenizers/ascii_bytes
pipeline() {  # $1 file, $2 model block, $3 train model, $4 per-GPU batch
  cat > "$1" <<TOML
output = "out"
device = "$device"
[tokenizer]
path = "$tok"
[data.text]
path = "$work/text.txt"
seq_len = $seq
validation = 0.0
$2
[[steps]]
run = "train"
model = "$3"
data = "text"
steps = 20
batch_size = $4
lr = 1e-4
bf16 = true
aux_weights = { load_balance = 0.0, router_z = 0.0 }
TOML
}
pipeline "$work/llama.toml" "[models.llama]
config = \"$work/llama\"" llama 8
moe_models() {
  printf '[models.moe0]\nconfig = "%s/moe0"\nseed = 1\nexpert_parallel = %s\n[models.moe1]\nconfig = "%s/moe1"\nseed = 2\nexpert_parallel = %s\n' \
    "$work" "$1" "$work" "$1"
  printf '[models.pair]\nfuse = ["moe0", "moe1"]\nalways_adapt = true\nadapter = { name = "linear" }\nrouter = { name = "simple" }\n'
}
pipeline "$work/moe.toml" "$(moe_models false)" pair 8
pipeline "$work/moe_ep.toml" "$(moe_models true)" pair 8

# tokens/s between a 10-step and a 30-step run: (tokens30 - tokens10) / (seconds30 - seconds10)
rate() {  # $1 pipeline, $2 processes, $3 global batch
  local r=()
  for steps in 10 30; do
    out="$work/run-$(basename "$1" .toml)-$2-$steps"
    "$build/bin/mango" run "$1" -o "$out" --no-progress --nproc "$2" --set "steps.0.steps=$steps" --set "steps.0.batch_size=$3" \
      > "$out.log" 2>&1 || { tail -20 "$out.log" >&2; exit 1; }
    r+=("$(python3 -c "import json; s = json.load(open('$out/summary.json'))['steps'][0]; print(s['tokens'], s['seconds'])")")
    echo "  $(basename "$1") on $2: $steps steps, tokens and seconds: ${r[-1]}" >&2
  done
  python3 -c "a, b = '${r[0]}'.split(), '${r[1]}'.split(); print(round((float(b[0]) - float(a[0])) / (float(b[1]) - float(a[1]))))"
}
echo "$( (nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || echo CPU) | head -1) x $gpus; per-rank batch 8 x $seq tokens"
printf '%-58s %12s %12s %10s\n' case "1 GPU" "$gpus GPUs" efficiency
report() {  # $1 label, $2 one, $3 many
  python3 -c "print('%-58s %12s %12s %9.0f%%' % ('$1', '$2 tok/s', '$3 tok/s', 100 * $3 / ($gpus * $2)))"
}
one=$(rate "$work/llama.toml" 1 8); many=$(rate "$work/llama.toml" "$gpus" $((8 * gpus)))
report "LLaMA 270M, all weights, data parallel" "$one" "$many"
one=$(rate "$work/moe.toml" 1 8); many=$(rate "$work/moe.toml" "$gpus" $((8 * gpus)))
report "fusion of 2 MoE (8 experts), data parallel" "$one" "$many"
ep=$(rate "$work/moe_ep.toml" "$gpus" $((8 * gpus)))
report "fusion of 2 MoE, data + expert parallel (1/$gpus experts per GPU)" "$one" "$ep"
