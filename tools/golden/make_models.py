#!/usr/bin/env python3
"""Tiny random-weight Hugging Face models of every architecture Mango supports,
with their outputs, for parity tests. Runs where `transformers` and `torch`
are installed (the GPU machine), on CPU in float32, no network.

  python3 tools/golden/make_models.py --out tests/golden/models

For each model NAME writes NAME/config.json, NAME/model.safetensors (as
save_pretrained writes them) and NAME/golden.json:
  input_ids, attention_mask, position_ids  a padded batch of 2 prompts
                                           (left padding for decoders, right for encoders)
  logits / last_hidden_state               float32, [B, T, V] / [B, T, H], padded rows included
  generated                                20 greedy new tokens per prompt (decoders), via generate()
Weights are drawn wider than the default init (std 0.15, norms around 1) so
that wrong math shows up as large differences.
"""
import argparse
import json
import os

import torch
import transformers as tf

VOCAB = 128
B, T = 2, 9
PAD = 0


def decoder_configs():
    common = dict(vocab_size=VOCAB, pad_token_id=PAD, bos_token_id=1, eos_token_id=2)
    return {
        "gpt2": tf.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=64, **common),
        "gpt_neo": tf.GPTNeoConfig(hidden_size=64, num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]],
                                   window_size=4, max_position_embeddings=64, intermediate_size=128, **common),
        "gptj": tf.GPTJConfig(n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=64, n_inner=128, **common),
        "llama": tf.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                intermediate_size=128, max_position_embeddings=64, rope_theta=10000.0, **common),
        "llama3_scaled": tf.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                                        intermediate_size=96, max_position_embeddings=64, tie_word_embeddings=True,
                                        rope_theta=500000.0,
                                        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
                                        **common),
        "llama_linear": tf.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                       intermediate_size=128, max_position_embeddings=64,
                                       rope_scaling={"rope_type": "linear", "factor": 2.0}, **common),
        "mistral": tf.MistralConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                    intermediate_size=128, max_position_embeddings=64, sliding_window=4, **common),
        "qwen2": tf.Qwen2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                intermediate_size=128, max_position_embeddings=64, rope_theta=1000000.0,
                                tie_word_embeddings=True, **common),
        # Appended (earlier models keep their seeds): config switches the models above leave at their defaults.
        "llama_bias": tf.LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                     intermediate_size=64, max_position_embeddings=64, attention_bias=True, **common),
        "gpt2_untied": tf.GPT2Config(n_embd=32, n_layer=1, n_head=4, n_positions=64, tie_word_embeddings=False,
                                     scale_attn_weights=False, **common),
        "gpt_neo_untied": tf.GPTNeoConfig(hidden_size=32, num_layers=2, num_heads=4, attention_types=[[["local", "global"], 1]],
                                          window_size=3, max_position_embeddings=64, intermediate_size=64,
                                          tie_word_embeddings=False, **common),
    }


def moe_configs():
    """Tiny mixture-of-experts decoders: every routing variant, dense layers
    between sparse ones, shared experts, q/k norms, MLA with yarn rope."""
    common = dict(vocab_size=VOCAB, pad_token_id=PAD, bos_token_id=1, eos_token_id=2, max_position_embeddings=64)
    return {
        "mixtral": tf.MixtralConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                    intermediate_size=48, num_local_experts=4, num_experts_per_tok=2, rope_theta=1000000.0, **common),
        "mixtral_fused": tf.MixtralConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                          intermediate_size=48, num_local_experts=4, num_experts_per_tok=2, sliding_window=5, **common),
        "qwen2_moe": tf.Qwen2MoeConfig(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                       intermediate_size=96, moe_intermediate_size=32, shared_expert_intermediate_size=48,
                                       num_experts=4, num_experts_per_tok=2, norm_topk_prob=False, decoder_sparse_step=1,
                                       mlp_only_layers=[1], **common),
        "qwen3_moe": tf.Qwen3MoeConfig(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                                       intermediate_size=96, moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2,
                                       norm_topk_prob=True, decoder_sparse_step=2, **common),
        "olmoe": tf.OlmoeConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                intermediate_size=32, num_experts=4, num_experts_per_tok=2, clip_qkv=3.0, norm_topk_prob=False, **common),
        "deepseek_v3": tf.DeepseekV3Config(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
                                           intermediate_size=96, moe_intermediate_size=32, n_routed_experts=8, n_shared_experts=1,
                                           num_experts_per_tok=2, n_group=4, topk_group=2, first_k_dense_replace=1, q_lora_rank=32,
                                           kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16,
                                           routed_scaling_factor=2.5, norm_topk_prob=True, rope_interleave=True,
                                           rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                                                         "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0},
                                           **common),
        "deepseek_v3_plain": tf.DeepseekV3Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                                 intermediate_size=96, moe_intermediate_size=32, n_routed_experts=4, n_shared_experts=2,
                                                 num_experts_per_tok=3, n_group=1, topk_group=1, first_k_dense_replace=0, q_lora_rank=None,
                                                 kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=12,
                                                 routed_scaling_factor=1.0, norm_topk_prob=False, rope_interleave=False, **common),
    }


