// `bottleneck` adapter: y = skip(x) + LayerNorm(up(dropout(act(down(x))))).
//
// skip(x) is x when d_in == d_out, else a learned projection that starts as
// the rectangular identity. The LayerNorm gain starts at 0, so a new adapter
// passes its input through unchanged (ReZero-style start).
#include <mango/component.hpp>
#include <mango/ops.hpp>

#include <cmath>
#include <string>

namespace {

using mango::Context;
using mango::Tensor;
namespace ops = mango::ops;

constexpr const char *kSchema = R"({"type": "object", "properties": {
  "bottleneck_size": {"type": "integer", "default": 64, "minimum": 1, "description": "width of the bottleneck"},
  "activation":      {"type": "string", "default": "gelu", "enum": ["gelu", "relu", "silu", "tanh"], "description": "nonlinearity between down and up"},
  "dropout":         {"type": "number", "default": 0.1, "minimum": 0, "maximum": 1, "description": "dropout probability in training"},
  "eps":             {"type": "number", "default": 1e-5, "minimum": 0, "description": "LayerNorm epsilon"}
}})";

// Kaiming-uniform-like scale for a [out, in] matrix: normal(0, 1/sqrt(in)).
Tensor scaled_normal(int64_t out, int64_t in) { return ops::mul(ops::randn({out, in}), 1.0 / std::sqrt(static_cast<double>(in))); }

class BottleneckAdapter {
public:
    BottleneckAdapter(Context &ctx, int64_t d_in, int64_t d_out)
        : d_out_(d_out),
          activation_(ctx.option_string("activation")),
          dropout_(ctx.option_double("dropout")),
          eps_(ctx.option_double("eps")) {
        const int64_t r = ctx.option_int("bottleneck_size");
        down_w_ = ctx.parameter("down.weight", scaled_normal(r, d_in));
        down_b_ = ctx.parameter("down.bias", ops::zeros({r}));
        up_w_ = ctx.parameter("up.weight", scaled_normal(d_out, r));
        up_b_ = ctx.parameter("up.bias", ops::zeros({d_out}));
        norm_w_ = ctx.parameter("norm.weight", ops::zeros({d_out}));
        norm_b_ = ctx.parameter("norm.bias", ops::zeros({d_out}));
        if (d_in != d_out) skip_ = ctx.parameter("skip.weight", ops::eye(d_out, d_in));
    }

    Tensor forward(Context &ctx, const Tensor &x) {
        Tensor h = ops::linear(x, down_w_, down_b_);
        h = activate(h);
        if (dropout_ > 0) h = ops::dropout(h, dropout_, ctx.training());
        h = ops::linear(h, up_w_, up_b_);
        h = ops::layer_norm(h, {d_out_}, norm_w_, norm_b_, eps_);
        return ops::add(skip_ ? ops::linear(x, skip_) : x, h);
    }

private:
    Tensor activate(const Tensor &h) const {
        if (activation_ == "gelu") return ops::gelu(h);
        if (activation_ == "relu") return ops::relu(h);
        if (activation_ == "silu") return ops::silu(h);
        return ops::tanh(h);  // the schema admits nothing else
    }

    int64_t d_out_;
    std::string activation_;
    double dropout_, eps_;
    Tensor down_w_, down_b_, up_w_, up_b_, norm_w_, norm_b_, skip_;
};

}  // namespace

MANGO_PLUGIN("bottleneck_adapter", "1.0.0", "Bottleneck (down/up) adapter between hidden sizes",
             mango::adapter<BottleneckAdapter>("bottleneck", "1.0.0",
                                               "down -> activation -> dropout -> up -> LayerNorm -> residual; identity at init", kSchema))
