// `gpt_neo` architecture: GPT-2-like blocks with separate q/k/v projections,
// unscaled attention scores, and layers alternating global and local
// (sliding-window) attention as config.attention_layers says.
// Reference: transformers' modeling_gpt_neo.py.
#include <mango/attention.hpp>
#include <mango/component.hpp>

#include <string>
#include <vector>

namespace {

using mango::Context;
using mango::Error;
using mango::Tensor;
namespace ops = mango::ops;
namespace attn = mango::attention;

class GptNeo {
public:
    explicit GptNeo(Context &ctx) {
        hidden_ = ctx.config_int("hidden_size", 0);
        layers_ = ctx.config_int("num_layers", 0);
        heads_ = ctx.config_int("num_heads", 0);
        vocab_ = ctx.config_int("vocab_size", 0);
        positions_ = ctx.config_int("max_position_embeddings", 2048);
        inner_ = ctx.config_int("intermediate_size", 4 * hidden_);
        window_ = ctx.config_int("window_size", 256);
        eps_ = ctx.config_double("layer_norm_epsilon", 1e-5);
        if (hidden_ <= 0 || layers_ <= 0 || heads_ <= 0 || hidden_ % heads_)
            throw Error(MANGO_ERR_INVALID_ARGUMENT, "config needs positive hidden_size, num_layers, num_heads (hidden a multiple of heads)");
        const std::string act = ctx.config_string("activation_function", "gelu_new");
        if (act != "gelu_new") throw Error(MANGO_ERR_UNSUPPORTED, "activation_function '" + act + "' is not supported by the gpt_neo plugin");
        local_ = attention_kinds(ctx);
        wte_ = ctx.weight("transformer.wte.weight", {vocab_, hidden_});
        wpe_ = ctx.weight("transformer.wpe.weight", {positions_, hidden_});
        for (int64_t i = 0; i < layers_; ++i) {
            const std::string p = "transformer.h." + std::to_string(i) + ".";
            Layer l;
            l.ln1_w = ctx.weight(p + "ln_1.weight", {hidden_});
            l.ln1_b = ctx.weight(p + "ln_1.bias", {hidden_});
            l.q = ctx.weight(p + "attn.attention.q_proj.weight", {hidden_, hidden_});
            l.k = ctx.weight(p + "attn.attention.k_proj.weight", {hidden_, hidden_});
            l.v = ctx.weight(p + "attn.attention.v_proj.weight", {hidden_, hidden_});
            l.o = ctx.weight(p + "attn.attention.out_proj.weight", {hidden_, hidden_});
            l.o_b = ctx.weight(p + "attn.attention.out_proj.bias", {hidden_});
            l.ln2_w = ctx.weight(p + "ln_2.weight", {hidden_});
            l.ln2_b = ctx.weight(p + "ln_2.bias", {hidden_});
            l.fc = ctx.weight(p + "mlp.c_fc.weight", {inner_, hidden_});
            l.fc_b = ctx.weight(p + "mlp.c_fc.bias", {inner_});
            l.proj = ctx.weight(p + "mlp.c_proj.weight", {hidden_, inner_});
            l.proj_b = ctx.weight(p + "mlp.c_proj.bias", {hidden_});
            layers.push_back(std::move(l));
        }
        lnf_w_ = ctx.weight("transformer.ln_f.weight", {hidden_});
        lnf_b_ = ctx.weight("transformer.ln_f.bias", {hidden_});
    }

    void describe(Context &ctx, mango_model_info &info) {
        info.is_causal = 1;
        info.hidden_size = hidden_;
        info.n_layers = layers_;
        info.vocab_size = vocab_;
        info.n_heads = info.n_kv_heads = heads_;
        info.head_dim = hidden_ / heads_;
        info.max_positions = positions_;
        info.tied_embeddings = 1;
        ctx.declare_tensor(-1, "embed.tokens.weight", "transformer.wte.weight");
        ctx.declare_tensor(-1, "embed.positions.weight", "transformer.wpe.weight");
        ctx.declare_tensor(-1, "norm.final.weight", "transformer.ln_f.weight");
        ctx.declare_tensor(-1, "norm.final.bias", "transformer.ln_f.bias");
        const std::pair<const char *, const char *> roles[] = {
            {"norm.attn.weight", "ln_1.weight"}, {"norm.attn.bias", "ln_1.bias"}, {"attn.q.weight", "attn.attention.q_proj.weight"},
            {"attn.k.weight", "attn.attention.k_proj.weight"}, {"attn.v.weight", "attn.attention.v_proj.weight"},
            {"attn.o.weight", "attn.attention.out_proj.weight"}, {"attn.o.bias", "attn.attention.out_proj.bias"},
            {"norm.mlp.weight", "ln_2.weight"}, {"norm.mlp.bias", "ln_2.bias"}, {"mlp.up.weight", "mlp.c_fc.weight"},
            {"mlp.up.bias", "mlp.c_fc.bias"}, {"mlp.down.weight", "mlp.c_proj.weight"}, {"mlp.down.bias", "mlp.c_proj.bias"}};
        for (int32_t i = 0; i < layers_; ++i)
            for (const auto &[role, rest] : roles) ctx.declare_tensor(i, role, "transformer.h." + std::to_string(i) + "." + rest);
    }

