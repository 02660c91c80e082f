// A model folder (config.json + safetensors) run through its architecture
// plugin, piece by piece (embed, any block, head) or whole, with a KV cache.
#pragma once

#include "abi/plugins.hpp"
#include "formats/hf_config.hpp"
#include "formats/safetensors.hpp"
#include "model/offload.hpp"

#include <ATen/core/grad_mode.h>

#include <map>
#include <memory>
#include <string>

namespace mango {

struct ModelInfo {
    bool is_causal = true;
    int64_t hidden_size = 0, n_layers = 0, vocab_size = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0, max_positions = 0;
    bool tied_embeddings = false;
};

// One tensor of a model as its architecture declares it (mango_tensor_decl).
using TensorDecl = InstanceContext::Role;

// Per fusion layer (or MoE layer) of the last forward: routing weights and
// what the router reported. Plain dense models have none.
struct LayerReport {
    at::Tensor weights;  // [B, E] or [B, T, E]
    at::Tensor mask;     // [B, T] of the tokens routed (1 token, 0 pad)
    std::vector<std::pair<std::string, at::Tensor>> losses, stats;
    std::string source;          // "router 'simple' of fusion layer 1 (p.toml:12)", for messages
    int32_t layer = -1;          // the fusion layer or block it comes from
    at::Tensor entropy() const;  // mean entropy of the weight rows (scalar)
    at::Tensor load() const;     // mean weight per expert over real tokens [E]
};

// What generation, training and evaluation need from a model: a forward pass
// over new tokens with the KV cache, its tensors and where they live. Model
// and FusedModel are both.
class CausalLM {
public:
    virtual ~CausalLM() = default;
    // Logits [B, T, V] for `ids` at `positions`; `mask` covers cached + new tokens.
    virtual at::Tensor logits(const at::Tensor &ids, const at::Tensor &mask, const at::Tensor &positions, bool use_cache) = 0;
    virtual void clear_cache() = 0;
    // Generation with a static KV cache (preallocated, written in place, so
    // that a decode step can be replayed as a CUDA graph). After
    // clear_cache(), begin_static_cache(capacity) makes the prefill fill it;
    // static_cache_ready() then says whether every block wrote through it
    // (a block that keeps a growing cache, as sliding windows do, cannot
    // decode with it). decode_at(entry): the next forward is one decode step
    // writing cache entry `entry`, its mask with `capacity` columns (1 for the
    // entries written so far, this one included).
    virtual void begin_static_cache(int64_t /*capacity*/) {}
    virtual bool static_cache_ready() const { return false; }
    virtual void decode_at(int64_t /*entry*/) {}
    // Whether a forward may be captured as a CUDA graph (no weights that
    // move between steps, as offloaded ones do).
    virtual bool graph_safe() const { return true; }
    // Why a decode step of this model could not be captured, once a capture
    // failed: later generations do not try again (a failed capture costs
    // memory). Empty until then.
    const std::string &graph_refusal() const { return graph_refusal_; }
    void refuse_graphs(const std::string &why) { graph_refusal_ = why; }
    virtual bool is_causal() const = 0;
    virtual at::Device device() const = 0;
    virtual std::string describe() const = 0;  // for messages
    // Largest position the model can embed (0 = unbounded).
    virtual int64_t max_positions() const { return 0; }

    // Training: the tensors an optimiser updates, by qualified name (leaf
    // tensors with requires_grad); buffers (state saved and resumed but not
    // trained); auxiliary losses and statistics of the last forward; train
    // or eval mode; whether plugins should report (training, evaluation).
    virtual std::vector<std::pair<std::string, at::Tensor>> trainable() const = 0;
    std::vector<at::Tensor> trainable_tensors() const {
        std::vector<at::Tensor> out;
        for (auto &[_, t] : trainable()) out.push_back(t);
        return out;
    }
    virtual std::vector<std::pair<std::string, at::Tensor>> buffers() const { return {}; }
    virtual std::vector<std::pair<std::string, at::Tensor>> aux_losses() const;
    virtual const std::vector<LayerReport> &layer_reports() const;
    virtual void train(bool) {}
    virtual void set_reporting(bool) {}
    // Before and after a training step of the pipeline: which weights train
    // (all_weights: a fusion's experts too; a plain model always trains whole).
    virtual void begin_training(bool all_weights) = 0;
    virtual void end_training() = 0;
    // Writes the model to `dir` (a Hugging Face folder, or a saved fusion).
    // Writes the model to DIR, which appears whole or not at all (written
    // beside it, then renamed over it); `extra_files` are copied in too
    // (name in DIR -> source file; e.g. the tokenizer), so a kill never
    // leaves a folder without them.
    virtual void save(const std::string &dir, bool self_contained = false,
                      const std::map<std::string, std::string> &extra_files = {}) const = 0;

