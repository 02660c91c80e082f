// `sce` merge (Select, Calculate, Erase; FuseChat): keep the select_topk share
// of elements whose task vectors vary most across models, weigh each model by
// its mean squared (selected) task vector, erase elements whose sign
// disagrees with the majority, and add the weighted mean to the base
// (mergekit sce.py). No per-model weights.
#include "merge_common.hpp"

namespace {

using namespace mango;
namespace ops = mango::ops;

constexpr const char *kSchema = R"({"type": "object", "properties": {
  "select_topk": {"type": "number", "default": 1.0, "minimum": 0, "maximum": 1, "description": "share of elements with the highest variance across models kept"},
  "int8_mask": {"type": "boolean", "default": false, "description": "accepted for mergekit configs; no effect on values"}}})";

struct Sce {
    explicit Sce(Context &) {}
    Tensor merge(Context &ctx, const MergeInput &in) {
        std::vector<Tensor> models = in.models;
        merging::rectify_embed(models, in.is_embed);  // vocabularies of different sizes: the common block
        if (!in.has_base()) throw Error(MANGO_ERR_INVALID_ARGUMENT, "sce: the base model does not hold tensor '" + in.name + "'");
        const Tensor &base = models[size_t(in.base)];
        std::vector<Tensor> deltas;
        for (size_t i = 0; i < models.size(); ++i)
            if (int32_t(i) != in.base) deltas.push_back(ops::sub(models[i], base));
        if (deltas.empty()) return base;
        Tensor T = ops::stack(deltas, 0);
        const double topk = ctx.option_double("select_topk");
        if (topk < 1) {
            Tensor var = ops::variance(T, {0}, false);
            Tensor mask = ops::zeros_like(var);
            const int64_t nonzero =
                int64_t(ops::item(ops::sum_all(ops::to_dtype(ops::logical_not(ops::eq_scalar(var, 0.0)), MANGO_DTYPE_I64))));
            const int64_t k = topk <= 0 ? 0 : int64_t(double(nonzero) * topk);
            if (k > 0) {
                Tensor flat = ops::flatten(ops::abs(var));
                auto top = ops::topk(flat, k, 0);
                static const Op index_fill("aten::index_fill", "int_Scalar");
                mask = ops::reshape(index_fill({ops::flatten(mask), int64_t(0), top.second, 1.0}), var.sizes());
            }
            T = ops::mul(T, ops::unsqueeze(mask, 0));
        }
        Tensor erase = ops::to_dtype(merging::sign_mask(T, false), T.dtype());
        std::vector<int64_t> rest;
        for (int64_t d = 1; d < T.dim(); ++d) rest.push_back(d);
        Tensor omega = rest.empty() ? ops::pow(T, 2.0) : ops::mean(ops::pow(T, 2.0), rest, false);  // [N]
        const double total = ops::item(ops::sum_all(omega));
        omega = std::abs(total) < 1e-6 ? ops::full_like(omega, 1.0 / double(T.size(0))) : ops::div_scalar(omega, total);
        for (int64_t d = 1; d < T.dim(); ++d) omega = ops::unsqueeze(omega, -1);
        Tensor ew = ops::mul(omega, erase);
        Tensor merged = ops::div(ops::sum(ops::mul(T, ew), {0}), ops::clamp_min(ops::sum(ew, {0}), 1e-6));
        return ops::add(base, merged);
    }
};

}  // namespace

MANGO_PLUGIN("merge_sce", "1.0.0", "select, calculate, erase",
             mango::merge<Sce>("sce", "1.0.0", "variance-selected, magnitude-weighted, sign-consensus task vectors (FuseChat SCE)", kSchema,
                               nullptr, MANGO_MERGE_NEEDS_BASE))
