#!/usr/bin/env python3
"""~1B LLaMA in bf16 on one GPU: prefill and greedy-decode tokens/s of
transformers and of Mango (build-gpu/bin/bench_generate) on the same random
checkpoint, same GPU, same run. usage: bench_gpu_llama.py [BUILD_DIR]"""
import json, os, subprocess, sys, time
import torch
import transformers as tf

build = sys.argv[1] if len(sys.argv) > 1 else "build-gpu"
d = "/tmp/mango-llama-1b"
cfg = tf.LlamaConfig(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                     intermediate_size=8192, vocab_size=32000, max_position_embeddings=4096)
if not os.path.exists(os.path.join(d, "config.json")):
    torch.manual_seed(0)
    tf.LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(d, safe_serialization=True)
PREFILL, PROMPT, DECODE = 512, 32, 128
res = {}
for attn in ["sdpa", "eager"]:
    m = tf.AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16, attn_implementation=attn).cuda().eval()
    n = sum(p.numel() for p in m.parameters())
    ids = torch.randint(32000, (1, PREFILL), device="cuda")
    with torch.no_grad():
        m(ids); torch.cuda.synchronize()
        ts = []
        for _ in range(10):
            t0 = time.perf_counter(); m(ids); torch.cuda.synchronize(); ts.append(time.perf_counter() - t0)
        p = torch.full((1, PROMPT), 5, device="cuda")
        kw = dict(max_new_tokens=DECODE, min_new_tokens=DECODE, do_sample=False, pad_token_id=0)
        m.generate(p, **kw); torch.cuda.synchronize()
        gs = []
        for _ in range(3):
            t0 = time.perf_counter(); m.generate(p, **kw); torch.cuda.synchronize(); gs.append(time.perf_counter() - t0)
    res[attn] = {"prefill_tok_s": PREFILL / sorted(ts)[5], "decode_tok_s": DECODE / sorted(gs)[1]}
    print(json.dumps({"impl": f"transformers-{attn}", "params": n, **res[attn]}), flush=True)
    del m; torch.cuda.empty_cache()
out = subprocess.run([f"{build}/bin/bench_generate", d, "--device", "cuda", "--dtype", "bfloat16", "--prefill", str(PREFILL),
                      "--prompt", str(PROMPT), "--decode", str(DECODE)], capture_output=True, text=True)
print(out.stdout.strip(), out.stderr[-2000:], flush=True)
mango = json.loads(out.stdout.strip().splitlines()[-1])
for attn, r in res.items():
    print(f"ratio mango/transformers-{attn}: prefill {mango['prefill_tok_s'] / r['prefill_tok_s']:.3f}, "
          f"decode {mango['decode_tok_s'] / r['decode_tok_s']:.3f}")
