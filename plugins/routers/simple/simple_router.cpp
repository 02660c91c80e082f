// `simple` router: one weight vector per sequence from pooled hidden states.
//
//   pooled = pool(hidden, mask)             mean | max | attention
//   w      = softmax((W pooled + b) / temperature)      [B, E]
//
// W starts at zero, so a new router mixes its experts uniformly.
// Reports, in training mode only (inference skips their cost): loss "load_balance" = E * sum_e load_e^2 (1 when balanced, E when
// collapsed), loss "entropy" = mean over sequences of -sum_e w log w;
// stat "load" = mean weight per expert [E], stat "entropy".
#include <mango/component.hpp>
#include <mango/ops.hpp>

#include <cmath>
#include <limits>
#include <string>

namespace {

using mango::Context;
using mango::Tensor;
namespace ops = mango::ops;

constexpr const char *kSchema = R"({"type": "object", "properties": {
  "pooling":     {"type": "string", "default": "mean", "enum": ["mean", "max", "attention"], "description": "how a sequence's hidden states become one vector"},
  "temperature": {"type": "number", "default": 1.0, "minimum": 1e-6, "description": "softmax temperature over expert logits"}
}})";

class SimpleRouter {
public:
    SimpleRouter(Context &ctx, int64_t hidden, int64_t experts)
        : hidden_(hidden), experts_(experts), pooling_(ctx.option_string("pooling")), temperature_(ctx.option_double("temperature")) {
        weight_ = ctx.parameter("gate.weight", ops::zeros({experts, hidden}));
        bias_ = ctx.parameter("gate.bias", ops::zeros({experts}));
        if (pooling_ == "attention") query_ = ctx.parameter("pool.query", ops::mul(ops::randn({hidden}), 1.0 / std::sqrt(double(hidden))));
    }

    Tensor route(Context &ctx, const Tensor &hidden, const Tensor &mask) {
        Tensor w;                  // [B, E]
        if (pooling_ == "mean") {  // pooling, gate and softmax: one kernel at a decode step on a GPU
            w = ops::mean_pool_gate(hidden, mask, weight_, bias_, 1.0 / temperature_);
        } else {
            Tensor logits = ops::linear(pool(hidden, mask), weight_, bias_);
            if (temperature_ != 1.0) logits = ops::mul(logits, 1.0 / temperature_);
            w = ops::softmax(logits, -1);
        }
        if (!ctx.training()) return w;

        Tensor load = ops::mean(w, {0});  // [E]
        Tensor entropy = ops::mean_all(ops::mul(ops::sum(ops::mul(w, ops::log(ops::clamp_min(w, 1e-9))), {-1}), -1.0));
        ctx.report_loss("load_balance", ops::mul(ops::sum(ops::mul(load, load), {0}), double(experts_)));
        ctx.report_loss("entropy", entropy);
        ctx.report_stat("load", load);
        ctx.report_stat("entropy", entropy);
        return w;
    }

private:
    // max or attention pooling (mean pooling is part of ops::mean_pool_gate)
    Tensor pool(const Tensor &hidden, const Tensor &mask) const {
        // keep: [B, T, 1] float, 1 for tokens, 0 for padding.
        Tensor keep = mask ? ops::unsqueeze(ops::to_dtype(mask, hidden.dtype()), -1) : Tensor();
        if (pooling_ == "max") {
            if (!keep) return ops::amax(hidden, {1});
            return ops::amax(ops::masked_fill(hidden, ops::eq_scalar(keep, 0.0), -std::numeric_limits<double>::infinity()), {1});
        }
        // attention: scores over tokens from a learned query.
        Tensor scores = ops::mul(ops::matmul(hidden, query_), 1.0 / std::sqrt(double(hidden_)));  // [B, T]
        if (keep)
            scores = ops::masked_fill(scores, ops::eq_scalar(ops::reshape(keep, {keep.size(0), keep.size(1)}), 0.0),
                                      -std::numeric_limits<double>::infinity());
        Tensor a = ops::unsqueeze(ops::softmax(scores, -1), -1);  // [B, T, 1]
        return ops::sum(ops::mul(hidden, a), {1});
    }

    int64_t hidden_, experts_;
    std::string pooling_;
    double temperature_;
    Tensor weight_, bias_, query_;
};

}  // namespace

MANGO_PLUGIN("simple_router", "1.0.0", "Pooled per-sequence router",
             mango::router<SimpleRouter>("simple", "1.0.0", "one softmax weight vector per sequence from mean/max/attention pooling",
                                         kSchema))
