// Training the trainable part of a fused model (adapters and routers; the
// experts stay frozen): LM loss + router load balancing + router entropy +
// adapter L2, AdamW with a separate router learning rate, linear warmup then
// cosine decay, gradient clipping.
#pragma once

#include "mango/host/fusion.hpp"

#include <memory>

namespace mango {

struct TrainOptions {
    int64_t steps = 100;
    double lr = 1e-3;
    double router_lr = 0;  // 0 = lr
    double weight_decay = 0.01;
    int64_t warmup_steps = 0;
    double min_lr_ratio = 0.1;     // cosine decays to lr * this
    double clip_norm = 1.0;        // 0 = no clipping
    double balance_weight = 0.01;  // x router "load_balance" losses
    double entropy_weight = 0.0;   // x router "entropy" losses (> 0 sharpens nothing: it rewards spread)
    double adapter_weight = 0.0;   // x mean squared adapter parameters
};

struct TrainStepResult {
    double loss = 0, lm_loss = 0, lr = 0;
    int64_t tokens = 0;
};

// Mean next-token cross-entropy over positions where both tokens are real.
at::Tensor lm_loss(const at::Tensor &logits, const at::Tensor &ids, const at::Tensor &mask);

class Trainer {
public:
    Trainer(FusedModel &model, TrainOptions options);
    ~Trainer();
    // One optimisation step on a batch ids [B, T] with mask [B, T].
    TrainStepResult step(const at::Tensor &ids, const at::Tensor &mask);
    double lr_at(int64_t step) const;  // schedule factor x base lr, for the adapters
    int64_t steps_done() const { return done_; }

private:
    struct Impl;
    FusedModel &model_;
    TrainOptions o_;
    int64_t done_ = 0;
    std::unique_ptr<Impl> impl_;
};

}  // namespace mango
