// mango/moe.hpp — mixture-of-experts pieces the MoE architectures share:
// routers (softmax top-k as Mixtral/Qwen/OLMoE, sigmoid group-limited top-k
// as DeepSeek-V3), experts computed with tokens grouped by expert, the
// auxiliary losses, and the checkpoint layouts (per-expert tensors or
// transformers 5's fused [E, 2I, H] / [E, H, I]).
// Reference: transformers' modeling_{mixtral,qwen2_moe,olmoe,deepseek_v3}.py
// and integrations/moe.py (grouped_mm numerics: each slot's output times its
// routing weight in the weight's dtype, summed over the k slots, one cast).
#pragma once

#include "mango/layers.hpp"
#include "mango/tensors.hpp"

#include <cmath>
#include <functional>
#include <string>
#include <vector>

namespace mango::moe {

// Routing of T tokens to k of E experts.
struct Routing {
    Tensor weights;  // [T, k] float32: each chosen expert's weight
    Tensor experts;  // [T, k] int64: the chosen experts
    Tensor logits;   // [T, E] the router's raw scores (hidden dtype; float32 for DeepSeek)
    Tensor probs;    // [T, E] float32: softmax (or sigmoid) scores the choice came from
    Tensor dropped;  // share of slots over capacity (scalar), when capacity applies
};

// softmax(x W^T) over all experts in float32, top-k (largest first),
// renormalised to sum to 1 when `renormalize` (Mixtral always; Qwen and
// OLMoE with norm_topk_prob). The weights stay float32.
inline Routing softmax_topk(const Tensor &x, const Tensor &gate, int64_t k, bool renormalize) {
    Routing r;
    r.logits = ops::linear(x, gate);
    r.probs = ops::softmax(ops::to_dtype(r.logits, MANGO_DTYPE_F32), -1);
    auto [w, idx] = ops::topk(r.probs, k, -1);
    r.weights = renormalize ? ops::div(w, ops::sum(w, {-1}, true)) : w;
    r.experts = idx;
    return r;
}

// DeepSeek-V3: sigmoid scores in float32; choice by the scores plus the
// correction bias, limited to the topk_group groups (of n_group) whose two
// best biased scores sum highest (the others masked with -inf); weights from
// the unbiased scores, renormalised (+1e-20) when `renormalize`, times `scale`.
inline Routing sigmoid_grouped_topk(const Tensor &x, const Tensor &gate, const Tensor &bias, int64_t k, int64_t n_group, int64_t topk_group,
                                    bool renormalize, double scale) {
    Routing r;
    r.logits = ops::linear(ops::to_dtype(x, MANGO_DTYPE_F32), ops::to_dtype(gate, MANGO_DTYPE_F32));
    r.probs = ops::sigmoid(r.logits);
    Tensor choice = bias ? ops::add(r.probs, ops::to_dtype(bias, MANGO_DTYPE_F32)) : r.probs;
    const int64_t T = x.size(0), E = gate.size(0);
    if (n_group > 1 && topk_group < n_group) {
        Tensor grouped = ops::reshape(choice, {T, n_group, E / n_group});
        Tensor group_scores = ops::sum(ops::topk(grouped, 2, -1).first, {-1});  // [T, G]
        Tensor keep = ops::topk(group_scores, topk_group, -1).second;           // [T, topk_group]
        Tensor gmask = ops::scatter(ops::zeros_like(group_scores), 1, keep, ops::ones_like(ops::to_dtype(keep, MANGO_DTYPE_F32)));
        Tensor smask = ops::reshape(ops::expand(ops::unsqueeze(gmask, -1), {T, n_group, E / n_group}), {T, E});
        choice = ops::masked_fill(choice, ops::eq_scalar(smask, 0.0), -INFINITY);
    }
    r.experts = ops::topk(choice, k, -1).second;
    static const Op gather("aten::gather");
    Tensor w = gather({r.probs, int64_t(1), r.experts});
    if (renormalize) w = ops::div(w, ops::add_scalar(ops::sum(w, {-1}, true), 1e-20));
    r.weights = ops::mul(w, scale);
    return r;
}

// act(x gate^T) * (x up^T), then down: a dense SwiGLU-style MLP.
inline Tensor dense_mlp(const Tensor &x, const Tensor &gate, const Tensor &up, const Tensor &down, const std::string &act) {
    if (act == "silu" || act == "swish") return ops::linear(layers::swiglu(x, gate, up), down);
    const std::vector<Tensor> gu = ops::linears(x, {gate, up});
    return ops::linear(layers::gated(act, gu[0], gu[1]), down);
}

// The routed experts of one layer, in either checkpoint layout.
class Experts {
public:
    Experts() = default;
    // transformers 5: gate_up [E, 2I, H] (gate rows first), down [E, H, I].
    static Experts fused(Tensor gate_up, Tensor down) {
        Experts x;
        x.gate_up_ = std::move(gate_up);
        x.down_stack_ = std::move(down);
        x.n_ = x.gate_up_.size(0);
        x.inter_ = x.gate_up_.size(1) / 2;
        return x;
    }
    // Per-expert tensors ([I, H], [I, H], [H, I] each).
    static Experts separate(std::vector<Tensor> gate, std::vector<Tensor> up, std::vector<Tensor> down) {
        Experts x;
        x.gate_ = std::move(gate);
        x.up_ = std::move(up);
        x.down_ = std::move(down);
        x.n_ = int64_t(x.gate_.size());
        x.inter_ = x.gate_.empty() ? 0 : x.gate_[0].size(0);
        return x;
    }
    // Experts held here (all of them unless sharded).
    int64_t count() const { return n_; }

