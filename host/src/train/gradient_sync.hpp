// Data-parallel gradient averaging, overlapped with the backward pass as
// PyTorch's DDP reducer does it. The trained tensors are cut into buckets of
// about `bucket_mb` float32 megabytes, in reverse order (the order backward
// tends to produce their gradients). A hook after each tensor's gradient
// accumulation copies the gradient into its bucket's flat buffer; a bucket
// whose gradients are all in starts its all-reduce at once, but only after
// every bucket before it, so all ranks start the same sums in the same
// order. finish() starts the buckets still waiting (gradients this rank did
// not produce count as zeros), sums the "had a gradient" flags with the
// step's two losses, waits, and writes the mean back into each .grad: a
// tensor no rank had a gradient for stays without one.
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <vector>

namespace mango {

class GradientSync {
public:
    GradientSync(const std::vector<at::Tensor> &params, double bucket_mb = 25);
    ~GradientSync();
    GradientSync(const GradientSync &) = delete;
    GradientSync &operator=(const GradientSync &) = delete;

    // Before the backward pass. `overlap` false: buckets wait for finish()
    // (needed when the model itself exchanges data during backward, as
    // expert parallelism does, so the ranks' collectives cannot interleave
    // differently).
    void begin(bool overlap);
    // After the backward pass: every gradient is the mean over the ranks;
    // `loss` and `lm` too.
    void finish(double &loss, double &lm);

    struct State;

private:
    std::shared_ptr<State> state_;
};

}  // namespace mango
