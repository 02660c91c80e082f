// A model folder (config.json + safetensors) run through its architecture
// plugin, piece by piece (embed, any block, head) or whole, with a KV cache.
#pragma once

#include "mango/host/plugins.hpp"

#include <mango/formats/hf_config.hpp>
#include <mango/formats/safetensors.hpp>

#include <ATen/core/grad_mode.h>

#include <memory>
#include <string>

namespace mango {

struct ModelInfo {
    bool is_causal = true;
    int64_t hidden_size = 0, n_layers = 0, vocab_size = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0, max_positions = 0;
    bool tied_embeddings = false;
};

// What generation needs from a model: a forward pass over new tokens with
// the KV cache, and where its tensors live. Model and FusedModel are both.
class CausalLM {
public:
    virtual ~CausalLM() = default;
    // Logits [B, T, V] for `ids` at `positions`; `mask` covers cached + new tokens.
    virtual at::Tensor logits(const at::Tensor &ids, const at::Tensor &mask, const at::Tensor &positions, bool use_cache) = 0;
    virtual void clear_cache() = 0;
    virtual bool is_causal() const = 0;
    virtual at::Device device() const = 0;
    virtual std::string describe() const = 0;  // for messages

    // Training: the tensors an optimiser updates, by qualified name (leaf
    // tensors with requires_grad); auxiliary losses of the last forward
    // (e.g. a router's "load_balance"); train/eval mode; recomputing each
    // block in the backward pass instead of keeping its activations.
    virtual std::vector<std::pair<std::string, at::Tensor>> trainable() const = 0;
    virtual std::vector<std::pair<std::string, at::Tensor>> aux_losses() const { return {}; }
    virtual void train(bool) {}
    // Fused models: how far the adapters are from stitching each expert into
    // the base model's hidden states (see FusedModel); others have none.
    virtual at::Tensor alignment_loss(const at::Tensor &ids, const at::Tensor &mask, const at::Tensor &positions);
    void set_gradient_checkpointing(bool on) { checkpoint_blocks_ = on; }

protected:
    // Recompute blocks in the backward pass: checkpointing is on, autograd
    // records, and no KV cache is being filled.
    bool recompute_blocks(bool use_cache) const { return checkpoint_blocks_ && at::GradMode::is_enabled() && !use_cache; }
    bool checkpoint_blocks_ = false;
};

class Model : public CausalLM {
public:
    // Loads MODEL_DIR with the architecture plugin that claims its model_type.
    // dtype: weights are converted on load (kFloat by default).
    static std::unique_ptr<Model> load(const PluginHost &host, const std::string &dir,
                                       at::ScalarType dtype = at::kFloat, at::Device device = at::kCPU);
    // A model from MODEL_DIR/config.json alone, weights drawn at random:
    // normal(0, initializer_range) for matrices, ones for norm gains, zeros
    // for biases; all of them trainable.
    static std::unique_ptr<Model> init_random(const PluginHost &host, const std::string &config_dir, uint64_t seed,
                                              at::ScalarType dtype = at::kFloat, at::Device device = at::kCPU);
    // Every weight the architecture uses, by checkpoint name (tied ones once).
    std::vector<std::pair<std::string, at::Tensor>> named_weights() const;
    // Weights are frozen after load and init_random; this makes all of them
    // trainable (or frozen again).
    void set_trainable(bool on);
    std::vector<std::pair<std::string, at::Tensor>> trainable() const override;
    // Writes config.json and model.safetensors (sharded above max_shard_bytes > 0).
    void save(const std::string &dir, uint64_t max_shard_bytes = 0) const;

    // Config.json with transformers 5.x keys (rope_parameters, dtype) also
    // offered under their 4.x names (rope_theta, rope_scaling, torch_dtype),
    // which is what architecture plugins read.
    static nlohmann::json normalized_config(const nlohmann::json &raw);

    const ModelInfo &info() const { return info_; }
    // Checkpoint tensor per (layer, role), as the plugin declared them; layer -1 = model-level.
    const std::vector<InstanceContext::Role> &roles() const { return ctx_->roles; }
    const formats::HfConfig &config() const { return config_; }
    const std::string &dir() const { return dir_; }
    at::Device device() const override { return device_; }
    at::ScalarType dtype() const { return dtype_; }
    bool is_causal() const override { return info_.is_causal; }
    std::string describe() const override { return dir_; }
    at::Tensor logits(const at::Tensor &ids, const at::Tensor &mask, const at::Tensor &positions, bool use_cache) override {
        return forward(ids, mask, positions, use_cache);
    }

    at::Tensor embed(const at::Tensor &ids, const at::Tensor &positions);
    at::Tensor block(int32_t layer, const at::Tensor &hidden, const at::Tensor &mask, const at::Tensor &positions, bool use_cache);
    at::Tensor head(const at::Tensor &hidden);
    // Whole forward: logits [B, T, V] (decoders) or final hidden states.
    at::Tensor forward(const at::Tensor &ids, const at::Tensor &mask, const at::Tensor &positions, bool use_cache = false);
    void clear_cache() override { ctx_->cache.clear(); }
    int64_t cached_length() const;  // keys in the cache (0 when empty)

    ~Model();

private:
    Model() = default;
    static std::unique_ptr<Model> build(const PluginHost &host, const std::string &dir, at::ScalarType dtype,
                                        at::Device device, bool random, uint64_t seed);
    std::string dir_;
    formats::HfConfig config_;
    std::shared_ptr<formats::Checkpoint> ckpt_;
    registry::ComponentInfo component_;
    const mango_architecture_vtable *vt_ = nullptr;
    std::unique_ptr<InstanceContext> ctx_;
    void *self_ = nullptr;
    ModelInfo info_;
    at::ScalarType dtype_ = at::kFloat;
    at::Device device_ = at::kCPU;
};

}  // namespace mango
