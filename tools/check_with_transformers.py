#!/usr/bin/env python3
"""Do transformers and Mango agree on what `mango convert-moe` and `mango merge` write?
usage: tools/check_with_transformers.py [BUILD_DIR]   (needs torch, transformers)

Random dense models (llama, mistral, qwen2; fp32, vocabulary of the test
tokenizer) are converted by BUILD_DIR/bin/mango convert-moe in several ways;
each output is loaded by transformers (no missing or unexpected tensors
allowed) and must give the same greedy tokens as `mango generate`. Where the
conversion is exact by construction (upcycling with a zero router, split with
every expert active), transformers' logits of the MoE model must equal its
logits of the dense one. Merges (ties, slerp, passthrough) of fine-tunes must
load too and give Mango's greedy tokens. Runs on the CPU in fp32. Prints one JSON line per
case and exits 1 when any disagrees."""
import json
import os
import shutil
import subprocess
import sys

import torch
import transformers as tf

build = sys.argv[1] if len(sys.argv) > 1 else "build"
mango = os.path.join(build, "bin", "mango")
tokenizer = "tests/golden/tokenizers/llama3_style/tokenizer.json"
work = "/tmp/mango-moe-check"
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)
torch.set_grad_enabled(False)
VOCAB, NEW = 1500, 24
PROMPTS = ["The committee said that the", "She looked at him and", "function add(a, b) {"]


def dense(name, family, seed=0, **extra):
    conf = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                vocab_size=VOCAB, max_position_embeddings=256, bos_token_id=0, eos_token_id=1, tie_word_embeddings=False,
                initializer_range=0.1)
    conf.update(extra)
    cfg = {"llama": tf.LlamaConfig, "mistral": tf.MistralConfig, "qwen2": tf.Qwen2Config}[family](**conf)
    torch.manual_seed(seed)
    model = {"llama": tf.LlamaForCausalLM, "mistral": tf.MistralForCausalLM, "qwen2": tf.Qwen2ForCausalLM}[family](cfg)
    if family == "qwen2":  # non-zero biases, so they matter
        for layer in model.model.layers:
            for p in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                p.bias.normal_(0, 0.1)
    d = os.path.join(work, name)
    model.save_pretrained(d, safe_serialization=True)
    shutil.copy(tokenizer, os.path.join(d, "tokenizer.json"))
    return d


def fine_tune(base, name, seed):
    """A 'fine-tune' of base: every weight nudged."""
    m = tf.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    for p in m.parameters():
        p.add_(torch.randn(p.shape, generator=g) * 0.05)
    d = os.path.join(work, name)
    m.save_pretrained(d, safe_serialization=True)
    shutil.copy(tokenizer, os.path.join(d, "tokenizer.json"))
    return d


def convert(src, name, *args):
    out = os.path.join(work, name)
    r = subprocess.run([mango, "convert-moe", src, out, "--json", *args], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"convert-moe {name} failed:\n{r.stderr[-3000:]}")
    return out, json.loads(r.stdout)


def merge(name, yaml):
    cfg = os.path.join(work, name + ".yml")
    with open(cfg, "w") as f:
        f.write(yaml)
    out = os.path.join(work, name)
    r = subprocess.run([mango, "merge", cfg, out, "--json"], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"merge {name} failed:\n{r.stderr[-3000:]}")
    shutil.copy(tokenizer, os.path.join(out, "tokenizer.json"))
    return out


def hf(d):
    m, info = tf.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    return m.eval(), bad


def mango_greedy(d):
    r = subprocess.run([mango, "--json", "generate", d, "--max-new-tokens", str(NEW)] + sum([["--prompt", p] for p in PROMPTS], []),
                       capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"mango generate {d} failed:\n{r.stderr[-3000:]}")
    return [(x["prompt_ids"], x["generated_ids"]) for x in json.loads(r.stdout)["results"]]


def hf_greedy(m, prompt_ids):
    ids = torch.tensor([prompt_ids])
    out = m.generate(ids, max_new_tokens=NEW, do_sample=False, eos_token_id=1, pad_token_id=1)
    gen = out[0, ids.shape[1]:].tolist()
    return gen[: gen.index(1) + 1] if 1 in gen else gen


failures = 0


