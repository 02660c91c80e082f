// `nearswap` merge: take the other model's value where it is close to the
// base's: w = clamp(t / |base - other|, 0, 1), out = w other + (1 - w) base
// (mergekit nearswap.py).
#include "merge_common.hpp"

namespace {

using namespace mango;
namespace ops = mango::ops;

constexpr const char *kSchema = R"({"type": "object", "properties": {
  "t": {"type": "number", "minimum": 0, "description": "distance below which the other model's value is taken whole"}}, "required": ["t"]})";

struct NearSwap {
    explicit NearSwap(Context &) {}
    Tensor merge(Context &ctx, const MergeInput &in) {
        std::vector<Tensor> models = in.models;
        merging::rectify_embed(models, in.is_embed);  // vocabularies of different sizes: the common block
        if (!in.has_base()) throw Error(MANGO_ERR_INVALID_ARGUMENT, "nearswap: the base model does not hold tensor '" + in.name + "'");
        const Tensor &a = models[size_t(in.base)];
        if (models.size() == 1) return a;
        if (models.size() != 2)
            throw Error(MANGO_ERR_INVALID_ARGUMENT, "nearswap merges exactly one model into the base (tensor '" + in.name + "')");
        const Tensor &b = models[size_t(1 - in.base)];
        Tensor w = ops::clamp(ops::div(ops::full_like(a, ctx.option_double("t")), ops::clamp_min(ops::abs(ops::sub(a, b)), 1e-6)), 0, 1);
        return ops::add(ops::mul(w, b), ops::mul(ops::rsub_scalar(w, 1.0), a));
    }
};

}  // namespace

MANGO_PLUGIN("merge_nearswap", "1.0.0", "NearSwap",
             mango::merge<NearSwap>("nearswap", "1.0.0", "take the other model's values where they are near the base's", kSchema, nullptr,
                                    MANGO_MERGE_NEEDS_BASE))
