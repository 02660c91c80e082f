// `upcycle` converter (sparse upcycling, Komatsuzaki et al. 2022; Drop-
// Upcycling, Nakamura et al. 2025): every expert a copy of the dense FFN.
// drop_ratio re-initialises that share of each expert's intermediate neurons
// (the same random neurons in gate and up rows and down columns, drawn per
// expert) from N(mean, std) of the original matrix; noise adds N(0, noise *
// std) to every expert weight to break symmetry. With the defaults (no drop,
// no noise, zero router) and renormalised top-k, the converted model computes
// exactly what the dense one did.
#include "convert_common.hpp"

namespace {

using namespace mango;
namespace ops = mango::ops;

constexpr const char *kSchema =
    "{\"type\": \"object\", \"properties\": {"
    "\"drop_ratio\": {\"type\": \"number\", \"default\": 0.0, \"minimum\": 0, \"maximum\": 1, "
    "\"description\": \"share of each expert's neurons re-initialised (Drop-Upcycling)\"},"
    "\"noise\": {\"type\": \"number\", \"default\": 0.0, \"minimum\": 0, "
    "\"description\": \"relative Gaussian noise added to every expert weight\"}," MANGO_ROUTER_INIT_SCHEMA "}}";

// std and mean of a matrix, as doubles.
std::pair<double, double> stats(const Tensor &w) {
    Tensor f = ops::to_dtype(w, MANGO_DTYPE_F32);
    const double mean = ops::item(ops::mean_all(f));
    return {mean, std::sqrt(ops::item(ops::mean_all(ops::pow(ops::add_scalar(f, -mean), 2.0))))};
}

struct Upcycle {
    explicit Upcycle(Context &ctx)
        : drop_(ctx.option_double("drop_ratio")), noise_(ctx.option_double("noise")), init_(ctx.option_string("router_init")) {}

    void convert(Context &ctx, const DenseFfn &f) {
        converting::require_experts(f);
        const int64_t F = f.up.size(0), H = f.up.size(1);
        const int64_t n_drop = int64_t(drop_ * double(F));
        for (int64_t e = 0; e < f.n_experts; ++e) {
            Tensor gate = f.gate ? ops::clone(f.gate) : Tensor(), up = ops::clone(f.up), down = ops::clone(f.down);
            if (n_drop > 0) {
                // The same random neurons in all three matrices.
                Tensor order = ops::argsort(ctx.random_like(ops::zeros({F})), 0, false);
                Tensor rows = ops::narrow(order, 0, 0, n_drop);
                auto redraw = [&](Tensor w, const Tensor &original, int64_t dim) {
                    auto [mean, sd] = stats(original);
                    Tensor fresh = ops::add_scalar(ops::mul(converting::normal_like(ctx, ops::index_select(w, dim, rows)), sd), mean);
                    static const Op index_copy("aten::index_copy");
                    return index_copy({w, dim, rows, ops::to_dtype(fresh, w.dtype())});
                };
                if (gate) gate = redraw(gate, f.gate, 0);
                up = redraw(up, f.up, 0);
                down = redraw(down, f.down, 1);
            }
            if (noise_ > 0) {
                auto jitter = [&](const Tensor &w) {
                    return ops::add(w, ops::to_dtype(ops::mul(converting::normal_like(ctx, w), noise_ * stats(w).second), w.dtype()));
                };
                if (gate) gate = jitter(gate);
                up = jitter(up);
                down = jitter(down);
            }
            // Biases are copied (a re-drawn neuron keeps its bias).
            converting::emit_expert(ctx, e, gate, up, down, f.up_bias ? ops::clone(f.up_bias) : Tensor(),
                                    f.down_bias ? ops::clone(f.down_bias) : Tensor());
        }
        ctx.emit("router", converting::router(ctx, f, init_, H));
    }

    double drop_, noise_;
    std::string init_;
};

}  // namespace

MANGO_PLUGIN("moe_upcycle", "1.0.0", "sparse upcycling",
             mango::moe_converter<Upcycle>("upcycle", "1.0.0",
                                           "every expert a copy of the dense FFN (Drop-Upcycling: re-drawn neurons; noise)", kSchema))
