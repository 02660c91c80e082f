// `passthrough` merge: the one model's tensor, optionally times its `scale`
// (frankenmerges: slices with one source each) (mergekit passthrough.py).
#include "merge_common.hpp"

namespace {

using namespace mango;
namespace ops = mango::ops;

constexpr const char *kModelSchema = R"json({"type": "object", "properties": {
  "scale": {"type": "number", "description": "multiply the tensor by this (absent: unchanged)"}}})json";

struct Passthrough {
    explicit Passthrough(Context &) {}
    Tensor merge(Context &ctx, const MergeInput &in) {
        if (in.models.size() != 1)
            throw Error(MANGO_ERR_INVALID_ARGUMENT,
                        "passthrough takes exactly one model per tensor; '" + in.name + "' has " + std::to_string(in.models.size()));
        if (auto s = ctx.model_option(0, "scale")) return ops::mul(in.models[0], s->kind == MANGO_VALUE_INT ? double(s->u.i) : s->u.d);
        return in.models[0];
    }
};

}  // namespace

MANGO_PLUGIN("merge_passthrough", "1.0.0", "passthrough",
             mango::merge<Passthrough>("passthrough", "1.0.0", "one model's tensor as it is, optionally scaled (frankenmerges)", nullptr,
                                       kModelSchema))
