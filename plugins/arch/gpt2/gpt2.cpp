// `gpt2` architecture: learned positions, pre-LayerNorm blocks, fused QKV,
// GELU (tanh) MLP, LM head tied to the token embedding (unless
// tie_word_embeddings is false: then lm_head.weight).
//
//   h   = x + proj(attn(ln_1(x)))
//   out = h + fc_out(gelu(fc_in(ln_2(h))))
// GPT-2 stores its linear layers as Conv1D ([in, out]); their roles carry a
// ".T" suffix ("attn.qkv.weight.T") so users of roles know the layout.
// Layers listed in config.json's "mango_moe" have experts instead of the MLP
// (mango/plain_moe.hpp: what `mango convert-moe` writes for GPT-2).
// Reference: transformers' modeling_gpt2.py.
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

// What a GPT-2 config says, read once.
struct Config {
    explicit Config(Context &ctx) {
        hidden = ctx.config_int("n_embd", 0);
        layers = ctx.config_int("n_layer", 0);
        heads = ctx.config_int("n_head", 0);
        vocab = ctx.config_int("vocab_size", 0);
        positions = ctx.config_int("n_positions", 1024);
        inner = ctx.config_int("n_inner", 4 * hidden);
        eps = ctx.config_double("layer_norm_epsilon", 1e-5);
        if (hidden <= 0 || layers <= 0 || heads <= 0 || hidden % heads)
            throw Error(MANGO_ERR_INVALID_ARGUMENT, "config needs positive n_embd, n_layer, n_head with n_embd a multiple of n_head");
        head_dim = hidden / heads;
        act = ctx.config_string("activation_function", "gelu_new");
        if (act != "gelu_new" && act != "gelu_pytorch_tanh" && act != "gelu" && act != "relu")
            throw Error(MANGO_ERR_UNSUPPORTED, "activation_function '" + act + "' is not supported by the gpt2 plugin");
        tied = ctx.config_bool("tie_word_embeddings", true);
        scale_attn = ctx.config_bool("scale_attn_weights", true);  // false: scores are q·k, unscaled
        if (ctx.config_bool("scale_attn_by_inverse_layer_idx", false) || ctx.config_bool("reorder_and_upcast_attn", false))
            throw Error(MANGO_ERR_UNSUPPORTED,
                        "scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not supported by the gpt2 plugin");
        // Checkpoints name tensors with or without the "transformer." prefix
        // (a model initialised from its config uses the prefixed names).
        prefix = ctx.weight_exists("transformer.wte.weight") ? "transformer." : "";
        moe = mango::moe::PlainMoe::from_config(ctx, layers);
    }
    std::string act, prefix;
    mango::moe::PlainMoe moe;  // layers converted to experts (Mango MoE format; none for a plain GPT-2)
    int64_t hidden = 0, layers = 0, heads = 0, head_dim = 0, vocab = 0, positions = 0, inner = 0;
    double eps = 1e-5;
    bool tied = true, scale_attn = true;
};

class Gpt2 {
public:
    static mango::TensorTable tensor_table(Context &ctx) { return table(Config(ctx)); }

    explicit Gpt2(Context &ctx) : c_(ctx) {
        const mango::Weights w = table(c_).load(ctx);
        wte_ = w.get("embed.tokens.weight");
        wpe_ = w.get("embed.positions.weight");
        for (int32_t i = 0; i < c_.layers; ++i) {
            Layer l;
            l.ln1_w = w.at(i, "norm.attn.weight");
            l.ln1_b = w.at(i, "norm.attn.bias");
            l.qkv = conv1d(w.at(i, "attn.qkv.weight.T"));
            l.qkv_b = w.at(i, "attn.qkv.bias");
            l.proj = conv1d(w.at(i, "attn.o.weight.T"));
            l.proj_b = w.at(i, "attn.o.bias");
            l.ln2_w = w.at(i, "norm.mlp.weight");
            l.ln2_b = w.at(i, "norm.mlp.bias");
            l.mlp = c_.moe.load_mlp(w, i, true);
            layers.push_back(std::move(l));
        }
        lnf_w_ = w.get("norm.final.weight");
        lnf_b_ = w.get("norm.final.bias");
        lm_head_ = w.get("lm_head.weight");
    }

    void describe(Context &, mango_model_info &info) {
        info.is_causal = 1;
        info.hidden_size = c_.hidden;
        info.n_layers = c_.layers;
        info.vocab_size = c_.vocab;
        info.n_heads = c_.heads;
        info.n_kv_heads = c_.heads;
        info.head_dim = c_.head_dim;
        info.max_positions = c_.positions;
        info.tied_embeddings = c_.tied ? 1 : 0;
    }

