// `bert` architecture: BERT, RoBERTa and DistilBERT encoders with their
// masked-LM heads. One implementation, one tensor-name table per family.
//
//   x   = LN(word[ids] + pos[p] (+ type[0]))
//   h   = LN(x + o(attn(x)))          bidirectional, padding masked
//   out = LN(h + down(act(up(h))))     post-LayerNorm blocks
//   head: decoder(LN(act(dense(out)))) + bias, decoder tied to word embeddings
// Positions: 0..T-1 (BERT, DistilBERT); RoBERTa counts real tokens from
// padding_idx + 1. Reference: modeling_bert.py, modeling_roberta.py,
// modeling_distilbert.py in transformers.
#include <mango/attention.hpp>
#include <mango/component.hpp>

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

struct Names {
    const char *word, *pos, *type, *emb_ln;  // type may be nullptr
    const char *layer;                        // prefix, followed by the index and '.'
    const char *q, *k, *v, *o, *attn_ln, *up, *down, *out_ln;
    const char *head_dense, *head_ln, *head_bias;
};

const Names kBert = {"bert.embeddings.word_embeddings", "bert.embeddings.position_embeddings",
                     "bert.embeddings.token_type_embeddings", "bert.embeddings.LayerNorm", "bert.encoder.layer.",
                     "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                     "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm",
                     "cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm", "cls.predictions.bias"};
const Names kRoberta = {"roberta.embeddings.word_embeddings", "roberta.embeddings.position_embeddings",
                        "roberta.embeddings.token_type_embeddings", "roberta.embeddings.LayerNorm", "roberta.encoder.layer.",
                        "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                        "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm",
                        "lm_head.dense", "lm_head.layer_norm", "lm_head.bias"};
const Names kDistil = {"distilbert.embeddings.word_embeddings", "distilbert.embeddings.position_embeddings", nullptr,
                       "distilbert.embeddings.LayerNorm", "distilbert.transformer.layer.", "attention.q_lin",
                       "attention.k_lin", "attention.v_lin", "attention.out_lin", "sa_layer_norm", "ffn.lin1", "ffn.lin2",
                       "output_layer_norm", "vocab_transform", "vocab_layer_norm", "vocab_projector.bias"};

struct Linear {
    Tensor w, b;
};
struct Norm {
    Tensor w, b;
};

class Bert {
public:
    explicit Bert(Context &ctx) {
        const std::string type = ctx.config_string("model_type", "bert");
        distil_ = type == "distilbert";
        roberta_ = type == "roberta";
        n_ = distil_ ? &kDistil : roberta_ ? &kRoberta : &kBert;
        hidden_ = distil_ ? ctx.config_int("dim", 0) : ctx.config_int("hidden_size", 0);
        layers_ = distil_ ? ctx.config_int("n_layers", 0) : ctx.config_int("num_hidden_layers", 0);
        heads_ = distil_ ? ctx.config_int("n_heads", 0) : ctx.config_int("num_attention_heads", 0);
        inter_ = distil_ ? ctx.config_int("hidden_dim", 0) : ctx.config_int("intermediate_size", 0);
        vocab_ = ctx.config_int("vocab_size", 0);
        positions_ = ctx.config_int("max_position_embeddings", 512);
        eps_ = distil_ ? 1e-12 : ctx.config_double("layer_norm_eps", 1e-12);
        pad_ = ctx.config_int("pad_token_id", 0);
        if (hidden_ <= 0 || layers_ <= 0 || heads_ <= 0 || hidden_ % heads_)
            throw Error(MANGO_ERR_INVALID_ARGUMENT, "config needs positive hidden size, layers and heads (hidden a multiple of heads)");
        act_ = distil_ ? ctx.config_string("activation", "gelu") : ctx.config_string("hidden_act", "gelu");
        if (act_ != "gelu" && act_ != "gelu_new" && act_ != "gelu_pytorch_tanh" && act_ != "relu")
            throw Error(MANGO_ERR_UNSUPPORTED, "activation '" + act_ + "' is not supported by the bert plugin");
        const std::string pe = ctx.config_string("position_embedding_type", "absolute");
        if (pe != "absolute") throw Error(MANGO_ERR_UNSUPPORTED, "position_embedding_type '" + pe + "' is not supported (absolute only)");

        word_ = ctx.weight(std::string(n_->word) + ".weight", {vocab_, hidden_});
        pos_ = ctx.weight(std::string(n_->pos) + ".weight", {positions_, hidden_});
        if (n_->type) type_ = ctx.weight(std::string(n_->type) + ".weight", {ctx.config_int("type_vocab_size", 2), hidden_});
        emb_ln_ = norm(ctx, n_->emb_ln, hidden_);
        for (int64_t i = 0; i < layers_; ++i) {
            const std::string p = n_->layer + std::to_string(i) + ".";
            Layer l{linear(ctx, p + n_->q, hidden_, hidden_), linear(ctx, p + n_->k, hidden_, hidden_),
                    linear(ctx, p + n_->v, hidden_, hidden_), linear(ctx, p + n_->o, hidden_, hidden_),
                    norm(ctx, p + n_->attn_ln, hidden_),     linear(ctx, p + n_->up, inter_, hidden_),
                    linear(ctx, p + n_->down, hidden_, inter_), norm(ctx, p + n_->out_ln, hidden_)};
            layers.push_back(std::move(l));
        }
        head_dense_ = linear(ctx, n_->head_dense, hidden_, hidden_);
        head_ln_ = norm(ctx, n_->head_ln, hidden_);
        head_bias_ = ctx.weight(n_->head_bias, {vocab_});
    }

