// `linear` merge: sum_i w_i x_i, divided by sum_i w_i when `normalize`
// (mergekit linear.py; model soups, arXiv 2203.05482). Every model that holds
// the tensor takes part, the base too if it is a source.
#include "merge_common.hpp"

namespace {

using namespace mango;
namespace ops = mango::ops;

constexpr const char *kSchema = R"({"type": "object", "properties": {
  "normalize": {"type": "boolean", "default": true, "description": "divide by the sum of the weights"}}})";

struct Linear {
    explicit Linear(Context &) {}
    Tensor merge(Context &ctx, const MergeInput &in) {
        std::vector<Tensor> xs = in.models;
        merging::rectify_embed(xs, in.is_embed);
        if (!merging::same_shapes(xs))
            throw Error(MANGO_ERR_SHAPE, "tensor '" + in.name + "' has different shapes: " + merging::shapes_text(xs));
        std::vector<double> w;
        for (size_t i = 0; i < xs.size(); ++i) w.push_back(ctx.model_option_double(i, "weight"));
        Tensor X = ops::stack(xs, 0);
        Tensor W = merging::weight_tensor(w, X, X.dim() - 1);
        Tensor res = ops::sum(ops::mul(W, X), {0});
        if (ctx.option_bool("normalize")) res = ops::div(res, ops::sum(W, {0}));
        return res;
    }
};

}  // namespace

MANGO_PLUGIN("merge_linear", "1.0.0", "weighted average",
             mango::merge<Linear>("linear", "1.0.0", "weighted average of the models (model soups)", kSchema, MANGO_MERGE_WEIGHT_SCHEMA))
