// A third-party router written against the Mango SDK alone: a per-token
// softmax gate, w[b, t] = softmax(W h[b, t] / temperature). It links no
// LibTorch; every tensor operation runs in the host through mango::ops.
#include <mango/component.hpp>
#include <mango/ops.hpp>

namespace {

namespace ops = mango::ops;

constexpr const char *kSchema = R"({"type": "object", "properties": {
  "temperature": {"type": "number", "default": 1.0, "minimum": 1e-6, "description": "softmax temperature"}
}})";

class HelloRouter {
public:
    HelloRouter(mango::Context &ctx, int64_t hidden, int64_t experts)
        : temperature_(ctx.option_double("temperature")), gate_(ctx.parameter("gate.weight", ops::zeros({experts, hidden}))) {}

    mango::Tensor route(mango::Context &ctx, const mango::Tensor &hidden, const mango::Tensor &) {
        mango::Tensor w = ops::softmax(ops::mul(ops::linear(hidden, gate_), 1.0 / temperature_), -1);  // [B, T, E]
        ctx.report_stat("load", ops::mean(w, {0, 1}));
        return w;
    }

private:
    double temperature_;
    mango::Tensor gate_;
};

}  // namespace

MANGO_PLUGIN("hello_router", "1.0.0", "Example third-party router",
             mango::router<HelloRouter>("hello", "1.0.0", "per-token softmax gate (SDK example)", kSchema))
