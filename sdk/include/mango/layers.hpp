// mango/layers.hpp — layers many architectures share, written once: RMSNorm,
// LayerNorm, and activations by their config.json names.
#pragma once

#include "mango/ops.hpp"

#include <string>
#include <utility>

namespace mango::layers {

// weight * (x / sqrt(mean(x^2) + eps)), computed in float32 and cast back to
// x's dtype before the gain (LLaMA, Mistral, Qwen, OLMoE, DeepSeek). One host
// operator where the host has it (one kernel on a GPU), else the ATen chain.
inline Tensor rms_norm(const Tensor &x, const Tensor &weight, double eps) {
    static const std::optional<Op> fused = Op::find("mango::rms_norm");
    if (fused) return (*fused)({x, weight, eps});
    Tensor f = ops::to_dtype(x, MANGO_DTYPE_F32);
    Tensor n = ops::mul(f, ops::rsqrt(ops::add_scalar(ops::mean(ops::pow(f, 2.0), {-1}, true), eps)));
    return ops::mul(weight, ops::to_dtype(n, x.dtype()));
}

// x + residual and its RMSNorm: {sum, rms_norm(sum, weight, eps)} — the
// residual stream's add and the next norm, one kernel on a GPU where the host
// has mango::add_rms_norm.
inline std::pair<Tensor, Tensor> add_rms_norm(const Tensor &x, const Tensor &residual, const Tensor &weight, double eps) {
    static const std::optional<Op> fused = Op::find("mango::add_rms_norm");
    if (fused) {
        Results r;
        fused->call({x, residual, weight, eps}, r);
        return {r.tensor(0), r.tensor(1)};
    }
    Tensor sum = ops::add(x, residual);
    return {sum, rms_norm(sum, weight, eps)};
}

// LayerNorm over the last dimension (bias may be empty).
inline Tensor layer_norm(const Tensor &x, const Tensor &weight, const Tensor &bias, double eps) {
    return ops::layer_norm(x, {x.size(-1)}, weight, bias, eps);
}

// True when `name` is an activation activation() knows.
inline bool known_activation(const std::string &name) {
    for (const char *n : {"silu", "swish", "gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu", "quick_gelu", "tanh", "sigmoid"})
        if (name == n) return true;
    return false;
}

// transformers' ACT2FN by name: "silu"/"swish", "gelu" (erf), "gelu_new" /
// "gelu_pytorch_tanh" / "gelu_fast" (tanh approximation), "relu",
// "quick_gelu" (x * sigmoid(1.702 x)), "tanh", "sigmoid".
inline Tensor activation(const std::string &name, const Tensor &x) {
    if (name == "silu" || name == "swish") return ops::silu(x);
    if (name == "gelu") return ops::gelu(x);
    if (name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_fast") return ops::gelu(x, "tanh");
    if (name == "relu") return ops::relu(x);
    if (name == "quick_gelu") return ops::mul(x, ops::sigmoid(ops::mul(x, 1.702)));
    if (name == "tanh") return ops::tanh(x);
    if (name == "sigmoid") return ops::sigmoid(x);
    throw Error(
        MANGO_ERR_UNSUPPORTED,
        "activation '" + name + "' is not supported (silu, gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, relu, quick_gelu, tanh, sigmoid)");
}

// silu(gate) * up, the SwiGLU product (one host operator where the host has it).
inline Tensor silu_mul(const Tensor &gate, const Tensor &up) {
    static const std::optional<Op> fused = Op::find("mango::silu_mul");
    if (fused) return (*fused)({gate, up});
    return ops::mul(ops::silu(gate), up);
}

// silu(x G^T) * (x U^T), a SwiGLU MLP's first half from its input: one
// kernel on a GPU where the host has mango::swiglu, else the two products
// (one launch where the host has mango::linears) and silu_mul.
inline Tensor swiglu(const Tensor &x, const Tensor &gate, const Tensor &up) {
    static const std::optional<Op> fused = Op::find("mango::swiglu");
    if (fused) return (*fused)({x, gate, up});
    const std::vector<Tensor> gu = ops::linears(x, {gate, up});
    return silu_mul(gu[0], gu[1]);
}

// act(gate) * up for the activation `name` (gated MLPs).
inline Tensor gated(const std::string &name, const Tensor &gate, const Tensor &up) {
    if (name == "silu" || name == "swish") return silu_mul(gate, up);
    return ops::mul(activation(name, gate), up);
}

}  // namespace mango::layers