    Tensor embed(Context &, const Tensor &ids, const Tensor &pos) { return ops::add(ops::embedding(wte_, ids), ops::embedding(wpe_, pos)); }

    Tensor block(Context &ctx, int32_t i, const Tensor &x, const Tensor &mask, const Tensor &, bool use_cache) {
        const Layer &l = layers[static_cast<size_t>(i)];
        const int64_t H = c_.hidden, head_dim = c_.head_dim;
        Tensor h = nn::layer_norm(x, l.ln1_w, l.ln1_b, c_.eps);
        Tensor qkv = ops::linear(h, l.qkv, l.qkv_b);
        Tensor q = attn::split_heads(ops::narrow(qkv, -1, 0, H), c_.heads, head_dim);
        Tensor k = attn::split_heads(ops::narrow(qkv, -1, H, H), c_.heads, head_dim);
        Tensor v = attn::split_heads(ops::narrow(qkv, -1, 2 * H, H), c_.heads, head_dim);
        auto [keys, values] = attn::cached_kv(ctx, i, k, v, use_cache);
        Tensor a = attn::attend(ctx, q, keys, values, mask, 0, c_.scale_attn ? 1.0 / std::sqrt(double(head_dim)) : 1.0);
        Tensor r = ops::add(x, ops::linear(attn::merge_heads(a), l.proj, l.proj_b));
        h = nn::layer_norm(r, l.ln2_w, l.ln2_b, c_.eps);
        return ops::add(r, c_.moe.mlp(ctx, i, l.mlp, h, mask, c_.act));
    }

    Tensor head(Context &, const Tensor &x) { return ops::linear(nn::layer_norm(x, lnf_w_, lnf_b_, c_.eps), lm_head_); }

private:
    struct Layer {
        Tensor ln1_w, ln1_b, qkv, qkv_b, proj, proj_b, ln2_w, ln2_b;
        mango::moe::PlainMoe::Mlp mlp;  // fc_in, GELU, fc_out (or experts)
    };
    // A Conv1D weight [in, out], returned as a linear weight [out, in].
    static Tensor conv1d(const Tensor &w) { return ops::contiguous(ops::transpose(w, 0, 1)); }

    // Every tensor of a model of this config (transformers' names; Conv1D
    // weights with their checkpoint shape [in, out]).
    static mango::TensorTable table(const Config &c) {
        const int64_t H = c.hidden, I = c.inner;
        const std::string P = c.prefix, L = P + "h.{L}.";
        mango::TensorTable t;
        t.model("embed.tokens.weight", P + "wte.weight", {c.vocab, H});
        t.model("embed.positions.weight", P + "wpe.weight", {c.positions, H});
        t.layers(c.layers, "norm.attn.weight", L + "ln_1.weight", {H});
        t.layers(c.layers, "norm.attn.bias", L + "ln_1.bias", {H});
        t.layers(c.layers, "attn.qkv.weight.T", L + "attn.c_attn.weight", {H, 3 * H});
        t.layers(c.layers, "attn.qkv.bias", L + "attn.c_attn.bias", {3 * H});
        t.layers(c.layers, "attn.o.weight.T", L + "attn.c_proj.weight", {H, H});
        t.layers(c.layers, "attn.o.bias", L + "attn.c_proj.bias", {H});
        t.layers(c.layers, "norm.mlp.weight", L + "ln_2.weight", {H});
        t.layers(c.layers, "norm.mlp.bias", L + "ln_2.bias", {H});
        c.moe.add_mlp_tensors(t, c.layers, L + "mlp.", "c_fc", "c_proj", true, H, I);
        t.model("norm.final.weight", P + "ln_f.weight", {H});
        t.model("norm.final.bias", P + "ln_f.bias", {H});
        t.lm_head("lm_head.weight", P + "wte.weight", {c.vocab, H}, c.tied);
        return t;
    }

    Config c_;
    Tensor wte_, wpe_, lnf_w_, lnf_b_, lm_head_;
    std::vector<Layer> layers;
};

const char *const kModelTypes[] = {"gpt2", nullptr};

}  // namespace

MANGO_PLUGIN("gpt2", "1.0.0", "GPT-2 decoders",
             mango::architecture<Gpt2>("gpt2", "1.0.0", "GPT-2: learned positions, pre-LayerNorm, fused QKV, GELU MLP, tied head", nullptr,
                                       kModelTypes))
