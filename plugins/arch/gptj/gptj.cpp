// `gptj` architecture: one LayerNorm per block feeding attention and MLP in
// parallel, interleaved ("rotate every two") rotary embeddings on the first
// rotary_dim channels of each head, untied LM head with a bias.
//
//   h = ln_1(x);  out = x + o(attn(h)) + fc_out(gelu(fc_in(h)))
// Reference: transformers' modeling_gptj.py.
#include <mango/attention.hpp>
#include <mango/component.hpp>
#include <mango/layers.hpp>
#include <mango/plain_moe.hpp>

#include <cmath>
#include <string>
#include <vector>

namespace {

using mango::Context;
using mango::Error;
using mango::Tensor;
namespace ops = mango::ops;
namespace attn = mango::attention;
namespace nn = mango::layers;

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

// What a GPT-J config says, read once.
struct Config {
    explicit Config(Context &ctx) {
        hidden = ctx.config_int("n_embd", 0);
        layers = ctx.config_int("n_layer", 0);
        heads = ctx.config_int("n_head", 0);
        vocab = ctx.config_int("vocab_size", 0);
        inner = ctx.config_int("n_inner", 4 * hidden);
        eps = ctx.config_double("layer_norm_epsilon", 1e-5);
        if (hidden <= 0 || layers <= 0 || heads <= 0 || hidden % heads)
            throw Error(MANGO_ERR_INVALID_ARGUMENT, "config needs positive n_embd, n_layer, n_head (n_embd a multiple of n_head)");
        head_dim = hidden / heads;
        rot = ctx.config_int("rotary_dim", 64, head_dim);  // GPTJConfig's default; null: the whole head
        if (rot <= 0 || rot > head_dim || rot % 2)
            throw Error(MANGO_ERR_INVALID_ARGUMENT, "rotary_dim must be even and at most the head size");
        act = ctx.config_string("activation_function", "gelu_new");
        if (act != "gelu_new") throw Error(MANGO_ERR_UNSUPPORTED, "activation_function '" + act + "' is not supported by the gptj plugin");
        moe = mango::moe::PlainMoe::from_config(ctx, layers);
    }
    mango::moe::PlainMoe moe;  // layers converted to experts (Mango MoE format)
    std::string act;
    int64_t hidden = 0, layers = 0, heads = 0, vocab = 0, inner = 0, head_dim = 0, rot = 0;
    double eps = 1e-5;
};

class Gptj {
public:
    static mango::TensorTable tensor_table(Context &ctx) { return table(Config(ctx)); }

    explicit Gptj(Context &ctx) : c_(ctx) {
        const mango::Weights w = table(c_).load(ctx);
        wte_ = w.get("embed.tokens.weight");
        inv_freq_ = attn::to_tensor(attn::rope_inv_freq(c_.rot, 10000.0), wte_.device());
        for (int32_t i = 0; i < c_.layers; ++i) {
            Layer l;
            l.ln_w = w.at(i, "norm.attn.weight");
            l.ln_b = w.at(i, "norm.attn.bias");
            l.q = w.at(i, "attn.q.weight");
            l.k = w.at(i, "attn.k.weight");
            l.v = w.at(i, "attn.v.weight");
            l.o = w.at(i, "attn.o.weight");
            l.mlp = c_.moe.load_mlp(w, i, false);
            layers.push_back(std::move(l));
        }
        lnf_w_ = w.get("norm.final.weight");
        lnf_b_ = w.get("norm.final.bias");
        head_ = w.get("lm_head.weight");
        head_b_ = w.get("lm_head.bias");
    }

    void describe(Context &, mango_model_info &info) {
        info.is_causal = 1;
        info.hidden_size = c_.hidden;
        info.n_layers = c_.layers;
        info.vocab_size = c_.vocab;
        info.n_heads = info.n_kv_heads = c_.heads;
        info.head_dim = c_.head_dim;
        info.max_positions = 0;
        info.tied_embeddings = 0;
    }

    Tensor embed(Context &, const Tensor &ids, const Tensor &) { return ops::embedding(wte_, ids); }

