// Offloading (`offload = true` on a model): a model's per-layer weights live
// in host memory (pinned, for GPUs) between uses. Before a block runs, its
// layer's weights are copied into fresh device memory — already started one
// block ahead on a side stream — and after it they are dropped again, so the
// device holds the model-level weights (embeddings, head) and about two
// layers. The architecture's tensors keep their identity: only the memory
// under their storage changes, so views of them follow; tensors it derived
// at load time (a copy, a concatenation) are not weights the host knows and
// stay where they are, as does a storage shared with a model-level weight or
// by several layers. For inference only: a backward pass would need the
// dropped weights again (Model refuses it), and so would saving the model.
// An offloaded model stays offloaded until it is destroyed.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace mango {

class Offloader {
public:
    // `weights`: every weight handed to the architecture with its layer (-1:
    // model-level, kept on the device); `layers`: the model's block count.
    Offloader(const std::vector<std::pair<at::Tensor, int32_t>> &weights, int32_t layers, at::Device device);
    ~Offloader();
    Offloader(const Offloader &) = delete;
    Offloader &operator=(const Offloader &) = delete;

    // Around block `layer`: its weights resident (waiting for their copy) and
    // the next layer's on their way; then dropped.
    void before_block(int32_t layer);
    void after_block(int32_t layer);
    // Bytes of layer weights kept off the device.
    int64_t offloaded_bytes() const;

    struct Impl;

private:
    std::unique_ptr<Impl> impl_;
};

}  // namespace mango
