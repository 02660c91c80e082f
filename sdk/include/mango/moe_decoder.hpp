// mango/moe_decoder.hpp — a pre-norm decoder whose layers are each dense or
// sparse (mango/moe.hpp), with LLaMA-style attention (mango/decoder.hpp):
// the skeleton Mixtral, Qwen2-MoE, Qwen3-MoE and OLMoE share. A plugin
// fills a MoeDecoder::Config from config.json and publishes the class.
#pragma once

#include "mango/decoder.hpp"
#include "mango/moe.hpp"

#include <string>
#include <vector>

namespace mango::moe {

class MoeDecoder {
public:
    struct Config {
        int64_t hidden = 0, layers = 0, vocab = 0;
        double eps = 1e-6, default_theta = 10000.0;
        bool tied = false;
        std::string act = "silu";
        decoder::Attention attn;
        std::vector<bool> sparse;  // per layer
        int64_t dense_inter = 0;   // dense layers' MLP
        int64_t experts = 0, top_k = 0, moe_inter = 0;
        bool renormalize = false;
        double jitter = 0;
        bool fused = false;  // transformers 5's fused expert tensors
        std::string moe_prefix = "mlp.";
        ExpertNames expert_names;
        int64_t shared_inter = 0;  // shared expert (0 = none)
        bool shared_expert_gate = false;
        bool token_importance = false;  // learned_token_importance: a [1, H] vector per sparse layer

        int64_t sparse_layers() const {
            int64_t n = 0;
            for (bool s : sparse) n += s;
            return n;
        }
        // Common checks every family needs, with the keys' names.
        void check() const {
            if (hidden <= 0 || layers <= 0 || vocab <= 0)
                throw Error(MANGO_ERR_INVALID_ARGUMENT, "config needs positive hidden_size, num_hidden_layers and vocab_size");
            if (attn.heads <= 0 || attn.kv_heads <= 0 || attn.heads % attn.kv_heads)
                throw Error(MANGO_ERR_INVALID_ARGUMENT, "num_attention_heads must be a positive multiple of num_key_value_heads");
            if (sparse_layers() > 0 && (experts <= 0 || top_k <= 0 || top_k > experts))
                throw Error(MANGO_ERR_INVALID_ARGUMENT, "num_experts_per_tok (" + std::to_string(top_k) +
                                                            ") must be between 1 and the number of experts (" + std::to_string(experts) +
                                                            ")");
            if (!layers::known_activation(act)) throw Error(MANGO_ERR_UNSUPPORTED, "hidden_act '" + act + "' is not supported");
        }
    };

    static TensorTable table(const Config &c) {
        const int64_t H = c.hidden;
        const std::string L = "model.layers.{L}.";
        TensorTable t;
        t.model("embed.tokens.weight", "model.embed_tokens.weight", {c.vocab, H});
        t.layers(c.layers, "norm.attn.weight", L + "input_layernorm.weight", {H});
        c.attn.add(t, c.layers, L + "self_attn.");
        t.layers(c.layers, "norm.mlp.weight", L + "post_attention_layernorm.weight", {H});
        for (int32_t i = 0; i < c.layers; ++i) {
            const std::string p = "model.layers." + std::to_string(i) + ".";
            if (!c.sparse[size_t(i)]) {
                t.layer(i, "mlp.gate.weight", p + "mlp.gate_proj.weight", {c.dense_inter, H});
                t.layer(i, "mlp.up.weight", p + "mlp.up_proj.weight", {c.dense_inter, H});
                t.layer(i, "mlp.down.weight", p + "mlp.down_proj.weight", {H, c.dense_inter});
                continue;
            }
            const std::string m = p + c.moe_prefix;
            t.layer(i, "moe.router.weight", m + "gate.weight", {c.experts, H});
            add_experts(t, i, m, c.fused, c.experts, c.moe_inter, H, c.expert_names);
            if (c.shared_inter > 0) {
                t.layer(i, "moe.shared.gate.weight", m + "shared_expert.gate_proj.weight", {c.shared_inter, H});
                t.layer(i, "moe.shared.up.weight", m + "shared_expert.up_proj.weight", {c.shared_inter, H});
                t.layer(i, "moe.shared.down.weight", m + "shared_expert.down_proj.weight", {H, c.shared_inter});
                if (c.shared_expert_gate) t.layer(i, "moe.shared_gate.weight", m + "shared_expert_gate.weight", {1, H});
            }
            if (c.token_importance) t.layer(i, "moe.importance.weight", m + "token_importance.weight", {1, H});
        }
        t.model("norm.final.weight", "model.norm.weight", {H});
        t.lm_head("lm_head.weight", "model.embed_tokens.weight", {c.vocab, H}, c.tied);
        return t;
    }

