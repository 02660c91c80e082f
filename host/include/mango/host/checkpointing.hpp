// Gradient checkpointing: run a piece of the network without keeping its
// activations, and run it again in the backward pass to get the gradients.
// Memory falls to the piece's input per block; compute grows by one forward.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace mango {

class CausalLM;

// y = fn(x), differentiable in x and in every tensor of `params` that fn
// reads (others get no gradient). fn must be deterministic given the CPU
// random state, which is saved and restored for the second run.
at::Tensor checkpointed(std::function<at::Tensor(const at::Tensor &)> fn, const at::Tensor &x, const std::vector<at::Tensor> &params);

// The tensors of model.trainable(), without names.
std::vector<at::Tensor> trainable_tensors(const CausalLM &model);

}  // namespace mango
