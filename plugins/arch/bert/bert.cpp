// `bert` architecture: BERT, RoBERTa and DistilBERT encoders with their
// masked-LM heads. One implementation, one tensor-name table per family.
//
//   x   = LN(word[ids] + pos[p] (+ type[0]))
//   h   = LN(x + o(attn(x)))          bidirectional, padding masked
//   out = LN(h + down(act(up(h))))     post-LayerNorm blocks
//   head: decoder(LN(act(dense(out)))) + bias, decoder tied to word embeddings
//         unless tie_word_embeddings is false; RoBERTa's act is always GELU
// Positions: 0..T-1 (BERT, DistilBERT); RoBERTa counts real tokens from
// padding_idx + 1. Reference: modeling_bert.py, modeling_roberta.py,
// modeling_distilbert.py in transformers.
#include <mango/attention.hpp>
#include <mango/component.hpp>
#include <mango/layers.hpp>

#include <cfloat>
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

struct Names {
    const char *word, *pos, *type, *emb_ln;  // type may be nullptr
    const char *layer;                       // prefix, followed by the index and '.'
    const char *q, *k, *v, *o, *attn_ln, *up, *down, *out_ln;
    const char *head_dense, *head_ln, *head_bias;
    const char *head_decoder;  // the LM head's weight, tied to the word embeddings
};

const Names kBert = {"bert.embeddings.word_embeddings",
                     "bert.embeddings.position_embeddings",
                     "bert.embeddings.token_type_embeddings",
                     "bert.embeddings.LayerNorm",
                     "bert.encoder.layer.",
                     "attention.self.query",
                     "attention.self.key",
                     "attention.self.value",
                     "attention.output.dense",
                     "attention.output.LayerNorm",
                     "intermediate.dense",
                     "output.dense",
                     "output.LayerNorm",
                     "cls.predictions.transform.dense",
                     "cls.predictions.transform.LayerNorm",
                     "cls.predictions.bias",
                     "cls.predictions.decoder.weight"};
const Names kRoberta = {"roberta.embeddings.word_embeddings",
                        "roberta.embeddings.position_embeddings",
                        "roberta.embeddings.token_type_embeddings",
                        "roberta.embeddings.LayerNorm",
                        "roberta.encoder.layer.",
                        "attention.self.query",
                        "attention.self.key",
                        "attention.self.value",
                        "attention.output.dense",
                        "attention.output.LayerNorm",
                        "intermediate.dense",
                        "output.dense",
                        "output.LayerNorm",
                        "lm_head.dense",
                        "lm_head.layer_norm",
                        "lm_head.bias",
                        "lm_head.decoder.weight"};
const Names kDistil = {"distilbert.embeddings.word_embeddings",
                       "distilbert.embeddings.position_embeddings",
                       nullptr,
                       "distilbert.embeddings.LayerNorm",
                       "distilbert.transformer.layer.",
                       "attention.q_lin",
                       "attention.k_lin",
                       "attention.v_lin",
                       "attention.out_lin",
                       "sa_layer_norm",
                       "ffn.lin1",
                       "ffn.lin2",
                       "output_layer_norm",
                       "vocab_transform",
                       "vocab_layer_norm",
                       "vocab_projector.bias",
                       "vocab_projector.weight"};

struct Linear {
    Tensor w, b;
};
struct Norm {
    Tensor w, b;
};

