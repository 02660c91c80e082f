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

#include "fusion/fusion_check.hpp"
#include "model/model.hpp"

#include <memory>
#include <string>
#include <vector>

namespace mango {

class FusedModel : public CausalLM {
public:
    // Checks the spec (check_fusion) before creating anything; errors name the layer.
    static std::unique_ptr<FusedModel> build(const PluginHost &host, std::vector<std::shared_ptr<Model>> models, FusionSpec spec);

    at::Tensor logits(const at::Tensor &ids, const at::Tensor &mask, const at::Tensor &positions, bool use_cache) override;
    // Router weights and reports of every fusion layer from the last forward.
    const std::vector<LayerReport> &layer_reports() const override { return reports_; }
    void clear_cache() override;
    void begin_static_cache(int64_t capacity) override;
    bool static_cache_ready() const override;
    void decode_at(int64_t entry) override;
    bool graph_safe() const override;
    bool is_causal() const override { return true; }
    at::Device device() const override { return models_[spec_.base]->device(); }
    int64_t max_positions() const override;
    std::string describe() const override { return "fused model (" + std::to_string(spec_.layers.size()) + " fusion layers)"; }

    int64_t target_hidden() const { return target_; }
    const FusionSpec &spec() const { return spec_; }
    // Adapters' and routers' trainable parameters, by qualified name
    // ("layers.1.router.gate.weight", "adapters.m1.in.proj.weight", ...).
    std::vector<std::pair<std::string, at::Tensor>> fusion_parameters() const;
    // Their buffers (trainable = 0 parameters), named the same way.
    std::vector<std::pair<std::string, at::Tensor>> buffers() const override;
    // fusion_parameters(), plus the experts' weights ("models.1.<tensor>")
    // once set_experts_trainable(true) unfroze them.
    std::vector<std::pair<std::string, at::Tensor>> trainable() const override;
    void train(bool on) override;
    void set_reporting(bool on) override;
    void begin_training(bool all_weights) override { set_experts_trainable(all_weights); }
    void end_training() override { set_experts_trainable(false); }
    void set_experts_trainable(bool on);
    // Check adapter and router outputs on every forward (on in training and
    // evaluation; otherwise only the first forward after clear_cache()).
    void set_output_checks(bool always) { always_check_ = always; }
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
    // adapter and router parameters and buffers), atomically. self_contained
    // also writes every model into DIR/models/<i> and refers to those
    // copies, so DIR can be moved; it is forced when the experts were trained
    // or a model was initialised from its config alone.
    void save(const std::string &dir, bool self_contained = false,
              const std::map<std::string, std::string> &extra_files = {}) const override;
    // Loads a saved fusion; a base model whose files changed since is refused
    // naming the file.
    static std::unique_ptr<FusedModel> load(const PluginHost &host, const std::string &dir, at::ScalarType dtype = at::kFloat,
                                            at::Device device = at::kCPU);

private:
    FusedModel() = default;
    at::Tensor adapt(const std::string &key, const at::Tensor &x, bool check);

    std::vector<std::shared_ptr<Model>> models_;
    FusionSpec spec_;
    int64_t target_ = 0;
    std::map<std::string, std::unique_ptr<AdapterInstance>> adapters_;  // "m<i>.in", "m<i>.out"
    std::vector<std::unique_ptr<RouterInstance>> routers_;
    std::vector<LayerReport> reports_;
    bool experts_trainable_ = false, training_ = false, reporting_ = false, always_check_ = false;
    int64_t forwards_since_clear_ = 0;
};

}  // namespace mango
