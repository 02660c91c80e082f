// `gpt_neo` architecture: GPT-2-like blocks with separate q/k/v projections,
// unscaled attention scores, and layers alternating global and local
// (sliding-window) attention as config.attention_layers says.
// Reference: transformers' modeling_gpt_neo.py.
#include <mango/attention.hpp>
#include <mango/component.hpp>
#include <mango/layers.hpp>
#include <mango/plain_moe.hpp>

#include <string>
#include <vector>

namespace {

using mango::Context;
using mango::Error;
using mango::Tensor;
namespace ops = mango::ops;
namespace attn = mango::attention;
namespace nn = mango::layers;

// What a GPT-Neo config says, read once.
struct Config {
    explicit Config(Context &ctx) {
        hidden = ctx.config_int("hidden_size", 0);
        layers = ctx.config_int("num_layers", 0);
        heads = ctx.config_int("num_heads", 0);
        vocab = ctx.config_int("vocab_size", 0);
        positions = ctx.config_int("max_position_embeddings", 2048);
        inner = ctx.config_int("intermediate_size", 4 * hidden);
        window = ctx.config_int("window_size", 256);
        eps = ctx.config_double("layer_norm_epsilon", 1e-5);
        if (hidden <= 0 || layers <= 0 || heads <= 0 || hidden % heads)
            throw Error(MANGO_ERR_INVALID_ARGUMENT,
                        "config needs positive hidden_size, num_layers, num_heads (hidden a multiple of heads)");
        head_dim = hidden / heads;
        act = ctx.config_string("activation_function", "gelu_new");
        if (act != "gelu_new")
            throw Error(MANGO_ERR_UNSUPPORTED, "activation_function '" + act + "' is not supported by the gpt_neo plugin");
        local = attention_kinds(ctx);
        tied = ctx.config_bool("tie_word_embeddings", true);
        moe = mango::moe::PlainMoe::from_config(ctx, layers);
    }
    mango::moe::PlainMoe moe;  // layers converted to experts (Mango MoE format)
    std::string act;
    int64_t hidden = 0, layers = 0, heads = 0, head_dim = 0, vocab = 0, positions = 0, inner = 0, window = 0;
    double eps = 1e-5;
    bool tied = true;         // false: the checkpoint's own lm_head.weight
    std::vector<bool> local;  // per layer: true for "local" attention

private:
    // From attention_layers, else expanded from attention_types
    // [[["global", "local"], repeats], ...] (GPTNeoConfig's default: 12
    // repeats of global, local).
    std::vector<bool> attention_kinds(Context &ctx) const {
        std::vector<std::string> kinds;
        auto at = [](const std::string &key, int64_t i) { return key + "." + std::to_string(i); };
        if (ctx.config("attention_layers.0")) {
            for (int64_t i = 0; i <= layers && ctx.config(at("attention_layers", i).c_str()); ++i)
                kinds.push_back(ctx.config_string(at("attention_layers", i).c_str(), ""));
        } else if (!ctx.config("attention_types.0.1")) {
            for (int r = 0; r < 12; ++r) kinds.insert(kinds.end(), {"global", "local"});
        } else {
            for (int64_t i = 0; ctx.config(at(at("attention_types", i), 1).c_str()); ++i) {
                const std::string item = at("attention_types", i);
                const int64_t repeats = ctx.config_int(at(item, 1).c_str(), 0);
                std::vector<std::string> pattern;
                for (int64_t j = 0; ctx.config(at(at(item, 0), j).c_str()); ++j)
                    pattern.push_back(ctx.config_string(at(at(item, 0), j).c_str(), ""));
                if (repeats < 0 || pattern.empty())
                    throw Error(MANGO_ERR_INVALID_ARGUMENT, "config " + item + " must be [[kinds...], repeats] with repeats >= 0");
                for (int64_t r = 0; r < repeats && static_cast<int64_t>(kinds.size()) <= layers; ++r)
                    kinds.insert(kinds.end(), pattern.begin(), pattern.end());
            }
        }
        std::vector<bool> out;
        for (const std::string &kind : kinds) {
            if (kind != "global" && kind != "local")
                throw Error(MANGO_ERR_UNSUPPORTED, "attention layer kind '" + kind + "' is not supported");
            out.push_back(kind == "local");
        }
        if (static_cast<int64_t>(out.size()) != layers)
            throw Error(MANGO_ERR_INVALID_ARGUMENT,
                        "config attention_layers (or attention_types expanded) must list global/local for each of the " +
                            std::to_string(layers) + " layers");
        return out;
    }
};

class GptNeo {
public:
    static mango::TensorTable tensor_table(Context &ctx) { return table(Config(ctx)); }

