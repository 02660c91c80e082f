#include "model/offload.hpp"

#include "util/error.hpp"

#include <c10/core/CPUAllocator.h>
#include <c10/core/StorageImpl.h>

#include <cstring>
#include <map>
#include <optional>

#ifdef MANGO_WITH_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace mango {

struct Offloader::Impl {
    struct Piece {
        at::Tensor owner;  // keeps the storage alive; its storage's memory is what moves
        at::Tensor host;   // the bytes, in (pinned) host memory
    };
    struct Layer {
        std::vector<Piece> pieces;
        bool resident = true;
#ifdef MANGO_WITH_CUDA
        std::optional<at::cuda::CUDAEvent> copied;  // the prefetch's copies are done
#endif
    };
    at::Device device = at::kCPU;
    std::vector<Layer> layers;
#ifdef MANGO_WITH_CUDA
    std::optional<c10::cuda::CUDAStream> side;
#endif

    static c10::StorageImpl *storage(const Piece &p) { return p.owner.storage().unsafeGetStorageImpl(); }

    // Copies layer l's bytes into fresh device memory (on the side stream for GPUs).
    void bring(int32_t l) {
        Layer &layer = layers[size_t(l)];
        if (layer.resident) return;
#ifdef MANGO_WITH_CUDA
        if (device.is_cuda()) {
            if (!side) side = c10::cuda::getStreamFromPool(false, device.index());
            c10::cuda::CUDAStreamGuard on_side(*side);
            for (Piece &p : layer.pieces) {
                const size_t n = size_t(p.host.numel());
                c10::DataPtr memory = c10::cuda::CUDACachingAllocator::get()->allocate(n);
                at::from_blob(memory.get(), {int64_t(n)}, at::TensorOptions().dtype(at::kByte).device(device)).copy_(p.host, true);
                storage(p)->set_data_ptr_noswap(std::move(memory));
            }
            layer.copied.emplace();
            layer.copied->record(*side);
            layer.resident = true;
            return;
        }
#endif
        for (Piece &p : layer.pieces) {
            const size_t n = size_t(p.host.numel());
            c10::DataPtr memory = c10::GetAllocator(device.type())->allocate(n);
            std::memcpy(memory.get(), p.host.data_ptr(), n);
            storage(p)->set_data_ptr_noswap(std::move(memory));
        }
        layer.resident = true;
    }

    // Drops layer l's device memory (after the work queued on it, for GPUs).
    void drop(int32_t l) {
        Layer &layer = layers[size_t(l)];
        if (!layer.resident) return;
        for (Piece &p : layer.pieces) {
#ifdef MANGO_WITH_CUDA
            if (device.is_cuda())  // freed only once the compute stream is past the kernels that read it
                c10::cuda::CUDACachingAllocator::recordStream(storage(p)->data_ptr(), c10::cuda::getCurrentCUDAStream(device.index()));
#endif
            storage(p)->set_data_ptr_noswap(c10::DataPtr(nullptr, device));
        }
        layer.resident = false;
    }
};

Offloader::Offloader(const std::vector<std::pair<at::Tensor, int32_t>> &weights, int32_t layers, at::Device device)
    : impl_(std::make_unique<Impl>()) {
    impl_->device = device;
    impl_->layers.resize(size_t(std::max(0, layers)));
    // A storage moves with its layer; one that several layers share (a stack over layers, tied weights) stays.
    std::map<const c10::StorageImpl *, std::pair<at::Tensor, int32_t>> storages;
    std::vector<const c10::StorageImpl *> order;
    for (const auto &[t, layer_in] : weights) {
        if (!t.defined()) continue;
        const int32_t layer = layer_in >= 0 && layer_in < layers ? layer_in : -1;  // model-level: its storage stays
        const c10::StorageImpl *s = t.storage().unsafeGetStorageImpl();
        auto [it, fresh] = storages.emplace(s, std::make_pair(t, layer));
        if (fresh)
            order.push_back(s);
        else if (it->second.second != layer)
            it->second.second = -1;
    }
    for (const c10::StorageImpl *s : order) {
        const auto &[t, layer] = storages.at(s);
        if (layer < 0) continue;
        const int64_t n = int64_t(t.storage().nbytes());
        at::Tensor bytes = at::empty({0}, at::TensorOptions().dtype(at::kByte).device(t.device()));
        bytes.set_(t.storage(), 0, {n}, {1});
        at::Tensor host = at::empty({n}, at::TensorOptions().dtype(at::kByte).pinned_memory(device.is_cuda()));
        host.copy_(bytes);
        impl_->layers[size_t(layer)].pieces.push_back({t, host});
    }
    for (int32_t l = 0; l < layers; ++l) impl_->drop(l);
}

Offloader::~Offloader() {
    // The model goes with it (its architecture instance is gone by now): nothing is brought back, only the
    // copies still in flight are waited for.
#ifdef MANGO_WITH_CUDA
    if (impl_->side) impl_->side->synchronize();
#endif
}

void Offloader::before_block(int32_t layer) {
    if (layer < 0 || layer >= int32_t(impl_->layers.size())) return;
    impl_->bring(layer);
#ifdef MANGO_WITH_CUDA
    auto &l = impl_->layers[size_t(layer)];
    if (l.copied) {
        l.copied->block(c10::cuda::getCurrentCUDAStream(impl_->device.index()));
        l.copied.reset();
    }
#endif
    impl_->bring((layer + 1) % int32_t(impl_->layers.size()));  // one block ahead (the next forward starts at 0)
}

void Offloader::after_block(int32_t layer) {
    if (layer < 0 || layer >= int32_t(impl_->layers.size())) return;
    const int32_t next = (layer + 1) % int32_t(impl_->layers.size());
    if (next != layer) impl_->drop(layer);
}

int64_t Offloader::offloaded_bytes() const {
    int64_t n = 0;
    for (const auto &l : impl_->layers)
        for (const auto &p : l.pieces) n += p.host.numel();
    return n;
}

}  // namespace mango