    // Expert parallelism: this rank holds experts [rank * count(), (rank +
    // 1) * count()) of the world's; forward() sends each routed token to the
    // rank holding its expert and gets the expert's output back (all_to_all).
    void shard(Context::Shard s) { shard_ = s; }

    // out[t] = sum_k w[t, k] * mlp_{e[t, k]}(x[t]) for x [T, H]. Tokens are
    // grouped by expert (one matmul chain per expert that got tokens). With
    // `small` set (a few tokens: decoding) the experts' weights are gathered
    // per slot instead, so nothing waits for the device. On CUDA bf16, where
    // the LibTorch has aten::_grouped_mm, one grouped GEMM per projection
    // (no host sync). Outside training, per-expert weights are stacked once
    // and the stack is kept; a training forward drops it (the optimiser is
    // about to change the weights), so weights must only change in training.
    Tensor forward(const Tensor &x, const Routing &r, const std::string &act, bool small, bool training = false) const {
        const int64_t T = x.size(0), K = r.experts.size(1);
        if (training) cache_gate_up_ = cache_down_ = Tensor();
        Tensor y = shard_.world > 1 ? exchanged(x, r, act, small, training) : slots(x, r, act, small, training);  // [T*K, H]
        Tensor weighted = ops::mul(y, ops::reshape(r.weights, {T * K, 1}));
        return ops::to_dtype(ops::sum(ops::reshape(weighted, {T, K, x.size(1)}), {1}), x.dtype());
    }

private:
    // Each slot's expert output [T*K, H], slot order, experts held here.
    Tensor slots(const Tensor &x, const Routing &r, const std::string &act, bool small, bool training) const {
        const bool stackable = gate_up_ || !training;  // the stacked layout exists, or may be cached
        const bool grouped_mm = stackable && x.device().type == MANGO_DEVICE_CUDA && x.dtype() == MANGO_DTYPE_BF16 && has_grouped_mm();
        return grouped_mm ? grouped_gemm(x, r, act) : small && stackable ? gathered(x, r, act) : grouped(x, r, act);
    }

    // Expert parallelism: slots sorted by the rank holding their expert, the
    // tokens and expert ids sent there, computed, and the outputs sent back.
    Tensor exchanged(const Tensor &x, const Routing &r, const std::string &act, bool small, bool training) const {
        const int64_t K = r.experts.size(1), W = shard_.world;
        static const Op sort("aten::sort", "stable"), bincount("aten::bincount"), floor_divide("aten::floor_divide", "Scalar"),
            sub("aten::sub", "Scalar");
        Tensor flat = ops::reshape(r.experts, {-1});
        Tensor owner = floor_divide({flat, n_});
        Results sorted;
        sort.call({owner, true, int64_t(0), false}, sorted);
        Tensor order = sorted.tensor(1);  // slots grouped by destination rank
        Tensor counts = bincount({owner, nullptr, W});
        const std::vector<int64_t> ones(size_t(W), 1), send = counts.to_host<int64_t>();
        const std::vector<int64_t> recv = all_to_all(ops::reshape(counts, {W, 1}), ones, ones).to_host<int64_t>();
        Tensor rows = all_to_all(ops::index_select(x, 0, floor_divide({order, K})), send, recv);
        Tensor ids = all_to_all(ops::reshape(ops::index_select(flat, 0, order), {-1, 1}), send, recv);
        Routing here;  // one slot per received row, experts numbered from this rank's first
        here.experts = sub({ids, int64_t(shard_.rank) * n_});
        int64_t received = 0;
        for (int64_t n : recv) received += n;
        // Nothing came: still pass a tensor that needs a gradient back, so every rank takes part in the backward exchange.
        Tensor y = received > 0 ? slots(rows, here, act, small, training) : ops::mul(rows, 0.0);
        Tensor back = all_to_all(ops::to_dtype(y, x.dtype()), recv, send);
        return ops::index_select(back, 0, ops::argsort(order, 0, false));
    }