    Tensor embed(Context &, const Tensor &ids, const Tensor &pos) {
        return ops::add(ops::embedding(wte_, ids), ops::embedding(wpe_, pos));
    }

    Tensor block(Context &ctx, int32_t i, const Tensor &x, const Tensor &mask, const Tensor &, bool use_cache) {
        const Layer &l = layers[static_cast<size_t>(i)];
        const int64_t hd = hidden_ / heads_;
        Tensor h = ops::layer_norm(x, {hidden_}, l.ln1_w, l.ln1_b, eps_);
        Tensor q = attn::split_heads(ops::linear(h, l.q), heads_, hd);
        Tensor k = attn::split_heads(ops::linear(h, l.k), heads_, hd);
        Tensor v = attn::split_heads(ops::linear(h, l.v), heads_, hd);
        auto [keys, values] = attn::cached_kv(ctx, i, k, v, use_cache);
        Tensor bias = attn::mask_bias(mask, x.size(1), local_[static_cast<size_t>(i)] ? window_ : 0, x.dtype());
        Tensor a = attn::eager(q, keys, values, bias, 1.0);  // GPT-Neo does not scale scores
        Tensor r = ops::add(x, ops::linear(attn::merge_heads(a), l.o, l.o_b));
        h = ops::layer_norm(r, {hidden_}, l.ln2_w, l.ln2_b, eps_);
        h = ops::gelu(ops::linear(h, l.fc, l.fc_b), "tanh");
        return ops::add(r, ops::linear(h, l.proj, l.proj_b));
    }

    Tensor head(Context &, const Tensor &x) { return ops::linear(ops::layer_norm(x, {hidden_}, lnf_w_, lnf_b_, eps_), wte_); }

private:
    struct Layer {
        Tensor ln1_w, ln1_b, q, k, v, o, o_b, ln2_w, ln2_b, fc, fc_b, proj, proj_b;
    };
    // Per layer: true for "local" attention. From attention_layers, else
    // expanded from attention_types [[["global", "local"], repeats], ...].
    std::vector<bool> attention_kinds(Context &ctx) const {
        std::vector<bool> local;
        for (int64_t i = 0; i < layers_; ++i) {
            const std::string kind = ctx.config_string(("attention_layers." + std::to_string(i)).c_str(), "");
            if (kind.empty()) break;
            if (kind != "global" && kind != "local") throw Error(MANGO_ERR_UNSUPPORTED, "attention layer kind '" + kind + "' is not supported");
            local.push_back(kind == "local");
        }
        if (static_cast<int64_t>(local.size()) != layers_)
            throw Error(MANGO_ERR_INVALID_ARGUMENT, "config attention_layers must list global/local for each of the " + std::to_string(layers_) + " layers");
        return local;
    }

    int64_t hidden_ = 0, layers_ = 0, heads_ = 0, vocab_ = 0, positions_ = 0, inner_ = 0, window_ = 0;
    double eps_ = 1e-5;
    std::vector<bool> local_;
    Tensor wte_, wpe_, lnf_w_, lnf_b_;
    std::vector<Layer> layers;
};

const char *const kModelTypes[] = {"gpt_neo", nullptr};

}  // namespace

MANGO_PLUGIN("gpt_neo", "1.0.0", "GPT-Neo decoders",
             mango::architecture<GptNeo>("gpt_neo", "1.0.0", "GPT-Neo: alternating global and local attention, unscaled scores",
                                         nullptr, kModelTypes))
