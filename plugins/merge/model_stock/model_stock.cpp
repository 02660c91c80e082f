// `model_stock` merge (Model Stock, arXiv 2403.19522): from the mean cosine
// of the fine-tunes' offsets to the base, t = N cos / (1 + (N-1) cos), and
// out = t * mean(models) + (1 - t) * base; per row when filter_wise
// (mergekit model_stock.py). Needs the base and at least two other models.
#include "merge_common.hpp"

namespace {

using namespace mango;
namespace ops = mango::ops;

constexpr const char *kSchema = R"({"type": "object", "properties": {
  "filter_wise": {"type": "boolean", "default": false, "description": "one angle per row (last dim) instead of per tensor"}}})";

struct ModelStock {
    explicit ModelStock(Context &) {}
    Tensor merge(Context &ctx, const MergeInput &in) {
        if (!in.has_base()) throw Error(MANGO_ERR_INVALID_ARGUMENT, "model_stock: the base model does not hold tensor '" + in.name + "'");
        if (in.models.size() == 1) return in.models[0];
        if (in.models.size() < 3)  // as mergekit: the angle between fine-tunes needs two of them
            throw Error(MANGO_ERR_INVALID_ARGUMENT, "model_stock needs the base and at least two fine-tuned models; this tensor has " +
                                                        std::to_string(in.models.size()) + " models");
        std::vector<Tensor> all{in.models[size_t(in.base)]};
        for (size_t i = 0; i < in.models.size(); ++i)
            if (int32_t(i) != in.base) all.push_back(in.models[i]);
        merging::rectify_embed(all, in.is_embed);
        const std::vector<int64_t> shape = all[0].sizes();
        const bool filter_wise = ctx.option_bool("filter_wise");
        for (Tensor &w : all) w = filter_wise ? (w.dim() == 1 ? ops::unsqueeze(w, 0) : w) : ops::flatten(w);
        const Tensor w0 = all[0];
        std::vector<Tensor> offsets;
        for (size_t i = 1; i < all.size(); ++i) offsets.push_back(ops::sub(all[i], w0));
        std::vector<Tensor> cosines;
        for (size_t i = 0; i < offsets.size(); ++i)
            for (size_t j = i + 1; j < offsets.size(); ++j) {
                Tensor prod = ops::mul(ops::norm(offsets[i], {-1}), ops::norm(offsets[j], {-1}));
                cosines.push_back(
                    ops::clamp(ops::div(ops::sum(ops::mul(offsets[i], offsets[j]), {-1}), ops::clamp_min(prod, 1e-6)), -1, 1));
            }
        Tensor cos = ops::unsqueeze(ops::mean(ops::stack(cosines, 0), {0}), -1);
        const double N = double(offsets.size());
        Tensor t = ops::div(ops::mul(cos, N), ops::add_scalar(ops::mul(cos, N - 1), 1.0));
        Tensor avg = all[1];
        for (size_t i = 2; i < all.size(); ++i) avg = ops::add(avg, all[i]);
        avg = ops::div_scalar(avg, N);
        Tensor out = ops::add(ops::mul(t, avg), ops::mul(ops::rsub_scalar(t, 1.0), w0));
        return ops::reshape(out, shape);
    }
};

}  // namespace

MANGO_PLUGIN("merge_model_stock", "1.0.0", "Model Stock",
             mango::merge<ModelStock>("model_stock", "1.0.0",
                                      "interpolate the fine-tunes' mean toward the base by their angle (Model Stock)", kSchema, nullptr,
                                      MANGO_MERGE_NEEDS_BASE))