def encoder_configs():
    return {
        "bert": tf.BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=128, max_position_embeddings=64, pad_token_id=PAD),
        "roberta": tf.RobertaConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=128, max_position_embeddings=66, pad_token_id=1, bos_token_id=0,
                                    eos_token_id=2),
        "distilbert": tf.DistilBertConfig(vocab_size=VOCAB, dim=64, n_layers=2, n_heads=4, hidden_dim=128,
                                          max_position_embeddings=64, pad_token_id=PAD),
        # RobertaLMHead applies erf GELU whatever hidden_act says.
        "roberta_gelu_new": tf.RobertaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                             intermediate_size=64, max_position_embeddings=66, pad_token_id=1, bos_token_id=0,
                                             eos_token_id=2, hidden_act="gelu_new"),
    }


def widen(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.15
            is_norm = "norm" in name.lower() or "ln" in name.split(".")[-2].lower() if "." in name else False
            if p.dim() == 1 and is_norm and name.endswith("weight"):
                p.copy_(1.0 + noise)
            else:
                p.copy_(noise)


def prompts(pad_id, left, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    short = 5  # second prompt is shorter: padded
    if left:
        ids[1, : T - short] = pad_id
        mask[1, : T - short] = 0
    else:
        ids[1, short:] = pad_id
        mask[1, short:] = 0
    return ids, mask


def save(model, name, out, record, **kw):
    d = os.path.join(out, name)
    model.save_pretrained(d, safe_serialization=True, **kw)
    with open(os.path.join(d, "golden.json"), "w") as fh:
        json.dump(record, fh)
    print(name, sum(p.numel() for p in model.parameters()), "params")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/golden/models")
    ap.add_argument("--only", default="", help="comma-separated model names (default: all)")
    a = ap.parse_args()
    torch.manual_seed(0)
    for i, (name, cfg) in enumerate(decoder_configs().items()):
        if a.only and name not in a.only.split(","):
            continue
        model = tf.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
        widen(model, 100 + i)
        ids, mask = prompts(PAD, left=True, seed=200 + i)
        pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, position_ids=pos, output_hidden_states=True)
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=20, do_sample=False,
                                 min_new_tokens=20, pad_token_id=PAD, eos_token_id=None)
        save(model, name, a.out, {
            "model_type": cfg.model_type, "input_ids": ids.tolist(), "attention_mask": mask.tolist(),
            "position_ids": pos.tolist(), "logits": out.logits.tolist(),
            "last_hidden_state": out.hidden_states[-1].tolist(), "generated": gen[:, T:].tolist()})
    for i, (name, cfg) in enumerate(moe_configs().items()):
        if a.only and name not in a.only.split(","):
            continue
        model = tf.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
        widen(model, 500 + i)
        g = torch.Generator().manual_seed(600 + i)
        with torch.no_grad():  # DeepSeek's correction bias is a buffer: give it values that change selections
            for bname, buf in model.named_buffers():
                if bname.endswith("e_score_correction_bias"):
                    buf.copy_(torch.randn(buf.shape, generator=g) * 0.3)
        ids, mask = prompts(PAD, left=True, seed=700 + i)
        pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, position_ids=pos, output_hidden_states=True)
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=20, do_sample=False,
                                 min_new_tokens=20, pad_token_id=PAD, eos_token_id=None)
        save(model, name, a.out, {
            "model_type": cfg.model_type, "input_ids": ids.tolist(), "attention_mask": mask.tolist(),
            "position_ids": pos.tolist(), "logits": out.logits.tolist(),
            "last_hidden_state": out.hidden_states[-1].tolist(), "generated": gen[:, T:].tolist()},
            **({"save_original_format": False} if name.endswith("_fused") else {}))
    for i, (name, cfg) in enumerate(encoder_configs().items()):
        if a.only and name not in a.only.split(","):
            continue
        model = tf.AutoModelForMaskedLM.from_config(cfg, attn_implementation="eager").eval()
        widen(model, 300 + i)
        ids, mask = prompts(cfg.pad_token_id, left=False, seed=400 + i)
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        save(model, name, a.out, {
            "model_type": cfg.model_type, "input_ids": ids.tolist(), "attention_mask": mask.tolist(),
            "logits": out.logits.tolist(), "last_hidden_state": out.hidden_states[-1].tolist()})
    print("transformers", tf.__version__, "torch", torch.__version__)


if __name__ == "__main__":
    main()
