// `split` converter (LLaMA-MoE, Zhu et al. 2024): the dense FFN's F
// intermediate neurons partitioned into E experts of F/E neurons each (the
// same neurons in gate and up rows and down columns), by a random
// permutation or by balanced k-means on the (unit) up-projection rows
// ("clustering"). Each expert's down projection is scaled by `scale` ("auto"
// = E): with renormalised top-k weights the block's output is then unchanged
// in expectation over uniform routing, and with all E experts active and
// equal weights (zero router, top-k = E) it equals the dense FFN exactly.
#include "convert_common.hpp"

#include <algorithm>

namespace {

using namespace mango;
namespace ops = mango::ops;

constexpr const char *kSchema =
    "{\"type\": \"object\", \"properties\": {"
    "\"method\": {\"type\": \"string\", \"default\": \"random\", \"enum\": [\"random\", \"clustering\"], "
    "\"description\": \"how neurons are assigned to experts\"},"
    "\"scale\": {\"type\": \"number\", \"default\": 0, \"minimum\": 0, "
    "\"description\": \"multiplier of each expert's down projection (0 = the number of experts)\"}," MANGO_ROUTER_INIT_SCHEMA "}}";

struct Split {
    explicit Split(Context &ctx)
        : method_(ctx.option_string("method")), scale_(ctx.option_double("scale")), init_(ctx.option_string("router_init")) {}

    void convert(Context &ctx, const DenseFfn &f) {
        converting::require_experts(f);
        const int64_t F = f.up.size(0), H = f.up.size(1), E = f.n_experts;
        if (F % E)
            throw Error(MANGO_ERR_INVALID_ARGUMENT,
                        "split: " + std::to_string(E) + " experts do not divide the " + std::to_string(F) + " intermediate neurons");
        const std::vector<int64_t> labels = method_ == "random" ? random_labels(ctx, F, E) : cluster_labels(f.up, E);
        const double scale = scale_ > 0 ? scale_ : double(E);
        for (int64_t e = 0; e < E; ++e) {
            std::vector<int64_t> idx;
            for (int64_t j = 0; j < F; ++j)
                if (labels[size_t(j)] == e) idx.push_back(j);  // ascending original order
            mango_tensor h = nullptr;
            const int64_t n = int64_t(idx.size());
            check(host().tensor_from_data(idx.data(), MANGO_DTYPE_I64, &n, 1, f.up.device(), &h));
            Tensor rows(h);
            // An up bias follows its neurons; the down bias is whole in every expert (the
            // renormalised weights of the chosen experts sum to 1, so the block adds it once).
            converting::emit_expert(ctx, e, f.gate ? ops::index_select(f.gate, 0, rows) : Tensor(), ops::index_select(f.up, 0, rows),
                                    ops::mul(ops::index_select(f.down, 1, rows), scale),
                                    f.up_bias ? ops::index_select(f.up_bias, 0, rows) : Tensor(),
                                    f.down_bias ? ops::clone(f.down_bias) : Tensor());
        }
        ctx.emit("router", converting::router(ctx, f, init_, H));
    }

    // Each expert id F/E times, in a random order (the host's seeded stream).
    static std::vector<int64_t> random_labels(Context &ctx, int64_t F, int64_t E) {
        const std::vector<int64_t> order = ops::argsort(ctx.random_like(ops::zeros({F})), 0, false).to_host<int64_t>();
        std::vector<int64_t> labels(static_cast<size_t>(F));
        for (int64_t i = 0; i < F; ++i) labels[size_t(order[size_t(i)])] = i % E;
        return labels;
    }

    // Balanced k-means on unit rows: Lloyd steps whose assignment gives every
    // cluster exactly F/E rows, greedily by ascending distance.
    static std::vector<int64_t> cluster_labels(const Tensor &up, int64_t E) {
        const int64_t F = up.size(0), cap = F / E;
        Tensor x = ops::to_dtype(up, MANGO_DTYPE_F32);
        x = ops::div(x, ops::clamp_min(ops::norm(x, {-1}, true), 1e-8));
        Tensor c = converting::kmeans_directions(x, E, 5);
        std::vector<int64_t> labels(static_cast<size_t>(F), -1);
        for (int it = 0; it < 5; ++it) {
            Tensor dist = ops::rsub_scalar(ops::matmul(x, ops::transpose(c, 0, 1)), 1.0);  // [F, E] cosine distance
            const std::vector<int64_t> order = ops::argsort(ops::flatten(dist), 0, false).to_host<int64_t>();
            std::vector<int64_t> fill(static_cast<size_t>(E), 0);
            std::fill(labels.begin(), labels.end(), -1);
            for (int64_t pair : order) {
                const int64_t j = pair / E, e = pair % E;
                if (labels[size_t(j)] >= 0 || fill[size_t(e)] >= cap) continue;
                labels[size_t(j)] = e;
                ++fill[size_t(e)];
            }
            // New centroids: the mean unit row of each cluster.
            std::vector<float> assign(static_cast<size_t>(F * E), 0.0f);
            for (int64_t j = 0; j < F; ++j) assign[size_t(j * E + labels[size_t(j)])] = 1.0f;
            mango_tensor h = nullptr;
            const int64_t shape[2] = {F, E};
            check(host().tensor_from_data(assign.data(), MANGO_DTYPE_F32, shape, 2, x.device(), &h));
            c = ops::matmul(ops::transpose(Tensor(h), 0, 1), x);
            c = ops::div(c, ops::clamp_min(ops::norm(c, {-1}, true), 1e-8));
        }
        return labels;
    }

    std::string method_;
    double scale_;
    std::string init_;
};

}  // namespace

MANGO_PLUGIN("moe_split", "1.0.0", "FFN splitting",
             mango::moe_converter<Split>("split", "1.0.0",
                                         "the dense FFN's neurons partitioned into experts (LLaMA-MoE: random or clustering)", kSchema))