    Tensor gate(int64_t e) const { return gate_up_ ? ops::narrow(ops::select(gate_up_, 0, e), 0, 0, inter_) : gate_[size_t(e)]; }
    Tensor up(int64_t e) const { return gate_up_ ? ops::narrow(ops::select(gate_up_, 0, e), 0, inter_, inter_) : up_[size_t(e)]; }
    Tensor down(int64_t e) const { return down_stack_ ? ops::select(down_stack_, 0, e) : down_[size_t(e)]; }

    Tensor grouped(const Tensor &x, const Routing &r, const std::string &act) const {
        const int64_t K = r.experts.size(1);
        Tensor flat = ops::reshape(r.experts, {-1});
        static const Op sort("aten::sort", "stable");
        Results sorted;
        sort.call({flat, true, int64_t(0), false}, sorted);
        Tensor order = sorted.tensor(1);  // slots, grouped by expert
        static const Op bincount("aten::bincount");
        const std::vector<int64_t> counts = bincount({flat, nullptr, n_}).to_host<int64_t>();
        static const Op floor_divide("aten::floor_divide", "Scalar");
        Tensor rows = ops::index_select(x, 0, floor_divide({order, int64_t(K)}));  // each slot's token
        std::vector<Tensor> parts;
        int64_t at = 0;
        for (int64_t e = 0; e < n_; ++e) {
            const int64_t c = counts[size_t(e)];
            if (c == 0) continue;
            parts.push_back(dense_mlp(ops::narrow(rows, 0, at, c), gate(e), up(e), down(e), act));
            at += c;
        }
        Tensor ys = ops::cat(parts, 0);
        return ops::index_select(ys, 0, ops::argsort(order, 0, false));  // back to slot order
    }

    static bool has_grouped_mm() {
        static const bool yes = [] {
            const mango_op *op = nullptr;
            return host().find_op("aten::_grouped_mm", "", &op) == MANGO_OK;
        }();
        return yes;
    }

    // Slots sorted by expert, two aten::_grouped_mm calls with the experts'
    // offsets computed on the device.
    Tensor grouped_gemm(const Tensor &x, const Routing &r, const std::string &act) const {
        const int64_t K = r.experts.size(1);
        Tensor flat = ops::reshape(r.experts, {-1});
        static const Op sort("aten::sort", "stable"), bincount("aten::bincount"), cumsum("aten::cumsum"),
            floor_divide("aten::floor_divide", "Scalar"), grouped_mm("aten::_grouped_mm");
        Results sorted;
        sort.call({flat, true, int64_t(0), false}, sorted);
        Tensor order = sorted.tensor(1);
        Tensor offs = ops::to_dtype(cumsum({bincount({flat, nullptr, n_}), int64_t(0)}), MANGO_DTYPE_I32);
        Tensor rows = ops::index_select(x, 0, floor_divide({order, int64_t(K)}));
        Tensor h = grouped_mm({rows, ops::transpose(stacked_gate_up(), 1, 2), offs});  // [TK, 2I]
        h = layers::gated(act, ops::narrow(h, -1, 0, inter_), ops::narrow(h, -1, inter_, inter_));
        Tensor ys = grouped_mm({h, ops::transpose(stacked_down(), 1, 2), offs});  // [TK, H]
        return ops::index_select(ys, 0, ops::argsort(order, 0, false));
    }

