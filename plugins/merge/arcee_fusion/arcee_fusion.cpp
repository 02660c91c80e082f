// `arcee_fusion` merge: importance = |other - base| x KL(softmax(other) ||
// softmax(base)) per row; the other model's values are taken where the
// importance reaches median + 1.5 IQR of all importances (quantiles from a
// random million-element sample on larger tensors), the base's elsewhere
// (mergekit arcee_fusion.py). The result keeps the inputs' dtype (mergekit
// lets its float32 mask promote it).
#include "merge_common.hpp"

namespace {

using namespace mango;
namespace ops = mango::ops;

struct ArceeFusion {
    explicit ArceeFusion(Context &) {}

    // sorted[floor(q (n - 1))], on a random sample of 1e6 elements when larger.
    static std::vector<double> quantiles(Context &ctx, const Tensor &imp, const std::vector<double> &qs) {
        Tensor flat = ops::flatten(imp);
        if (flat.numel() > 1000000)
            flat = ops::index_select(flat, 0, ops::narrow(ops::argsort(ctx.random_like(flat), 0, false), 0, 0, 1000000));
        Tensor sorted = ops::argsort(flat, 0, false);
        const int64_t n = flat.numel();
        std::vector<double> out;
        for (double q : qs) {
            const auto at = int64_t(float(q) * float(n - 1));  // as mergekit: in float32, then truncated
            out.push_back(ops::item(ops::index_select(flat, 0, ops::narrow(sorted, 0, at, 1))));
        }
        return out;
    }

    Tensor merge(Context &ctx, const MergeInput &in) {
        if (in.models.size() == 1) return in.models[0];
        if (in.models.size() != 2 || !in.has_base())
            throw Error(MANGO_ERR_INVALID_ARGUMENT, "arcee_fusion merges exactly one model into the base (tensor '" + in.name + "')");
        std::vector<Tensor> v = {in.models[size_t(in.base)], in.models[size_t(1 - in.base)]};
        merging::rectify_embed(v, in.is_embed);
        const Tensor &base = v[0], &other = v[1];
        Tensor p = ops::add_scalar(ops::softmax(other, -1), 1e-8), q = ops::add_scalar(ops::softmax(base, -1), 1e-8);
        Tensor kl = ops::sum(ops::mul(p, ops::log(ops::div(p, q))), {-1});
        Tensor imp = ops::mul(ops::abs(ops::sub(other, base)), ops::unsqueeze(kl, -1));
        const std::vector<double> qv = quantiles(ctx, imp, {0.25, 0.5, 0.75});
        const double threshold = qv[1] + 1.5 * (qv[2] - qv[0]);
        Tensor mask = ops::to_dtype(ops::ge_scalar(imp, threshold), base.dtype());
        return ops::add(base, ops::mul(ops::sub(other, base), mask));
    }
};

}  // namespace

MANGO_PLUGIN("merge_arcee_fusion", "1.0.0", "Arcee Fusion",
             mango::merge<ArceeFusion>("arcee_fusion", "1.0.0", "take the other model's values where their importance is an outlier",
                                       nullptr, nullptr, MANGO_MERGE_NEEDS_BASE))
