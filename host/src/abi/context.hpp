// Per-instance host state behind the opaque mango_context handle: options,
// config, weights, parameters, cache, reports and emitted tensors.
#pragma once

#include "abi/host_api.hpp"

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

struct mango_context_t {
    // A static KV cache (generation on a GPU): each cache_append slot is
    // preallocated for `capacity` entries along its dim and written in place.
    // Before `decoding` (the prefill), appends go to the next free entries
    // and return the entries written; while decoding, every append of one
    // step writes entry `write_at` (an int64 [1] tensor on the device, set
    // before each step, so a captured step replays at the next entry) and
    // returns the whole slot: the attention mask then has `capacity` columns.
    struct StaticCache {
        int64_t capacity = 0;
        bool decoding = false;
        bool appended = false;  // some block wrote through cache_append
        bool grown = false;     // some block used cache_set: no static decoding
        at::Tensor write_at;
        std::map<std::string, std::pair<at::Tensor, int64_t>> slots;  // key -> (storage, entries written)
    };
    struct Parameter {
        std::string name;
        at::Tensor value;
        bool trainable;
    };
    // A tensor the architecture declared (declare_tensor / declare_tensor_v2).
    struct Role {
        int32_t layer = -1;          // -1: model-level
        std::string role, name;      // "attn.q.weight", checkpoint name
        std::vector<int64_t> shape;  // empty when declared without one (v1)
        uint32_t flags = 0;          // MANGO_TENSOR_*
        std::string tied_to;         // MANGO_TENSOR_TIED: the tensor it shares
    };

    std::string label;                                       // for error messages: "router 'simple' of layer 1"
    nlohmann::json options = nlohmann::json::object();       // resolved against the schema
    std::vector<nlohmann::json> model_options;               // merge: one object per model
    nlohmann::json config = nlohmann::json::object();        // config.json (architectures)
    std::function<at::Tensor(const std::string &)> weights;  // lazy checkpoint reader
    std::function<bool(const std::string &)> has_weight;     // does the checkpoint hold a name
    bool random_init = false;                                // no checkpoint: weight_shaped() creates tensors
    std::set<std::string> float32_weights;                   // declared MANGO_TENSOR_F32: read and created in float32
    double initializer_range = 0.02;                         // std of random init
    std::map<std::string, at::Tensor> saved;                 // parameter values to restore
    at::TensorOptions param_options = at::TensorOptions().dtype(at::kFloat);
    bool training = false;
    bool reporting = false;                   // report() values are used (training, evaluation)
    bool mask_full = false;                   // attention_mask_full(): the current block's mask has no padding
    int32_t shard_rank = 0, shard_world = 1;  // expert_shard(): this instance's share of an expert-parallel model
    at::Generator generator;                  // random_like()'s stream (CPU); undefined = the default generator

    std::vector<Parameter> parameters;                              // in declaration order
    std::vector<std::pair<std::string, at::Tensor>> weights_used;   // every model weight handed out, in order
    std::vector<std::pair<std::string, at::Tensor>> losses, stats;  // cleared per forward
    std::map<std::string, at::Tensor> cache;
    std::shared_ptr<StaticCache> static_cache;  // set by Model::begin_static_cache, reset by clear_cache
    std::vector<std::pair<std::string, at::Tensor>> emitted;
    std::vector<Role> roles;

    // Storage behind borrowed strings/lists handed to the plugin.
    std::deque<std::string> strings;
    std::deque<std::vector<int64_t>> int_lists;
    std::deque<std::vector<double>> double_lists;

    // A saved value for every parameter and buffer, by name: what saving
    // a fusion or a training state writes.
    std::vector<std::pair<std::string, at::Tensor>> state() const {
        std::vector<std::pair<std::string, at::Tensor>> out;
        for (const auto &p : parameters) out.emplace_back(p.name, p.value);
        return out;
    }

    void clear_reports() {
        losses.clear();
        stats.clear();
    }
};

namespace mango {
using InstanceContext = mango_context_t;

// Converts a JSON value to a borrowed mango_value whose storage lives in ctx.
mango_status json_to_value(InstanceContext &ctx, const nlohmann::json &v, mango_value *out);
}  // namespace mango