    Tensor gathered(const Tensor &x, const Routing &r, const std::string &act) const {
        const int64_t T = x.size(0), K = r.experts.size(1), H = x.size(1);
        Tensor flat = ops::reshape(r.experts, {-1});
        Tensor gu = ops::index_select(stacked_gate_up(), 0, flat);                                              // [TK, 2I, H]
        Tensor dn = ops::index_select(stacked_down(), 0, flat);                                                 // [TK, H, I]
        Tensor xs = ops::unsqueeze(ops::reshape(ops::expand(ops::unsqueeze(x, 1), {T, K, H}), {T * K, H}), 1);  // [TK, 1, H]
        static const Op bmm("aten::bmm");
        Tensor h = bmm({xs, ops::transpose(gu, 1, 2)});  // [TK, 1, 2I]
        Tensor g = ops::narrow(h, -1, 0, inter_), u = ops::narrow(h, -1, inter_, inter_);
        Tensor o = bmm({layers::gated(act, g, u), ops::transpose(dn, 1, 2)});  // [TK, 1, H]
        return ops::reshape(o, {T * K, H});
    }

    // The per-expert layout stacked once for gathering (inference only).
    const Tensor &stacked_gate_up() const {
        if (gate_up_) return gate_up_;
        if (!cache_gate_up_) {
            std::vector<Tensor> both;
            for (int64_t e = 0; e < n_; ++e) both.push_back(ops::cat({gate_[size_t(e)], up_[size_t(e)]}, 0));
            NoGrad g;
            cache_gate_up_ = ops::stack(both, 0);
        }
        return cache_gate_up_;
    }
    const Tensor &stacked_down() const {
        if (down_stack_) return down_stack_;
        if (!cache_down_) {
            NoGrad g;
            cache_down_ = ops::stack(down_, 0);
        }
        return cache_down_;
    }

