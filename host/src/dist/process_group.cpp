#include "dist/process_group.hpp"

#include "formats/atomic_file.hpp"
#include "util/error.hpp"

#if __has_include(<gloo/algorithm.h>)
#define USE_C10D_GLOO 1
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#define MANGO_HAS_GLOO 1
#endif

#include <cstdlib>
#include <map>

namespace mango::dist {

struct Group::Impl {
#ifdef MANGO_HAS_GLOO
    c10::intrusive_ptr<c10d::Store> store;
    c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
#endif
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

}  // namespace

std::string Group::tag() const {
    return distributed() ? "rank " + std::to_string(rank_) + "/" + std::to_string(world_) + ": " : std::string();
}

Group &current() {
    static Group g;
    return g;
}

void Group::allreduce_mean(const std::vector<at::Tensor> &tensors) {
    if (!distributed() || tensors.empty()) return;
#ifdef MANGO_HAS_GLOO
    at::NoGradGuard no_grad;
    // One flat float32 CPU buffer: Gloo's ring allreduce over it, then the
    // mean copied back into each tensor.
    std::vector<at::Tensor> flat;
    for (const at::Tensor &t : tensors) flat.push_back(t.detach().reshape({-1}).to(at::kCPU, at::kFloat));
    std::vector<at::Tensor> bucket{at::cat(flat)};
    try {
        impl_->pg->allreduce(bucket)->wait();
    } catch (const std::exception &e) {
        throw HostError(tag() + "all-reduce failed (did another rank stop?): " + clip(e.what(), 600));
    }
    bucket[0].div_(double(world_));
    int64_t at = 0;
    for (const at::Tensor &t : tensors) {
        const int64_t n = t.numel();
        t.copy_(bucket[0].narrow(0, at, n).view(t.sizes()));
        at += n;
    }
#endif
}

void Group::barrier() {
    if (!distributed()) return;
#ifdef MANGO_HAS_GLOO
    try {
        impl_->pg->barrier()->wait();
    } catch (const std::exception &e) {
        throw HostError(tag() + "waiting for the other ranks failed (did one stop?): " + clip(e.what(), 600));
    }
#endif
}

void init_from_env(std::chrono::seconds timeout) {
    Group &g = current();
    const int world = env_int("WORLD_SIZE", 1, 1, 1 << 16);
    if (world <= 1 || g.distributed()) return;
    const int rank = env_int("RANK", -1, 0, world - 1);
    if (rank < 0) throw HostError("WORLD_SIZE=" + std::to_string(world) + " but RANK is not set (0 to " + std::to_string(world - 1) + ")");
#ifndef MANGO_HAS_GLOO
    throw HostError("WORLD_SIZE=" + std::to_string(world) + ": this build has no Gloo (install libgloo-dev and rebuild)");
#else
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
        auto options = c10d::ProcessGroupGloo::Options::create(timeout);
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(host));
        impl->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(impl->store, rank, world, options);
    } catch (const std::exception &e) {
        throw HostError("rank " + std::to_string(rank) + "/" + std::to_string(world) + ": cannot join the group at " + host + ":" +
                        std::to_string(port) + " within " + std::to_string(timeout.count()) + " s: " + clip(e.what(), 600));
    }
    g.impl_ = impl;
    g.rank_ = rank;
    g.world_ = world;
    g.local_rank_ = env_int("LOCAL_RANK", rank, 0, 1 << 16);
    if (rank != 0) formats::set_writes_enabled(false);
#endif
}

}  // namespace mango::dist
