// One decode step captured as a CUDA graph and replayed for every later
// token: the launches of a whole forward (hundreds of small kernels at batch
// 1) become one. The step reads static input tensors that the caller updates
// in place before each replay (next token, positions, mask, cache entry) and
// writes its logits into a tensor the graph owns. Builds without CUDA say so
// from capture().
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <string>

namespace mango {

class DecodeGraph {
public:
    DecodeGraph();
    ~DecodeGraph();
    DecodeGraph(const DecodeGraph &) = delete;
    DecodeGraph &operator=(const DecodeGraph &) = delete;

    // Runs `step` once on a side stream, as the warm-up capture needs
    // (cuBLAS workspaces and the like are set up outside the capture), and
    // returns its output: the step's real result.
    at::Tensor warm_up(const std::function<at::Tensor()> &step, at::Device device);
    // Captures `step`; false, with `why`, when it cannot be (a device sync or
    // a shape that depends on the data inside the step, no CUDA in this
    // build): the caller then runs the step eagerly. Capturing does not run
    // the step: replay() does.
    bool capture(const std::function<at::Tensor()> &step, at::Device device, std::string &why);
    bool captured() const;
    // Runs the captured step on the current stream; its output (the same
    // tensor every time, overwritten).
    at::Tensor replay();

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace mango