    // Fused models: how far the adapters are from stitching each expert into
    // the base model's hidden states (see FusedModel); others have none.
    virtual at::Tensor alignment_loss(const at::Tensor &ids, const at::Tensor &mask, const at::Tensor &positions);
    void set_recompute_blocks(bool on) { recompute_ = on; }

protected:
    // Recompute blocks in the backward pass: it is on, autograd records, and
    // no KV cache is being filled.
    bool recompute_blocks(bool use_cache) const { return recompute_ && at::GradMode::is_enabled() && !use_cache; }
    bool recompute_ = false;

private:
    std::string graph_refusal_;
};

// Expert parallelism: the share of a MoE model's experts this process holds
// (experts [rank * E / world, (rank + 1) * E / world)); world 1 holds all.
struct ExpertShard {
    int32_t rank = 0, world = 1;
};

class Model : public CausalLM {
public:
    // Loads MODEL_DIR with the architecture plugin that claims its model_type.
    // dtype: weights are converted on load (kFloat by default).
    static std::unique_ptr<Model> load(const PluginHost &host, const std::string &dir, at::ScalarType dtype = at::kFloat,
                                       at::Device device = at::kCPU, ExpertShard shard = {});
    // A model from MODEL_DIR/config.json alone, weights drawn at random:
    // normal(0, initializer_range) for matrices, ones for norm gains, zeros
    // for biases.
    static std::unique_ptr<Model> init_random(const PluginHost &host, const std::string &config_dir, uint64_t seed,
                                              at::ScalarType dtype = at::kFloat, at::Device device = at::kCPU, ExpertShard shard = {});
    // A model from a config and tensors in memory (by checkpoint name), as
    // if a folder held them; `where` names it in messages.
    static std::unique_ptr<Model> from_tensors(const PluginHost &host, const nlohmann::json &config,
                                               std::shared_ptr<const std::map<std::string, at::Tensor>> tensors, const std::string &where,
                                               at::ScalarType dtype = at::kFloat, at::Device device = at::kCPU);
    // Every tensor a model of DIR/config.json has, as its architecture's
    // table declares them, without loading any weight (the plugin must have
    // a tensor table: architecture vtable revision 2). `check_dir`: also
    // answer weight_exists() from the checkpoint in DIR.
    static std::vector<TensorDecl> tensor_table(const PluginHost &host, const std::string &dir, bool check_dir = true);
    // What is wrong with model folder DIR, as a user would want to hear before
    // running it (empty: nothing): a config its architecture refuses, tensors
    // missing or of the wrong shape, tensors nobody reads (with
    // `unread_tensors`), a tokenizer.json that does not load.
    static std::vector<std::string> folder_problems(const PluginHost &host, const std::string &dir, bool unread_tensors = true);
    // A HostError listing folder_problems(DIR) (tensors nobody reads allowed),
    // for a `what` model ("merged") about to replace OUT: the last check
    // before an output folder is committed, so OUT never gets a model that
    // does not load.
    static void refuse_unloadable(const PluginHost &host, const std::string &dir, const std::string &out, const std::string &what);
    // Bytes of physical memory on this machine (0 when the system does not say).
    static double physical_memory();
    // The same from a config in memory; `has_weight` answers weight_exists()
    // (null: every tensor exists). `where` names it in messages.
    static std::vector<TensorDecl> tensor_table(const PluginHost &host, const formats::HfConfig &config,
                                                const std::function<bool(const std::string &)> &has_weight, const std::string &where);
    // The architecture component that handles DIR/config.json, or an error
    // listing what is installed.
    static const registry::ComponentInfo &architecture_for(const PluginHost &host, const formats::HfConfig &config);

    // The share of the experts this process holds ({0, 1}: all of them).
    ExpertShard expert_shard() const;
    // Every weight the architecture uses, by checkpoint name (tied ones once).
    std::vector<std::pair<std::string, at::Tensor>> named_weights() const;
    // Weights are frozen after load and init_random; this makes all of them
    // trainable (or frozen again).
    void set_trainable(bool on);
    std::vector<std::pair<std::string, at::Tensor>> trainable() const override;
    // State the architecture keeps beside its weights (e.g. MoE step counters,
    // running expert shares): saved and resumed with the training state.
    std::vector<std::pair<std::string, at::Tensor>> buffers() const override;
    void begin_training(bool) override { set_trainable(true); }
    void end_training() override { set_trainable(false); }
    // Writes config.json and model.safetensors (sharded above max_shard_bytes > 0).
    void save(const std::string &dir, bool self_contained = false,
              const std::map<std::string, std::string> &extra_files = {}) const override;
    void save_sharded(const std::string &dir, uint64_t max_shard_bytes, const std::map<std::string, std::string> &extra_files = {}) const;

