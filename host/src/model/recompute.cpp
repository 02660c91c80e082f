#include "model/recompute.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

namespace mango {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct Piece : torch::CustomClassHolder {
    std::function<at::Tensor(const at::Tensor &)> fn;
    at::Tensor rng_state;  // CPU generator state before the first run
};

struct Recompute : torch::autograd::Function<Recompute> {
    static variable_list forward(AutogradContext *ctx, const at::Tensor &x, at::TensorList params, c10::intrusive_ptr<Piece> piece) {
        at::Generator gen = at::detail::getDefaultCPUGenerator();
        piece->rng_state = gen.get_state();
        at::Tensor y;
        {
            at::NoGradGuard no_grad;
            y = piece->fn(x);
        }
        variable_list saved{x};
        saved.insert(saved.end(), params.begin(), params.end());
        ctx->save_for_backward(saved);
        ctx->saved_data["piece"] = c10::IValue::make_capsule(c10::intrusive_ptr<torch::CustomClassHolder>(piece));
        return {y};
    }

    static variable_list backward(AutogradContext *ctx, variable_list grad_out) {
        variable_list saved = ctx->get_saved_variables();
        auto piece = c10::static_intrusive_pointer_cast<Piece>(ctx->saved_data["piece"].toCapsule());
        at::Tensor x = saved[0].detach().requires_grad_(saved[0].requires_grad());
        at::Tensor y;
        {
            at::Generator gen = at::detail::getDefaultCPUGenerator();
            const at::Tensor now = gen.get_state();
            gen.set_state(piece->rng_state);
            at::AutoGradMode grad_on(true);
            y = piece->fn(x);
            gen.set_state(now);
        }
        // Gradients for x and every param that needs one; others stay undefined.
        variable_list inputs, wanted;
        std::vector<size_t> slot;
        for (size_t i = 0; i < saved.size(); ++i) {
            const at::Tensor &t = i == 0 ? x : saved[i];
            if (t.requires_grad()) {
                inputs.push_back(t);
                slot.push_back(i);
            }
        }
        variable_list grads(saved.size() + 1);  // + the piece argument
        if (!inputs.empty() && y.requires_grad()) {
            variable_list g = torch::autograd::grad({y}, inputs, {grad_out[0]}, false, false, true);
            for (size_t k = 0; k < g.size(); ++k) grads[slot[k]] = g[k];
        }
        return grads;
    }
};

}  // namespace

at::Tensor recomputed(std::function<at::Tensor(const at::Tensor &)> fn, const at::Tensor &x, const std::vector<at::Tensor> &params) {
    auto piece = c10::make_intrusive<Piece>();
    piece->fn = std::move(fn);
    return Recompute::apply(x, at::TensorList(params), piece)[0];
}

}  // namespace mango
