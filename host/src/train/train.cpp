#include "train/train.hpp"

#include "dist/process_group.hpp"
#include "train/gradient_sync.hpp"
#include "formats/safetensors.hpp"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/autocast_mode.h>
#include <torch/version.h>

#include <cmath>
#include <cstdlib>
#include <mutex>

namespace mango {

at::Tensor lm_loss(const at::Tensor &logits, const at::Tensor &ids, const at::Tensor &mask) {
    const int64_t T = ids.size(1);
    at::Tensor pred = logits.narrow(1, 0, T - 1).to(at::kFloat);
    at::Tensor target = ids.narrow(1, 1, T - 1);
    at::Tensor keep = (mask.narrow(1, 1, T - 1) * mask.narrow(1, 0, T - 1)).to(at::kFloat);
    at::Tensor nll = at::cross_entropy_loss(pred.reshape({-1, pred.size(-1)}), target.reshape({-1}), {}, at::Reduction::None);
    return (nll * keep.reshape({-1})).sum() / keep.sum().clamp_min(1);
}

std::map<std::string, double> default_aux_weights() { return {{"load_balance", 0.01}, {"entropy", 0.0}, {"router_z", 0.0}}; }

std::map<std::string, std::vector<double>> report_stats(const std::vector<LayerReport> &reports) {
    std::map<std::string, std::vector<double>> out;
    for (size_t l = 0; l < reports.size(); ++l)
        for (const auto &[name, value] : reports[l].stats) {
            const at::Tensor v = value.detach().to(at::kCPU, at::kDouble);
            std::vector<double> values;
            if (v.numel() <= 64) {
                const at::Tensor c = v.reshape({-1}).contiguous();
                values.assign(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
            } else {
                values.push_back(v.mean().item<double>());
            }
            out["layer" + std::to_string(reports[l].layer >= 0 ? reports[l].layer : int32_t(l)) + "." + name] = std::move(values);
        }
    return out;
}

namespace {

bool is_router(const std::string &name) { return name.find(".router.") != std::string::npos || name.rfind("router.", 0) == 0; }

// bf16 autocast for CUDA, on for one scope.
struct Autocast {
    bool on;
    explicit Autocast(bool enable) : on(enable) {
        if (!on) return;
#if TORCH_VERSION_MAJOR >= 2 && TORCH_VERSION_MINOR >= 4 || TORCH_VERSION_MAJOR > 2
        at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
        at::autocast::set_autocast_enabled(at::kCUDA, true);
#else
        at::autocast::set_autocast_gpu_dtype(at::kBFloat16);
        at::autocast::set_enabled(true);
#endif
    }
    ~Autocast() {
        if (!on) return;
#if TORCH_VERSION_MAJOR >= 2 && TORCH_VERSION_MINOR >= 4 || TORCH_VERSION_MAJOR > 2
        at::autocast::set_autocast_enabled(at::kCUDA, false);
#else
        at::autocast::set_enabled(false);
#endif
        at::autocast::clear_cache();
    }
};

}  // namespace

struct Trainer::Impl {
    struct Param {
        std::string name;
        at::Tensor value, m, v;
        bool router, decay, adapter;
    };
    std::vector<Param> params;
    std::unique_ptr<GradientSync> sync;  // data parallelism: gradients averaged over the ranks
};

Trainer::Trainer(CausalLM &model, TrainOptions options) : model_(model), o_(options), impl_(std::make_unique<Impl>()) {
    for (const auto &[name, t] : model.trainable())
        impl_->params.push_back({name, t, at::zeros_like(t, at::MemoryFormat::Contiguous), at::zeros_like(t, at::MemoryFormat::Contiguous),
                                 is_router(name), t.dim() >= 2, name.rfind("adapters.", 0) == 0});
    if (impl_->params.empty()) throw HostError("nothing to train: " + model.describe() + " has no trainable parameters");
    if (o_.steps < 1 || o_.batch_size < 1) throw HostError("training needs steps >= 1 and batch_size >= 1");
    if (dist::current().distributed()) {
        std::vector<at::Tensor> values;
        for (const auto &p : impl_->params) values.push_back(p.value);
        const char *mb = std::getenv("MANGO_DP_BUCKET_MB");  // tuning, like DDP's bucket_cap_mb
        impl_->sync = std::make_unique<GradientSync>(values, mb && *mb ? std::max(1e-6, std::atof(mb)) : 25.0);
    }
    model.set_recompute_blocks(o_.recompute);
}

Trainer::~Trainer() { model_.set_recompute_blocks(false); }

double Trainer::lr_factor(int64_t step) const {
    if (o_.warmup_steps > 0 && step < o_.warmup_steps) return double(step + 1) / double(o_.warmup_steps);
    const double span = std::max<int64_t>(1, o_.steps - o_.warmup_steps);
    const double progress = std::min(1.0, double(step - o_.warmup_steps) / span);
    return o_.min_lr_ratio + (1 - o_.min_lr_ratio) * 0.5 * (1 + std::cos(M_PI * progress));
}

at::Tensor Trainer::batch_rows(const at::Tensor &data, int64_t step) const {
    const int64_t n = data.size(0), b = o_.batch_size;
    std::vector<int64_t> rows;
    at::Tensor perm;
    int64_t epoch = -1;
    for (int64_t k = step * b; k < (step + 1) * b; ++k) {
        if (k / n != epoch) {
            epoch = k / n;
            auto gen = at::make_generator<at::CPUGeneratorImpl>(o_.seed * 1000003ULL + static_cast<uint64_t>(epoch));
            perm = at::randperm(n, gen, at::kLong);
        }
        rows.push_back(perm[k % n].item<int64_t>());
    }
    return data.index_select(0, at::tensor(rows, at::kLong).to(data.device()));
}

TrainStepResult Trainer::step(const at::Tensor &ids, const at::Tensor &mask) {
    // Random numbers (dropout) depend only on the seed and the step.
    {
        at::Generator gen = at::detail::getDefaultCPUGenerator();
        std::lock_guard<std::mutex> lock(gen.mutex());
        gen.set_current_seed(o_.seed * 7919ULL + static_cast<uint64_t>(done_) + 1);
    }
    model_.train(true);
    const double lr = o_.lr * lr_factor(done_), router_lr = (o_.router_lr > 0 ? o_.router_lr : o_.lr) * lr_factor(done_);
    for (auto &p : impl_->params) p.value.mutable_grad() = at::Tensor();

    at::Tensor pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1);
    at::Tensor loss, lm;
    std::map<std::string, double> aux_sums;
    {
        Autocast autocast(o_.bf16_autocast && ids.is_cuda());
        const bool aligning = done_ < o_.align_steps;
        at::Tensor logits = aligning ? at::Tensor() : model_.logits(ids, mask, pos, false);
        lm = aligning ? model_.alignment_loss(ids, mask, pos) : lm_loss(logits, ids, mask);
        loss = lm;
        if (!aligning)
            for (const LayerReport &r : model_.layer_reports())
                for (const auto &[name, value] : r.losses) {
                    auto w = o_.aux_weights.find(name);
                    if (w == o_.aux_weights.end()) {
                        std::string known;
                        for (const auto &[k, _] : o_.aux_weights) known += (known.empty() ? "" : ", ") + k;
                        throw HostError(r.source + " reports an auxiliary loss '" + clip(name) +
                                        "' that has no weight; give it one in the train step, " + "e.g. aux_weights = { " + clip(name) +
                                        " = 0.01 } (weighted now: " + known + ")");
                    }
                    aux_sums[name] += value.detach().to(at::kDouble).item<double>();
                    const double ramp = o_.aux_ramp_steps > 0 ? std::min(1.0, double(done_ + 1) / double(o_.aux_ramp_steps)) : 1.0;
                    if (w->second != 0) loss = loss + w->second * ramp * value.to(at::kFloat);
                }
        if (o_.adapter_weight != 0) {
            at::Tensor reg = at::zeros({}, loss.options());
            int64_t n = 0;
            for (const auto &p : impl_->params)
                if (p.adapter) reg = reg + p.value.pow(2).mean(), ++n;
            if (n) loss = loss + o_.adapter_weight * reg / double(n);
        }
    }
    double loss_value = loss.item<double>();
    if (!std::isfinite(loss_value))
        throw HostError(dist::current().tag() + "training loss became " + std::to_string(loss_value) + " at step " + std::to_string(done_));
    // Sums overlap the backward pass unless the model exchanges data in it itself (expert parallelism) or
    // MANGO_DP_OVERLAP=0 asks for one sum after it (for comparisons).
    const char *overlap_env = std::getenv("MANGO_DP_OVERLAP");
    if (impl_->sync) impl_->sync->begin(dist::current().exchanges() == 0 && !(overlap_env && std::string(overlap_env) == "0"));
    loss.backward();
    double lm_value = lm.item<double>();
    if (impl_->sync) impl_->sync->finish(loss_value, lm_value);

    at::NoGradGuard no_grad;
    at::Tensor total = at::zeros({}, at::TensorOptions().dtype(at::kDouble).device(ids.device()));
    for (const auto &p : impl_->params)
        if (p.value.grad().defined()) total += p.value.grad().to(at::kDouble).pow(2).sum();
    const double norm = std::sqrt(total.item<double>());
    const double scale = o_.clip_norm > 0 && norm > o_.clip_norm ? o_.clip_norm / (norm + 1e-6) : 1.0;
    const int64_t t = done_ + 1;
    const double bc1 = 1 - std::pow(o_.beta1, double(t)), bc2 = 1 - std::pow(o_.beta2, double(t));
    for (auto &p : impl_->params) {
        if (!p.value.grad().defined()) continue;
        at::Tensor g = p.value.grad();
        if (scale != 1.0) g = g * scale;
        const double step_lr = p.router ? router_lr : lr;
        if (p.decay && o_.weight_decay != 0) p.value.mul_(1 - step_lr * o_.weight_decay);
        p.m.mul_(o_.beta1).add_(g, 1 - o_.beta1);
        p.v.mul_(o_.beta2).addcmul_(g, g, 1 - o_.beta2);
        p.value.addcdiv_(p.m, (p.v / bc2).sqrt_().add_(o_.eps), -step_lr / bc1);
    }
    ++done_;
    TrainStepResult r{loss_value, lm_value, lr, norm, mask.sum().item<int64_t>() * dist::current().world(), t <= o_.align_steps, {}, {}};
    r.aux = std::move(aux_sums);
    if (!r.aligning) r.stats = report_stats(model_.layer_reports());
    return r;
}

void Trainer::save_state(const std::string &path, const std::map<std::string, std::string> &metadata) const {
    std::vector<std::pair<std::string, at::Tensor>> tensors;
    for (const auto &p : impl_->params) {
        tensors.emplace_back("param." + p.name, p.value.detach());
        tensors.emplace_back("adam_m." + p.name, p.m);
        tensors.emplace_back("adam_v." + p.name, p.v);
    }
    for (const auto &[name, b] : model_.buffers()) tensors.emplace_back("buffer." + name, b.detach());
    auto meta = metadata;
    meta["format"] = "pt";
    meta["mango"] = "train-state";
    meta["step"] = std::to_string(done_);
    formats::write_safetensors(path, tensors, meta);
}

std::map<std::string, std::string> Trainer::load_state(const std::string &path) {
    auto file = formats::SafetensorsFile::open(path);
    const auto &meta = file->header().metadata;
    auto it = meta.find("mango");
    if (it == meta.end() || it->second != "train-state")
        throw HostError(path + ": not a mango training state (metadata mango != train-state)");
    const auto buffers = model_.buffers();
    if (file->header().tensors.size() != 3 * impl_->params.size() + buffers.size())
        throw HostError(path + ": holds " + std::to_string(file->header().tensors.size()) + " tensors, this model's state has " +
                        std::to_string(3 * impl_->params.size() + buffers.size()) + " (" + std::to_string(impl_->params.size()) +
                        " trained tensors with their two moments, " + std::to_string(buffers.size()) + " buffers)");
    at::NoGradGuard no_grad;
    auto restore = [&](const std::string &name, at::Tensor &into) {
        const auto *e = file->find(name);
        if (!e) throw HostError(path + ": has no tensor '" + name + "'");
        at::Tensor t = file->tensor(*e);
        if (t.sizes() != into.sizes())
            throw HostError(path + ": tensor '" + name + "' has shape " + c10::str(t.sizes()) + ", expected " + c10::str(into.sizes()));
        into.copy_(t);
    };
    for (auto &p : impl_->params) {
        restore("param." + p.name, p.value);
        restore("adam_m." + p.name, p.m);
        restore("adam_v." + p.name, p.v);
    }
    for (auto [name, b] : buffers) restore("buffer." + name, b);
    done_ = std::stoll(meta.at("step"));
    return meta;
}

}  // namespace mango
