// `karcher` merge: the Riemannian (Karcher) mean of the models' directions
// on the unit sphere, equal weights, scaled by the mean norm (mergekit
// karcher.py). Iterates up to max_iter times until the tangent step is
// below tol. Norms are computed in float32, the rest in the inputs' dtype.
#include "merge_common.hpp"

namespace {

using namespace mango;
namespace ops = mango::ops;

constexpr const char *kSchema = R"({"type": "object", "properties": {
  "max_iter": {"type": "integer", "default": 10, "minimum": 0, "description": "iterations at most"},
  "tol": {"type": "number", "default": 1e-5, "minimum": 0, "description": "convergence tolerance"}}})";

struct Karcher {
    explicit Karcher(Context &) {}
    Tensor merge(Context &ctx, const MergeInput &in) {
        std::vector<Tensor> xs = in.models;
        if (xs.size() == 1) return xs[0];
        merging::rectify_embed(xs, in.is_embed);
        if (!merging::same_shapes(xs))
            throw Error(MANGO_ERR_SHAPE, "tensor '" + in.name + "' has different shapes: " + merging::shapes_text(xs));
        const int64_t max_iter = ctx.option_int("max_iter");
        const double tol = ctx.option_double("tol"), alpha = 1.0 / double(xs.size());
        std::vector<double> norms;
        std::vector<Tensor> units;
        for (const Tensor &x : xs) {
            const double n = ops::item(ops::norm(ops::to_dtype(x, MANGO_DTYPE_F32)));
            norms.push_back(n);
            units.push_back(n == 0 ? ops::zeros_like(x) : ops::to_dtype(ops::div_scalar(x, n), x.dtype()));
        }
        std::vector<size_t> valid;
        for (size_t i = 0; i < xs.size(); ++i)
            if (norms[i] > tol) valid.push_back(i);
        if (valid.empty()) return ops::zeros_like(xs[0]);
        const double a = 1.0 / double(valid.size());  // equal weights, renormalised over the valid ones
        Tensor u = ops::zeros_like(units[valid[0]]);
        for (size_t i : valid) u = ops::add(u, ops::mul(units[i], a));
        const double nu = ops::item(ops::norm(ops::to_dtype(u, MANGO_DTYPE_F32)));
        u = nu < tol ? ops::clone(units[valid[0]]) : ops::to_dtype(ops::div_scalar(u, nu), u.dtype());
        for (int64_t it = 0; it < max_iter; ++it) {
            Tensor T = ops::zeros_like(u);
            for (size_t i : valid) {
                const double dot =
                    std::max(-1.0, std::min(1.0, ops::item(ops::sum_all(ops::mul(ops::flatten(u), ops::flatten(units[i]))))));
                const double theta = std::acos(dot);
                if (theta < tol) continue;
                T = ops::add(T, ops::mul(ops::sub(units[i], ops::mul(u, dot)), a * theta / std::sin(theta)));
            }
            const double nt = ops::item(ops::norm(ops::to_dtype(T, MANGO_DTYPE_F32)));
            if (nt < tol) break;
            u = ops::add(ops::mul(u, std::cos(nt)), ops::mul(T, std::sin(nt) / nt));
            const double n = ops::item(ops::norm(ops::to_dtype(u, MANGO_DTYPE_F32)));
            if (n > tol) u = ops::div_scalar(u, n);
        }
        double scale = 0;
        for (double n : norms) scale += alpha * n;
        return ops::mul(u, scale);
    }
};

}  // namespace

MANGO_PLUGIN("merge_karcher", "1.0.0", "Karcher mean",
             mango::merge<Karcher>("karcher", "1.0.0", "Riemannian (Karcher) mean of the models on the sphere, equal weights", kSchema,
                                   nullptr))