    Tensor gate_up_, down_stack_;
    std::vector<Tensor> gate_, up_, down_;
    mutable Tensor cache_gate_up_, cache_down_;
    int64_t n_ = 0, inter_ = 0;
    Context::Shard shard_;
};

// The experts of layer {L} in whichever layout the checkpoint has: fused
// ("<prefix>experts.gate_up_proj" / ".down_proj") or per expert
// ("<prefix>experts.<e>.<gate>.weight" ...). `names` gives the per-expert
// projection names (gate_proj/up_proj/down_proj, or Mixtral's w1/w3/w2).
struct ExpertNames {
    std::string gate = "gate_proj", up = "up_proj", down = "down_proj";
};
inline void add_experts(TensorTable &t, int32_t layer, const std::string &prefix, bool fused, int64_t E, int64_t I, int64_t H,
                        const ExpertNames &n = {}) {
    if (fused) {
        t.layer(layer, "moe.experts.gate_up.weight", prefix + "experts.gate_up_proj", {E, 2 * I, H});
        t.layer(layer, "moe.experts.down.weight", prefix + "experts.down_proj", {E, H, I});
        return;
    }
    for (int64_t e = 0; e < E; ++e) {
        const std::string p = prefix + "experts." + std::to_string(e) + ".";
        t.layer(layer, "moe.experts." + std::to_string(e) + ".gate.weight", p + n.gate + ".weight", {I, H});
        t.layer(layer, "moe.experts." + std::to_string(e) + ".up.weight", p + n.up + ".weight", {I, H});
        t.layer(layer, "moe.experts." + std::to_string(e) + ".down.weight", p + n.down + ".weight", {H, I});
    }
}
// Expert parallelism: `shard` holds E / world experts from rank * E / world
// (E must divide by the ranks, refused by name otherwise).
inline void check_shard(Context::Shard shard, int64_t E) {
    if (shard.world > 1 && E % shard.world)
        throw Error(MANGO_ERR_INVALID_ARGUMENT, std::to_string(E) + " experts do not split over " + std::to_string(shard.world) +
                                                    " ranks (expert parallelism needs a multiple of the number of processes)");
}
// For TensorTable::load: skips the per-expert tensors ("moe.experts.<e>.*")
// of experts another rank holds.
inline std::function<bool(const TensorSpec &)> other_ranks_experts(Context::Shard shard, int64_t E) {
    if (shard.world <= 1) return {};
    const int64_t per = E / shard.world, first = shard.rank * per;
    return [per, first](const TensorSpec &t) {
        const std::string prefix = "moe.experts.";
        if (t.role.compare(0, prefix.size(), prefix) != 0) return false;
        const size_t end = t.role.find('.', prefix.size());
        const std::string id = t.role.substr(prefix.size(), end - prefix.size());
        if (id.empty() || id.find_first_not_of("0123456789") != std::string::npos) return false;  // fused: "gate_up"
        const int64_t e = std::stoll(id);
        return e < first || e >= first + per;
    };
}
inline Experts load_experts(const Weights &w, int32_t layer, bool fused, int64_t E, Context::Shard shard = {}) {
    check_shard(shard, E);
    const int64_t per = E / shard.world, first = shard.rank * per;
    Experts x;
    if (fused) {
        Tensor gate_up = w.at(layer, "moe.experts.gate_up.weight"), down = w.at(layer, "moe.experts.down.weight");
        if (shard.world > 1) {  // this rank's rows: a view, as the host keeps the whole stack it read (no memory saved yet)
            gate_up = ops::narrow(gate_up, 0, first, per);
            down = ops::narrow(down, 0, first, per);
        }
        x = Experts::fused(gate_up, down);
    } else {
        std::vector<Tensor> g, u, d;
        for (int64_t e = first; e < first + per; ++e) {
            const std::string p = "moe.experts." + std::to_string(e) + ".";
            g.push_back(w.at(layer, p + "gate.weight"));
            u.push_back(w.at(layer, p + "up.weight"));
            d.push_back(w.at(layer, p + "down.weight"));
        }
        x = Experts::separate(std::move(g), std::move(u), std::move(d));
    }
    x.shard(shard);
    return x;
}

// transformers' load_balancing_loss_func for one layer: E * sum_{k,e} f[k,e]
// p[e], f the share of tokens whose k-th choice is e, p the mean probability
// of e, both over real tokens (`keep` [T] float, 1 = token; empty = all).
inline Tensor load_balancing_loss(const Routing &r, const Tensor &keep, int64_t E) {
    const int64_t T = r.probs.size(0), K = r.experts.size(1);
    static const Op one_hot("aten::one_hot");
    Tensor M = ops::to_dtype(one_hot({r.experts, E}), MANGO_DTYPE_F32);  // [T, K, E]
    Tensor f, p;
    if (keep) {
        Tensor k3 = ops::reshape(keep, {T, 1, 1}), k2 = ops::reshape(keep, {T, 1});
        const double n = std::max(1.0, ops::item(ops::sum_all(keep)));
        f = ops::div_scalar(ops::sum(ops::mul(M, k3), {0}), n);
        p = ops::div_scalar(ops::sum(ops::mul(r.probs, k2), {0}), n);
    } else {
        f = ops::mean(M, {0});
        p = ops::mean(r.probs, {0});
    }
    (void)K;
    return ops::mul(ops::sum_all(ops::mul(f, ops::unsqueeze(p, 0))), double(E));
}

// Router z-loss (ST-MoE): mean over real tokens of logsumexp(logits)^2.
inline Tensor router_z_loss(const Routing &r, const Tensor &keep) {
    static const Op logsumexp("aten::logsumexp");
    Tensor z = ops::pow(logsumexp({ops::to_dtype(r.logits, MANGO_DTYPE_F32), std::vector<int64_t>{-1}, false}), 2.0);  // [T]
    if (!keep) return ops::mean_all(z);
    return ops::div_scalar(ops::sum_all(ops::mul(z, keep)), std::max(1.0, ops::item(ops::sum_all(keep))));
}

// Share of routed slots each expert got [E], over real tokens.
inline Tensor expert_share(const Routing &r, const Tensor &keep, int64_t E) {
    static const Op one_hot("aten::one_hot");
    Tensor M = ops::sum(ops::to_dtype(one_hot({r.experts, E}), MANGO_DTYPE_F32), {1});  // [T, E]
    if (keep) M = ops::mul(M, ops::unsqueeze(keep, 1));
    Tensor total = ops::sum(M, {0});
    return ops::div_scalar(total, std::max(1e-9, ops::item(ops::sum_all(total))));
}

// One sparse feed-forward layer: router, routed experts, optional shared
// expert(s), and what it reports in training and evaluation.
struct SparseMlp {
    enum class Scoring { softmax, sigmoid };
    // Configuration
    int64_t n_experts = 0, top_k = 0;
    bool renormalize = false;
    Scoring scoring = Scoring::softmax;
    int64_t n_group = 1, topk_group = 1;  // sigmoid scoring: group-limited choice
    double scale = 1.0;                   // routed_scaling_factor
    double jitter = 0;                    // Mixtral's router_jitter_noise (training only)
    std::string act = "silu";
    int64_t small_batch = 64;  // up to this many routed slots: gather weights, no host sync
    // Weights
    Tensor router, bias;  // [E, H]; DeepSeek's e_score_correction_bias [E]
    Experts experts;
    Tensor shared_gate, shared_up, shared_down;  // shared expert(s) (empty = none)
    Tensor shared_expert_gate;                   // Qwen2-MoE's sigmoid gate [1, H] (empty = unweighted)

