// `linear` adapter: y = LayerNorm(W x + b), plus x when d_in == d_out.
//
// Identity-like start: W is the rectangular identity and b is zero; with a
// residual the LayerNorm gain starts at 0 so y == x exactly, otherwise at 1.
#include <mango/component.hpp>
#include <mango/ops.hpp>

namespace {

using mango::Context;
using mango::Tensor;
namespace ops = mango::ops;

constexpr const char *kSchema = R"({"type": "object", "properties": {
  "bias":       {"type": "boolean", "default": true, "description": "learn a bias in the projection"},
  "layer_norm": {"type": "boolean", "default": true, "description": "LayerNorm after the projection"},
  "eps":        {"type": "number",  "default": 1e-5, "minimum": 0, "description": "LayerNorm epsilon"}
}})";

class LinearAdapter {
public:
    LinearAdapter(Context &ctx, int64_t d_in, int64_t d_out) : d_out_(d_out), residual_(d_in == d_out), eps_(ctx.option_double("eps")) {
        weight_ = ctx.parameter("proj.weight", ops::eye(d_out, d_in));
        if (ctx.option_bool("bias")) bias_ = ctx.parameter("proj.bias", ops::zeros({d_out}));
        if (ctx.option_bool("layer_norm")) {
            norm_w_ = ctx.parameter("norm.weight", residual_ ? ops::zeros({d_out}) : ops::ones({d_out}));
            norm_b_ = ctx.parameter("norm.bias", ops::zeros({d_out}));
        }
    }

    Tensor forward(Context &, const Tensor &x) {
        Tensor y = ops::linear(x, weight_, bias_);
        if (norm_w_) y = ops::layer_norm(y, {d_out_}, norm_w_, norm_b_, eps_);
        return residual_ ? ops::add(x, y) : y;
    }

    // Without the norm, y = (W [+ I]) x + b: the host may then map an expert's
    // update with one projection instead of two.
    bool affine() const { return !norm_w_; }

private:
    int64_t d_out_;
    bool residual_;
    double eps_;
    Tensor weight_, bias_, norm_w_, norm_b_;
};

}  // namespace

MANGO_PLUGIN("linear_adapter", "1.0.0", "Linear projection adapter between hidden sizes",
             mango::adapter<LinearAdapter>("linear", "1.0.0", "projection -> LayerNorm -> residual when sizes match; identity at init",
                                           kSchema))
