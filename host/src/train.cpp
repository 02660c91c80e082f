#include "mango/host/train.hpp"

#include <ATen/ATen.h>
#include <torch/optim/adamw.h>

#include <cmath>

namespace mango {

at::Tensor lm_loss(const at::Tensor &logits, const at::Tensor &ids, const at::Tensor &mask) {
    const int64_t T = ids.size(1);
    at::Tensor pred = logits.narrow(1, 0, T - 1).to(at::kFloat);
    at::Tensor target = ids.narrow(1, 1, T - 1);
    at::Tensor keep = (mask.narrow(1, 1, T - 1) * mask.narrow(1, 0, T - 1)).to(at::kFloat);
    at::Tensor nll = at::cross_entropy_loss(pred.reshape({-1, pred.size(-1)}), target.reshape({-1}), {}, at::Reduction::None);
    return (nll * keep.reshape({-1})).sum() / keep.sum().clamp_min(1);
}

struct Trainer::Impl {
    std::unique_ptr<torch::optim::AdamW> opt;
    std::vector<at::Tensor> adapters, routers;
    std::vector<double> base_lr;  // per optimizer group, before the schedule
};

Trainer::Trainer(FusedModel &model, TrainOptions options) : model_(model), o_(options), impl_(std::make_unique<Impl>()) {
    for (const auto &[name, t] : model.trainable()) (name.rfind("layers.", 0) == 0 ? impl_->routers : impl_->adapters).push_back(t);
    if (impl_->adapters.empty() && impl_->routers.empty()) throw Error("nothing to train: the fused model has no trainable parameters");
    std::vector<torch::optim::OptimizerParamGroup> groups;
    auto group = [&](std::vector<at::Tensor> ps, double lr) {
        if (ps.empty()) return;
        auto opts = std::make_unique<torch::optim::AdamWOptions>(lr);
        opts->weight_decay(o_.weight_decay);
        groups.emplace_back(std::move(ps), std::move(opts));
        impl_->base_lr.push_back(lr);
    };
    group(impl_->adapters, o_.lr);
    group(impl_->routers, o_.router_lr > 0 ? o_.router_lr : o_.lr);
    impl_->opt = std::make_unique<torch::optim::AdamW>(groups, torch::optim::AdamWOptions(o_.lr));
}

Trainer::~Trainer() = default;

double Trainer::lr_at(int64_t step) const {
    if (o_.warmup_steps > 0 && step < o_.warmup_steps) return double(step + 1) / double(o_.warmup_steps);
    const double span = std::max<int64_t>(1, o_.steps - o_.warmup_steps);
    const double progress = std::min(1.0, double(step - o_.warmup_steps) / span);
    return o_.min_lr_ratio + (1 - o_.min_lr_ratio) * 0.5 * (1 + std::cos(M_PI * progress));
}

TrainStepResult Trainer::step(const at::Tensor &ids, const at::Tensor &mask) {
    model_.train(true);
    const double factor = lr_at(done_);
    auto &groups = impl_->opt->param_groups();
    for (size_t g = 0; g < groups.size(); ++g)
        static_cast<torch::optim::AdamWOptions &>(groups[g].options()).lr(impl_->base_lr[g] * factor);
    impl_->opt->zero_grad();
    at::Tensor pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1);
    at::Tensor logits = model_.logits(ids, mask, pos, false);
    at::Tensor lm = lm_loss(logits, ids, mask);
    at::Tensor loss = lm;
    for (const auto &s : model_.stats())
        for (const auto &[name, value] : s.losses) {
            if (name == "load_balance" && o_.balance_weight != 0) loss = loss + o_.balance_weight * value;
            if (name == "entropy" && o_.entropy_weight != 0) loss = loss + o_.entropy_weight * value;
        }
    if (o_.adapter_weight != 0 && !impl_->adapters.empty()) {
        at::Tensor reg = at::zeros({}, loss.options());
        for (const auto &p : impl_->adapters) reg = reg + p.pow(2).mean();
        loss = loss + o_.adapter_weight * reg / double(impl_->adapters.size());
    }
    if (!loss.isfinite().item<bool>()) throw Error("training loss became " + std::to_string(loss.item<double>()) + " at step " + std::to_string(done_));
    loss.backward();
    if (o_.clip_norm > 0) {
        std::vector<at::Tensor> all = impl_->adapters;
        all.insert(all.end(), impl_->routers.begin(), impl_->routers.end());
        at::Tensor total = at::zeros({});
        for (const auto &p : all)
            if (p.grad().defined()) total = total + p.grad().pow(2).sum();
        const double norm = std::sqrt(total.item<double>());
        if (norm > o_.clip_norm)
            for (auto &p : all)
                if (p.grad().defined()) p.mutable_grad().mul_(o_.clip_norm / (norm + 1e-6));
    }
    impl_->opt->step();
    ++done_;
    return {loss.item<double>(), lm.item<double>(), o_.lr * factor, mask.sum().item<int64_t>()};
}

}  // namespace mango
