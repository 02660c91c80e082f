// Recomputation (what PyTorch calls gradient checkpointing; here the word
// "checkpoint" means weight files only): run a piece of the network without
// keeping its activations, and run it again in the backward pass to get the
// gradients. Memory falls to the piece's input per block; compute grows by
// one forward.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace mango {

// y = fn(x), differentiable in x and in every tensor of `params` that fn
// reads (others get no gradient). fn must be deterministic given the CPU
// random state, which is saved and restored for the second run.
at::Tensor recomputed(std::function<at::Tensor(const at::Tensor &)> fn, const at::Tensor &x, const std::vector<at::Tensor> &params);

}  // namespace mango
