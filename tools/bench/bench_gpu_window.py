#!/usr/bin/env python3
"""Greedy decode tokens/s of a sliding-window model whose window masks nothing:
bench_gpu_llama.py's 1.10B checkpoint relabelled `mistral` with Mistral's
4096-token sliding_window, a 32-token prompt and 128 new tokens, batch 1 and
8, bf16 on one GPU. Mango's default decoding (the static KV cache and CUDA
graphs, which such a window takes from host API revision 8 on) against
MANGO_DECODE=eager (the growing cache and eager steps: what every windowed
model got before), the same checkpoint as `llama` (no window) for reference,
and transformers (sdpa) on the mistral copy; same GPU, same run, with ratios.
usage: bench_gpu_window.py [BUILD_DIR]"""
import json, os, shutil, subprocess, sys, time
import torch
import transformers as tf

build = sys.argv[1] if len(sys.argv) > 1 else "build-gpu"
here = os.path.dirname(os.path.abspath(__file__))
subprocess.run([sys.executable, os.path.join(here, "bench_gpu_llama.py"), build, "--make-only"], check=True)
src, d = "/tmp/mango-llama-1b", "/tmp/mango-mistral-1b"
if not os.path.exists(os.path.join(d, "config.json")):
    shutil.copytree(src, d)
    cfg = json.load(open(os.path.join(d, "config.json")))
    cfg.update(model_type="mistral", architectures=["MistralForCausalLM"], sliding_window=4096)
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=2)
BATCHES, PROMPT, DECODE = [1, 8], 32, 128


def median(f, reps):
    ts = []
    for _ in range(reps):
        torch.cuda.synchronize(); t0 = time.perf_counter(); f(); torch.cuda.synchronize(); ts.append(time.perf_counter() - t0)
    return sorted(ts)[reps // 2]


def mango(model, batch, env_extra):
    env = dict(os.environ, **env_extra)
    out = subprocess.run([f"{build}/bin/bench_generate", model, "--device", "cuda", "--dtype", "bfloat16", "--prefill", "512",
                          "--prompt", str(PROMPT), "--decode", str(DECODE), "--batch", str(batch)], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"bench_generate failed: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


res = {}
m = tf.AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16, attn_implementation="sdpa").cuda().eval()
r = {}
with torch.no_grad():
    for b in BATCHES:
        p = torch.full((b, PROMPT), 5, device="cuda")
        kw = dict(max_new_tokens=DECODE, min_new_tokens=DECODE, do_sample=False, pad_token_id=0)
        m.generate(p, **kw)
        r[f"decode_b{b}"] = b * DECODE / median(lambda: m.generate(p, **kw), 3)
res["transformers-sdpa (mistral)"] = r
print(json.dumps({"impl": "transformers-sdpa (mistral)", **r}), flush=True)
del m
torch.cuda.empty_cache()

for name, model, env_extra in [("mango (mistral)", d, {}), ("mango-eager-decode (mistral)", d, {"MANGO_DECODE": "eager"}),
                               ("mango (llama, no window)", src, {})]:
    r = {}
    for b in BATCHES:
        j = mango(model, b, env_extra)
        r[f"decode_b{b}"] = j["decode_tok_s"]
        r[f"decode_b{b}_mode"] = j["decode"]
    res[name] = r
    print(json.dumps({"impl": name, **r}), flush=True)

for name in ["mango (mistral)", "mango-eager-decode (mistral)", "mango (llama, no window)"]:
    for ref in ["transformers-sdpa (mistral)", "mango-eager-decode (mistral)"]:
        if name == ref:
            continue
        ratios = {k: round(v / res[ref][k], 3) for k, v in res[name].items() if k in res[ref] and not k.endswith("_mode")}
        print(f"ratio {name} / {ref}: {json.dumps(ratios)}")
