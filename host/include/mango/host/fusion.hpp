// Modular Layers (MoL): blocks of different models fused into one model.
//
// Embeddings, final norm and LM head come from the base model. The hidden
// state flows at a target size (default: the largest model's). Each fusion
// layer runs one block from each of its experts (model, layer); an adapter
// maps into and out of every block whose size differs from the target (or
// every block, when asked), and a router mixes the block outputs:
//   h <- sum_e w_e * y_e,  y_e = block_e(h)                           (no adapters)
//                          y_e = h + out_e(block_e(x)) - out_e(x),    x = in_e(h)
// An adapted block thus adds its own update, carried back by the out
// adapter, to the fused stream, instead of replacing the stream with a copy
// that went through two adapters: adapter error does not pile up layer after
// layer. With identity adapters both forms are the same.
// Adapters and routers are plugins; only they are trainable by default. Their
// parameters take the base model's device and dtype.
#pragma once

#include "mango/host/model.hpp"

#include <memory>
#include <string>
#include <vector>

namespace mango {

struct FusionExpert {
    size_t model = 0;   // index into the fused model's models
    int32_t layer = 0;  // block of that model
};

struct FusionLayer {
    std::vector<FusionExpert> experts;
    InstanceSpec router;  // router plugin name + options
};

struct FusionSpec {
    size_t base = 0;             // embeddings and head from this model
    int64_t target_hidden = 0;   // 0 = the largest hidden size
    bool always_adapt = false;   // adapters also where sizes match
    uint64_t seed = 0;           // random initial values of adapters and routers
    InstanceSpec adapter;        // adapter plugin name + options
    std::vector<FusionLayer> layers;
    // Trainable values to restore, by qualified name (see trainable()).
    std::map<std::string, at::Tensor> saved;
};

// Per fusion layer: router weights [B, E] or [B, T, E], and statistics
// (computed when asked, so a forward pays only for the weights).
struct FusionLayerStats {
    at::Tensor weights;
    at::Tensor mask;  // [B, T] of the tokens routed (1 token, 0 pad)
    std::vector<std::pair<std::string, at::Tensor>> losses;  // the router's auxiliary losses
    at::Tensor entropy() const;  // mean entropy of the weight rows (scalar)
    at::Tensor load() const;     // mean weight per expert over real tokens [E]
};

class FusedModel : public CausalLM {
public:
    // Checks the spec (indices, layer ranges, sizes that need adapters,
    // repeated blocks) before creating anything; errors name the layer.
    static std::unique_ptr<FusedModel> build(const PluginHost &host, std::vector<std::shared_ptr<Model>> models, FusionSpec spec);

    at::Tensor logits(const at::Tensor &ids, const at::Tensor &mask, const at::Tensor &positions, bool use_cache) override;
    // Logits and the statistics of every fusion layer from the last forward.
    const std::vector<FusionLayerStats> &stats() const { return stats_; }
    void clear_cache() override;
    bool is_causal() const override { return true; }
    at::Device device() const override { return models_[spec_.base]->device(); }
    std::string describe() const override { return "fused model (" + std::to_string(spec_.layers.size()) + " fusion layers)"; }

    int64_t target_hidden() const { return target_; }
    // Adapters' and routers' parameters, by qualified name
    // ("layers.1.router.gate.weight", "adapters.m1.in.proj.weight", ...).
    std::vector<std::pair<std::string, at::Tensor>> fusion_parameters() const;
    // fusion_parameters(), plus the experts' weights ("models.1.<tensor>")
    // once set_experts_trainable(true) unfroze them.
    std::vector<std::pair<std::string, at::Tensor>> trainable() const override;
    std::vector<std::pair<std::string, at::Tensor>> aux_losses() const override;
    void train(bool on) override;
    void set_experts_trainable(bool on);
    // Adapters as stitches (a warm start before LM training): each model runs
    // alone; in every fusion layer that holds a block k of the base model, an
    // expert (m, j) with adapters should see in_m(base state before k) ==
    // m's own state before j, and give out_m(m's state after j) == base state
    // after k. Mean relative squared error over those pairs; gradients reach
    // only the adapters. Needs the base model at the target size.
    at::Tensor alignment_loss(const at::Tensor &ids, const at::Tensor &mask, const at::Tensor &positions) override;
    const std::vector<std::shared_ptr<Model>> &models() const { return models_; }

    // Saves DIR/fusion.json (the spec, each model's folder and the sha256 of
    // its config.json and weight files) and DIR/fusion.safetensors (the
    // adapter and router weights), atomically. self_contained also writes
    // every model into DIR/models/<i> and refers to those copies, so DIR
    // can be moved; it is forced when the experts were trained.
    void save(const std::string &dir, bool self_contained = false) const;
    // Loads a saved fusion; a base model whose files changed since is refused
    // naming the file.
    static std::unique_ptr<FusedModel> load(const PluginHost &host, const std::string &dir,
                                            at::ScalarType dtype = at::kFloat, at::Device device = at::kCPU);

private:
    FusedModel() = default;
    at::Tensor adapt(const std::string &key, const at::Tensor &x);

    std::vector<std::shared_ptr<Model>> models_;
    FusionSpec spec_;
    int64_t target_ = 0;
    std::map<std::string, std::unique_ptr<AdapterInstance>> adapters_;  // "m<i>.in", "m<i>.out"
    std::vector<std::unique_ptr<RouterInstance>> routers_;
    std::vector<FusionLayerStats> stats_;
    bool experts_trainable_ = false;
};

}  // namespace mango