    explicit GptNeo(Context &ctx) : c_(ctx) {
        const mango::Weights w = table(c_).load(ctx);
        wte_ = w.get("embed.tokens.weight");
        wpe_ = w.get("embed.positions.weight");
        for (int32_t i = 0; i < c_.layers; ++i) {
            Layer l;
            l.ln1_w = w.at(i, "norm.attn.weight");
            l.ln1_b = w.at(i, "norm.attn.bias");
            l.q = w.at(i, "attn.q.weight");
            l.k = w.at(i, "attn.k.weight");
            l.v = w.at(i, "attn.v.weight");
            l.o = w.at(i, "attn.o.weight");
            l.o_b = w.at(i, "attn.o.bias");
            l.ln2_w = w.at(i, "norm.mlp.weight");
            l.ln2_b = w.at(i, "norm.mlp.bias");
            l.mlp = c_.moe.load_mlp(w, i, false);
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
        info.n_heads = info.n_kv_heads = c_.heads;
        info.head_dim = c_.head_dim;
        info.max_positions = c_.positions;
        info.tied_embeddings = c_.tied ? 1 : 0;
    }

    Tensor embed(Context &, const Tensor &ids, const Tensor &pos) { return ops::add(ops::embedding(wte_, ids), ops::embedding(wpe_, pos)); }

    Tensor block(Context &ctx, int32_t i, const Tensor &x, const Tensor &mask, const Tensor &, bool use_cache) {
        const Layer &l = layers[static_cast<size_t>(i)];
        const int64_t hd = c_.head_dim;
        Tensor h = nn::layer_norm(x, l.ln1_w, l.ln1_b, c_.eps);
        Tensor q = attn::split_heads(ops::linear(h, l.q), c_.heads, hd);
        Tensor k = attn::split_heads(ops::linear(h, l.k), c_.heads, hd);
        Tensor v = attn::split_heads(ops::linear(h, l.v), c_.heads, hd);
        const int64_t window = c_.local[static_cast<size_t>(i)] ? c_.window : 0;
        auto [keys, values] = attn::cached_kv(ctx, i, k, v, use_cache, window);
        Tensor bias = attn::mask_bias(mask, x.size(1), window, x.dtype());
        Tensor a = attn::eager(q, keys, values, bias, 1.0);  // GPT-Neo does not scale scores
        Tensor r = ops::add(x, ops::linear(attn::merge_heads(a), l.o, l.o_b));
        h = nn::layer_norm(r, l.ln2_w, l.ln2_b, c_.eps);
        return ops::add(r, c_.moe.mlp(ctx, i, l.mlp, h, mask, c_.act));
    }

    Tensor head(Context &, const Tensor &x) { return ops::linear(nn::layer_norm(x, lnf_w_, lnf_b_, c_.eps), lm_head_); }

private:
    struct Layer {
        Tensor ln1_w, ln1_b, q, k, v, o, o_b, ln2_w, ln2_b;
        mango::moe::PlainMoe::Mlp mlp;  // c_fc, GELU, c_proj (or experts)
    };

    // Every tensor of a model of this config (transformers' names).
    static mango::TensorTable table(const Config &c) {
        const int64_t H = c.hidden, I = c.inner;
        const std::string L = "transformer.h.{L}.";
        mango::TensorTable t;
        t.model("embed.tokens.weight", "transformer.wte.weight", {c.vocab, H});
        t.model("embed.positions.weight", "transformer.wpe.weight", {c.positions, H});
        t.layers(c.layers, "norm.attn.weight", L + "ln_1.weight", {H});
        t.layers(c.layers, "norm.attn.bias", L + "ln_1.bias", {H});
        t.layers(c.layers, "attn.q.weight", L + "attn.attention.q_proj.weight", {H, H});
        t.layers(c.layers, "attn.k.weight", L + "attn.attention.k_proj.weight", {H, H});
        t.layers(c.layers, "attn.v.weight", L + "attn.attention.v_proj.weight", {H, H});
        t.layers(c.layers, "attn.o.weight", L + "attn.attention.out_proj.weight", {H, H});
        t.layers(c.layers, "attn.o.bias", L + "attn.attention.out_proj.bias", {H});
        t.layers(c.layers, "norm.mlp.weight", L + "ln_2.weight", {H});
        t.layers(c.layers, "norm.mlp.bias", L + "ln_2.bias", {H});
        c.moe.add_mlp_tensors(t, c.layers, L + "mlp.", "c_fc", "c_proj", false, H, I);
        t.model("norm.final.weight", "transformer.ln_f.weight", {H});
        t.model("norm.final.bias", "transformer.ln_f.bias", {H});
        t.lm_head("lm_head.weight", "transformer.wte.weight", {c.vocab, H}, c.tied);
        return t;
    }

    Config c_;
    Tensor wte_, wpe_, lnf_w_, lnf_b_, lm_head_;
    std::vector<Layer> layers;
};

const char *const kModelTypes[] = {"gpt_neo", nullptr};

}  // namespace

MANGO_PLUGIN("gpt_neo", "1.0.0", "GPT-Neo decoders",
             mango::architecture<GptNeo>("gpt_neo", "1.0.0", "GPT-Neo: alternating global and local attention, unscaled scores", nullptr,
                                         kModelTypes))