    // Training-time features (config.json keys; formulas in configs/README.md).
    struct Training {
        double capacity_factor = 0;                  // expert_capacity_factor (0 = no capacity)
        int64_t min_capacity = 4, max_capacity = 0;  // min/max_expert_capacity (0 = no maximum)
        bool null_expert = false;                    // use_null_expert: overflow keeps its weight, output 0
        int64_t warmup_steps = 0;                    // moe_warmup_steps: dense path faded out
        int64_t reset_every = 0;                     // router_reset_step
        double bias_rate = 0;                        // bias_update_rate (noaux_tc correction bias)
        bool token_importance = false;               // learned_token_importance
        bool any() const { return capacity_factor > 0 || warmup_steps > 0 || reset_every > 0 || bias_rate > 0 || token_importance; }
    } training;
    Tensor importance;   // [1, H] learned_token_importance
    Tensor step, usage;  // buffers: training forwards so far [1]; running expert share [E]

    // Reads the training keys of config.json (the same for every MoE family).
    void read_training(Context &ctx, int64_t hidden) {
        training.capacity_factor = ctx.config_double("expert_capacity_factor", 0);
        training.min_capacity = ctx.config_int("min_expert_capacity", 4);
        training.max_capacity = ctx.config_int("max_expert_capacity", 0);
        training.null_expert = ctx.config_bool("use_null_expert", false);
        training.warmup_steps = ctx.config_int("moe_warmup_steps", 0);
        training.reset_every = ctx.config_int("router_reset_step", 0);
        training.bias_rate = ctx.config_double("bias_update_rate", 0);
        training.token_importance = ctx.config_bool("learned_token_importance", false);
        if (training.capacity_factor < 0) throw Error(MANGO_ERR_INVALID_ARGUMENT, "expert_capacity_factor must be >= 0");
        if (training.capacity_factor > 0 && (training.min_capacity < 1 || (training.max_capacity != 0 && training.max_capacity < 1)))
            throw Error(MANGO_ERR_INVALID_ARGUMENT, "expert capacity must be at least 1 token (min_expert_capacity " +
                                                        std::to_string(training.min_capacity) + ", max_expert_capacity " +
                                                        std::to_string(training.max_capacity) + ")");
        if (training.bias_rate > 0 && !bias)
            throw Error(MANGO_ERR_INVALID_ARGUMENT, "bias_update_rate needs a router correction bias (sigmoid scoring)");
        (void)hidden;
    }
    // Buffers the features keep (after the weights are loaded).
    void make_buffers(Context &ctx, const std::string &prefix) {
        if (!training.any()) return;
        step = ctx.buffer(prefix + "moe_step", ops::zeros({1}));
        usage = ctx.buffer(prefix + "moe_usage", ops::full({n_experts}, 1.0 / double(n_experts)));
    }

