// mango/plain_moe.hpp — the Mango MoE format, for decoders whose FFN is a
// plain MLP with biases (GPT-2, GPT-J, GPT-Neo), which no transformers MoE
// family expresses. `mango convert-moe` writes it: the source's config.json
// and tensors as they were, plus
//
//   "mango_moe": {"num_experts": E, "num_experts_per_tok": k,
//                 "expert_intermediate_size": F, "layers": [1, 3, ...],
//                 "norm_topk_prob": true}
//
// and, in each listed layer, instead of the dense MLP: a router
// PREFIX.gate.weight [E, H] and per expert e the MLP's own tensors under
// PREFIX.experts.e.* (same layout as the dense ones: Conv1D [in, out] for
// GPT-2, Linear [out, in] otherwise). Routing is Mixtral's: softmax over all
// experts in float32, top-k, renormalised when norm_topk_prob; each chosen
// expert's output (biases included) times its weight, summed.
// An architecture supports it with PlainMoe::from_config, add_tensors,
// load and forward; nothing else in the host changes.
#pragma once

#include "mango/moe.hpp"

#include <algorithm>
#include <string>
#include <vector>

namespace mango::moe {

struct PlainMoe {
    int64_t experts = 0, top_k = 0, inter = 0;
    bool renormalize = true;
    std::vector<bool> sparse;  // per layer

    // The "mango_moe" key of config.json (absent: no layer is sparse).
    static PlainMoe from_config(Context &ctx, int64_t n_layers) {
        PlainMoe m;
        m.sparse.assign(size_t(std::max<int64_t>(0, n_layers)), false);
        if (!ctx.config("mango_moe.num_experts")) return m;  // (an object has no ABI value: ask for a key inside)
        m.experts = ctx.config_int("mango_moe.num_experts", 0);
        m.top_k = ctx.config_int("mango_moe.num_experts_per_tok", 0);
        m.inter = ctx.config_int("mango_moe.expert_intermediate_size", 0);
        m.renormalize = ctx.config_bool("mango_moe.norm_topk_prob", true);
        if (m.experts < 2 || m.top_k < 1 || m.top_k > m.experts || m.inter < 1)
            throw Error(MANGO_ERR_INVALID_ARGUMENT,
                        "mango_moe needs num_experts >= 2, 1 <= num_experts_per_tok <= num_experts and "
                        "expert_intermediate_size >= 1");
        for (int i = 0;; ++i) {
            const std::string key = "mango_moe.layers." + std::to_string(i);
            if (!ctx.config(key.c_str())) break;
            const int64_t l = ctx.config_int(key.c_str(), -1);
            if (l < 0 || l >= n_layers)
                throw Error(MANGO_ERR_INVALID_ARGUMENT,
                            "mango_moe.layers lists layer " + std::to_string(l) + "; the model has " + std::to_string(n_layers));
            m.sparse[size_t(l)] = true;
        }
        return m;
    }
    bool is_sparse(int32_t layer) const { return layer >= 0 && size_t(layer) < sparse.size() && sparse[size_t(layer)]; }

    // Declares a sparse layer's tensors. `up`/`down` are the dense MLP's
    // tensor names relative to `prefix` (e.g. "c_fc", "c_proj"); `transposed`:
    // stored [in, out] (GPT-2's Conv1D; roles get ".T").
    void add_tensors(TensorTable &t, int32_t layer, const std::string &prefix, const std::string &up, const std::string &down,
                     bool transposed, int64_t hidden) const {
        const std::string T = transposed ? ".T" : "";
        t.layer(layer, "moe.router.weight", prefix + "gate.weight", {experts, hidden});
        for (int64_t e = 0; e < experts; ++e) {
            const std::string p = prefix + "experts." + std::to_string(e) + ".", r = "moe.experts." + std::to_string(e) + ".";
            t.layer(layer, r + "up.weight" + T, p + up + ".weight",
                    transposed ? std::vector<int64_t>{hidden, inter} : std::vector<int64_t>{inter, hidden});
            t.layer(layer, r + "up.bias", p + up + ".bias", {inter});
            t.layer(layer, r + "down.weight" + T, p + down + ".weight",
                    transposed ? std::vector<int64_t>{inter, hidden} : std::vector<int64_t>{hidden, inter});
            t.layer(layer, r + "down.bias", p + down + ".bias", {hidden});
        }
    }

    // The MLP tensors of every layer: the dense ones (roles mlp.up/down
    // .weight[.T] and .bias) in dense layers, the experts in sparse ones.
    // `prefix` names a layer's MLP with "{L}" for the index
    // ("transformer.h.{L}.mlp."); `up`/`down` its two projections.
    void add_mlp_tensors(TensorTable &t, int64_t n_layers, const std::string &prefix, const std::string &up, const std::string &down,
                         bool transposed, int64_t hidden, int64_t inner) const {
        const std::string T = transposed ? ".T" : "";
        const std::vector<int64_t> up_shape = transposed ? std::vector<int64_t>{hidden, inner} : std::vector<int64_t>{inner, hidden};
        const std::vector<int64_t> down_shape = transposed ? std::vector<int64_t>{inner, hidden} : std::vector<int64_t>{hidden, inner};
        const struct {
            std::string role, name;
            std::vector<int64_t> shape;
        } dense[] = {{"mlp.up.weight" + T, up + ".weight", up_shape},
                     {"mlp.up.bias", up + ".bias", {inner}},
                     {"mlp.down.weight" + T, down + ".weight", down_shape},
                     {"mlp.down.bias", down + ".bias", {hidden}}};
        for (const auto &d : dense)
            for (int32_t i = 0; i < n_layers; ++i)
                if (!is_sparse(i)) t.layer(i, d.role, prefix + d.name, d.shape);
        for (int32_t i = 0; i < n_layers; ++i)
            if (is_sparse(i)) add_tensors(t, i, prefix, up, down, transposed, hidden);
    }

