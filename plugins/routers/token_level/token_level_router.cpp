// `token_level` router: per-token top-k over experts with a learned
// temperature; the chosen experts' weights are renormalised to sum to 1.
//
//   p = softmax(W h / exp(log_t))        [B, T, E]
//   w = top_k(p) / sum(top_k(p)), scattered back to [B, T, E]
// Reports (over real tokens; in training mode only, inference skips their cost): loss "load_balance" = E * sum_e f_e * P_e
// (Switch Transformer: f_e the share of top-k slots given to expert e, P_e the
// mean probability; 1 when balanced), loss "entropy" = mean -sum p log p;
// stats "load" (P_e) and "entropy".
#include <mango/component.hpp>
#include <mango/ops.hpp>

#include <cmath>

namespace {

using mango::Context;
using mango::Error;
using mango::Tensor;
namespace ops = mango::ops;

constexpr const char *kSchema = R"json({"type": "object", "properties": {
  "top_k":       {"type": "integer", "default": 2, "minimum": 1, "description": "experts mixed per token"},
  "temperature": {"type": "number", "default": 1.0, "minimum": 1e-3, "description": "initial softmax temperature (learned)"}
}})json";

class TokenLevelRouter {
public:
    TokenLevelRouter(Context &ctx, int64_t hidden, int64_t experts)
        : experts_(experts), k_(std::min<int64_t>(ctx.option_int("top_k"), experts)) {
        gate_ = ctx.parameter("gate.weight", ops::mul(ops::randn({experts, hidden}), 1.0 / std::sqrt(double(hidden))));
        log_t_ = ctx.parameter("log_temperature", ops::full({1}, std::log(ctx.option_double("temperature"))));
    }

    Tensor route(Context &ctx, const Tensor &hidden, const Tensor &mask) {
        Tensor logits = ops::div(ops::linear(hidden, gate_), ops::exp(log_t_));  // [B, T, E]
        Tensor p = ops::softmax(logits, -1);
        auto [top, idx] = ops::topk(p, k_, -1);
        Tensor w = ops::scatter(ops::zeros_like(p), -1, idx, ops::div(top, ops::sum(top, {-1}, true)));
        if (!ctx.training()) return w;

        // Statistics over real tokens only.
        Tensor keep = mask ? ops::unsqueeze(ops::to_dtype(mask, p.dtype()), -1) : ops::full({1}, 1.0, p.dtype(), p.device());
        Tensor tokens =
            mask ? ops::clamp_min(ops::sum(keep, {0, 1}), 1.0) : ops::full({1}, double(p.size(0) * p.size(1)), p.dtype(), p.device());
        Tensor P = ops::div(ops::sum(ops::mul(p, keep), {0, 1}), tokens);                // [E]
        Tensor chosen = ops::scatter(ops::zeros_like(p), -1, idx, ops::ones_like(top));  // 1 where routed
        Tensor f = ops::detach(ops::div(ops::sum(ops::mul(chosen, keep), {0, 1}), ops::mul(tokens, double(k_))));
        Tensor entropy_tok = ops::mul(ops::sum(ops::mul(p, ops::log(ops::clamp_min(p, 1e-9))), {-1}, true), -1.0);
        Tensor entropy = ops::div(ops::sum(ops::mul(entropy_tok, keep), {0, 1, 2}), ops::sum(tokens, {0}));
        ctx.report_loss("load_balance", ops::mul(ops::sum(ops::mul(f, P), {0}), double(experts_)));
        ctx.report_loss("entropy", entropy);
        ctx.report_stat("load", P);
        ctx.report_stat("entropy", entropy);
        return w;
    }

private:
    int64_t experts_, k_;
    Tensor gate_, log_t_;
};

}  // namespace

MANGO_PLUGIN("token_level_router", "1.0.0", "Per-token top-k router",
             mango::router<TokenLevelRouter>("token_level", "1.0.0", "per-token top-k with a learned temperature and renormalised weights",
                                             kSchema))
