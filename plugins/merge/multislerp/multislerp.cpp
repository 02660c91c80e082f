// `multislerp` merge: barycentric interpolation of N models on the unit
// hypersphere (of task vectors when there is a base): project onto the tangent
// space at the weighted mean direction, average there, map back, scale by the
// weighted mean norm (mergekit multislerp.py).
#include "merge_common.hpp"

namespace {

using namespace mango;
namespace ops = mango::ops;

constexpr const char *kSchema = R"({"type": "object", "properties": {
  "normalize_weights": {"type": "boolean", "default": true, "description": "weights divided by their sum"},
  "eps": {"type": "number", "default": 1e-8, "minimum": 0, "description": "numerical floor"}}})";

struct MultiSlerp {
    explicit MultiSlerp(Context &) {}
    Tensor merge(Context &ctx, const MergeInput &in) {
        std::vector<Tensor> models = in.models;
        merging::rectify_embed(models, in.is_embed);  // vocabularies of different sizes: the common block
        std::vector<Tensor> xs;
        std::vector<double> w;
        for (size_t i = 0; i < models.size(); ++i)
            if (int32_t(i) != in.base) xs.push_back(models[i]), w.push_back(ctx.model_option_double(i, "weight"));
        if (xs.empty()) return models[size_t(in.base)];
        if (xs.size() == 1) return xs[0];  // as mergekit: one model is returned as it is
        const double eps = ctx.option_double("eps");
        Tensor X = ops::stack(xs, 0);
        if (in.has_base()) X = ops::sub(X, models[size_t(in.base)]);
        const int64_t N = X.size(0);
        Tensor F = ops::reshape(X, {N, -1});
        if (ctx.option_bool("normalize_weights")) {
            double s = 0;
            for (double x : w) s += x;
            for (double &x : w) x /= s;
        }
        Tensor W = merging::weight_tensor(w, F, 1);  // [N, 1]
        Tensor norms = ops::norm(F, {-1}, true);
        Tensor U = ops::div(F, ops::add_scalar(norms, eps));
        Tensor mean = ops::sum(ops::mul(U, W), {0});
        const double mean_norm = ops::item(ops::norm(mean));
        const std::vector<int64_t> shape = xs[0].sizes();
        Tensor result;
        if (mean_norm < eps) {
            if (N != 2)
                throw Error(MANGO_ERR_INVALID_ARGUMENT, "multislerp: the weighted mean direction of tensor '" + in.name +
                                                            "' is zero (antipodal models with balancing weights)");
            result = ops::sum(ops::mul(X, merging::weight_tensor(w, X, X.dim() - 1)), {0});
        } else {
            mean = ops::div_scalar(mean, mean_norm);
            Tensor dots = ops::sum(ops::mul(U, mean), {-1}, true);
            Tensor tangent = ops::sum(ops::mul(ops::sub(U, ops::mul(dots, mean)), W), {0});
            const double L = ops::item(ops::norm(tangent)) + eps;
            Tensor r = ops::add(ops::mul(mean, std::cos(L)), ops::mul(tangent, std::sin(L) / L));
            r = ops::mul(r, ops::sum_all(ops::mul(ops::squeeze(norms, -1), ops::squeeze(W, -1))));
            result = ops::reshape(r, shape);
        }
        return in.has_base() ? ops::add(result, models[size_t(in.base)]) : result;
    }
};

}  // namespace

MANGO_PLUGIN("merge_multislerp", "1.0.0", "spherical barycentre",
             mango::merge<MultiSlerp>("multislerp", "1.0.0", "weighted spherical barycentre of N models (or task vectors)", kSchema,
                                      MANGO_MERGE_WEIGHT_SCHEMA))
