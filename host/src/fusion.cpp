#include "mango/host/fusion.hpp"

#include <ATen/ATen.h>

#include <set>

namespace mango {

std::unique_ptr<FusedModel> FusedModel::build(const PluginHost &host, std::vector<std::shared_ptr<Model>> models, FusionSpec spec) {
    if (models.empty()) throw Error("fusion needs at least one model");
    if (spec.base >= models.size()) throw Error("fusion base model #" + std::to_string(spec.base) + " does not exist (" + std::to_string(models.size()) + " models)");
    if (spec.layers.empty()) throw Error("fusion needs at least one fusion layer");
    for (const auto &m : models)
        if (!m->info().is_causal) throw Error(m->dir() + " is an encoder; fusion takes causal LMs");
    std::unique_ptr<FusedModel> f(new FusedModel());
    int64_t largest = 0;
    for (const auto &m : models) largest = std::max(largest, m->info().hidden_size);
    f->target_ = spec.target_hidden > 0 ? spec.target_hidden : largest;

    // Validate everything before creating any plugin instance.
    const bool adapter_named = !spec.adapter.name.empty();
    std::set<std::pair<size_t, int32_t>> used;
    std::set<size_t> needs_adapter;
    auto check_size = [&](size_t m, const std::string &where) {
        const bool differs = models[m]->info().hidden_size != f->target_;
        if ((differs || spec.always_adapt) && !adapter_named)
            throw Error(where + ": " + models[m]->dir() + " has hidden size " + std::to_string(models[m]->info().hidden_size) +
                        ", the fused model " + std::to_string(f->target_) + ", and no adapter is configured to join them");
        if (differs || spec.always_adapt) needs_adapter.insert(m);
    };
    check_size(spec.base, "base model");
    for (size_t li = 0; li < spec.layers.size(); ++li) {
        const std::string where = "fusion layer " + std::to_string(li);
        const FusionLayer &l = spec.layers[li];
        if (l.experts.empty()) throw Error(where + " has no experts");
        if (l.router.name.empty()) throw Error(where + " names no router");
        for (const FusionExpert &e : l.experts) {
            if (e.model >= models.size()) throw Error(where + ": model #" + std::to_string(e.model) + " does not exist");
            const int64_t n = models[e.model]->info().n_layers;
            if (e.layer < 0 || e.layer >= n)
                throw Error(where + ": layer " + std::to_string(e.layer) + " is out of range for " + models[e.model]->dir() + " (" + std::to_string(n) + " layers)");
            if (!used.insert({e.model, e.layer}).second)
                throw Error(where + ": block " + std::to_string(e.layer) + " of " + models[e.model]->dir() + " is used twice (each block keeps one KV cache)");
            check_size(e.model, where);
        }
    }
    f->models_ = std::move(models);
    f->spec_ = std::move(spec);
    for (size_t m : needs_adapter) {
        const int64_t h = f->models_[m]->info().hidden_size;
        for (const char *dir : {"in", "out"}) {
            InstanceSpec a = f->spec_.adapter;
            a.where = (a.where.empty() ? "" : a.where + ": ") + "adapter " + dir + " of model #" + std::to_string(m);
            const std::string key = "m" + std::to_string(m) + "." + dir;
            f->adapters_[key] = std::string(dir) == "in" ? AdapterInstance::create(host, a, f->target_, h)
                                                         : AdapterInstance::create(host, a, h, f->target_);
        }
    }
    for (size_t li = 0; li < f->spec_.layers.size(); ++li) {
        InstanceSpec r = f->spec_.layers[li].router;
        r.where = (r.where.empty() ? "" : r.where + ": ") + "router of fusion layer " + std::to_string(li);
        f->routers_.push_back(RouterInstance::create(host, r, f->target_, static_cast<int64_t>(f->spec_.layers[li].experts.size())));
    }
    return f;
}

at::Tensor FusedModel::adapt(const std::string &key, const at::Tensor &x) {
    auto it = adapters_.find(key);
    return it == adapters_.end() ? x : it->second->forward(x);
}

at::Tensor FusedModel::logits(const at::Tensor &ids, const at::Tensor &mask, const at::Tensor &positions, bool use_cache) {
    Model &base = *models_[spec_.base];
    const std::string b = "m" + std::to_string(spec_.base);
    at::Tensor h = adapt(b + ".out", base.embed(ids, positions));  // base size -> target
    // The router sees only the new tokens: its mask is the last T columns.
    const at::Tensor new_mask = mask.narrow(1, mask.size(1) - ids.size(1), ids.size(1));
    stats_.clear();
    for (size_t li = 0; li < spec_.layers.size(); ++li) {
        const FusionLayer &l = spec_.layers[li];
        std::vector<at::Tensor> outs;
        for (const FusionExpert &e : l.experts) {
            const std::string m = "m" + std::to_string(e.model);
            at::Tensor y = models_[e.model]->block(e.layer, adapt(m + ".in", h), mask, positions, use_cache);
            outs.push_back(adapt(m + ".out", y));
        }
        RouterOutput r = routers_[li]->route(h, new_mask);
        at::Tensor stacked = at::stack(outs, -1);                                      // [B, T, H, E]
        at::Tensor w = r.weights.dim() == 2 ? r.weights.unsqueeze(1) : r.weights;       // [B, 1|T, E]
        h = (stacked * w.unsqueeze(2)).sum(-1);
        FusionLayerStats s;
        s.weights = r.weights;
        at::Tensor p = r.weights.clamp_min(1e-9);
        s.entropy = -(r.weights * p.log()).sum(-1).mean();
        if (r.weights.dim() == 2) {
            s.load = r.weights.mean(0);
        } else {
            at::Tensor keep = new_mask.to(r.weights.dtype()).unsqueeze(-1);
            s.load = (r.weights * keep).sum(at::IntArrayRef{0, 1}) / keep.sum().clamp_min(1);
        }
        s.losses = std::move(r.losses);
        stats_.push_back(std::move(s));
    }
    return base.head(adapt(b + ".in", h));  // target -> base size
}

void FusedModel::clear_cache() {
    for (auto &m : models_) m->clear_cache();
}

std::vector<std::pair<std::string, at::Tensor>> FusedModel::trainable() const {
    std::vector<std::pair<std::string, at::Tensor>> out;
    for (const auto &[key, a] : adapters_)
        for (const auto &p : a->parameters())
            if (p.trainable) out.emplace_back("adapters." + key + "." + p.name, p.value);
    for (size_t i = 0; i < routers_.size(); ++i)
        for (const auto &p : routers_[i]->parameters())
            if (p.trainable) out.emplace_back("layers." + std::to_string(i) + ".router." + p.name, p.value);
    return out;
}

void FusedModel::train(bool on) {
    for (auto &[_, a] : adapters_) a->train(on);
    for (auto &r : routers_) r->train(on);
}

}  // namespace mango
