// `llama` architecture: LLaMA 1/2/3, Mistral and Qwen2 through their configs.
//
//   h   = x + o(attn(rms(x)))          rotary q/k, grouped-query k/v, optional
//   out = h + down(silu(gate(rms(h))) * up(rms(h)))   QKV bias (Qwen2) and
//                                                     sliding window (Mistral)
// Rotary scaling: none, "linear", "llama3", "yarn"; anything else is refused.
// Reference: transformers' modeling_llama.py / modeling_mistral.py / modeling_qwen2.py.
#include <mango/attention.hpp>
#include <mango/component.hpp>
#include <mango/layers.hpp>

#include <cmath>
#include <string>
#include <tuple>
#include <vector>

namespace {

using mango::Context;
using mango::Error;
using mango::Tensor;
namespace ops = mango::ops;
namespace attn = mango::attention;
namespace nn = mango::layers;

// What a LLaMA-family config says, read once.
struct Config {
    explicit Config(Context &ctx) {
        model_type = ctx.config_string("model_type", "llama");
        hidden = ctx.config_int("hidden_size", 0);
        layers = ctx.config_int("num_hidden_layers", 0);
        heads = ctx.config_int("num_attention_heads", 0);
        // A missing key takes the config class's default (MistralConfig: 8, Qwen2Config: 32); null, all heads.
        kv_heads = ctx.config_int("num_key_value_heads", model_type == "mistral" ? 8 : model_type == "qwen2" ? 32 : heads, heads);
        if (hidden <= 0 || layers <= 0 || heads <= 0 || kv_heads <= 0 || heads % kv_heads)
            throw Error(MANGO_ERR_INVALID_ARGUMENT,
                        "config needs positive hidden_size, num_hidden_layers, num_attention_heads, "
                        "and num_attention_heads a multiple of num_key_value_heads");
        if (!ctx.config("head_dim") && hidden % heads)
            throw Error(MANGO_ERR_INVALID_ARGUMENT, "hidden_size " + std::to_string(hidden) + " is not a multiple of num_attention_heads " +
                                                        std::to_string(heads) + " (and the config gives no head_dim)");
        head_dim = ctx.config_int("head_dim", hidden / heads);
        inter = ctx.config_int("intermediate_size", 0);
        vocab = ctx.config_int("vocab_size", 0);
        if (inter <= 0 || vocab <= 0 || head_dim <= 0)
            throw Error(MANGO_ERR_INVALID_ARGUMENT, "config needs positive intermediate_size, vocab_size and head_dim");
        eps = ctx.config_double("rms_norm_eps", 1e-6);
        tied = ctx.config_bool("tie_word_embeddings", false);
        // LlamaConfig's attention_bias puts biases on q, k, v and o. Qwen2's attention always has them on
        // q, k, v and never on o, Mistral's never: their config classes do not read the key.
        const bool attention_bias = model_type == "llama" && ctx.config_bool("attention_bias", false);
        bias = model_type == "qwen2" || attention_bias;
        o_bias = attention_bias;
        if (model_type == "llama" && ctx.config_bool("mlp_bias", false))  // Mistral's and Qwen2's MLPs ignore the key
            throw Error(MANGO_ERR_UNSUPPORTED, "mlp_bias = true is not supported by the llama plugin");
        act = ctx.config_string("hidden_act", "silu");
        if (act != "silu") throw Error(MANGO_ERR_UNSUPPORTED, "hidden_act '" + act + "' is not supported by the llama plugin (silu only)");
        // Mistral: sliding_window on every layer. Qwen2: only with use_sliding_window, on the layers
        // layer_types marks (without it: the layers from max_window_layers on, as transformers' Qwen2Config).
        // Both config classes default the window to 4096; null means none. LLaMA ignores the key.
        const int64_t window = ctx.config_int("sliding_window", 4096, 0);
        if (model_type == "mistral") {
            windows.assign(size_t(layers), window);
        } else if (model_type == "qwen2" && ctx.config_bool("use_sliding_window", false)) {
            const int64_t from = ctx.config_int("max_window_layers", 28);
            windows = attn::layer_windows(ctx, layers, window, [&](int64_t i) { return i >= from; });
        } else {
            windows.assign(size_t(layers), 0);
        }
    }
    std::string model_type, act;
    int64_t hidden = 0, layers = 0, heads = 0, kv_heads = 0, head_dim = 0, inter = 0, vocab = 0;
    std::vector<int64_t> windows;  // each layer's sliding window (0: none)
    double eps = 1e-6;
    bool tied = false, bias = false, o_bias = false;  // bias: on q, k and v
};

class Llama {
public:
    static mango::TensorTable tensor_table(Context &ctx) { return table(Config(ctx)); }

