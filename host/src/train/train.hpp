// Training any CausalLM's trainable tensors (a fused model's adapters and
// routers, or a whole model from random initialisation): LM loss + every
// auxiliary loss a plugin reports, each times its per-name weight
// (aux_weights) + adapter L2,
// AdamW with a separate router learning rate, linear warmup then cosine
// decay, gradient clipping, optional block recomputation and bf16 autocast
// (CUDA). The state (weights, moments, step) saves to one safetensors file and
// a resumed run continues bit-exactly: step s always sees the same batch and
// the same random numbers. Buffers (non-trained plugin state) are saved and
// restored with it.
#pragma once

#include "model/model.hpp"

#include <map>
#include <memory>

namespace mango {

// load_balance 0.01, entropy 0: the weights of the losses the shipped routers report.
std::map<std::string, double> default_aux_weights();

struct TrainOptions {
    int64_t steps = 100;
    int64_t batch_size = 8;
    double lr = 1e-3;
    double router_lr = 0;        // 0 = lr; applies to tensors named "*.router.*"
    double weight_decay = 0.01;  // on matrices only (not on gains and biases)
    double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
    int64_t warmup_steps = 0;
    double min_lr_ratio = 0.1;  // cosine decays to lr * this
    double clip_norm = 1.0;     // 0 = no clipping
    // Weight of each auxiliary loss by the name plugins report it under. A
    // reported name missing here stops training at the first step.
    std::map<std::string, double> aux_weights = default_aux_weights();
    int64_t aux_ramp_steps = 0;   // auxiliary weights grow linearly from 1/N to full over the first N steps (0 = full at once)
    double adapter_weight = 0.0;  // x mean squared adapter parameters ("adapters.*")
    uint64_t seed = 0;            // batch order and dropout
    int64_t align_steps = 0;      // fused models: the first N steps fit the adapters as stitches (alignment_loss) instead of the LM loss
    bool recompute = false;       // recompute blocks in the backward pass ("gradient checkpointing")
    bool bf16_autocast = false;   // CUDA only; ignored on CPU
};

struct TrainStepResult {
    double loss = 0, lm_loss = 0, lr = 0, grad_norm = 0;  // lm_loss: the alignment loss while aligning
    int64_t tokens = 0;
    bool aligning = false;
    // Reported auxiliary losses (weighted sum over layers per name, before
    // the weight) and statistics ("layer1.load" -> [E] values), of this step.
    std::map<std::string, double> aux;
    std::map<std::string, std::vector<double>> stats;
};

// The statistics of a forward's layer reports, by "layer<i>.<name>": scalars
// as one value, vectors as their values (bigger tensors: their mean).
std::map<std::string, std::vector<double>> report_stats(const std::vector<LayerReport> &reports);

// Mean next-token cross-entropy over positions where both tokens are real.
at::Tensor lm_loss(const at::Tensor &logits, const at::Tensor &ids, const at::Tensor &mask);

class Trainer {
public:
    Trainer(CausalLM &model, TrainOptions options);
    ~Trainer();
    // One optimisation step on ids [B, T] with mask [B, T].
    TrainStepResult step(const at::Tensor &ids, const at::Tensor &mask);
    // The rows of `data` [N, T] that step `step` trains on: epochs of a
    // seeded permutation, so a resumed run sees the same batches.
    at::Tensor batch_rows(const at::Tensor &data, int64_t step) const;
    double lr_factor(int64_t step) const;  // warmup + cosine, times the base lr
    int64_t steps_done() const { return done_; }
    const TrainOptions &options() const { return o_; }

    // Trainable tensors, AdamW moments and the step count, atomically to one
    // file; load_state restores them into the same model (names must match).
    void save_state(const std::string &path, const std::map<std::string, std::string> &metadata = {}) const;
    std::map<std::string, std::string> load_state(const std::string &path);

private:
    struct Impl;
    CausalLM &model_;
    TrainOptions o_;
    int64_t done_ = 0;
    std::unique_ptr<Impl> impl_;
};

}  // namespace mango
