// mango/tensors.hpp — an architecture's tensors as data.
//
// One table per architecture lists every tensor a model of a given config
// has: role, checkpoint name (with the layer index filled in), shape from the
// config, and whether it is optional or tied to another tensor. The same
// table loads the weights (with shape checks, or random values for a model
// initialised from its config), declares the roles merging and MoE
// conversion use, and answers `mango inspect --roles` from config.json alone.
// Compare llama.cpp's per-architecture tensor-name tables and mergekit's
// architecture JSON files.
//
//   static mango::TensorTable tensor_table(mango::Context &ctx) {
//       const Config c(ctx);
//       mango::TensorTable t;
//       t.model("embed.tokens.weight", "model.embed_tokens.weight", {c.vocab, c.hidden});
//       t.layers(c.n_layers, "attn.q.weight", "model.layers.{L}.self_attn.q_proj.weight", {c.q_out, c.hidden});
//       ...
//       return t;
//   }
//   Llama(mango::Context &ctx) { mango::Weights w = tensor_table(ctx).load(ctx); q_[0] = w.at(0, "attn.q.weight"); ... }
//
// mango::architecture<T>() publishes `T::tensor_table` through the
// architecture vtable's tensors() entry when T has it.
#pragma once

#include "mango/plugin.hpp"

#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace mango {

struct TensorSpec {
    int32_t layer = -1;  // -1: model-level
    std::string role, name;
    std::vector<int64_t> shape;
    uint32_t flags = 0;   // MANGO_TENSOR_OPTIONAL | MANGO_TENSOR_TIED | MANGO_TENSOR_F32
    std::string tied_to;  // TIED: checkpoint name of the tensor it shares
};

// Loaded tensors by (layer, role); absent optional and tied ones are empty.
class Weights {
public:
    // Model-level tensor by role; an empty Tensor when optional and absent.
    const Tensor &get(const std::string &role) const { return at(-1, role); }
    const Tensor &at(int32_t layer, const std::string &role) const {
        auto it = t_.find({layer, role});
        if (it == t_.end())
            throw Error(MANGO_ERR_NOT_FOUND,
                        "no tensor with role '" + role + "'" + (layer >= 0 ? " in layer " + std::to_string(layer) : ""));
        return it->second;
    }
    bool has(int32_t layer, const std::string &role) const {
        auto it = t_.find({layer, role});
        return it != t_.end() && it->second;
    }
    void put(int32_t layer, const std::string &role, Tensor t) { t_[{layer, role}] = std::move(t); }

private:
    std::map<std::pair<int32_t, std::string>, Tensor> t_;
};

class TensorTable {
public:
    // A model-level tensor.
    TensorTable &model(const std::string &role, const std::string &name, std::vector<int64_t> shape, uint32_t flags = 0) {
        grow();
        entries_.push_back({-1, role, name, std::move(shape), flags, ""});
        return *this;
    }
    // A model-level tensor with the same values as the tensor named `tied_to`
    // (e.g. an LM head tied to the token embedding): declared, never loaded.
    TensorTable &tied(const std::string &role, const std::string &name, const std::string &tied_to, std::vector<int64_t> shape) {
        grow();
        entries_.push_back({-1, role, name, std::move(shape), MANGO_TENSOR_TIED, tied_to});
        return *this;
    }
    // The LM head (role "lm_head.weight", stored as `name`): tied to the
    // embedding `tied_to` when `tie` (tie_word_embeddings), else its own.
    TensorTable &lm_head(const std::string &name, const std::string &tied_to, std::vector<int64_t> shape, bool tie) {
        return tie ? tied("lm_head.weight", name, tied_to, std::move(shape)) : model("lm_head.weight", name, std::move(shape));
    }
    // One tensor in layer `layer`; "{L}" in `name_template` becomes the index.
    TensorTable &layer(int32_t layer, const std::string &role, const std::string &name_template, std::vector<int64_t> shape,
                       uint32_t flags = 0) {
        grow();
        entries_.push_back({layer, role, fill(name_template, layer), std::move(shape), flags, ""});
        return *this;
    }
    // The same tensor in each of layers 0 .. n_layers-1.
    TensorTable &layers(int64_t n_layers, const std::string &role, const std::string &name_template, const std::vector<int64_t> &shape,
                        uint32_t flags = 0) {
        for (int32_t i = 0; i < n_layers; ++i) layer(i, role, name_template, shape, flags);
        return *this;
    }

    // The largest models have tens of thousands of tensors (DeepSeek-V3:
    // ~47,000); a config that asks for far more has a wrong layer or expert
    // count, and is refused before the table takes seconds and gigabytes.
    static constexpr size_t kMaxTensors = 250000;

    const std::vector<TensorSpec> &entries() const { return entries_; }

    // Declares every entry to the host (architecture tensors() entry).
    void declare(Context &ctx) const {
        for (const TensorSpec &e : entries_) {
            if (MANGO_HOST_HAS(declare_tensor_v2)) {
                mango_tensor_decl d{};
                d.struct_size = sizeof d;
                d.layer = e.layer;
                d.role = e.role.c_str();
                d.name = e.name.c_str();
                d.shape = e.shape.data();
                d.ndim = static_cast<int32_t>(e.shape.size());
                d.flags = e.flags;
                d.tied_to = e.tied_to.empty() ? nullptr : e.tied_to.c_str();
                check(host().declare_tensor_v2(ctx.get(), &d));
            } else if (!(e.flags & MANGO_TENSOR_TIED)) {
                ctx.declare_tensor(e.layer, e.role.c_str(), e.name);
            }
        }
    }

    // Loads every entry with its shape checked (optional ones only when the
    // checkpoint has them; tied ones get the tensor they share). Entries
    // `skip` accepts stay empty and unread (e.g. the experts another rank
    // holds).
    Weights load(Context &ctx, const std::function<bool(const TensorSpec &)> &skip = {}) const {
        Weights w;
        std::map<std::string, Tensor> by_name;
        for (const TensorSpec &e : entries_) {
            if (e.flags & MANGO_TENSOR_TIED) continue;
            Tensor t;
            const bool wanted = !skip || !skip(e);
            if (wanted && (!(e.flags & MANGO_TENSOR_OPTIONAL) || ctx.weight_exists(e.name))) t = ctx.weight(e.name, e.shape);
            by_name[e.name] = t;
            w.put(e.layer, e.role, std::move(t));
        }
        for (const TensorSpec &e : entries_) {
            if (!(e.flags & MANGO_TENSOR_TIED)) continue;
            auto it = by_name.find(e.tied_to);
            if (it == by_name.end())
                throw Error(MANGO_ERR_INTERNAL, "tensor '" + e.name + "' is tied to '" + e.tied_to + "', which the table lacks");
            w.put(e.layer, e.role, it->second);
        }
        return w;
    }

    static std::string fill(const std::string &name_template, int32_t layer) {
        std::string out = name_template;
        const std::string key = "{L}";
        for (size_t p = out.find(key); p != std::string::npos; p = out.find(key, p)) out.replace(p, key.size(), std::to_string(layer));
        return out;
    }

private:
    void grow() const {
        if (entries_.size() >= kMaxTensors)
            throw Error(MANGO_ERR_INVALID_ARGUMENT,
                        "this config declares more than " + std::to_string(kMaxTensors) + " tensors; check its layer and expert counts");
    }
    std::vector<TensorSpec> entries_;
};

}  // namespace mango
