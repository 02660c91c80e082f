// `llama` architecture: LLaMA 1/2/3, Mistral and Qwen2 through their configs.
//
//   h   = x + o(attn(rms(x)))          rotary q/k, grouped-query k/v, optional
//   out = h + down(silu(gate(rms(h))) * up(rms(h)))   QKV bias (Qwen2) and
//                                                     sliding window (Mistral)
// Rotary scaling: none, "linear", "llama3"; anything else is refused.
// Reference: transformers' modeling_llama.py / modeling_mistral.py / modeling_qwen2.py.
#include <mango/attention.hpp>
#include <mango/component.hpp>

#include <cmath>
#include <string>
#include <vector>

namespace {

using mango::Context;
using mango::Error;
using mango::Tensor;
namespace ops = mango::ops;
namespace attn = mango::attention;

std::string layer_name(int64_t i, const std::string &rest) { return "model.layers." + std::to_string(i) + "." + rest; }

// Rotary inverse frequencies with the config's scaling applied.
std::vector<double> scaled_inv_freq(Context &ctx, int64_t head_dim) {
    std::vector<double> f = attn::rope_inv_freq(head_dim, ctx.config_double("rope_theta", 10000.0));
    const std::string type = ctx.config_string("rope_scaling.rope_type", ctx.config_string("rope_scaling.type", "default"));
    if (type == "default") return f;
    const double factor = ctx.config_double("rope_scaling.factor", 1.0);
    if (type == "linear") {
        for (double &x : f) x /= factor;
        return f;
    }
    if (type == "llama3") {
        const double low = ctx.config_double("rope_scaling.low_freq_factor", 1.0);
        const double high = ctx.config_double("rope_scaling.high_freq_factor", 4.0);
        const double old_ctx = static_cast<double>(ctx.config_int("rope_scaling.original_max_position_embeddings", 8192));
        const double low_wavelen = old_ctx / low, high_wavelen = old_ctx / high;
        for (double &x : f) {
            const double wavelen = 2 * M_PI / x;
            if (wavelen > low_wavelen) {
                x /= factor;
            } else if (wavelen >= high_wavelen) {  // medium band: interpolate
                const double smooth = (old_ctx / wavelen - low) / (high - low);
                x = (1 - smooth) * x / factor + smooth * x;
            }
        }
        return f;
    }
    throw Error(MANGO_ERR_UNSUPPORTED, "rope_scaling type '" + type + "' is not supported by the llama plugin (supported: linear, llama3)");
}

class Llama {
public:
    explicit Llama(Context &ctx) {
        model_type_ = ctx.config_string("model_type", "llama");
        hidden_ = ctx.config_int("hidden_size", 0);
        layers_ = ctx.config_int("num_hidden_layers", 0);
        heads_ = ctx.config_int("num_attention_heads", 0);
        kv_heads_ = ctx.config_int("num_key_value_heads", heads_);
        if (hidden_ <= 0 || layers_ <= 0 || heads_ <= 0 || kv_heads_ <= 0 || heads_ % kv_heads_)
            throw Error(MANGO_ERR_INVALID_ARGUMENT, "config needs positive hidden_size, num_hidden_layers, num_attention_heads, "
                                                    "and num_attention_heads a multiple of num_key_value_heads");
        head_dim_ = ctx.config_int("head_dim", hidden_ / heads_);
        inter_ = ctx.config_int("intermediate_size", 0);
        vocab_ = ctx.config_int("vocab_size", 0);
        eps_ = ctx.config_double("rms_norm_eps", 1e-6);
        tied_ = ctx.config_bool("tie_word_embeddings", false);
        bias_ = ctx.config_bool("attention_bias", model_type_ == "qwen2");
        if (ctx.config_bool("mlp_bias", false)) throw Error(MANGO_ERR_UNSUPPORTED, "mlp_bias = true is not supported by the llama plugin");
        const std::string act = ctx.config_string("hidden_act", "silu");
        if (act != "silu") throw Error(MANGO_ERR_UNSUPPORTED, "hidden_act '" + act + "' is not supported by the llama plugin (silu only)");
        // Mistral: sliding_window on every layer; Qwen2: only with use_sliding_window.
        if (model_type_ != "qwen2" || ctx.config_bool("use_sliding_window", false)) window_ = ctx.config_int("sliding_window", 0);
        inv_freq_ = scaled_inv_freq(ctx, head_dim_);

        embed_ = ctx.weight("model.embed_tokens.weight", {vocab_, hidden_});
        inv_freq_t_ = attn::to_tensor(inv_freq_, embed_.device());
        for (int64_t i = 0; i < layers_; ++i) {
            Layer l;
            l.q = ctx.weight(layer_name(i, "self_attn.q_proj.weight"), {heads_ * head_dim_, hidden_});
            l.k = ctx.weight(layer_name(i, "self_attn.k_proj.weight"), {kv_heads_ * head_dim_, hidden_});
            l.v = ctx.weight(layer_name(i, "self_attn.v_proj.weight"), {kv_heads_ * head_dim_, hidden_});
            l.o = ctx.weight(layer_name(i, "self_attn.o_proj.weight"), {hidden_, heads_ * head_dim_});
            if (bias_) {
                l.qb = ctx.weight(layer_name(i, "self_attn.q_proj.bias"), {heads_ * head_dim_});
                l.kb = ctx.weight(layer_name(i, "self_attn.k_proj.bias"), {kv_heads_ * head_dim_});
                l.vb = ctx.weight(layer_name(i, "self_attn.v_proj.bias"), {kv_heads_ * head_dim_});
            }
            l.gate = ctx.weight(layer_name(i, "mlp.gate_proj.weight"), {inter_, hidden_});
            l.up = ctx.weight(layer_name(i, "mlp.up_proj.weight"), {inter_, hidden_});
            l.down = ctx.weight(layer_name(i, "mlp.down_proj.weight"), {hidden_, inter_});
            l.norm_attn = ctx.weight(layer_name(i, "input_layernorm.weight"), {hidden_});
            l.norm_mlp = ctx.weight(layer_name(i, "post_attention_layernorm.weight"), {hidden_});
            layers.push_back(std::move(l));
        }
        norm_ = ctx.weight("model.norm.weight", {hidden_});
        lm_head_ = tied_ ? embed_ : ctx.weight("lm_head.weight", {vocab_, hidden_});
    }