    // x [B, T, H]; mask [B, S] over cached + new tokens (1 token, 0 pad).
    // `moe_layers` divides the reported balance loss (its mean over layers).
    Tensor forward(Context &ctx, const Tensor &x_in, const Tensor &mask, int64_t moe_layers) const {
        const int64_t B = x_in.size(0), T = x_in.size(1), H = x_in.size(2);
        Tensor x = ops::reshape(x_in, {B * T, H});
        if (jitter > 0 && ctx.training())  // multiplicative uniform noise on what router and experts see
            x = ops::mul(x, ops::to_dtype(ops::add_scalar(ops::mul(ctx.random_like(x), 2 * jitter), 1 - jitter), x.dtype()));
        Routing r = scoring == Scoring::softmax ? softmax_topk(x, router, top_k, renormalize)
                                                : sigmoid_grouped_topk(x, router, bias, top_k, n_group, topk_group, renormalize, scale);
        Tensor gain;  // learned token importance: [T] multiplier of the routed output
        if (importance) gain = ops::mul(ops::sigmoid(ops::linear(x, importance)), 2.0);
        if (training.capacity_factor > 0 && ctx.training()) apply_capacity(r, gain, B * T);
        const bool small = !ctx.training() && B * T * top_k <= small_batch;
        Tensor y = experts.forward(x, r, act, small, ctx.training());
        if (gain) y = ops::mul(y, ops::to_dtype(gain, y.dtype()));
        if (training.warmup_steps > 0 && ctx.training()) {
            const double done = ops::item(step), alpha = std::max(0.0, 1.0 - done / double(training.warmup_steps));
            if (alpha > 0) y = ops::add(ops::mul(y, 1 - alpha), ops::mul(dense_average(x), alpha));
        }
        if (shared_gate) {
            Tensor s = dense_mlp(x, shared_gate, shared_up, shared_down, act);
            if (shared_expert_gate) s = ops::mul(ops::sigmoid(ops::linear(x, shared_expert_gate)), s);
            y = ops::add(y, s);
        }
        if (ctx.reporting()) report(ctx, r, mask, B, T, moe_layers);
        if (training.any() && ctx.training()) after_step(ctx, r, mask, B, T);
        return ops::reshape(y, {B, T, H});
    }

    // Capacity C = clamp(ceil(factor * T * k / E), min, max) slots per expert;
    // an expert keeps its C slots of highest priority (routing weight, times
    // the token importance when learned); the other slots overflow: dropped
    // (the token's remaining slots renormalised; with none left the token
    // takes the residual path alone) or, with use_null_expert, sent to a
    // null expert (weight kept, output zero).
    void apply_capacity(Routing &r, const Tensor &gain, int64_t tokens) const {
        const int64_t K = r.experts.size(1);
        int64_t C = int64_t(std::ceil(training.capacity_factor * double(tokens * K) / double(n_experts)));
        C = std::max(C, training.min_capacity);
        if (training.max_capacity > 0) C = std::min(C, training.max_capacity);
        Tensor priority = ops::detach(r.weights);
        if (gain) priority = ops::mul(priority, ops::unsqueeze(ops::detach(gain), -1));
        Tensor flat_e = ops::reshape(r.experts, {-1}), flat_p = ops::reshape(priority, {-1});
        // Rank of each slot within its expert by priority: sort by (expert, -priority).
        static const Op sort("aten::sort", "stable");
        Results by_priority;
        sort.call({flat_p, true, int64_t(0), true}, by_priority);
        Tensor order = by_priority.tensor(1);
        Results by_expert;
        sort.call({ops::index_select(flat_e, 0, order), true, int64_t(0), false}, by_expert);
        Tensor slots = ops::index_select(order, 0, by_expert.tensor(1));  // grouped by expert, best first
        Tensor sorted_e = ops::index_select(flat_e, 0, slots);
        static const Op bincount("aten::bincount");
        Tensor counts = bincount({flat_e, nullptr, n_experts});
        static const Op cumsum("aten::cumsum");
        Tensor starts = ops::sub(cumsum({counts, int64_t(0)}), counts);  // first position of each expert
        Tensor rank = ops::sub(ops::arange(flat_e.numel(), MANGO_DTYPE_I64, flat_e.device()), ops::index_select(starts, 0, sorted_e));
        Tensor keep_sorted = ops::lt_scalar(rank, double(C));
        Tensor keep =
            ops::scatter(ops::zeros_like(ops::to_dtype(flat_e, MANGO_DTYPE_F32)), 0, slots, ops::to_dtype(keep_sorted, MANGO_DTYPE_F32));
        keep = ops::reshape(keep, r.weights.sizes());
        r.dropped = ops::rsub_scalar(ops::mean_all(keep), 1.0);
        Tensor w = ops::mul(r.weights, keep);
        if (!training.null_expert && renormalize) w = ops::div(w, ops::clamp_min(ops::sum(w, {-1}, true), 1e-20));
        r.weights = w;
    }

