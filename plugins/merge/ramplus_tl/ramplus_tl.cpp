// `ramplus_tl` merge (RAM+): as `ram`, with each model's unique changes
// scaled by lambda_i = 1 + r * clamp(shared_i / unique_i, 0, alpha), where
// shared_i / unique_i count the model's changed elements that others also
// change / that only it changes (mergekit ram.py). The result keeps the
// inputs' dtype (mergekit lets float32 lambda promote it).
#include "merge_common.hpp"

namespace {

using namespace mango;
namespace ops = mango::ops;

constexpr const char *kSchema = R"({"type": "object", "properties": {
  "r": {"type": "number", "default": 0.1, "description": "strength of the rescaling"},
  "alpha": {"type": "number", "default": 0.2, "description": "largest overlap ratio used"},
  "epsilon": {"type": "number", "default": 1e-5, "minimum": 0, "description": "a delta larger than this (in magnitude) counts as a change"}}})";

struct RamPlus {
    explicit RamPlus(Context &) {}
    Tensor merge(Context &ctx, const MergeInput &in) {
        std::vector<Tensor> models = in.models;
        merging::rectify_embed(models, in.is_embed);  // vocabularies of different sizes: the common block
        if (!in.has_base()) throw Error(MANGO_ERR_INVALID_ARGUMENT, "ramplus_tl: the base model does not hold tensor '" + in.name + "'");
        const Tensor &base = models[size_t(in.base)];
        std::vector<Tensor> deltas;
        for (size_t i = 0; i < models.size(); ++i)
            if (int32_t(i) != in.base) deltas.push_back(ops::flatten(ops::sub(models[i], base)));
        if (deltas.empty()) return base;
        const double eps = ctx.option_double("epsilon"), r = ctx.option_double("r"), alpha = ctx.option_double("alpha");
        Tensor TV = ops::stack(deltas, 0);
        Tensor active = ops::gt_scalar(ops::abs(TV), eps);
        Tensor count = ops::sum(ops::to_dtype(active, MANGO_DTYPE_I64), {0});
        Tensor overlap = ops::gt_scalar(count, 1.0), unique = ops::eq_scalar(count, 1.0);
        Tensor Z = ops::mul(TV, ops::to_dtype(active, TV.dtype()));
        Tensor out = ops::zeros_like(ops::select(Z, 0, 0));
        Tensor mean_shared =
            ops::div(ops::mul(ops::sum(Z, {0}), ops::to_dtype(overlap, TV.dtype())), ops::to_dtype(ops::clamp_min(count, 1.0), TV.dtype()));
        for (int64_t i = 0; i < TV.size(0); ++i) {
            Tensor a = ops::select(active, 0, i);
            const double shared = ops::item(ops::sum_all(ops::to_dtype(ops::logical_and(a, overlap), MANGO_DTYPE_I64)));
            const double uniq = ops::item(ops::sum_all(ops::to_dtype(ops::logical_and(a, unique), MANGO_DTYPE_I64)));
            const double rho = shared / std::max(uniq, eps);
            const double lambda = 1 + r * std::max(0.0, std::min(rho, alpha));
            out = ops::add(out, ops::mul(ops::mul(ops::select(Z, 0, i), ops::to_dtype(unique, TV.dtype())), lambda));
        }
        return ops::add(base, ops::reshape(ops::add(out, mean_shared), base.sizes()));
    }
};

}  // namespace

MANGO_PLUGIN("merge_ramplus_tl", "1.0.0", "RAM+",
             mango::merge<RamPlus>("ramplus_tl", "1.0.0", "RAM with each model's unique changes rescaled by its overlap ratio", kSchema,
                                   nullptr, MANGO_MERGE_NEEDS_BASE))
