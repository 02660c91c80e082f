// `gpt2` architecture: learned positions, pre-LayerNorm blocks, fused QKV,
// GELU (tanh) MLP, LM head tied to the token embedding.
//
//   h   = x + proj(attn(ln_1(x)))
//   out = h + fc_out(gelu(fc_in(ln_2(h))))
// GPT-2 stores its linear layers as Conv1D ([in, out]); their roles carry a
// ".T" suffix ("attn.qkv.weight.T") so users of roles know the layout.
// Reference: transformers' modeling_gpt2.py.
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

class Gpt2 {
public:
    explicit Gpt2(Context &ctx) {
        hidden_ = ctx.config_int("n_embd", 0);
        layers_ = ctx.config_int("n_layer", 0);
        heads_ = ctx.config_int("n_head", 0);
        vocab_ = ctx.config_int("vocab_size", 0);
        positions_ = ctx.config_int("n_positions", 1024);
        inner_ = ctx.config_int("n_inner", 4 * hidden_);
        eps_ = ctx.config_double("layer_norm_epsilon", 1e-5);
        if (hidden_ <= 0 || layers_ <= 0 || heads_ <= 0 || hidden_ % heads_)
            throw Error(MANGO_ERR_INVALID_ARGUMENT, "config needs positive n_embd, n_layer, n_head with n_embd a multiple of n_head");
        activation_ = ctx.config_string("activation_function", "gelu_new");
        if (activation_ != "gelu_new" && activation_ != "gelu_pytorch_tanh" && activation_ != "gelu" && activation_ != "relu")
            throw Error(MANGO_ERR_UNSUPPORTED, "activation_function '" + activation_ + "' is not supported by the gpt2 plugin");
        if (ctx.config_bool("scale_attn_by_inverse_layer_idx", false) || ctx.config_bool("reorder_and_upcast_attn", false))
            throw Error(MANGO_ERR_UNSUPPORTED, "scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not supported by the gpt2 plugin");

        // Checkpoints name tensors with or without the "transformer." prefix.
        try {
            wte_ = ctx.weight("transformer.wte.weight", {vocab_, hidden_});
            prefix_ = "transformer.";
        } catch (const Error &) {
            wte_ = ctx.weight("wte.weight", {vocab_, hidden_});
        }
        wpe_ = ctx.weight(prefix_ + "wpe.weight", {positions_, hidden_});
        for (int64_t i = 0; i < layers_; ++i) {
            Layer l;
            l.ln1_w = ctx.weight(name(i, "ln_1.weight"), {hidden_});
            l.ln1_b = ctx.weight(name(i, "ln_1.bias"), {hidden_});
            l.qkv = conv1d(ctx, name(i, "attn.c_attn.weight"), hidden_, 3 * hidden_);
            l.qkv_b = ctx.weight(name(i, "attn.c_attn.bias"), {3 * hidden_});
            l.proj = conv1d(ctx, name(i, "attn.c_proj.weight"), hidden_, hidden_);
            l.proj_b = ctx.weight(name(i, "attn.c_proj.bias"), {hidden_});
            l.ln2_w = ctx.weight(name(i, "ln_2.weight"), {hidden_});
            l.ln2_b = ctx.weight(name(i, "ln_2.bias"), {hidden_});
            l.fc_in = conv1d(ctx, name(i, "mlp.c_fc.weight"), hidden_, inner_);
            l.fc_in_b = ctx.weight(name(i, "mlp.c_fc.bias"), {inner_});
            l.fc_out = conv1d(ctx, name(i, "mlp.c_proj.weight"), inner_, hidden_);
            l.fc_out_b = ctx.weight(name(i, "mlp.c_proj.bias"), {hidden_});
            layers.push_back(std::move(l));
        }
        lnf_w_ = ctx.weight(prefix_ + "ln_f.weight", {hidden_});
        lnf_b_ = ctx.weight(prefix_ + "ln_f.bias", {hidden_});
    }

