#!/usr/bin/env python3
"""A 1.10B LLaMA (TinyLlama's shapes: hidden 2048, 22 layers, 32 heads, 4 KV
heads) in bf16 on one GPU: prefill tokens/s at 512 and 2,048 tokens and greedy
decode tokens/s at batch 1, 8 and 32, for transformers (sdpa) and Mango
(build/bin/bench_generate: its default decoding — static KV cache, CUDA
graphs and the host's fused kernels —, MANGO_FUSED_OPS=0 without the fused
kernels, and MANGO_DECODE=eager, the growing cache with eager steps, and a
fusion of two copies of the model against twice the plain model),
on the same random checkpoint, same GPU, same run; plus the decode roofline
(device copy bandwidth / weight bytes) and every ratio.
usage: bench_gpu_llama.py [BUILD_DIR] [--make-only] (--make-only: write the
checkpoint to /tmp/mango-llama-1b, as the profiling scripts want, and stop)"""
import json, os, subprocess, sys, time
import torch
import transformers as tf

args = [a for a in sys.argv[1:] if a != "--make-only"]
build = args[0] if args else "build-gpu"
d = "/tmp/mango-llama-1b"
cfg = tf.LlamaConfig(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                     intermediate_size=5632, vocab_size=32000, max_position_embeddings=4096, tie_word_embeddings=False)
if not os.path.exists(os.path.join(d, "config.json")):
    torch.manual_seed(0)
    tf.LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(d, safe_serialization=True)
if "--make-only" in sys.argv:
    sys.exit(0)
PREFILLS, BATCHES, PROMPT, DECODE = [512, 2048], [1, 8, 32], 32, 128


def median(f, reps):
    ts = []
    for _ in range(reps):
        torch.cuda.synchronize(); t0 = time.perf_counter(); f(); torch.cuda.synchronize(); ts.append(time.perf_counter() - t0)
    return sorted(ts)[reps // 2]


# Roofline: a batch-1 decode step reads every weight once.
x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda"); y = torch.empty_like(x)
y.copy_(x)
bw = 2 * x.numel() / median(lambda: y.copy_(x), 10)  # read + write bytes per second
del x, y
res = {}
for attn in ["sdpa"]:
    m = tf.AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16, attn_implementation=attn).cuda().eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in m.parameters())
    r = {}
    with torch.no_grad():
        for n in PREFILLS:
            ids = torch.randint(32000, (1, n), device="cuda"); m(ids)
            r[f"prefill_{n}"] = n / median(lambda: m(ids), 10)
        for b in BATCHES if attn == "sdpa" else [1]:
            p = torch.full((b, PROMPT), 5, device="cuda")
            kw = dict(max_new_tokens=DECODE, min_new_tokens=DECODE, do_sample=False, pad_token_id=0)
            m.generate(p, **kw)
            r[f"decode_b{b}"] = b * DECODE / median(lambda: m.generate(p, **kw), 3)
    res[f"transformers-{attn}"] = r
    print(json.dumps({"impl": f"transformers-{attn}", **r}), flush=True)
    del m; torch.cuda.empty_cache()
roofline = bw / weight_bytes
print(json.dumps({"copy_GB_s": bw / 1e9, "weight_GB": weight_bytes / 1e9, "decode_roofline_tok_s": roofline}), flush=True)


def mango(prefill, batch, decode, env_extra, extra=()):
    env = dict(os.environ, **env_extra)
    out = subprocess.run([f"{build}/bin/bench_generate", d, "--device", "cuda", "--dtype", "bfloat16", "--prefill", str(prefill),
                          "--prompt", str(PROMPT), "--decode", str(decode), "--batch", str(batch), *extra],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"bench_generate failed: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# Mango as it decodes by default (static KV cache, CUDA graphs, the host's fused kernels), without the fused
# kernels (MANGO_FUSED_OPS=0), and with the growing cache and eager steps (MANGO_DECODE=eager) for the before/after.
for name, env_extra in [("mango", {}), ("mango-unfused-ops", {"MANGO_FUSED_OPS": "0"}), ("mango-eager-decode", {"MANGO_DECODE": "eager"})]:
    r = {}
    for i, b in enumerate(BATCHES):
        j = mango(PREFILLS[min(i, len(PREFILLS) - 1)], b, DECODE, env_extra)
        if i < len(PREFILLS): r[f"prefill_{PREFILLS[i]}"] = j["prefill_tok_s"]
        r[f"decode_b{b}"] = j["decode_tok_s"]
        r[f"decode_b{b}_mode"] = j["decode"]
    res[name] = r
    print(json.dumps({"impl": name, **r}), flush=True)

for name in ["mango", "mango-unfused-ops", "mango-eager-decode"]:
    for ref in ["transformers-sdpa"]:
        ratios = {k: round(v / res[ref][k], 3) for k, v in res[name].items() if k in res[ref]}
        print(f"ratio {name}/{ref}: {json.dumps(ratios)}")
for name in ["mango", "mango-unfused-ops", "mango-eager-decode", "transformers-sdpa"]:
    print(f"{name} decode b1 = {res[name]['decode_b1'] / roofline:.1%} of the roofline ({roofline:.0f} tok/s)")

# Fusion (Modular Layers) of two copies of the model, a simple router per layer (float32 routers over the
# bf16 members): its cost over running both members' blocks, i.e. over twice the plain model (goal <= 1.10).
# Both timed in one process, in turn (the plain model's prefill rate varies between processes).
out = subprocess.run([f"{build}/bin/bench_generate", d, "--device", "cuda", "--dtype", "bfloat16", "--prefill", str(PREFILLS[0]),
                      "--prompt", str(PROMPT), "--decode", str(DECODE), "--batch", "1", "--fuse", "compare"],
                     capture_output=True, text=True)
if out.returncode != 0:
    sys.exit(f"bench_generate failed: {out.stderr[-3000:]}")
plain, f, overhead = (json.loads(l) for l in out.stdout.strip().splitlines()[-3:])
print(json.dumps({"impl": "mango-fusion-of-two", f"prefill_{PREFILLS[0]}": f["prefill_tok_s"], "decode_b1": f["decode_tok_s"],
                  "decode_b1_mode": f["decode"], f"plain_prefill_{PREFILLS[0]}_same_process": plain["prefill_tok_s"],
                  "plain_decode_b1_same_process": plain["decode_tok_s"]}), flush=True)
o = overhead["fusion_overhead"]
print(f"fusion overhead over its two members (time / 2x the plain model's, same process): prefill {PREFILLS[0]} "
      f"{o['prefill']:.2f}x, decode b1 {o['decode']:.2f}x")
