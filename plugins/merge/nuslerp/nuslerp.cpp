// `nuslerp` merge: spherical interpolation of two models with t = w1/(w0+w1),
// of their task vectors when there is a base; the whole tensor as one vector
// (nuslerp_flatten), or row by row (last dim) / column by column
// (nuslerp_row_wise: dim 0) (mergekit nuslerp.py).
#include "merge_common.hpp"

namespace {

using namespace mango;
namespace ops = mango::ops;

constexpr const char *kSchema = R"({"type": "object", "properties": {
  "nuslerp_flatten": {"type": "boolean", "default": true, "description": "one angle for the whole tensor"},
  "nuslerp_row_wise": {"type": "boolean", "default": false, "description": "without flatten: vectors along dim 0 instead of the last dim"}}})";

Tensor nuslerp(double t, Tensor v0, Tensor v1, bool row_wise, bool flatten) {
    const std::vector<int64_t> shape = v0.sizes();
    const bool transposed = !flatten && row_wise && v0.dim() > 1;
    if (flatten) {
        v0 = ops::flatten(v0);
        v1 = ops::flatten(v1);
    } else if (transposed) {
        v0 = ops::transpose(v0, 0, -1);
        v1 = ops::transpose(v1, 0, -1);
    }
    auto unit = [](const Tensor &x) { return ops::div(x, ops::clamp_min(ops::norm(x, {-1}, true), 1e-7)); };
    Tensor cos = ops::sum(ops::mul(unit(v0), unit(v1)), {-1}, true);
    Tensor theta = ops::acos(ops::clamp(cos, -1, 1));
    Tensor sin = ops::sin(theta);
    Tensor res = ops::div(ops::add(ops::mul(ops::sin(ops::mul(theta, 1 - t)), v0), ops::mul(ops::sin(ops::mul(theta, t)), v1)), sin);
    Tensor lerp = ops::add(ops::mul(v0, 1 - t), ops::mul(v1, t));
    res = ops::where(ops::lt_scalar(ops::abs(sin), 1e-8), lerp, res);  // colinear vectors: linear interpolation
    if (transposed) res = ops::transpose(res, 0, -1);
    return ops::reshape(ops::contiguous(res), shape);
}

struct NuSlerp {
    explicit NuSlerp(Context &) {}
    Tensor merge(Context &ctx, const MergeInput &in) {
        if (in.models.size() == 1) return in.models[0];
        std::vector<Tensor> xs;
        std::vector<double> w;
        for (size_t i = 0; i < in.models.size(); ++i)
            if (int32_t(i) != in.base) xs.push_back(in.models[i]), w.push_back(ctx.model_option_double(i, "weight"));
        if (xs.size() != 2)
            throw Error(MANGO_ERR_INVALID_ARGUMENT, "nuslerp merges exactly two models besides the base (tensor '" + in.name + "' has " +
                                                        std::to_string(xs.size()) + ")");
        const double t = std::abs(w[0] + w[1]) < 1e-6 ? 0.5 : w[1] / (w[0] + w[1]);
        if (in.has_base()) xs.push_back(in.models[size_t(in.base)]);
        merging::rectify_embed(xs, in.is_embed);
        const bool flatten = ctx.option_bool("nuslerp_flatten"), row_wise = ctx.option_bool("nuslerp_row_wise");
        if (!in.has_base()) return nuslerp(t, xs[0], xs[1], row_wise, flatten);
        const Tensor &b = xs[2];
        return ops::add(b, nuslerp(t, ops::sub(xs[0], b), ops::sub(xs[1], b), row_wise, flatten));
    }
};

}  // namespace

MANGO_PLUGIN("merge_nuslerp", "1.0.0", "spherical interpolation by weights",
             mango::merge<NuSlerp>("nuslerp", "1.0.0", "spherical interpolation of two models (or their task vectors) by weight", kSchema,
                                   MANGO_MERGE_WEIGHT_SCHEMA))