    explicit Llama(Context &ctx) : c_(ctx) {
        rope_ = attn::rope_from_config(ctx, c_.head_dim);
        inv_freq_ = rope_.inv_freq;
        const mango::Weights w = table(c_).load(ctx);
        embed_ = w.get("embed.tokens.weight");
        inv_freq_t_ = attn::to_tensor(inv_freq_, embed_.device());
        for (int32_t i = 0; i < c_.layers; ++i) {
            Layer l;
            l.q = w.at(i, "attn.q.weight");
            l.k = w.at(i, "attn.k.weight");
            l.v = w.at(i, "attn.v.weight");
            l.o = w.at(i, "attn.o.weight");
            if (c_.o_bias) l.ob = w.at(i, "attn.o.bias");
            if (c_.bias) {
                l.qb = w.at(i, "attn.q.bias");
                l.kb = w.at(i, "attn.k.bias");
                l.vb = w.at(i, "attn.v.bias");
            }
            l.gate = w.at(i, "mlp.gate.weight");
            l.up = w.at(i, "mlp.up.weight");
            l.down = w.at(i, "mlp.down.weight");
            l.norm_attn = w.at(i, "norm.attn.weight");
            l.norm_mlp = w.at(i, "norm.mlp.weight");
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
        info.n_heads = c_.heads;
        info.n_kv_heads = c_.kv_heads;
        info.head_dim = c_.head_dim;
        info.max_positions = 0;
        info.tied_embeddings = c_.tied;
    }

    Tensor embed(Context &, const Tensor &ids, const Tensor &) { return ops::embedding(embed_, ids); }

    Tensor block(Context &ctx, int32_t i, const Tensor &x, const Tensor &mask, const Tensor &pos, bool use_cache) {
        if (i < 0 || i >= c_.layers) throw Error(MANGO_ERR_INVALID_ARGUMENT, "layer " + std::to_string(i) + " out of range");
        const Layer &l = blocks_[static_cast<size_t>(i)];
        Tensor h = nn::rms_norm(x, l.norm_attn, c_.eps);
        auto [q, k, v] = attn::project_qkv_rope(h, {l.q, l.k, l.v}, c_.bias ? std::vector<Tensor>{l.qb, l.kb, l.vb} : std::vector<Tensor>{},
                                                c_.heads, c_.kv_heads, c_.head_dim, inv_freq_t_, pos, rope_.attention_factor);
        const int64_t window = c_.windows[size_t(i)];
        auto [keys, values] = attn::cached_kv(ctx, i, k, v, use_cache, window);
        Tensor a = attn::attend(ctx, q, keys, values, mask, window, 1.0 / std::sqrt(double(c_.head_dim)));
        auto [r, normed] = nn::add_rms_norm(x, ops::linear(attn::merge_heads(a), l.o, l.ob), l.norm_mlp, c_.eps);
        return ops::linear_residual(r, nn::swiglu(normed, l.gate, l.up), l.down);
    }

    Tensor head(Context &, const Tensor &x) { return ops::linear(nn::rms_norm(x, norm_, c_.eps), lm_head_); }

private:
    struct Layer {
        Tensor q, k, v, o, qb, kb, vb, ob, gate, up, down, norm_attn, norm_mlp;
    };

    // Every tensor of a model of this config (transformers' names).
    static mango::TensorTable table(const Config &c) {
        const int64_t H = c.hidden, qd = c.heads * c.head_dim, kvd = c.kv_heads * c.head_dim;
        const std::string L = "model.layers.{L}.";
        mango::TensorTable t;
        t.model("embed.tokens.weight", "model.embed_tokens.weight", {c.vocab, H});
        t.layers(c.layers, "norm.attn.weight", L + "input_layernorm.weight", {H});
        t.layers(c.layers, "attn.q.weight", L + "self_attn.q_proj.weight", {qd, H});
        t.layers(c.layers, "attn.k.weight", L + "self_attn.k_proj.weight", {kvd, H});
        t.layers(c.layers, "attn.v.weight", L + "self_attn.v_proj.weight", {kvd, H});
        if (c.bias) {
            t.layers(c.layers, "attn.q.bias", L + "self_attn.q_proj.bias", {qd});
            t.layers(c.layers, "attn.k.bias", L + "self_attn.k_proj.bias", {kvd});
            t.layers(c.layers, "attn.v.bias", L + "self_attn.v_proj.bias", {kvd});
        }
        t.layers(c.layers, "attn.o.weight", L + "self_attn.o_proj.weight", {H, qd});
        if (c.o_bias) t.layers(c.layers, "attn.o.bias", L + "self_attn.o_proj.bias", {H});
        t.layers(c.layers, "norm.mlp.weight", L + "post_attention_layernorm.weight", {H});
        t.layers(c.layers, "mlp.gate.weight", L + "mlp.gate_proj.weight", {c.inter, H});
        t.layers(c.layers, "mlp.up.weight", L + "mlp.up_proj.weight", {c.inter, H});
        t.layers(c.layers, "mlp.down.weight", L + "mlp.down_proj.weight", {H, c.inter});
        t.model("norm.final.weight", "model.norm.weight", {H});
        t.lm_head("lm_head.weight", "model.embed_tokens.weight", {c.vocab, H}, c.tied);
        return t;
    }

    Config c_;
    attn::Rope rope_;
    std::vector<double> inv_freq_;
    Tensor inv_freq_t_, embed_, norm_, lm_head_;
    std::vector<Layer> blocks_;
};

const char *const kModelTypes[] = {"llama", "mistral", "qwen2", nullptr};

}  // namespace

MANGO_PLUGIN("llama", "1.0.0", "LLaMA-family decoders",
             mango::architecture<Llama>("llama", "1.0.0",
                                        "LLaMA 1/2/3, Mistral, Qwen2: RMSNorm, rotary (linear/llama3/yarn scaling), GQA, SwiGLU", nullptr,
                                        kModelTypes))
