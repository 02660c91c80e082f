// `ram` merge (Reinforced Agent Merging): an element changed (|delta| > eps)
// by one model takes that model's delta whole; one changed by several takes
// the mean of their deltas; the others keep the base (mergekit ram.py).
#include "merge_common.hpp"

namespace {

using namespace mango;
namespace ops = mango::ops;

constexpr const char *kSchema = R"({"type": "object", "properties": {
  "epsilon": {"type": "number", "default": 1e-5, "minimum": 0, "description": "a delta larger than this (in magnitude) counts as a change"}}})";

struct Ram {
    explicit Ram(Context &) {}
    Tensor merge(Context &ctx, const MergeInput &in) {
        std::vector<Tensor> models = in.models;
        merging::rectify_embed(models, in.is_embed);  // vocabularies of different sizes: the common block
        if (!in.has_base()) throw Error(MANGO_ERR_INVALID_ARGUMENT, "ram: the base model does not hold tensor '" + in.name + "'");
        const Tensor &base = models[size_t(in.base)];
        std::vector<Tensor> deltas;
        for (size_t i = 0; i < models.size(); ++i)
            if (int32_t(i) != in.base) deltas.push_back(ops::flatten(ops::sub(models[i], base)));
        if (deltas.empty()) return base;
        Tensor TV = ops::stack(deltas, 0);
        Tensor active = ops::gt_scalar(ops::abs(TV), ctx.option_double("epsilon"));
        Tensor count = ops::sum(ops::to_dtype(active, TV.dtype()), {0});
        Tensor Z = ops::mul(TV, ops::to_dtype(active, TV.dtype()));
        Tensor summed = ops::sum(Z, {0});
        // unique (count 1): the delta; overlap (count > 1): the mean of the active deltas.
        Tensor merged = ops::div(summed, ops::clamp_min(count, 1.0));
        return ops::add(base, ops::reshape(merged, base.sizes()));
    }
};

}  // namespace

MANGO_PLUGIN("merge_ram", "1.0.0", "Reinforced Agent Merging",
             mango::merge<Ram>("ram", "1.0.0", "unique changes kept whole, overlapping ones averaged (RAM)", kSchema, nullptr,
                               MANGO_MERGE_NEEDS_BASE))