    Tensor block(Context &ctx, int32_t i, const Tensor &x, const Tensor &mask, const Tensor &pos, bool use_cache) {
        const Layer &l = layers[static_cast<size_t>(i)];
        const int64_t hd = c_.head_dim, rot = c_.rot;
        Tensor h = nn::layer_norm(x, l.ln_w, l.ln_b, c_.eps);
        // Rotary on [B, T, H, D] as GPT-J does, sin/cos [B, T, 1, rot].
        Tensor freqs = ops::unsqueeze(ops::mul(ops::unsqueeze(ops::to_dtype(pos, MANGO_DTYPE_F32), -1), inv_freq_), 2);
        Tensor sin = ops::to_dtype(repeat_twice(ops::sin(freqs)), x.dtype()), cos = ops::to_dtype(repeat_twice(ops::cos(freqs)), x.dtype());
        auto heads = [&](const Tensor &w, bool rotary) {
            Tensor t = ops::reshape(ops::linear(h, w), {x.size(0), x.size(1), c_.heads, hd});
            if (rotary) {
                Tensor r = ops::narrow(t, -1, 0, rot);
                r = ops::add(ops::mul(r, cos), ops::mul(rotate_every_two(r), sin));
                t = rot == hd ? r : ops::cat({r, ops::narrow(t, -1, rot, hd - rot)}, -1);
            }
            return ops::transpose(t, 1, 2);  // [B, H, T, D]
        };
        Tensor q = heads(l.q, true), k = heads(l.k, true), v = heads(l.v, false);
        auto [keys, values] = attn::cached_kv(ctx, i, k, v, use_cache);
        Tensor a = attn::attend(ctx, q, keys, values, mask, 0, 1.0 / std::sqrt(double(hd)));
        Tensor att = ops::linear(attn::merge_heads(a), l.o);
        Tensor mlp = c_.moe.mlp(ctx, i, l.mlp, h, mask, c_.act);
        return ops::add(ops::add(x, att), mlp);
    }

    Tensor head(Context &, const Tensor &x) { return ops::linear(nn::layer_norm(x, lnf_w_, lnf_b_, c_.eps), head_, head_b_); }

private:
    struct Layer {
        Tensor ln_w, ln_b, q, k, v, o;
        mango::moe::PlainMoe::Mlp mlp;  // fc_in, GELU, fc_out (or experts)
    };

    // Every tensor of a model of this config (transformers' names).
    static mango::TensorTable table(const Config &c) {
        const int64_t H = c.hidden, I = c.inner;
        const std::string L = "transformer.h.{L}.";
        mango::TensorTable t;
        t.model("embed.tokens.weight", "transformer.wte.weight", {c.vocab, H});
        t.layers(c.layers, "norm.attn.weight", L + "ln_1.weight", {H});
        t.layers(c.layers, "norm.attn.bias", L + "ln_1.bias", {H});
        t.layers(c.layers, "attn.q.weight", L + "attn.q_proj.weight", {H, H});
        t.layers(c.layers, "attn.k.weight", L + "attn.k_proj.weight", {H, H});
        t.layers(c.layers, "attn.v.weight", L + "attn.v_proj.weight", {H, H});
        t.layers(c.layers, "attn.o.weight", L + "attn.out_proj.weight", {H, H});
        c.moe.add_mlp_tensors(t, c.layers, L + "mlp.", "fc_in", "fc_out", false, H, I);
        t.model("norm.final.weight", "transformer.ln_f.weight", {H});
        t.model("norm.final.bias", "transformer.ln_f.bias", {H});
        t.model("lm_head.weight", "lm_head.weight", {c.vocab, H});
        t.model("lm_head.bias", "lm_head.bias", {c.vocab});
        return t;
    }

    Config c_;
    Tensor wte_, inv_freq_, lnf_w_, lnf_b_, head_, head_b_;
    std::vector<Layer> layers;
};

const char *const kModelTypes[] = {"gptj", nullptr};

}  // namespace

MANGO_PLUGIN("gptj", "1.0.0", "GPT-J decoders",
             mango::architecture<Gptj>("gptj", "1.0.0", "GPT-J: parallel attention + MLP, partial interleaved rotary", nullptr,
                                       kModelTypes))
