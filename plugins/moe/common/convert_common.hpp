// Shared by the MoE converter plugins (header-only): router initialisation
// (zero, random, from data by k-means on the layer's inputs, or from given
// per-expert directions) and emitting experts.
#pragma once

#include <mango/component.hpp>
#include <mango/ops.hpp>

#include <cmath>
#include <string>
#include <vector>

namespace mango::converting {

namespace ops = mango::ops;

#define MANGO_ROUTER_INIT_SCHEMA                                                                                                    \
    "\"router_init\": {\"type\": \"string\", \"default\": \"zero\", \"enum\": [\"zero\", \"random\", \"data\", \"directions\"], "   \
    "\"description\": \"zero (uniform: a freshly upcycled model computes what the dense one did), random N(0, 1/H), data (k-means " \
    "centroids of the layer's inputs on the calibration text), directions (the given per-expert directions, e.g. from prompts)\"}"

// k-means (cosine) of the rows of x [N, H] into k unit centroids [k, H];
// deterministic start (k evenly spaced rows), `iterations` Lloyd steps.
inline Tensor kmeans_directions(const Tensor &x_in, int64_t k, int iterations = 10) {
    Tensor x = ops::to_dtype(x_in, MANGO_DTYPE_F32);
    x = ops::div(x, ops::clamp_min(ops::norm(x, {-1}, true), 1e-8));
    const int64_t n = x.size(0);
    if (n < k)
        throw Error(MANGO_ERR_INVALID_ARGUMENT, "router_init = data needs at least as many calibration tokens (" + std::to_string(n) +
                                                    ") as experts (" + std::to_string(k) + ")");
    std::vector<int64_t> start;
    for (int64_t i = 0; i < k; ++i) start.push_back(i * n / k);
    mango_tensor h = nullptr;
    const int64_t len = k;
    check(host().tensor_from_data(start.data(), MANGO_DTYPE_I64, &len, 1, x.device(), &h));
    Tensor c = ops::index_select(x, 0, Tensor(h));
    static const Op argmax("aten::argmax"), one_hot("aten::one_hot");
    for (int it = 0; it < iterations; ++it) {
        Tensor assign = argmax({ops::matmul(x, ops::transpose(c, 0, 1)), int64_t(1), false});  // [N]
        Tensor M = ops::to_dtype(one_hot({assign, k}), MANGO_DTYPE_F32);                       // [N, k]
        Tensor sums = ops::matmul(ops::transpose(M, 0, 1), x);                                 // [k, H]
        Tensor counts = ops::sum(M, {0});                                                      // [k]
        // An empty cluster keeps its centroid.
        Tensor fresh = ops::div(sums, ops::clamp_min(ops::unsqueeze(counts, 1), 1.0));
        c = ops::where(ops::unsqueeze(ops::gt_scalar(counts, 0.0), 1), fresh, c);
        c = ops::div(c, ops::clamp_min(ops::norm(c, {-1}, true), 1e-8));
    }
    return c;
}

// The router [E, H] for `how` (see MANGO_ROUTER_INIT_SCHEMA).
inline Tensor router(Context &ctx, const DenseFfn &f, const std::string &how, int64_t H) {
    const int64_t E = f.n_experts;
    if (how == "zero") return ops::zeros({E, H}, MANGO_DTYPE_F32, f.up.device());
    if (how == "random") {
        Tensor u = ops::zeros({E, H}, MANGO_DTYPE_F32, f.up.device());
        return ops::mul(ops::add_scalar(ops::mul(ctx.random_like(u), 2.0), -1.0), std::sqrt(3.0 / double(H)));
    }
    if (how == "data") {
        if (!f.hidden_states)
            throw Error(MANGO_ERR_INVALID_ARGUMENT, "router_init = data needs calibration text (--calibration-data FILE)");
        return kmeans_directions(f.hidden_states, E);
    }
    if (!f.expert_directions)
        throw Error(MANGO_ERR_INVALID_ARGUMENT, "router_init = directions needs per-expert directions (--prompts FILE)");
    if (f.expert_directions.size(0) != E)
        throw Error(MANGO_ERR_SHAPE, "expert directions give " + std::to_string(f.expert_directions.size(0)) + " rows for " +
                                         std::to_string(E) + " experts");
    return ops::to_dtype(f.expert_directions, MANGO_DTYPE_F32);  // as given (unit rows from prompts, or mergekit's random scales)
}

// Standard normal noise shaped like `like`, from the host's seeded uniform stream (Box-Muller).
inline Tensor normal_like(Context &ctx, const Tensor &like) {
    Tensor u1 = ops::clamp_min(ctx.random_like(like), 1e-12), u2 = ctx.random_like(like);
    return ops::mul(ops::sqrt(ops::mul(ops::log(u1), -2.0)), ops::cos(ops::mul(u2, 2 * M_PI)));
}

inline void emit_expert(Context &ctx, int64_t e, const Tensor &gate, const Tensor &up, const Tensor &down, const Tensor &up_bias = Tensor(),
                        const Tensor &down_bias = Tensor()) {
    const std::string p = "experts." + std::to_string(e) + ".";
    if (gate) ctx.emit(p + "gate", gate);
    ctx.emit(p + "up", up);
    ctx.emit(p + "down", down);
    if (up_bias) ctx.emit(p + "up_bias", up_bias);
    if (down_bias) ctx.emit(p + "down_bias", down_bias);
}

inline void require_experts(const DenseFfn &f) {
    if (f.n_experts < 2)
        throw Error(MANGO_ERR_INVALID_ARGUMENT, "a mixture needs at least 2 experts (asked for " + std::to_string(f.n_experts) + ")");
    if (f.top_k < 1 || f.top_k > f.n_experts)
        throw Error(MANGO_ERR_INVALID_ARGUMENT, "top-k " + std::to_string(f.top_k) + " must be between 1 and the number of experts (" +
                                                    std::to_string(f.n_experts) + ")");
}

}  // namespace mango::converting