    // Config.json with transformers 5.x keys (rope_parameters, dtype) also
    // offered under their 4.x names (rope_theta, rope_scaling, torch_dtype),
    // which is what architecture plugins read.
    static nlohmann::json normalized_config(const nlohmann::json &raw);

    const ModelInfo &info() const { return info_; }
    // Every tensor with its role, as the plugin declared them (layer -1 = model-level).
    const std::vector<TensorDecl> &roles() const { return ctx_->roles; }
    const formats::HfConfig &config() const { return config_; }
    const std::string &dir() const { return dir_; }
    // False for a model initialised from its config alone (its folder holds no weights).
    bool from_checkpoint() const { return ckpt_ != nullptr; }
    at::Device device() const override { return device_; }
    at::ScalarType dtype() const { return dtype_; }
    bool is_causal() const override { return info_.is_causal; }
    int64_t max_positions() const override { return info_.max_positions; }
    std::string describe() const override { return dir_; }
    at::Tensor logits(const at::Tensor &ids, const at::Tensor &mask, const at::Tensor &positions, bool use_cache) override {
        return forward(ids, mask, positions, use_cache);
    }

    at::Tensor embed(const at::Tensor &ids, const at::Tensor &positions);
    at::Tensor block(int32_t layer, const at::Tensor &hidden, const at::Tensor &mask, const at::Tensor &positions, bool use_cache);
    at::Tensor head(const at::Tensor &hidden);
    // Whole forward: logits [B, T, V] (decoders) or final hidden states.
    at::Tensor forward(const at::Tensor &ids, const at::Tensor &mask, const at::Tensor &positions, bool use_cache = false);
    void clear_cache() override;
    void begin_static_cache(int64_t capacity) override;
    bool static_cache_ready() const override;
    void decode_at(int64_t entry) override;
    // Whether some block wrote to the KV cache since clear_cache().
    bool kv_cache_used() const;
    // The columns of `mask` (cached + new tokens) that belong to the T new
    // tokens: the last T, or during a static decode step (a column per cache
    // entry) those of the entries it writes.
    at::Tensor new_token_mask(const at::Tensor &mask, int64_t T) const;
    // Keeps the per-layer weights in host memory between blocks (see
    // model/offload.hpp); inference only. Returns the bytes moved off the device.
    int64_t offload();
    bool offloaded() const { return offloader_ != nullptr; }
    bool graph_safe() const override { return !offloader_; }
    void train(bool on) override { ctx_->training = on; }
    void set_reporting(bool on) override { ctx_->reporting = on; }
    // What the architecture reported per block in the last forward (MoE routers).
    const std::vector<LayerReport> &layer_reports() const override { return reports_; }
    // Tokens in the KV cache, as the host fed them through forward() (0 after clear_cache).
    int64_t cached_tokens() const { return cached_; }
    const std::string &label() const { return ctx_->label; }

    ~Model();

private:
    Model() = default;
    static std::unique_ptr<Model> build(const PluginHost &host, const std::string &dir, at::ScalarType dtype, at::Device device,
                                        bool random, uint64_t seed, ExpertShard shard);
    // Creates the plugin instance for config_ with ctx_'s weight callbacks set.
    void instantiate(const PluginHost &host);
    static at::Tensor checked_weight(const at::Tensor &t, const std::string &name, const std::string &where);
    // Throws when the weights cannot fit in this machine's memory (a config with absurd sizes).
    static void check_fits(const std::vector<TensorDecl> &table, at::ScalarType dtype, at::Device device, const std::string &where);
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
    int64_t cached_ = 0;
    std::vector<LayerReport> reports_;
    std::unique_ptr<Offloader> offloader_;
    // Whether the attention mask has no padding, worked out once per mask
    // (one device sync per forward, not per block): the tensor seen last is
    // kept, so its identity and version say whether it changed.
    bool mask_full(const at::Tensor &mask);
    at::Tensor mask_seen_;
    uint32_t mask_version_ = 0;
    bool mask_full_ = false;
};

}  // namespace mango