    void describe(Context &ctx, mango_model_info &info) {
        info.is_causal = 1;
        info.hidden_size = hidden_;
        info.n_layers = layers_;
        info.vocab_size = vocab_;
        info.n_heads = heads_;
        info.n_kv_heads = heads_;
        info.head_dim = hidden_ / heads_;
        info.max_positions = positions_;
        info.tied_embeddings = 1;
        ctx.declare_tensor(-1, "embed.tokens.weight", prefix_ + "wte.weight");
        ctx.declare_tensor(-1, "embed.positions.weight", prefix_ + "wpe.weight");
        ctx.declare_tensor(-1, "norm.final.weight", prefix_ + "ln_f.weight");
        ctx.declare_tensor(-1, "norm.final.bias", prefix_ + "ln_f.bias");
        const std::pair<const char *, const char *> roles[] = {
            {"norm.attn.weight", "ln_1.weight"}, {"norm.attn.bias", "ln_1.bias"},
            {"attn.qkv.weight.T", "attn.c_attn.weight"}, {"attn.qkv.bias", "attn.c_attn.bias"},
            {"attn.o.weight.T", "attn.c_proj.weight"}, {"attn.o.bias", "attn.c_proj.bias"},
            {"norm.mlp.weight", "ln_2.weight"}, {"norm.mlp.bias", "ln_2.bias"},
            {"mlp.up.weight.T", "mlp.c_fc.weight"}, {"mlp.up.bias", "mlp.c_fc.bias"},
            {"mlp.down.weight.T", "mlp.c_proj.weight"}, {"mlp.down.bias", "mlp.c_proj.bias"}};
        for (int32_t i = 0; i < layers_; ++i)
            for (const auto &[role, rest] : roles) ctx.declare_tensor(i, role, name(i, rest));
    }

    Tensor embed(Context &, const Tensor &ids, const Tensor &pos) {
        return ops::add(ops::embedding(wte_, ids), ops::embedding(wpe_, pos));
    }

    Tensor block(Context &ctx, int32_t i, const Tensor &x, const Tensor &mask, const Tensor &, bool use_cache) {
        const Layer &l = layers[static_cast<size_t>(i)];
        const int64_t head_dim = hidden_ / heads_;
        Tensor h = ops::layer_norm(x, {hidden_}, l.ln1_w, l.ln1_b, eps_);
        Tensor qkv = ops::linear(h, l.qkv, l.qkv_b);
        Tensor q = attn::split_heads(ops::narrow(qkv, -1, 0, hidden_), heads_, head_dim);
        Tensor k = attn::split_heads(ops::narrow(qkv, -1, hidden_, hidden_), heads_, head_dim);
        Tensor v = attn::split_heads(ops::narrow(qkv, -1, 2 * hidden_, hidden_), heads_, head_dim);
        auto [keys, values] = attn::cached_kv(ctx, i, k, v, use_cache);
        Tensor bias = attn::mask_bias(mask, x.size(1), 0, x.dtype());
        Tensor a = attn::eager(q, keys, values, bias, 1.0 / std::sqrt(double(head_dim)));
        Tensor r = ops::add(x, ops::linear(attn::merge_heads(a), l.proj, l.proj_b));
        h = ops::layer_norm(r, {hidden_}, l.ln2_w, l.ln2_b, eps_);
        h = ops::linear(h, l.fc_in, l.fc_in_b);
        h = activation_ == "relu" ? ops::relu(h) : activation_ == "gelu" ? ops::gelu(h) : ops::gelu(h, "tanh");
        return ops::add(r, ops::linear(h, l.fc_out, l.fc_out_b));
    }

    Tensor head(Context &, const Tensor &x) { return ops::linear(ops::layer_norm(x, {hidden_}, lnf_w_, lnf_b_, eps_), wte_); }

private:
    struct Layer {
        Tensor ln1_w, ln1_b, qkv, qkv_b, proj, proj_b, ln2_w, ln2_b, fc_in, fc_in_b, fc_out, fc_out_b;
    };
    std::string name(int64_t i, const std::string &rest) const { return prefix_ + "h." + std::to_string(i) + "." + rest; }
    // A Conv1D weight [in, out], returned as a linear weight [out, in].
    static Tensor conv1d(Context &ctx, const std::string &n, int64_t in, int64_t out) {
        return ops::contiguous(ops::transpose(ctx.weight(n, {in, out}), 0, 1));
    }

    int64_t hidden_ = 0, layers_ = 0, heads_ = 0, vocab_ = 0, positions_ = 0, inner_ = 0;
    double eps_ = 1e-5;
    std::string activation_, prefix_;
    Tensor wte_, wpe_, lnf_w_, lnf_b_;
    std::vector<Layer> layers;
};

const char *const kModelTypes[] = {"gpt2", nullptr};

}  // namespace

MANGO_PLUGIN("gpt2", "1.0.0", "GPT-2 decoders",
             mango::architecture<Gpt2>("gpt2", "1.0.0", "GPT-2: learned positions, pre-LayerNorm, fused QKV, GELU MLP, tied head",
                                       nullptr, kModelTypes))
