// `deepseek_v3` architecture: multi-head latent attention (queries through a
// LoRA q_a -> q_a_layernorm -> q_b, or a plain q_proj; keys and values from a
// compressed latent kv_a -> kv_a_layernorm -> kv_b, plus a rotary part shared
// by all heads; nope/rope split per head; interleaved or half rotary; yarn
// scaling with the mscale correction of the softmax scale), dense MLPs in the
// first first_k_dense_replace layers and MoE after: sigmoid scores, choice by
// score + e_score_correction_bias limited to the best topk_group of n_group
// groups (by their two best biased scores), weights from the unbiased scores,
// renormalised when norm_topk_prob, times routed_scaling_factor, plus
// unweighted shared experts. The KV cache holds the latent and the rotated
// key part. Reference: transformers' modeling_deepseek_v3.py (5.x).
#include <mango/attention.hpp>
#include <mango/component.hpp>
#include <mango/moe.hpp>

#include <cmath>

namespace {

using mango::Context;
using mango::Error;
using mango::Tensor;
namespace ops = mango::ops;
namespace attn = mango::attention;
namespace nn = mango::layers;
namespace moe = mango::moe;

struct Config {
    explicit Config(Context &ctx) {
        // A missing key means what DeepseekV3Config's default says (DeepSeek-V3's own sizes).
        hidden = ctx.config_int("hidden_size", 7168);
        layers = ctx.config_int("num_hidden_layers", 61);
        vocab = ctx.config_int("vocab_size", 129280);
        heads = ctx.config_int("num_attention_heads", 128);
        q_lora = ctx.config_int("q_lora_rank", 1536, 0);  // null: a plain q_proj
        kv_lora = ctx.config_int("kv_lora_rank", 512);
        rope_dim = ctx.config_int("qk_rope_head_dim", 64);
        nope_dim = ctx.config_int("qk_nope_head_dim", 128);
        v_dim = ctx.config_int("v_head_dim", 128);
        inter = ctx.config_int("intermediate_size", 18432);
        moe_inter = ctx.config_int("moe_intermediate_size", 2048);
        experts = ctx.config_int("n_routed_experts", ctx.config_int("num_local_experts", 256));
        shared = ctx.config_int("n_shared_experts", 1);
        top_k = ctx.config_int("num_experts_per_tok", 8);
        n_group = ctx.config_int("n_group", 8);
        topk_group = ctx.config_int("topk_group", 4);
        first_dense = ctx.config_int("first_k_dense_replace", 3);
        scale = ctx.config_double("routed_scaling_factor", 2.5);
        norm_topk = ctx.config_bool("norm_topk_prob", true);
        interleave = ctx.config_bool("rope_interleave", true);
        bias = ctx.config_bool("attention_bias", false);
        eps = ctx.config_double("rms_norm_eps", 1e-6);
        tied = ctx.config_bool("tie_word_embeddings", false);
        act = ctx.config_string("hidden_act", "silu");
        importance = ctx.config_bool("learned_token_importance", false);
        if (hidden <= 0 || layers <= 0 || vocab <= 0 || heads <= 0 || kv_lora <= 0 || rope_dim <= 0 || v_dim <= 0 || nope_dim < 0)
            throw Error(MANGO_ERR_INVALID_ARGUMENT,
                        "config needs positive hidden_size, num_hidden_layers, vocab_size, num_attention_heads, "
                        "kv_lora_rank, qk_rope_head_dim and v_head_dim");
        if (rope_dim % 2) throw Error(MANGO_ERR_INVALID_ARGUMENT, "qk_rope_head_dim must be even");
        if (first_dense < layers) {
            if (experts <= 0 || top_k <= 0 || top_k > experts)
                throw Error(MANGO_ERR_INVALID_ARGUMENT, "num_experts_per_tok (" + std::to_string(top_k) +
                                                            ") must be between 1 and n_routed_experts (" + std::to_string(experts) + ")");
            if (n_group <= 0 || experts % n_group)
                throw Error(MANGO_ERR_INVALID_ARGUMENT,
                            "n_group (" + std::to_string(n_group) + ") must divide n_routed_experts (" + std::to_string(experts) + ")");
            if (topk_group <= 0 || topk_group > n_group)
                throw Error(MANGO_ERR_INVALID_ARGUMENT, "topk_group (" + std::to_string(topk_group) + ") must be between 1 and n_group (" +
                                                            std::to_string(n_group) + ")");
            if (experts / n_group < 2 && n_group > 1 && topk_group < n_group)
                throw Error(MANGO_ERR_INVALID_ARGUMENT, "group-limited routing needs at least 2 experts per group");
        }
        if (!nn::known_activation(act)) throw Error(MANGO_ERR_UNSUPPORTED, "hidden_act '" + act + "' is not supported");
        const std::string method = ctx.config_string("topk_method", "noaux_tc");
        if (method != "noaux_tc" && method != "greedy" && method != "group_limited_greedy")
            throw Error(MANGO_ERR_UNSUPPORTED, "topk_method '" + method + "' is not supported (noaux_tc)");
        const std::string scoring = ctx.config_string("scoring_func", "sigmoid");
        if (scoring != "sigmoid")
            throw Error(MANGO_ERR_UNSUPPORTED, "scoring_func '" + scoring + "' is not supported (sigmoid, as transformers)");
        fused = first_dense < layers && ctx.weight_exists("model.layers." + std::to_string(first_dense) + ".mlp.experts.gate_up_proj") &&
                !ctx.weight_exists("model.layers." + std::to_string(first_dense) + ".mlp.experts.0.down_proj.weight");
    }
    int64_t hidden = 0, layers = 0, vocab = 0, heads = 0, q_lora = 0, kv_lora = 0, rope_dim = 0, nope_dim = 0, v_dim = 0;
    int64_t inter = 0, moe_inter = 0, experts = 0, shared = 0, top_k = 0, n_group = 1, topk_group = 1, first_dense = 0;
    double scale = 1, eps = 1e-6;
    bool norm_topk = true, interleave = true, bias = false, tied = false, fused = false, importance = false;
    std::string act;
    int64_t qk_dim() const { return nope_dim + rope_dim; }
};

class DeepseekV3 {
public:
    static mango::TensorTable tensor_table(Context &ctx) { return table(Config(ctx)); }

