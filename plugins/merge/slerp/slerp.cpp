// `slerp` merge: spherical interpolation from the base (t = 0) to the other
// model (t = 1) over the whole tensor as one vector, in float32; linear
// interpolation when the two are nearly parallel (|cos| > 0.9995)
// (mergekit slerp.py).
#include "merge_common.hpp"

namespace {

using namespace mango;
namespace ops = mango::ops;

constexpr const char *kSchema = R"({"type": "object", "properties": {
  "t": {"type": "number", "description": "interpolation factor: 0 = base model, 1 = the other model"}}, "required": ["t"]})";

struct Slerp {
    explicit Slerp(Context &) {}
    Tensor merge(Context &ctx, const MergeInput &in) {
        if (in.models.size() == 1) return in.models[0];
        if (in.models.size() != 2)
            throw Error(MANGO_ERR_INVALID_ARGUMENT,
                        "slerp merges exactly two models (tensor '" + in.name + "' has " + std::to_string(in.models.size()) + ")");
        if (!in.has_base()) throw Error(MANGO_ERR_INVALID_ARGUMENT, "slerp: the base model does not hold tensor '" + in.name + "'");
        std::vector<Tensor> v = {in.models[size_t(in.base)], in.models[size_t(1 - in.base)]};
        merging::rectify_embed(v, in.is_embed);
        const double t = ctx.option_double("t");
        const mango_dtype dt = v[0].dtype();
        Tensor v0 = ops::to_dtype(v[0], MANGO_DTYPE_F32), v1 = ops::to_dtype(v[1], MANGO_DTYPE_F32);
        auto unit = [](const Tensor &x) {
            const double n = ops::item(ops::norm(x));
            return n > 1e-8 ? ops::div_scalar(x, n) : x;
        };
        const double dot = ops::item(ops::sum_all(ops::mul(unit(v0), unit(v1))));
        Tensor res;
        if (std::abs(dot) > 0.9995) {
            res = ops::add(ops::mul(v0, 1 - t), ops::mul(v1, t));
        } else {
            const double theta0 = std::acos(dot), s = std::sin(theta0), theta_t = theta0 * t;
            res = ops::add(ops::mul(v0, std::sin(theta0 - theta_t) / s), ops::mul(v1, std::sin(theta_t) / s));
        }
        return ops::to_dtype(res, dt);
    }
};

}  // namespace

MANGO_PLUGIN("merge_slerp", "1.0.0", "spherical interpolation",
             mango::merge<Slerp>("slerp", "1.0.0", "spherical linear interpolation between the base and one model", kSchema, nullptr,
                                 MANGO_MERGE_NEEDS_BASE))