def check(case, out, report, dense_dir=None):
    global failures
    m, bad = hf(out)
    row = {"case": case}
    if "format" in report:
        row.update(format=report["format"], layers=[x["layer"] for x in report["layers"] if x["converted"]])
    if bad:
        row["loading"] = bad
    agree = []
    for prompt_ids, mango_ids in mango_greedy(out):
        agree.append(hf_greedy(m, prompt_ids) == mango_ids)
    row["greedy_agree"] = f"{sum(agree)}/{len(agree)}"
    if dense_dir:
        ids = torch.randint(2, VOCAB, (4, 48), generator=torch.Generator().manual_seed(1))
        ref, _ = hf(dense_dir)
        row["max_abs_logit_diff_vs_dense"] = float((m(ids).logits - ref(ids).logits).abs().max())
    ok = not bad and all(agree) and row.get("max_abs_logit_diff_vs_dense", 0) <= 1e-5
    row["ok"] = ok
    failures += not ok
    print(json.dumps(row), flush=True)


llama = dense("llama", "llama")
out, rep = convert(llama, "llama_upcycle_exact", "--experts", "4", "--top-k", "2")
check("llama upcycle (zero router): exact", out, rep, llama)
out, rep = convert(llama, "llama_split_all", "--converter", "split", "--experts", "4", "--top-k", "4")
check("llama split, top-k = experts: exact", out, rep, llama)
out, rep = convert(llama, "llama_upcycle_noisy", "--experts", "8", "--top-k", "2", "--set", "noise=0.2", "--set", "router_init=random",
                   "--seed", "3")
check("llama upcycle, noise 0.2, random router", out, rep)
out, rep = convert(llama, "llama_split_every2", "--converter", "split", "--set", "method=clustering", "--set", "router_init=random",
                   "--experts", "4", "--top-k", "2", "--every", "2")
check("llama split (clustering) every 2nd layer, top-2", out, rep)
out, rep = convert(llama, "llama_drop_layers", "--set", "drop_ratio=0.5", "--set", "router_init=random", "--layers", "0,3")
check("llama drop-upcycling layers 0,3", out, rep)

qwen2 = dense("qwen2", "qwen2")
out, rep = convert(qwen2, "qwen2_upcycle", "--set", "noise=0.1", "--set", "router_init=random")
check("qwen2 (q/k/v biases) upcycle, every layer", out, rep)
out, rep = convert(qwen2, "qwen2_upcycle_exact", "--every", "2")
check("qwen2 upcycle every 2nd layer: exact", out, rep, qwen2)

mistral = dense("mistral", "mistral", sliding_window=None)
out, rep = convert(mistral, "mistral_split", "--converter", "split", "--set", "router_init=random", "--experts", "2", "--top-k", "1")
check("mistral split 2 experts, top-1", out, rep)

a, b = fine_tune(llama, "ft_a", 1), fine_tune(llama, "ft_b", 2)
prompts = os.path.join(work, "prompts.yml")
with open(prompts, "w") as f:
    f.write("experts:\n"
            f"  - source_model: {a}\n    positive_prompts: [\"The committee said\"]\n"
            f"  - source_model: {b}\n    positive_prompts: [\"function add(a, b)\"]\n    negative_prompts: [\"The committee\"]\n")
for mode in ["hidden", "cheap_embed"]:
    out, rep = convert(llama, "from_models_" + mode, "--converter", "from_models", "--experts", "2", "--top-k", "1", "--prompts", prompts,
                       "--gate-mode", mode)
    check(f"from_models, 2 fine-tunes, gate_mode {mode}", out, rep)

ties = merge("merge_ties", f"merge_method: ties\nbase_model: {llama}\nmodels:\n  - model: {a}\n    parameters: {{weight: 0.6, density: 0.5}}\n"
                          f"  - model: {b}\n    parameters: {{weight: 0.4, density: 0.5}}\ndtype: float32\n")
check("merge: ties of two fine-tunes", ties, {})
slerp = merge("merge_slerp", f"merge_method: slerp\nbase_model: {a}\nmodels:\n  - model: {a}\n  - model: {b}\n"
                             "parameters:\n  t: [0, 0.5, 1]\ndtype: float32\n")
check("merge: slerp with a layer gradient", slerp, {})
deeper = merge("merge_passthrough", f"merge_method: passthrough\nslices:\n  - sources: [{{model: {a}, layer_range: [0, 3]}}]\n"
                                    f"  - sources: [{{model: {b}, layer_range: [1, 4]}}]\ndtype: float32\n")
check("merge: passthrough, 6 layers from two models", deeper, {})

print(json.dumps({"failures": failures, "transformers": tf.__version__, "torch": torch.__version__}))
sys.exit(1 if failures else 0)