// What a BERT / RoBERTa / DistilBERT config says, read once.
struct Config {
    explicit Config(Context &ctx) {
        const std::string type = ctx.config_string("model_type", "bert");
        distil = type == "distilbert";
        roberta = type == "roberta";
        n = distil ? &kDistil : roberta ? &kRoberta : &kBert;
        hidden = distil ? ctx.config_int("dim", 0) : ctx.config_int("hidden_size", 0);
        layers = distil ? ctx.config_int("n_layers", 0) : ctx.config_int("num_hidden_layers", 0);
        heads = distil ? ctx.config_int("n_heads", 0) : ctx.config_int("num_attention_heads", 0);
        inter = distil ? ctx.config_int("hidden_dim", 0) : ctx.config_int("intermediate_size", 0);
        vocab = ctx.config_int("vocab_size", 0);
        positions = ctx.config_int("max_position_embeddings", 512);
        eps = distil ? 1e-12 : ctx.config_double("layer_norm_eps", 1e-12);
        pad = ctx.config_int("pad_token_id", roberta ? 1 : 0);  // RobertaConfig's default is 1
        tied = ctx.config_bool("tie_word_embeddings", true);
        if (hidden <= 0 || layers <= 0 || heads <= 0 || hidden % heads)
            throw Error(MANGO_ERR_INVALID_ARGUMENT, "config needs positive hidden size, layers and heads (hidden a multiple of heads)");
        head_dim = hidden / heads;
        act = distil ? ctx.config_string("activation", "gelu") : ctx.config_string("hidden_act", "gelu");
        if (act != "gelu" && act != "gelu_new" && act != "gelu_pytorch_tanh" && act != "relu")
            throw Error(MANGO_ERR_UNSUPPORTED, "activation '" + act + "' is not supported by the bert plugin");
        const std::string pe = ctx.config_string("position_embedding_type", "absolute");
        if (pe != "absolute") throw Error(MANGO_ERR_UNSUPPORTED, "position_embedding_type '" + pe + "' is not supported (absolute only)");
        if (n->type) types = ctx.config_int("type_vocab_size", 2);
    }
    const Names *n = nullptr;
    bool distil = false, roberta = false, tied = true;  // tied: the LM head's decoder is the word embedding
    std::string act;
    int64_t hidden = 0, layers = 0, heads = 0, head_dim = 0, inter = 0, vocab = 0, positions = 0, types = 0, pad = 0;
    double eps = 1e-12;
};

class Bert {
public:
    static mango::TensorTable tensor_table(Context &ctx) { return table(Config(ctx)); }

    explicit Bert(Context &ctx) : c_(ctx) {
        const mango::Weights w = table(c_).load(ctx);
        word_ = w.get("embed.tokens.weight");
        pos_ = w.get("embed.positions.weight");
        if (c_.n->type) type_ = w.get("embed.types.weight");
        emb_ln_ = {w.get("embed.norm.weight"), w.get("embed.norm.bias")};
        for (int32_t i = 0; i < c_.layers; ++i) {
            auto pair = [&](const std::string &role) { return Linear{w.at(i, role + ".weight"), w.at(i, role + ".bias")}; };
            auto norm = [&](const std::string &role) { return Norm{w.at(i, role + ".weight"), w.at(i, role + ".bias")}; };
            Layer l{pair("attn.q"),    pair("attn.k"), pair("attn.v"),   pair("attn.o"),
                    norm("norm.attn"), pair("mlp.up"), pair("mlp.down"), norm("norm.mlp")};
            layers.push_back(std::move(l));
        }
        head_dense_ = {w.get("head.dense.weight"), w.get("head.dense.bias")};
        head_ln_ = {w.get("head.norm.weight"), w.get("head.norm.bias")};
        head_bias_ = w.get("lm_head.bias");
        lm_head_ = w.get("lm_head.weight");
    }

    void describe(Context &, mango_model_info &info) {
        info.is_causal = 0;
        info.hidden_size = c_.hidden;
        info.n_layers = c_.layers;
        info.vocab_size = c_.vocab;
        info.n_heads = c_.heads;
        info.n_kv_heads = c_.heads;
        info.head_dim = c_.head_dim;
        info.max_positions = c_.positions;
        info.tied_embeddings = c_.tied ? 1 : 0;
    }

    Tensor embed(Context &, const Tensor &ids, const Tensor &) {
        const int64_t B = ids.size(0), T = ids.size(1);
        Tensor positions;
        if (c_.roberta) {  // real tokens count up from padding_idx + 1; padding sits at padding_idx
            Tensor real = ops::to_dtype(ops::logical_not(ops::eq_scalar(ids, double(c_.pad))), MANGO_DTYPE_I64);
            static const mango::Op cumsum("aten::cumsum");
            positions = ops::add_scalar(ops::mul(cumsum({real, int64_t(1)}), real), double(c_.pad));
            positions = ops::to_dtype(positions, MANGO_DTYPE_I64);
        } else {
            positions = ops::expand(ops::unsqueeze(ops::arange(T, MANGO_DTYPE_I64, ids.device()), 0), {B, T});
        }
        Tensor x = ops::add(ops::embedding(word_, ids), ops::embedding(pos_, positions));
        if (type_) x = ops::add(x, ops::narrow(type_, 0, 0, 1));  // token type 0
        return nn::layer_norm(x, emb_ln_.w, emb_ln_.b, c_.eps);
    }

