#include "model/decode_graph.hpp"

#include "util/error.hpp"

#include <optional>

#ifdef MANGO_WITH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#endif

namespace mango {

struct DecodeGraph::Impl {
#ifdef MANGO_WITH_CUDA
    std::unique_ptr<at::cuda::CUDAGraph> graph;
    std::optional<c10::cuda::CUDAStream> stream;  // warm-up and capture on the same side stream
    c10::cuda::CUDAStream side(at::Device device) {
        if (!stream) stream = c10::cuda::getStreamFromPool(false, device.index());
        return *stream;
    }
#endif
    at::Tensor out;
    bool captured = false;
};

DecodeGraph::DecodeGraph() : impl_(std::make_unique<Impl>()) {}
DecodeGraph::~DecodeGraph() = default;

bool DecodeGraph::captured() const { return impl_->captured; }

at::Tensor DecodeGraph::warm_up(const std::function<at::Tensor()> &step, at::Device device) {
#ifdef MANGO_WITH_CUDA
    if (device.is_cuda()) {
        c10::cuda::device_synchronize();  // the side stream sees every write before it
        at::Tensor out;
        {
            c10::cuda::CUDAStreamGuard on_side(impl_->side(device));
            out = step();
        }
        c10::cuda::device_synchronize();
        return out;
    }
#endif
    (void)device;
    return step();
}

bool DecodeGraph::capture(const std::function<at::Tensor()> &step, at::Device device, std::string &why) {
#ifdef MANGO_WITH_CUDA
    if (!device.is_cuda()) {
        why = "the model is not on a GPU";
        return false;
    }
    c10::cuda::device_synchronize();
    auto graph = std::make_unique<at::cuda::CUDAGraph>();
    at::Tensor out;
    bool began = false;
    try {
        c10::cuda::CUDAStreamGuard on_side(impl_->side(device));
        graph->capture_begin();
        began = true;
        out = step();
        began = false;
        graph->capture_end();
    } catch (const std::exception &e) {
        why = clip(e.what(), 400);
        if (began) try {
                graph->capture_end();  // ends the (invalidated) capture; it reports the failure again
            } catch (const std::exception &) {
            }
        (void)cudaGetLastError();  // a failed capture leaves no error behind for the eager steps
        c10::cuda::device_synchronize();
        return false;
    }
    c10::cuda::device_synchronize();
    impl_->graph = std::move(graph);
    impl_->out = out;
    impl_->captured = true;
    return true;
#else
    (void)step;
    (void)device;
    why = "this build has no CUDA";
    return false;
#endif
}

at::Tensor DecodeGraph::replay() {
#ifdef MANGO_WITH_CUDA
    if (impl_->captured) {
        impl_->graph->replay();
        return impl_->out;
    }
#endif
    throw HostError("DecodeGraph::replay before a successful capture");
}

}  // namespace mango
