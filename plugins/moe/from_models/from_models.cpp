// `from_models` converter (mergekit-moe, Branch-Train-MiX): expert e is the
// FFN of source model e, fine-tunes of one base; the router comes from given
// per-expert directions (mergekit-moe's prompt states: router_init =
// directions, the default), the layer's data, zero or random.
#include "convert_common.hpp"

namespace {

using namespace mango;
namespace ops = mango::ops;

constexpr const char *kSchema =
    "{\"type\": \"object\", \"properties\": {"
    "\"router_init\": {\"type\": \"string\", \"default\": \"directions\", \"enum\": [\"zero\", \"random\", \"data\", \"directions\"], "
    "\"description\": \"directions (from the experts' prompts), data (k-means of the layer's inputs), zero, random\"},"
    "\"noise\": {\"type\": \"number\", \"default\": 0.0, \"minimum\": 0, \"description\": \"Gaussian noise (absolute std) added to every "
    "expert weight\"},"
    "\"residual_scale\": {\"type\": \"number\", \"default\": 1.0, \"description\": \"multiplier of every expert's down projection\"}}}";

struct FromModels {
    explicit FromModels(Context &ctx)
        : init_(ctx.option_string("router_init")), noise_(ctx.option_double("noise")), scale_(ctx.option_double("residual_scale")) {}

    void convert(Context &ctx, const DenseFfn &f) {
        converting::require_experts(f);
        if (f.up_bias || f.down_bias)
            throw Error(MANGO_ERR_UNSUPPORTED,
                        "from_models takes the source models' FFN weights but not their biases; this model's FFN "
                        "has biases (use upcycle or split)");
        if (int64_t(f.source_up.size()) != f.n_experts)
            throw Error(MANGO_ERR_INVALID_ARGUMENT, "from_models makes one expert per source model: " + std::to_string(f.source_up.size()) +
                                                        " sources for " + std::to_string(f.n_experts) + " experts");
        for (int64_t e = 0; e < f.n_experts; ++e) {
            auto noisy = [&](const Tensor &w) {
                if (!w || noise_ <= 0) return w;
                return ops::add(w, ops::to_dtype(ops::mul(converting::normal_like(ctx, w), noise_), w.dtype()));
            };
            const size_t i = size_t(e);
            converting::emit_expert(ctx, e, noisy(f.source_gate[i]), noisy(f.source_up[i]), ops::mul(noisy(f.source_down[i]), scale_));
        }
        ctx.emit("router", converting::router(ctx, f, init_, f.up.size(1)));
    }

    std::string init_;
    double noise_, scale_;
};

}  // namespace

MANGO_PLUGIN("moe_from_models", "1.0.0", "experts from fine-tunes",
             mango::moe_converter<FromModels>("from_models", "1.0.0", "one expert per fine-tune of a base (mergekit-moe, Branch-Train-MiX)",
                                              kSchema))
