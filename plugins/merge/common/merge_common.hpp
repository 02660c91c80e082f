// Shared by the merge plugins (header-only, included from each plugin's
// folder): mergekit's semantics for the pieces several methods use —
// embedding rectification, per-model weights, task vectors, sparsification
// (magnitude, random, outliers, DELLA), sign consensus, and the generalized
// task arithmetic every TIES/DARE/DELLA/breadcrumbs variant is an instance of.
// Reference: arcee-ai/mergekit, merge_methods/ and sparsify.py. Arithmetic
// runs in the inputs' dtype, as mergekit does (the host converts inputs to
// the configuration's `dtype` first).
#pragma once

#include <mango/component.hpp>
#include <mango/ops.hpp>

#include <cmath>
#include <string>
#include <vector>

namespace mango::merging {

namespace ops = mango::ops;

// Schemas of the parameters most methods share.
#define MANGO_MERGE_WEIGHT_SCHEMA \
    R"({"type": "object", "properties": {"weight": {"type": "number", "description": "this model's weight"}}, "required": ["weight"]})"

// rectify_embed_sizes: for vocabulary-indexed 2-D tensors, every model cut to
// the largest common top-left block (rows and columns).
inline void rectify_embed(std::vector<Tensor> &ts, bool is_embed) {
    if (!is_embed || ts.empty()) return;
    for (const Tensor &t : ts)
        if (t.dim() != 2) return;
    int64_t rows = ts[0].size(0), cols = ts[0].size(1);
    for (const Tensor &t : ts) rows = std::min(rows, t.size(0)), cols = std::min(cols, t.size(1));
    for (Tensor &t : ts)
        if (t.size(0) != rows || t.size(1) != cols) t = ops::narrow(ops::narrow(t, 0, 0, rows), 1, 0, cols);
}

inline bool same_shapes(const std::vector<Tensor> &ts) {
    for (const Tensor &t : ts)
        if (t.sizes() != ts[0].sizes()) return false;
    return true;
}

inline std::string shapes_text(const std::vector<Tensor> &ts) {
    std::string s;
    for (const Tensor &t : ts) s += (s.empty() ? "" : ", ") + Context::shape_text(t.sizes());
    return s;
}

// The models' weights as a [N, 1, ..., 1] tensor of `like`'s dtype (broadcast
// against stacked tensors), rounded to that dtype as mergekit's torch.tensor() does.
inline Tensor weight_tensor(const std::vector<double> &w, const Tensor &like, int64_t extra_dims) {
    std::vector<float> f(w.begin(), w.end());
    std::vector<int64_t> shape{int64_t(f.size())};
    for (int64_t i = 0; i < extra_dims; ++i) shape.push_back(1);
    mango_tensor t = nullptr;
    check(host().tensor_from_data(f.data(), MANGO_DTYPE_F32, shape.data(), int32_t(shape.size()), like.device(), &t));
    return ops::to_dtype(Tensor(t), like.dtype());
}

// ---- sparsification (sparsify.py), one task vector at a time ------------------

enum class Sparsify { none, magnitude, random, magnitude_outliers, della };

// tensor * mask, scaled to keep the L1 norm when `l1` (rescaled_masked_tensor).
inline Tensor rescaled(const Tensor &t, const Tensor &mask, bool l1) {
    Tensor masked = ops::mul(t, mask);
    if (!l1) return masked;
    const double before = ops::item(ops::sum_all(ops::abs(t))), after = ops::item(ops::sum_all(ops::abs(masked)));
    if (before < 1e-7 || after < 1e-7) return masked;
    return ops::mul(masked, before / after);
}

// The dtype mergekit draws random masks in: float32 on CPU except for bf16.
inline mango_dtype work_dtype(const Tensor &t) {
    return t.device().type != MANGO_DEVICE_CPU || t.dtype() == MANGO_DTYPE_BF16 ? t.dtype() : MANGO_DTYPE_F32;
}

// The r-th smallest value (r from 1) of a flat tensor, exactly. kthvalue is a
// single-threaded quickselect (5 s for 136M values on this machine), so large
// tensors first bracket the answer from a strided sample of 2^16 values,
// count what lies below and inside the bracket with two vectorised passes,
// and select only among the few candidates inside; when the bracket misses
// (never seen, but possible) it falls back to the full selection.
inline Tensor kth_smallest(const Tensor &w, int64_t r) {
    const int64_t n = w.numel(), m = int64_t(1) << 16;
    if (n <= 4 * m) return ops::kthvalue(w, r);
    Tensor sample = ops::to_dtype(ops::slice(w, 0, 0, n, n / m), MANGO_DTYPE_F32);
    const int64_t s = sample.numel();
    Tensor sorted = ops::index_select(sample, 0, ops::argsort(sample, 0, false));
    const double q = double(r - 1) / double(n - 1), margin = 4 * std::sqrt(double(s) * q * (1 - q)) + 8;
    const int64_t lo_at = std::max<int64_t>(0, int64_t(q * double(s - 1) - margin)),
                  hi_at = std::min<int64_t>(s - 1, int64_t(q * double(s - 1) + margin));
    const double lo = ops::item(ops::select(sorted, 0, lo_at)), hi = ops::item(ops::select(sorted, 0, hi_at));
    static const Op count("aten::count_nonzero", "");
    const int64_t below = int64_t(ops::item(count({ops::lt_scalar(w, lo)})));
    Tensor inside = ops::logical_and(ops::ge_scalar(w, lo), ops::logical_not(ops::gt_scalar(w, hi)));
    const int64_t within = int64_t(ops::item(count({inside})));
    if (r <= below || r > below + within) return ops::kthvalue(w, r);
    static const Op nonzero("aten::nonzero");  // (masked_select is single-threaded: 25x slower here)
    Tensor candidates = ops::index_select(w, 0, ops::reshape(nonzero({inside}), {-1}));
    return ops::kthvalue(ops::to_dtype(candidates, MANGO_DTYPE_F32), r - below);
}

// Keeps the `density` share of largest magnitudes. Where magnitudes tie at
// the cut all of them stay (mergekit's argsort keeps an arbitrary subset);
// exact zeros contribute nothing either way.
inline Tensor magnitude(const Tensor &d, double density, bool l1) {
    if (density >= 1) return d;
    const int64_t n = d.numel(), k = int64_t(density * double(n));
    if (k <= 0)
        throw Error(MANGO_ERR_INVALID_ARGUMENT, "density " + std::to_string(density) + " keeps no element of " + std::to_string(n) +
                                                    " (density x elements must be at least 1)");
    Tensor w = ops::flatten(ops::abs(d));  // comparisons are exact in the stored dtype (mergekit widens to float32 first)
    const double threshold = ops::item(kth_smallest(w, n - k + 1));  // the k-th largest
    const double before = l1 ? ops::item(ops::sum_all(w)) : 0;
    // In place: d is this method's own task vector.
    static const Op masked_fill_("aten::masked_fill_", "Scalar");
    Tensor kept = masked_fill_({d, ops::lt_scalar(ops::reshape(w, d.sizes()), threshold), 0.0});
    if (!l1) return kept;
    const double after = ops::item(ops::sum_all(ops::abs(kept)));
    return before < 1e-7 || after < 1e-7 ? kept : ops::mul(kept, before / after);
}

// DARE: each element kept with probability `density` (host-seeded noise).
inline Tensor random_keep(Context &ctx, const Tensor &d, double density, bool l1) {
    if (density >= 1) return d;
    const mango_dtype wd = work_dtype(d);
    Tensor mask = ops::to_dtype(ops::lt_scalar(ctx.random_like(d), density), wd);
    return ops::to_dtype(rescaled(ops::to_dtype(d, wd), mask, l1), d.dtype());
}

// Breadcrumbs: drops the smallest magnitudes and the `gamma` share of the
// largest. As in mergekit, when no largest element is to be dropped
// (gamma x elements < 1) the kept range is empty and the delta vanishes.
inline Tensor magnitude_outliers(const Tensor &d, double density, double gamma, bool l1) {
    if (density >= 1) return d;
    const int64_t n = d.numel();
    int64_t target = int64_t(density * double(n)), n_top = int64_t(gamma * double(n)), n_bot = n - target - n_top;
    if (n_bot < 0) {
        n_top += n_bot;
        n_bot = 0;
    }
    Tensor w = ops::to_dtype(ops::flatten(ops::abs(d)), MANGO_DTYPE_F32);
    Tensor idx = ops::argsort(w, 0, false);
    Tensor mask = ops::zeros({n}, d.dtype(), d.device());
    if (n_top > 0 && n - n_top > n_bot) {
        static const Op index_fill("aten::index_fill", "int_Scalar");
        mask = index_fill({mask, int64_t(0), ops::narrow(idx, 0, n_bot, n - n_top - n_bot), 1.0});
    }
    return rescaled(d, ops::reshape(mask, d.sizes()), l1);
}

// DELLA MagPrune: keep probability from density - eps (smallest magnitude) to
// density + eps (largest), by rank along dim 1 (1-D tensors: one row).
inline Tensor della_magprune(Context &ctx, const Tensor &d, double density, double epsilon, bool l1) {
    if (density >= 1) return d;
    if (density <= 0) return ops::zeros_like(d);
    if (density + epsilon >= 1 || density - epsilon <= 0)
        throw Error(MANGO_ERR_INVALID_ARGUMENT,
                    "density " + std::to_string(density) + " +/- epsilon " + std::to_string(epsilon) + " must stay inside (0, 1)");
    const mango_dtype wd = work_dtype(d);
    Tensor t = d.dim() < 2 ? ops::unsqueeze(d, 0) : d;
    Tensor ranks = ops::add_scalar(ops::to_dtype(ops::argsort(ops::argsort(ops::abs(t), 1, false), 1, false), wd), 1.0);
    const int64_t n = t.size(1);
    Tensor rank_norm = n > 1 ? ops::clamp(ops::div_scalar(ops::add_scalar(ranks, -1.0), double(n - 1)), 0.0, 1.0) : ops::zeros_like(ranks);
    Tensor probs = ops::add_scalar(ops::mul(rank_norm, 2 * epsilon), density - epsilon);
    Tensor mask = ops::to_dtype(ops::lt(ctx.random_like(probs), probs), wd);
    return ops::reshape(ops::to_dtype(rescaled(ops::to_dtype(t, wd), mask, l1), d.dtype()), d.sizes());
}

// get_mask: true where an element's sign agrees with the majority over
// models (dim 0): "sum" weighs by the (weighted) deltas, "count" counts signs;
// zero never agrees.
inline Tensor sign_mask(const Tensor &deltas, bool count) {
    Tensor votes = count ? ops::sum(ops::sign(deltas), {0}) : ops::sum(deltas, {0});
    // sign(delta) == majority, where a tie counts as positive and zero never agrees.
    return ops::where(ops::ge_scalar(votes, 0.0), ops::gt_scalar(deltas, 0.0), ops::lt_scalar(deltas, 0.0));
}

// ---- generalized task arithmetic (generalized_task_arithmetic.py) -----------

struct Gta {
    bool consensus = false;  // TIES sign consensus ("sum")
    Sparsify sparsify = Sparsify::none;
};

inline Tensor gta_merge(Context &ctx, const MergeInput &in, const Gta &how) {
    if (!in.has_base()) throw Error(MANGO_ERR_INVALID_ARGUMENT, "this method needs the base model's tensor, which the base lacks");
    const Tensor &base = in.models[size_t(in.base)];
    const bool l1 = ctx.option_bool("rescale");
    std::vector<Tensor> deltas;
    std::vector<double> weights;
    for (size_t i = 0; i < in.models.size(); ++i) {
        if (int32_t(i) == in.base) continue;
        Tensor x = ops::to_dtype(in.models[i], base.dtype());
        if (x.sizes() != base.sizes()) {
            if (in.is_embed && x.dim() == 2 && base.dim() == 2 && x.size(0) >= base.size(0) && x.size(1) >= base.size(1)) {
                x = ops::narrow(ops::narrow(x, 0, 0, base.size(0)), 1, 0, base.size(1));  // the base's block
            } else {
                log(MANGO_LOG_WARN, "tensor '" + in.name + "': model #" + std::to_string(i) + " has shape " +
                                        Context::shape_text(x.sizes()) + ", the base " + Context::shape_text(base.sizes()) +
                                        "; left out of this tensor");
                continue;
            }
        }
        Tensor d = ops::sub(x, base);
        const double density = ctx.model_option_double(i, "density");
        if (how.sparsify != Sparsify::none && !(density > 0))
            throw Error(MANGO_ERR_INVALID_ARGUMENT, "model #" + std::to_string(i) + ": density " + std::to_string(density) +
                                                        " keeps nothing of its task vector (expected 0 < density <= 1)");
        switch (how.sparsify) {
            case Sparsify::none:
                break;
            case Sparsify::magnitude:
                d = magnitude(d, density, l1);
                break;
            case Sparsify::random:
                d = random_keep(ctx, d, density, l1);
                break;
            case Sparsify::magnitude_outliers:
                d = magnitude_outliers(d, density, ctx.model_option_double(i, "gamma"), l1);
                break;
            case Sparsify::della:
                d = della_magprune(ctx, d, density, ctx.model_option_double(i, "epsilon"), l1);
                break;
        }
        deltas.push_back(d);
        weights.push_back(ctx.model_option_double(i, "weight"));
    }
    if (deltas.empty()) return base;
    const bool normalize = ctx.option_bool("normalize");
    const double lambda = ctx.option_double("lambda");
    // Elementwise from here: row blocks of about 4M values, so the temporaries
    // stay small (and warm in cache) whatever the tensor's size.
    const int64_t rows = base.dim() == 0 ? 1 : base.size(0), per_row = rows ? base.numel() / rows : 1;
    const int64_t block = std::max<int64_t>(1, (int64_t(1) << 22) / std::max<int64_t>(1, per_row));
    auto part = [&](const Tensor &t, int64_t r, int64_t len) { return base.dim() == 0 ? t : ops::narrow(t, 0, r, len); };
    Tensor out = ops::clone(base);
    static const Op copy_("aten::copy_");
    for (int64_t r = 0; r < rows; r += block) {
        const int64_t len = std::min(block, rows - r);
        std::vector<Tensor> slices;
        for (const Tensor &d : deltas) slices.push_back(part(d, r, len));
        Tensor D = ops::stack(slices, 0);
        Tensor W = weight_tensor(weights, D, D.dim() - 1);
        Tensor WD = ops::mul(D, W);
        Tensor mixed, divisor;
        if (how.consensus) {
            Tensor mask = ops::to_dtype(sign_mask(WD, false), D.dtype());
            mixed = ops::sum(ops::mul(WD, mask), {0});
            divisor = ops::sum(ops::mul(W, mask), {0});
            divisor = ops::masked_fill(divisor, ops::eq_scalar(divisor, 0.0), 1.0);
        } else {
            mixed = ops::sum(WD, {0});
            divisor = ops::sum(W, {0});
            divisor = ops::masked_fill(divisor, ops::lt_scalar(ops::abs(divisor), 1e-8), 1.0);
        }
        if (normalize) mixed = ops::div(mixed, divisor);
        if (lambda != 1) mixed = ops::mul(mixed, lambda);
        Tensor target = part(out, r, len);
        copy_({target, ops::to_dtype(ops::add(part(base, r, len), mixed), base.dtype())});
    }
    return out;
}

// The global schema of a GTA method; `normalize` and `rescale` defaults differ per method.
#define MANGO_GTA_SCHEMA(NORMALIZE, RESCALE)                                                                                     \
    "{\"type\": \"object\", \"properties\": {"                                                                                   \
    "\"normalize\": {\"type\": \"boolean\", \"default\": " #NORMALIZE                                                            \
    ", \"description\": \"divide by the sum of the weights\"},"                                                                  \
    "\"rescale\": {\"type\": \"boolean\", \"default\": " #RESCALE                                                                \
    ", \"description\": \"keep each sparsified task vector's L1 norm\"},"                                                        \
    "\"lambda\": {\"type\": \"number\", \"default\": 1.0, \"description\": \"scale of the merged task vector\"},"                \
    "\"int8_mask\": {\"type\": \"boolean\", \"default\": false, \"description\": \"accepted for mergekit configs; no effect on " \
    "values\"}}}"

#define MANGO_GTA_MODEL_SCHEMA(EXTRA)                                                                                                    \
    "{\"type\": \"object\", \"properties\": {"                                                                                           \
    "\"weight\": {\"type\": \"number\", \"description\": \"this model's weight\"},"                                                      \
    "\"density\": {\"type\": \"number\", \"default\": 1.0, \"minimum\": 0, \"maximum\": 1, \"description\": \"share of the task vector " \
    "kept\"}" EXTRA "}, \"required\": [\"weight\"]}"

#define MANGO_GTA_GAMMA                                                                                                               \
    ", \"gamma\": {\"type\": \"number\", \"default\": 0.01, \"minimum\": 0, \"maximum\": 1, \"description\": \"share of the largest " \
    "magnitudes dropped\"}"
#define MANGO_GTA_EPSILON                                                                                                           \
    ", \"epsilon\": {\"type\": \"number\", \"default\": 0.15, \"minimum\": 0, \"maximum\": 1, \"description\": \"keep probability " \
    "spread: density +/- epsilon by rank\"}"

// One GTA method as a plugin: MANGO_GTA_PLUGIN(ties, "TIES: ...", true, Sparsify::magnitude, true, false, "")
#define MANGO_GTA_PLUGIN(NAME, SUMMARY, CONSENSUS, SPARSIFY, NORMALIZE, RESCALE, EXTRA)                                             \
    namespace {                                                                                                                     \
    struct Method {                                                                                                                 \
        explicit Method(mango::Context &) {}                                                                                        \
        mango::Tensor merge(mango::Context &ctx, const mango::MergeInput &in) {                                                     \
            return mango::merging::gta_merge(ctx, in, {CONSENSUS, mango::merging::Sparsify::SPARSIFY});                             \
        }                                                                                                                           \
    };                                                                                                                              \
    }                                                                                                                               \
    MANGO_PLUGIN("merge_" #NAME, "1.0.0", SUMMARY,                                                                                  \
                 mango::merge<Method>(#NAME, "1.0.0", SUMMARY, MANGO_GTA_SCHEMA(NORMALIZE, RESCALE), MANGO_GTA_MODEL_SCHEMA(EXTRA), \
                                      MANGO_MERGE_NEEDS_BASE))

}  // namespace mango::merging
