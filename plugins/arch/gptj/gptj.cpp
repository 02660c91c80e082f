// `gptj` architecture: one LayerNorm per block feeding attention and MLP in
// parallel, interleaved ("rotate every two") rotary embeddings on the first
// rotary_dim channels of each head, untied LM head with a bias.
//
//   h = ln_1(x);  out = x + o(attn(h)) + fc_out(gelu(fc_in(h)))
// Reference: transformers' modeling_gptj.py.
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

// [..., 2n] pairs (a, b) -> (-b, a)
Tensor rotate_every_two(const Tensor &x) {
    const int64_t last = x.size(-1);
    Tensor even = ops::slice(x, -1, 0, last, 2), odd = ops::slice(x, -1, 1, last, 2);
    std::vector<int64_t> shape = x.sizes();
    return ops::reshape(ops::stack({ops::neg(odd), even}, -1), shape);
}

// [..., n] -> [..., 2n] with every value twice in a row.
Tensor repeat_twice(const Tensor &x) {
    std::vector<int64_t> shape = x.sizes();
    shape.back() *= 2;
    return ops::reshape(ops::stack({x, x}, -1), shape);
}

class Gptj {
public:
    explicit Gptj(Context &ctx) {
        hidden_ = ctx.config_int("n_embd", 0);
        layers_ = ctx.config_int("n_layer", 0);
        heads_ = ctx.config_int("n_head", 0);
        vocab_ = ctx.config_int("vocab_size", 0);
        inner_ = ctx.config_int("n_inner", 4 * hidden_);
        eps_ = ctx.config_double("layer_norm_epsilon", 1e-5);
        if (hidden_ <= 0 || layers_ <= 0 || heads_ <= 0 || hidden_ % heads_)
            throw Error(MANGO_ERR_INVALID_ARGUMENT, "config needs positive n_embd, n_layer, n_head (n_embd a multiple of n_head)");
        head_dim_ = hidden_ / heads_;
        rot_ = ctx.config_int("rotary_dim", head_dim_);
        if (rot_ <= 0 || rot_ > head_dim_ || rot_ % 2) throw Error(MANGO_ERR_INVALID_ARGUMENT, "rotary_dim must be even and at most the head size");
        const std::string act = ctx.config_string("activation_function", "gelu_new");
        if (act != "gelu_new") throw Error(MANGO_ERR_UNSUPPORTED, "activation_function '" + act + "' is not supported by the gptj plugin");
        wte_ = ctx.weight("transformer.wte.weight", {vocab_, hidden_});
        inv_freq_ = attn::to_tensor(attn::rope_inv_freq(rot_, 10000.0), wte_.device());
        for (int64_t i = 0; i < layers_; ++i) {
            const std::string p = "transformer.h." + std::to_string(i) + ".";
            Layer l;
            l.ln_w = ctx.weight(p + "ln_1.weight", {hidden_});
            l.ln_b = ctx.weight(p + "ln_1.bias", {hidden_});
            l.q = ctx.weight(p + "attn.q_proj.weight", {hidden_, hidden_});
            l.k = ctx.weight(p + "attn.k_proj.weight", {hidden_, hidden_});
            l.v = ctx.weight(p + "attn.v_proj.weight", {hidden_, hidden_});
            l.o = ctx.weight(p + "attn.out_proj.weight", {hidden_, hidden_});
            l.fc_in = ctx.weight(p + "mlp.fc_in.weight", {inner_, hidden_});
            l.fc_in_b = ctx.weight(p + "mlp.fc_in.bias", {inner_});
            l.fc_out = ctx.weight(p + "mlp.fc_out.weight", {hidden_, inner_});
            l.fc_out_b = ctx.weight(p + "mlp.fc_out.bias", {hidden_});
            layers.push_back(std::move(l));
        }
        lnf_w_ = ctx.weight("transformer.ln_f.weight", {hidden_});
        lnf_b_ = ctx.weight("transformer.ln_f.bias", {hidden_});
        head_ = ctx.weight("lm_head.weight", {vocab_, hidden_});
        head_b_ = ctx.weight("lm_head.bias", {vocab_});
    }