    // One sparse layer's weights, linear layout.
    struct Layer {
        Tensor router;
        std::vector<Tensor> up, up_bias, down, down_bias;
    };
    Layer load(const Weights &w, int32_t layer, bool transposed) const {
        auto linear = [&](const Tensor &t) { return transposed ? ops::contiguous(ops::transpose(t, 0, 1)) : t; };
        const std::string T = transposed ? ".T" : "";
        Layer x;
        x.router = w.at(layer, "moe.router.weight");
        for (int64_t e = 0; e < experts; ++e) {
            const std::string r = "moe.experts." + std::to_string(e) + ".";
            x.up.push_back(linear(w.at(layer, r + "up.weight" + T)));
            x.up_bias.push_back(w.at(layer, r + "up.bias"));
            x.down.push_back(linear(w.at(layer, r + "down.weight" + T)));
            x.down_bias.push_back(w.at(layer, r + "down.bias"));
        }
        return x;
    }

    // One layer's MLP, dense or sparse, linear layout.
    struct Mlp {
        Tensor up, up_bias, down, down_bias;  // dense layers
        Layer experts;                        // sparse layers
    };
    Mlp load_mlp(const Weights &w, int32_t layer, bool transposed) const {
        Mlp m;
        if (is_sparse(layer)) {
            m.experts = load(w, layer, transposed);
            return m;
        }
        const std::string T = transposed ? ".T" : "";
        auto linear = [&](const Tensor &t) { return transposed ? ops::contiguous(ops::transpose(t, 0, 1)) : t; };
        m.up = linear(w.at(layer, "mlp.up.weight" + T));
        m.up_bias = w.at(layer, "mlp.up.bias");
        m.down = linear(w.at(layer, "mlp.down.weight" + T));
        m.down_bias = w.at(layer, "mlp.down.bias");
        return m;
    }
    // down(act(up x + b) ) + b, or the experts in a sparse layer.
    Tensor mlp(Context &ctx, int32_t layer, const Mlp &m, const Tensor &x, const Tensor &mask, const std::string &act) const {
        if (is_sparse(layer)) return forward(ctx, m.experts, x, mask, act);
        return ops::linear(layers::activation(act, ops::linear(x, m.up, m.up_bias)), m.down, m.down_bias);
    }

    // x [B, T, H] -> [B, T, H]; `mask` [B, S] (for the reported balance loss,
    // averaged over the sparse layers).
    Tensor forward(Context &ctx, const Layer &l, const Tensor &x_in, const Tensor &mask, const std::string &act) const {
        const int64_t B = x_in.size(0), T = x_in.size(1), H = x_in.size(2), K = top_k;
        Tensor x = ops::reshape(x_in, {B * T, H});
        const Routing r = softmax_topk(x, l.router, K, renormalize);
        Tensor flat = ops::reshape(r.experts, {-1});
        static const Op sort("aten::sort", "stable"), bincount("aten::bincount"), floor_divide("aten::floor_divide", "Scalar");
        Results sorted;
        sort.call({flat, true, int64_t(0), false}, sorted);
        Tensor order = sorted.tensor(1);  // slots grouped by expert
        const std::vector<int64_t> counts = bincount({flat, nullptr, experts}).to_host<int64_t>();
        Tensor rows = ops::index_select(x, 0, floor_divide({order, K}));
        std::vector<Tensor> parts;
        int64_t at = 0;
        for (int64_t e = 0; e < experts; ++e) {
            const int64_t c = counts[size_t(e)];
            if (c == 0) continue;
            Tensor h = layers::activation(act, ops::linear(ops::narrow(rows, 0, at, c), l.up[size_t(e)], l.up_bias[size_t(e)]));
            parts.push_back(ops::linear(h, l.down[size_t(e)], l.down_bias[size_t(e)]));
            at += c;
        }
        Tensor y = ops::index_select(ops::cat(parts, 0), 0, ops::argsort(order, 0, false));  // back to slot order
        Tensor weighted = ops::mul(ops::to_dtype(y, MANGO_DTYPE_F32), ops::reshape(r.weights, {B * T * K, 1}));
        Tensor out = ops::to_dtype(ops::sum(ops::reshape(weighted, {B * T, K, H}), {1}), x_in.dtype());
        if (ctx.reporting()) {
            Tensor keep;
            if (mask) keep = ops::to_dtype(ops::reshape(ops::narrow(mask, 1, mask.size(1) - T, T), {B * T}), MANGO_DTYPE_F32);
            const int64_t n = std::max<int64_t>(1, std::count(sparse.begin(), sparse.end(), true));
            ctx.report_loss("load_balance", ops::div_scalar(load_balancing_loss(r, keep, experts), double(n)));
            ctx.report_stat("expert_share", expert_share(r, keep, experts));
        }
        return ops::reshape(out, {B, T, H});
    }
};

}  // namespace mango::moe