    // Every expert applied to every token with equal weights: the dense
    // path moe_warmup_steps fades out.
    Tensor dense_average(const Tensor &x) const {
        const int64_t T = x.size(0);
        Routing all;
        std::vector<int64_t> ids(static_cast<size_t>(n_experts), 0);
        for (int64_t e = 0; e < n_experts; ++e) ids[size_t(e)] = e;
        mango_tensor h = nullptr;
        const int64_t shape[1] = {n_experts};
        check(host().tensor_from_data(ids.data(), MANGO_DTYPE_I64, shape, 1, x.device(), &h));
        all.experts = ops::contiguous(ops::expand(ops::unsqueeze(Tensor(h), 0), {T, n_experts}));
        all.weights = ops::full({T, n_experts}, 1.0 / double(n_experts), MANGO_DTYPE_F32, x.device());
        return experts.forward(x, all, act, false, true);
    }

    // After a training forward: count it; move the correction bias toward
    // balance (bias += rate * sign(mean share - share)); keep a running share
    // and re-draw the router rows of experts that collapsed (share below
    // 1 / (10 E)) every router_reset_step forwards.
    void after_step(Context &ctx, const Routing &r, const Tensor &mask, int64_t B, int64_t T) const {
        NoGrad no_grad;
        Tensor keep;
        if (mask) keep = ops::to_dtype(ops::reshape(ops::narrow(mask, 1, mask.size(1) - T, T), {B * T}), MANGO_DTYPE_F32);
        Tensor share = expert_share(r, keep, n_experts);
        static const Op add_("aten::add_", "Tensor"), copy_("aten::copy_");
        add_({step, ops::ones_like(step)});
        copy_({usage, ops::add(ops::mul(usage, 0.9), ops::mul(share, 0.1))});
        if (training.bias_rate > 0) {
            Tensor delta = ops::mul(ops::sign(ops::sub(ops::full_like(share, 1.0 / double(n_experts)), share)), training.bias_rate);
            add_({bias, ops::to_dtype(delta, bias.dtype())});
        }
        if (training.reset_every > 0 && int64_t(ops::item(step)) % training.reset_every == 0) {
            Tensor collapsed = ops::lt_scalar(usage, 0.1 / double(n_experts));  // [E]
            if (ops::item(ops::sum_all(ops::to_dtype(collapsed, MANGO_DTYPE_F32))) > 0) {
                const double sd = std::sqrt(ops::item(ops::variance(ops::flatten(router), {0}, false)));
                Tensor fresh =
                    ops::mul(ops::to_dtype(ops::sub(ops::mul(ctx.random_like(router), 2.0), ops::ones_like(router)), router.dtype()),
                             sd * std::sqrt(3.0));
                copy_({router, ops::where(ops::unsqueeze(collapsed, -1), fresh, router)});
                copy_({usage, ops::where(collapsed, ops::full_like(usage, 1.0 / double(n_experts)), usage)});
            }
        }
    }

    void report(Context &ctx, const Routing &r, const Tensor &mask, int64_t B, int64_t T, int64_t moe_layers) const {
        Tensor keep;
        if (mask) keep = ops::to_dtype(ops::reshape(ops::narrow(mask, 1, mask.size(1) - T, T), {B * T}), MANGO_DTYPE_F32);
        ctx.report_loss("load_balance", ops::div_scalar(load_balancing_loss(r, keep, n_experts), double(std::max<int64_t>(1, moe_layers))));
        ctx.report_loss("router_z", ops::div_scalar(router_z_loss(r, keep), double(std::max<int64_t>(1, moe_layers))));
        Tensor share = expert_share(r, keep, n_experts);
        ctx.report_stat("expert_share", share);
        if (r.dropped) ctx.report_stat("capacity_dropped", r.dropped);
        // Imbalance: coefficient of variation and max / mean of the shares.
        Tensor mean = ops::mean_all(share);
        ctx.report_stat("load_cv", ops::div(ops::sqrt(ops::mean_all(ops::pow(ops::sub(share, mean), 2.0))), mean));
        ctx.report_stat("load_max_over_mean", ops::div(ops::max_all(share), mean));
        Tensor p = r.probs;
        if (scoring == Scoring::sigmoid) p = ops::div(p, ops::sum(p, {-1}, true));
        ctx.report_stat("router_entropy", ops::mean_all(ops::mul(ops::sum(ops::mul(p, ops::log(ops::clamp_min(p, 1e-9))), {-1}), -1.0)));
    }
};

}  // namespace mango::moe