    void describe(Context &ctx, mango_model_info &info) {
        info.is_causal = 0;
        info.hidden_size = hidden_;
        info.n_layers = layers_;
        info.vocab_size = vocab_;
        info.n_heads = heads_;
        info.n_kv_heads = heads_;
        info.head_dim = hidden_ / heads_;
        info.max_positions = positions_;
        info.tied_embeddings = 1;
        ctx.declare_tensor(-1, "embed.tokens.weight", std::string(n_->word) + ".weight");
        ctx.declare_tensor(-1, "embed.positions.weight", std::string(n_->pos) + ".weight");
        const std::pair<const char *, const char *> roles[] = {
            {"attn.q", n_->q}, {"attn.k", n_->k}, {"attn.v", n_->v}, {"attn.o", n_->o}, {"norm.attn", n_->attn_ln},
            {"mlp.up", n_->up}, {"mlp.down", n_->down}, {"norm.mlp", n_->out_ln}};
        for (int32_t i = 0; i < layers_; ++i)
            for (const auto &[role, rest] : roles)
                for (const char *part : {".weight", ".bias"})
                    ctx.declare_tensor(i, (std::string(role) + part).c_str(), n_->layer + std::to_string(i) + "." + rest + part);
    }

    Tensor embed(Context &, const Tensor &ids, const Tensor &) {
        const int64_t B = ids.size(0), T = ids.size(1);
        Tensor positions;
        if (roberta_) {  // real tokens count up from padding_idx + 1; padding sits at padding_idx
            Tensor real = ops::to_dtype(ops::logical_not(ops::eq_scalar(ids, double(pad_))), MANGO_DTYPE_I64);
            static const mango::Op cumsum("aten::cumsum");
            positions = ops::add_scalar(ops::mul(cumsum({real, int64_t(1)}), real), double(pad_));
            positions = ops::to_dtype(positions, MANGO_DTYPE_I64);
        } else {
            positions = ops::expand(ops::unsqueeze(ops::arange(T, MANGO_DTYPE_I64, ids.device()), 0), {B, T});
        }
        Tensor x = ops::add(ops::embedding(word_, ids), ops::embedding(pos_, positions));
        if (type_) x = ops::add(x, ops::narrow(type_, 0, 0, 1));  // token type 0
        return ops::layer_norm(x, {hidden_}, emb_ln_.w, emb_ln_.b, eps_);
    }

    Tensor block(Context &, int32_t i, const Tensor &x, const Tensor &mask, const Tensor &, bool) {
        const Layer &l = layers[static_cast<size_t>(i)];
        const int64_t hd = hidden_ / heads_, B = x.size(0), S = x.size(1);
        Tensor q = attn::split_heads(ops::linear(x, l.q.w, l.q.b), heads_, hd);
        Tensor k = attn::split_heads(ops::linear(x, l.k.w, l.k.b), heads_, hd);
        Tensor v = attn::split_heads(ops::linear(x, l.v.w, l.v.b), heads_, hd);
        Tensor pad = ops::reshape(ops::eq_scalar(mask, 0.0), {B, 1, 1, S});
        Tensor bias = ops::masked_fill(ops::zeros({B, 1, 1, S}, x.dtype(), x.device()), pad, -FLT_MAX);
        Tensor a = attn::merge_heads(attn::eager(q, k, v, bias, 1.0 / std::sqrt(double(hd))));
        Tensor h = ops::layer_norm(ops::add(x, ops::linear(a, l.o.w, l.o.b)), {hidden_}, l.attn_ln.w, l.attn_ln.b, eps_);
        Tensor m = ops::linear(activate(ops::linear(h, l.up.w, l.up.b)), l.down.w, l.down.b);
        return ops::layer_norm(ops::add(h, m), {hidden_}, l.out_ln.w, l.out_ln.b, eps_);
    }

    Tensor head(Context &, const Tensor &x) {
        Tensor h = activate(ops::linear(x, head_dense_.w, head_dense_.b));
        h = ops::layer_norm(h, {hidden_}, head_ln_.w, head_ln_.b, eps_);
        return ops::linear(h, word_, head_bias_);
    }

private:
    struct Layer {
        Linear q, k, v, o;
        Norm attn_ln;
        Linear up, down;
        Norm out_ln;
    };
    static Linear linear(Context &ctx, const std::string &n, int64_t out, int64_t in) {
        return {ctx.weight(n + ".weight", {out, in}), ctx.weight(n + ".bias", {out})};
    }
    static Norm norm(Context &ctx, const std::string &n, int64_t d) { return {ctx.weight(n + ".weight", {d}), ctx.weight(n + ".bias", {d})}; }
    Tensor activate(const Tensor &h) const {
        if (act_ == "relu") return ops::relu(h);
        return act_ == "gelu" ? ops::gelu(h) : ops::gelu(h, "tanh");
    }

    const Names *n_ = nullptr;
    bool distil_ = false, roberta_ = false;
    int64_t hidden_ = 0, layers_ = 0, heads_ = 0, inter_ = 0, vocab_ = 0, positions_ = 0, pad_ = 0;
    double eps_ = 1e-12;
    std::string act_;
    Tensor word_, pos_, type_, head_bias_;
    Norm emb_ln_, head_ln_;
    Linear head_dense_;
    std::vector<Layer> layers;
};

const char *const kModelTypes[] = {"bert", "roberta", "distilbert", nullptr};

}  // namespace

MANGO_PLUGIN("bert", "1.0.0", "BERT-family encoders",
             mango::architecture<Bert>("bert", "1.0.0", "BERT, RoBERTa, DistilBERT encoders with masked-LM heads",
                                       nullptr, kModelTypes))
