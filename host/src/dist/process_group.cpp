#include "dist/process_group.hpp"

#include "abi/host_api.hpp"
#include "formats/atomic_file.hpp"
#include "util/error.hpp"

#include <c10/util/intrusive_ptr.h>
#if __has_include(<gloo/algorithm.h>)
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO 1
#endif
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#define MANGO_HAS_GLOO 1
#endif
#if defined(MANGO_WITH_CUDA) && defined(USE_C10D_NCCL) && __has_include(<nccl.h>)
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#define MANGO_HAS_NCCL 1
#endif
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <unistd.h>

namespace mango::dist {

struct Group::Impl {
    c10::intrusive_ptr<c10d::Store> store;
#ifdef MANGO_HAS_GLOO
    c10::intrusive_ptr<c10d::ProcessGroupGloo> gloo;
#endif
#ifdef MANGO_HAS_NCCL
    c10::intrusive_ptr<c10d::ProcessGroupNCCL> nccl;
#endif
    at::Device device = at::kCPU;  // where collectives take their tensors

    // Runs `f` on whichever backend this group joined.
    template <class F>
    void on_backend(F &&f) {
#ifdef MANGO_HAS_NCCL
        if (nccl) return f(*nccl);
#endif
#ifdef MANGO_HAS_GLOO
        if (gloo) return f(*gloo);
#endif
    }
};

namespace {

int env_int(const char *name, int fallback, int lo, int hi) {
    const char *v = std::getenv(name);
    if (!v || !*v) return fallback;
    char *end = nullptr;
    const long x = std::strtol(v, &end, 10);
    if (*end || x < lo || x > hi)
        throw HostError(std::string(name) + "=" + clip(v) + ": expected an integer from " + std::to_string(lo) + " to " +
                        std::to_string(hi));
    return static_cast<int>(x);
}

int cuda_devices() {
#ifdef MANGO_HAS_NCCL
    return c10::cuda::device_count();
#else
    return 0;
#endif
}

// "auto": NCCL where this build has it and the machine a GPU, else Gloo.
std::string choose_backend(std::string asked) {
    const bool gloo =
#ifdef MANGO_HAS_GLOO
        true;
#else
        false;
#endif
    const bool nccl = cuda_devices() > 0;
    // More local ranks than GPUs (LOCAL_WORLD_SIZE, as torchrun and `--nproc` set it): NCCL cannot share a GPU.
    const int local_ranks = env_int("LOCAL_WORLD_SIZE", 1, 1, 1 << 16);
    if (asked == "auto") asked = nccl && (local_ranks <= cuda_devices() || !gloo) ? "nccl" : "gloo";
    if (asked == "gloo" && !gloo)
        throw HostError("the Gloo backend is not in this build (install libgloo-dev and rebuild" +
                        std::string(nccl ? ", or use --dist-backend nccl)" : ")"));
    if (asked == "nccl" && !nccl)
        throw HostError("the NCCL backend needs a CUDA build of Mango and a GPU" + std::string(gloo ? " (use --dist-backend gloo)" : ""));
    if (asked != "gloo" && asked != "nccl") throw HostError("--dist-backend must be auto, gloo or nccl, not \"" + clip(asked) + "\"");
    return asked;
}

// all_to_all as autograd sees it: the gradient of the rows received goes
// back to their senders by the reverse exchange.
struct AllToAllFn : torch::autograd::Function<AllToAllFn> {
    static at::Tensor forward(torch::autograd::AutogradContext *ctx, const at::Tensor &x, std::vector<int64_t> send,
                              std::vector<int64_t> recv) {
        ctx->saved_data["send"] = send;
        ctx->saved_data["recv"] = recv;
        return current().all_to_all(x, send, recv);
    }
    static torch::autograd::variable_list backward(torch::autograd::AutogradContext *ctx, torch::autograd::variable_list grad) {
        const std::vector<int64_t> send = ctx->saved_data["send"].toIntVector(), recv = ctx->saved_data["recv"].toIntVector();
        return {current().all_to_all(grad[0], recv, send), at::Tensor(), at::Tensor()};
    }
};

at::Tensor differentiable_all_to_all(const at::Tensor &x, const std::vector<int64_t> &send, const std::vector<int64_t> &recv) {
    return AllToAllFn::apply(x, send, recv);
}

}  // namespace

std::string Group::tag() const {
    return distributed() ? "rank " + std::to_string(rank_) + "/" + std::to_string(world_) + ": " : std::string();
}

std::string Group::backend() const { return backend_; }

std::optional<at::Device> Group::device() const {
    if (!impl_ || !impl_->device.is_cuda()) return std::nullopt;
    return impl_->device;
}

Group &current() {
    static Group g;
    return g;
}

at::Device Group::collective_device() const { return impl_ ? impl_->device : at::Device(at::kCPU); }

std::function<void()> Group::start_sum(at::Tensor flat) {
    if (!distributed()) return [] {};
    c10::intrusive_ptr<c10d::Work> work;
    std::vector<at::Tensor> one{flat};
    try {
        impl_->on_backend([&](auto &pg) { work = pg.allreduce(one); });
    } catch (const std::exception &e) {
        throw HostError(tag() + "all-reduce failed (did another rank stop?): " + clip(e.what(), 600));
    }
    return [work, flat, where = tag()] {
        try {
            work->wait();
        } catch (const std::exception &e) {
            throw HostError(where + "all-reduce failed (did another rank stop?): " + clip(e.what(), 600));
        }
    };
}

at::Tensor Group::all_to_all(const at::Tensor &input, const std::vector<int64_t> &send_rows, const std::vector<int64_t> &recv_rows) {
    if (!distributed()) return input.clone();
    ++exchanges_;
    if (int(send_rows.size()) != world_ || int(recv_rows.size()) != world_)
        throw HostError(tag() + "all-to-all needs one row count per rank (" + std::to_string(world_) + ")");
    int64_t total = 0;
    for (int64_t n : recv_rows) total += n;
    std::vector<int64_t> shape = input.sizes().vec();
    shape[0] = total;
    // Gloo moves no bfloat16: such rows travel as float32 (exactly) and come back as they were.
    const bool widen = backend_ == "gloo" && input.scalar_type() == at::kBFloat16;
    at::Tensor in = input.to(impl_->device, widen ? at::kFloat : input.scalar_type()).contiguous();
    at::Tensor out = at::empty(shape, in.options());
    try {
        impl_->on_backend([&](auto &pg) {
            std::vector<int64_t> send(send_rows), recv(recv_rows);
            pg.alltoall_base(out, in, recv, send)->wait();
        });
    } catch (const std::exception &e) {
        throw HostError(tag() + "all-to-all failed (did another rank stop?): " + clip(e.what(), 600));
    }
    return out.to(input.device(), input.scalar_type());
}

void Group::barrier() {
    if (!distributed()) return;
    try {
        c10d::BarrierOptions o;
        if (impl_->device.is_cuda()) o.device_ids = {impl_->device.index()};
        impl_->on_backend([&](auto &pg) { pg.barrier(o)->wait(); });
    } catch (const std::exception &e) {
        throw HostError(tag() + "waiting for the other ranks failed (did one stop?): " + clip(e.what(), 600));
    }
}

void end_nccl_rank(int code) {
    if (current().backend() != "nccl") return;
    std::cout.flush();
    std::cerr.flush();
    std::fflush(nullptr);
    ::_exit(code);
}

void init_from_env(std::chrono::seconds timeout, const std::string &backend) {
    Group &g = current();
    const int world = env_int("WORLD_SIZE", 1, 1, 1 << 16);
    if (world <= 1 || g.distributed()) return;
    const int rank = env_int("RANK", -1, 0, world - 1);
    if (rank < 0) throw HostError("WORLD_SIZE=" + std::to_string(world) + " but RANK is not set (0 to " + std::to_string(world - 1) + ")");
    const std::string chosen = choose_backend(backend);
    const int local = env_int("LOCAL_RANK", rank, 0, 1 << 16);
    const char *addr = std::getenv("MASTER_ADDR");
    const std::string host = addr && *addr ? addr : "127.0.0.1";
    const int port = env_int("MASTER_PORT", 29500, 1, 65535);
    auto impl = std::make_shared<Group::Impl>();
    try {
        c10d::TCPStoreOptions o;
        o.port = static_cast<uint16_t>(port);
        // Under torchrun the agent may host the store already (as torch's own init does, then connect to it).
        const char *agent_store = std::getenv("TORCHELASTIC_USE_AGENT_STORE");
        o.isServer = rank == 0 && !(agent_store && std::string(agent_store) == "True");
        o.numWorkers = world;
        o.waitWorkers = true;
        o.timeout = timeout;
        impl->store = c10::make_intrusive<c10d::TCPStore>(host, o);
#ifdef MANGO_HAS_NCCL
        if (chosen == "nccl") {
            // Each rank drives GPU LOCAL_RANK modulo the GPUs it sees (srun may show each task one).
            impl->device = at::Device(at::kCUDA, static_cast<at::DeviceIndex>(local % cuda_devices()));
            // A collective that outlives the timeout throws in wait() (named, exit 1) instead of aborting the process.
            ::setenv("TORCH_NCCL_BLOCKING_WAIT", "1", 0);
            c10::cuda::set_device(impl->device.index());
            auto options = c10d::ProcessGroupNCCL::Options::create();
            options->timeout = std::chrono::duration_cast<std::chrono::milliseconds>(timeout);
            impl->nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(impl->store, rank, world, options);
        }
#endif
#ifdef MANGO_HAS_GLOO
        if (chosen == "gloo") {
            auto options = c10d::ProcessGroupGloo::Options::create(timeout);
            options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(host));
            impl->gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(impl->store, rank, world, options);
        }
#endif
    } catch (const std::exception &e) {
        throw HostError("rank " + std::to_string(rank) + "/" + std::to_string(world) + ": cannot join the " + chosen + " group at " + host +
                        ":" + std::to_string(port) + " within " + std::to_string(timeout.count()) + " s: " + clip(e.what(), 600));
    }
    g.impl_ = impl;
    g.rank_ = rank;
    g.world_ = world;
    g.local_rank_ = local;
    g.backend_ = chosen;
    if (rank != 0) formats::set_writes_enabled(false);
    set_all_to_all(&differentiable_all_to_all, world);
}

}  // namespace mango::dist