    MoeDecoder(Context &ctx, Config c) : c_(std::move(c)) {
        c_.check();
        rope_ = attention::rope_from_config(ctx, c_.attn.head_dim, c_.default_theta);
        const Context::Shard shard = ctx.expert_shard();  // expert parallelism: this rank's experts only
        if (c_.sparse_layers() > 0) check_shard(shard, c_.experts);
        const Weights w = table(c_).load(ctx, other_ranks_experts(shard, c_.experts));
        embed_ = w.get("embed.tokens.weight");
        inv_freq_ = attention::to_tensor(rope_.inv_freq, embed_.device());
        for (int32_t i = 0; i < c_.layers; ++i) {
            Layer l;
            l.attn = c_.attn.load(w, i);
            l.norm_attn = w.at(i, "norm.attn.weight");
            l.norm_mlp = w.at(i, "norm.mlp.weight");
            l.sparse = c_.sparse[size_t(i)];
            if (!l.sparse) {
                l.gate = w.at(i, "mlp.gate.weight"), l.up = w.at(i, "mlp.up.weight"), l.down = w.at(i, "mlp.down.weight");
            } else {
                l.moe.n_experts = c_.experts;
                l.moe.top_k = c_.top_k;
                l.moe.renormalize = c_.renormalize;
                l.moe.jitter = c_.jitter;
                l.moe.act = c_.act;
                l.moe.router = w.at(i, "moe.router.weight");
                l.moe.experts = load_experts(w, i, c_.fused, c_.experts, shard);
                if (c_.shared_inter > 0) {
                    l.moe.shared_gate = w.at(i, "moe.shared.gate.weight");
                    l.moe.shared_up = w.at(i, "moe.shared.up.weight");
                    l.moe.shared_down = w.at(i, "moe.shared.down.weight");
                    if (c_.shared_expert_gate) l.moe.shared_expert_gate = w.at(i, "moe.shared_gate.weight");
                }
                if (c_.token_importance) l.moe.importance = w.at(i, "moe.importance.weight");
                l.moe.read_training(ctx, c_.hidden);
                l.moe.make_buffers(ctx, "layers." + std::to_string(i) + ".");
            }
            blocks_.push_back(std::move(l));
        }
        norm_ = w.get("norm.final.weight");
        lm_head_ = w.get("lm_head.weight");
    }

    void describe(Context &, mango_model_info &info) {
        info.is_causal = 1;
        info.hidden_size = c_.hidden;
        info.n_layers = c_.layers;
        info.vocab_size = c_.vocab;
        info.n_heads = c_.attn.heads;
        info.n_kv_heads = c_.attn.kv_heads;
        info.head_dim = c_.attn.head_dim;
        info.tied_embeddings = c_.tied;
    }

    Tensor embed(Context &, const Tensor &ids, const Tensor &) { return ops::embedding(embed_, ids); }

    Tensor block(Context &ctx, int32_t i, const Tensor &x, const Tensor &mask, const Tensor &pos, bool use_cache) {
        if (i < 0 || i >= c_.layers) throw Error(MANGO_ERR_INVALID_ARGUMENT, "layer " + std::to_string(i) + " out of range");
        const Layer &l = blocks_[size_t(i)];
        auto [h, n] = layers::add_rms_norm(x,
                                           c_.attn.forward(ctx, i, l.attn, layers::rms_norm(x, l.norm_attn, c_.eps), mask, pos, inv_freq_,
                                                           rope_.attention_factor, use_cache),
                                           l.norm_mlp, c_.eps);
        return ops::add(h, l.sparse ? l.moe.forward(ctx, n, mask, c_.sparse_layers()) : dense_mlp(n, l.gate, l.up, l.down, c_.act));
    }

    Tensor head(Context &, const Tensor &x) { return ops::linear(layers::rms_norm(x, norm_, c_.eps), lm_head_); }

private:
    struct Layer {
        decoder::Attention::Weights attn;
        Tensor norm_attn, norm_mlp, gate, up, down;
        bool sparse = false;
        SparseMlp moe;
    };
    Config c_;
    attention::Rope rope_;
    Tensor embed_, inv_freq_, norm_, lm_head_;
    std::vector<Layer> blocks_;
};

// Reads the keys every LLaMA-style MoE config has (sizes, attention, norms).
// A missing num_key_value_heads is `default_kv_heads` (the config class's
// default; 0: all heads); a null one, all heads.
inline void read_common(Context &ctx, MoeDecoder::Config &c, double default_eps, int64_t default_kv_heads = 0) {
    c.hidden = ctx.config_int("hidden_size", 0);
    c.layers = ctx.config_int("num_hidden_layers", 0);
    c.vocab = ctx.config_int("vocab_size", 0);
    c.eps = ctx.config_double("rms_norm_eps", default_eps);
    c.tied = ctx.config_bool("tie_word_embeddings", false);
    c.act = ctx.config_string("hidden_act", "silu");
    c.attn.hidden = c.hidden;
    c.attn.heads = ctx.config_int("num_attention_heads", 0);
    c.attn.kv_heads = ctx.config_int("num_key_value_heads", default_kv_heads > 0 ? default_kv_heads : c.attn.heads, c.attn.heads);
    if (c.attn.heads <= 0) throw Error(MANGO_ERR_INVALID_ARGUMENT, "config needs a positive num_attention_heads");
    if (!ctx.config("head_dim") && c.hidden % c.attn.heads)
        throw Error(MANGO_ERR_INVALID_ARGUMENT, "hidden_size " + std::to_string(c.hidden) + " is not a multiple of num_attention_heads " +
                                                    std::to_string(c.attn.heads) + " (and the config gives no head_dim)");
    c.attn.head_dim = ctx.config_int("head_dim", c.hidden / c.attn.heads);
    c.attn.eps = c.eps;
    c.sparse.assign(size_t(std::max<int64_t>(0, c.layers)), true);
    c.token_importance = ctx.config_bool("learned_token_importance", false);
}

// Does the checkpoint hold layer `layer`'s experts fused (transformers 5)?
inline bool fused_experts(Context &ctx, const std::string &moe_prefix, int64_t layer) {
    return ctx.weight_exists("model.layers." + std::to_string(layer) + "." + moe_prefix + "experts.gate_up_proj") &&
           !ctx.weight_exists("model.layers." + std::to_string(layer) + "." + moe_prefix + "experts.0.down_proj.weight");
}

}  // namespace mango::moe
