#!/usr/bin/env bash
# tools/bench/before_after_gpu.sh [SRC_TAR] — an older Mango against this one
# and transformers, on the same GPU in the same run: the tree in SRC_TAR
# (default .before/src.tar, made here with `git archive -o .before/src.tar
# REV`; carry .before and .debs to the GPU machine) is built beside this
# tree (tools/gpu_build.sh for each, private prefixes), then both
# bench_generate binaries time prefill of 512 and 2,048 tokens and batch-1
# greedy decode of 128 tokens on bench_gpu_llama.py's 1.1B LLaMA, and
# transformers (sdpa) the same. Prints one line per measurement.
set -u
cd "$(dirname "$0")/../.."
src=${1:-.before/src.tar}
old=/tmp/mango-before
export LD_LIBRARY_PATH=/tmp/mango-deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
rm -rf "$old" && mkdir -p "$old" && tar -xf "$src" -C "$old" && cp -r .debs "$old"/
(cd "$old" && MANGO_DEPS=/tmp/mango-deps-before LD_LIBRARY_PATH=/tmp/mango-deps-before/usr/lib/x86_64-linux-gnu:$LD_LIBRARY_PATH \
  tools/gpu_build.sh "$old/build" > /tmp/mango-before-build.log 2>&1 || tail -20 /tmp/mango-before-build.log) &
b=$!
tools/gpu_build.sh build-gpu > /tmp/mango-build.log 2>&1 || tail -20 /tmp/mango-build.log
wait $b
python3 tools/bench/bench_gpu_llama.py --make-only > /dev/null 2>&1
model=/tmp/mango-llama-1b
for n in 512 2048; do
  for impl in "$old/build" build-gpu; do
    lib=/tmp/mango-deps
    [ "$impl" = build-gpu ] || lib=/tmp/mango-deps-before
    echo "$impl prefill $n: $(LD_LIBRARY_PATH=$lib/usr/lib/x86_64-linux-gnu:$LD_LIBRARY_PATH "$impl/bin/bench_generate" $model --device cuda \
      --dtype bfloat16 --prefill $n --prompt 32 --decode 128 --batch 1 | tail -1)"
  done
done
python3 - "$model" <<'PY'
import sys, time, torch, transformers as tf
m = tf.AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16, attn_implementation="sdpa").cuda().eval()
def med(f, n):
    ts = []
    for _ in range(n):
        torch.cuda.synchronize(); t0 = time.perf_counter(); f(); torch.cuda.synchronize(); ts.append(time.perf_counter() - t0)
    return sorted(ts)[n // 2]
with torch.no_grad():
    for n in (512, 2048):
        ids = torch.randint(32000, (1, n), device="cuda"); m(ids)
        print(f"transformers-sdpa prefill {n}: {n / med(lambda: m(ids), 10):.0f} tok/s")
    p = torch.full((1, 32), 5, device="cuda"); kw = dict(max_new_tokens=128, min_new_tokens=128, do_sample=False, pad_token_id=0)
    m.generate(p, **kw)
    print(f"transformers-sdpa decode b1: {128 / med(lambda: m.generate(p, **kw), 3):.1f} tok/s")
PY