    explicit DeepseekV3(Context &ctx) : c_(ctx) {
        rope_ = attn::rope_from_config(ctx, c_.rope_dim);
        softmax_scale_ = 1.0 / std::sqrt(double(c_.qk_dim()));
        if (rope_.type != "default") {
            const double m_all = ctx.config_double("rope_scaling.mscale_all_dim", 0),
                         factor = ctx.config_double("rope_scaling.factor", 1.0);
            if (m_all != 0) {
                const double m = factor <= 1 ? 1.0 : 0.1 * m_all * std::log(factor) + 1.0;
                softmax_scale_ *= m * m;
            }
        }
        const Context::Shard shard = ctx.expert_shard();  // expert parallelism: this rank's experts only
        moe::check_shard(shard, c_.experts);
        const mango::Weights w = table(c_).load(ctx, moe::other_ranks_experts(shard, c_.experts));
        embed_ = w.get("embed.tokens.weight");
        inv_freq_ = attn::to_tensor(rope_.inv_freq, embed_.device());
        for (int32_t i = 0; i < c_.layers; ++i) {
            Layer l;
            auto opt = [&](const char *role) { return w.has(i, role) ? w.at(i, role) : Tensor(); };
            l.norm_attn = w.at(i, "norm.attn.weight");
            l.norm_mlp = w.at(i, "norm.mlp.weight");
            l.q = opt("attn.q.weight");
            l.q_a = opt("attn.q_a.weight");
            l.q_a_bias = opt("attn.q_a.bias");
            l.q_a_norm = opt("attn.q_a_norm.weight");
            l.q_b = opt("attn.q_b.weight");
            l.kv_a = w.at(i, "attn.kv_a.weight");
            l.kv_a_bias = opt("attn.kv_a.bias");
            l.kv_a_norm = w.at(i, "attn.kv_a_norm.weight");
            l.kv_b = w.at(i, "attn.kv_b.weight");
            l.o = w.at(i, "attn.o.weight");
            l.o_bias = opt("attn.o.bias");
            l.sparse = i >= c_.first_dense;
            if (!l.sparse) {
                l.gate = w.at(i, "mlp.gate.weight"), l.up = w.at(i, "mlp.up.weight"), l.down = w.at(i, "mlp.down.weight");
            } else {
                l.moe.n_experts = c_.experts;
                l.moe.top_k = c_.top_k;
                l.moe.renormalize = c_.norm_topk;
                l.moe.scoring = moe::SparseMlp::Scoring::sigmoid;
                l.moe.n_group = c_.n_group;
                l.moe.topk_group = c_.topk_group;
                l.moe.scale = c_.scale;
                l.moe.act = c_.act;
                l.moe.router = w.at(i, "moe.router.weight");
                l.moe.bias = w.at(i, "moe.router.bias");
                l.moe.experts = moe::load_experts(w, i, c_.fused, c_.experts, shard);
                if (c_.shared > 0) {
                    l.moe.shared_gate = w.at(i, "moe.shared.gate.weight");
                    l.moe.shared_up = w.at(i, "moe.shared.up.weight");
                    l.moe.shared_down = w.at(i, "moe.shared.down.weight");
                }
                if (c_.importance) l.moe.importance = w.at(i, "moe.importance.weight");
                l.moe.read_training(ctx, c_.hidden);
                l.moe.make_buffers(ctx, "layers." + std::to_string(i) + ".");
            }
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
        info.n_kv_heads = c_.heads;
        info.head_dim = c_.qk_dim();
        info.tied_embeddings = c_.tied;
    }

    Tensor embed(Context &, const Tensor &ids, const Tensor &) { return ops::embedding(embed_, ids); }

    Tensor block(Context &ctx, int32_t i, const Tensor &x, const Tensor &mask, const Tensor &pos, bool use_cache) {
        if (i < 0 || i >= c_.layers) throw Error(MANGO_ERR_INVALID_ARGUMENT, "layer " + std::to_string(i) + " out of range");
        const Layer &l = blocks_[size_t(i)];
        Tensor h = ops::add(x, attention(ctx, i, l, nn::rms_norm(x, l.norm_attn, c_.eps), mask, pos, use_cache));
        Tensor n = nn::rms_norm(h, l.norm_mlp, c_.eps);
        int64_t sparse_layers = std::max<int64_t>(1, c_.layers - c_.first_dense);
        return ops::add(h, l.sparse ? l.moe.forward(ctx, n, mask, sparse_layers) : moe::dense_mlp(n, l.gate, l.up, l.down, c_.act));
    }

    Tensor head(Context &, const Tensor &x) { return ops::linear(nn::rms_norm(x, norm_, c_.eps), lm_head_); }

private:
    struct Layer {
        Tensor norm_attn, norm_mlp, q, q_a, q_a_bias, q_a_norm, q_b, kv_a, kv_a_bias, kv_a_norm, kv_b, o, o_bias, gate, up, down;
        bool sparse = false;
        moe::SparseMlp moe;
    };

    Tensor attention(Context &ctx, int32_t i, const Layer &l, const Tensor &x, const Tensor &mask, const Tensor &pos, bool use_cache) {
        const int64_t B = x.size(0), T = x.size(1), nh = c_.heads, dq = c_.qk_dim(), dr = c_.rope_dim, dn = c_.nope_dim, dv = c_.v_dim;
        Tensor q = l.q ? ops::linear(x, l.q) : ops::linear(nn::rms_norm(ops::linear(x, l.q_a, l.q_a_bias), l.q_a_norm, 1e-6), l.q_b);
        q = ops::transpose(ops::reshape(q, {B, T, nh, dq}), 1, 2);  // [B, nh, T, dq]
        Tensor q_pass = ops::narrow(q, -1, 0, dn), q_rot = ops::narrow(q, -1, dn, dr);
        Tensor ckv = ops::linear(x, l.kv_a, l.kv_a_bias);  // [B, T, r + dr]
        Tensor latent = nn::rms_norm(ops::narrow(ckv, -1, 0, c_.kv_lora), l.kv_a_norm, 1e-6);
        Tensor k_rot = ops::unsqueeze(ops::narrow(ckv, -1, c_.kv_lora, dr), 1);  // [B, 1, T, dr]
        auto [cos, sin] = attn::rope_cos_sin_scaled(inv_freq_, pos, x.dtype(), rope_.attention_factor);
        if (c_.interleave) {
            q_rot = attn::apply_rope_interleaved(q_rot, cos, sin);
            k_rot = attn::apply_rope_interleaved(k_rot, cos, sin);
        } else {
            q_rot = attn::apply_rope(q_rot, cos, sin);
            k_rot = attn::apply_rope(k_rot, cos, sin);
        }
        // The cache holds the normalised latent [B, 1, S, r] and the rotated shared key part [B, 1, S, dr].
        auto [lat_all, rot_all] = attn::cached_kv(ctx, i, ops::unsqueeze(latent, 1), k_rot, use_cache);
        const int64_t S = lat_all.size(2);
        Tensor kv =
            ops::transpose(ops::reshape(ops::linear(ops::squeeze(lat_all, 1), l.kv_b), {B, S, nh, dn + dv}), 1, 2);  // [B, nh, S, dn+dv]
        Tensor k_nope = ops::narrow(kv, -1, 0, dn), v = ops::narrow(kv, -1, dn, dv);
        Tensor query = ops::cat({q_pass, q_rot}, -1);
        Tensor key = ops::cat({k_nope, ops::expand(rot_all, {B, nh, S, dr})}, -1);
        Tensor bias = attn::mask_bias(mask, T, 0, x.dtype());
        Tensor out = attn::eager(query, key, v, bias, softmax_scale_);  // [B, nh, T, dv]
        return ops::linear(attn::merge_heads(out), l.o, l.o_bias);
    }

    static mango::TensorTable table(const Config &c) {
        const int64_t H = c.hidden, nh = c.heads;
        const std::string L = "model.layers.{L}.";
        mango::TensorTable t;
        t.model("embed.tokens.weight", "model.embed_tokens.weight", {c.vocab, H});
        t.layers(c.layers, "norm.attn.weight", L + "input_layernorm.weight", {H});
        if (c.q_lora > 0) {
            t.layers(c.layers, "attn.q_a.weight", L + "self_attn.q_a_proj.weight", {c.q_lora, H});
            if (c.bias) t.layers(c.layers, "attn.q_a.bias", L + "self_attn.q_a_proj.bias", {c.q_lora});
            t.layers(c.layers, "attn.q_a_norm.weight", L + "self_attn.q_a_layernorm.weight", {c.q_lora});
            t.layers(c.layers, "attn.q_b.weight", L + "self_attn.q_b_proj.weight", {nh * c.qk_dim(), c.q_lora});
        } else {
            t.layers(c.layers, "attn.q.weight", L + "self_attn.q_proj.weight", {nh * c.qk_dim(), H});
        }
        t.layers(c.layers, "attn.kv_a.weight", L + "self_attn.kv_a_proj_with_mqa.weight", {c.kv_lora + c.rope_dim, H});
        if (c.bias) t.layers(c.layers, "attn.kv_a.bias", L + "self_attn.kv_a_proj_with_mqa.bias", {c.kv_lora + c.rope_dim});
        t.layers(c.layers, "attn.kv_a_norm.weight", L + "self_attn.kv_a_layernorm.weight", {c.kv_lora});
        t.layers(c.layers, "attn.kv_b.weight", L + "self_attn.kv_b_proj.weight", {nh * (c.nope_dim + c.v_dim), c.kv_lora});
        t.layers(c.layers, "attn.o.weight", L + "self_attn.o_proj.weight", {H, nh * c.v_dim});
        if (c.bias) t.layers(c.layers, "attn.o.bias", L + "self_attn.o_proj.bias", {H});
        t.layers(c.layers, "norm.mlp.weight", L + "post_attention_layernorm.weight", {H});
        for (int32_t i = 0; i < c.layers; ++i) {
            const std::string p = "model.layers." + std::to_string(i) + ".mlp.";
            if (i < c.first_dense) {
                t.layer(i, "mlp.gate.weight", p + "gate_proj.weight", {c.inter, H});
                t.layer(i, "mlp.up.weight", p + "up_proj.weight", {c.inter, H});
                t.layer(i, "mlp.down.weight", p + "down_proj.weight", {H, c.inter});
                continue;
            }
            t.layer(i, "moe.router.weight", p + "gate.weight", {c.experts, H});
            t.layer(i, "moe.router.bias", p + "gate.e_score_correction_bias", {c.experts}, MANGO_TENSOR_F32);  // float32, as transformers
            moe::add_experts(t, i, p, c.fused, c.experts, c.moe_inter, H);
            if (c.shared > 0) {
                const int64_t S = c.moe_inter * c.shared;
                t.layer(i, "moe.shared.gate.weight", p + "shared_experts.gate_proj.weight", {S, H});
                t.layer(i, "moe.shared.up.weight", p + "shared_experts.up_proj.weight", {S, H});
                t.layer(i, "moe.shared.down.weight", p + "shared_experts.down_proj.weight", {H, S});
            }
            if (c.importance) t.layer(i, "moe.importance.weight", p + "token_importance.weight", {1, H});
        }
        t.model("norm.final.weight", "model.norm.weight", {H});
        t.lm_head("lm_head.weight", "model.embed_tokens.weight", {c.vocab, H}, c.tied);
        return t;
    }

    Config c_;
    attn::Rope rope_;
    double softmax_scale_ = 1;
    Tensor embed_, inv_freq_, norm_, lm_head_;
    std::vector<Layer> blocks_;
};

const char *const kModelTypes[] = {"deepseek_v3", nullptr};

}  // namespace

MANGO_PLUGIN("deepseek_v3", "1.0.0", "DeepSeek-V3 decoders",
             mango::architecture<DeepseekV3>(
                 "deepseek_v3", "1.0.0",
                 "DeepSeek-V3: multi-head latent attention, sigmoid group-limited top-k with correction bias, shared experts", nullptr,
                 kModelTypes))