    void describe(Context &ctx, mango_model_info &info) {
        info.is_causal = 1;
        info.hidden_size = hidden_;
        info.n_layers = layers_;
        info.vocab_size = vocab_;
        info.n_heads = heads_;
        info.n_kv_heads = kv_heads_;
        info.head_dim = head_dim_;
        info.max_positions = 0;
        info.tied_embeddings = tied_;
        ctx.declare_tensor(-1, "embed.tokens.weight", "model.embed_tokens.weight");
        ctx.declare_tensor(-1, "norm.final.weight", "model.norm.weight");
        if (!tied_) ctx.declare_tensor(-1, "lm_head.weight", "lm_head.weight");
        for (int32_t i = 0; i < layers_; ++i) {
            for (const char *p : {"q", "k", "v", "o"}) {
                ctx.declare_tensor(i, (std::string("attn.") + p + ".weight").c_str(), layer_name(i, std::string("self_attn.") + p + "_proj.weight"));
                if (bias_ && std::string(p) != "o")
                    ctx.declare_tensor(i, (std::string("attn.") + p + ".bias").c_str(), layer_name(i, std::string("self_attn.") + p + "_proj.bias"));
            }
            for (const char *p : {"gate", "up", "down"})
                ctx.declare_tensor(i, (std::string("mlp.") + p + ".weight").c_str(), layer_name(i, std::string("mlp.") + p + "_proj.weight"));
            ctx.declare_tensor(i, "norm.attn.weight", layer_name(i, "input_layernorm.weight"));
            ctx.declare_tensor(i, "norm.mlp.weight", layer_name(i, "post_attention_layernorm.weight"));
        }
    }

    Tensor embed(Context &, const Tensor &ids, const Tensor &) { return ops::embedding(embed_, ids); }

    Tensor block(Context &ctx, int32_t i, const Tensor &x, const Tensor &mask, const Tensor &pos, bool use_cache) {
        if (i < 0 || i >= layers_) throw Error(MANGO_ERR_INVALID_ARGUMENT, "layer " + std::to_string(i) + " out of range");
        const Layer &l = layers[static_cast<size_t>(i)];
        const int64_t T = x.size(1);
        Tensor h = rms(x, l.norm_attn);
        Tensor q = attn::split_heads(ops::linear(h, l.q, l.qb), heads_, head_dim_);
        Tensor k = attn::split_heads(ops::linear(h, l.k, l.kb), kv_heads_, head_dim_);
        Tensor v = attn::split_heads(ops::linear(h, l.v, l.vb), kv_heads_, head_dim_);
        auto [cos, sin] = attn::rope_cos_sin(inv_freq_t_, pos, x.dtype());
        q = attn::apply_rope(q, cos, sin);
        k = attn::apply_rope(k, cos, sin);
        auto [keys, values] = attn::cached_kv(ctx, i, k, v, use_cache);
        Tensor bias = attn::mask_bias(mask, T, window_, x.dtype());
        const int64_t rep = heads_ / kv_heads_;
        Tensor a = attn::eager(q, attn::repeat_kv(keys, rep), attn::repeat_kv(values, rep), bias, 1.0 / std::sqrt(double(head_dim_)));
        Tensor r = ops::add(x, ops::linear(attn::merge_heads(a), l.o));
        h = rms(r, l.norm_mlp);
        Tensor m = ops::linear(ops::mul(ops::silu(ops::linear(h, l.gate)), ops::linear(h, l.up)), l.down);
        return ops::add(r, m);
    }

    Tensor head(Context &, const Tensor &x) { return ops::linear(rms(x, norm_), lm_head_); }

private:
    struct Layer {
        Tensor q, k, v, o, qb, kb, vb, gate, up, down, norm_attn, norm_mlp;
    };

    // weight * (x / sqrt(mean(x^2) + eps)), computed in float32.
    Tensor rms(const Tensor &x, const Tensor &w) const {
        Tensor f = ops::to_dtype(x, MANGO_DTYPE_F32);
        Tensor n = ops::mul(f, ops::rsqrt(ops::add_scalar(ops::mean(ops::pow(f, 2.0), {-1}, true), eps_)));
        return ops::mul(w, ops::to_dtype(n, x.dtype()));
    }

    std::string model_type_;
    int64_t hidden_ = 0, layers_ = 0, heads_ = 0, kv_heads_ = 0, head_dim_ = 0, inter_ = 0, vocab_ = 0, window_ = 0;
    double eps_ = 1e-6;
    bool tied_ = false, bias_ = false;
    std::vector<double> inv_freq_;
    Tensor inv_freq_t_, embed_, norm_, lm_head_;
    std::vector<Layer> layers;
};

const char *const kModelTypes[] = {"llama", "mistral", "qwen2", nullptr};

}  // namespace

MANGO_PLUGIN("llama", "1.0.0", "LLaMA-family decoders",
             mango::architecture<Llama>("llama", "1.0.0",
                                        "LLaMA 1/2/3, Mistral, Qwen2: RMSNorm, rotary (linear/llama3 scaling), GQA, SwiGLU",
                                        nullptr, kModelTypes))
