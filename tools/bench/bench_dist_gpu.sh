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
# Throughput is measured within one run of each case, after its warm-up
# (steps 11..60 by default: MANGO_BENCH_WARM, MANGO_BENCH_STEPS). Needs a CUDA build (tools/gpu_build.sh).
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
warm=${MANGO_BENCH_WARM:-10}
steps=${MANGO_BENCH_STEPS:-60}
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
steps = 60
batch_size = $4
lr = 1e-4
bf16 = true
aux_weights = { load_balance = 0.0, router_z = 0.0 }
TOML
}
pipeline "$work/llama.toml" "[models.llama]
config = \"$work/llama\"" llama 8
# Expert parallelism reads a checkpoint (each rank loads its experts): draw the two MoE models once and save them.
cat > "$work/make_moe.toml" <<TOML
output = "out"
[models.moe0]
config = "$work/moe0"
seed = 1
[models.moe1]
config = "$work/moe1"
seed = 2
[[steps]]
run = "save"
model = "moe0"
path = "$work/moe0-weights"
[[steps]]
run = "save"
model = "moe1"
path = "$work/moe1-weights"
TOML
"$build/bin/mango" run "$work/make_moe.toml" -o "$work/make_moe" --no-progress > "$work/make_moe.log" 2>&1 || { tail -20 "$work/make_moe.log" >&2; exit 1; }
moe_models() {
  printf '[models.moe0]\npath = "%s/moe0-weights"\nexpert_parallel = %s\n[models.moe1]\npath = "%s/moe1-weights"\nexpert_parallel = %s\n' \
    "$work" "$1" "$work" "$1"
  printf '[models.pair]\nfuse = ["moe0", "moe1"]\nalways_adapt = true\nadapter = { name = "linear" }\nrouter = { name = "simple" }\n'
}
pipeline "$work/moe.toml" "$(moe_models false)" pair 8
pipeline "$work/moe_ep.toml" "$(moe_models true)" pair 8

# tokens/s of one run after its warm-up: the metrics log has each step's
# tokens and seconds since training began; steps 1..W are left out.
rate() {  # $1 pipeline, $2 processes, $3 global batch
  local out="$work/run-$(basename "$1" .toml)-$2${MANGO_DP_OVERLAP:+-overlap$MANGO_DP_OVERLAP}"
  "$build/bin/mango" run "$1" -o "$out" --no-progress --nproc "$2" --set "steps.0.steps=$steps" --set "steps.0.batch_size=$3" \
    > "$out.log" 2>&1 || { tail -20 "$out.log" >&2; exit 1; }
  python3 - "$out" "$warm" <<'PY'
import glob, json, sys
rows = [json.loads(l) for l in open(glob.glob(sys.argv[1] + '/**/*.metrics.jsonl', recursive=True)[0]) if '"tokens"' in l]
w = int(sys.argv[2])
tokens = sum(r['tokens'] for r in rows[w:])
seconds = rows[-1]['seconds'] - rows[w - 1]['seconds']
print(f'  {sys.argv[1]}: steps {w + 1}..{len(rows)}: {tokens} tokens in {seconds:.3f} s', file=sys.stderr)
print(round(tokens / seconds))
PY
}
echo "$( (nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || echo CPU) | head -1) x $gpus; per-rank batch 8 x $seq tokens"
printf '%-58s %12s %12s %10s\n' case "1 GPU" "$gpus GPUs" efficiency
report() {  # $1 label, $2 one, $3 many
  python3 -c "print('%-58s %12s %12s %9.0f%%' % ('$1', '$2 tok/s', '$3 tok/s', 100 * $3 / ($gpus * $2)))"
}
one=$(rate "$work/llama.toml" 1 8); many=$(rate "$work/llama.toml" "$gpus" $((8 * gpus)))
report "LLaMA 270M, all weights, data parallel" "$one" "$many"
many=$(MANGO_DP_OVERLAP=0 rate "$work/llama.toml" "$gpus" $((8 * gpus)))
report "  the same, gradients summed after the backward pass" "$one" "$many"
one=$(rate "$work/moe.toml" 1 8); many=$(rate "$work/moe.toml" "$gpus" $((8 * gpus)))
report "fusion of 2 MoE (8 experts), data parallel" "$one" "$many"
ep=$(rate "$work/moe_ep.toml" "$gpus" $((8 * gpus)))
report "fusion of 2 MoE, data + expert parallel (1/$gpus experts per GPU)" "$one" "$ep"

# The communication floor beside it: one all-reduce of the LLaMA's float32
# gradients (the bytes each data-parallel step exchanges) by PyTorch's own NCCL.
if [ "$device" = cuda ] && python3 -c "import torch.distributed" 2>/dev/null; then
  params=$(python3 -c "
c = dict(v=32000, h=1024, i=2816, l=16)
print(2 * c['v'] * c['h'] + c['l'] * (4 * c['h'] * c['h'] + 3 * c['h'] * c['i'] + 2 * c['h']) + c['h'])")
  cat > "$work/allreduce.py" <<'PY'  # a file: torch.multiprocessing.spawn re-imports its main module
import os, sys, time, torch, torch.distributed as dist, torch.multiprocessing as mp
def run(rank, world, n):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT='29533')
    torch.cuda.set_device(rank)
    dist.init_process_group('nccl', rank=rank, world_size=world)
    x = torch.ones(n, device='cuda')
    for _ in range(3): dist.all_reduce(x)
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(10): dist.all_reduce(x)
    torch.cuda.synchronize(); s = (time.perf_counter() - t) / 10
    if rank == 0:
        print('all-reduce of %.0f M float32 gradients (PyTorch NCCL, %d GPUs): %.1f ms, bus bandwidth %.0f GB/s'
              % (n / 1e6, world, 1e3 * s, 4 * n * 2 * (world - 1) / world / s / 1e9))
    dist.destroy_process_group()
if __name__ == '__main__':
    world, n = int(sys.argv[1]), int(sys.argv[2])
    mp.spawn(run, args=(world, n), nprocs=world)
PY
  python3 "$work/allreduce.py" "$gpus" "$params"
fi
