#!/usr/bin/env python3
"""MoE on one GPU, Mango against transformers on the same checkpoint, same
GPU, same run. usage: bench_gpu_moe.py [BUILD_DIR]

1. An OLMoE-like layer (64 experts, top-8, hidden 2048, expert FFN 1024,
   bf16) on 4,096 tokens (64 sequences x 64): transformers' MoE block alone
   with each experts implementation (grouped_mm, batched_mm, eager), its whole
   decoder layer (attention + MoE) with the fastest, and Mango's layer
   (build/bin/bench_moe_layer) on the same weights.
2. A tiny Mixtral's greedy decode at batch 1 and 32 (tokens/s).
Prints one JSON line per measurement and the ratios."""
import json
import os
import subprocess
import sys
import time

import torch
import transformers as tf

build = sys.argv[1] if len(sys.argv) > 1 else "build-gpu"
B, T = 64, 64


def timed(fn, reps=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2] * 1e3


def run(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        print(out.stdout, out.stderr[-3000:], flush=True)
        raise SystemExit(out.returncode)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- 1. the OLMoE-like layer -------------------------------------------------
d = "/tmp/mango-olmoe-layer"
cfg = tf.OlmoeConfig(hidden_size=2048, num_hidden_layers=1, num_attention_heads=16, num_key_value_heads=16, intermediate_size=1024,
                     num_experts=64, num_experts_per_tok=8, vocab_size=1024, max_position_embeddings=4096)
if not os.path.exists(os.path.join(d, "config.json")):
    torch.manual_seed(0)
    tf.OlmoeForCausalLM(cfg).to(torch.bfloat16).save_pretrained(d, safe_serialization=True)
x = torch.randn(B, T, 2048, device="cuda", dtype=torch.bfloat16)
flops = 2 * B * T * 8 * 3 * 2048 * 1024  # three expert projections per routed slot
hf = {}
for impl in ["grouped_mm", "batched_mm", "eager"]:
    try:
        m = tf.AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16, experts_implementation=impl).cuda().eval()
    except Exception as e:  # an implementation this transformers lacks
        print(json.dumps({"impl": f"transformers-{impl}", "error": str(e)[:200]}), flush=True)
        continue
    layer = m.model.layers[0]
    try:
        with torch.no_grad():
            ms = timed(lambda: layer.mlp(x))
    except torch.OutOfMemoryError as e:  # batched_mm gathers every routed slot's weights
        print(json.dumps({"impl": f"transformers-{impl}", "error": "out of memory: " + str(e)[:120]}), flush=True)
        del m
        torch.cuda.empty_cache()
        continue
    hf[impl] = ms
    print(json.dumps({"impl": f"transformers-{impl}", "moe_block_ms": ms, "tflops": flops / ms / 1e9}), flush=True)
    if impl == "grouped_mm":
        pos = torch.arange(T, device="cuda").unsqueeze(0).expand(B, T)
        cos_sin = m.model.rotary_emb(x, pos)
        with torch.no_grad():
            lm = timed(lambda: layer(x, attention_mask=None, position_ids=pos, position_embeddings=cos_sin))
        hf["layer"] = lm
        print(json.dumps({"impl": "transformers-grouped_mm", "layer_ms": lm}), flush=True)
    del m
    torch.cuda.empty_cache()
mango = run([f"{build}/bin/bench_moe_layer", d, "--device", "cuda", "--dtype", "bfloat16", "--batch", str(B), "--tokens", str(T)])
print(json.dumps(mango), flush=True)
fastest = min(v for k, v in hf.items() if k != "layer")
if "layer" in hf:
    print(f"layer (attention + MoE) on {B * T} tokens: Mango {mango['layer_ms']:.2f} ms, transformers (grouped_mm) {hf['layer']:.2f} ms: "
          f"{hf['layer'] / mango['layer_ms']:.2f}x; transformers' fastest MoE block alone {fastest:.2f} ms")

# ---- 2. tiny Mixtral decode ------------------------------------------------------
d2 = "/tmp/mango-mixtral-tiny"
cfg2 = tf.MixtralConfig(hidden_size=512, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4, intermediate_size=1024,
                        num_local_experts=8, num_experts_per_tok=2, vocab_size=32000, max_position_embeddings=1024)
if not os.path.exists(os.path.join(d2, "config.json")):
    torch.manual_seed(0)
    tf.MixtralForCausalLM(cfg2).to(torch.bfloat16).save_pretrained(d2, safe_serialization=True)
m = tf.AutoModelForCausalLM.from_pretrained(d2, dtype=torch.bfloat16).cuda().eval()
for batch in (1, 32):
    p = torch.full((batch, 16), 5, device="cuda")
    kw = dict(max_new_tokens=64, min_new_tokens=64, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        ms = timed(lambda: m.generate(p, **kw), reps=3)
    hf_tok = batch * 64 / ms * 1e3
    r = run([f"{build}/bin/bench_generate", d2, "--device", "cuda", "--dtype", "bfloat16", "--prefill", "64", "--prompt", "16", "--decode",
             "64", "--batch", str(batch)])
    print(json.dumps({"mixtral_decode_batch": batch, "transformers_tok_s": hf_tok, "mango_tok_s": r["decode_tok_s"],
                      "ratio": r["decode_tok_s"] / hf_tok}), flush=True)