    Tensor block(Context &, int32_t i, const Tensor &x, const Tensor &mask, const Tensor &, bool) {
        const Layer &l = layers[static_cast<size_t>(i)];
        const int64_t hd = c_.head_dim, B = x.size(0), S = x.size(1);
        Tensor q = attn::split_heads(ops::linear(x, l.q.w, l.q.b), c_.heads, hd);
        Tensor k = attn::split_heads(ops::linear(x, l.k.w, l.k.b), c_.heads, hd);
        Tensor v = attn::split_heads(ops::linear(x, l.v.w, l.v.b), c_.heads, hd);
        Tensor pad = ops::reshape(ops::eq_scalar(mask, 0.0), {B, 1, 1, S});
        Tensor bias = ops::masked_fill(ops::zeros({B, 1, 1, S}, x.dtype(), x.device()), pad, -FLT_MAX);
        Tensor a = attn::merge_heads(attn::eager(q, k, v, bias, 1.0 / std::sqrt(double(hd))));
        Tensor h = nn::layer_norm(ops::add(x, ops::linear(a, l.o.w, l.o.b)), l.attn_ln.w, l.attn_ln.b, c_.eps);
        Tensor m = ops::linear(nn::activation(c_.act, ops::linear(h, l.up.w, l.up.b)), l.down.w, l.down.b);
        return nn::layer_norm(ops::add(h, m), l.out_ln.w, l.out_ln.b, c_.eps);
    }

    Tensor head(Context &, const Tensor &x) {
        // RobertaLMHead applies (erf) GELU whatever hidden_act says; BERT and DistilBERT their activation.
        Tensor h = nn::activation(c_.roberta ? "gelu" : c_.act, ops::linear(x, head_dense_.w, head_dense_.b));
        h = nn::layer_norm(h, head_ln_.w, head_ln_.b, c_.eps);
        return ops::linear(h, lm_head_, head_bias_);
    }

private:
    struct Layer {
        Linear q, k, v, o;
        Norm attn_ln;
        Linear up, down;
        Norm out_ln;
    };

    // Every tensor of a model of this config (transformers' names for the family).
    static mango::TensorTable table(const Config &c) {
        const Names &n = *c.n;
        const int64_t H = c.hidden, I = c.inter;
        const std::string L = std::string(n.layer) + "{L}.";
        mango::TensorTable t;
        auto pair = [&](const std::string &role, const std::string &name, int64_t out, int64_t in) {
            t.layers(c.layers, role + ".weight", L + name + ".weight", {out, in});
            t.layers(c.layers, role + ".bias", L + name + ".bias", {out});
        };
        auto norm = [&](const std::string &role, const std::string &name) {
            t.layers(c.layers, role + ".weight", L + name + ".weight", {H});
            t.layers(c.layers, role + ".bias", L + name + ".bias", {H});
        };
        const std::string word = std::string(n.word) + ".weight";
        t.model("embed.tokens.weight", word, {c.vocab, H});
        t.model("embed.positions.weight", std::string(n.pos) + ".weight", {c.positions, H});
        if (n.type) t.model("embed.types.weight", std::string(n.type) + ".weight", {c.types, H});
        t.model("embed.norm.weight", std::string(n.emb_ln) + ".weight", {H});
        t.model("embed.norm.bias", std::string(n.emb_ln) + ".bias", {H});
        pair("attn.q", n.q, H, H);
        pair("attn.k", n.k, H, H);
        pair("attn.v", n.v, H, H);
        pair("attn.o", n.o, H, H);
        norm("norm.attn", n.attn_ln);
        pair("mlp.up", n.up, I, H);
        pair("mlp.down", n.down, H, I);
        norm("norm.mlp", n.out_ln);
        t.model("head.dense.weight", std::string(n.head_dense) + ".weight", {H, H});
        t.model("head.dense.bias", std::string(n.head_dense) + ".bias", {H});
        t.model("head.norm.weight", std::string(n.head_ln) + ".weight", {H});
        t.model("head.norm.bias", std::string(n.head_ln) + ".bias", {H});
        t.model("lm_head.bias", n.head_bias, {c.vocab});
        t.lm_head(n.head_decoder, word, {c.vocab, H}, c.tied);
        return t;
    }

    Config c_;
    Tensor word_, pos_, type_, head_bias_, lm_head_;
    Norm emb_ln_, head_ln_;
    Linear head_dense_;
    std::vector<Layer> layers;
};

const char *const kModelTypes[] = {"bert", "roberta", "distilbert", nullptr};

}  // namespace

MANGO_PLUGIN("bert", "1.0.0", "BERT-family encoders",
             mango::architecture<Bert>("bert", "1.0.0", "BERT, RoBERTa, DistilBERT encoders with masked-LM heads", nullptr, kModelTypes))