    void describe(Context &ctx, mango_model_info &info) {
        info.is_causal = 1;
        info.hidden_size = hidden_;
        info.n_layers = layers_;
        info.vocab_size = vocab_;
        info.n_heads = info.n_kv_heads = heads_;
        info.head_dim = head_dim_;
        info.max_positions = 0;
        info.tied_embeddings = 0;
        ctx.declare_tensor(-1, "embed.tokens.weight", "transformer.wte.weight");
        ctx.declare_tensor(-1, "norm.final.weight", "transformer.ln_f.weight");
        ctx.declare_tensor(-1, "norm.final.bias", "transformer.ln_f.bias");
        ctx.declare_tensor(-1, "lm_head.weight", "lm_head.weight");
        ctx.declare_tensor(-1, "lm_head.bias", "lm_head.bias");
        const std::pair<const char *, const char *> roles[] = {
            {"norm.attn.weight", "ln_1.weight"}, {"norm.attn.bias", "ln_1.bias"}, {"attn.q.weight", "attn.q_proj.weight"},
            {"attn.k.weight", "attn.k_proj.weight"}, {"attn.v.weight", "attn.v_proj.weight"}, {"attn.o.weight", "attn.out_proj.weight"},
            {"mlp.up.weight", "mlp.fc_in.weight"}, {"mlp.up.bias", "mlp.fc_in.bias"}, {"mlp.down.weight", "mlp.fc_out.weight"},
            {"mlp.down.bias", "mlp.fc_out.bias"}};
        for (int32_t i = 0; i < layers_; ++i)
            for (const auto &[role, rest] : roles) ctx.declare_tensor(i, role, "transformer.h." + std::to_string(i) + "." + rest);
    }

    Tensor embed(Context &, const Tensor &ids, const Tensor &) { return ops::embedding(wte_, ids); }

    Tensor block(Context &ctx, int32_t i, const Tensor &x, const Tensor &mask, const Tensor &pos, bool use_cache) {
        const Layer &l = layers[static_cast<size_t>(i)];
        Tensor h = ops::layer_norm(x, {hidden_}, l.ln_w, l.ln_b, eps_);
        // Rotary on [B, T, H, D] as GPT-J does, sin/cos [B, T, 1, rot].
        Tensor freqs = ops::unsqueeze(ops::mul(ops::unsqueeze(ops::to_dtype(pos, MANGO_DTYPE_F32), -1), inv_freq_), 2);
        Tensor sin = ops::to_dtype(repeat_twice(ops::sin(freqs)), x.dtype()), cos = ops::to_dtype(repeat_twice(ops::cos(freqs)), x.dtype());
        auto heads = [&](const Tensor &w, bool rotary) {
            Tensor t = ops::reshape(ops::linear(h, w), {x.size(0), x.size(1), heads_, head_dim_});
            if (rotary) {
                Tensor r = ops::narrow(t, -1, 0, rot_);
                r = ops::add(ops::mul(r, cos), ops::mul(rotate_every_two(r), sin));
                t = rot_ == head_dim_ ? r : ops::cat({r, ops::narrow(t, -1, rot_, head_dim_ - rot_)}, -1);
            }
            return ops::transpose(t, 1, 2);  // [B, H, T, D]
        };
        Tensor q = heads(l.q, true), k = heads(l.k, true), v = heads(l.v, false);
        auto [keys, values] = attn::cached_kv(ctx, i, k, v, use_cache);
        Tensor bias = attn::mask_bias(mask, x.size(1), 0, x.dtype());
        Tensor a = attn::eager(q, keys, values, bias, 1.0 / std::sqrt(double(head_dim_)));
        Tensor att = ops::linear(attn::merge_heads(a), l.o);
        Tensor mlp = ops::linear(ops::gelu(ops::linear(h, l.fc_in, l.fc_in_b), "tanh"), l.fc_out, l.fc_out_b);
        return ops::add(ops::add(x, att), mlp);
    }

    Tensor head(Context &, const Tensor &x) {
        return ops::linear(ops::layer_norm(x, {hidden_}, lnf_w_, lnf_b_, eps_), head_, head_b_);
    }

private:
    struct Layer {
        Tensor ln_w, ln_b, q, k, v, o, fc_in, fc_in_b, fc_out, fc_out_b;
    };
    int64_t hidden_ = 0, layers_ = 0, heads_ = 0, vocab_ = 0, inner_ = 0, head_dim_ = 0, rot_ = 0;
    double eps_ = 1e-5;
    Tensor wte_, inv_freq_, lnf_w_, lnf_b_, head_, head_b_;
    std::vector<Layer> layers;
};

const char *const kModelTypes[] = {"gptj", nullptr};

}  // namespace

MANGO_PLUGIN("gptj", "1.0.0", "GPT-J decoders",
             mango::architecture<Gptj>("gptj", "1.0.0", "GPT-J: parallel attention + MLP, partial interleaved rotary",
                                       nullptr, kModelTypes))
