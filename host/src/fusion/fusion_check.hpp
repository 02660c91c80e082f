// The checks a fusion must pass before anything is built, written once for
// the pipeline parser (which knows the members from their config.json only)
// and FusedModel::build (which has them loaded).
#pragma once

#include "abi/plugins.hpp"

#include <functional>
#include <string>
#include <vector>

namespace mango {

struct FusionExpert {
    size_t model = 0;   // index into the fused model's models
    int32_t layer = 0;  // block of that model
};

struct FusionLayer {
    std::vector<FusionExpert> experts;
    InstanceSpec router;  // router plugin name + options (+ where, for errors)
};

struct FusionSpec {
    size_t base = 0;            // embeddings and head from this model
    int64_t target_hidden = 0;  // 0 = the largest hidden size
    bool always_adapt = false;  // adapters also where sizes match
    uint64_t seed = 0;          // random initial values of adapters and routers
    InstanceSpec adapter;       // adapter plugin name + options
    std::vector<FusionLayer> layers;
    // Adapter and router tensors to restore (trainable ones and buffers), by
    // qualified name (see FusedModel::state()).
    std::map<std::string, at::Tensor> saved;
};

// What the checks need to know of a member model.
struct FusionMember {
    std::string name;  // for messages: a pipeline name or a folder
    int64_t hidden_size = 0, n_layers = 0;
    bool is_causal = true;
};

// Where to point in messages: the whole fusion, and one fusion layer.
struct FusionPlaces {
    std::string fusion = "fusion";
    std::function<std::string(size_t layer)> layer = [](size_t l) { return "fusion layer " + std::to_string(l); };
};

// Throws HostError naming the place when the spec cannot work: no models, a
// base or expert that does not exist, a layer out of range, a block used
// twice (each keeps one KV cache), a layer without experts or router, sizes
// that need an adapter none is configured for. Returns the target hidden size.
int64_t check_fusion(const std::vector<FusionMember> &members, const FusionSpec &spec, const FusionPlaces &where = {});

// The members that need adapters (hidden size differs from the target, or always_adapt).
std::vector<size_t> adapted_members(const std::vector<FusionMember> &members, const FusionSpec &spec, int64_t target);

}  // namespace mango
